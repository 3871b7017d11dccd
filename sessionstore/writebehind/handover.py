"""The writer's side of the chat loop: a direct turn (``add_turn``) takes the messages
queued for its conversation and writes them before its own message, in the same
statement, so that ``add_turn(user, context=N)`` after ``enqueue_turn(reply)`` keeps the
conversation in order and its context complete, in one round trip.

A claimed message stays in the read-your-writes index until its turn is durable; a turn
that was refused, failed or whose outcome is unknown gives its claimed messages back, in
ticket order, ahead of everything queued after them (the writer then writes them, or
sets them aside, as it would have; their ids make a second write a no-op).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence
from uuid import UUID

from ..errors import StoreTimeoutError
from ..models import PendingWrite
from .items import by_ticket
from .readyourwrites import PendingIndex

__all__ = ["Handover"]


class Handover:
    """Claiming queued messages for a direct turn; mixed into
    :class:`~sessionstore.writebehind.engine.Writer`, whose state it shares."""

    _waiting: deque[PendingWrite]
    _batch: list[PendingWrite]  # being collected, or written when _sending
    _sending: bool
    _claimed: dict[UUID, PendingWrite]
    _claimed_since: float | None
    _progress: asyncio.Condition
    _arrived: asyncio.Event
    _flushing: int
    _written: int
    _on_written: Callable[[Sequence[PendingWrite]], None] | None
    pending: PendingIndex

    async def claim(
        self, continuation_id: str, session_id: UUID | None, *, within: float
    ) -> list[PendingWrite]:
        """Take the messages queued for the conversation ``continuation_id`` that no batch
        has started writing, in accept order, for a direct turn of ``session_id`` to
        write before its own message; :meth:`settle` them after. Returns ``[]`` at once
        when none is queued (the plain turn's path costs nothing more).

        Waits — at most ``within`` seconds, then :class:`StoreTimeoutError` (nothing claimed) —
        while one of them is in a batch being written, held by another direct turn, or
        would not fit this turn (a turn of another session, or of a session when this
        turn names none): the writer writes those first, without waiting ``max_delay``.
        Messages queued by the conversation's UUID are not taken: they keep their order
        among the writer's batches only.
        """
        if not self.pending.matching(continuation_id):
            return []
        try:
            async with asyncio.timeout(within), self._progress:
                while isinstance(taken := self._claimable(continuation_id, session_id), bool):
                    self._flushing += taken  # what does not fit is written now, not later
                    try:
                        self._arrived.set()
                        await self._progress.wait()
                    finally:
                        self._flushing -= taken
        except TimeoutError:
            raise StoreTimeoutError(
                f"the messages queued for this conversation were not written within "
                f"{within}s, so this turn could not follow them; nothing was written"
            ) from None
        ids = {item.id for item in taken}
        self._waiting = deque(i for i in self._waiting if i.id not in ids)
        self._batch[:] = [i for i in self._batch if i.id not in ids]  # in place: being collected
        if taken and not self._claimed:
            self._claimed_since = time.monotonic()
        self._claimed.update((i.id, i) for i in taken)
        return taken

    async def _without_held(self, batch: list[PendingWrite]) -> list[PendingWrite]:
        """``batch`` less the messages queued by a continuation id whose earlier messages
        a direct turn holds: those go back to the front of the queue and wait, so that
        the held ones land first even if the turn gives them back (refused, failed,
        cancelled). With nothing left, waits until a turn settles (or a flush)."""
        # Accept order: messages a turn gave back while the batch was being collected
        # joined it after later ones.
        batch.sort(key=by_ticket)
        claimed = {i.continuation_id for i in self._claimed.values()}
        if not claimed:
            return batch
        held = [i for i in batch if i.conversation_id is None and i.continuation_id in claimed]
        if not held:
            return batch
        ids = {i.id for i in held}
        self._batch = [i for i in batch if i.id not in ids]
        self._waiting.extendleft(reversed(held))
        if not self._batch:
            async with self._progress:
                await self._progress.wait()
        return self._batch

    def _claimable(
        self, continuation_id: str, session_id: UUID | None
    ) -> list[PendingWrite] | bool:
        """The conversation's queued messages in accept order; or, while the turn must
        wait for some of them to be written first, whether the writer must be hurried
        (True: one would not fit the turn) or is busy with them already (False)."""
        mine = [
            i
            for i in (*self._claimed.values(), *self._batch, *self._waiting)
            if i.conversation_id is None and i.continuation_id == continuation_id
        ]
        sending = set(map(id, self._batch)) if self._sending else set()
        if any(id(i) in sending or i.id in self._claimed for i in mine):
            return False
        if any(i.session_id is not None and i.session_id != session_id for i in mine):
            return True
        return sorted(mine, key=by_ticket)

    async def settle(self, items: Sequence[PendingWrite], *, durable: bool) -> None:
        """Claimed ``items`` are durable (``durable=True``: their turn's statement wrote or
        found them all), or go back to the writer, ahead of everything accepted after
        them: their turn was refused, failed, or its outcome is unknown."""
        for item in items:
            self._claimed.pop(item.id, None)
        if not self._claimed:
            self._claimed_since = None
        if durable:
            self._written += len(items)
            self.pending.discard(items, durable=True)
            if self._on_written is not None:
                self._on_written(items)
        else:
            back = list(items)
            if not self._sending:
                # A batch being collected may hold later messages of the same
                # conversation (collected once these were no longer held): they go back
                # too, so that the next batch takes everything in accept order.
                back += self._batch
                self._batch[:] = []  # in place: _next_batch is filling this very list
            back.sort(key=by_ticket)
            self._waiting = deque(heapq.merge(back, self._waiting, key=by_ticket))
            self._arrived.set()
        async with self._progress:
            self._progress.notify_all()  # flush() and claims waiting for these
