"""``add_turn``: conversation get-or-create, message append and session counters in one statement.

The session UPDATE gates everything else: when the session is missing, expired or not
active it matches no row, so the conversation and message inserts (which read from it)
write nothing. One statement is one transaction: a turn is all or nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from . import validation as v
from .db import Connection, Database
from .models import Conversation, Message, MessageRole, Session
from .repositories.conversations import CONVERSATION_COLUMNS, conversation_from_values
from .repositories.messages import MESSAGE_COLUMNS, message_from_values
from .repositories.sessions import (
    SESSION_COLUMNS,
    SLIDE,
    raise_session_miss,
    session_from_values,
)

__all__ = ["Turn", "add_turn"]

_N_MESSAGE = len(MESSAGE_COLUMNS.split(","))
_N_CONVERSATION = len(CONVERSATION_COLUMNS.split(","))

ADD_TURN = f"""
WITH sess AS (
    UPDATE sessions
    SET turn_count = turn_count + 1, total_tokens = total_tokens + coalesce($5::integer, 0),
        {SLIDE.format(param="$7")}
    WHERE id = $2 AND status = 'active' AND (expires_at IS NULL OR expires_at > now())
    RETURNING {SESSION_COLUMNS}
),
gate AS (
    SELECT 1 WHERE $2::uuid IS NULL
    UNION ALL
    SELECT 1 FROM sess
),
conv AS (
    INSERT INTO conversations AS c
        (continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT $1, $2::uuid, 1, now(), coalesce($5::integer, 0) FROM gate
    ON CONFLICT (continuation_id) DO UPDATE
    SET message_count = c.message_count + 1,
        last_message_at = now(),
        total_tokens = c.total_tokens + coalesce($5::integer, 0)
    RETURNING {CONVERSATION_COLUMNS}
),
msg AS (
    INSERT INTO messages (conversation_id, seq, role, content, metadata, tokens)
    SELECT conv.id, conv.message_count, $3::message_role, $4,
           coalesce($6::jsonb, '{{}}'::jsonb), $5::integer
    FROM conv
    RETURNING {MESSAGE_COLUMNS}
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


class Turn(BaseModel):
    """What ``add_turn`` wrote: the message, and the conversation and session after it."""

    model_config = ConfigDict(frozen=True)

    message: Message
    conversation: Conversation
    session: Session | None


async def add_turn(
    db: Database,
    continuation_id: str,
    role: MessageRole | str,
    content: str,
    *,
    session_id: UUID | str | None = None,
    metadata: dict[str, Any] | None = None,
    tokens: int | None = None,
    slide: timedelta | None = None,
) -> Turn:
    """Append a message to the conversation ``continuation_id`` (created if needed) and,
    with ``session_id``, add one turn and ``tokens`` to that session — in one round trip.

    The session must exist, be active and not expired (``NotFoundError``,
    ``InvalidStateError``, ``SessionExpiredError``); otherwise nothing is written.
    Under row-level security (``as_user``) it takes two statements in one transaction.
    With ``slide``, the session's ``expires_at`` moves to at least now + ``slide``.
    """
    cont = v.identifier(continuation_id, "continuation_id")
    sid = None if session_id is None else v.uuid(session_id, "session_id")
    role_ = v.role(role)
    text = v.text(content, "content")
    meta = v.metadata_json(metadata)
    count = v.tokens(tokens)

    async def work(conn: Connection) -> Turn:
        if db.rls_scoped:
            await conn.execute(PRECREATE_CONVERSATION, cont, sid)
        row = await conn.fetchrow(ADD_TURN, cont, sid, role_.value, text, count, meta, slide)
        if row is None:
            assert sid is not None  # without a session the statement always writes
            await raise_session_miss(conn, sid, "add a turn to")
        assert row is not None
        values = tuple(row.values())
        conv_end = _N_MESSAGE + _N_CONVERSATION
        return Turn.model_construct(
            message=message_from_values(values[:_N_MESSAGE]),
            conversation=conversation_from_values(values[_N_MESSAGE:conv_end]),
            session=None if sid is None else session_from_values(values[conv_end:]),
        )

    return await db.run(work)
