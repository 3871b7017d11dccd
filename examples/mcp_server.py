"""An MCP server (stdio) that keeps its sessions and conversations in PostgreSQL.

    pip install -e '.[mcp]'   # in a clone; once released: pip install 'sessionstore[mcp]'
    SESSIONSTORE_DATABASE_URL=postgresql://... python examples/mcp_server.py

The store opens in the server's lifespan and closes (flushing write-behind) when the
client closes the connection or the process gets SIGTERM/SIGINT.

A client creates a session, then passes its ``session_id`` and a ``continuation_id``
between tool calls. A conversation belongs to the session that first appended to it:
``append_message``, ``get_history`` and ``compact`` require the ``session_id``, and
another session's conversation is refused (appending: it belongs to another session;
reading and compacting: not found, the same answer as for a conversation that does not
exist). The session id is what lets
a client in: hand it only to the client whose session it is.

Every argument is checked here, before the SDK's own validation (whose text quotes the
input) sees it: a missing, unknown (say ``token`` for ``tokens``), mistyped or
out-of-range argument is refused with one sentence naming the argument, never its value.
A message's ``content`` is at most :data:`MAX_CONTENT_BYTES` (256 KiB as UTF-8); replies
carry at most :data:`MAX_PAGE` messages.

Every reply is one JSON object in one text block (no ``structuredContent``, which would
carry it a second time). ``append_message`` answers with the new message's id and
``seq`` and the ``context`` messages before it, not the appended content again: each
message is carried once. A refused call (bad input, a missing, expired or completed
session, another session's conversation) is an error result (``isError``) whose text is
the one-sentence error, and writes nothing.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import re
import signal
import sys
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, InputRequiredResult, TextContent

import sessionstore
from sessionstore import ContinuationId, Message, Session, SessionStore, SessionStoreError

# stdout carries the protocol: logs go to stderr, configured before MCPServer() is made
# (it configures logging itself when nothing has been).
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
)
log = logging.getLogger("mcp_server")

#: The most a message's ``content`` may hold, in bytes as UTF-8 (256 KiB).
MAX_CONTENT_BYTES = 256 * 1024
#: The most characters any other text argument may hold (ids, user ids, titles).
MAX_TEXT = 1000
#: The most messages one reply carries (``context``, ``limit``).
MAX_PAGE = 100
#: The longest session lifetime a client may ask for (ten years).
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
#: Integer arguments and their ranges (inclusive).
RANGES: Mapping[str, tuple[int, int]] = {
    "ttl_seconds": (1, MAX_TTL_SECONDS),
    "tokens": (0, 2**31 - 1),
    "context": (0, MAX_PAGE),
    "context_tokens": (1, 2**31 - 1),
    "through_seq": (1, 2**31 - 1),
    "limit": (1, MAX_PAGE),
    "before": (1, 2**31 - 1),
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: The arguments that carry a message's text (limited to MAX_CONTENT_BYTES).
_CONTENTS = frozenset({"content", "summary"})

_closed: anyio.Event | None = None  # set once the lifespan has closed the store (see serve)
_exit_code = 0


@asynccontextmanager
async def lifespan(server: MCPServer[SessionStore]) -> AsyncIterator[SessionStore]:
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


#: A tool's context; its lifespan context is the store the lifespan opened.
Ctx = Context[SessionStore, Any]
Tool = Callable[..., Awaitable[CallToolResult]]


class Refused(Exception):
    """A tool argument refused before the tool runs; its text is the whole answer."""


def _error(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


@functools.cache
def _parameters(tool: Tool) -> dict[str, tuple[type, bool]]:
    """Each argument of ``tool`` (all but its context): its type and whether it is required."""
    hints = typing.get_type_hints(tool)
    found: dict[str, tuple[type, bool]] = {}
    for name, parameter in inspect.signature(tool).parameters.items():
        if name == "ctx":
            continue
        hint = hints[name]
        if isinstance(hint, types.UnionType):  # ``str | None``: the one type that is not None
            (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
        found[name] = (hint, parameter.default is inspect.Parameter.empty)
    return found


def check_arguments(tool: Tool, arguments: Mapping[str, object]) -> dict[str, Any]:
    """The arguments of ``tool``, checked against its signature and this module's limits.

    ``Refused`` (one sentence naming the argument, never quoting a value) for an
    argument the tool does not take, a required one missing, a value of the wrong JSON
    type (no coercion: ``"5"`` is no integer, ``true`` no integer, ``5.0`` neither), a
    text over its length or an integer out of :data:`RANGES`. ``null`` is accepted for
    an optional argument and means its default.
    """
    parameters = _parameters(tool)
    for key in arguments:
        if key not in parameters:
            named = key if isinstance(key, str) and _NAME.fullmatch(key) else "an argument"
            raise Refused(
                f"{named}: is not an argument of {tool.__name__} (it takes {', '.join(parameters)})"
            )
    checked: dict[str, Any] = {}
    for name, (kind, required) in parameters.items():
        value = arguments.get(name)
        if value is None:
            if required:
                raise Refused(f"{name}: is required")
            continue
        if kind is str:
            if not isinstance(value, str):
                raise Refused(f"{name}: must be a string")
            if name in _CONTENTS:
                # characters first: a string too long by characters is never encoded
                # (surrogatepass: a lone surrogate is sessionstore's to refuse, by name)
                too_long = len(value) > MAX_CONTENT_BYTES
                if too_long or len(value.encode(errors="surrogatepass")) > MAX_CONTENT_BYTES:
                    raise Refused(
                        f"{name}: must be at most {MAX_CONTENT_BYTES} bytes as UTF-8 (256 KiB)"
                    )
            elif len(value) > MAX_TEXT:
                raise Refused(f"{name}: must be at most {MAX_TEXT} characters")
        elif kind is bool:
            if not isinstance(value, bool):
                raise Refused(f"{name}: must be true or false")
        else:
            assert kind is int
            if not isinstance(value, int) or isinstance(value, bool):
                raise Refused(f"{name}: must be an integer")
            low, high = RANGES[name]
            if not low <= value <= high:
                raise Refused(f"{name}: must be between {low} and {high}")
        checked[name] = value
    return checked


class CheckedServer(MCPServer[SessionStore]):
    """The SDK's server, with every call's arguments checked by :func:`check_arguments`
    before anything else sees them; the tool then runs with exactly those."""

    def __init__(self, name: str, **settings: Any) -> None:
        super().__init__(name, **settings)
        self.tools: dict[str, Tool] = {}

    def checked_tool(self, tool: Tool) -> Tool:
        """Register ``tool`` with the SDK (its schema and description come from the
        signature and docstring) and for checked calls."""
        self.tools[tool.__name__] = tool
        self.tool()(tool)
        return tool

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Ctx | None = None
    ) -> CallToolResult | InputRequiredResult:
        tool = self.tools.get(name)
        if tool is None:  # the SDK's answer to an unknown tool
            return await super().call_tool(name, arguments, context)
        try:
            checked = check_arguments(tool, arguments)
            if context is None:  # an in-process call, not a client's: the SDK makes one
                return await super().call_tool(name, checked, context)
            return await tool(ctx=context, **checked)
        except Refused as exc:
            return _error(str(exc))
        except SessionStoreError as exc:  # sessionstore's errors name no value either
            return _error(str(exc))
        except Exception:
            log.exception("tool %s failed", name)
            return _error(f"{name} failed; the server's log says why")


mcp = CheckedServer("sessionstore", lifespan=lifespan)


def _store(ctx: Ctx) -> SessionStore:
    return ctx.request_context.lifespan_context


def _answer(result: dict[str, Any]) -> CallToolResult:
    """The tool's result as JSON, once (see the module's docstring); non-ASCII text as
    itself, not as ``\\u`` escapes that would triple its size."""
    text = json.dumps(result, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)])


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
    """``fields`` of ``m``; a summary (see ``compact``) also says the last seq it covers."""
    shown = {"seq": m.seq, "role": m.role.value, "content": m.content, "tokens": m.tokens}
    picked = {name: shown[name] for name in fields}
    if m.covers_through is not None:
        picked["covers_through"] = m.covers_through
    return picked


@mcp.checked_tool
async def create_session(
    user_id: str, ctx: Ctx, title: str | None = None, ttl_seconds: int | None = None
) -> CallToolResult:
    """Start a session for a user; it expires after ttl_seconds (1 to 315360000, ten
    years; default: the store's). Returns its session_id, which every tool touching a
    conversation requires."""
    options: dict[str, Any] = {"title": title}
    if ttl_seconds is not None:
        options["ttl"] = timedelta(seconds=ttl_seconds)
    s = await _store(ctx).sessions.create(user_id, **options)
    full = _session(s)
    return _answer({key: full[key] for key in ("session_id", "status", "expires_at")})


@mcp.checked_tool
async def get_session(session_id: str, ctx: Ctx) -> CallToolResult:
    """A session's status, counters and expiry."""
    return _answer(_session(await _store(ctx).sessions.get(session_id)))


@mcp.checked_tool
async def append_message(
    session_id: str,
    continuation_id: str,
    role: str,
    content: str,
    ctx: Ctx,
    tokens: int | None = None,
    context: int = 20,
    context_tokens: int | None = None,
) -> CallToolResult:
    """Append a message (content at most 256 KiB as UTF-8) to the session's conversation
    continuation_id, created on first use and then the session's alone; a conversation
    of another session is refused. Returns the new message's message_id and seq and the
    latest `context` messages before it (0 to 100), oldest first; not the appended
    content, which the caller has. With context_tokens, only the latest of those that
    fit, with the new message, in that many tokens (a message without a token count
    counts one per four characters). After a compaction the context starts with the
    summary (it says the last seq it covers) when everything after it fits."""
    turn = await _store(ctx).add_turn(
        continuation_id,
        role,
        content,
        session_id=session_id,
        tokens=tokens,
        context=context + 1 if context else None,  # + 1: the new message, left out
        context_tokens=context_tokens if context else None,  # no context: nothing to fit
    )
    earlier = [m for m in turn.context or [] if m.id != turn.message.id]
    return _answer(
        {
            "message_id": str(turn.message.id),
            "seq": turn.message.seq,
            "conversation_id": str(turn.conversation.id),
            # earlier is empty when context is 0 (then [-0:] would be all of it)
            "context": [_message(m, "seq", "role", "content") for m in earlier[-context:]],
        }
    )


@mcp.checked_tool
async def get_history(
    session_id: str, continuation_id: str, ctx: Ctx, limit: int = 20, before: int | None = None
) -> CallToolResult:
    """The latest `limit` messages (1 to 100; those before seq `before`), oldest first, of
    the session's conversation continuation_id. Another session's conversation reads as
    not found. After a compaction the history starts with the summary (it says the last
    seq it covers, which is where `before` places it): a page that starts with it is the
    first."""
    history = await _store(ctx).messages.history(
        ContinuationId(continuation_id), limit=limit, before=before, session_id=session_id
    )
    return _answer({"messages": [_message(m, "seq", "role", "content", "tokens") for m in history]})


@mcp.checked_tool
async def compact(
    session_id: str,
    continuation_id: str,
    through_seq: int,
    summary: str,
    ctx: Ctx,
    tokens: int | None = None,
    delete_originals: bool = False,
) -> CallToolResult:
    """Record a summary (at most 256 KiB as UTF-8) of the session's conversation
    continuation_id up to seq through_seq: from then on the context and the history
    start with it, followed by the messages after through_seq. It may not go past the
    latest message nor cover less than an earlier summary. With delete_originals the
    messages it covers are deleted. Returns the summary's message_id and seq."""
    store = _store(ctx)
    # The session's own conversation, or the answer get_history gives for another's.
    seen = await store.messages.history(
        ContinuationId(continuation_id), limit=1, session_id=session_id
    )
    written = await store.messages.compact(
        seen[0].conversation_id if seen else ContinuationId(continuation_id),
        through_seq=through_seq,
        summary=summary,
        tokens=tokens,
        delete_originals=delete_originals,
    )
    return _answer(
        {
            "message_id": str(written.id),
            "seq": written.seq,
            "covers_through": written.covers_through,
        }
    )


@mcp.checked_tool
async def end_session(session_id: str, ctx: Ctx) -> CallToolResult:
    """Complete a session: it takes no more turns."""
    return _answer(_session(await _store(ctx).sessions.complete(session_id)))


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
