"""A turn: a message appended to a conversation (created if needed) and counted on its
session — the one owner of that operation, for the direct path (``add_turn``, one
statement) and the write-behind path (``enqueue_turn``, one statement per batch).

The session UPDATE gates everything else: when the session is missing, expired or not
active it matches no row, so the conversation and message inserts (which read from it)
write nothing. One statement is one transaction: a turn is all or nothing. Both paths
build the session's and the conversation's changes from :mod:`sessionstore.rules`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
from .repositories.conversations import CONVERSATION
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
    placed,
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
def _queued(sealed: int, session: str | None) -> str:
    """The queued messages' CTEs; ``$sealed`` and the next: their sealed contents and
    metadata (encryption at rest); ``session``: see :func:`~sessionstore.rules.placed`."""
    return f"""
queued_stored AS (
    SELECT id FROM messages WHERE id = ANY($9::uuid[]){placed("", session)}
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


def _earlier(session: str | None) -> str:
    """The queued messages' insert (``session``: the distributed layout's, else none)."""
    column, value = ("", "") if session is None else ("session_id, ", f"{session}, ")
    return f"""
earlier AS (  -- the queued messages, before the turn's own, in accept order
    INSERT INTO messages ({column}id, conversation_id, seq, role, content, metadata, tokens,
                          created_at, content_sealed, metadata_sealed)
    SELECT {value}u.id, conv.c_id, {_EARLIER_SEQ}, u.role, u.content,
           coalesce(u.metadata, '{{}}'::jsonb), u.tokens, u.enqueued_at, u.content_sealed,
           u.metadata_sealed
    FROM queued u CROSS JOIN conv CROSS JOIN q
    RETURNING {MESSAGE.select(prefix="m_")}
),"""


def _add_turn(*, queued: bool, sealed: int, keyed: bool = False) -> str:
    """ADD_TURN, or (``queued``) the same turn preceded by this process's queued messages,
    counted by the same rules in the same statement. ``$sealed`` and the next: the
    turn's sealed content and metadata; with ``queued``, the two after: the queued
    messages' (encryption at rest; NULL in clear).

    ``keyed``: the distributed layout's form (:mod:`sessionstore.distribution`), with
    three parameters after the others: the session placing the conversation (every table
    is read by it: one shard), the conversation's id and whether to create it (only
    where this transaction holds its route, see :mod:`sessionstore.routes`; otherwise an
    existing conversation is appended to, or nothing is written). The message id ``$8``
    is always given, and ``$2`` is NULL or the placing session.
    """
    if queued:
        source, added = "gate CROSS JOIN q", ("1 + q.q_n", f"{_TOKENS} + q.q_tokens")
        bumped = ("EXCLUDED.message_count", "EXCLUDED.total_tokens")
        turns, of_q = ("1 + q.q_turns", f"{_TOKENS} + q.q_turn_tokens"), " FROM q"
    else:
        source, added, bumped = "gate", ("1", _TOKENS), ("1", _TOKENS)
        turns, of_q = ("1", _TOKENS), ""
    first = sealed + (4 if queued else 2)
    place = f"${first}::uuid" if keyed else None
    if keyed:
        created, create = f"${first + 1}::uuid", f"${first + 2}"
        stored_join = (
            f"c.session_id = m.session_id AND c.id = m.conversation_id{placed('m', place)}"
        )
        live = f"id = {place} AND $2::uuid IS NOT NULL"
        conv = f"""created AS (
    INSERT INTO conversations AS c
        (id, continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT {created}, $1, {place}, {added[0]}, now(), {added[1]} FROM {source} WHERE {create}
    ON CONFLICT (session_id, continuation_id) DO UPDATE
    SET {bump_conversation("c", messages=bumped[0], tokens=bumped[1], at="now()")},
        updated_at = now()
    RETURNING {CONVERSATION.select(prefix="c_", alias="c")}
),
appended AS (
    UPDATE conversations AS c
    SET {bump_conversation("c", messages=added[0], tokens=added[1], at="now()")},
        updated_at = now()
    FROM {source}
    WHERE c.session_id = {place} AND c.continuation_id = $1 AND NOT {create}
    RETURNING {CONVERSATION.select(prefix="c_", alias="c")}
),
conv AS (SELECT * FROM created UNION ALL SELECT * FROM appended)"""
        sess_where, touched = (
            f"id = {place} AND EXISTS (SELECT 1 FROM live)",
            ", updated_at = now()",
        )
        message_id, message_columns, message_place = "$8::uuid", "session_id, ", f"{place}, "
        stored_conversation = f"c.session_id = {place} AND c.id = stored.m_conversation_id"
        stored_session = f"s.id = {place} AND $2::uuid IS NOT NULL"
    else:
        stored_join = "c.id = m.conversation_id"
        live = "id = $2"
        conv = f"""conv AS (
    INSERT INTO conversations AS c
        (continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT $1, $2::uuid, {added[0]}, now(), {added[1]} FROM {source}
    ON CONFLICT (continuation_id) DO UPDATE
    SET session_id = {bind("c.session_id", "EXCLUDED.session_id")},
        {bump_conversation("c", messages=bumped[0], tokens=bumped[1], at="now()")}
    WHERE {may_write("c.session_id", "EXCLUDED.session_id")}
    RETURNING {CONVERSATION.select(prefix="c_", alias="c")}
)"""
        sess_where, touched = "id = (SELECT id FROM live)", ""
        message_id, message_columns, message_place = "coalesce($8::uuid, gen_random_uuid())", "", ""
        stored_conversation = "c.id = stored.m_conversation_id"
        stored_session = "s.id = $2"
    return f"""
WITH stored AS (  -- the same message id already written: a resend after a timeout
    SELECT {MESSAGE.select(prefix="m_", alias="m")}, c.continuation_id AS stored_in
    FROM messages m JOIN conversations c ON {stored_join}
    WHERE m.id = $8::uuid
),{_queued(sealed + 2, place) if queued else ""}
live AS (
    SELECT id FROM sessions
    WHERE {live} AND {accepts_turns()} AND NOT EXISTS (SELECT 1 FROM stored)
    FOR UPDATE
),
gate AS (
    SELECT 1 WHERE $2::uuid IS NULL AND NOT EXISTS (SELECT 1 FROM stored)
    UNION ALL
    SELECT 1 FROM live
),
{conv},
sess AS (
    UPDATE sessions
    SET {bump_session("", turns=turns[0], tokens=turns[1], slide="$7")}{touched}{of_q}
    WHERE {sess_where} AND EXISTS (SELECT 1 FROM conv)
    RETURNING {SESSION.select(prefix="s_")}
),{_earlier(place) if queued else ""}
msg AS (
    INSERT INTO messages ({message_columns}id, conversation_id, seq, role, content, metadata,
                          tokens, content_sealed, metadata_sealed)
    SELECT {message_place}{message_id}, conv.c_id,
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
JOIN conversations c ON {stored_conversation}
LEFT JOIN sessions s ON {stored_session}
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
# The same four on the distributed layout: after their parameters, the placing session,
# the conversation's id and whether to create it (see _add_turn).
ADD_TURN_KEYED = _add_turn(queued=False, sealed=9, keyed=True)
ADD_TURN_AFTER_QUEUED_KEYED = _add_turn(queued=True, sealed=16, keyed=True)
ADD_TURN_CONTEXT_KEYED = with_context(
    _add_turn(queued=False, sealed=11, keyed=True), "$9", "$10", queued=False, session="$13::uuid"
)
ADD_TURN_AFTER_QUEUED_CONTEXT_KEYED = with_context(
    _add_turn(queued=True, sealed=18, keyed=True), "$16", "$17", queued=True, session="$22::uuid"
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


# TURN_BATCH on the distributed layout: the batch's turns placed in one session ($14),
# after the same fields and sealed columns and the sliding interval ($11): $12 each
# conversation's continuation id, $13 its id and $15 whether to create it (this
# transaction holds its route), as placed by Routes. Every table is read by the session:
# one shard. A turn naming the session is refused with it when it takes no turns; one
# naming none (placed by its conversation's route) is not counted on it.
_PLACE = "$14::uuid"
_KEYED_BATCH_CONVERSATION = bump_conversation("c", messages="p.n", tokens="p.tok", at="p.last_at")
TURN_BATCH_KEYED = f"""{fresh_rows((*_BATCH_FIELDS, *SEALED_FIELDS), session=_PLACE)},
placed AS (
    SELECT * FROM unnest($12::text[], $13::uuid[], $15::boolean[])
        AS r(continuation_id, conversation_id, create_it)
),
live AS (
    SELECT s.id FROM sessions s WHERE s.id = {_PLACE} AND {accepts_turns("s")} FOR UPDATE
),
ok AS (SELECT f.* FROM fresh f WHERE f.session_id IS NULL OR EXISTS (SELECT 1 FROM live)),
per_conv AS (
    SELECT o.continuation_id, count(*)::integer AS n, coalesce(sum(o.tokens), 0) AS tok,
           max(o.enqueued_at) AS last_at
    FROM ok o GROUP BY o.continuation_id
),
created AS (
    INSERT INTO conversations AS c
        (id, continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT r.conversation_id, p.continuation_id, {_PLACE}, p.n, p.last_at, p.tok
    FROM per_conv p JOIN placed r USING (continuation_id) WHERE r.create_it
    ON CONFLICT (session_id, continuation_id) DO UPDATE
    SET {_BATCH_CONVERSATION}, updated_at = now()
    RETURNING c.id, c.continuation_id, c.message_count
),
appended AS (
    UPDATE conversations AS c SET {_KEYED_BATCH_CONVERSATION}, updated_at = now()
    FROM per_conv p JOIN placed r USING (continuation_id)
    WHERE NOT r.create_it AND c.session_id = {_PLACE} AND c.id = r.conversation_id
    RETURNING c.id, c.continuation_id, c.message_count
),
conv AS (SELECT * FROM created UNION ALL SELECT * FROM appended),
written AS (
    SELECT a.*, conv.id AS conversation_id FROM ok a JOIN conv USING (continuation_id)
),
ins AS (
    INSERT INTO messages (session_id, id, conversation_id, seq, role, content, metadata,
                          tokens, created_at, content_sealed, metadata_sealed)
    SELECT {_PLACE}, a.id, a.conversation_id, {_BATCH_SEQ}, a.role, a.content,
           coalesce(a.metadata, '{{}}'::jsonb), a.tokens, a.enqueued_at, a.content_sealed,
           a.metadata_sealed
    FROM written a
    JOIN conv ON conv.continuation_id = a.continuation_id
    JOIN per_conv p ON p.continuation_id = a.continuation_id
    RETURNING id
),
per_session AS (
    SELECT count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok
    FROM written WHERE session_id IS NOT NULL HAVING count(*) > 0
),
sess AS (
    UPDATE sessions s SET {_BATCH_SESSION}, updated_at = now()
    FROM per_session p
    WHERE s.id = {_PLACE}
    RETURNING s.id
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       ARRAY(SELECT f.id FROM fresh f
             WHERE f.session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM live))
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


_KEYED = {
    ADD_TURN: ADD_TURN_KEYED,
    ADD_TURN_CONTEXT: ADD_TURN_CONTEXT_KEYED,
    ADD_TURN_AFTER_QUEUED: ADD_TURN_AFTER_QUEUED_KEYED,
    ADD_TURN_AFTER_QUEUED_CONTEXT: ADD_TURN_AFTER_QUEUED_CONTEXT_KEYED,
}


async def _keyed_turn(
    db: Database, conn: Connection, query: str, arguments: tuple[object, ...]
) -> list[Row] | None:
    """The turn on the distributed layout: its conversation placed (remembered, else
    claimed in this transaction: :class:`~sessionstore.routes.Routes`), then the turn's
    statement on that one shard. A remembered place where the conversation is gone is
    forgotten and the route claimed again. ``None``, with nothing written, when a route
    must be claimed and ``conn`` is in no transaction: run it again in one."""
    routes = db.routes
    assert routes is not None
    cont, sid = str(arguments[0]), cast(UUID | None, arguments[1])
    if arguments[7] is None:  # the keyed statement takes the message id from the client
        arguments = (*arguments[:7], uuid7(), *arguments[8:])
    statement = _KEYED[query]
    place, create = routes.cached(cont), False
    for _ in range(2):
        if place is None or (sid is not None and place.session_id != sid):
            if not conn.is_in_transaction():
                return None
            place, create = await routes.claim(conn, cont, sid)
        with translate_errors():
            rows = await conn.fetch(
                statement, *arguments, place.session_id, place.conversation_id, create
            )
        row = next((r for r in rows if r["c_id"] is not None), None)
        if row is not None:
            routes.remember(Placement(row["c_session_id"], row["c_id"], cont))
            return rows
        if create:
            return rows  # the session refused it
        routes.forget(cont)  # remembered, but gone: claim the route again
        place = None
    return rows


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
    for item in batch:
        cont = str(item.continuation_id)
        place = await routes.find(conn, ContinuationId(cont))
        session_id = item.session_id
        if session_id is None:
            if place is None:
                refused[item.id] = _NO_SESSION
                continue
            session_id = place.session_id
        grouped.setdefault(session_id, []).append(item)
    return grouped, refused


async def _write_placed_turns(
    db: Database, session_id: UUID, turns: Sequence[PendingWrite]
) -> dict[UUID, str]:
    """One session's turns of a batch (:data:`TURN_BATCH_KEYED`) in one transaction: each
    conversation at its remembered place, else its route claimed in this transaction. A
    remembered place where the conversation is gone is forgotten, its route claimed, and
    the statement sent again (what it stored is skipped)."""
    routes = db.routes
    assert routes is not None
    arguments = await sealed_batch(db.keys, turns, _BATCH_FIELDS)
    by_conversation: dict[str, list[PendingWrite]] = {}
    for item in turns:
        by_conversation.setdefault(str(item.continuation_id), []).append(item)

    async def work(conn: Connection) -> dict[UUID, str]:
        refused: dict[UUID, str] = {}
        places: dict[str, tuple[UUID, bool]] = {}
        remembered: set[str] = set()
        row: Row | None = None
        by_owner: set[UUID] = set()
        for cont in by_conversation:
            place = routes.cached(cont)
            if place is not None and place.session_id == session_id:
                places[cont] = (place.conversation_id, False)
                remembered.add(cont)
        for attempt in range(2):
            for cont, items in by_conversation.items():
                if cont in places or items[0].id in refused:
                    continue
                try:
                    place, create = await routes.claim(
                        conn, cont, items[0].session_id or session_id
                    )
                except (ConflictError, InvalidInputError):
                    place = None
                if place is None or place.session_id != session_id:
                    refused.update(dict.fromkeys((t.id for t in items), _OTHER_SESSION))
                    continue
                places[cont] = (place.conversation_id, create)
            conts = list(places)
            row = await conn.fetchrow(
                TURN_BATCH_KEYED,
                *arguments,
                db.config.sliding_interval,
                conts,
                [places[c][0] for c in conts],
                session_id,
                [places[c][1] for c in conts],
            )
            assert row is not None  # the statement always returns one row
            by_owner = set(row["refused_by_owner"])
            stale = {c for c in remembered if any(t.id in by_owner for t in by_conversation[c])}
            if not stale or attempt:
                break
            for cont in stale:  # remembered, but gone: claimed on the next pass
                routes.forget(cont)
                del places[cont]
            remembered -= stale
        assert row is not None  # the loop ran at least once
        for cont, (conversation_id, _) in places.items():
            routes.remember(Placement(session_id, conversation_id, cont))
        refused.update(
            dict.fromkeys(row["refused_by_session"], "session not found, not active or expired")
        )
        refused.update(dict.fromkeys(by_owner - refused.keys(), _OTHER_SESSION))
        return refused

    return await db.run(work, transaction=True)
