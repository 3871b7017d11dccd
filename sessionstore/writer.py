"""The write-behind engine: ``enqueue`` returns at once, one background task makes it durable.

Guarantees:

- nothing is dropped: a full queue makes ``put`` wait (``put_nowait`` raises
  :class:`~sessionstore.errors.QueueFullError`);
- a batch is one call of the ``write`` function it was given (one statement, one round
  trip); ids are generated when a message is accepted, and the statements skip ids
  already stored, so a retried batch (after a lost connection, a timeout, a server
  restart) never duplicates rows or counters;
- per conversation, the order of acceptance is the order of ``seq``: one task writes the
  batches, in order, and a batch is retried before the next is started;
- transient errors are retried with the :data:`~sessionstore.retry.WRITER` backoff; a row
  that can never be written (its conversation or session is gone, data the database
  refuses) is set aside with its reason, reported to ``on_write_error`` and counted, and
  the rest of its batch still lands;
- ``flush()`` returns when everything accepted before it is durable or set aside, and
  ``close()`` drains; if the database stays unreachable for ``write_deadline`` they raise
  :class:`~sessionstore.errors.WriteBehindError` saying exactly what was not written
  (``close()`` first spills it to ``spill_path``, see :mod:`sessionstore.spill`).

The engine knows no SQL: the store hands it the function that writes one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from uuid import UUID

from tenacity import RetryCallState

from .errors import QueueFullError, SessionStoreError, WriteBehindError, is_transient
from .retry import WRITER, retrying
from .spill import append_spill
from .writes import FailedWrite, OnWriteError, PendingWrite, WriterStats

__all__ = ["WriteBatch", "Writer"]

logger = logging.getLogger("sessionstore")

#: Writes one batch (all of one kind) and returns the ids it rejected, with the reason.
WriteBatch = Callable[[Sequence[PendingWrite]], Awaitable[Mapping[UUID, str]]]

_KEEP_SET_ASIDE = 1000
# How often a waiting flush() looks at the deadline while the writer is stuck.
_DEADLINE_CHECK = 0.5


def _retryable(error: BaseException) -> bool:
    # Anything but a translated permanent error: a driver or programming fault must not
    # stop the writer (the messages are accepted), and resending a batch is safe.
    if not isinstance(error, Exception):
        return False  # cancellation
    return is_transient(error) or not isinstance(error, SessionStoreError)


class Writer:
    """The queue and its single background writer task. Created and owned by the store."""

    def __init__(
        self,
        write: WriteBatch,
        *,
        batch_size: int,
        max_delay: float,
        max_pending: int,
        write_deadline: float,
        spill_path: Path | None,
        on_write_error: OnWriteError | None = None,
        on_written: Callable[[Sequence[PendingWrite]], None] | None = None,
    ) -> None:
        self._write_batch = write
        self._batch_size = batch_size
        self._max_delay = max_delay
        self._max_pending = max_pending
        self._deadline = write_deadline
        self._spill_path = spill_path
        self._on_write_error = on_write_error
        self._on_written = on_written
        self._waiting: deque[PendingWrite] = deque()
        self._arrived = asyncio.Event()
        self._batch: list[PendingWrite] = []  # being collected or written
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self._issued = 0
        self._resolved = 0
        self._written = 0
        self._retried = 0
        self._set_aside_count = 0
        self._set_aside: deque[FailedWrite] = deque(maxlen=_KEEP_SET_ASIDE)
        self._failing_since: float | None = None
        self._closed = False

    # -- intake ---------------------------------------------------------------------

    def _full(self) -> bool:
        return len(self._waiting) >= self._max_pending

    def _check_open(self) -> None:
        if self._closed:
            raise SessionStoreError("the store is closed: no new writes are accepted")

    def _accept(self, item: PendingWrite) -> None:
        self._check_open()
        self._ensure_running()
        self._issued += 1
        item.ticket = self._issued
        item.accepted = time.monotonic()
        self._waiting.append(item)
        self._arrived.set()

    async def put(self, item: PendingWrite) -> None:
        """Accept ``item``, waiting while ``max_pending`` messages are waiting."""
        while self._full():
            self._check_open()  # a failed close() leaves its messages queued
            self._ensure_running()
            async with self._progress:
                await self._progress.wait()
        self._accept(item)

    def put_nowait(self, item: PendingWrite) -> None:
        """Accept ``item`` or raise :class:`QueueFullError`."""
        self._check_open()
        if self._full():
            raise QueueFullError(
                f"write-behind queue full ({self._max_pending} pending): wait with enqueue()"
            )
        self._accept(item)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception():
                logger.error("write-behind writer had stopped; restarting it")
            self._task = asyncio.create_task(self._run(), name="sessionstore-writer")

    # -- the writer task ------------------------------------------------------------

    async def _arrival(self, within: float | None) -> bool:
        """Wait until something is accepted; ``False`` if ``within`` seconds passed first."""
        self._arrived.clear()
        try:
            async with asyncio.timeout(within):
                await self._arrived.wait()
        except TimeoutError:
            return False
        return True

    async def _next_batch(self) -> list[PendingWrite]:
        """Up to ``batch_size`` messages of one kind, waiting at most ``max_delay`` after
        the first one's acceptance for more to arrive."""
        while not self._waiting:
            await self._arrival(None)
        first = self._waiting.popleft()
        self._batch = batch = [first]
        until = first.accepted + self._max_delay
        while len(batch) < self._batch_size:
            if self._waiting:
                if self._waiting[0].kind != first.kind:
                    break  # a batch holds one kind; the next starts with this one
                batch.append(self._waiting.popleft())
            elif not await self._arrival(max(0.0, until - time.monotonic())):
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._write(batch)
            self._batch = []
            self._resolved = batch[-1].ticket
            async with self._progress:
                self._progress.notify_all()

    async def _write(self, batch: Sequence[PendingWrite]) -> None:
        """Make ``batch`` durable or set its bad rows aside; retries transient errors."""
        started = time.monotonic()

        def on_retry(state: RetryCallState) -> None:
            self._retried += 1
            if self._failing_since is None:
                self._failing_since = started
            error = state.outcome.exception() if state.outcome is not None else None
            if error is not None and not isinstance(error, SessionStoreError):
                logger.error("write-behind batch raised an unexpected error", exc_info=error)

        what = f"write-behind batch of {len(batch)}"
        try:
            async for attempt in retrying(
                WRITER, retry_on=_retryable, what=what, on_retry=on_retry
            ):
                with attempt:
                    rejected = await self._write_batch(batch)
        except SessionStoreError as error:  # permanent: find the rows that cause it
            self._failing_since = None  # the database answered
            await self._split(batch, error)
            return
        self._failing_since = None
        if self._on_written is not None:
            self._on_written(batch)
        for item in batch:
            if item.id in rejected:
                self._set_aside_one(item, rejected[item.id], None)
        self._written += len(batch) - len(rejected)
        self._resolve(batch)

    def _resolve(self, done: Sequence[PendingWrite]) -> None:
        """``done`` is written or set aside: no longer in flight (a split batch resolves
        part by part)."""
        if len(done) == len(self._batch):
            self._batch = []
        else:
            ids = {item.id for item in done}
            self._batch = [item for item in self._batch if item.id not in ids]

    async def _split(self, batch: Sequence[PendingWrite], error: SessionStoreError) -> None:
        """A permanent error: write the halves apart until the bad rows stand alone."""
        if len(batch) == 1:
            if error.sqlstate == "23505":
                self._written += 1  # another writer (a replay) stored this very id
            else:
                self._set_aside_one(batch[0], str(error), error.sqlstate)
            self._resolve(batch)
            return
        middle = len(batch) // 2
        await self._write(batch[:middle])
        await self._write(batch[middle:])

    def _set_aside_one(self, item: PendingWrite, reason: str, sqlstate: str | None) -> None:
        failed = FailedWrite(
            item.id,
            item.kind,
            item.conversation_id,
            item.continuation_id,
            item.session_id,
            reason,
            sqlstate,
        )
        self._set_aside_count += 1
        self._set_aside.append(failed)
        logger.warning("write-behind message %s set aside: %s", item.id, reason)
        if self._on_write_error is not None:
            try:
                self._on_write_error(failed)
            except Exception:
                logger.exception("on_write_error callback failed")

    # -- flush, close, stats --------------------------------------------------------

    def _failing_past_deadline(self) -> bool:
        since = self._failing_since
        return since is not None and time.monotonic() - since >= self._deadline

    async def flush(self) -> None:
        """Return when every message accepted before this call is durable or set aside.

        :class:`WriteBehindError` if the database has been unreachable for
        ``write_deadline``; the messages stay queued and the writer keeps trying.
        """
        target = self._issued
        async with self._progress:
            while self._resolved < target:
                if self._failing_past_deadline():
                    pending = self._unwritten()
                    raise WriteBehindError(
                        f"{len(pending)} messages not yet written: the database has been "
                        f"unreachable for over write_deadline={self._deadline}s",
                        pending,
                        None,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), timeout=_DEADLINE_CHECK)

    async def close(self) -> None:
        """Stop accepting, drain, stop the task. Spill and raise if draining failed."""
        self._closed = True
        try:
            if self._task is not None:
                await self.flush()
        except WriteBehindError as error:
            await self._stop()
            async with self._progress:
                self._progress.notify_all()  # put() callers waiting for room: it is closed
            unwritten = self._unwritten()
            path = self._spill_path
            if path is not None:
                append_spill(path, unwritten)
                logger.error("spilled %d unwritten messages to %s", len(unwritten), path)
            where = f"spilled to {path}" if path else "no spill_path configured"
            raise WriteBehindError(
                f"{len(unwritten)} accepted messages were not written ({where}): "
                f"the database stayed unreachable for write_deadline={self._deadline}s",
                unwritten,
                path,
            ) from error
        await self._stop()

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait never raises the task's CancelledError, so a cancellation of
            # close() itself still propagates.
            await asyncio.wait([task])

    def _unwritten(self) -> list[PendingWrite]:
        return [*self._batch, *self._waiting]

    def stats(self) -> WriterStats:
        """Counters and the queue's state right now."""
        pending = self._unwritten()
        now = time.monotonic()
        return WriterStats(
            queued=len(self._waiting),
            in_flight=len(self._batch),
            written=self._written,
            retried=self._retried,
            set_aside=self._set_aside_count,
            oldest_age=now - min(i.accepted for i in pending) if pending else None,
            failing_for=None if self._failing_since is None else now - self._failing_since,
        )

    def set_aside(self) -> list[FailedWrite]:
        """The most recent rows that could never be written (up to 1000)."""
        return list(self._set_aside)
