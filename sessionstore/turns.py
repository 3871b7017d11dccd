"""A turn: a message appended to a conversation (created if needed) and counted on its
session — the one owner of that operation, for the direct path (``add_turn``, one
statement) and the write-behind path (``enqueue_turn``, one statement per batch).

The session UPDATE gates everything else: when the session is missing, expired or not
active it matches no row, so the conversation and message inserts (which read from it)
write nothing. One statement is one transaction: a turn is all or nothing. Both paths
build the session's and the conversation's changes from :mod:`sessionstore.rules`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn, Unpack, cast
from uuid import UUID

from . import validation as v
from .db import Connection, Database
from .errors import ConflictError, InvalidInputError, PermissionDeniedError, translate_errors
from .keyring import Owner, seal_message, sealed_batch
from .lifecycle import TAKES_TURNS, Attempt, raise_session_miss
from .models import (
    AddTurnOptions,
    AfterTurn,
    ContinuationId,
    PendingWrite,
    Role,
    Turn,
    TurnOptions,
)
from .repositories.conversations import CONVERSATION, SESSION_EXISTS
from .repositories.message_sql import read_message
from .repositories.messages import MESSAGE
from .repositories.sessions import SESSION
from .routes import Placement
from .rows import Row
from .rules import (
    accepts_turns,
    batch_ordinal,
    bind,
    bump_conversation,
    bump_session,
    may_write,
    seq_of,
)
from .turn_context import read_context, with_context
from .writebehind.engine import Writer
from .writebehind.items import MESSAGE_FIELDS, SEALED_FIELDS, accept, fresh_rows, uuid7

__all__ = ["accept_turn", "add_turn", "write_turns"]

_TOKENS = "coalesce($6::integer, 0)"


# The messages this process queued for the conversation before the turn (the chat loop's
# reply, written behind), $9-$15: ids, roles, contents, metadata, tokens, accept times,
# whether each counts as a turn on the session. Ids already stored are skipped (a retry),
# probed by primary key as in a batch.
def _queued(sealed: int) -> str:
    """The queued messages' CTEs; ``$sealed`` and the next: their sealed contents and
    metadata (encryption at rest)."""
    return f"""
queued_stored AS (
    SELECT id FROM messages WHERE id = ANY($9::uuid[])
),
queued AS (
    SELECT u.* FROM unnest($9::uuid[], $10::message_role[], $11::text[], $12::jsonb[],
                           $13::integer[], $14::timestamptz[], $15::boolean[],
                           ${sealed}::bytea[], ${sealed + 1}::bytea[])
        WITH ORDINALITY AS u(id, role, content, metadata, tokens, enqueued_at, counts,
                             content_sealed, metadata_sealed, ord)
    WHERE NOT EXISTS (SELECT 1 FROM queued_stored s WHERE s.id = u.id)
),
q AS (
    SELECT count(*)::integer AS q_n, coalesce(sum(tokens), 0) AS q_tokens,
           count(*) FILTER (WHERE counts)::integer AS q_turns,
           coalesce(sum(tokens) FILTER (WHERE counts), 0) AS q_turn_tokens
    FROM queued
),"""


_EARLIER_SEQ = seq_of(
    "conv.c_message_count", added="(q.q_n + 1)", ordinal=batch_ordinal("conv.c_id", "u.ord")
)
_EARLIER = f"""
earlier AS (  -- the queued messages, before the turn's own, in accept order
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens, created_at,
                          content_sealed, metadata_sealed)
    SELECT u.id, conv.c_id, {_EARLIER_SEQ}, u.role, u.content,
           coalesce(u.metadata, '{{}}'::jsonb), u.tokens, u.enqueued_at, u.content_sealed,
           u.metadata_sealed
    FROM queued u CROSS JOIN conv CROSS JOIN q
    RETURNING {MESSAGE.select(prefix="m_")}
),"""


def _add_turn(*, queued: bool, sealed: int) -> str:
    """ADD_TURN, or (``queued``) the same turn preceded by this process's queued messages,
    counted by the same rules in the same statement. ``$sealed`` and the next: the
    turn's sealed content and metadata; with ``queued``, the two after: the queued
    messages' (encryption at rest; NULL in clear)."""
    if queued:
        source, added = "gate CROSS JOIN q", ("1 + q.q_n", f"{_TOKENS} + q.q_tokens")
        bumped = ("EXCLUDED.message_count", "EXCLUDED.total_tokens")
        turns, of_q = ("1 + q.q_turns", f"{_TOKENS} + q.q_turn_tokens"), " FROM q"
    else:
        source, added, bumped = "gate", ("1", _TOKENS), ("1", _TOKENS)
        turns, of_q = ("1", _TOKENS), ""
    return f"""
WITH stored AS (  -- the same message id already written: a resend after a timeout
    SELECT {MESSAGE.select(prefix="m_", alias="m")}, c.continuation_id AS stored_in
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.id = $8::uuid
),{_queued(sealed + 2) if queued else ""}
live AS (
    SELECT id FROM sessions
    WHERE id = $2 AND {accepts_turns()} AND NOT EXISTS (SELECT 1 FROM stored)
    FOR UPDATE
),
gate AS (
    SELECT 1 WHERE $2::uuid IS NULL AND NOT EXISTS (SELECT 1 FROM stored)
    UNION ALL
    SELECT 1 FROM live
),
conv AS (
    INSERT INTO conversations AS c
        (continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT $1, $2::uuid, {added[0]}, now(), {added[1]} FROM {source}
    ON CONFLICT (continuation_id) DO UPDATE
    SET session_id = {bind("c.session_id", "EXCLUDED.session_id")},
        {bump_conversation("c", messages=bumped[0], tokens=bumped[1], at="now()")}
    WHERE {may_write("c.session_id", "EXCLUDED.session_id")}
    RETURNING {CONVERSATION.select(prefix="c_", alias="c")}
),
sess AS (
    UPDATE sessions SET {bump_session("", turns=turns[0], tokens=turns[1], slide="$7")}{of_q}
    WHERE id = (SELECT id FROM live) AND EXISTS (SELECT 1 FROM conv)
    RETURNING {SESSION.select(prefix="s_")}
),{_EARLIER if queued else ""}
msg AS (
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens,
                          content_sealed, metadata_sealed)
    SELECT coalesce($8::uuid, gen_random_uuid()), conv.c_id,
           {seq_of("conv.c_message_count", added="1", ordinal="1")},
           $3::message_role, $4, coalesce($5::jsonb, '{{}}'::jsonb), $6::integer,
           ${sealed}::bytea, ${sealed + 1}::bytea
    FROM conv
    RETURNING {MESSAGE.select(prefix="m_")}
)
SELECT msg.*, conv.*, sess.*, NULL::text AS stored_in, false AS touched
FROM msg CROSS JOIN conv LEFT JOIN sess ON true
UNION ALL
SELECT {", ".join("stored.m_" + name for name in MESSAGE.names)},
       {CONVERSATION.select(prefix="c_", alias="c")},
       {SESSION.select(prefix="s_", alias="s")}, stored.stored_in, false
FROM stored
JOIN conversations c ON c.id = stored.m_conversation_id
LEFT JOIN sessions s ON s.id = $2
"""


# $1 continuation id, $2 session id, $3-$6 the message, $7 the sliding interval, $8 the
# caller's message id, $9-$10 the sealed content and metadata. The session is locked
# first (like every writer), then the conversation; the session's counters move only if
# the conversation accepted the message (ownership), so nothing is written unless
# everything is.
ADD_TURN = _add_turn(queued=False, sealed=9)
# ADD_TURN after this process's queued messages of the conversation ($9-$15, see
# _queued; $16-$19 the sealed columns): they take the seqs before the turn's, and count
# on the conversation and (each turn of the turn's session) on the session, all under
# the turn's gate: nothing is written if the turn is refused.
ADD_TURN_AFTER_QUEUED = _add_turn(queued=True, sealed=16)

# The turns that also return their context (see :mod:`sessionstore.turn_context`): the
# context's two parameters come before the sealed columns.
ADD_TURN_CONTEXT = with_context(_add_turn(queued=False, sealed=11), "$9", "$10", queued=False)
ADD_TURN_AFTER_QUEUED_CONTEXT = with_context(
    _add_turn(queued=True, sealed=18), "$16", "$17", queued=True
)
# A turn on the distributed layout is a few short statements in one transaction, each
# one execution on the session's shard: Citus plans a statement that inserts from a CTE
# in steps of its own (about ten for ADD_TURN), one coordinator round trip each. $1 is
# always the placing session.
_PLACED_SELECT = (
    f"{MESSAGE.select(prefix='m_', alias='m')}, {CONVERSATION.select(prefix='c_', alias='c')},"
    f" {SESSION.select(prefix='s_', alias='s')}"
)
# A resend: the message $2 stored, with its conversation and session. (A message id is
# unique within its session on this layout: the primary key leads with the session.)
PLACED_STORED = f"""
SELECT {_PLACED_SELECT}, c.continuation_id AS stored_in, false AS touched
FROM messages m
JOIN conversations c ON c.session_id = $1 AND c.id = m.conversation_id
LEFT JOIN sessions s ON s.id = $1
WHERE m.session_id = $1 AND m.id = $2
"""
_SESSION_COLUMNS = [f"s_{name}" for name in SESSION.names]
PLACED_LIVE = f"SELECT id FROM sessions WHERE id = $1 AND {accepts_turns()} FOR UPDATE"
PLACED_QUEUED_STORED = "SELECT id FROM messages WHERE session_id = $1 AND id = ANY($2::uuid[])"
# $2 continuation id, $3 the conversation's id, $4 messages and $5 tokens added, $6 the
# latest message's time.
PLACED_CREATE = f"""
INSERT INTO conversations AS c
    (id, continuation_id, session_id, message_count, last_message_at, total_tokens)
VALUES ($3, $2, $1, $4, $6, $5)
ON CONFLICT (session_id, continuation_id) DO UPDATE
SET {bump_conversation("c", messages="$4", tokens="$5", at="$6::timestamptz")},
    updated_at = now()
RETURNING {CONVERSATION.select(prefix="c_", alias="c")}
"""
# $2 continuation id, $3 messages and $4 tokens added, $5 the latest message's time.
PLACED_APPEND = f"""
UPDATE conversations AS c
SET {bump_conversation("c", messages="$3", tokens="$4", at="$5::timestamptz")},
    updated_at = now()
WHERE c.session_id = $1 AND c.continuation_id = $2
RETURNING {CONVERSATION.select(prefix="c_", alias="c")}
"""
# $2 turns, $3 tokens, $4 the sliding interval.
PLACED_COUNT = f"""
UPDATE sessions SET {bump_session("", turns="$2", tokens="$3", slide="$4")}, updated_at = now()
WHERE id = $1
RETURNING {SESSION.select(prefix="s_")}
"""
_PLACED_MESSAGE_COLUMNS = (
    "session_id, id, conversation_id, seq, role, content, metadata, tokens, created_at,"
    " content_sealed, metadata_sealed"
)
_PLACED_MESSAGE_TYPES = (
    "uuid", "uuid", "uuid", "integer", "message_role", "text", "jsonb", "integer",
    "timestamptz", "bytea", "bytea",
)  # fmt: skip


#: The most messages one placed insert carries.
_PLACED_ROWS = 1000


@functools.lru_cache(maxsize=16)
def placed_insert(count: int) -> str:
    """The insert of ``count`` messages (11 parameters each) on the distributed layout:
    a multi-row ``VALUES`` (Citus routes it whole; from a set-returning function it
    would go through the coordinator)."""
    width = len(_PLACED_MESSAGE_TYPES)
    rows = ", ".join(
        "("
        + ", ".join(f"${n * width + k + 1}::{kind}" for k, kind in enumerate(_PLACED_MESSAGE_TYPES))
        + ")"
        for n in range(count)
    )
    return (
        f"INSERT INTO messages ({_PLACED_MESSAGE_COLUMNS}) VALUES {rows}"
        f" RETURNING {MESSAGE.select(prefix='m_')}"
    )


# Why a turn matched nothing: the session refused it, or else the conversation did.
OWNER = "SELECT session_id FROM conversations WHERE continuation_id = $1"

# Under RLS the policies' subqueries see the statement's snapshot, which does not hold
# rows inserted by earlier CTEs of the same statement: a message into a conversation
# created in that statement would fail its policy. So a user-scoped turn first creates
# the conversation (only if the session is visible), in the same transaction.
PRECREATE_CONVERSATION = """
INSERT INTO conversations (continuation_id, session_id)
SELECT $1, $2::uuid
WHERE $2::uuid IS NULL OR EXISTS (SELECT 1 FROM sessions WHERE id = $2::uuid)
ON CONFLICT (continuation_id) DO NOTHING
"""

# ADD_TURN for many turns at once (write-behind), with the same rules: a turn whose
# session is missing, expired or not active, or whose conversation belongs to another
# session, is refused and nothing of it written. $9-$10: the sealed columns, $11: the
# sliding interval.
_BATCH_FIELDS = ("id", "continuation_id", "session_id", *MESSAGE_FIELDS)
_BATCH_SESSION = bump_session("s", turns="p.n", tokens="p.tok", slide="$11")
_BATCH_CONVERSATION = bump_conversation(
    "c",
    messages="EXCLUDED.message_count",
    tokens="EXCLUDED.total_tokens",
    at="EXCLUDED.last_message_at",
)
_BATCH_SEQ = seq_of(
    "conv.message_count", added="p.n", ordinal=batch_ordinal("a.continuation_id", "a.ord")
)
TURN_BATCH = f"""{fresh_rows((*_BATCH_FIELDS, *SEALED_FIELDS))},
live AS (  -- the batch's sessions that take turns, locked first like every writer
    SELECT s.id FROM sessions s
    WHERE s.id IN (SELECT session_id FROM fresh) AND {accepts_turns("s")}
    ORDER BY s.id
    FOR UPDATE
),
ok AS (
    SELECT f.* FROM fresh f WHERE f.session_id IS NULL OR f.session_id IN (SELECT id FROM live)
),
owner AS (  -- each conversation's session: its own, else the first one the batch names
    SELECT o.continuation_id, coalesce(
        (SELECT c.session_id FROM conversations c WHERE c.continuation_id = o.continuation_id),
        (array_agg(o.session_id ORDER BY o.ord) FILTER (WHERE o.session_id IS NOT NULL))[1]
    ) AS session_id
    FROM ok o GROUP BY o.continuation_id
),
accepted AS (
    SELECT o.*, w.session_id AS owner_id FROM ok o JOIN owner w USING (continuation_id)
    WHERE {may_write("w.session_id", "o.session_id")}
),
per_conv AS (
    SELECT continuation_id, (array_agg(owner_id))[1] AS session_id, count(*)::integer AS n,
           coalesce(sum(tokens), 0) AS tok, max(enqueued_at) AS last_at
    FROM accepted GROUP BY continuation_id
),
conv AS (
    INSERT INTO conversations AS c
        (continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT continuation_id, session_id, n, last_at, tok FROM per_conv
    ON CONFLICT (continuation_id) DO UPDATE
    SET session_id = {bind("c.session_id", "EXCLUDED.session_id")}, {_BATCH_CONVERSATION}
    WHERE {may_write("c.session_id", "EXCLUDED.session_id")}
    RETURNING c.id, c.continuation_id, c.message_count
),
written AS (
    SELECT a.*, conv.id AS conversation_id FROM accepted a JOIN conv USING (continuation_id)
),
ins AS (
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens, created_at,
                          content_sealed, metadata_sealed)
    SELECT a.id, a.conversation_id, {_BATCH_SEQ}, a.role, a.content,
           coalesce(a.metadata, '{{}}'::jsonb), a.tokens, a.enqueued_at, a.content_sealed,
           a.metadata_sealed
    FROM written a
    JOIN conv ON conv.continuation_id = a.continuation_id
    JOIN per_conv p ON p.continuation_id = a.continuation_id
    RETURNING id
),
per_session AS (
    SELECT session_id, count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok
    FROM written WHERE session_id IS NOT NULL GROUP BY session_id
),
sess AS (  -- counted only for turns whose conversation took them
    UPDATE sessions s SET {_BATCH_SESSION}
    FROM per_session p
    WHERE s.id = p.session_id
    RETURNING s.id
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       ARRAY(SELECT f.id FROM fresh f
             WHERE f.session_id IS NOT NULL AND f.session_id NOT IN (SELECT id FROM live))
           AS refused_by_session,
       ARRAY(SELECT o.id FROM ok o WHERE NOT EXISTS (SELECT 1 FROM written w WHERE w.id = o.id))
           AS refused_by_owner
"""


_TURN_OPTIONS = TurnOptions.__optional_keys__
_ADD_TURN_OPTIONS = AddTurnOptions.__optional_keys__


def _checked(
    continuation_id: str, role: Role, content: str, options: TurnOptions, allowed: frozenset[str]
) -> tuple[str, UUID | None, v.CheckedMessage]:
    session_id = options.get("session_id")
    return (
        v.identifier(continuation_id, "continuation_id"),
        None if session_id is None else v.uuid(session_id, "session_id"),
        v.message(role, content, options, allowed),
    )


def _same_turn(
    turn: Turn, stored_in: str, cont: str, sid: UUID | None, new: v.CheckedMessage
) -> None:
    """A resend must repeat the stored turn exactly; anything else reusing its id is refused
    (the error names no content)."""
    stored = turn.message
    metadata = {} if new.metadata is None else json.loads(new.metadata)
    same = (
        stored_in == cont
        and (sid is None or turn.conversation.session_id == sid)
        and (stored.role.value, stored.content, stored.metadata, stored.tokens)
        == (new.role, new.content, metadata, new.tokens)
    )
    if not same:
        raise ConflictError(
            f"message_id {stored.id} is already the id of a different message; nothing was written"
        )


async def _explain_refusal(conn: Connection, cont: str, sid: UUID, *, scoped: bool) -> NoReturn:
    """Raise why a turn matched nothing: its session, else its conversation."""
    if not await conn.fetchval(TAKES_TURNS, sid):
        await raise_session_miss(conn, Attempt(sid, "add a turn to"))
    if scoped and await conn.fetchval(OWNER, cont) is None:
        # Some PostgreSQL releases raise 42501 in the statement itself instead.
        raise PermissionDeniedError(
            f"conversation {cont!r} exists but is not visible to this user (nothing was written)"
        )
    raise ConflictError(
        f"conversation {cont!r} belongs to another session; a turn of session {sid} "
        "cannot be added to it (nothing was written)"
    )


async def _keyed_turn(
    db: Database, conn: Connection, query: str, arguments: tuple[object, ...]
) -> list[Row] | None:
    """The turn on the distributed layout (``query`` and ``arguments`` as for one
    PostgreSQL): its conversation placed (remembered, else claimed in this transaction:
    :class:`~sessionstore.routes.Routes`), then :func:`_turn_steps` on that one shard. A
    remembered place where the conversation is gone is forgotten and the route claimed
    again. ``None``, with nothing written, when ``conn`` is in no transaction: run it
    again in one. The rows: the turn's, or none (refused); a context is read again."""
    if not conn.is_in_transaction():
        return None
    routes = db.routes
    assert routes is not None
    cont, sid = str(arguments[0]), cast(UUID | None, arguments[1])
    place, create = routes.cached(cont), False
    rows: list[Row] = []
    for _ in range(2):
        if place is None or (sid is not None and place.session_id != sid):
            try:
                place, create = await routes.claim(conn, cont, sid)
            except ConflictError:
                # When the session refuses the turn too, its refusal is the one raised.
                if sid is not None and not await conn.fetchval(TAKES_TURNS, sid):
                    await raise_session_miss(conn, Attempt(sid, "add a turn to"))
                raise
        with translate_errors():
            rows = await _turn_steps(conn, query, arguments, place, create)
        if rows:
            routes.remember(Placement(place.session_id, rows[0]["c_id"], cont))
            return rows
        if create:
            return rows  # the session refused it
        routes.forget(cont)  # remembered, but gone: claim the route again
        place = None
    return rows


async def _placed_conversation(
    conn: Connection,
    place: Placement,
    cont: object,
    create: bool,
    *,
    added: int,
    spent: int,
    at: datetime,
) -> Row | None:
    """The conversation of ``cont`` in ``place`` with ``added`` messages of ``spent``
    tokens counted, the latest at ``at``: created there (``create``: this transaction
    holds its route), else appended to (``None``: it is not there)."""
    if create:
        return await conn.fetchrow(
            PLACED_CREATE, place.session_id, cont, place.conversation_id, added, spent, at
        )
    return await conn.fetchrow(PLACED_APPEND, place.session_id, cont, added, spent, at)


async def _turn_steps(
    conn: Connection,
    query: str,
    arguments: tuple[object, ...],
    place: Placement,
    create: bool,
) -> list[Row]:
    """The turn of ``arguments`` (laid out as ``query``'s) in ``place``'s session, by
    the rules of ADD_TURN, as the ``PLACED_*`` statements: the stored turn of a resend;
    else, when the session takes turns (locked first), the conversation created
    (``create``) or appended to, its queued messages then the turn's numbered after its
    count, and the session counted. No rows: refused, nothing written."""
    (cont, sid, role, text, meta, tokens, slide, mid) = arguments[:8]
    queued = query in (ADD_TURN_AFTER_QUEUED, ADD_TURN_AFTER_QUEUED_CONTEXT)
    at = 8
    waiting: list[tuple[object, ...]] = []
    counts: list[object] = []
    if queued:
        ids, roles, contents, metas, counted, accepted, counts = (
            cast(list[object], a) for a in arguments[8:15]
        )
        at = 15
        waiting = list(zip(ids, roles, contents, metas, counted, accepted, strict=True))
    if query in (ADD_TURN_CONTEXT, ADD_TURN_AFTER_QUEUED_CONTEXT):
        at += 2
    sealed, sealed_meta = arguments[at], arguments[at + 1]
    if queued:
        waiting = [
            (*w, c, m, n)
            for w, c, m, n in zip(
                waiting,
                cast(list[object], arguments[at + 2]),
                cast(list[object], arguments[at + 3]),
                counts,
                strict=True,
            )
        ]
    session = place.session_id
    message_id = mid if mid is not None else uuid7()
    stored = await conn.fetchrow(PLACED_STORED, session, message_id)
    if stored is not None:
        if sid is None:  # a turn naming no session returns none
            return [cast(Row, {**stored, **dict.fromkeys(_SESSION_COLUMNS)})]
        return [stored]
    if sid is not None and await conn.fetchval(PLACED_LIVE, session) is None:
        return []
    if waiting:
        found = await conn.fetch(PLACED_QUEUED_STORED, session, [w[0] for w in waiting])
        written = {r["id"] for r in found}
        waiting = [w for w in waiting if w[0] not in written]
    own = 0 if tokens is None else cast(int, tokens)
    added = 1 + len(waiting)
    spent = own + sum(cast(int, w[4] or 0) for w in waiting)
    now = datetime.now(UTC)
    conv = await _placed_conversation(conn, place, cont, create, added=added, spent=spent, at=now)
    if conv is None:
        return []
    row: dict[str, object] = dict(conv.items())
    if sid is not None:
        turns = 1 + sum(1 for w in waiting if w[-1])
        turn_tokens = own + sum(cast(int, w[4] or 0) for w in waiting if w[-1])
        counted_row = await conn.fetchrow(PLACED_COUNT, session, turns, turn_tokens, slide)
        assert counted_row is not None  # locked above
        row.update(counted_row.items())
    else:
        row.update(dict.fromkeys(_SESSION_COLUMNS))
    first = cast(int, conv["c_message_count"]) - added
    values: list[object] = []
    for n, w in enumerate(waiting, start=1):
        wid, wrole, wcontent, wmeta, wtokens, wat, wsealed, wsealed_meta, _ = w
        values += [session, wid, conv["c_id"], first + n, wrole, wcontent]
        values += ["{}" if wmeta is None else wmeta, wtokens, wat, wsealed, wsealed_meta]
    values += [session, message_id, conv["c_id"], first + added, role, text]
    values += ["{}" if meta is None else meta, tokens, now, sealed, sealed_meta]
    inserted = await conn.fetch(placed_insert(added), *values)
    mine = next(r for r in inserted if r["m_id"] == message_id)
    row.update(mine.items())
    row.update({"stored_in": None, "touched": False})
    return [cast(Row, row)]


async def add_turn(
    db: Database,
    continuation_id: str,
    role: Role,
    content: str,
    *,
    after: AfterTurn | None = None,
    queue: Writer | None = None,
    **options: Unpack[AddTurnOptions],
) -> Turn:
    """Append a message to the conversation ``continuation_id`` (created if needed) and,
    with ``session_id``, add one turn and ``tokens`` to that session — in one round trip.

    The session must exist, be active and not expired (``NotFoundError``,
    ``InvalidStateError``, ``SessionExpiredError``); a conversation bound to another
    session raises ``ConflictError`` (an unbound one is bound to this session); when both
    refuse, the session's error is raised. In every refusal nothing is written. With
    ``message_id``, a resend returns the stored turn
    (see :class:`~sessionstore.AddTurnOptions`). Under row-level security (``as_user``)
    it takes two statements in one transaction. With sliding expiry configured, the
    session's ``expires_at`` moves forward.

    ``queue`` (the service store's writer): the messages it holds for this conversation
    (by continuation id) are written first, in accept order, in the same statement and
    by the same rules — ``enqueue_turn(reply)`` then ``add_turn(user, context=N)`` keeps
    the stored order and a complete context (see
    :meth:`~sessionstore.writebehind.handover.Handover.claim`). If the turn is refused
    or fails they go back to the writer, which writes or sets them aside as it would
    have; a resend that finds its message stored gives them back too.

    The context (``context``, ``context_tokens``) of a compacted conversation is its
    view before the turn (see ``messages.history``): the live summary, kept only when
    every later message fits, then the later messages.

    ``after`` (for the framework adapters) runs in the same transaction once the turn
    is written or found: what it writes commits with the turn or not at all.
    """
    cont, sid, message = _checked(continuation_id, role, content, options, _ADD_TURN_OPTIONS)
    after = v.callback(after, "after")
    given_id = options.get("message_id")
    mid = None if given_id is None else v.uuid(given_id, "message_id")
    wanted, tokens = options.get("context"), options.get("context_tokens")
    budget = None if tokens is None else v.positive_int(tokens, "context_tokens")
    size = None if wanted is None else v.limit(wanted, "context")
    if size is None and budget is not None:
        size = v.MAX_LIMIT  # a budget alone: as many messages as a context may hold
    bound = db.config.command_timeout or db.config.connect_timeout
    owner: Owner = ("conversation", ContinuationId(cont)) if sid is None else ("session", sid)
    if mid is None and db.keys is not None:
        mid = uuid7()  # sealed, the message is bound to its id: it needs one before sending
    text, meta, sealed, sealed_meta = await seal_message(
        db.keys, owner, mid, message.content, message.metadata
    )
    earlier = [] if queue is None else await queue.claim(cont, sid, within=bound)
    arguments: tuple[object, ...] = (
        cont,
        sid,
        message.role,
        text,
        meta,
        message.tokens,
        db.config.sliding_interval,
        mid,
    )
    query = ADD_TURN if size is None else ADD_TURN_CONTEXT
    sealing: tuple[object, ...] = (sealed, sealed_meta)
    if earlier:
        query = ADD_TURN_AFTER_QUEUED if size is None else ADD_TURN_AFTER_QUEUED_CONTEXT
        try:
            fields = await sealed_batch(db.keys, earlier, ("id", *MESSAGE_FIELDS))
        except BaseException:
            assert queue is not None
            await queue.settle(earlier, durable=False)
            raise
        arguments = (*arguments, *fields[:-2], [i.session_id is not None for i in earlier])
        sealing = (*sealing, *fields[-2:])
    if size is not None:
        arguments = (*arguments, size - 1, budget)
    arguments = (*arguments, *sealing)
    written = False

    async def work(conn: Connection) -> Turn | None:
        nonlocal written
        if db.keyed:
            placed_rows = await _keyed_turn(db, conn, query, arguments)
            if placed_rows is None:
                return None
            rows = placed_rows
        else:
            if db.rls_scoped:
                await conn.execute(PRECREATE_CONVERSATION, cont, sid)
            with translate_errors():
                rows = await conn.fetch(query, *arguments)
        row = next((r for r in rows if r["c_id"] is not None), None)
        if row is None:
            assert sid is not None  # without a session the statement always writes
            await _explain_refusal(conn, cont, sid, scoped=db.rls_scoped)
        new = await read_message(db, row, "m_")
        context = None
        if size is not None:
            context = await read_context(db, conn, new, rows, size, budget)
        turn = Turn.model_construct(
            message=new,
            conversation=CONVERSATION.one(row, "c_"),
            session=None if sid is None or row["s_id"] is None else SESSION.one(row, "s_"),
            context=context,
        )
        written = row["stored_in"] is None
        if not written:
            _same_turn(turn, row["stored_in"], cont, sid, message)
        if after is not None:
            await after(conn, turn, written)
        return turn

    transaction = after is not None

    async def attempt() -> Turn:
        nonlocal transaction
        turn = await db.run(work, transaction=transaction)
        if turn is None:  # the distributed layout: a route is claimed in a transaction
            transaction = True
            turn = await db.run(work, transaction=True)
            assert turn is not None
        return turn

    try:
        try:
            return await attempt()
        except ConflictError as exc:
            # Resends of one message id at once: the loser's statement took its snapshot
            # before the winner committed, and its insert met the winner's row. Sent again
            # (in a new transaction where there was one), it finds the stored turn.
            if mid is None or exc.sqlstate != "23505":
                raise
        written = False
        return await attempt()
    except BaseException:
        written = False
        raise
    finally:
        if earlier:
            assert queue is not None
            # Durable only if this turn's statement wrote them (a stored turn wrote
            # nothing: they may be queued after it); the writer's retry skips stored ids.
            await queue.settle(earlier, durable=written)


def accept_turn(
    continuation_id: str, role: Role, content: str, options: TurnOptions
) -> PendingWrite:
    """The write-behind form of :func:`add_turn`, checked and ready to queue."""
    cont, sid, message = _checked(continuation_id, role, content, options, _TURN_OPTIONS)
    return accept("turn", message, continuation_id=cont, session_id=sid)


async def write_turns(db: Database, batch: Sequence[PendingWrite]) -> dict[UUID, str]:
    """Write a write-behind batch of turns in one statement; return the ids it refused:
    their session is missing, not active or expired, or their conversation belongs to
    another session.

    On the distributed layout, one statement (and transaction) per session the batch's
    turns are placed in, each on one shard: a retry after a failure part-way skips what
    is stored, as for one statement."""
    if await db.is_keyed():
        grouped, refused = await db.run(lambda conn: _placed_turns(db, conn, batch))
        for session_id, turns in grouped.items():
            refused.update(await _write_placed_turns(db, session_id, turns))
        return refused
    arguments = await sealed_batch(db.keys, batch, _BATCH_FIELDS)
    row = await db.fetchrow(TURN_BATCH, *arguments, db.config.sliding_interval)
    assert row is not None  # the statement always returns one row
    refused = dict.fromkeys(row["refused_by_session"], "session not found, not active or expired")
    refused.update(
        dict.fromkeys(row["refused_by_owner"], "conversation belongs to another session")
    )
    return refused


_OTHER_SESSION = "conversation belongs to another session"
_NO_SESSION = "a new conversation needs a session on the distributed layout"
_GONE = "conversation not found (its session was deleted)"


async def _placed_turns(
    db: Database, conn: Connection, batch: Sequence[PendingWrite]
) -> tuple[dict[UUID, list[PendingWrite]], dict[UUID, str]]:
    """The batch's turns by the session they are placed in, and those refused (by id,
    with why). Only places are read here; routes are claimed with the writes
    (:func:`_write_placed_turns`)."""
    routes = db.routes
    assert routes is not None
    grouped: dict[UUID, list[PendingWrite]] = {}
    refused: dict[UUID, str] = {}
    named: dict[str, UUID] = {}  # the first session the batch names for a conversation
    for item in batch:
        if item.session_id is not None:
            named.setdefault(str(item.continuation_id), item.session_id)
    for item in batch:
        session_id = item.session_id
        if session_id is None:  # placed by its conversation's session, asked afresh
            cont = str(item.continuation_id)
            place = await routes.find(conn, ContinuationId(cont), fresh=True)
            session_id = named.get(cont) if place is None else place.session_id
            if session_id is None:
                refused[item.id] = _NO_SESSION
                continue
        grouped.setdefault(session_id, []).append(item)
    return grouped, refused


async def _write_placed_turns(
    db: Database, session_id: UUID, turns: Sequence[PendingWrite]
) -> dict[UUID, str]:
    """One session's turns of a batch, in one transaction of short statements on its
    shard (as :func:`_turn_steps`): each conversation at its remembered place, else its
    route claimed in this transaction. A remembered place where the conversation is
    gone is forgotten and its route claimed; a turn whose id is stored is skipped (a
    retried batch)."""
    routes = db.routes
    assert routes is not None
    sealed = await sealed_batch(db.keys, turns, ("content", "metadata"))
    rows = list(zip(turns, sealed[0], sealed[1], sealed[2], sealed[3], strict=True))

    async def work(conn: Connection) -> dict[UUID, str]:
        refused: dict[UUID, str] = {}
        if not await conn.fetchval(SESSION_EXISTS, session_id):
            for item in turns:  # a route's session deleted since: nothing to write to
                routes.forget(str(item.continuation_id))
            reason = "session not found, not active or expired"
            return {t.id: reason if t.session_id else _GONE for t in turns}
        live = await conn.fetchval(PLACED_LIVE, session_id) is not None
        found = await conn.fetch(PLACED_QUEUED_STORED, session_id, [t.id for t in turns])
        done = {r["id"] for r in found}
        accepted: dict[str, list[tuple[PendingWrite, object, object, object, object]]] = {}
        for entry in rows:
            item = entry[0]
            if item.id in done:
                continue
            if item.session_id is not None and not live:
                refused[item.id] = "session not found, not active or expired"
                continue
            accepted.setdefault(str(item.continuation_id), []).append(entry)
        values: list[object] = []
        count = 0
        counted, counted_tokens = 0, 0
        for cont, entries in accepted.items():
            conv = None
            place = routes.cached(cont)
            for attempt in range(2):
                create = False
                if place is None or place.session_id != session_id or attempt:
                    try:
                        place, create = await routes.claim(
                            conn, cont, entries[0][0].session_id or session_id
                        )
                    except (ConflictError, InvalidInputError):
                        place = None
                    if place is None or place.session_id != session_id:
                        break
                spent = sum(e[0].tokens or 0 for e in entries)
                latest = max(e[0].enqueued_at for e in entries)
                conv = await _placed_conversation(
                    conn, place, cont, create, added=len(entries), spent=spent, at=latest
                )
                if conv is not None or create:
                    break
                routes.forget(cont)  # remembered, but gone: claim the route again
            if conv is None or place is None:
                refused.update(dict.fromkeys((e[0].id for e in entries), _OTHER_SESSION))
                continue
            routes.remember(Placement(session_id, conv["c_id"], cont))
            first = cast(int, conv["c_message_count"]) - len(entries)
            for n, (item, content, metadata, content_sealed, metadata_sealed) in enumerate(
                entries, start=1
            ):
                values += [session_id, item.id, conv["c_id"], first + n, item.role, content]
                values += ["{}" if metadata is None else metadata, item.tokens]
                values += [item.enqueued_at, content_sealed, metadata_sealed]
                count += 1
                if item.session_id is not None:
                    counted += 1
                    counted_tokens += item.tokens or 0
        width = len(_PLACED_MESSAGE_TYPES)
        for at in range(0, count, _PLACED_ROWS):  # within PostgreSQL's 65,535 parameters
            chunk = values[at * width : (at + _PLACED_ROWS) * width]
            await conn.execute(placed_insert(len(chunk) // width), *chunk)
        if counted:
            await conn.execute(
                PLACED_COUNT, session_id, counted, counted_tokens, db.config.sliding_interval
            )
        return refused

    return await db.run(work, transaction=True)
