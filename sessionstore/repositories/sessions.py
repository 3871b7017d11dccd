"""SQL and row mapping for ``sessions``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from .. import validation as v
from ..cache import SessionCache
from ..db import Connection, Database
from ..deletes import in_batches, lock_then_delete
from ..errors import (
    InvalidInputError,
    NotFoundError,
)
from ..lifecycle import TRANSITIONS, Attempt, raise_session_miss
from ..models import Page, Session, SessionStatus
from ..pagination import decode_cursor, make_page
from ..rows import Columns, keyset_before, members
from ..rules import accepts_turns, bump_session, cleanup_due, not_past_expiry, read_status
from ..telemetry import traced

__all__ = ["SESSION", "SessionsRepository"]

logger = logging.getLogger("sessionstore")

SESSION = Columns(
    Session, computed={"status": read_status}, convert={"status": members(SessionStatus)}
)
_COLUMNS = SESSION.select()

INSERT_SESSION = f"""
INSERT INTO sessions (user_id, title, metadata, expires_at)
VALUES ($1, $2, coalesce($3::jsonb, '{{}}'::jsonb), coalesce($4::timestamptz, now() + $5::interval))
RETURNING {_COLUMNS}
"""
GET_SESSION = f"SELECT {_COLUMNS} FROM sessions WHERE id = $1"

# $2: whether title was passed. version moves only when user-visible fields change.
UPDATE_SESSION = f"""
UPDATE sessions
SET title = CASE WHEN $2 THEN $3 ELSE title END,
    metadata = CASE WHEN $4::jsonb IS NULL THEN metadata ELSE metadata || $4::jsonb END,
    version = version + 1
WHERE id = $1 AND ($5::integer IS NULL OR version = $5)
  AND status IN ('active', 'paused', 'completed') AND {not_past_expiry()}
RETURNING {_COLUMNS}
"""
# $3: the sliding-expiry interval, or NULL when expiry does not slide.
RECORD_TURN = f"""
UPDATE sessions SET {bump_session("", turns="1", tokens="$2", slide="$3")}
WHERE id = $1 AND {accepts_turns()}
RETURNING {_COLUMNS}
"""
EXTEND = f"""
UPDATE sessions SET expires_at = now() + $2::interval, version = version + 1
WHERE id = $1 AND status IN ('active', 'paused') AND {not_past_expiry()}
RETURNING {_COLUMNS}
"""
TRANSITION = f"""
UPDATE sessions SET status = $2, version = version + 1
WHERE id = $1 AND status = ANY($3::text[]) AND {not_past_expiry()}
RETURNING {_COLUMNS}
"""
_AFTER_CURSOR = keyset_before("sessions.created_at", "sessions.id", "$3", "$4::uuid")
_LIST = f"""
SELECT {_COLUMNS} FROM sessions
WHERE {{owner}}
  AND ($2::text IS NULL OR {read_status()} = $2)
  AND ($3::timestamptz IS NULL OR {_AFTER_CURSOR})
-- qualified: a bare name would sort by the select list's (clamped) created_at, no index
ORDER BY sessions.created_at DESC, sessions.id DESC
LIMIT $5
"""
LIST_SESSIONS = _LIST.format(owner="user_id = $1")
# Every user's sessions (the service path; under RLS only the caller's are visible).
LIST_ALL_SESSIONS = _LIST.format(owner="$1::text IS NULL")
# Deleting sessions is two statements in one transaction (see sessionstore.deletes):
# one locks the sessions, the next, with a snapshot taken after the lock, deletes them.
LOCK_SESSION = "SELECT id FROM sessions WHERE id = $1 FOR UPDATE"
# Bounded and skipping locked rows, so concurrent writers and a second cleaner are
# never blocked for long. $1: the batch size.
LOCK_CLEANUP_BATCH = f"""
SELECT id FROM sessions WHERE {cleanup_due()}
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
# $1: the locked sessions. $2: also delete their conversations and (ON DELETE CASCADE)
# messages; otherwise they stay, detached by the foreign key's ON DELETE SET NULL (the
# original schema's behaviour).
DELETE_LOCKED_SESSIONS = """
WITH conversations_gone AS (
    DELETE FROM conversations WHERE session_id = ANY($1::uuid[]) AND $2
),
gone AS (DELETE FROM sessions WHERE id = ANY($1::uuid[]) RETURNING 1)
SELECT count(*) AS deleted FROM gone
"""
COUNT_DUE = f"SELECT count(*) FROM sessions WHERE {cleanup_due()}"
# On the distributed layout: due sessions are listed (every shard is asked: no lock
# there) and deleted in a statement that judges them again; the foreign key deletes
# their conversations and messages with them (ON DELETE CASCADE: there is no detaching
# on that layout), what a concurrent turn wrote meanwhile included.
DUE_SESSIONS = f"SELECT id FROM sessions WHERE {cleanup_due()} LIMIT $1"
DELETE_DUE_SESSIONS = f"""
WITH gone AS (
    DELETE FROM sessions WHERE id = ANY($1::uuid[]) AND {cleanup_due()} RETURNING 1
)
SELECT count(*) AS deleted FROM gone
"""


class SessionsRepository:
    """Sessions: create, read, update with optimistic concurrency, counters, lifecycle."""

    def __init__(self, db: Database, cache: SessionCache | None = None) -> None:
        self._db = db
        self._config = db.config
        self._cache = cache

    def _remember(self, session: Session) -> Session:
        if self._cache is not None:
            self._cache.put(session)
        return session

    def _forget(self, session_id: UUID) -> None:
        if self._cache is not None:
            self._cache.discard(session_id)

    async def _conditional(self, attempt: Attempt, query: str, *args: Any) -> Session:
        """Run a conditional UPDATE (``$1`` is the session's id); explain (and raise) when
        it matched nothing."""

        async def work(conn: Connection) -> Session:
            row = await conn.fetchrow(query, attempt.session_id, *args)
            if row is None:
                self._forget(attempt.session_id)
                await raise_session_miss(conn, attempt)
            return SESSION.one(row)

        return self._remember(await self._db.run(work))

    @traced("sessions")
    async def create(
        self,
        user_id: str,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        ttl: timedelta | v.Unset | None = v.UNSET,
        expires_at: datetime | None = None,
    ) -> Session:
        """Create an active session for ``user_id``.

        It expires after ``ttl`` (default: ``config.default_ttl``; ``None`` means never),
        or at ``expires_at`` if given instead (timezone-aware, in the future).
        """
        uid = v.identifier(user_id, "user_id")
        title_ = v.text(title, "title", optional=True)
        meta = v.metadata_json(metadata)
        at = v.aware_datetime(expires_at, "expires_at")
        if at is not None and ttl is not v.UNSET:
            raise InvalidInputError("expires_at", "pass either ttl or expires_at, not both")
        if at is not None and at <= datetime.now(UTC):
            raise InvalidInputError("expires_at", "must be in the future")
        span = self._config.default_ttl if isinstance(ttl, v.Unset) else ttl
        if span is not None:
            span = v.ttl(span)
        row = await self._db.fetchrow(INSERT_SESSION, uid, title_, meta, at, span)
        assert row is not None
        return self._remember(SESSION.one(row))

    @traced("sessions")
    async def get(self, session_id: UUID | str) -> Session:
        """The session; ``NotFoundError`` if absent. Status reads ``EXPIRED`` once due.

        Served from the store's session cache when fresh (``cache_size``, ``cache_ttl``:
        :class:`~sessionstore.StoreConfig`).
        """
        sid = v.uuid(session_id, "session_id")
        if self._cache is not None and (cached := self._cache.get(sid)) is not None:
            return cached
        row = await self._db.fetchrow(GET_SESSION, sid, retry=True)
        if row is None:
            raise NotFoundError(f"session {sid} not found")
        return self._remember(SESSION.one(row))

    @traced("sessions")
    async def update(
        self,
        session_id: UUID | str,
        *,
        title: str | v.Unset | None = v.UNSET,
        metadata: dict[str, Any] | None = None,
        expected_version: int | None = None,
    ) -> Session:
        """Change the title and/or merge ``metadata`` into the stored object (server-side, shallow).

        With ``expected_version``, raises ``ConflictError`` if the session has moved on.
        Expired sessions raise ``SessionExpiredError``.
        """
        sid = v.uuid(session_id, "session_id")
        set_title = not isinstance(title, v.Unset)
        title_ = v.text(title, "title", optional=True) if set_title else None
        meta = v.metadata_json(metadata)
        version = (
            None
            if expected_version is None
            else v.positive_int(expected_version, "expected_version")
        )

        attempt = Attempt(sid, "update", expected_version=version)
        return await self._conditional(attempt, UPDATE_SESSION, set_title, title_, meta, version)

    @traced("sessions")
    async def record_turn(self, session_id: UUID | str, *, tokens: int = 0) -> Session:
        """Atomically add one turn and ``tokens`` to the session's counters.

        Concurrent calls never lose an increment. The session must be active.
        """
        sid = v.uuid(session_id, "session_id")
        count = v.tokens(tokens, optional=False)

        slide = self._config.sliding_interval
        return await self._conditional(Attempt(sid, "record a turn on"), RECORD_TURN, count, slide)

    @traced("sessions")
    async def extend(self, session_id: UUID | str, ttl: timedelta) -> Session:
        """Set ``expires_at`` to now + ``ttl`` for an active or paused session."""
        sid = v.uuid(session_id, "session_id")
        span = v.ttl(ttl)
        return await self._conditional(Attempt(sid, "extend"), EXTEND, span)

    async def _transition(
        self, session_id: UUID | str, action: Literal["pause", "resume", "complete"]
    ) -> Session:
        sid = v.uuid(session_id, "session_id")
        target, sources = TRANSITIONS[action]
        attempt = Attempt(sid, action, target=target)
        return await self._conditional(
            attempt, TRANSITION, target.value, [s.value for s in sources]
        )

    @traced("sessions")
    async def pause(self, session_id: UUID | str) -> Session:
        """active → paused; otherwise ``InvalidStateError`` (or ``SessionExpiredError``)."""
        return await self._transition(session_id, "pause")

    @traced("sessions")
    async def resume(self, session_id: UUID | str) -> Session:
        """paused → active; otherwise ``InvalidStateError`` (or ``SessionExpiredError``)."""
        return await self._transition(session_id, "resume")

    @traced("sessions")
    async def complete(self, session_id: UUID | str) -> Session:
        """active or paused → completed (terminal)."""
        return await self._transition(session_id, "complete")

    @traced("sessions")
    async def list(
        self,
        *,
        user_id: str | None,
        status: SessionStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Session]:
        """The user's sessions, newest first, optionally of one status, a page at a time.

        ``user_id=None`` lists every user's sessions (what the service path may see).
        """
        uid = None if user_id is None else v.identifier(user_id, "user_id")
        status_ = None if status is None else v.status(status).value
        size = v.limit(limit)
        after_at, after_id = decode_cursor(v.text(cursor, "cursor", optional=True))
        query = LIST_SESSIONS if uid is not None else LIST_ALL_SESSIONS
        rows = await self._db.fetch(query, uid, status_, after_at, after_id, size + 1, retry=True)
        return make_page(SESSION.many(rows), size, lambda s: (s.created_at, s.id))

    @traced("sessions")
    async def delete(self, session_id: UUID | str, *, keep_conversations: bool = False) -> None:
        """Delete the session with its conversations and their messages, in one
        transaction.

        Total: a turn (direct or write-behind) racing the delete either commits before
        it, and its conversation goes too, or finds the session gone and writes nothing.
        ``keep_conversations=True`` keeps the conversations instead, detached
        (``session_id`` null): the original schema's behaviour. ``NotFoundError`` if
        there is no such session (or, under ``as_user``, none the user may see).
        """
        sid = v.uuid(session_id, "session_id")
        keep = v.flag(keep_conversations, "keep_conversations")
        self._forget(sid)

        async def work(conn: Connection) -> list[UUID]:
            ids, _ = await lock_then_delete(
                conn, LOCK_SESSION, (sid,), DELETE_LOCKED_SESSIONS, not keep
            )
            return ids

        if not await self._db.run(work, transaction=True):
            raise NotFoundError(f"session {sid} not found")

    @traced("sessions")
    async def cleanup_expired(
        self,
        *,
        batch_size: int = 1000,
        on_progress: Callable[[int], None] | None = None,
        delete_conversations: bool = False,
    ) -> int:
        """Delete expired sessions (not completed ones) in batches; return how many.

        Same rule as the original ``cleanup_expired_sessions()``, which leaves the
        sessions' conversations in place (detached); ``delete_conversations=True`` deletes
        them and their messages too, including any a concurrent turn wrote meanwhile
        (always, on the distributed layout, where a conversation is placed by its
        session and cannot outlive it).
        Each batch is its own short transaction that skips rows other transactions hold
        (``SKIP LOCKED``), so writers are never blocked for long and concurrent cleaners
        never delete a row twice. ``on_progress`` is called with the running total after
        each batch.
        """
        size = v.limit(batch_size, "batch_size", maximum=100_000)
        cascade = v.flag(delete_conversations, "delete_conversations")
        on_progress = v.progress(on_progress)

        async def batch(conn: Connection) -> int:
            if self._db.keyed:
                due = [r["id"] for r in await conn.fetch(DUE_SESSIONS, size)]
                return int(await conn.fetchval(DELETE_DUE_SESSIONS, due)) if due else 0
            _, row = await lock_then_delete(
                conn, LOCK_CLEANUP_BATCH, (size,), DELETE_LOCKED_SESSIONS, cascade
            )
            return 0 if row is None else int(row["deleted"])

        total = await in_batches(self._db, batch, size=size, on_progress=on_progress)
        if total and self._cache is not None:
            self._cache.clear()
        if total:
            logger.info("cleanup_expired deleted %d sessions", total)
        return total

    @traced("sessions")
    async def count_expired(self) -> int:
        """How many sessions :meth:`cleanup_expired` would delete right now."""
        return int(await self._db.fetchval(COUNT_DUE, retry=True))
