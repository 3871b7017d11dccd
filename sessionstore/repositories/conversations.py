"""SQL and row mapping for ``conversations``."""

from __future__ import annotations

import re
from typing import Any, NamedTuple
from uuid import UUID

from .. import validation as v
from ..db import Connection, Database
from ..errors import (
    ConflictError,
    EncryptionError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    translate_errors,
)
from ..keyring import Owner
from ..lifecycle import TAKES_TURNS, Attempt, raise_session_miss
from ..models import ContinuationId, Conversation, ConversationRef, Message, Page
from ..pagination import decode_cursor, make_page
from ..routes import LOCK_ROUTE, RELEASE
from ..rows import Columns, Row, keyset_before
from ..rules import accepts_turns, latest_summary, may_read
from ..telemetry import traced

__all__ = [
    "CONVERSATION",
    "KEY",
    "SESSION",
    "ConversationsRepository",
    "Keyed",
    "conversation_missing",
    "conversation_named",
    "fetch_conversation",
    "fetch_placed",
    "run_placed",
]

#: Stands for the column that finds a conversation (``id`` or ``continuation_id``) in a
#: statement written once for both; see :class:`Keyed`.
KEY = "@conversation_key@"


#: Stands for the session parameter of a placed statement (see :class:`Keyed`).
SESSION = "@session@"
_FOUND_BY_KEY = re.compile(r"(\w+\.)?" + re.escape(KEY) + r" = \$1\b")
_PARAMETER = re.compile(r"\$(\d+)")


class Keyed(NamedTuple):
    """A statement finding its conversation (``$1``) by ``id``, and the same by
    ``continuation_id``: two texts rather than one with an ``OR``, so each keeps its
    index and its plan. ``placed``: the distributed layout's form (see
    :func:`run_placed`), by ``id`` in the session named by the parameter after the last.
    """

    by_id: str
    by_continuation: str
    placed: str

    @classmethod
    def of(cls, template: str, placed: str | None = None) -> Keyed:
        """Both forms of ``template``, whose :data:`KEY` names the finding column, and its
        placed form (from ``placed`` instead, when the statement does more than find the
        conversation: then everything it reads and writes must name the session too,
        which :data:`SESSION` stands for)."""
        source = template if placed is None else placed

        def in_session(found: re.Match[str]) -> str:
            alias = found[1] or ""
            return f"{alias}id = $1 AND {alias}session_id = {SESSION}"

        source = _FOUND_BY_KEY.sub(in_session, source)
        last = max((int(n) for n in _PARAMETER.findall(source)), default=1)
        return cls(
            template.replace(KEY, "id"),
            template.replace(KEY, "continuation_id"),
            source.replace(SESSION, f"${last + 1}::uuid"),
        )

    def for_(self, conversation: UUID | ContinuationId) -> str:
        """The statement for a checked conversation reference (on one PostgreSQL)."""
        return self.by_continuation if isinstance(conversation, ContinuationId) else self.by_id


async def fetch_placed(
    db: Database,
    statement: Keyed,
    conversation: UUID | ContinuationId,
    *args: Any,
    retry: bool = False,
) -> list[Row]:
    """:func:`run_placed` on a connection of its own (``retry`` as for ``Database.run``):
    on one PostgreSQL exactly ``db.fetch`` of the statement."""
    if not await db.is_keyed():
        return await db.fetch(statement.for_(conversation), conversation, *args, retry=retry)
    return await db.run(
        lambda conn: run_placed(db, conn, statement, conversation, *args), retry=retry
    )


async def run_placed(
    db: Database,
    conn: Connection,
    statement: Keyed,
    conversation: UUID | ContinuationId,
    *args: Any,
) -> list[Row]:
    """The rows of ``statement`` for ``conversation`` (``$1``) and ``args`` (``$2`` on).

    On one PostgreSQL, by id or by continuation id. On the distributed layout, its
    ``placed`` form in the conversation's session (its shard): the place remembered,
    else found (:class:`~sessionstore.routes.Routes`); a remembered place that gives no
    row is asked again, in case it is stale. No rows: no such conversation (or none the
    statement matched)."""
    if not db.keyed:
        return await conn.fetch(statement.for_(conversation), conversation, *args)
    routes = db.routes
    assert routes is not None
    place = routes.cached(conversation)
    remembered = place is not None
    for _ in range(2):
        if place is None:
            place = await routes.find(conn, conversation)
            if place is None:
                return []
        rows = await conn.fetch(statement.placed, place.conversation_id, *args, place.session_id)
        if rows or not remembered:
            if rows:
                routes.remember(place)
            return rows
        routes.forget(place.continuation_id)
        place, remembered = None, False
    return []


CONVERSATION = Columns(Conversation)
_COLUMNS = CONVERSATION.select()

# ON CONFLICT DO NOTHING never waits forever and writes no dead tuple for the common
# "already there" case; the UNION arm returns the existing row. An inserted row had its
# session checked by the foreign key; for an existing one, session_found asks (in the same
# round trip) whether $2 names a session, so a missing session is refused either way.
GET_OR_CREATE = f"""
WITH ins AS (
    INSERT INTO conversations (continuation_id, session_id, title, metadata)
    VALUES ($1, $2, $3, coalesce($4::jsonb, '{{}}'::jsonb))
    ON CONFLICT (continuation_id) DO NOTHING
    RETURNING {_COLUMNS}
)
SELECT {_COLUMNS}, true AS session_found FROM ins
UNION ALL
SELECT {_COLUMNS},
       $2::uuid IS NULL OR session_id = $2 OR EXISTS (SELECT 1 FROM sessions WHERE id = $2)
FROM conversations
WHERE continuation_id = $1 AND NOT EXISTS (SELECT 1 FROM ins)
"""
# On the distributed layout: $1-$4 as above (with $2 given: the session places it), $5
# the id of a conversation created here (this transaction holds its route).
GET_OR_CREATE_KEYED = f"""
WITH ins AS (
    INSERT INTO conversations (id, continuation_id, session_id, title, metadata)
    VALUES ($5, $1, $2, $3, coalesce($4::jsonb, '{{}}'::jsonb))
    ON CONFLICT (session_id, continuation_id) DO NOTHING
    RETURNING {_COLUMNS}
)
SELECT {_COLUMNS} FROM ins
UNION ALL
SELECT {_COLUMNS} FROM conversations
WHERE session_id = $2 AND continuation_id = $1 AND NOT EXISTS (SELECT 1 FROM ins)
"""
SESSION_EXISTS = "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1)"
GET = Keyed.of(f"SELECT {_COLUMNS} FROM conversations WHERE {KEY} = $1")
DELETE_CONVERSATION = Keyed.of(
    f"DELETE FROM conversations WHERE {KEY} = $1 RETURNING id, continuation_id"
)
GET_BY_CONTINUATION = f"SELECT {_COLUMNS} FROM conversations WHERE continuation_id = $1"
# One row per conversation, or one all-null row when the session has none: zero rows
# means the session itself does not exist.
_AFTER_CURSOR = keyset_before("conversations.created_at", "conversations.id", "$2", "$3::uuid")
LIST_FOR_SESSION = f"""
SELECT c.* FROM sessions s
LEFT JOIN LATERAL (
    SELECT {_COLUMNS} FROM conversations
    WHERE session_id = s.id
      AND ($2::timestamptz IS NULL OR {_AFTER_CURSOR})
    -- qualified: a bare name would sort by the select list's (clamped) created_at
    ORDER BY conversations.created_at DESC, conversations.id DESC
    LIMIT $4
) c ON true
WHERE s.id = $1
ORDER BY c.created_at DESC, c.id DESC
"""

# A concurrent creator can commit between our snapshot and our insert; the next
# attempt then sees its row. Two attempts always suffice; the third is slack.
_GET_OR_CREATE_ATTEMPTS = 3

# Forks. The source is locked (FOR SHARE: appends, pops, clears and deletes wait; other
# forks do not) in a statement of its own, after the session when one is named (like
# every writer, so deletes stay total; see sessionstore.deletes), and copied by the next
# statement, whose snapshot then holds every message written before the lock. (One
# statement would copy from a snapshot taken before it waited for the lock: a pop and an
# append committed meanwhile would tear the prefix.) $1 the source, $2 the session, $3
# the fork's continuation id. ``named``: the source as the snapshot shows it, to tell a
# source changed while waiting (retried) from a missing one; ``f``: what already holds
# the continuation id (a resend's fork, or a conflict).
_MAY_READ = may_read("session_id", "$2::uuid")
LOCK_SOURCE = Keyed.of(f"""
WITH live AS (SELECT id FROM sessions WHERE id = $2::uuid AND {accepts_turns()} FOR UPDATE),
src AS (
    SELECT id, message_count FROM conversations
    WHERE {KEY} = $1 AND {_MAY_READ} AND ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM live))
    FOR SHARE
)
SELECT named.id AS named_id, src.id AS source_id, src.message_count AS source_count,
       $2::uuid IS NULL OR EXISTS (SELECT 1 FROM live) AS live,
       f.id AS taken_id, f.forked_from, f.forked_at_seq, f.session_id AS taken_session
FROM (SELECT 1) one
LEFT JOIN conversations named
       ON named.{KEY} = $1 AND {may_read("named.session_id", "$2::uuid")}
LEFT JOIN src ON true
LEFT JOIN conversations f ON f.continuation_id = $3
""")
# What holds continuation id $1, when the fork's insert met it.
TAKEN = """
SELECT id AS taken_id, forked_from, forked_at_seq, session_id AS taken_session
FROM conversations WHERE continuation_id = $1
"""
# Every message column but the two the copy gets anew: a column added to messages (and
# to Message) is carried by forks without a change here.
_CARRIED = ", ".join(
    [f for f in Message.model_fields if f not in ("id", "conversation_id")]
    + ["content_sealed", "metadata_sealed"]
)
# The fork ($1 the locked source, $2 continuation id, $3 session, $4 through_seq): the
# source's title and metadata, counters as if its messages 1..$4 had been appended, and
# the compaction of that prefix (its latest summary's, which the copy carries).
CREATE_FORK = f"""
INSERT INTO conversations AS c (continuation_id, session_id, title, metadata, message_count,
                                total_tokens, last_message_at, forked_from, forked_at_seq,
                                compacted_through)
SELECT $2, $3::uuid, src.title, src.metadata, $4, coalesce(p.tokens, 0), p.last_at, src.id, $4,
       (SELECT s.through FROM ({latest_summary("src.id", before="$4 + 1")}) s)
FROM conversations src,
     LATERAL (SELECT sum(tokens) AS tokens, max(created_at) AS last_at FROM messages
              WHERE conversation_id = src.id AND seq <= $4) p
WHERE src.id = $1
ON CONFLICT (continuation_id) DO NOTHING
RETURNING {CONVERSATION.select(alias="c")}"""
# Under RLS the policies' subqueries see the statement's snapshot, which does not hold
# the fork a CTE of the same statement created: the copy is a statement of its own there.
# $1 the source, $2 the fork, $3 through_seq.
COPY_MESSAGES = f"""
WITH copied AS (
    INSERT INTO messages (conversation_id, {_CARRIED})
    SELECT $2, {_CARRIED} FROM messages WHERE conversation_id = $1 AND seq <= $3
    RETURNING content_sealed
)
SELECT EXISTS (SELECT 1 FROM copied WHERE content_sealed IS NOT NULL) AS sealed_copies
"""
# The service path: the fork and its messages in one statement (one round trip however
# many messages it copies).
CREATE_FORK_AND_COPY = f"""
WITH fork AS ({CREATE_FORK}
),
copied AS (
    INSERT INTO messages (conversation_id, {_CARRIED})
    SELECT fork.id, {", ".join("m." + f for f in _CARRIED.split(", "))}
    FROM fork, messages m WHERE m.conversation_id = $1 AND m.seq <= $4
    RETURNING content_sealed
)
SELECT *, EXISTS (SELECT 1 FROM copied WHERE content_sealed IS NOT NULL) AS sealed_copies
FROM fork
"""
# Encryption at rest binds a sealed value to its message's id: the copies' are sealed
# again, for their own ids (and the fork's owner), in the fork's transaction.
SEALED_COPIES = """
SELECT f.id AS fork_id, s.id AS source_id, s.content_sealed, s.metadata_sealed
FROM messages f JOIN messages s ON s.conversation_id = $1 AND s.seq = f.seq
WHERE f.conversation_id = $2 AND f.content_sealed IS NOT NULL
"""
RESEAL = """
UPDATE messages m SET content_sealed = u.content_sealed, metadata_sealed = u.metadata_sealed
FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS u(id, content_sealed, metadata_sealed)
WHERE m.id = u.id
"""
# Forks on the distributed layout: a source is read only by its own session (may_read),
# so a fork is made in the source's session, on its shard; its continuation id's route is
# claimed first (routes). $1 the source's id, $2 the session, $3 the fork's continuation id.
LOCK_SOURCE_KEYED = f"""
WITH live AS (SELECT id FROM sessions WHERE id = $2 AND {accepts_turns()} FOR UPDATE),
src AS (
    SELECT id, message_count FROM conversations
    WHERE session_id = $2 AND id = $1 AND EXISTS (SELECT 1 FROM live)
    FOR SHARE
)
SELECT named.id AS named_id, src.id AS source_id, src.message_count AS source_count,
       EXISTS (SELECT 1 FROM live) AS live,
       f.id AS taken_id, f.forked_from, f.forked_at_seq, f.session_id AS taken_session
FROM (SELECT 1) one
LEFT JOIN conversations named ON named.session_id = $2 AND named.id = $1
LEFT JOIN src ON true
LEFT JOIN conversations f ON f.session_id = $2 AND f.continuation_id = $3
"""
# $1 the locked source, $2 continuation id, $3 session, $4 through_seq, $5 the fork's id.
CREATE_FORK_AND_COPY_KEYED = f"""
WITH fork AS (
    INSERT INTO conversations AS c (id, continuation_id, session_id, title, metadata,
                                    message_count, total_tokens, last_message_at,
                                    forked_from, forked_at_seq, compacted_through)
    SELECT $5, $2, $3, src.title, src.metadata, $4, coalesce(p.tokens, 0), p.last_at, src.id,
           $4, (SELECT s.through FROM (
               {latest_summary("src.id", before="$4 + 1", session="$3")}) s)
    FROM conversations src,
         LATERAL (SELECT sum(tokens) AS tokens, max(created_at) AS last_at FROM messages
                  WHERE session_id = $3 AND conversation_id = src.id AND seq <= $4) p
    WHERE src.session_id = $3 AND src.id = $1
    ON CONFLICT (session_id, continuation_id) DO NOTHING
    RETURNING {CONVERSATION.select(alias="c")}
),
copied AS (
    INSERT INTO messages (id, session_id, conversation_id, {_CARRIED})
    SELECT gen_random_uuid(), $3, fork.id, {", ".join("m." + f for f in _CARRIED.split(", "))}
    FROM fork, messages m WHERE m.session_id = $3 AND m.conversation_id = $1 AND m.seq <= $4
    RETURNING content_sealed
)
SELECT *, EXISTS (SELECT 1 FROM copied WHERE content_sealed IS NOT NULL) AS sealed_copies
FROM fork
"""
SEALED_COPIES_KEYED = """
SELECT f.id AS fork_id, s.id AS source_id, s.content_sealed, s.metadata_sealed
FROM messages f JOIN messages s
  ON s.session_id = f.session_id AND s.conversation_id = $1 AND s.seq = f.seq
WHERE f.session_id = $3 AND f.conversation_id = $2 AND f.content_sealed IS NOT NULL
"""
RESEAL_KEYED = """
UPDATE messages m SET content_sealed = u.content_sealed, metadata_sealed = u.metadata_sealed
FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS u(id, content_sealed, metadata_sealed)
WHERE m.session_id = $4 AND m.id = u.id
"""
# A source that changed between the snapshot and the lock is read again; twice more
# always suffices unless it keeps changing.
_FORK_ATTEMPTS = 3


def _taken(cid: str) -> ConflictError:
    return ConflictError(
        f"continuation_id {cid!r} is already taken by another conversation; nothing was written"
    )


def _through(locked: Row, upto: int | None) -> int:
    """The seq a fork copies through: ``upto``, else all the locked source holds;
    ``InvalidInputError`` past its last message."""
    count: int = locked["source_count"]
    through = count if upto is None else upto
    if through > count:
        raise InvalidInputError("through_seq", "must not be past the conversation's last message")
    return through


def _resent(taken: Row, source: UUID | None, sid: UUID | None, upto: int | None) -> bool:
    """Whether the conversation holding the fork's continuation id is this fork, made by
    an earlier send of the same call: a fork of the same source, bound as asked, at the
    same ``through_seq`` (any, when none was given)."""
    return (
        source is not None
        and taken["forked_from"] == source
        and (sid is None or taken["taken_session"] == sid)
        and (upto is None or taken["forked_at_seq"] == upto)
    )


def conversation_named(conversation: UUID | ContinuationId) -> str:
    """How errors name a conversation reference (by id, or by continuation id)."""
    if isinstance(conversation, ContinuationId):
        return f"conversation with continuation_id {str(conversation)!r}"
    return f"conversation {conversation}"


def conversation_missing(conversation: UUID | ContinuationId) -> NotFoundError:
    """The error for a conversation that does not exist (or is not visible under RLS)."""
    return NotFoundError(f"{conversation_named(conversation)} not found")


async def fetch_conversation(
    db: Database, query: Keyed, conversation: object, *, retry: bool = True
) -> Row:
    """The row ``query`` (``$1``: the conversation) returns for the conversation;
    ``InvalidInputError`` for a malformed reference, ``NotFoundError`` when there is no
    row. ``retry`` as for ``Database.run`` (off for writes)."""
    ref = v.conversation(conversation)
    rows = await fetch_placed(db, query, ref, retry=retry)
    if not rows:
        raise conversation_missing(ref)
    return rows[0]


class ConversationsRepository:
    """Conversations, found by id or by their unique ``continuation_id``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @traced("conversations")
    async def get_or_create(
        self,
        continuation_id: str,
        *,
        session_id: UUID | str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Conversation:
        """The conversation with ``continuation_id``, created if absent.

        Race-free: concurrent calls for one id make exactly one row. An existing
        conversation is returned as it is (``session_id``, ``title`` and ``metadata`` apply
        only on creation), except that one bound to another session than ``session_id``
        raises ``ConflictError``. ``NotFoundError`` if ``session_id`` names no session,
        whether the conversation exists or not (an unbound one too; this is checked
        before whose it is). The session's status does not matter here.
        """
        cid = v.identifier(continuation_id, "continuation_id")
        sid = None if session_id is None else v.uuid(session_id, "session_id")
        title_ = v.text(title, "title", optional=True)
        meta = v.metadata_json(metadata)

        if await self._db.is_keyed():
            return await self._get_or_create_placed(cid, sid, title_, meta)

        async def work(conn: Connection) -> Conversation:
            for _ in range(_GET_OR_CREATE_ATTEMPTS):
                try:
                    with translate_errors():
                        row = await conn.fetchrow(GET_OR_CREATE, cid, sid, title_, meta)
                except NotFoundError as exc:  # the only foreign key here is session_id
                    raise NotFoundError(f"session {sid} not found", sqlstate=exc.sqlstate) from None
                if row is not None:
                    if not row["session_found"]:
                        raise NotFoundError(f"session {sid} not found")
                    found = CONVERSATION.one(row)
                    if sid is not None and found.session_id not in (None, sid):
                        raise ConflictError(
                            f"conversation {cid!r} belongs to another session, not {sid}"
                        )
                    return found
            # The row exists (the insert conflicted) yet stays invisible: RLS hides it.
            raise PermissionDeniedError(
                f"conversation {cid!r} exists but is not visible to this user"
            )

        return await self._db.run(work, retry=True)

    async def _get_or_create_placed(
        self, cid: str, sid: UUID | None, title: str | None, meta: str | None
    ) -> Conversation:
        """:meth:`get_or_create` on the distributed layout: created only in a session
        (its shard), its route claimed in the same transaction; without one, only
        found."""
        db = self._db
        routes = db.routes
        assert routes is not None

        async def work(conn: Connection) -> Conversation:
            if sid is not None and not await conn.fetchval(SESSION_EXISTS, sid):
                raise NotFoundError(f"session {sid} not found")
            try:
                place, _ = await routes.claim(conn, cid, sid)
            except ConflictError:
                raise ConflictError(
                    f"conversation {cid!r} belongs to another session, not {sid}"
                ) from None
            for _ in range(_GET_OR_CREATE_ATTEMPTS):
                row = await conn.fetchrow(
                    GET_OR_CREATE_KEYED, cid, place.session_id, title, meta, place.conversation_id
                )
                if row is not None:
                    routes.remember(place)
                    return CONVERSATION.one(row)
            raise ConflictError(f"conversation {cid!r} kept changing; nothing was written")

        return await db.run(work, transaction=True, retry=True)

    @traced("conversations")
    async def get(self, conversation_id: ConversationRef) -> Conversation:
        """The conversation (by id or :class:`~sessionstore.ContinuationId`);
        ``NotFoundError`` if absent."""
        return CONVERSATION.one(await fetch_conversation(self._db, GET, conversation_id))

    @traced("conversations")
    async def delete(self, conversation_id: ConversationRef) -> None:
        """Delete the conversation (by id or :class:`~sessionstore.ContinuationId`) and
        its messages; ``NotFoundError`` if absent. On the distributed layout its route
        goes in the same transaction (two shards)."""
        db = self._db
        if not await db.is_keyed():
            await fetch_conversation(db, DELETE_CONVERSATION, conversation_id, retry=False)
            return
        ref = v.conversation(conversation_id)
        routes = db.routes
        assert routes is not None

        async def work(conn: Connection) -> None:
            # The route first, as a turn takes it (then the conversation): no deadlock.
            place = await routes.find(conn, ref)
            if place is not None:
                await conn.execute(LOCK_ROUTE, place.continuation_id)
            rows = await run_placed(db, conn, DELETE_CONVERSATION, ref)
            if not rows:
                raise conversation_missing(ref)
            gone = rows[0]
            await conn.execute(RELEASE, gone["continuation_id"], gone["id"])
            routes.forget(gone["continuation_id"])

        await db.run(work, transaction=True)

    @traced("conversations")
    async def fork(
        self,
        conversation_id: ConversationRef,
        *,
        continuation_id: str,
        session_id: UUID | str | None = None,
        through_seq: int | None = None,
    ) -> Conversation:
        """A new conversation ``continuation_id`` holding copies of the messages of the
        conversation ``conversation_id`` (by id or :class:`~sessionstore.ContinuationId`)
        up to and including ``seq`` ``through_seq`` (default: all it holds when the fork
        is made) — "edit a message and regenerate", or a branch.

        The copies keep their ``seq``, role, content, metadata, tokens and ``created_at``
        (the time each message was first written: history stays truthful, and retention
        by age treats a copy like its original); they get new ids. The fork takes the
        source's title and metadata, records ``forked_from`` (the source's id) and
        ``forked_at_seq`` (``through_seq``), and its counters are those of the copied
        prefix: ``message_count`` is ``through_seq`` (the next message appended to it
        gets ``through_seq + 1``, even where the prefix has gaps), ``total_tokens`` the
        copies' tokens, ``last_message_at`` the latest copy's time. The source is not
        changed; it may be deleted later (the fork stays, its ``forked_from`` becomes
        ``None``). ``through_seq=0`` makes an empty fork.

        With ``session_id`` the fork is bound to that session, which must take turns
        (exist, be active and not expired: ``NotFoundError``, ``InvalidStateError``,
        ``SessionExpiredError``, as ``add_turn``), and the source is read as that session
        reads it: a source bound to another session, or to none, raises the same
        ``NotFoundError`` as a missing one. The session's counters do not change (a fork
        records no turn). Without ``session_id`` the fork is unbound, like
        ``get_or_create``'s: no session owns it, so ``purge_user`` does not reach it, and
        under ``as_user`` it is refused (``PermissionDeniedError``); a user forks their
        own conversations into their own sessions only.

        One transaction: the session (when named) and then the source are locked, so a
        concurrent append, ``pop``, ``clear`` or delete of the source waits and the copy
        is exactly the source's prefix at that moment; the copy is one statement,
        however many messages (on the service path it also creates the fork). On the
        service store, messages this process queued for write-behind are made durable
        first (as ``messages.pop`` does), so the default fork holds every message
        accepted before the call.

        Refused, with nothing written: ``InvalidInputError`` for a malformed argument,
        and (naming ``through_seq``) for a ``through_seq`` past the source's last
        message — judged on the source as locked; ``NotFoundError`` for a missing or
        unreadable source; the session's error; ``ConflictError`` if ``continuation_id``
        is taken (the source's own included); ``PermissionDeniedError`` when the
        continuation id belongs to a conversation the user cannot see (``as_user``).
        Idempotent: a resend (say after ``StoreTimeoutError``) that finds the fork its
        earlier send made — same source, session and ``through_seq``, or any
        ``through_seq`` when none is given — returns it as it is now, whatever the
        session's state; once the source is deleted a resend gets ``NotFoundError``.
        """
        ref = v.conversation(conversation_id)
        cid = v.identifier(continuation_id, "continuation_id")
        sid = None if session_id is None else v.uuid(session_id, "session_id")
        upto = None if through_seq is None else v.non_negative_int(through_seq, "through_seq")
        if await self._db.is_keyed():
            return await self._fork_placed(ref, cid, sid, upto)
        lock = LOCK_SOURCE.for_(ref)

        async def work(conn: Connection) -> Conversation:
            for _ in range(_FORK_ATTEMPTS):
                row = await conn.fetchrow(lock, ref, sid, cid)
                assert row is not None  # the statement always returns one row
                taken: Row | None = row if row["taken_id"] is not None else None
                known = row["source_id"] if row["live"] else row["named_id"]
                if taken is not None and _resent(taken, known, sid, upto):
                    found = await conn.fetchrow(GET.by_id, taken["taken_id"])
                    if found is not None:
                        return CONVERSATION.one(found)
                    continue  # deleted since: fork anew
                if not row["live"]:
                    assert sid is not None  # without a session the gate is open
                    if not await conn.fetchval(TAKES_TURNS, sid):
                        await raise_session_miss(conn, Attempt(sid, "fork a conversation into"))
                    continue  # it takes turns since the snapshot: send again
                if row["source_id"] is None:
                    if row["named_id"] is None:
                        raise conversation_missing(ref)
                    continue  # deleted or rebound while we waited for its lock
                if taken is not None:
                    raise _taken(cid)
                through = _through(row, upto)
                made = await self._create(conn, row["source_id"], cid, sid, through)
                if made is not None:
                    return made
                # The continuation id was taken after the snapshot, or is not visible.
                taken = await conn.fetchrow(TAKEN, cid)
                if taken is None:
                    raise PermissionDeniedError(
                        f"conversation {cid!r} exists but is not visible to this user"
                    )
                if not _resent(taken, row["source_id"], sid, upto):
                    raise _taken(cid)
            raise ConflictError(f"{conversation_named(ref)} kept changing; nothing was written")

        return await self._db.run(work, transaction=True, retry=True)

    async def _fork_placed(
        self, ref: UUID | ContinuationId, cid: str, sid: UUID | None, upto: int | None
    ) -> Conversation:
        """:meth:`fork` on the distributed layout: in the source's session, which must be
        named (a conversation is placed by its session), on its shard; the fork's
        continuation id claimed in the same transaction."""
        if sid is None:
            raise InvalidInputError(
                "session_id",
                "on the distributed layout a fork is placed in a session: give the session",
            )
        db = self._db
        routes = db.routes
        assert routes is not None

        async def work(conn: Connection) -> Conversation:
            source = await routes.find(conn, ref)
            if source is None or source.session_id != sid:
                # Another session's source reads as missing, as on one PostgreSQL.
                if not await conn.fetchval(TAKES_TURNS, sid):
                    await raise_session_miss(conn, Attempt(sid, "fork a conversation into"))
                raise conversation_missing(ref)
            for _ in range(_FORK_ATTEMPTS):
                row = await conn.fetchrow(LOCK_SOURCE_KEYED, source.conversation_id, sid, cid)
                assert row is not None  # the statement always returns one row
                taken: Row | None = row if row["taken_id"] is not None else None
                if taken is not None and _resent(taken, source.conversation_id, sid, upto):
                    found = await conn.fetchrow(GET.placed, taken["taken_id"], sid)
                    if found is not None:
                        return CONVERSATION.one(found)
                    continue
                if not row["live"]:
                    if not await conn.fetchval(TAKES_TURNS, sid):
                        await raise_session_miss(conn, Attempt(sid, "fork a conversation into"))
                    continue
                if row["source_id"] is None:
                    raise conversation_missing(ref)
                if taken is not None:
                    raise _taken(cid)
                through = _through(row, upto)
                try:
                    place, _ = await routes.claim(conn, cid, sid)
                except ConflictError:
                    raise _taken(cid) from None
                made = await conn.fetchrow(
                    CREATE_FORK_AND_COPY_KEYED,
                    source.conversation_id,
                    cid,
                    sid,
                    through,
                    place.conversation_id,
                )
                if made is None:
                    raise _taken(cid)
                if made["sealed_copies"]:
                    await self._reseal(conn, source.conversation_id, made, sid, placed=True)
                routes.remember(place)
                return CONVERSATION.one(made)
            raise ConflictError(f"{conversation_named(ref)} kept changing; nothing was written")

        return await db.run(work, transaction=True, retry=True)

    async def _reseal(
        self, conn: Connection, source: UUID, fork: Row, sid: UUID | None, *, placed: bool
    ) -> None:
        """Seal a fork's copies again, for their own ids and the fork's owner (``placed``:
        on the distributed layout, in session ``sid``'s shard)."""
        copies_query, reseal_query = (
            (SEALED_COPIES_KEYED, RESEAL_KEYED) if placed else (SEALED_COPIES, RESEAL)
        )
        extra = (sid,) if placed else ()
        copies = await conn.fetch(copies_query, source, fork["id"], *extra)
        if self._db.keys is None:
            raise EncryptionError(
                "the conversation's messages are encrypted and this store has no"
                " encryption key: a fork needs it (nothing was written)"
            )
        owner: Owner = None if sid is None else ("session", sid)
        await conn.execute(reseal_query, *await self._db.keys.reseal(copies, owner), *extra)

    async def _create(
        self, conn: Connection, source: UUID, cid: str, sid: UUID | None, through: int
    ) -> Conversation | None:
        """The fork of the locked ``source`` with its messages; ``None`` if ``cid`` is
        taken."""
        sealed = False
        if not self._db.rls_scoped:
            row = await conn.fetchrow(CREATE_FORK_AND_COPY, source, cid, sid, through)
            sealed = row is not None and row["sealed_copies"]
        else:
            row = await conn.fetchrow(CREATE_FORK, source, cid, sid, through)
            if row is not None:
                sealed = await conn.fetchval(COPY_MESSAGES, source, row["id"], through)
        if row is None:
            return None
        if sealed:
            await self._reseal(conn, source, row, sid, placed=False)
        return CONVERSATION.one(row)

    @traced("conversations")
    async def get_by_continuation_id(self, continuation_id: str) -> Conversation:
        """The conversation with this continuation id; ``NotFoundError`` if absent."""
        cid = v.identifier(continuation_id, "continuation_id")
        row = await self._db.fetchrow(GET_BY_CONTINUATION, cid, retry=True)
        if row is None:
            raise NotFoundError(f"conversation with continuation_id {cid!r} not found")
        return CONVERSATION.one(row)

    @traced("conversations")
    async def list_for_session(
        self, session_id: UUID | str, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Conversation]:
        """The session's conversations, newest first; ``NotFoundError`` if no such session."""
        sid = v.uuid(session_id, "session_id")
        size = v.limit(limit)
        after_at, after_id = decode_cursor(v.text(cursor, "cursor", optional=True))
        rows = await self._db.fetch(LIST_FOR_SESSION, sid, after_at, after_id, size + 1, retry=True)
        if not rows:
            raise NotFoundError(f"session {sid} not found")
        present = [row for row in rows if row["id"] is not None]
        return make_page(CONVERSATION.many(present), size, lambda c: (c.created_at, c.id))
