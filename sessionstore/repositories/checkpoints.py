"""SQL and row mapping for the LangGraph checkpointer's tables (revision 0011):
``langgraph_threads``, ``langgraph_checkpoints``, ``langgraph_blobs`` and
``langgraph_writes``. Values arrive already serialized (type and bytes, by the saver's
serializer); this module knows nothing of LangGraph's types.

A thread belongs to the session it was first written with (or to none, on the service
path) and goes with it. Every write to a thread first checks, in the same statement,
that the thread exists, that a session the write names is the thread's, and that the
thread's session still takes turns (:func:`~sessionstore.rules.accepts_turns`); a write
that finds no thread creates it (or binds an unbound one) and is sent again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from ..db import Connection, Database
from ..errors import ConflictError, InvalidStateError, NotFoundError
from ..lifecycle import require_live
from ..rows import Row
from ..rules import accepts_turns
from .sessions import GET_SESSION, SESSION

__all__ = ["Blob", "CheckpointsRepository", "StoredCheckpoint", "StoredWrite", "Write"]

# A write's gate: the thread ($1), whether its session takes turns, and whether the
# write may go ahead ($2: the session the write names, NULL for none).
_GATE = f"""th AS (
    SELECT t.thread_id, t.session_id,
           (t.session_id IS NULL OR coalesce({accepts_turns("s")}, false)) AS live
    FROM langgraph_threads t LEFT JOIN sessions s ON s.id = t.session_id
    WHERE t.thread_id = $1
),
ok AS (
    SELECT thread_id FROM th WHERE live AND ($2::uuid IS NULL OR session_id = $2::uuid)
)"""
# What a gated write says when it wrote nothing: whether the thread exists and its session.
_VERDICT = """EXISTS (SELECT 1 FROM th) AS known, (SELECT session_id FROM th) AS bound,
       (SELECT live FROM th) AS live"""
PUT = f"""
WITH {_GATE},
blobs AS (
    INSERT INTO langgraph_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT ok.thread_id, $3, b.channel, b.version, b.type, b.blob
    FROM ok, unnest($11::text[], $12::text[], $13::text[], $14::bytea[])
        AS b(channel, version, type, blob)
    ON CONFLICT DO NOTHING
),
saved AS (
    INSERT INTO langgraph_checkpoints AS c (thread_id, checkpoint_ns, checkpoint_id,
        parent_checkpoint_id, type, checkpoint, channel_versions, metadata, delta)
    SELECT ok.thread_id, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10 FROM ok
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
        type = EXCLUDED.type, checkpoint = EXCLUDED.checkpoint,
        channel_versions = EXCLUDED.channel_versions, metadata = EXCLUDED.metadata,
        delta = EXCLUDED.delta
    RETURNING 1
),
slid AS (
    UPDATE sessions s SET expires_at = greatest(s.expires_at, now() + $15::interval)
    FROM th
    WHERE s.id = th.session_id AND $15::interval IS NOT NULL AND s.expires_at IS NOT NULL
      AND EXISTS (SELECT 1 FROM ok)
)
SELECT EXISTS (SELECT 1 FROM saved) AS saved, {_VERDICT}
"""
# $11: whether every write is a special one (an error, an interrupt...), which a retried
# task writes again in place; other writes are kept as first written.
PUT_WRITES = f"""
WITH {_GATE},
saved AS (
    INSERT INTO langgraph_writes AS w (thread_id, checkpoint_ns, checkpoint_id, task_id,
        task_path, idx, channel, type, blob)
    SELECT ok.thread_id, $3, $4, $5, $6, x.idx, x.channel, x.type, x.blob
    FROM ok, unnest($7::integer[], $8::text[], $9::text[], $10::bytea[])
        AS x(idx, channel, type, blob)
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE SET
        channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob
        WHERE $11
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM ok) AS saved, {_VERDICT}
"""
CREATE_THREAD = """
INSERT INTO langgraph_threads (thread_id, session_id) VALUES ($1, $2)
ON CONFLICT (thread_id) DO NOTHING
"""
BIND_THREAD = """
UPDATE langgraph_threads SET session_id = $2 WHERE thread_id = $1 AND session_id IS NULL
"""
# A checkpoint with its channel values' blobs and its pending writes, as records.
_READ = """
SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.type,
       c.checkpoint, c.metadata::text AS metadata,
       ARRAY(SELECT ROW(b.channel, b.type, b.blob)
             FROM jsonb_each_text(c.channel_versions) v
             JOIN langgraph_blobs b ON b.thread_id = c.thread_id
                 AND b.checkpoint_ns = c.checkpoint_ns AND b.channel = v.key
                 AND b.version = v.value) AS blobs,
       ARRAY(SELECT ROW(w.task_id, w.channel, w.type, w.blob, w.task_path, w.idx)
             FROM langgraph_writes w
             WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns
               AND w.checkpoint_id = c.checkpoint_id) AS writes
FROM langgraph_checkpoints c
"""
GET_LATEST = (
    _READ + "WHERE c.thread_id = $1 AND c.checkpoint_ns = $2 ORDER BY c.checkpoint_id DESC LIMIT 1"
)
GET = _READ + "WHERE c.thread_id = $1 AND c.checkpoint_ns = $2 AND c.checkpoint_id = $3"
# The thread's rows go with it (ON DELETE CASCADE).
DELETE_THREAD = "DELETE FROM langgraph_threads WHERE thread_id = $1"
DELETE_RUNS = """
WITH gone AS (
    DELETE FROM langgraph_checkpoints WHERE (metadata ->> 'run_id') = ANY($1::text[])
    RETURNING thread_id, checkpoint_ns, checkpoint_id
),
writes_gone AS (
    DELETE FROM langgraph_writes w USING gone g
    WHERE w.thread_id = g.thread_id AND w.checkpoint_ns = g.checkpoint_ns
      AND w.checkpoint_id = g.checkpoint_id
)
SELECT DISTINCT thread_id FROM gone
"""
# After checkpoints of the threads $1 were deleted (an earlier statement of the same
# transaction): their blobs no checkpoint refers to any more, and parent links to
# checkpoints no longer stored (history that is gone reads as none, not as a dangling id).
DROP_UNREFERENCED_BLOBS = """
DELETE FROM langgraph_blobs b
WHERE b.thread_id = ANY($1::text[])
  AND (b.thread_id, b.checkpoint_ns, b.channel, b.version) NOT IN (
      SELECT c.thread_id, c.checkpoint_ns, v.key, v.value
      FROM langgraph_checkpoints c, jsonb_each_text(c.channel_versions) v
      WHERE c.thread_id = ANY($1::text[]))
"""
DROP_DANGLING_PARENTS = """
UPDATE langgraph_checkpoints c SET parent_checkpoint_id = NULL
WHERE c.thread_id = ANY($1::text[]) AND c.parent_checkpoint_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM langgraph_checkpoints p
                  WHERE p.thread_id = c.thread_id AND p.checkpoint_ns = c.checkpoint_ns
                    AND p.checkpoint_id = c.parent_checkpoint_id)
"""
# The target thread, bound to the source's session (a statement of its own: the copy's
# rows are checked by row-level security against the threads its snapshot shows).
COPY_TARGET = """
WITH src AS (SELECT thread_id, session_id FROM langgraph_threads WHERE thread_id = $1),
target AS (
    INSERT INTO langgraph_threads (thread_id, session_id)
    SELECT $2, session_id FROM src
    ON CONFLICT (thread_id) DO NOTHING
    RETURNING session_id
),
existing AS (SELECT session_id FROM langgraph_threads WHERE thread_id = $2)
SELECT EXISTS (SELECT 1 FROM src) AS source_known,
       (SELECT session_id FROM src) AS source_session,
       EXISTS (SELECT 1 FROM target) OR EXISTS (SELECT 1 FROM existing) AS target_known,
       CASE WHEN EXISTS (SELECT 1 FROM target) THEN (SELECT session_id FROM target)
            ELSE (SELECT session_id FROM existing) END AS target_session
"""
# The source's rows copied under the target's thread id; rows the target already has
# are kept.
COPY_ROWS = """
WITH checkpoints AS (
    INSERT INTO langgraph_checkpoints (thread_id, checkpoint_ns, checkpoint_id,
        parent_checkpoint_id, type, checkpoint, channel_versions, metadata, delta)
    SELECT $2, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint,
           channel_versions, metadata, delta
    FROM langgraph_checkpoints WHERE thread_id = $1
    ON CONFLICT DO NOTHING
),
blobs AS (
    INSERT INTO langgraph_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT $2, checkpoint_ns, channel, version, type, blob
    FROM langgraph_blobs WHERE thread_id = $1
    ON CONFLICT DO NOTHING
)
INSERT INTO langgraph_writes (thread_id, checkpoint_ns, checkpoint_id, task_id,
    task_path, idx, channel, type, blob)
SELECT $2, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
FROM langgraph_writes WHERE thread_id = $1
ON CONFLICT DO NOTHING
"""
PRUNE_ALL = """
WITH checkpoints_gone AS (
    DELETE FROM langgraph_checkpoints WHERE thread_id = ANY($1::text[]) RETURNING 1
),
blobs_gone AS (DELETE FROM langgraph_blobs WHERE thread_id = ANY($1::text[])),
writes_gone AS (DELETE FROM langgraph_writes WHERE thread_id = ANY($1::text[]))
SELECT count(*) FROM checkpoints_gone
"""
# keep_latest: a thread that uses a LangGraph DeltaChannel keeps its history (its
# channels are rebuilt from it); the others keep the latest checkpoint of each
# namespace, with its writes. The threads are locked first, so that a checkpoint a run
# commits meanwhile is either seen as the latest or waits for the prune. Only the writes
# of the checkpoints deleted go: a run saves a step's writes in the background, and they
# can commit before the checkpoint they belong to (as AsyncPostgresSaver's prune knows).
LOCK_THREADS = """
SELECT thread_id FROM langgraph_threads WHERE thread_id = ANY($1::text[])
ORDER BY thread_id FOR UPDATE
"""
DELTA_THREADS = """
SELECT DISTINCT thread_id FROM langgraph_checkpoints
WHERE thread_id = ANY($1::text[]) AND delta
"""
PRUNE_KEEP_LATEST = """
WITH kept AS (
    SELECT DISTINCT ON (thread_id, checkpoint_ns) thread_id, checkpoint_ns, checkpoint_id
    FROM langgraph_checkpoints WHERE thread_id = ANY($1::text[])
    ORDER BY thread_id, checkpoint_ns, checkpoint_id DESC
),
checkpoints_gone AS (
    DELETE FROM langgraph_checkpoints c
    WHERE c.thread_id = ANY($1::text[])
      AND (c.thread_id, c.checkpoint_ns, c.checkpoint_id) NOT IN (SELECT * FROM kept)
    RETURNING c.thread_id, c.checkpoint_ns, c.checkpoint_id
),
writes_gone AS (
    DELETE FROM langgraph_writes w USING checkpoints_gone g
    WHERE w.thread_id = g.thread_id AND w.checkpoint_ns = g.checkpoint_ns
      AND w.checkpoint_id = g.checkpoint_id
)
SELECT count(*) FROM checkpoints_gone
"""
# Attempts of a gated write: the first may create or bind the thread, the second then
# writes; the third covers a session that changed in between.
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Blob:
    """A channel value at one version, serialized: ``(channel, version, type, data)``."""

    channel: str
    version: str
    type: str
    data: bytes | None


@dataclass(frozen=True, slots=True)
class Write:
    """A task's pending write, serialized: its index, channel, type and data."""

    idx: int
    channel: str
    type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class StoredWrite:
    """A pending write as stored, with the task that wrote it."""

    task_id: str
    channel: str
    type: str
    data: bytes
    task_path: str
    idx: int


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A stored checkpoint: the serialized checkpoint, its metadata (JSON text), the
    serialized values of its channel versions stored as blobs (by channel) and its
    pending writes (in no particular order)."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    type: str
    data: bytes
    metadata: str
    blobs: dict[str, tuple[str, bytes | None]]
    writes: list[StoredWrite]


def _stored(r: Row) -> StoredCheckpoint:
    return StoredCheckpoint(
        thread_id=r["thread_id"],
        checkpoint_ns=r["checkpoint_ns"],
        checkpoint_id=r["checkpoint_id"],
        parent_checkpoint_id=r["parent_checkpoint_id"],
        type=r["type"],
        data=r["checkpoint"],
        metadata=r["metadata"],
        blobs={b[0]: (b[1], b[2]) for b in r["blobs"]},
        writes=[StoredWrite(w[0], w[1], w[2], w[3], w[4], w[5]) for w in r["writes"]],
    )


async def _served(db: Database) -> None:
    """Refuse the distributed layout, where LangGraph's threads are placed by thread and
    their sessions by session: the checkpointer's statements, which read both, are not
    yet routed there."""
    if await db.is_keyed():
        raise InvalidStateError(
            "the LangGraph checkpointer is not yet available on a distributed (Citus)"
            " database: its statements read a thread and its session, placed on different"
            " shards"
        )


class CheckpointsRepository:
    """The LangGraph checkpointer's storage (:mod:`sessionstore.integrations.langgraph`):
    threads bound to sessions, their checkpoints, channel blobs and pending writes. Each
    store and user view has one (under row-level security a user reaches only the
    threads of their own sessions); it is not public API: the saver checks every
    argument before it gets here, and this class holds the SQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(
        self,
        thread_id: str,
        session_id: UUID | None,
        checkpoint_ns: str,
        checkpoint_id: str,
        parent_id: str | None,
        serialized: tuple[str, bytes],
        channel_versions: str,
        metadata: str,
        *,
        delta: bool,
        blobs: Sequence[Blob],
    ) -> None:
        """Store a checkpoint and the blobs of its new channel versions in one statement
        (one round trip once the thread exists); the same checkpoint again replaces it."""
        await _served(self._db)
        arguments = (
            checkpoint_ns,
            checkpoint_id,
            parent_id,
            *serialized,
            channel_versions,
            metadata,
            delta,
            [b.channel for b in blobs],
            [b.version for b in blobs],
            [b.type for b in blobs],
            [b.data for b in blobs],
            self._db.config.sliding_interval,
        )
        await self._gated(PUT, thread_id, session_id, arguments)

    async def put_writes(
        self,
        thread_id: str,
        session_id: UUID | None,
        checkpoint_ns: str,
        checkpoint_id: str,
        task_id: str,
        task_path: str,
        writes: Sequence[Write],
        *,
        replace: bool,
    ) -> None:
        """Store a task's pending writes in one statement; ``replace``: a write already
        stored under the same task and index is replaced (else kept)."""
        await _served(self._db)
        arguments = (
            checkpoint_ns,
            checkpoint_id,
            task_id,
            task_path,
            [w.idx for w in writes],
            [w.channel for w in writes],
            [w.type for w in writes],
            [w.data for w in writes],
            replace,
        )
        await self._gated(PUT_WRITES, thread_id, session_id, arguments)

    async def _gated(
        self, query: str, thread_id: str, session_id: UUID | None, arguments: tuple[object, ...]
    ) -> None:
        for _ in range(_ATTEMPTS):
            row = await self._db.fetchrow(query, thread_id, session_id, *arguments)
            assert row is not None  # the statement always returns one row
            if row["saved"]:
                return
            await self._admit(thread_id, session_id, row["known"], row["bound"], row["live"])
        # Created or bound, yet never writable: a thread row-level security hides (another
        # user's), or one whose session changed between every attempt.
        raise ConflictError(f"thread {thread_id!r} belongs to another session")

    async def _admit(
        self,
        thread_id: str,
        session_id: UUID | None,
        known: bool,
        bound: UUID | None,
        live: bool | None,
    ) -> None:
        """Make the next attempt of a refused write go through, or raise why it cannot:
        create the thread, bind an unbound one to the write's session, or raise the
        session's refusal (``NotFoundError``, ``SessionExpiredError``, ...)."""
        if known and bound is not None and session_id not in (None, bound):
            raise ConflictError(f"thread {thread_id!r} belongs to another session")
        owner = session_id if session_id is not None else bound
        if owner is not None:
            # Read past the session cache: the statement just found the session not
            # live, and a cached copy may not know that yet.
            row = await self._db.fetchrow(GET_SESSION, owner, retry=True)
            if row is None:
                raise NotFoundError(f"session {owner} not found")
            require_live(SESSION.one(row), "write checkpoints to")
        if not known:
            await self._db.execute(CREATE_THREAD, thread_id, session_id)
        elif bound is None and session_id is not None:
            await self._db.execute(BIND_THREAD, thread_id, session_id)

    async def get(
        self, thread_id: str, checkpoint_ns: str, checkpoint_id: str | None
    ) -> StoredCheckpoint | None:
        """The checkpoint ``checkpoint_id`` of the thread's namespace, or its latest when
        ``None``; ``None`` when there is none. One round trip, retried like every read."""
        await _served(self._db)
        if checkpoint_id is None:
            row = await self._db.fetchrow(GET_LATEST, thread_id, checkpoint_ns, retry=True)
        else:
            row = await self._db.fetchrow(GET, thread_id, checkpoint_ns, checkpoint_id, retry=True)
        return None if row is None else _stored(row)

    async def search(
        self,
        *,
        thread_id: str | None,
        checkpoint_ns: str | None,
        checkpoint_id: str | None,
        metadata: str | None,
        before: str | None,
        limit: int | None,
    ) -> list[StoredCheckpoint]:
        """Checkpoints newest first (by checkpoint id), each filter applied when given:
        thread, namespace, id, metadata containing ``metadata`` (JSON text), ids before
        ``before``; at most ``limit``. One round trip."""
        await _served(self._db)
        clauses: list[str] = []
        arguments: list[object] = []
        for clause, value in (
            ("c.thread_id = ${}", thread_id),
            ("c.checkpoint_ns = ${}", checkpoint_ns),
            ("c.checkpoint_id = ${}", checkpoint_id),
            ("c.metadata @> ${}::jsonb", metadata),
            ("c.checkpoint_id < ${}", before),
        ):
            if value is not None:
                arguments.append(value)
                clauses.append(clause.format(len(arguments)))
        query = _READ + (" WHERE " + " AND ".join(clauses) if clauses else "")
        query += " ORDER BY c.checkpoint_id DESC"
        if limit is not None:
            arguments.append(limit)
            query += f" LIMIT ${len(arguments)}"
        return [_stored(r) for r in await self._db.fetch(query, *arguments, retry=True)]

    async def delete_thread(self, thread_id: str) -> None:
        """Delete the thread with its checkpoints, blobs and writes (nothing if absent)."""
        await _served(self._db)
        await self._db.execute(DELETE_THREAD, thread_id)

    async def delete_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints whose metadata names one of ``run_ids``, with their
        writes and the blobs no other checkpoint uses, in one transaction."""
        await _served(self._db)

        async def work(conn: Connection) -> None:
            threads = [r["thread_id"] for r in await conn.fetch(DELETE_RUNS, list(run_ids))]
            if threads:
                await _tidy(conn, threads)

        await self._db.run(work, transaction=True)

    async def copy_thread(self, source: str, target: str) -> None:
        """Copy the source thread's checkpoints, blobs and writes to ``target`` in one
        transaction, ``target`` bound to the source's session; nothing when the source
        does not exist (or is another user's). ``ConflictError`` if ``target`` exists
        bound to another session (nothing is copied then)."""
        await _served(self._db)

        async def work(conn: Connection) -> None:
            row = await conn.fetchrow(COPY_TARGET, source, target)
            assert row is not None  # the statement always returns one row
            if not row["source_known"]:
                return
            if not row["target_known"] or row["target_session"] != row["source_session"]:
                raise ConflictError(f"thread {target!r} belongs to another session")
            await conn.execute(COPY_ROWS, source, target)

        await self._db.run(work, transaction=True)

    async def prune(self, thread_ids: Sequence[str], *, keep_latest: bool) -> list[str]:
        """Delete the threads' checkpoints: all of them, or all but the latest of each
        namespace (with its writes) when ``keep_latest``. One transaction. With
        ``keep_latest``, threads that use a DeltaChannel are returned and nothing is
        deleted (their channels are rebuilt from their history)."""
        await _served(self._db)
        threads = list(thread_ids)

        async def work(conn: Connection) -> list[str]:
            if not keep_latest:
                await conn.fetchval(PRUNE_ALL, threads)
                return []
            await conn.fetch(LOCK_THREADS, threads)
            delta = [r["thread_id"] for r in await conn.fetch(DELTA_THREADS, threads)]
            if not delta:
                await conn.fetchval(PRUNE_KEEP_LATEST, threads)
                await _tidy(conn, threads)
            return delta

        return await self._db.run(work, transaction=True)


async def _tidy(conn: Connection, threads: list[str]) -> None:
    await conn.execute(DROP_UNREFERENCED_BLOBS, threads)
    await conn.execute(DROP_DANGLING_PARENTS, threads)
