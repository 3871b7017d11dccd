"""Compaction: a summary appended to a conversation that stands for its messages up to a
``seq``; reads then show the summary followed by the later messages (see
:func:`~sessionstore.rules.compacted_view`).

The conversation is locked first, in a statement of its own (like ``pop``): the next
statement's snapshot then holds every message appended before the lock, so the refusals
(past the last message, covering less than the live summary) are judged on the stored
conversation, and an append is either before the summary (and shown after it when it
is not covered) or after it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

from .. import validation as v
from ..db import Connection, Database
from ..errors import ConflictError, InvalidInputError
from ..keyring import seal_message
from ..models import ConversationRef, Message, Role
from ..rows import Row
from ..rules import bump_conversation, placed, seq_of
from ..telemetry import traced
from .conversations import KEY, Keyed, conversation_missing, run_placed
from .message_sql import MESSAGE, read_message

__all__ = ["COMPACT", "COMPACT_KEYED", "LOCK_FOR_COMPACTION", "Compaction", "compact"]

LOCK_FOR_COMPACTION = Keyed.of(
    "SELECT id, session_id, message_count, compacted_through FROM conversations"
    f" WHERE {KEY} = $1 FOR UPDATE"
)


def _compact_sql(*, keyed: bool = False) -> str:
    """The compaction of the locked conversation $1: $2 the message id (NULL: a new one),
    $3 through_seq, $4-$7 the summary's role, content, metadata and tokens, $8 whether
    to delete what it covers, $9-$10 its sealed content and metadata (encryption at
    rest; NULL in clear). One row: the summary written (``m_`` columns), or the
    message already stored under $2 (``s_``), or neither (refused: nothing written).

    ``keyed``: the distributed layout's form, every table read in the conversation's
    session ``$11`` (one shard); ``$2`` is then always given."""
    new, old = MESSAGE.select(prefix="m_"), MESSAGE.select(prefix="s_", alias="m")
    deleted = "(SELECT coalesce(sum(tokens), 0) FROM doomed)"
    bump = bump_conversation(
        "c", messages="1", tokens=f"coalesce($7::integer, 0) - {deleted}", at="now()"
    )
    session = "$11::uuid" if keyed else None
    touched, column, value = (
        (", updated_at = now()", "session_id, ", f"{session}, ") if keyed else ("", "", "")
    )
    message_id = "$2::uuid" if keyed else "coalesce($2::uuid, gen_random_uuid())"
    return f"""
WITH stored AS (SELECT {old} FROM messages m WHERE m.id = $2::uuid{placed("m", session)}),
ok AS (
    SELECT id FROM conversations
    WHERE id = $1{placed("", session)} AND NOT EXISTS (SELECT 1 FROM stored)
      AND $3 >= coalesce(compacted_through, 0) AND $3 <= message_count
),
doomed AS (  -- what a deleting compaction removes: what it covers, and older summaries
    SELECT id, tokens FROM messages
    WHERE $8 AND conversation_id = $1{placed("", session)} AND EXISTS (SELECT 1 FROM ok)
      AND (seq <= $3 OR covers_through IS NOT NULL)
),
gone AS (DELETE FROM messages WHERE id IN (SELECT id FROM doomed){placed("", session)}),
conv AS (
    UPDATE conversations c SET {bump}, compacted_through = $3{touched}
    FROM ok WHERE c.id = ok.id{placed("c", session)}
    RETURNING c.message_count
),
ins AS (
    INSERT INTO messages ({column}id, conversation_id, seq, role, content, metadata, tokens,
                          covers_through, content_sealed, metadata_sealed)
    SELECT {value}{message_id}, $1,
           {seq_of("conv.message_count", added="1", ordinal="1")}, $4::message_role, $5,
           coalesce($6::jsonb, '{{}}'::jsonb), $7::integer, $3, $9::bytea, $10::bytea
    FROM conv
    RETURNING {new}
)
SELECT * FROM (SELECT 1) one LEFT JOIN ins ON true LEFT JOIN stored ON true
"""


COMPACT = _compact_sql()
COMPACT_KEYED = _compact_sql(keyed=True)


def _same(stored: Message, cid: UUID, through: int, new: v.CheckedMessage) -> bool:
    metadata = {} if new.metadata is None else json.loads(new.metadata)
    return (
        stored.conversation_id,
        stored.covers_through,
        stored.role.value,
        stored.content,
        stored.metadata,
        stored.tokens,
    ) == (cid, through, new.role, new.content, metadata, new.tokens)


async def compact(
    db: Database,
    conversation_id: ConversationRef,
    *,
    through_seq: int,
    summary: str,
    tokens: int | None,
    metadata: object,
    role: object,
    message_id: UUID | str | None,
    delete_originals: bool,
    settle: Callable[[ConversationRef], Awaitable[None]],
) -> Message:
    """:meth:`Compaction.compact` on ``db``, once ``settle`` (after the arguments are
    checked: bad input is refused before any wait) has made what must be durable so."""
    cid = v.conversation(conversation_id)
    through = v.positive_int(through_seq, "through_seq")
    content = v.text(summary, "summary")
    assert content is not None
    new = v.CheckedMessage(v.role(role).value, content, v.metadata_json(metadata), v.tokens(tokens))
    mid = None if message_id is None else v.uuid(message_id, "message_id")
    delete = v.flag(delete_originals, "delete_originals")
    await settle(cid)
    if mid is None and db.keys is not None:
        mid = uuid4()  # sealed, the summary is bound to its id: it needs one before sending
    text, meta, sealed, sealed_meta = await seal_message(
        db.keys, ("conversation", cid), mid, new.content, new.metadata
    )
    stored_as = (new.role, text, meta, new.tokens)

    async def work(conn: Connection) -> Message:
        found = await run_placed(db, conn, LOCK_FOR_COMPACTION, cid)
        if not found:
            raise conversation_missing(cid)
        locked = found[0]
        arguments: tuple[object, ...] = (
            locked["id"],
            mid,
            through,
            *stored_as,
            delete,
            sealed,
            sealed_meta,
        )
        if db.keyed:
            arguments = (*arguments[:1], mid or uuid4(), *arguments[2:], locked["session_id"])
        row: Row | None = await conn.fetchrow(COMPACT_KEYED if db.keyed else COMPACT, *arguments)
        assert row is not None  # the statement always returns one row
        if row["m_id"] is not None:
            return await read_message(db, row, "m_")
        if row["s_id"] is not None:
            stored = await read_message(db, row, "s_")
            if _same(stored, locked["id"], through, new):
                return stored  # a resend: the compaction it asked for is done
            raise ConflictError(
                f"message_id {stored.id} is already the id of a different message;"
                " nothing was written"
            )
        if through > locked["message_count"]:
            raise InvalidInputError("through_seq", "is past the conversation's last message")
        raise InvalidInputError(
            "through_seq", "covers less than the conversation's live summary already does"
        )

    return await db.run(work, transaction=True)


class Compaction:
    """The messages repository's compaction (a base of
    :class:`~sessionstore.repositories.MessagesRepository`)."""

    _db: Database

    async def _settle(self, conversation_id: ConversationRef) -> None:
        """What must be durable before a compaction: nothing here (see the service
        store's messages repository)."""

    @traced("messages")
    async def compact(
        self,
        conversation_id: ConversationRef,
        *,
        through_seq: int,
        summary: str,
        tokens: int | None = None,
        metadata: dict[str, Any] | None = None,
        role: Role = "system",
        message_id: UUID | str | None = None,
        delete_originals: bool = False,
    ) -> Message:
        """Record ``summary`` as standing for every message up to ``through_seq`` and
        return it: a message appended like any other (the next ``seq``; ``role``,
        ``tokens`` and ``metadata`` as for :meth:`add`) whose ``covers_through`` is
        ``through_seq``. From then on :meth:`history` and ``add_turn(context=…)`` read
        this summary followed by every later message that is no summary, appended before
        the compaction or after it (``history(include_compacted=True)`` reads them all).

        ``through_seq`` (from 1) may not be past the latest message nor cover less than
        the live summary (an equal one replaces it: a new summary of the same messages):
        ``InvalidInputError`` naming ``through_seq``, judged on the conversation as
        stored once it is locked (an append racing the call is either covered or after
        the summary, never lost). Counters: ``message_count`` counts the summary (it is
        the latest ``seq``) and ``total_tokens`` adds its ``tokens``; the session's
        counters are not changed (a compaction is no turn).

        ``delete_originals=True`` deletes, in the same transaction, the messages with
        ``seq`` up to ``through_seq`` and every older summary; ``total_tokens`` drops by
        their tokens, ``message_count`` does not drop (numbering continues).

        With ``message_id`` a resend returns the stored summary; the id of any other
        message raises ``ConflictError`` (nothing is written). ``NotFoundError`` if the
        conversation (by id or :class:`~sessionstore.ContinuationId`) does not exist
        or, under ``as_user``, is not the user's.

        On the service store this first makes the process's write-behind messages durable
        (as ``pop`` does): a ``through_seq`` read from ``history``, which shows queued
        messages, then names a stored message. ``WriteBehindError`` if they cannot be
        written within ``write_deadline`` (nothing is compacted then).
        """
        return await compact(
            self._db,
            conversation_id,
            through_seq=through_seq,
            summary=summary,
            tokens=tokens,
            metadata=metadata,
            role=role,
            message_id=message_id,
            delete_originals=delete_originals,
            settle=self._settle,
        )
