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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from uuid import UUID

from ..models import ContinuationId, Message, MessageRole, PendingWrite, from_trusted
from ..rules import within_budget
from .items import by_ticket

__all__ = ["PendingIndex", "as_messages", "merged"]

#: A conversation as a waiting message names it: its id, or its continuation id (a str).
Key = UUID | str


def _key(item: PendingWrite) -> Key:
    if item.conversation_id is not None:
        return item.conversation_id
    assert item.continuation_id is not None  # accepted with one or the other
    return item.continuation_id


class PendingIndex:
    """Waiting messages by the conversation key they were accepted with, in accept order;
    and, while a read is in progress, the messages made durable since it began.

    A read looks its conversation up by the key its caller used, reads, and only then
    learns the conversation's other key: a message accepted under that key and written
    by a batch that committed after the read's snapshot has left the index by the time
    it is looked for. :meth:`reading` keeps such messages findable until the read ends.
    """

    def __init__(self) -> None:
        self._by_key: dict[Key, dict[UUID, PendingWrite]] = {}
        # Messages made durable while a read was in progress, in the order they were.
        self._left: list[PendingWrite] = []
        self._readers = 0

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def add(self, item: PendingWrite) -> None:
        """Count ``item`` as waiting."""
        self._by_key.setdefault(_key(item), {})[item.id] = item

    def discard(self, items: Iterable[PendingWrite], *, durable: bool = False) -> None:
        """``items`` are durable (``durable=True``), set aside or handed over (spilled): no
        longer waiting. Durable ones stay findable by reads in progress."""
        for item in items:
            key = _key(item)
            waiting = self._by_key.get(key)
            if waiting is not None and waiting.pop(item.id, None) is not None:
                if not waiting:
                    del self._by_key[key]
                if durable and self._readers:
                    self._left.append(item)

    @contextmanager
    def reading(self) -> Iterator[int]:
        """Mark the start of a read: yields a mark for :meth:`matching`'s ``since``; the
        messages made durable meanwhile are kept until no read is in progress."""
        self._readers += 1
        try:
            yield len(self._left)
        finally:
            self._readers -= 1
            if not self._readers:
                self._left.clear()

    def matching(self, *keys: Key | None, since: int | None = None) -> list[PendingWrite]:
        """The waiting messages of a conversation known by any of ``keys``, in accept order
        (a ``ContinuationId`` counts as its text); with ``since`` (a mark of
        :meth:`reading`) also those made durable after it."""
        plain = {str(k) if isinstance(k, ContinuationId) else k for k in keys if k is not None}
        found: dict[UUID, PendingWrite] = {}
        for key in plain:
            found.update(self._by_key.get(key, {}))
        if since is not None:
            found.update((i.id, i) for i in self._left[since:] if _key(i) in plain)
        return sorted(found.values(), key=by_ticket)


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
                "covers_through": None,
            },
        )
        for n, item in enumerate(waiting, start=1)
    ]


def merged(
    stored: list[Message], waiting: list[Message], *, limit: int, before: int, budget: int | None
) -> list[Message]:
    """The latest ``limit`` of ``stored`` (a page already read below ``before``: its
    live summary, if any, first) then ``waiting`` with ``seq < before``, within
    ``budget`` tokens (see :func:`~sessionstore.rules.within_budget`)."""
    later = [m for m in waiting if m.seq < before]
    return within_budget([*stored, *later][-limit:], budget)
