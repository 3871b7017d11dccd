"""LangChain chat message history on sessionstore (optional extra: ``langchain-core``).

:class:`SessionStoreChatMessageHistory` is LangChain's ``BaseChatMessageHistory`` over a
sessionstore conversation, so ``RunnableWithMessageHistory`` (or any code written against
that interface) keeps its history in PostgreSQL::

    history = SessionStoreChatMessageHistory(store, "chat-42", session_id=session.id)
    await history.aadd_messages([HumanMessage("hi"), AIMessage("hello")])

Each LangChain message is one sessionstore message whose ``content`` is the JSON text of
``langchain_core.messages.message_to_dict(message)`` (read back with
``messages_from_dict``), so every field survives exactly; the sessionstore ``role`` and
``metadata`` carry a searchable summary. The guide:
[LangChain chat message history][langchain-chat-message-history].
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar
from uuid import UUID

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)

from .. import validation as v
from ..errors import InvalidInputError, NotFoundError
from ..lifecycle import require_live
from ..models import ContinuationId, Message, MessageRole
from ..store import SessionStore, UserView
from .common import append_turn, check_binding, latest

__all__ = ["FORMAT", "SessionStoreChatMessageHistory"]

logger = logging.getLogger("sessionstore")

T = TypeVar("T")

#: ``metadata["format"]`` of every message this adapter writes: its ``content`` is the
#: JSON text of ``message_to_dict(message)``.
FORMAT: Final = "langchain"

# The types langchain_core.messages.messages_from_dict can read back. "remove" is left
# out on purpose: a RemoveMessage is an instruction to LangGraph's reducer, not a message.
_READABLE_TYPES: Final = frozenset(
    {
        "human",
        "ai",
        "system",
        "chat",
        "function",
        "tool",
        "AIMessageChunk",
        "HumanMessageChunk",
        "FunctionMessageChunk",
        "ToolMessageChunk",
        "SystemMessageChunk",
        "ChatMessageChunk",
    }
)
# ChatMessage roles that have a sessionstore counterpart; any other role is "assistant".
_CHAT_ROLES: Final = {
    "user": MessageRole.USER,
    "human": MessageRole.USER,
    "system": MessageRole.SYSTEM,
    "developer": MessageRole.SYSTEM,
    "assistant": MessageRole.ASSISTANT,
    "ai": MessageRole.ASSISTANT,
}
# Messages written by something else (add_turn, an MCP server) are read as plain text.
_PLAIN: Final[Mapping[MessageRole, type[BaseMessage]]] = {
    MessageRole.USER: HumanMessage,
    MessageRole.ASSISTANT: AIMessage,
    MessageRole.SYSTEM: SystemMessage,
}
_INT4_MAX: Final = 2**31 - 1

_Row = tuple[MessageRole, str, dict[str, Any], int | None]


def _role(message: BaseMessage) -> MessageRole:
    """The sessionstore role of a LangChain message (its exact type is in the content)."""
    if isinstance(message, HumanMessage):
        return MessageRole.USER
    if isinstance(message, SystemMessage):
        return MessageRole.SYSTEM
    if isinstance(message, ChatMessage):
        return _CHAT_ROLES.get(message.role.lower(), MessageRole.ASSISTANT)
    # ai, tool and function messages: the assistant's side of the exchange (a tool's
    # result answers the assistant's call and is not written by the user).
    return MessageRole.ASSISTANT


def _fact(value: object) -> str | None:
    """``value`` if it is a string jsonb can keep (metadata is a summary: a value it
    cannot keep is left out, never a reason to refuse the message)."""
    if not isinstance(value, str):
        return None
    try:
        v.identifier(value, "metadata")
    except InvalidInputError:
        return None
    return value


def _metadata(message: BaseMessage) -> dict[str, Any]:
    """Small searchable facts: the LangChain type and ids (never the content)."""
    meta: dict[str, Any] = {"format": FORMAT, "type": message.type}
    for key, value in (("id", message.id), ("name", message.name)):
        if (fact := _fact(value)) is not None:
            meta[key] = fact
    if isinstance(message, ChatMessage) and (role := _fact(message.role)) is not None:
        meta["role"] = role
    if isinstance(message, ToolMessage) and (call := _fact(message.tool_call_id)) is not None:
        meta["tool_call_id"] = call
    if isinstance(message, AIMessage) and message.tool_calls:
        ids = [i for i in (_fact(c.get("id")) for c in message.tool_calls) if i is not None]
        if ids:
            meta["tool_call_ids"] = ids
    return meta


def _tokens(message: BaseMessage) -> int | None:
    """The usage an AI message reports (``usage_metadata["total_tokens"]``), if usable."""
    if not isinstance(message, AIMessage) or message.usage_metadata is None:
        return None
    total = message.usage_metadata.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool) and 0 <= total <= _INT4_MAX:
        return total
    return None


def _rows(messages: object) -> list[_Row]:
    """``messages`` checked and converted, all of them before anything is sent.

    ``InvalidInputError`` names ``messages`` or ``messages[i]`` (its content is never
    quoted).
    """
    if isinstance(messages, str | bytes | Mapping | BaseMessage) or not isinstance(
        messages, Iterable
    ):
        raise InvalidInputError("messages", "must be a sequence of LangChain BaseMessage objects")
    rows: list[_Row] = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, BaseMessage):
            raise InvalidInputError(
                field, f"must be a LangChain BaseMessage, got {type(message).__name__}"
            )
        if message.type not in _READABLE_TYPES:
            raise InvalidInputError(
                f"{field}.type",
                f"must be a type messages_from_dict reads back: {sorted(_READABLE_TYPES)}",
            )
        try:
            # ensure_ascii: NULs and lone surrogates become escapes, so the text is
            # always something PostgreSQL can store.
            content = json.dumps(message_to_dict(message))
        except (TypeError, ValueError, RecursionError) as exc:
            # TypeError's text names only the offending type, never a value.
            reason = str(exc) if isinstance(exc, TypeError) else type(exc).__name__
            raise InvalidInputError(field, f"must be JSON-serialisable: {reason}") from None
        rows.append((_role(message), content, _metadata(message), _tokens(message)))
    return rows


def _from_stored(message: Message) -> BaseMessage:
    """The LangChain message a stored one holds. Messages not written by this adapter
    (plain text from ``add_turn`` or an MCP server) become Human/AI/System messages with
    the stored message's id."""
    if message.metadata.get("format") == FORMAT:
        try:
            return messages_from_dict([json.loads(message.content)])[0]
        except (ValueError, TypeError, KeyError):  # pydantic's ValidationError is a ValueError
            logger.warning(
                "message %s (seq %d) is marked as a LangChain message but cannot be read as "
                "one; returned as plain text",
                message.id,
                message.seq,
            )
    return _PLAIN[message.role](content=message.content, id=str(message.id))


class SessionStoreChatMessageHistory(BaseChatMessageHistory):
    """LangChain chat message history kept in a sessionstore conversation.

    ``continuation_id`` names the conversation (created on the first write);
    ``session_id`` binds it to a sessionstore session: every write is then one turn of
    that session, refused when the session is expired (``SessionExpiredError``), not
    active (``InvalidStateError``) or missing (``NotFoundError``), and a conversation
    bound to another session refuses writes (``ConflictError``); nothing is written in any
    refusal. Without ``session_id`` the conversation is unbound (service path only).
    ``store`` is a :class:`~sessionstore.SessionStore` or, for row-level security,
    ``store.as_user(user_id)`` — which needs ``session_id`` (under RLS a conversation is
    reachable only through a session the user owns).

    Keyword options:

    * ``window``: read only the latest ``window`` messages (``None``, the default, reads
      the whole history, as the interface expects). The window may start inside an
      exchange (a ``ToolMessage`` without its ``AIMessage``); for token-aware trimming
      use ``langchain_core.messages.trim_messages`` on the full history.
    * ``write_behind``: ``aadd_messages`` accepts the messages into the store's
      write-behind queue (``store.enqueue_turn``, one turn per message) instead of
      writing them before it returns. Reads in this process still see them
      (read-your-writes); ``store.flush()`` makes them durable. Refusals are found at
      write time and reported through ``on_write_error`` / ``store.stats()``, per
      message, not raised. Only with a ``SessionStore`` (``as_user`` has no queue).
    * ``loop``: the event loop the store was opened on, for the sync methods (default:
      the loop running when this object is made, else the first one an async method of
      it runs on). Pass it when the object is made in a worker thread, e.g. by the
      ``get_session_history`` of a sync chain run off the loop.

    Async methods (``aget_messages``, ``aadd_messages``, ``aclear``) are native: use them.
    Round trips: a read is one (plus one per further 1,000 messages); an append is one
    (``store.messages.add_many``) once the conversation exists. The first append to a
    conversation that does not exist yet also reads the session's status (when bound)
    and calls ``conversations.get_or_create`` — plus the failed append, unless a read by
    this object had already found the conversation missing. A clear is one call
    (``store.messages.clear``, one transaction).

    Sync methods (``messages``, ``add_messages``, ``add_message``, ``clear``, and the
    base class's helpers built on them) run the async method on the store's event loop,
    because the store's connections belong to it: from a thread where no loop is running
    they wait for the result (submitted to the store's loop if it runs in another thread,
    or run on it here if it is not running). Called from inside a running event loop they
    raise ``RuntimeError`` naming the async method to await instead — blocking there
    would stall (or, on the store's own loop, deadlock) the loop.

    Bound to a session, reads and ``aclear`` check, once per object, that the
    conversation is unbound or that session's (``ConflictError`` otherwise), and reads
    refuse a session that takes no more turns (see :meth:`aget_messages`). ``aclear``
    deletes the messages and keeps the conversation (``store.messages.clear``). A history
    of more than one page is read page by page, not as one snapshot. A timed-out append
    may have committed, and ``add_many`` has no message ids: resending can duplicate.

    ``InvalidInputError`` (naming the argument) for a bad argument or message, before
    anything is sent: a message that is not a ``BaseMessage``, whose type
    ``messages_from_dict`` cannot read back (e.g. ``RemoveMessage``), or that JSON cannot
    encode. JSON's rules apply to what is stored: tuples read back as lists, non-string
    dict keys as strings.
    """

    def __init__(
        self,
        store: SessionStore | UserView,
        continuation_id: str,
        *,
        session_id: UUID | str | None = None,
        window: int | None = None,
        write_behind: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not isinstance(store, SessionStore | UserView):
            raise InvalidInputError(
                "store", f"must be a SessionStore or a UserView, got {type(store).__name__}"
            )
        self._store = store
        self.continuation_id: str = v.identifier(continuation_id, "continuation_id")
        self.session_id: UUID | None = (
            None if session_id is None else v.uuid(session_id, "session_id")
        )
        if isinstance(store, UserView) and self.session_id is None:
            raise InvalidInputError(
                "session_id",
                "is required with as_user(...): under row-level security a conversation "
                "is visible only through a session the user owns",
            )
        self.window: int | None = None if window is None else v.positive_int(window, "window")
        self.write_behind: bool = v.flag(write_behind, "write_behind")
        if self.write_behind and not isinstance(store, SessionStore):
            raise InvalidInputError(
                "write_behind", "needs a SessionStore: as_user(...) views have no write-behind"
            )
        if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
            raise InvalidInputError(
                "loop", f"must be an asyncio event loop, got {type(loop).__name__}"
            )
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop = loop
        self._ref = ContinuationId(self.continuation_id)
        # Whether the conversation exists: None until a read or a write has told.
        self._exists: bool | None = None
        # With session_id: the conversation was found unbound or this session's.
        self._verified = False
        super().__init__()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(continuation_id={self.continuation_id!r}, "
            f"session_id={self.session_id!r})"
        )

    # -- async: the real implementation ---------------------------------------------

    async def aget_messages(self) -> list[BaseMessage]:
        """Every message of the conversation (or the latest ``window``), oldest first;
        ``[]`` if the conversation does not exist or RLS hides it.

        Bound to a session (``session_id``), the history is that session's live
        conversation: a session that takes no more turns raises here
        (``SessionExpiredError``, ``InvalidStateError``, ``NotFoundError``) and a
        conversation bound to another session raises ``ConflictError`` — before the
        model is called. ``RunnableWithMessageHistory`` writes the exchange in a
        listener that only logs errors, so a refusal found at the write would be lost.
        """
        self._bind_loop()
        if self.session_id is None:
            stored = await self._stored()
        else:  # one step: the three reads go at once
            session, _, stored = await asyncio.gather(
                self._store.sessions.get(self.session_id), self._bound(), self._stored()
            )
            require_live(session, "read the history of")
        return [_from_stored(m) for m in stored]

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` in order, all or nothing, in one round trip once the
        conversation exists (one turn of the session, if bound). An empty sequence is a
        no-op. With ``write_behind`` they are queued instead (see
        :class:`SessionStoreChatMessageHistory`)."""
        await self._add(_rows(messages))

    async def aclear(self) -> None:
        """Delete every message of the conversation, keeping the conversation (its next
        message is ``seq`` 1). No-op if the conversation does not exist."""
        self._bind_loop()
        if self.session_id is not None and not await self._bound():
            return
        try:
            await self._store.messages.clear(self._ref)
        except NotFoundError:
            self._exists = False

    # -- sync: the same, on the store's loop ------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:
        """Sync :meth:`aget_messages` (sync calls: :class:`SessionStoreChatMessageHistory`)."""
        return self._run_sync(self.aget_messages, "messages", "aget_messages")

    @messages.setter
    def messages(self, value: Sequence[BaseMessage]) -> None:
        """Replace the history: :meth:`clear`, then :meth:`add_messages` (two calls, not
        one transaction)."""
        self.clear()
        self.add_messages(value)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Sync :meth:`aadd_messages` (sync calls: :class:`SessionStoreChatMessageHistory`)."""
        rows = _rows(messages)  # bad input fails here, in the caller's thread
        self._run_sync(lambda: self._add(rows), "add_messages", "aadd_messages")

    def clear(self) -> None:
        """Sync :meth:`aclear` (sync calls: :class:`SessionStoreChatMessageHistory`)."""
        self._run_sync(self.aclear, "clear", "aclear")

    # -- internals --------------------------------------------------------------------

    def _bind_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    def _run_sync(self, call: Callable[[], Awaitable[T]], name: str, async_name: str) -> T:
        """Run ``call()`` on the store's loop and wait for it, from a thread where no
        event loop is running."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                f"{type(self).__name__}.{name} cannot be used inside a running event loop "
                f"(it would block the loop): use 'await history.{async_name}(...)' instead"
            )
        loop = self._loop
        if loop is None:
            raise RuntimeError(
                f"{type(self).__name__}.{name}: no event loop known for the store: create "
                "the history inside the store's event loop, or pass loop="
            )
        if loop.is_closed():
            raise RuntimeError(f"{type(self).__name__}.{name}: the store's event loop is closed")

        async def run() -> T:
            return await call()

        if loop.is_running():
            return asyncio.run_coroutine_threadsafe(run(), loop).result()
        return loop.run_until_complete(run())

    async def _add(self, rows: list[_Row]) -> None:
        self._bind_loop()
        if not rows:
            return
        if self.write_behind:
            await self._enqueue(rows)
            return
        await append_turn(self._store, self._ref, rows, self.session_id, exists=self._exists)
        self._exists = True

    async def _bound(self) -> bool:
        """Whether the conversation exists, checked once per object to be unbound or
        this session's (``ConflictError`` otherwise)."""
        if not self._verified:
            self._exists = await check_binding(self._store, self._ref, self.session_id)
            self._verified = self._exists
        return bool(self._exists)

    async def _stored(self) -> list[Message]:
        """The stored messages (the latest ``window``, or all)."""
        try:
            stored = await latest(self._store, self._ref, self.window)
        except NotFoundError:
            self._exists = False
            return []
        self._exists = True
        return stored

    async def _enqueue(self, rows: list[_Row]) -> None:
        store = self._store
        assert isinstance(store, SessionStore)  # checked in __init__
        for role, content, metadata, tokens in rows:
            await store.enqueue_turn(
                self.continuation_id,
                role,
                content,
                session_id=self.session_id,
                metadata=metadata,
                tokens=tokens,
            )
