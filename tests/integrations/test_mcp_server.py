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


def _text(result: CallToolResult) -> str:
    """The reply's one text block: its JSON is not repeated as structured content."""
    assert result.structured_content is None
    (block,) = result.content
    assert isinstance(block, TextContent)
    return block.text


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    content: dict[str, Any] = json.loads(_text(result))
    return content


def _error_text(result: CallToolResult) -> str:
    assert result.is_error
    return _text(result)


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
                # the context is what came before the new message, which is not sent back
                assert len(turn["context"]) == min(3, turn["seq"] - 1)
                assert [m["seq"] for m in turn["context"]] == list(
                    range(turn["seq"] - len(turn["context"]), turn["seq"])
                )
                assert f"{name}-{n}" not in [m["content"] for m in turn["context"]]

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            group.start_soon(chat, "a")
            group.start_soon(chat, "b")

    # a new server process: what the first ones wrote is durable
    async with mcp_client() as client:
        history = _ok(
            await client.call_tool(
                "get_history",
                {"continuation_id": "shared", "limit": 100, "session_id": session_id},
            )
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
        sid = created["session_id"]
        bad_role = await client.call_tool(
            "append_message",
            {"continuation_id": "c", "role": "robot", "content": "hi", "session_id": sid},
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
        missing = await client.call_tool(
            "get_history", {"continuation_id": "never", "session_id": sid}
        )
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
    assert _error_text(bad) == "ttl_seconds: must be between 1 and 315360000"


async def test_a_session_neither_reads_nor_writes_another_s_conversation(
    mcp_client: Connect, conn: asyncpg.Connection
) -> None:
    """Issue 27, item 6: any client could read Bob's conversation by its name."""
    async with mcp_client() as client:
        alice = _ok(await client.call_tool("create_session", {"user_id": "alice"}))["session_id"]
        bob = _ok(await client.call_tool("create_session", {"user_id": "bob"}))["session_id"]
        said = {"continuation_id": "bob-chat", "role": "user", "content": "bob's secret"}
        _ok(await client.call_tool("append_message", {**said, "session_id": bob}))
        before = await row_counts(conn)
        intruding = {"continuation_id": "bob-chat", "role": "user", "content": "hi"}
        no_session = await client.call_tool("append_message", intruding)
        as_alice = await client.call_tool("append_message", {**intruding, "session_id": alice})
        read_no_session = await client.call_tool("get_history", {"continuation_id": "bob-chat"})
        read_as_alice = await client.call_tool(
            "get_history", {"continuation_id": "bob-chat", "session_id": alice}
        )
        read_missing = await client.call_tool(
            "get_history", {"continuation_id": "nobody-chat", "session_id": alice}
        )
        own = _ok(
            await client.call_tool(
                "get_history", {"continuation_id": "bob-chat", "session_id": bob}
            )
        )
    for refused in (no_session, as_alice, read_no_session, read_as_alice):
        assert "secret" not in _error_text(refused)
    assert _error_text(no_session) == "session_id: is required"
    assert _error_text(read_no_session) == "session_id: is required"
    assert "belongs to another session" in _error_text(as_alice)
    # reading another session's conversation: the answer for one that does not exist
    assert _error_text(read_as_alice) == _error_text(read_missing).replace(
        "nobody-chat", "bob-chat"
    )
    assert [m["content"] for m in own["messages"]] == ["bob's secret"]
    assert await row_counts(conn) == before


SECRET = "SECRET-VALUE"
TTL_RANGE = "ttl_seconds: must be between 1 and 315360000"
TOO_BIG = "content: must be at most 262144 bytes as UTF-8 (256 KiB)"
APPEND_TAKES = (
    " (it takes session_id, continuation_id, role, content, tokens, context, context_tokens)"
)
THROUGH_RANGE = "through_seq: must be between 1 and 2147483647"


def _session_args(**given: object) -> dict[str, object]:
    return {"user_id": "u", **given}


def _append_args(**given: object) -> dict[str, object]:
    """append_message's arguments (session "S": the test's session) with ``given``."""
    return {"session_id": "S", "continuation_id": "c", "role": "user", "content": SECRET, **given}


def _compact_args(**given: object) -> dict[str, object]:
    return {"session_id": "S", "continuation_id": "c", "through_seq": 1, "summary": "s", **given}


def _history_args(**given: object) -> dict[str, object]:
    return {"session_id": "S", "continuation_id": "c", **given}


#: (tool, arguments, the whole error text): none of them may reach the SDK's validation.
REFUSED: list[tuple[str, dict[str, object], str]] = [
    ("create_session", {"user_id": {"k": SECRET}}, "user_id: must be a string"),
    ("create_session", {"user_id": [SECRET]}, "user_id: must be a string"),
    ("create_session", {}, "user_id: is required"),
    ("create_session", _session_args(title=7), "title: must be a string"),
    ("create_session", _session_args(title=SECRET * 100), "title: must be at most 1000 characters"),
    ("create_session", _session_args(ttl_seconds=10**14), TTL_RANGE),
    ("create_session", _session_args(ttl_seconds=0), TTL_RANGE),
    ("create_session", _session_args(ttl_seconds=1e14), "ttl_seconds: must be an integer"),
    ("create_session", _session_args(ttl_seconds="60"), "ttl_seconds: must be an integer"),
    ("create_session", _session_args(ttl_seconds=True), "ttl_seconds: must be an integer"),
    ("get_session", {"session_id": 12345}, "session_id: must be a string"),
    ("get_session", {"session_id": "S", "ctx": SECRET},
     "ctx: is not an argument of get_session (it takes session_id)"),
    ("append_message", _append_args(token=5),
     "token: is not an argument of append_message" + APPEND_TAKES),
    ("append_message", _append_args(**{f"x {SECRET}": 1}),
     "an argument: is not an argument of append_message" + APPEND_TAKES),
    ("append_message", _append_args(content=[SECRET]), "content: must be a string"),
    ("append_message", _append_args(content=None), "content: is required"),
    ("append_message", _append_args(tokens="5"), "tokens: must be an integer"),
    ("append_message", _append_args(context=101), "context: must be between 0 and 100"),
    ("append_message", _append_args(content=SECRET * 30_000), TOO_BIG),
    ("append_message", _append_args(content="é" * (128 * 1024 + 1)), TOO_BIG),  # bytes count
    ("append_message", _append_args(content="x" * 10 * 2**20), TOO_BIG),
    ("append_message", _append_args(context_tokens=0),
     "context_tokens: must be between 1 and 2147483647"),
    ("append_message", _append_args(context_tokens="8000"), "context_tokens: must be an integer"),
    ("compact", _compact_args(through_seq=0), THROUGH_RANGE),
    ("compact", _compact_args(through_seq="3"), "through_seq: must be an integer"),
    ("compact", _compact_args(through_seq=None), "through_seq: is required"),
    ("compact", _compact_args(summary=[SECRET]), "summary: must be a string"),
    ("compact", _compact_args(summary=SECRET * 30_000),
     "summary: must be at most 262144 bytes as UTF-8 (256 KiB)"),
    ("compact", _compact_args(delete_originals="yes"), "delete_originals: must be true or false"),
    ("compact", _compact_args(delete_originals=1), "delete_originals: must be true or false"),
    ("compact", {k: v for k, v in _compact_args().items() if k != "session_id"},
     "session_id: is required"),
    ("get_history", _history_args(limit=5.0), "limit: must be an integer"),
    ("get_history", _history_args(limit=0), "limit: must be between 1 and 100"),
    ("get_history", _history_args(continuation_id={"$ne": SECRET}),
     "continuation_id: must be a string"),
]  # fmt: skip


async def test_arguments_are_refused_in_one_sentence_naming_the_field(
    mcp_client: Connect, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Issue 27, item 6: wrong types came back as the SDK's validation text quoting the
    input, a huge ttl_seconds as a bare "Error executing tool" and a server traceback, a
    misspelt ``token`` was ignored and a 10 MB message accepted."""
    async with mcp_client() as client:
        sid = _ok(await client.call_tool("create_session", {"user_id": "u"}))["session_id"]
        before = await row_counts(conn)
        answers = []
        for tool, arguments, _ in REFUSED:
            if arguments.get("session_id") == "S":
                arguments = {**arguments, "session_id": sid}
            answers.append(await client.call_tool(tool, arguments))
    for (tool, _, expected), answer in zip(REFUSED, answers, strict=True):
        text = _error_text(answer)
        assert text == expected, tool
        assert SECRET not in text
        assert "\n" not in text
        assert "Error executing" not in text
    assert await row_counts(conn) == before
    log = (tmp_path / "server-stderr.log").read_text()
    assert "Traceback" not in log
    assert SECRET not in log


async def test_the_size_limit_is_in_the_tool_description_and_a_reply_carries_each_message_once(
    mcp_client: Connect,
) -> None:
    big = "é" * (128 * 1024)  # exactly 256 KiB as UTF-8: accepted
    async with mcp_client() as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        sid = _ok(await client.call_tool("create_session", {"user_id": "u"}))["session_id"]
        first = await client.call_tool(
            "append_message",
            {"session_id": sid, "continuation_id": "c", "role": "user", "content": big},
        )
        second = await client.call_tool(
            "append_message",
            {"session_id": sid, "continuation_id": "c", "role": "assistant", "content": "ok"},
        )
        history = await client.call_tool("get_history", {"session_id": sid, "continuation_id": "c"})
    assert "256 KiB" in (tools["append_message"].description or "")
    for name in ("append_message", "get_history"):
        assert "session_id" in tools[name].input_schema["required"]
    # the appended content is not sent back; the next reply's context carries it once
    assert len(_text(first)) < 1000
    assert _ok(first)["context"] == []
    assert _text(second).count(big) == 1
    assert _ok(second)["context"] == [{"seq": 1, "role": "user", "content": big}]
    assert [m["content"] for m in _ok(history)["messages"]] == [big, "ok"]
    assert len(_text(history)) < len(json.dumps(big)) + 1000


async def test_a_long_conversation_is_budgeted_and_compacted(
    mcp_client: Connect, conn: asyncpg.Connection
) -> None:
    """Item 5 of issue 23: append_message(context_tokens=) and the compact tool, which
    requires the conversation's own session."""
    async with mcp_client() as client:
        sid = _ok(await client.call_tool("create_session", {"user_id": "u"}))["session_id"]
        other = _ok(await client.call_tool("create_session", {"user_id": "v"}))["session_id"]
        for n in range(1, 6):
            said = {"continuation_id": "long", "role": "user", "content": f"m{n}", "tokens": 10}
            _ok(await client.call_tool("append_message", {**said, "session_id": sid}))
        ask = {"session_id": sid, "continuation_id": "long", "role": "user", "content": "q"}
        budgeted = _ok(
            await client.call_tool("append_message", {**ask, "tokens": 1, "context_tokens": 25})
        )
        before = await row_counts(conn)
        stolen = await client.call_tool(
            "compact",
            {"session_id": other, "continuation_id": "long", "through_seq": 2, "summary": "x"},
        )
        missing = await client.call_tool(
            "compact",
            {"session_id": other, "continuation_id": "nobody", "through_seq": 2, "summary": "x"},
        )
        past = await client.call_tool(
            "compact",
            {"session_id": sid, "continuation_id": "long", "through_seq": 99, "summary": "x"},
        )
        assert await row_counts(conn) == before
        summary = _ok(
            await client.call_tool(
                "compact",
                {
                    "session_id": sid,
                    "continuation_id": "long",
                    "through_seq": 4,
                    "summary": "S",
                    "tokens": 3,
                    "delete_originals": True,
                },
            )
        )
        after = _ok(await client.call_tool("append_message", {**ask, "content": "r"}))
        history = _ok(
            await client.call_tool("get_history", {"session_id": sid, "continuation_id": "long"})
        )
    assert [m["content"] for m in budgeted["context"]] == ["m4", "m5"]  # 1 + 20 fit 25
    assert _error_text(stolen) == _error_text(missing).replace("nobody", "long")
    assert _error_text(past) == "through_seq: is past the conversation's last message"
    assert (summary["seq"], summary["covers_through"]) == (7, 4)
    assert after["context"][0] == {"seq": 7, "role": "system", "content": "S", "covers_through": 4}
    assert [m["content"] for m in after["context"]] == ["S", "m5", "q"]
    assert [m["content"] for m in history["messages"]] == ["S", "m5", "q", "r"]
    assert await conn.fetchval("SELECT count(*) FROM messages") == 4  # m1..m4 deleted
