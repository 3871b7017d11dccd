"""What callers pass and get back: frozen pydantic models, the role/status enums, the
result types of the store's calls (``Turn``, ``PurgeCounts``, ``PruneCounts``,
``StoreStats`` and the write-behind queue's ``PendingWrite``, ``FailedWrite``,
``WriterStats``), and the types of the callbacks and parameters ``connect`` and
``add_many`` take."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypedDict, TypeVar
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, ConfigDict

__all__ = [
    "AddTurnOptions",
    "AfterTurn",
    "ConfigureCallback",
    "Connection",
    "ContinuationId",
    "Conversation",
    "ConversationRef",
    "FailedWrite",
    "Invalidation",
    "Kind",
    "Message",
    "MessageOptions",
    "MessageRole",
    "NewMessage",
    "OnWriteError",
    "Page",
    "PendingWrite",
    "PruneCounts",
    "PurgeCounts",
    "Role",
    "Session",
    "SessionStatus",
    "StoreStats",
    "Turn",
    "TurnOptions",
    "WriterStats",
    "from_trusted",
]


class MessageRole(enum.StrEnum):
    """Who wrote a message. Mirrors the ``message_role`` enum in the database."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


#: A message's role, as the enum or its string value.
Role = MessageRole | str


class ContinuationId(str):
    """A conversation named by its continuation id, where a method takes a conversation.

    ``store.messages.history(ContinuationId("cont-123"))`` reads the conversation whose
    ``continuation_id`` is ``"cont-123"`` in one round trip, without its UUID. A plain
    ``str`` there is the conversation's UUID in text form, as before: continuation ids
    are chosen by clients and may look like UUIDs, so a string is never guessed to be
    one or the other (a client must not reach another conversation by naming its id).
    """

    __slots__ = ()


#: A conversation, by its ``id`` (a ``UUID`` or its text) or its :class:`ContinuationId`.
ConversationRef = UUID | str


class MessageOptions(TypedDict, total=False):
    """The keyword options of every message append: ``metadata`` and ``tokens``
    (``messages.add``, ``enqueue``, ``enqueue_nowait``; with more, ``add_turn`` and
    ``enqueue_turn``). Each may be omitted or ``None``; any other keyword raises
    ``InvalidInputError`` naming it."""

    metadata: Mapping[str, Any] | None
    """A JSON object stored with the message (``{}`` when omitted). Only what reads back
    exactly is accepted: string keys; lists, strings (no NUL), integers of at most 4,300
    digits, finite floats below 1e16 in magnitude, booleans and ``None``; at most 100
    levels deep and 8 MiB as JSON. Tuples are refused (they would read back as lists).
    ``InvalidInputError`` names the path of an offending value (``metadata.a[2]``),
    never the value."""
    tokens: int | None
    """The message's token count (a non-negative integer), added to the conversation's
    ``total_tokens`` (and, in a turn, to the session's)."""


class TurnOptions(MessageOptions, total=False):
    """The keyword options of ``enqueue_turn``: :class:`MessageOptions` (``metadata``,
    ``tokens``) plus ``session_id``."""

    session_id: UUID | str | None
    """The session the turn counts on: its ``turn_count`` grows by one and its
    ``total_tokens`` by ``tokens``. It must exist, be active and not expired; a
    conversation not yet bound to a session is bound to this one, and a conversation
    bound to another session refuses the turn (``ConflictError``)."""


class AddTurnOptions(TurnOptions, total=False):
    """The keyword options of ``add_turn``: :class:`TurnOptions` (``metadata``, ``tokens``,
    ``session_id``) plus ``message_id``, ``context`` and ``context_tokens``."""

    message_id: UUID | str | None
    """The id the new message gets, chosen by the caller (a UUID). Sending the same turn
    again with the same id returns the stored turn and counts nothing twice, so a turn
    whose outcome is unknown (``StoreTimeoutError``) can be resent safely; the same id
    with a different message raises ``ConflictError``. Resends racing each other (or the
    original) all return the one stored turn, under ``as_user`` too."""
    context: int | None
    """Also return the conversation's latest ``context`` messages (1 to 1,000), this one
    included, oldest first, as :attr:`Turn.context` — in the same round trip. The
    messages before this one are the stored conversation at one instant: a run ending
    right before it. When another client's write raced the turn, they are read again
    (a second round trip) after the turn committed; if by then this message itself was
    removed (``pop``, ``clear``), they are what was stored before it then, so the run may
    end short of it. A context never holds another message removed before it was read."""
    context_tokens: int | None
    """With ``context`` (or alone: then up to 1,000 messages), only the latest messages
    whose tokens sum to at most ``context_tokens`` (1 to 2³¹−1), this one included — alone
    if it exceeds the budget. A message without a token count counts ⌈UTF-8 bytes / 4⌉.
    Chosen in the same statement (see ``messages.history``'s ``max_tokens``)."""


class SessionStatus(enum.StrEnum):
    """A session's status. ``COMPLETED`` and ``EXPIRED`` are terminal."""

    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    EXPIRED = "expired"


_FROZEN = ConfigDict(frozen=True)


class Session(BaseModel):
    """A user's session. ``status`` reads ``EXPIRED`` once ``expires_at`` has passed."""

    model_config = _FROZEN

    id: UUID
    user_id: str
    title: str | None
    status: SessionStatus
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    metadata: dict[str, Any]
    turn_count: int
    total_tokens: int
    version: int


class Conversation(BaseModel):
    """A conversation, found by its ``continuation_id``; counters are kept on the row.

    A fork (``conversations.fork``) records its source in ``forked_from`` (``None`` once
    the source is deleted) and the ``seq`` of the last message it copied in
    ``forked_at_seq``; both are ``None`` for a conversation that is no fork.

    ``compacted_through``: the ``covers_through`` of its live summary (see
    ``messages.compact``), ``None`` for a conversation never compacted. ``message_count``
    stays the ``seq`` of its latest message (summaries included), and ``total_tokens`` the
    sum of the token counts of the messages it holds.
    """

    model_config = _FROZEN

    id: UUID
    continuation_id: str
    session_id: UUID | None
    title: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    message_count: int
    last_message_at: datetime | None
    total_tokens: int
    forked_from: UUID | None
    forked_at_seq: int | None
    compacted_through: int | None


class Message(BaseModel):
    """One message; ``seq`` is its 1-based position in the conversation, in append order.

    A summary (``messages.compact``) is a message whose ``covers_through`` is set: the last
    ``seq`` it stands for; ``None`` on every other message.
    """

    model_config = _FROZEN

    id: UUID
    conversation_id: UUID
    seq: int
    role: MessageRole
    content: str
    metadata: dict[str, Any]
    tokens: int | None
    created_at: datetime
    covers_through: int | None


T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# The instance layout of pydantic v2 models. Rows from our own queries need no
# validation; filling these slots directly is 4x cheaper than model_construct (which
# matters at 50 messages per history read). If a pydantic release changes the layout,
# the check below falls back to model_construct; tests compare both paths.
_LAYOUT = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
_FAST = set(_LAYOUT) <= set(getattr(BaseModel, "__slots__", ()))
_set = object.__setattr__


def from_trusted(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of ``cls`` from already-correct ``values`` (database rows), unvalidated.

    Equal to ``cls.model_construct(**values)``.
    """
    if not _FAST:
        return cls.model_construct(**values)
    obj = cls.__new__(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(values))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


class Page(BaseModel, Generic[T]):
    """One page of a listing. Pass ``next_cursor`` back to get the next; ``None`` at the end."""

    model_config = _FROZEN

    items: list[T]
    next_cursor: str | None


#: ``(role, content)``, optionally followed by ``metadata`` and ``tokens``: one message
#: of ``messages.add_many``.
NewMessage = (
    tuple[MessageRole | str, str]
    | tuple[MessageRole | str, str, Mapping[str, Any] | None]
    | tuple[MessageRole | str, str, Mapping[str, Any] | None, int | None]
)

#: A connection sessionstore hands to a callback: one of its pool's, or a direct one.
Connection = asyncpg.Connection | PoolConnectionProxy

#: ``connect(configure=...)``: called with each new connection after sessionstore's own
#: setup (e.g. to register codecs).
ConfigureCallback = Callable[[asyncpg.Connection], Awaitable[None]]


class Turn(BaseModel):
    """What ``add_turn`` wrote: the message, and the conversation and session after it.

    ``context``: with ``add_turn(..., context=N)``, the latest ``N`` messages of the
    conversation up to and including ``message``, oldest first; ``None`` otherwise.
    """

    model_config = _FROZEN

    message: Message
    conversation: Conversation
    session: Session | None
    context: list[Message] | None = None


#: ``add_turn(..., after=...)``: work done in the turn's transaction after the turn, given
#: the connection, the turn and whether this call wrote it (``False`` for a resend that
#: found it stored).
AfterTurn = Callable[[Connection, Turn, bool], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    """What ``purge_user`` deleted (messages appended while it ran go too, uncounted)."""

    sessions: int = 0
    conversations: int = 0
    messages: int = 0
    #: Rows of user-scoped framework state (Google ADK's ``user:`` state, every app).
    user_states: int = 0
    #: LangGraph checkpoints of the user's threads (``sessionstore.integrations.langgraph``;
    #: their blobs and pending writes go too, uncounted).
    checkpoints: int = 0


@dataclass(frozen=True, slots=True)
class PruneCounts:
    """What ``prune`` did: the ``messages`` it deleted, the ``conversations`` they were
    in, the short transactions (``batches``) it took, and the conversations it found
    busy on every visit, the last one waiting 500 ms for it (``skipped``: held longer;
    left for the next run)."""

    messages: int = 0
    conversations: int = 0
    batches: int = 0
    skipped: int = 0


#: ``message``: appended to an existing conversation (``messages.enqueue``);
#: ``turn``: a whole turn, conversation and session included (``enqueue_turn``).
Kind = Literal["message", "turn"]


@dataclass(slots=True)
class PendingWrite:
    """One accepted message waiting to be written. ``ticket`` and ``accepted`` (a
    monotonic time) are set by the writer when it takes the message."""

    id: UUID
    kind: Kind
    conversation_id: UUID | None
    continuation_id: str | None
    session_id: UUID | None
    role: str
    content: str
    metadata: str | None
    tokens: int | None
    enqueued_at: datetime
    ticket: int = 0
    accepted: float = 0.0


@dataclass(frozen=True, slots=True)
class FailedWrite:
    """A message that can never be written, and why.

    ``reason`` never holds the message's content or metadata: it names the error's class,
    the schema objects the server named and the sizes of the message's fields, or the
    rule that refused the row ("conversation not found").
    """

    id: UUID
    kind: Kind
    conversation_id: UUID | None
    continuation_id: str | None
    session_id: UUID | None
    reason: str
    sqlstate: str | None


#: Called with each write-behind message that can never be written.
OnWriteError = Callable[[FailedWrite], None]


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of the write-behind queue.

    ``queued``: accepted, not yet picked up; ``in_flight``: in the batch being collected
    or written; ``written``: durable; ``retried``: batch attempts that failed
    transiently; ``set_aside``: rows that can never be written; ``oldest_age``: seconds
    since the oldest unwritten message was accepted (``None`` when there is none);
    ``failing_for``: seconds the writer has been failing to reach the database.
    """

    queued: int
    in_flight: int
    written: int
    retried: int
    set_aside: int
    oldest_age: float | None
    failing_for: float | None


#: How the session cache learns of other processes' changes: ``notify`` (LISTEN/NOTIFY),
#: ``ttl`` (entries live ``cache_ttl``) or ``off``.
Invalidation = Literal["notify", "ttl", "off"]


@dataclasses.dataclass(frozen=True, slots=True)
class StoreStats(WriterStats):
    """:class:`WriterStats` plus the session cache and the connection pool.

    ``cache_invalidation`` is ``notify`` (LISTEN/NOTIFY from other processes), ``ttl``
    (behind a transaction pooler or with notifications off: entries live ``cache_ttl``)
    or ``off``; ``cache_listening`` says whether the listener is connected right now.
    ``pool_size``: connections open now; ``pool_in_use``: of those, checked out by a call;
    ``pool_max_size``: the most the pool opens.
    """

    cache_entries: int
    cache_hits: int
    cache_misses: int
    cache_invalidation: Invalidation
    cache_listening: bool
    pool_size: int
    pool_in_use: int
    pool_max_size: int
