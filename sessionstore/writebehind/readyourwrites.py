"""Read-your-writes for write-behind: the messages this process accepted and has not yet
made durable, found by conversation, and merged into what a read returns.

The writer writes a conversation's messages in the order they were accepted, each batch
after whatever is already stored, so a message still waiting will land after every
stored one, in accept order: that is the order a read shows it in, with the ``seq`` it
will most likely get. Another process appending to the same conversation meanwhile can
land in between (its messages take the next numbers first), and a message the writer
sets aside (its session expired, its conversation belongs to another session) shows
until then. Other processes see only durable messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from uuid import UUID

from ..models import ContinuationId, Message, MessageRole, PendingWrite, from_trusted

__all__ = ["PendingIndex", "as_messages", "merged"]

#: A conversation as a waiting message names it: its id, or its continuation id (a str).
Key = UUID | str


def _key(item: PendingWrite) -> Key:
    if item.conversation_id is not None:
        return item.conversation_id
    assert item.continuation_id is not None  # accepted with one or the other
    return item.continuation_id


class PendingIndex:
    """Waiting messages by the conversation key they were accepted with, in accept order."""

    def __init__(self) -> None:
        self._by_key: dict[Key, dict[UUID, PendingWrite]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def add(self, item: PendingWrite) -> None:
        """Count ``item`` as waiting."""
        self._by_key.setdefault(_key(item), {})[item.id] = item

    def discard(self, items: Iterable[PendingWrite]) -> None:
        """``items`` are durable, set aside or handed over (spilled): no longer waiting."""
        for item in items:
            key = _key(item)
            waiting = self._by_key.get(key)
            if waiting is not None:
                waiting.pop(item.id, None)
                if not waiting:
                    del self._by_key[key]

    def matching(self, *keys: Key | None) -> list[PendingWrite]:
        """The waiting messages of a conversation known by any of ``keys``, in accept order
        (a ``ContinuationId`` counts as its text)."""
        found: dict[UUID, PendingWrite] = {}
        for key in keys:
            if key is not None:
                plain = str(key) if isinstance(key, ContinuationId) else key
                found.update(self._by_key.get(plain, {}))
        return sorted(found.values(), key=_ticket)


def _ticket(item: PendingWrite) -> int:
    return item.ticket


def as_messages(
    waiting: Sequence[PendingWrite], conversation_id: UUID, stored_count: int
) -> list[Message]:
    """``waiting`` as the messages they will most likely become: after the
    ``stored_count`` stored ones, in accept order."""
    return [
        from_trusted(
            Message,
            {
                "id": item.id,
                "conversation_id": conversation_id,
                "seq": stored_count + n,
                "role": MessageRole(item.role),
                "content": item.content,
                "metadata": {} if item.metadata is None else json.loads(item.metadata),
                "tokens": item.tokens,
                "created_at": item.enqueued_at,
            },
        )
        for n, item in enumerate(waiting, start=1)
    ]


def merged(
    stored: list[Message], waiting: list[Message], *, limit: int, before: int
) -> list[Message]:
    """The latest ``limit`` of ``stored`` then ``waiting`` with ``seq < before``."""
    return [m for m in [*stored, *waiting] if m.seq < before][-limit:]
