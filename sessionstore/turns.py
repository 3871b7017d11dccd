"""A turn: a message appended to a conversation (created if needed) and counted on its
session — the one owner of that operation, for the direct path (``add_turn``, one
statement) and the write-behind path (``enqueue_turn``, one statement per batch).

The session UPDATE gates everything else: when the session is missing, expired or not
active it matches no row, so the conversation and message inserts (which read from it)
write nothing. One statement is one transaction: a turn is all or nothing. Both paths
build the session's and the conversation's changes from :mod:`sessionstore.rules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from . import validation as v
from .db import Connection, Database
from .lifecycle import Attempt, raise_session_miss
from .models import Conversation, Message, Role, Session, TurnOptions
from .repositories.conversations import CONVERSATION
from .repositories.messages import MESSAGE
from .repositories.sessions import SESSION
from .rules import accepts_turns, batch_ordinal, bump_conversation, bump_session, seq_of
from .writes import PendingWrite, batch_arguments, fresh_rows

__all__ = ["Turn", "accept_turn", "add_turn", "write_turns"]

_TOKENS = "coalesce($6::integer, 0)"
ADD_TURN = f"""
WITH sess AS (
    UPDATE sessions SET {bump_session("", turns="1", tokens=_TOKENS, slide="$7")}
    WHERE id = $2 AND {accepts_turns()}
    RETURNING {SESSION.select(prefix="s_")}
),
gate AS (
    SELECT 1 WHERE $2::uuid IS NULL
    UNION ALL
    SELECT 1 FROM sess
),
conv AS (
    INSERT INTO conversations AS c
        (continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT $1, $2::uuid, 1, now(), {_TOKENS} FROM gate
    ON CONFLICT (continuation_id) DO UPDATE
    SET {bump_conversation("c", messages="1", tokens=_TOKENS, at="now()")}
    RETURNING {CONVERSATION.select(prefix="c_", alias="c")}
),
msg AS (
    INSERT INTO messages (conversation_id, seq, role, content, metadata, tokens)
    SELECT conv.c_id, {seq_of("conv.c_message_count", added="1", ordinal="1")},
           $3::message_role, $4, coalesce($5::jsonb, '{{}}'::jsonb), $6::integer
    FROM conv
    RETURNING {MESSAGE.select(prefix="m_")}
)
SELECT msg.*, conv.*, sess.* FROM msg CROSS JOIN conv LEFT JOIN sess ON true
"""

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

# ADD_TURN for many turns at once (write-behind). A turn whose session is missing,
# expired or not active is rejected, and nothing of it written.
_BATCH_FIELDS = (
    "id",
    "continuation_id",
    "session_id",
    "role",
    "content",
    "metadata",
    "tokens",
    "enqueued_at",
)
_BATCH_SESSION = bump_session("s", turns="p.n", tokens="p.tok", slide="$9")
_BATCH_CONVERSATION = bump_conversation(
    "c",
    messages="EXCLUDED.message_count",
    tokens="EXCLUDED.total_tokens",
    at="EXCLUDED.last_message_at",
)
_BATCH_SEQ = seq_of(
    "conv.message_count", added="p.n", ordinal=batch_ordinal("o.continuation_id", "o.ord")
)
TURN_BATCH = f"""{fresh_rows(_BATCH_FIELDS)},
per_session AS (
    SELECT session_id, count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok
    FROM fresh WHERE session_id IS NOT NULL GROUP BY session_id
),
sess AS (
    UPDATE sessions s SET {_BATCH_SESSION}
    FROM per_session p
    WHERE s.id = p.session_id AND {accepts_turns("s")}
    RETURNING s.id
),
ok AS (
    SELECT f.* FROM fresh f WHERE f.session_id IS NULL OR f.session_id IN (SELECT id FROM sess)
),
per_conv AS (
    SELECT continuation_id, (array_agg(session_id ORDER BY ord))[1] AS session_id,
           count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok, max(enqueued_at) AS last_at
    FROM ok GROUP BY continuation_id
),
conv AS (
    INSERT INTO conversations AS c
        (continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT continuation_id, session_id, n, last_at, tok FROM per_conv
    ON CONFLICT (continuation_id) DO UPDATE SET {_BATCH_CONVERSATION}
    RETURNING c.id, c.continuation_id, c.message_count
),
ins AS (
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens, created_at)
    SELECT o.id, conv.id, {_BATCH_SEQ}, o.role, o.content,
           coalesce(o.metadata, '{{}}'::jsonb), o.tokens, o.enqueued_at
    FROM ok o
    JOIN conv ON conv.continuation_id = o.continuation_id
    JOIN per_conv p ON p.continuation_id = o.continuation_id
    RETURNING id
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       ARRAY(SELECT f.id FROM fresh f WHERE NOT EXISTS (SELECT 1 FROM ok WHERE ok.id = f.id))
           AS rejected
"""


class Turn(BaseModel):
    """What ``add_turn`` wrote: the message, and the conversation and session after it."""

    model_config = ConfigDict(frozen=True)

    message: Message
    conversation: Conversation
    session: Session | None


_TURN_OPTIONS = TurnOptions.__optional_keys__


def _checked(
    continuation_id: str, role: Role, content: str, options: TurnOptions
) -> tuple[str, UUID | None, v.CheckedMessage]:
    session_id = options.get("session_id")
    return (
        v.identifier(continuation_id, "continuation_id"),
        None if session_id is None else v.uuid(session_id, "session_id"),
        v.message(role, content, options, _TURN_OPTIONS),
    )


async def add_turn(
    db: Database, continuation_id: str, role: Role, content: str, **options: Unpack[TurnOptions]
) -> Turn:
    """Append a message to the conversation ``continuation_id`` (created if needed) and,
    with ``session_id``, add one turn and ``tokens`` to that session — in one round trip.

    The session must exist, be active and not expired (``NotFoundError``,
    ``InvalidStateError``, ``SessionExpiredError``); otherwise nothing is written.
    Under row-level security (``as_user``) it takes two statements in one transaction.
    With sliding expiry configured, the session's ``expires_at`` moves forward.
    """
    cont, sid, message = _checked(continuation_id, role, content, options)
    slide = db.config.sliding_interval

    async def work(conn: Connection) -> Turn:
        if db.rls_scoped:
            await conn.execute(PRECREATE_CONVERSATION, cont, sid)
        row = await conn.fetchrow(ADD_TURN, cont, sid, *message, slide)
        if row is None:
            assert sid is not None  # without a session the statement always writes
            await raise_session_miss(conn, Attempt(sid, "add a turn to"))
        return Turn.model_construct(
            message=MESSAGE.one(row, "m_"),
            conversation=CONVERSATION.one(row, "c_"),
            session=None if sid is None else SESSION.one(row, "s_"),
        )

    return await db.run(work)


def accept_turn(
    continuation_id: str, role: Role, content: str, options: TurnOptions
) -> PendingWrite:
    """The write-behind form of :func:`add_turn`, checked and ready to queue."""
    cont, sid, message = _checked(continuation_id, role, content, options)
    return PendingWrite.accept("turn", message, continuation_id=cont, session_id=sid)


async def write_turns(db: Database, batch: Sequence[PendingWrite]) -> dict[UUID, str]:
    """Write a write-behind batch of turns in one statement; return the ids it could not
    write (their session is missing, not active or expired)."""
    arguments = batch_arguments(batch, _BATCH_FIELDS)
    row = await db.fetchrow(TURN_BATCH, *arguments, db.config.sliding_interval)
    assert row is not None  # the statement always returns one row
    return dict.fromkeys(row["rejected"], "session not found, not active or expired")
