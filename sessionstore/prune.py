"""Retention (``store.prune``): deleting each conversation's oldest messages in short
batches, beside live traffic, without lowering the ``message_count`` that numbers the
next append.

Every writer that changes a conversation's messages (an append, ``pop``, ``clear``, the
deletes of ``sessionstore.deletes``) locks the conversation's row first. A batch locks
the conversations it will prune with ``FOR NO KEY UPDATE SKIP LOCKED``: it waits for
nobody, and a conversation being written to right then is passed over, visited once more
at the end of the run, and else left for the next run. Its delete is the next statement,
whose snapshot (READ COMMITTED takes one per statement) holds every append committed
before the lock; an append arriving meanwhile waits for this one short transaction and
then takes the next ``seq``. Messages are taken with ``SKIP LOCKED`` too, and a
conversation's only up to the first one another transaction holds (a message locked
while its conversation is not is being deleted, by ``purge_user`` say, and waiting for it
could deadlock with that delete).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import NamedTuple
from uuid import UUID

from . import validation as v
from .db import Connection, Database
from .errors import InvalidInputError, InvalidStateError, SessionStoreError
from .models import PruneCounts
from .rules import aged_prefix, created_before, latest_summary, prune_upto

__all__ = ["MAX_BATCH_SIZE", "count_prunable", "prune"]

logger = logging.getLogger("sessionstore")

#: The most messages one batch deletes: a batch holds its conversations' locks (appends
#: to them wait) until it commits.
MAX_BATCH_SIZE = 10_000
#: The most conversations one batch's first statement looks at: where few are due, the
#: search for them goes on in the next statement, so no statement grows with the table.
SCAN_WINDOW = 2_000


def _cutoff(older_than: str) -> str:
    """Created before this is old (``older_than``: an interval parameter, NULL for no
    age rule). now() is the transaction's start: both statements of a batch judge age
    by the same instant."""
    return f"(now() - {older_than}::interval)"


def _lock(among: str = "", *, wait: bool = False) -> str:
    """The first statement of a batch: from the cursor ($1 a conversation id, $2 whether
    it is included) in id order, among the next :data:`SCAN_WINDOW` conversations, those
    whose oldest stored message is due ($3 keep_last, $4 older_than), as many as may hold
    $5 (the batch size) due messages between them; each row says whether it was locked
    (else another transaction holds it). With none, one row of nulls but ``scanned_to``:
    the last conversation looked at, if the window was full (more may follow). ``among``
    narrows the conversations (to those found busy before); ``wait``: the locks are
    waited for (within the transaction's ``lock_timeout``), not skipped."""
    return f"""
WITH scanned AS (  -- bounded: a table of conversations with nothing due is read in steps
    SELECT id, message_count FROM conversations
    WHERE id >= $1 AND (id > $1 OR $2){among}
    ORDER BY id
    LIMIT {SCAN_WINDOW}
),
candidates AS (
    SELECT c.id, least({prune_upto("c.message_count", "$3")} - oldest.seq + 1, $5) AS most
    FROM scanned c
    CROSS JOIN LATERAL (
        SELECT m.seq, m.created_at FROM messages m
        WHERE m.conversation_id = c.id AND {_not_live_summary("m.id", "c.id")}
        ORDER BY m.seq LIMIT 1
    ) oldest
    WHERE oldest.seq <= {prune_upto("c.message_count", "$3")}
      AND {created_before("oldest.created_at", _cutoff("$4"))}
    ORDER BY c.id
    LIMIT $5
),
considered AS (  -- most: how many may be due (every message the count rule lets go)
    SELECT id FROM (
        SELECT id, sum(most) OVER (ORDER BY id) - most AS before FROM candidates
    ) r
    WHERE before < $5
),
locked AS (
    SELECT id FROM conversations WHERE id IN (SELECT id FROM considered)
    ORDER BY id
    FOR NO KEY UPDATE{"" if wait else " SKIP LOCKED"}
)
SELECT r.id, r.locked,
       CASE WHEN r.id IS NULL AND (SELECT count(*) FROM scanned) = {SCAN_WINDOW}
            THEN (SELECT id FROM scanned ORDER BY id DESC LIMIT 1) END AS scanned_to
FROM (SELECT 1) one
LEFT JOIN (
    SELECT considered.id, locked.id IS NOT NULL AS locked
    FROM considered LEFT JOIN locked USING (id)
) r ON true
ORDER BY r.id
"""


def _not_live_summary(message: str, conversation: str) -> str:
    """The message is not its conversation's live summary (see ``messages.compact``): a
    prune never deletes that one, which stands for everything compacted. Messages it
    covers, and older summaries, go as any other. The rules of a prune apply to the
    conversation's other messages as if the summary were not there."""
    return f"{message} IS DISTINCT FROM (SELECT ls.id FROM ({latest_summary(conversation)}) ls)"


def _due(older_than: str) -> str:
    """Columns of messages ``m`` and ``due``: whether the age rule lets each go (the
    count rule is applied beside it, with :func:`prune_upto`)."""
    due = aged_prefix(
        "m.created_at", _cutoff(older_than), conversation="m.conversation_id", seq="m.seq"
    )
    return f"m.id, m.conversation_id, m.seq, {due} AS due"


LOCK_BATCH = _lock()
# The run's second visit to the conversations it found busy ($6).
LOCK_AGAIN = _lock(" AND id = ANY($6::uuid[])")
# The last visit, to one conversation still busy: its lock waited for, at most BUSY_WAIT.
LOCK_WAITING = _lock(" AND id = ANY($6::uuid[])", wait=True)
WAIT_FOR_LOCKS = "SELECT set_config('lock_timeout', $1, true)"
#: How long the last visit to a conversation found busy twice waits for its lock: a turn
#: holds it for one statement, so a conversation written to without pause is taken
#: between two turns.
BUSY_WAIT_MS = 500
# The second statement: the due messages of the locked conversations ($1; $2 keep_last,
# $3 older_than), at most $4, in (conversation, seq) order; the conversations'
# total_tokens drop by theirs, message_count and last_message_at stay (see
# SessionStore.prune).
DELETE_BATCH = f"""
WITH conv AS (
    SELECT id, {prune_upto("message_count", "$2")} AS upto
    FROM conversations WHERE id = ANY($1::uuid[])
),
oldest AS (
    SELECT {_due("$3")}
    FROM conv CROSS JOIN LATERAL (
        SELECT id, conversation_id, seq, created_at FROM messages
        WHERE conversation_id = conv.id AND seq <= conv.upto
          AND {_not_live_summary("id", "conv.id")}
        ORDER BY seq
        LIMIT $4
    ) m
),
chosen AS (SELECT * FROM oldest WHERE due ORDER BY conversation_id, seq LIMIT $4),
taken AS (
    SELECT id FROM messages WHERE id IN (SELECT id FROM chosen) FOR UPDATE SKIP LOCKED
),
clear AS (  -- up to the first message another transaction holds: no gap is left
    SELECT c.id, bool_and(t.id IS NOT NULL) OVER (
        PARTITION BY c.conversation_id ORDER BY c.seq
    ) AS clear
    FROM chosen c LEFT JOIN taken t USING (id)
),
gone AS (
    DELETE FROM messages WHERE id IN (SELECT id FROM clear WHERE clear)
    RETURNING conversation_id, tokens
),
per_conv AS (
    SELECT conversation_id, count(*) AS n, coalesce(sum(tokens), 0) AS tok
    FROM gone GROUP BY conversation_id
),
counted AS (
    UPDATE conversations c SET total_tokens = c.total_tokens - p.tok
    FROM per_conv p WHERE c.id = p.conversation_id
)
SELECT coalesce(sum(n), 0)::integer AS messages,
       coalesce(array_agg(conversation_id ORDER BY conversation_id), '{{}}') AS touched,
       (SELECT conversation_id FROM chosen ORDER BY conversation_id DESC LIMIT 1) AS last,
       (SELECT count(*) FROM chosen) = $4 AS full
FROM per_conv
"""
# What a prune would delete now ($1 keep_last, $2 older_than) among the next
# SCAN_WINDOW conversations after $3 in id order (a statement per window, so none grows
# with the table), and the last conversation counted.
COUNT_DUE = f"""
WITH scanned AS (
    SELECT id, message_count FROM conversations WHERE id > $3 ORDER BY id LIMIT {SCAN_WINDOW}
)
SELECT (SELECT count(*) FROM (
            SELECT {_due("$2")}, c.message_count
            FROM scanned c
            CROSS JOIN LATERAL (
                SELECT (SELECT ls.id FROM ({latest_summary("c.id")}) ls) AS summary_id
            ) live
            JOIN messages m ON m.conversation_id = c.id AND m.id IS DISTINCT FROM live.summary_id
        ) r
        WHERE due AND seq <= {prune_upto("message_count", "$1")}) AS due,
       (SELECT count(*) FROM scanned) AS scanned,
       (SELECT id FROM scanned ORDER BY id DESC LIMIT 1) AS last
"""

_FIRST = UUID(int=0)


class _Rule(NamedTuple):
    keep: int
    older_than: timedelta | None


def _rule(keep_last: object, older_than: object) -> _Rule:
    if keep_last is None and older_than is None:
        raise InvalidInputError(
            "keep_last", "or older_than must be given (or both): prune needs a rule"
        )
    keep = 0 if keep_last is None else v.non_negative_int(keep_last, "keep_last")
    age = None if older_than is None else v.duration(older_than, "older_than")
    return _Rule(keep, age)


class _Batch(NamedTuple):
    considered: list[tuple[UUID, bool]]  # in id order; whether locked
    deleted: int
    touched: list[UUID]  # in id order
    #: The last conversation the batch took messages of, if it took all it could: that
    #: one may hold more.
    full_at: UUID | None = None
    #: With nothing considered: the last conversation looked at (more may follow).
    scanned_to: UUID | None = None


class _Run:
    """One prune: its rule and running counts, and the conversations already counted
    that a later batch may touch again (the last one of a full batch, which may hold
    more; and those of them then found busy, visited again at the end)."""

    def __init__(
        self, db: Database, rule: _Rule, size: int, on_progress: Callable[[PruneCounts], None]
    ) -> None:
        self.db, self.rule, self.size, self.on_progress = db, rule, size, on_progress
        self.counts = PruneCounts()
        self.counted: set[UUID] = set()
        self.counted_busy: set[UUID] = set()

    async def sweep(self, among: Sequence[UUID] | None = None, *, wait: bool = False) -> list[UUID]:
        """Batches from the first conversation to the last (of ``among``, if given);
        return the conversations found busy. ``wait``: their locks are waited for, at
        most :data:`BUSY_WAIT_MS` each statement; one still held then is busy."""
        cursor, inclusive = _FIRST, True
        busy: list[UUID] = []
        while True:
            work = functools.partial(self._batch, cursor, inclusive, among, wait)
            try:
                batch = await self.db.run(work, transaction=True)
            except SessionStoreError as exc:
                if not wait or exc.sqlstate != "55P03" or among is None:
                    raise
                return list(among)  # still held after the wait: left for the next run
            if batch is None:
                return busy
            if batch.scanned_to is not None:  # nothing due in that window: look further
                cursor, inclusive = batch.scanned_to, False
                continue
            passed = [cid for cid, locked in batch.considered if not locked]
            busy += passed
            self.counted_busy.update(self.counted.intersection(passed))
            fresh = [c for c in batch.touched if c not in self.counted]
            self.counts = dataclasses.replace(
                self.counts,
                messages=self.counts.messages + batch.deleted,
                conversations=self.counts.conversations + len(fresh),
                batches=self.counts.batches + 1,
            )
            self.on_progress(self.counts)
            self.counted = set(self.counted_busy)
            if batch.full_at is None:
                cursor, inclusive = batch.considered[-1][0], False
            else:  # again from there, unless nothing of it could go (none goes then)
                cursor, inclusive = batch.full_at, batch.full_at in batch.touched
                if inclusive:
                    self.counted.add(cursor)

    async def _batch(
        self,
        cursor: UUID,
        inclusive: bool,
        among: Sequence[UUID] | None,
        wait: bool,
        conn: Connection,
    ) -> _Batch | None:
        rule = (self.rule.keep, self.rule.older_than, self.size)
        if among is None:
            rows = await conn.fetch(LOCK_BATCH, cursor, inclusive, *rule)
        elif wait:
            await conn.fetchval(WAIT_FOR_LOCKS, f"{BUSY_WAIT_MS}ms")
            rows = await conn.fetch(LOCK_WAITING, cursor, inclusive, *rule, list(among))
        else:
            rows = await conn.fetch(LOCK_AGAIN, cursor, inclusive, *rule, list(among))
        if rows[0]["id"] is None:  # none due among the conversations looked at
            return (
                None
                if rows[0]["scanned_to"] is None
                else _Batch([], 0, [], None, rows[0]["scanned_to"])
            )
        considered = [(r["id"], r["locked"]) for r in rows]
        locked = [cid for cid, ok in considered if ok]
        if not locked:
            return _Batch(considered, 0, [])
        row = await conn.fetchrow(DELETE_BATCH, locked, *rule)
        assert row is not None  # the statement always returns one row
        full_at = row["last"] if row["full"] else None
        return _Batch(considered, row["messages"], list(row["touched"]), full_at)


async def _served(db: Database) -> None:
    """Refuse the distributed layout: a prune's statements scan and lock conversations
    across sessions, which Citus does not run; they are not yet split by session."""
    if await db.is_keyed():
        raise InvalidStateError(
            "prune is not yet available on a distributed (Citus) database: its statements"
            " scan conversations across sessions; delete old sessions (cleanup_expired) or"
            " compact conversations instead"
        )


async def prune(
    db: Database,
    *,
    keep_last: int | None = None,
    older_than: timedelta | None = None,
    batch_size: int = 1000,
    on_progress: Callable[[PruneCounts], None] | None = None,
) -> PruneCounts:
    """:meth:`sessionstore.SessionStore.prune` on ``db``."""
    rule = _rule(keep_last, older_than)
    size = v.limit(batch_size, "batch_size", maximum=MAX_BATCH_SIZE)
    report = v.progress(on_progress)
    await _served(db)
    run = _Run(db, rule, size, report or (lambda _: None))
    busy = await run.sweep()
    if busy:
        busy = await run.sweep(busy)
    # Found busy twice: written to without pause. Each is waited for, one at a time, so
    # that one held for long delays the others by at most BUSY_WAIT_MS.
    busy = [held for cid in busy for held in await run.sweep([cid], wait=True)]
    counts = dataclasses.replace(run.counts, skipped=len(busy))
    if counts.messages or counts.skipped:
        logger.info(
            "prune deleted %d messages of %d conversations in %d batches; %d busy"
            " conversations left for the next run",
            counts.messages,
            counts.conversations,
            counts.batches,
            counts.skipped,
        )
    return counts


async def count_prunable(
    db: Database, *, keep_last: int | None = None, older_than: timedelta | None = None
) -> int:
    """:meth:`sessionstore.SessionStore.count_prunable` on ``db``."""
    rule = _rule(keep_last, older_than)
    await _served(db)
    total, after = 0, _FIRST
    while True:
        row = await db.fetchrow(COUNT_DUE, rule.keep, rule.older_than, after, retry=True)
        assert row is not None  # the statement always returns one row
        total += int(row["due"])
        if row["scanned"] < SCAN_WINDOW:
            return total
        after = row["last"]
