"""Deleting everything of one user — sessions, their conversations and messages, the
LangGraph checkpoints of their sessions' threads, and the user-scoped state agent
frameworks keep (``adk_user_states``) — in
bounded batches, so that a user with a long history never holds locks for long and
everyone else's writes keep going."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from . import validation as v
from .db import Connection, Database
from .deletes import delete_in_batches, in_batches
from .models import PurgeCounts

__all__ = ["purge_user"]

# Encryption at rest: the user's data key goes first, on the service path (no API role
# may touch the keys). From then on nothing the key sealed can be read, here or in any
# copy of the database, even if the purge stops half-way.
DESTROY_KEY = "DELETE FROM sessionstore_private.keys WHERE user_id = $1 RETURNING key_id"
# At the end, a key a turn racing the purge made meanwhile goes too, unless the user has
# a session again (made after the purge took theirs: its messages need that key).
DESTROY_LATE_KEY = """
DELETE FROM sessionstore_private.keys
WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM sessions WHERE user_id = $1)
RETURNING key_id
"""
# Messages first, then conversations, then sessions: each step deletes rows whose
# children are already gone, so no batch cascades into an unbounded delete.
PURGE_MESSAGES = """
DELETE FROM messages WHERE id IN (
    SELECT m.id FROM sessions s
    JOIN conversations c ON c.session_id = s.id
    JOIN messages m ON m.conversation_id = c.id
    WHERE s.user_id = $1
    LIMIT $2
)
"""
PURGE_CONVERSATIONS = """
DELETE FROM conversations WHERE id IN (
    SELECT c.id FROM sessions s JOIN conversations c ON c.session_id = s.id
    WHERE s.user_id = $1
    LIMIT $2
)
"""
# The sessions go last, a batch at a time, locked first (see sessionstore.deletes), with
# whatever turns wrote to them since the steps above: the batch is then total, nothing is
# left detached. In id order, like every writer locking several sessions (no deadlock).
LOCK_SESSIONS = """
SELECT id FROM sessions WHERE user_id = $1 ORDER BY id LIMIT $2 FOR UPDATE
"""
# $1: the locked sessions. Their conversations are locked in a statement of their own
# (an append to an existing conversation locks only it): the next statement then sees
# every message, and counts what it deletes.
LOCK_CONVERSATIONS = """
SELECT id FROM conversations WHERE session_id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
"""
PURGE_LOCKED_SESSIONS = """
WITH conv AS (SELECT id FROM conversations WHERE session_id = ANY($1::uuid[])),
messages_gone AS (
    DELETE FROM messages WHERE conversation_id IN (SELECT id FROM conv) RETURNING 1
),
conversations_gone AS (
    DELETE FROM conversations WHERE id IN (SELECT id FROM conv) RETURNING 1
),
sessions_gone AS (DELETE FROM sessions WHERE id = ANY($1::uuid[]) RETURNING 1)
SELECT (SELECT count(*) FROM messages_gone) AS messages,
       (SELECT count(*) FROM conversations_gone) AS conversations,
       (SELECT count(*) FROM sessions_gone) AS sessions
"""
_SESSION_BATCH_FIELDS = ("messages", "conversations", "sessions")
# LangGraph's checkpoints of the user's threads, a batch at a time (the threads go with
# their sessions, ON DELETE CASCADE, once little is left under them).
_USER_THREADS = """
    SELECT t.thread_id FROM sessions s JOIN langgraph_threads t ON t.session_id = s.id
    WHERE s.user_id = $1"""
PURGE_CHECKPOINT_WRITES = f"""
DELETE FROM langgraph_writes WHERE (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) IN (
    SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx FROM langgraph_writes
    WHERE thread_id IN ({_USER_THREADS}) LIMIT $2
)
"""
PURGE_CHECKPOINT_BLOBS = f"""
DELETE FROM langgraph_blobs WHERE (thread_id, checkpoint_ns, channel, version) IN (
    SELECT thread_id, checkpoint_ns, channel, version FROM langgraph_blobs
    WHERE thread_id IN ({_USER_THREADS}) LIMIT $2
)
"""
PURGE_CHECKPOINTS = f"""
DELETE FROM langgraph_checkpoints WHERE (thread_id, checkpoint_ns, checkpoint_id) IN (
    SELECT thread_id, checkpoint_ns, checkpoint_id FROM langgraph_checkpoints
    WHERE thread_id IN ({_USER_THREADS}) LIMIT $2
)
"""
# Session-scoped state goes with its session (ON DELETE CASCADE); user-scoped state is
# keyed by the user alone.
PURGE_USER_STATES = """
DELETE FROM adk_user_states WHERE (app_name, user_id) IN (
    SELECT app_name, user_id FROM adk_user_states WHERE user_id = $1 LIMIT $2
)
"""

# On the distributed layout (sessionstore.distribution) a user's sessions are spread
# over the shards: they are listed (every shard is asked), then purged one session at a
# time, each statement on that session's shard. LangGraph's threads (placed by thread)
# go with a statement of their own, their checkpoints by cascade; the late key is
# destroyed only once no session of the user is listed.
SESSIONS_OF = "SELECT id FROM sessions WHERE user_id = $1 ORDER BY id LIMIT $2"
PURGE_SESSION_MESSAGES = """
DELETE FROM messages WHERE session_id = $1 AND id IN (
    SELECT id FROM messages WHERE session_id = $1 LIMIT $2
)
"""
PURGE_SESSION_CONVERSATIONS = """
DELETE FROM conversations WHERE session_id = $1 AND id IN (
    SELECT id FROM conversations WHERE session_id = $1 LIMIT $2
)
"""
LOCK_SESSION = "SELECT id FROM sessions WHERE id = $1 AND user_id = $2 FOR UPDATE"
LOCK_SESSION_CONVERSATIONS = (
    "SELECT id FROM conversations WHERE session_id = $1 ORDER BY id FOR UPDATE"
)
PURGE_LOCKED_SESSION = """
WITH messages_gone AS (DELETE FROM messages WHERE session_id = $1 RETURNING 1),
conversations_gone AS (DELETE FROM conversations WHERE session_id = $1 RETURNING 1),
sessions_gone AS (DELETE FROM sessions WHERE id = $1 RETURNING 1)
SELECT (SELECT count(*) FROM messages_gone) AS messages,
       (SELECT count(*) FROM conversations_gone) AS conversations,
       (SELECT count(*) FROM sessions_gone) AS sessions
"""
PURGE_SESSION_THREADS = "DELETE FROM langgraph_threads WHERE session_id = $1"
HAS_SESSIONS = "SELECT EXISTS (SELECT 1 FROM sessions WHERE user_id = $1)"
DESTROY_KEYED_LATE_KEY = "DELETE FROM sessionstore_private.keys WHERE user_id = $1 RETURNING key_id"


async def purge_user(
    db: Database,
    user_id: str,
    *,
    batch_size: int = 1000,
    on_progress: Callable[[PurgeCounts], None] | None = None,
    destroy_key: bool = True,
) -> PurgeCounts:
    """Delete every session of ``user_id`` with its conversations and messages (and the
    LangGraph checkpoints of its threads, and the user's framework state), at most
    ``batch_size`` sessions, conversations, messages or checkpoint rows per statement;
    ``on_progress`` gets the running counts.

    Total: what a concurrent turn writes to the user's sessions before their batch is
    deleted goes with them (and is counted); a turn after that finds its session gone
    and writes nothing. The last batches also delete what turns wrote since the earlier
    ones, which is all they may hold beyond ``batch_size`` sessions.

    With ``destroy_key`` the user's data key (encryption at rest) is deleted first,
    whether or not this store encrypts, and at the end a key a turn racing the purge
    made meanwhile (unless the user has a session again by then): what it sealed
    reads as ``EncryptionError`` from then on, in copies of the data too (a copy of
    the key table itself aside: see ``docs/security.md``).
    """
    uid = v.identifier(user_id, "user_id")
    size = v.limit(batch_size, "batch_size", maximum=100_000)
    on_progress = v.progress(on_progress)
    counts = PurgeCounts()
    if destroy_key:
        await _destroy_key(db, uid)
    if await db.is_keyed():
        return await _purge_placed(db, uid, size, on_progress, destroy_key=destroy_key)

    def report(**totals: int) -> None:
        nonlocal counts
        counts = dataclasses.replace(counts, **totals)
        if on_progress is not None:
            on_progress(counts)

    def running(field: str) -> Callable[[int], None]:
        return lambda total: report(**{field: total})

    for field, query in (("messages", PURGE_MESSAGES), ("conversations", PURGE_CONVERSATIONS)):
        await delete_in_batches(db, query, uid, size=size, on_progress=running(field))
    for query in (PURGE_CHECKPOINT_WRITES, PURGE_CHECKPOINT_BLOBS):
        await delete_in_batches(db, query, uid, size=size)
    await delete_in_batches(
        db, PURGE_CHECKPOINTS, uid, size=size, on_progress=running("checkpoints")
    )

    deleted = PurgeCounts()  # by the session batches, committed or not

    async def sessions_batch(conn: Connection) -> int:
        nonlocal deleted
        ids = [r["id"] for r in await conn.fetch(LOCK_SESSIONS, uid, size)]
        if ids:
            await conn.execute(LOCK_CONVERSATIONS, ids)
            row = await conn.fetchrow(PURGE_LOCKED_SESSIONS, ids)
            assert row is not None  # the statement always returns one row
            deleted = PurgeCounts(**{f: int(row[f]) for f in _SESSION_BATCH_FIELDS})
        return len(ids)

    def committed(_: int) -> None:  # after each batch's commit
        report(**{f: getattr(counts, f) + getattr(deleted, f) for f in _SESSION_BATCH_FIELDS})

    await in_batches(db, sessions_batch, size=size, on_progress=committed)
    await delete_in_batches(
        db, PURGE_USER_STATES, uid, size=size, on_progress=running("user_states")
    )
    if destroy_key:
        await _destroy_key(db, uid, DESTROY_LATE_KEY)
    return counts


async def _destroy_key(db: Database, user_id: str, query: str = DESTROY_KEY) -> None:
    gone = {row["key_id"] for row in await db.service.fetch(query, user_id)}
    if db.keys is not None:
        db.keys.forget(gone)


async def _purge_placed(
    db: Database,
    user_id: str,
    size: int,
    on_progress: Callable[[PurgeCounts], None] | None,
    *,
    destroy_key: bool,
) -> PurgeCounts:
    """:func:`purge_user` on the distributed layout: session by session (see
    ``SESSIONS_OF``), every statement but the listing on one shard."""
    counts = PurgeCounts()

    def add(**more: int) -> None:
        nonlocal counts
        counts = dataclasses.replace(counts, **{f: getattr(counts, f) + n for f, n in more.items()})
        if on_progress is not None:
            on_progress(counts)

    while True:
        sessions = [r["id"] for r in await db.fetch(SESSIONS_OF, user_id, size)]
        for session_id in sessions:
            for field, query in (
                ("messages", PURGE_SESSION_MESSAGES),
                ("conversations", PURGE_SESSION_CONVERSATIONS),
            ):
                gone = await delete_in_batches(db, query, session_id, size=size)
                if gone:
                    add(**{field: gone})
            await db.execute(PURGE_SESSION_THREADS, session_id)
            deleted = await db.run(
                functools.partial(_purge_locked, session_id=session_id, user_id=user_id),
                transaction=True,
            )
            if deleted:
                add(**deleted)
        if len(sessions) < size:
            break
    gone = await delete_in_batches(db, PURGE_USER_STATES, user_id, size=size)
    if gone:
        add(user_states=gone)
    if destroy_key and not await db.fetchval(HAS_SESSIONS, user_id):
        await _destroy_key(db, user_id, DESTROY_KEYED_LATE_KEY)
    return counts


async def _purge_locked(conn: Connection, *, session_id: object, user_id: str) -> dict[str, int]:
    """Delete the session ``session_id`` (still ``user_id``'s) with what turns wrote to
    it meanwhile, locked first (see :mod:`sessionstore.deletes`); the counts."""
    if await conn.fetchval(LOCK_SESSION, session_id, user_id) is None:
        return {}
    await conn.execute(LOCK_SESSION_CONVERSATIONS, session_id)
    row = await conn.fetchrow(PURGE_LOCKED_SESSION, session_id)
    assert row is not None  # the statement always returns one row
    return {f: int(row[f]) for f in _SESSION_BATCH_FIELDS}
