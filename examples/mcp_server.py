"""An MCP server (stdio) that keeps its sessions and conversations in PostgreSQL.

    pip install "sessionstore[mcp]"
    SESSIONSTORE_DATABASE_URL=postgresql://... python examples/mcp_server.py

The store opens in the server's lifespan and closes (flushing write-behind) when the
client closes the connection or the process gets SIGTERM/SIGINT. A client passes a
``continuation_id`` between tool calls; ``append_message`` appends to that conversation
and returns the context for the model in the same round trip. A refused call (bad input,
a missing, expired or completed session) comes back as an error result whose text is
sessionstore's one-sentence error, and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, TextContent

import sessionstore
from sessionstore import ContinuationId, Message, Session, SessionStore, SessionStoreError

# stdout carries the protocol: logs go to stderr, configured before MCPServer() is made
# (it configures logging itself when nothing has been).
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
)
log = logging.getLogger("mcp_server")

_closed: anyio.Event | None = None  # set once the lifespan has closed the store (see serve)
_exit_code = 0


@asynccontextmanager
async def lifespan(server: MCPServer) -> AsyncIterator[SessionStore]:
    store = await sessionstore.connect()  # SESSIONSTORE_DATABASE_URL and SESSIONSTORE_*
    try:
        yield store
    finally:
        try:
            with anyio.CancelScope(shield=True):  # a signal cancels the server: still close
                await store.close()  # drains write-behind; spills and raises if it cannot
        except SessionStoreError:
            log.exception("the store did not close cleanly")
            global _exit_code
            _exit_code = 1
        finally:
            if _closed is not None:
                _closed.set()


mcp = MCPServer("sessionstore", lifespan=lifespan)


#: A tool's context; its lifespan context is the store the lifespan opened.
Ctx = Context[SessionStore, Any]


def _store(ctx: Ctx) -> SessionStore:
    return ctx.request_context.lifespan_context


async def _answer(work: Awaitable[dict[str, Any]]) -> CallToolResult:
    """The tool's structured result (also as JSON text), or sessionstore's one-sentence
    error as the error result's whole text."""
    try:
        result = await work
    except SessionStoreError as exc:
        return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
    text = TextContent(type="text", text=json.dumps(result))
    return CallToolResult(content=[text], structured_content=result)


def _session(s: Session) -> dict[str, Any]:
    return {
        "session_id": str(s.id),
        "user_id": s.user_id,
        "status": s.status.value,
        "turn_count": s.turn_count,
        "total_tokens": s.total_tokens,
        "expires_at": s.expires_at.isoformat() if s.expires_at else None,
    }


def _message(m: Message, *fields: str) -> dict[str, Any]:
    shown = {"seq": m.seq, "role": m.role.value, "content": m.content, "tokens": m.tokens}
    return {name: shown[name] for name in fields}


@mcp.tool()
async def create_session(
    user_id: str, ctx: Ctx, title: str | None = None, ttl_seconds: int | None = None
) -> CallToolResult:
    """Start a session for a user; it expires after ttl_seconds (default: the store's)."""

    async def work() -> dict[str, Any]:
        options: dict[str, Any] = {"title": title}
        if ttl_seconds is not None:
            options["ttl"] = timedelta(seconds=ttl_seconds)
        s = await _store(ctx).sessions.create(user_id, **options)
        full = _session(s)
        return {key: full[key] for key in ("session_id", "status", "expires_at")}

    return await _answer(work())


@mcp.tool()
async def get_session(session_id: str, ctx: Ctx) -> CallToolResult:
    """A session's status, counters and expiry."""

    async def work() -> dict[str, Any]:
        return _session(await _store(ctx).sessions.get(session_id))

    return await _answer(work())


@mcp.tool()
async def append_message(
    continuation_id: str,
    role: str,
    content: str,
    ctx: Ctx,
    session_id: str | None = None,
    tokens: int | None = None,
    context: int = 20,
) -> CallToolResult:
    """Append a message to the conversation (created on first use, counted on the
    session if given) and return the latest `context` messages for the model."""

    async def work() -> dict[str, Any]:
        turn = await _store(ctx).add_turn(
            continuation_id, role, content, session_id=session_id, tokens=tokens, context=context
        )
        return {
            "message_id": str(turn.message.id),
            "seq": turn.message.seq,
            "conversation_id": str(turn.conversation.id),
            "context": [_message(m, "seq", "role", "content") for m in turn.context or []],
        }

    return await _answer(work())


@mcp.tool()
async def get_history(
    continuation_id: str, ctx: Ctx, limit: int = 20, before: int | None = None
) -> CallToolResult:
    """The conversation's latest `limit` messages (those before seq `before`), oldest first."""

    async def work() -> dict[str, Any]:
        history = await _store(ctx).messages.history(
            ContinuationId(continuation_id), limit=limit, before=before
        )
        return {"messages": [_message(m, "seq", "role", "content", "tokens") for m in history]}

    return await _answer(work())


@mcp.tool()
async def end_session(session_id: str, ctx: Ctx) -> CallToolResult:
    """Complete a session: it takes no more turns."""

    async def work() -> dict[str, Any]:
        return _session(await _store(ctx).sessions.complete(session_id))

    return await _answer(work())


async def serve() -> None:
    """Serve stdio until the client closes it, or until SIGTERM/SIGINT.

    The stdio transport reads stdin in a thread that cancellation cannot interrupt: after
    a signal the lifespan closes the store, then the process exits without waiting for
    stdin to close.
    """
    global _closed
    closed = _closed = anyio.Event()
    async with anyio.create_task_group() as group:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal %d: closing the store", signum)
                    group.cancel_scope.cancel()
                    # close() may take write_deadline draining, then command_timeout
                    config = sessionstore.StoreConfig.load()
                    bound = config.write_deadline + (config.command_timeout or 30) + 5
                    with anyio.CancelScope(shield=True), anyio.move_on_after(bound):
                        await closed.wait()
                    logging.shutdown()
                    os._exit(_exit_code if closed.is_set() else 1)

        group.start_soon(on_signal)
        await mcp.run_stdio_async()
        group.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(serve)
    sys.exit(_exit_code)
