"""The write-behind queue: ``enqueue`` returns at once, one background task makes it durable.

Guarantees:

- nothing is dropped: a full queue makes ``enqueue`` wait (``enqueue_nowait`` raises
  :class:`QueueFullError`);
- a batch is one statement and one round trip; ids are generated when a message is
  accepted, and the statement skips ids already stored, so a retried batch (after a lost
  connection, a timeout, a server restart) never duplicates rows or counters;
- per conversation, the order of ``enqueue`` calls is the order of ``seq``: one task
  writes the batches, in order, and a batch is retried before the next is started;
- transient errors are retried with jittered exponential backoff; a row that can never
  be written (its conversation or session is gone, data the database refuses) is set
  aside with its reason, reported to ``on_write_error`` and counted, and the rest of its
  batch still lands;
- ``flush()`` returns when everything accepted before it is durable or set aside, and
  ``close()`` drains; if the database stays unreachable for ``write_deadline`` they raise
  :class:`WriteBehindError` saying exactly what was not written (``close()`` first spills
  it to ``spill_path``, from which :func:`read_spill` / ``sessionstore replay`` restore it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from . import validation as v
from .db import Database, is_transient
from .errors import ConflictError, SessionStoreError, StoreTimeoutError

__all__ = [
    "FailedWrite",
    "PendingWrite",
    "QueueFullError",
    "WriteBehindError",
    "Writer",
    "WriterStats",
    "read_spill",
]

logger = logging.getLogger("sessionstore")

Kind = Literal["message", "turn"]

MESSAGE_BATCH = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::message_role[], $4::text[],
                         $5::jsonb[], $6::integer[], $7::timestamptz[])
        WITH ORDINALITY AS u(id, conversation_id, role, content, metadata, tokens, created_at, ord)
),
stored AS (  -- ids of this batch already written (a retry): probed by primary key
    SELECT id FROM messages WHERE id = ANY($1::uuid[])
),
fresh AS (
    SELECT i.* FROM input i WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.id = i.id)
),
per_conv AS (
    SELECT conversation_id, count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok,
           max(created_at) AS last_at
    FROM fresh GROUP BY conversation_id
),
bumped AS (
    UPDATE conversations c
    SET message_count = c.message_count + p.n,
        total_tokens = c.total_tokens + p.tok,
        last_message_at = greatest(c.last_message_at, p.last_at)
    FROM per_conv p
    WHERE c.id = p.conversation_id
    RETURNING c.id, c.message_count - p.n AS base
),
ins AS (
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens, created_at)
    SELECT f.id, f.conversation_id,
           b.base + row_number() OVER (PARTITION BY f.conversation_id ORDER BY f.ord),
           f.role, f.content, coalesce(f.metadata, '{}'::jsonb), f.tokens, f.created_at
    FROM fresh f JOIN bumped b ON b.id = f.conversation_id
    RETURNING id
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       ARRAY(SELECT f.id FROM fresh f
             WHERE NOT EXISTS (SELECT 1 FROM bumped b WHERE b.id = f.conversation_id)) AS rejected
"""

# Turns also get-or-create their conversation and bump their session; a turn whose
# session is missing, expired or not active is rejected (and nothing of it written).
TURN_BATCH = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::message_role[], $5::text[],
                         $6::jsonb[], $7::integer[], $8::timestamptz[])
        WITH ORDINALITY AS u(id, continuation_id, session_id, role, content, metadata,
                             tokens, created_at, ord)
),
stored AS (  -- ids of this batch already written (a retry): probed by primary key
    SELECT id FROM messages WHERE id = ANY($1::uuid[])
),
fresh AS (
    SELECT i.* FROM input i WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.id = i.id)
),
per_session AS (
    SELECT session_id, count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok
    FROM fresh WHERE session_id IS NOT NULL GROUP BY session_id
),
sess AS (
    UPDATE sessions s
    SET turn_count = s.turn_count + p.n, total_tokens = s.total_tokens + p.tok
    FROM per_session p
    WHERE s.id = p.session_id AND s.status = 'active'
      AND (s.expires_at IS NULL OR s.expires_at > now())
    RETURNING s.id
),
ok AS (
    SELECT f.* FROM fresh f WHERE f.session_id IS NULL OR f.session_id IN (SELECT id FROM sess)
),
per_conv AS (
    SELECT continuation_id, (array_agg(session_id ORDER BY ord))[1] AS session_id,
           count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok, max(created_at) AS last_at
    FROM ok GROUP BY continuation_id
),
conv AS (
    INSERT INTO conversations AS c
        (continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT continuation_id, session_id, n, last_at, tok FROM per_conv
    ON CONFLICT (continuation_id) DO UPDATE
    SET message_count = c.message_count + EXCLUDED.message_count,
        last_message_at = greatest(c.last_message_at, EXCLUDED.last_message_at),
        total_tokens = c.total_tokens + EXCLUDED.total_tokens
    RETURNING c.id, c.continuation_id, c.message_count
),
ins AS (
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens, created_at)
    SELECT o.id, conv.id,
           conv.message_count - p.n
               + row_number() OVER (PARTITION BY o.continuation_id ORDER BY o.ord),
           o.role, o.content, coalesce(o.metadata, '{}'::jsonb), o.tokens, o.created_at
    FROM ok o
    JOIN conv ON conv.continuation_id = o.continuation_id
    JOIN per_conv p ON p.continuation_id = o.continuation_id
    RETURNING id
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       ARRAY(SELECT f.id FROM fresh f WHERE NOT EXISTS (SELECT 1 FROM ok WHERE ok.id = f.id))
           AS rejected
"""


def uuid7() -> UUID:
    """A time-ordered (version 7) UUID: new rows land at the right edge of the primary key
    index instead of at random places in it, which keeps bulk inserts cheap."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return UUID(int=value)


_REJECTED = {
    "message": "conversation not found",
    "turn": "session not found, not active or expired",
}
_MAX_BACKOFF = 2.0
_KEEP_SET_ASIDE = 1000


class QueueFullError(SessionStoreError):
    """``enqueue_nowait`` found ``max_pending`` messages already waiting."""


@dataclass(slots=True)
class PendingWrite:
    """One accepted message waiting to be written."""

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

    @classmethod
    def accept(
        cls,
        kind: Kind,
        role: object,
        content: object,
        metadata: object,
        tokens: object,
        *,
        conversation_id: UUID | None = None,
        continuation_id: str | None = None,
        session_id: UUID | None = None,
    ) -> PendingWrite:
        """A new message with its fields checked (``InvalidInputError`` otherwise), a
        time-ordered id and the acceptance time."""
        return cls(
            id=uuid7(),
            kind=kind,
            conversation_id=conversation_id,
            continuation_id=continuation_id,
            session_id=session_id,
            role=v.role(role).value,
            content=v.text(content, "content") or "",
            metadata=v.metadata_json(metadata),
            tokens=v.tokens(tokens),
            enqueued_at=datetime.now(UTC),
        )

    def to_json(self) -> str:
        """One JSON line for a spill file."""
        return json.dumps(
            {
                "id": str(self.id),
                "kind": self.kind,
                "conversation_id": _str_or_none(self.conversation_id),
                "continuation_id": self.continuation_id,
                "session_id": _str_or_none(self.session_id),
                "role": self.role,
                "content": self.content,
                "metadata": None if self.metadata is None else json.loads(self.metadata),
                "tokens": self.tokens,
                "enqueued_at": self.enqueued_at.isoformat(),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, line: str) -> PendingWrite:
        """The inverse of :meth:`to_json`."""
        d = json.loads(line)
        return cls(
            id=UUID(d["id"]),
            kind=d["kind"],
            conversation_id=_uuid_or_none(d["conversation_id"]),
            continuation_id=d["continuation_id"],
            session_id=_uuid_or_none(d["session_id"]),
            role=d["role"],
            content=d["content"],
            metadata=None if d["metadata"] is None else json.dumps(d["metadata"]),
            tokens=d["tokens"],
            enqueued_at=datetime.fromisoformat(d["enqueued_at"]),
        )


def _str_or_none(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _uuid_or_none(value: str | None) -> UUID | None:
    return None if value is None else UUID(value)


def read_spill(path: Path) -> list[PendingWrite]:
    """The messages a ``close()`` spilled to ``path`` (JSON lines)."""
    with path.open(encoding="utf-8") as lines:
        return [PendingWrite.from_json(line) for line in lines if line.strip()]


@dataclass(frozen=True, slots=True)
class FailedWrite:
    """A message that can never be written, and why."""

    id: UUID
    kind: Kind
    conversation_id: UUID | None
    continuation_id: str | None
    session_id: UUID | None
    reason: str
    sqlstate: str | None


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of the write-behind queue.

    ``queued``: accepted, not yet picked up; ``in_flight``: in the batch being written;
    ``written``: durable; ``retried``: batch attempts that failed transiently;
    ``set_aside``: rows that can never be written; ``oldest_age``: seconds since the
    oldest unwritten message was accepted (``None`` when there is none);
    ``failing_for``: seconds the writer has been failing to reach the database.
    """

    queued: int
    in_flight: int
    written: int
    retried: int
    set_aside: int
    oldest_age: float | None
    failing_for: float | None


class WriteBehindError(SessionStoreError):
    """Accepted messages could not be made durable within ``write_deadline``.

    ``unwritten`` holds exactly those messages; ``spill_path`` names the file they were
    written to (``None`` if no ``spill_path`` was configured).
    """

    def __init__(
        self, message: str, unwritten: list[PendingWrite], spill_path: Path | None
    ) -> None:
        super().__init__(message)
        self.unwritten = unwritten
        self.spill_path = spill_path


OnWriteError = Callable[[FailedWrite], None]


class Writer:
    """The queue and its single background writer task. Created and owned by the store."""

    def __init__(
        self,
        db: Database,
        *,
        batch_size: int,
        max_delay: float,
        max_pending: int,
        write_deadline: float,
        spill_path: Path | None,
        on_write_error: OnWriteError | None = None,
        on_sessions_changed: Callable[[set[UUID]], None] | None = None,
    ) -> None:
        self._db = db
        self._batch_size = batch_size
        self._max_delay = max_delay
        self._deadline = write_deadline
        self._spill_path = spill_path
        self._on_write_error = on_write_error
        self._on_sessions_changed = on_sessions_changed
        self._queue: asyncio.Queue[PendingWrite] = asyncio.Queue(maxsize=max_pending)
        self._carry: PendingWrite | None = None
        self._in_flight: list[PendingWrite] = []
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

    def _accept(self, item: PendingWrite) -> None:
        if self._closed:
            raise SessionStoreError("the store is closed: no new writes are accepted")
        self._ensure_running()
        self._issued += 1
        item.ticket = self._issued
        item.accepted = time.monotonic()

    async def put(self, item: PendingWrite) -> None:
        """Accept ``item``, waiting while the queue is full."""
        if self._queue.full():
            self._ensure_running()
            await self._wait_for_room()
        self._accept(item)
        self._queue.put_nowait(item)

    async def _wait_for_room(self) -> None:
        while self._queue.full():
            self._ensure_running()
            async with self._progress:
                await self._progress.wait()

    def put_nowait(self, item: PendingWrite) -> None:
        """Accept ``item`` or raise :class:`QueueFullError`."""
        if self._queue.full():
            raise QueueFullError(
                f"write-behind queue full ({self._queue.maxsize} pending): wait with enqueue()"
            )
        self._accept(item)
        self._queue.put_nowait(item)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception():
                logger.error("write-behind writer had stopped; restarting it")
            self._task = asyncio.create_task(self._run(), name="sessionstore-writer")

    # -- the writer task ------------------------------------------------------------

    async def _next_batch(self) -> list[PendingWrite]:
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch = [first]
        until = first.accepted + self._max_delay
        while len(batch) < self._batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item.kind != first.kind:
                self._carry = item  # a batch holds one kind; the next starts with this one
                break
            batch.append(item)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            self._in_flight = batch
            await self._write(batch)
            self._in_flight = []
            self._resolved = batch[-1].ticket
            async with self._progress:
                self._progress.notify_all()

    async def _write(self, batch: Sequence[PendingWrite]) -> None:
        """Make ``batch`` durable or set its bad rows aside; retries transient errors."""
        attempt = 0
        while True:
            try:
                rejected = await self._attempt(batch)
            except SessionStoreError as error:
                if not (is_transient(error) or isinstance(error, StoreTimeoutError)):
                    await self._split(batch, error)
                    return
                attempt += 1
                await self._back_off(len(batch), attempt, error)
                continue
            except Exception as error:
                # Not a translated database error: a driver or programming fault. The
                # writer must outlive it (the messages are accepted); retrying is safe.
                logger.exception("write-behind batch raised an unexpected error")
                attempt += 1
                await self._back_off(len(batch), attempt, error)
                continue
            self._failing_since = None
            if self._on_sessions_changed is not None:
                touched = {i.session_id for i in batch if i.session_id is not None}
                if touched:
                    self._on_sessions_changed(touched)
            reason = _REJECTED[batch[0].kind]
            for item in batch:
                if item.id in rejected:
                    self._set_aside_one(item, reason, None)
            self._written += len(batch) - len(rejected)
            return

    async def _back_off(self, size: int, attempt: int, error: Exception) -> None:
        self._retried += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        delay = min(_MAX_BACKOFF, 0.05 * 2**attempt) * (0.5 + random.random())
        logger.warning(
            "write-behind batch of %d failed (%s), retry %d in %.2fs", size, error, attempt, delay
        )
        await asyncio.sleep(delay)

    async def _attempt(self, batch: Sequence[PendingWrite]) -> set[UUID]:
        if batch[0].kind == "message":
            args: tuple[Any, ...] = (
                [i.id for i in batch],
                [i.conversation_id for i in batch],
            )
            query = MESSAGE_BATCH
        else:
            args = (
                [i.id for i in batch],
                [i.continuation_id for i in batch],
                [i.session_id for i in batch],
            )
            query = TURN_BATCH
        args += (
            [i.role for i in batch],
            [i.content for i in batch],
            [i.metadata for i in batch],
            [i.tokens for i in batch],
            [i.enqueued_at for i in batch],
        )
        row = await self._db.fetchrow(query, *args)
        assert row is not None
        return set(row["rejected"])

    async def _split(self, batch: Sequence[PendingWrite], error: SessionStoreError) -> None:
        """A permanent error: write the halves apart until the bad rows stand alone."""
        if len(batch) == 1:
            if isinstance(error, ConflictError) and error.sqlstate == "23505":
                self._written += 1  # another writer (a replay) stored this very id
                return
            self._set_aside_one(batch[0], str(error), error.sqlstate)
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
                # wake up now and then to check the deadline while the writer is stuck
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), timeout=0.5)

    async def close(self) -> None:
        """Stop accepting, drain, stop the task. Spill and raise if draining failed."""
        self._closed = True
        try:
            if self._task is not None:
                await self.flush()
        except WriteBehindError as error:
            await self._stop()
            unwritten = self._unwritten()
            path = self._spill(unwritten)
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
        waiting = list(self._queue._queue)  # type: ignore[attr-defined]  # a peek, no API
        carry = [self._carry] if self._carry is not None else []
        return [*self._in_flight, *carry, *waiting]

    def _spill(self, items: Iterable[PendingWrite]) -> Path | None:
        if self._spill_path is None:
            return None
        with self._spill_path.open("a", encoding="utf-8") as out:
            for item in items:
                out.write(item.to_json() + "\n")
        logger.error("spilled unwritten messages to %s", self._spill_path)
        return self._spill_path

    def stats(self) -> WriterStats:
        """Counters and the queue's state right now."""
        pending = self._unwritten()
        now = time.monotonic()
        return WriterStats(
            queued=self._queue.qsize() + (1 if self._carry is not None else 0),
            in_flight=len(self._in_flight),
            written=self._written,
            retried=self._retried,
            set_aside=self._set_aside_count,
            oldest_age=now - min(i.accepted for i in pending) if pending else None,
            failing_for=None if self._failing_since is None else now - self._failing_since,
        )

    def set_aside(self) -> list[FailedWrite]:
        """The most recent rows that could never be written (up to 1000)."""
        return list(self._set_aside)
