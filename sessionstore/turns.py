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
from typing import NoReturn, Unpack
from uuid import UUID

from . import validation as v
from .db import Connection, Database
from .errors import ConflictError, PermissionDeniedError, translate_errors
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

    async def work(conn: Connection) -> Turn:
        nonlocal written
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
    try:
        try:
            return await db.run(work, transaction=transaction)
        except ConflictError as exc:
            # Resends of one message id at once: the loser's statement took its snapshot
            # before the winner committed, and its insert met the winner's row. Sent again
            # (in a new transaction where there was one), it finds the stored turn.
            if mid is None or exc.sqlstate != "23505":
                raise
        written = False
        return await db.run(work, transaction=transaction)
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
    another session."""
    arguments = await sealed_batch(db.keys, batch, _BATCH_FIELDS)
    row = await db.fetchrow(TURN_BATCH, *arguments, db.config.sliding_interval)
    assert row is not None  # the statement always returns one row
    refused = dict.fromkeys(row["refused_by_session"], "session not found, not active or expired")
    refused.update(
        dict.fromkeys(row["refused_by_owner"], "conversation belongs to another session")
    )
    return refused
