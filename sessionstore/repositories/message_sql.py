"""The select list messages are read with, and the append and history statements'
builders (the statements themselves are :mod:`sessionstore.repositories.messages`')."""

from __future__ import annotations

from collections.abc import Sequence

from ..db import Database
from ..errors import EncryptionError
from ..models import Message, MessageRole
from ..rows import Columns, Row, members
from ..rules import (
    accepts_turns,
    bind,
    budget_floor,
    bump_conversation,
    bump_session,
    compacted_view,
    kept,
    latest_summary,
    may_read,
    may_write,
    placed,
    seq_of,
)
from .conversations import KEY, SESSION, Keyed

__all__ = [
    "MESSAGE",
    "STORED_PLACED",
    "append_statement",
    "history_statement",
    "read_message",
    "read_messages",
    "stored_history_statement",
]

# The sealed columns ride along unmapped: read_messages opens them (encryption at rest).
MESSAGE = Columns(
    Message,
    convert={"role": members(MessageRole)},
    hidden=("content_sealed", "metadata_sealed"),
)
_COLUMNS = MESSAGE.select()
# The message columns of a compacted view's rows (alias ``v``).
_KEPT = ", ".join(f"v.{name}" for name in MESSAGE.names)


def append_statement(added: str, tokens: str, rows: str, *, session: str | None = None) -> Keyed:
    """A message append: ``rows`` (with columns role, content, metadata, tokens, id
    (NULL: a new one), content_sealed, metadata_sealed, ord) added to conversation
    ``$1`` after bumping its counters, in one statement.

    With ``session`` (a parameter and the next one: the sliding interval) the append is
    a turn of that session: it must take turns (locked first, like every writer), the
    conversation must be its own or unbound (then bound to it), and the session counts
    one turn and ``tokens``. Otherwise nothing matches and nothing is written.

    The placed form (the distributed layout) writes in the conversation's session, on
    its shard; ids must be given there.
    """
    return Keyed.of(
        _append(added, tokens, rows, session, keyed=False),
        _append(added, tokens, rows, session, keyed=True),
    )


def _append(added: str, tokens: str, rows: str, session: str | None, *, keyed: bool) -> str:
    """:func:`append_statement`'s text, on one PostgreSQL or (``keyed``) placed."""
    bump = bump_conversation("", messages=added, tokens=tokens, at="now()")
    seq = seq_of("conv.message_count", added=added, ordinal="u.ord")
    if keyed:
        bump += ", updated_at = now()"
        column, value, message_id = "session_id, ", f"{SESSION}, ", "u.id"
    else:
        column, value, message_id = "", "", "coalesce(u.id, gen_random_uuid())"
    insert = f"""INSERT INTO messages
    ({column}id, conversation_id, seq, role, content, metadata, tokens, content_sealed,
     metadata_sealed)
SELECT {value}{message_id}, conv.id, {seq}, u.role, u.content,
       coalesce(u.metadata, '{{}}'::jsonb), u.tokens, u.content_sealed, u.metadata_sealed
FROM conv, {rows}
RETURNING {_COLUMNS}"""
    if session is None:
        return f"""
WITH conv AS (UPDATE conversations SET {bump} WHERE {KEY} = $1 RETURNING id, message_count)
{insert}
"""
    sid = f"{session}::uuid"
    slide = f"${int(session[1:]) + 1}"
    if keyed:  # placed in its session: the turn's session must be that one
        live, binding, touched = f"id = {SESSION} AND id = {sid}", "", ", updated_at = now()"
        owned, counted = f"session_id = {sid}", f"id = {SESSION} AND EXISTS (SELECT 1 FROM live)"
    else:
        live, binding, touched = f"id = {sid}", f"session_id = {bind('session_id', sid)}, ", ""
        owned, counted = may_write("session_id", sid), "id = (SELECT id FROM live)"
    return f"""
WITH live AS (SELECT id FROM sessions WHERE {live} AND {accepts_turns()} FOR UPDATE),
conv AS (
    UPDATE conversations SET {binding}{bump}
    WHERE {KEY} = $1 AND EXISTS (SELECT 1 FROM live) AND {owned}
    RETURNING id, message_count
),
sess AS (
    UPDATE sessions SET {bump_session("", turns="1", tokens=tokens, slide=slide)}{touched}
    WHERE {counted} AND EXISTS (SELECT 1 FROM conv)
)
{insert}
"""


#: Where ``extra`` (see :func:`history_statement`) reads messages ``s``: their session,
#: on the distributed layout.
STORED_PLACED = "@stored_placed@"


def history_statement(session: str, budget: str, everything: str, extra: str = "") -> Keyed:
    """The latest ``$2`` messages with ``seq < $3`` of conversation ``$1`` that fit in
    ``budget`` (a parameter, NULL for none) tokens, oldest first, and ``extra`` columns
    of the conversation ``c`` on every row. Zero rows: no such conversation. One all-null
    message: a conversation without messages (or none within the budget).

    A compacted conversation (unless ``everything``, a boolean parameter) reads as its
    view (:func:`~sessionstore.rules.compacted_view`: the live summary, then the later
    messages; ``$3`` bounds positions); one never compacted takes the plain path alone
    (the view's arm is switched off by a one-time filter).

    ``session`` (a parameter, NULL for none) is the session reading. Without ``extra``
    a conversation it may not read gives zero rows, like a missing one (the rows keep
    exactly the message columns: ``Columns.many``'s fast path). With ``extra`` the rows
    also say whether it may (``readable``), and a conversation it may not read gives the
    all-null message: none of its content leaves the server either way. Where ``extra``
    reads messages ``s``, :data:`STORED_PLACED` stands for their placement.
    """
    return Keyed.of(
        _history(session, budget, everything, extra, None),
        _history(session, budget, everything, extra, SESSION),
    )


def _history(session: str, budget: str, everything: str, extra: str, placing: str | None) -> str:
    """:func:`history_statement`'s text; ``placing``: the session parameter every read of
    messages names on the distributed layout (else ``None``): a value, not the
    conversation's column, so that Citus routes the whole statement to one shard."""
    readable = may_read("c.session_id", f"{session}::uuid")
    extra = extra.replace(STORED_PLACED, placed("s", placing))
    if extra:  # the check in the row, and on the messages read
        extra, where, messages = f", {readable} AS readable{extra}", "", f" AND {readable}"
    else:  # the check on the conversation: no row, no messages read
        where, messages = f" AND {readable}", ""
    tokens = f"{budget}::integer"
    floor = budget_floor(
        conversation="c.id", upper="$3", limit="$2", budget=tokens, session=placing
    )
    view = compacted_view(
        conversation="c.id",
        upper="$3",
        limit="$2",
        budget=tokens,
        summary="g.id",
        through="g.through",
        columns=lambda alias: MESSAGE.select(alias=alias),
        where=f"{messages} AND g.id IS NOT NULL",
        session=placing,
    )
    summary = latest_summary(
        "c.id", where=f" AND c.compacted_through IS NOT NULL AND NOT {everything}", session=placing
    )
    return f"""
SELECT m.*{extra} FROM conversations c
LEFT JOIN LATERAL (
    {summary}
) g ON true
LEFT JOIN LATERAL (
    (SELECT {_COLUMNS} FROM messages
     WHERE conversation_id = c.id{placed("", placing)} AND seq < $3 AND seq > {floor}{messages}
       AND g.id IS NULL
     ORDER BY seq DESC
     LIMIT $2)
    UNION ALL
    SELECT {_KEPT} FROM ({kept(view, limit="$2", budget=tokens)}) v
) m ON true
WHERE c.{KEY} = $1{where}
ORDER BY CASE WHEN g.id IS NOT NULL AND m.covers_through IS NOT NULL
         THEN m.covers_through ELSE m.seq END
"""


def stored_history_statement(session: str, budget: str) -> Keyed:
    """The latest ``$2`` stored messages with ``seq < $3`` of conversation ``$1`` that
    fit in ``budget`` tokens, oldest first, whatever a compaction covers — and on every
    row, after the message columns, the conversation's ``compacted_through``
    (``conv_compacted``): when it is NULL this is also the conversation's view, and the
    plain statement spares the compacted view's plan (about half the server's time per
    read). Zero rows: no such conversation, or one ``session`` (NULL: any) may not read.
    One all-null message: none stored (or none within the budget)."""

    def text(placing: str | None) -> str:
        floor = budget_floor(
            conversation="c.id",
            upper="$3",
            limit="$2",
            budget=f"{budget}::integer",
            session=placing,
        )
        return f"""
SELECT m.*, c.compacted_through AS conv_compacted FROM conversations c
LEFT JOIN LATERAL (
    SELECT {_COLUMNS} FROM messages
    WHERE conversation_id = c.id{placed("", placing)} AND seq < $3 AND seq > {floor}
    ORDER BY seq DESC
    LIMIT $2
) m ON true
WHERE c.{KEY} = $1 AND {may_read("c.session_id", f"{session}::uuid")}
ORDER BY m.seq
"""

    return Keyed.of(text(None), text(SESSION))


async def read_messages(db: Database, rows: Sequence[Row], prefix: str = "") -> list[Message]:
    """The messages of ``rows`` (columns named with ``prefix``), sealed ones opened.

    ``EncryptionError`` for a sealed message when ``db`` has no keys (the store was
    opened without ``encryption_key``), or when its key is gone or it does not belong on
    its row."""
    sealed = prefix + "content_sealed"
    patch = None
    if any(r[sealed] is not None for r in rows):
        if db.keys is None:
            raise EncryptionError(
                "messages here are encrypted and this store has no encryption key:"
                " open it with encryption_key= or key_provider= (SESSIONSTORE_ENCRYPTION_KEY)"
            )
        patch = await db.keys.opener(rows, prefix)
    if not prefix:
        return MESSAGE.many(rows, patch)
    return [MESSAGE.one(r, prefix, patch) for r in rows]


async def read_message(db: Database, row: Row, prefix: str = "") -> Message:
    """:func:`read_messages` of one row."""
    return (await read_messages(db, [row], prefix))[0]
