"""Frozen pydantic models returned to callers, and the role/status enums."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Generic, TypedDict, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict

__all__ = [
    "AddTurnOptions",
    "ContinuationId",
    "Conversation",
    "ConversationRef",
    "Message",
    "MessageOptions",
    "MessageRole",
    "Page",
    "Role",
    "Session",
    "SessionStatus",
    "TurnOptions",
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
    """The keyword options of every message append (``messages.add``, ``enqueue``,
    ``enqueue_nowait``, ``add_turn``, ``enqueue_turn``). All may be omitted or ``None``.

    ``metadata``: a JSON object stored with the message. ``tokens``: the message's token
    count (a non-negative integer), added to the conversation's (and a turn's session's)
    ``total_tokens``. Any other keyword raises ``InvalidInputError`` naming it.
    """

    metadata: Mapping[str, Any] | None
    tokens: int | None


class TurnOptions(MessageOptions, total=False):
    """:class:`MessageOptions` plus ``session_id``: the session the turn counts on (its
    ``turn_count`` and ``total_tokens`` grow; it must exist, be active and not expired)."""

    session_id: UUID | str | None


class AddTurnOptions(TurnOptions, total=False):
    """:class:`TurnOptions` plus ``message_id``: the id the new message gets, chosen by the
    caller (a UUID). Sending the same turn again with the same id returns the stored turn
    and counts nothing twice, so a turn whose outcome is unknown (``StoreTimeoutError``)
    can be resent safely; the same id with a different message raises ``ConflictError``.
    Two resends racing each other under ``as_user`` (one transaction each): the loser
    raises ``ConflictError`` (SQLSTATE 23505); sending it once more returns the turn.
    """

    message_id: UUID | str | None
    #: Return the conversation's latest ``context`` messages (1 to 1,000), this one
    #: included, oldest first, as ``Turn.context`` — in the same round trip.
    context: int | None


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
    """A conversation, found by its ``continuation_id``; counters are kept on the row."""

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


class Message(BaseModel):
    """One message; ``seq`` is its 1-based position in the conversation, in append order."""

    model_config = _FROZEN

    id: UUID
    conversation_id: UUID
    seq: int
    role: MessageRole
    content: str
    metadata: dict[str, Any]
    tokens: int | None
    created_at: datetime


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
