"""examples/mcp_server.py driven by the MCP SDK's own client over stdio, as real
subprocesses against the test's database (issue 14, item 4)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed")

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult, TextContent

from ..helpers import row_counts

SERVER = Path(__file__).resolve().parents[2] / "examples" / "mcp_server.py"
Connect = Callable[[], AbstractAsyncContextManager[ClientSession]]


@pytest.fixture
def mcp_client(dsn: str, tmp_path: Path) -> Connect:
    """Opens a client on a new server process. Each test enters and leaves it in one task:
    the SDK's stdio client holds a cancel scope that must be exited where it was entered."""
    env = {
        **os.environ,
        "SESSIONSTORE_DATABASE_URL": dsn,
        "SESSIONSTORE_POOLER": os.environ.get("SESSIONSTORE_TEST_POOLER", "auto"),
    }
    params = StdioServerParameters(command=sys.executable, args=[str(SERVER)], env=env)

    @asynccontextmanager
    async def connect() -> AsyncIterator[ClientSession]:
        # The server's stderr (its logs) must be a real file for the subprocess.
        with (tmp_path / "server-stderr.log").open("a") as errlog:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                yield session

    return connect


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    content: dict[str, Any] | None = result.structured_content
    assert content is not None
    return content


def _error_text(result: CallToolResult) -> str:
    assert result.is_error
    (block,) = result.content
    assert isinstance(block, TextContent)
    return block.text


async def test_two_clients_share_a_conversation_that_outlives_the_server(
    mcp_client: Connect, conn: asyncpg.Connection
) -> None:
    async with mcp_client() as client:
        created = _ok(await client.call_tool("create_session", {"user_id": "u1", "title": "t"}))
    session_id = created["session_id"]
    assert created["status"] == "active"

    async def chat(name: str) -> None:
        async with mcp_client() as client:
            for n in range(50):
                turn = _ok(
                    await client.call_tool(
                        "append_message",
                        {
                            "continuation_id": "shared",
                            "role": "user",
                            "content": f"{name}-{n}",
                            "session_id": session_id,
                            "tokens": 2,
                            "context": 3,
                        },
                    )
                )
                assert turn["context"][-1] == {
                    "seq": turn["seq"],
                    "role": "user",
                    "content": f"{name}-{n}",
                }

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            group.start_soon(chat, "a")
            group.start_soon(chat, "b")

    # a new server process: what the first ones wrote is durable
    async with mcp_client() as client:
        history = _ok(
            await client.call_tool("get_history", {"continuation_id": "shared", "limit": 100})
        )
        session = _ok(await client.call_tool("get_session", {"session_id": session_id}))
        ended = _ok(await client.call_tool("end_session", {"session_id": session_id}))
    messages = history["messages"]
    assert [m["seq"] for m in messages] == list(range(1, 101))
    for name in ("a", "b"):  # each client's messages in the order it sent them
        mine = [m["content"] for m in messages if m["content"].startswith(name)]
        assert mine == [f"{name}-{n}" for n in range(50)]
    assert (session["turn_count"], session["total_tokens"]) == (100, 200)
    assert ended["status"] == "completed"
    assert await conn.fetchval("SELECT count(*) FROM messages") == 100


async def test_refused_calls_are_error_results_that_write_nothing(
    mcp_client: Connect, conn: asyncpg.Connection
) -> None:
    async with mcp_client() as client:
        created = _ok(await client.call_tool("create_session", {"user_id": "u1"}))
        before = await row_counts(conn)
        bad_role = await client.call_tool(
            "append_message", {"continuation_id": "c", "role": "robot", "content": "hi"}
        )
        unknown = await client.call_tool(
            "append_message",
            {
                "continuation_id": "c",
                "role": "user",
                "content": "hi",
                "session_id": "0190a5c4-0000-7000-8000-000000000000",
            },
        )
        not_a_uuid = await client.call_tool("get_session", {"session_id": "nope"})
        await client.call_tool("end_session", {"session_id": created["session_id"]})
        after_end = await client.call_tool(
            "append_message",
            {
                "continuation_id": "c",
                "role": "user",
                "content": "late",
                "session_id": created["session_id"],
            },
        )
        missing = await client.call_tool("get_history", {"continuation_id": "never"})
    assert _error_text(bad_role).startswith("role: must be one of user, assistant, system")
    assert "not found" in _error_text(unknown)
    assert _error_text(not_a_uuid).startswith("session_id: must be a UUID")
    assert "completed" in _error_text(after_end)
    assert "continuation_id 'never' not found" in _error_text(missing)
    after = await row_counts(conn)
    assert (after["conversations"], after["messages"]) == (
        before["conversations"],
        before["messages"],
    )


async def test_create_session_takes_a_ttl_in_seconds(mcp_client: Connect) -> None:
    async with mcp_client() as client:
        short = _ok(await client.call_tool("create_session", {"user_id": "u", "ttl_seconds": 60}))
        bad = await client.call_tool("create_session", {"user_id": "u", "ttl_seconds": -1})
    assert short["expires_at"] is not None
    assert _error_text(bad).startswith("ttl: must be positive")
    json.dumps(short)  # structured results are plain JSON
