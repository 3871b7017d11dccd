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
  ``close()`` drains; if the writer has been trying to write a batch for
  ``write_deadline`` (counted from its first attempt, not from its first failure: an
  attempt that hangs until ``command_timeout`` counts) they raise
  :class:`~sessionstore.errors.WriteBehindError` saying exactly what was not written
  (``close()`` first spills it to ``spill_path``, see :mod:`sessionstore.writebehind.spill`);
- no message content reaches the logs or the reasons of set-aside rows: those name the
  error's class, its SQLSTATE, the schema objects involved and sizes
  (:func:`~sessionstore.writebehind.items.failure_reason`); a driver's message can quote the values
  it was sent, so its text is never used;
- an outage is logged once when the writer starts failing (WARNING) and once when it
  writes again (INFO); the retries in between are at DEBUG.

The engine knows no SQL: the store hands it the function that writes one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from uuid import UUID

from tenacity import RetryCallState

from ..errors import QueueFullError, SessionStoreError, WriteBehindError, is_transient
from ..models import FailedWrite, OnWriteError, PendingWrite, WriterStats
from ..retry import WRITER, describe, retrying
from .handover import Handover
from .items import failure_reason
from .readyourwrites import PendingIndex
from .spill import append_spill

__all__ = ["WriteBatch", "Writer"]

logger = logging.getLogger("sessionstore")

#: Writes one batch (all of one kind) and returns the ids it rejected, with the reason.
WriteBatch = Callable[[Sequence[PendingWrite]], Awaitable[Mapping[UUID, str]]]

_KEEP_SET_ASIDE = 1000


def _retryable(error: BaseException) -> bool:
    # Anything but a translated permanent error: a driver or programming fault must not
    # stop the writer (the messages are accepted), and resending a batch is safe.
    if not isinstance(error, Exception):
        return False  # cancellation
    return is_transient(error) or not isinstance(error, SessionStoreError)


def _quotable(error: BaseException) -> bool:
    # Connection-level errors (lost, refused, timed out) say nothing about the data; any
    # other error's text may quote the batch's values.
    return isinstance(error, SessionStoreError) and is_transient(error)


class Writer(Handover):
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
        self._sending = False  # _batch is being written: no longer claimable
        # Taken by direct turns (claim), in flight in their statements until settle(); and
        # since when some have been (the start of write_deadline for a flush meanwhile).
        self._claimed: dict[UUID, PendingWrite] = {}
        self._claimed_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self._issued = 0
        self._written = 0
        self._retried = 0
        self._set_aside_count = 0
        self._set_aside: deque[FailedWrite] = deque(maxlen=_KEEP_SET_ASIDE)
        # When the writer began trying the batch in flight (None between batches): the
        # start of write_deadline.
        self._trying_since: float | None = None
        # When the current run of failed attempts began (None while writes succeed).
        self._failing_since: float | None = None
        self._last_error: BaseException | None = None
        self._reported_bug = False
        self._opened = False  # by open(): before it, nothing is accepted
        self._closed = False
        #: Accepted messages not yet resolved (written, set aside or spilled), by
        #: conversation: what reads in this process add to what is stored
        #: (read-your-writes, see :mod:`sessionstore.writebehind.readyourwrites`).
        self.pending = PendingIndex()
        self._flushing = 0  # flush() calls waiting: collect no longer than that

    # -- intake ---------------------------------------------------------------------

    def _full(self) -> bool:
        return len(self._waiting) >= self._max_pending

    def open(self) -> None:
        """Start accepting (the store calls this once its pool is open)."""
        self._opened, self._closed = True, False

    def _check_open(self) -> None:
        if not self._opened:
            # Accepted now, the message could only be set aside: no pool to write with.
            raise SessionStoreError(
                "the store is not open (use `async with` or `await connect()`): "
                "no writes are accepted"
            )
        if self._closed:
            raise SessionStoreError("the store is closed: no new writes are accepted")

    def _accept(self, item: PendingWrite) -> None:
        self._check_open()
        self._ensure_running()
        self._issued += 1
        item.ticket = self._issued
        item.accepted = time.monotonic()
        self._waiting.append(item)
        self.pending.add(item)
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
            # In a context of its own: the writer serves every caller, so it inherits
            # neither the span of the call that happened to start it nor its variables.
            self._task = asyncio.create_task(
                self._run(), name="sessionstore-writer", context=contextvars.Context()
            )

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
            elif self._flushing or not await self._arrival(max(0.0, until - time.monotonic())):
                break  # max_delay is up, or a flush() waits: write what there is now
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._without_held(await self._next_batch())
            if not batch:
                continue  # a direct turn claimed all of it while it was collected
            self._sending, self._trying_since = True, time.monotonic()
            async with self._progress:
                self._progress.notify_all()  # a waiting flush() starts its deadline clock
            await self._write(batch)
            self._sending, self._trying_since = False, None
            self._batch = []
            async with self._progress:
                self._progress.notify_all()

    def _failed_attempt(self, state: RetryCallState, started: float, size: int) -> None:
        self._retried += 1
        error = state.outcome.exception() if state.outcome is not None else None
        if error is None:
            return
        self._last_error = error
        if self._failing_since is None:
            self._failing_since = started
            logger.warning(
                "write-behind: a batch of %d could not be written (%s); retrying with "
                "backoff, accepted messages stay queued (%d waiting, write_deadline=%ss; "
                "retries logged at DEBUG)",
                size,
                describe(error, message=_quotable(error)),
                len(self._waiting),
                self._deadline,
            )
        if not isinstance(error, SessionStoreError) and not self._reported_bug:
            self._reported_bug = True  # once per writer: it repeats on every retry
            # The frames, not the message: the message may quote the batch's values.
            logger.error(
                "write-behind batch raised an unexpected %s (a bug: please report it); "
                "the batch is retried. Traceback (message omitted):\n%s",
                type(error).__name__,
                "".join(traceback.format_tb(error.__traceback__)).rstrip(),
            )

    def _answered(self) -> None:
        """The database took (or refused) a batch: any failing run is over."""
        since, self._failing_since = self._failing_since, None
        if since is not None:
            logger.info(
                "write-behind: writing again after %.1fs (%d retries so far)",
                time.monotonic() - since,
                self._retried,
            )
        self._last_error = None

    async def _write(self, batch: Sequence[PendingWrite]) -> None:
        """Make ``batch`` durable or set its bad rows aside; retries transient errors."""
        started = time.monotonic()

        def on_retry(state: RetryCallState) -> None:
            self._failed_attempt(state, started, len(batch))

        what = f"write-behind batch of {len(batch)}"
        try:
            async for attempt in retrying(
                WRITER, retry_on=_retryable, what=what, on_retry=on_retry, quote=_quotable
            ):
                with attempt:
                    rejected = await self._write_batch(batch)
        except SessionStoreError as error:  # permanent: find the rows that cause it
            self._answered()
            await self._split(batch, error)
            return
        self._answered()
        if self._on_written is not None:
            self._on_written(batch)
        for item in batch:
            if item.id in rejected:
                self._set_aside_one(item, rejected[item.id], None)
        self._written += len(batch) - len(rejected)
        self._resolve(batch, rejected)

    def _resolve(self, done: Sequence[PendingWrite], set_aside: Collection[UUID] = ()) -> None:
        """``done`` is written, but for the ids in ``set_aside``: no longer in flight (a
        split batch resolves part by part)."""
        self.pending.discard((i for i in done if i.id not in set_aside), durable=True)
        self.pending.discard(i for i in done if i.id in set_aside)
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
                self._resolve(batch)
            else:
                self._set_aside_one(batch[0], failure_reason(error, batch[0]), error.sqlstate)
                self._resolve(batch, {batch[0].id})
            return
        middle = len(batch) // 2
        await self._write(batch[:middle])
        await self._write(batch[middle:])

    def _set_aside_one(self, item: PendingWrite, reason: str, sqlstate: str | None) -> None:
        """Report ``item`` as never writable. ``reason`` holds no message content."""
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

    def _why_stuck(self) -> str:
        error = self._last_error
        if error is None and self._claimed:
            return "an add_turn writing queued messages of its conversation has not finished"
        if error is None:
            return "its first attempt has not finished"
        return f"last error: {describe(error, message=_quotable(error))}"

    async def flush(self) -> None:
        """Return when every message accepted before this call is durable or set aside.

        :class:`WriteBehindError` once the writer has been trying to write one batch for
        ``write_deadline`` (counted from its first attempt: a hung attempt counts); that
        may be sooner than ``write_deadline`` after this call if the writer was already
        stuck. The messages stay queued and the writer keeps trying.
        """
        target = self._issued
        self._flushing += 1
        self._arrived.set()  # a batch being collected is written now, not after max_delay
        try:
            await self._wait_resolved(target)
        finally:
            self._flushing -= 1

    async def _wait_resolved(self, target: int) -> None:
        async with self._progress:
            while self._oldest() <= target:
                # The writer's attempt, or a direct turn holding queued messages: both
                # count against write_deadline.
                started = [t for t in (self._trying_since, self._claimed_since) if t is not None]
                since = min(started, default=None)
                remaining = None if since is None else since + self._deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    pending = self._unwritten()
                    raise WriteBehindError(
                        f"{len(pending)} messages not yet written: the writer has been "
                        f"trying for write_deadline={self._deadline}s ({self._why_stuck()})",
                        pending,
                        None,
                    )
                # Woken when a batch starts or ends; else when the deadline is due.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), timeout=remaining)

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
            self.pending.discard(unwritten)  # handed over: to the spill file, or the caller
            path = self._spill_path
            if path is not None:
                append_spill(path, unwritten)
                logger.error("spilled %d unwritten messages to %s", len(unwritten), path)
            where = f"spilled to {path}" if path else "no spill_path configured"
            raise WriteBehindError(
                f"{len(unwritten)} accepted messages were not written ({where}): "
                f"no batch could be written within write_deadline={self._deadline}s",
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

    def _oldest(self) -> float:
        """The lowest ticket not yet resolved (each collection is in ticket order)."""
        heads = [c[0].ticket for c in (self._batch, self._waiting) if c]
        return min((*heads, *(i.ticket for i in self._claimed.values())), default=math.inf)

    def _unwritten(self) -> list[PendingWrite]:
        return [*self._claimed.values(), *self._batch, *self._waiting]

    def stats(self) -> WriterStats:
        """Counters and the queue's state right now."""
        pending = self._unwritten()
        now = time.monotonic()
        return WriterStats(
            queued=len(self._waiting),
            in_flight=len(self._batch) + len(self._claimed),
            written=self._written,
            retried=self._retried,
            set_aside=self._set_aside_count,
            oldest_age=now - min(i.accepted for i in pending) if pending else None,
            failing_for=None if self._failing_since is None else now - self._failing_since,
        )

    def set_aside(self) -> list[FailedWrite]:
        """The most recent rows that could never be written (up to 1000)."""
        return list(self._set_aside)
