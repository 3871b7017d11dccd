"""A turn's context: the messages before it, returned by the turn's own statement
(``add_turn(context=N)``) and read again only when that statement's snapshot may be out
of date."""

from __future__ import annotations

from collections.abc import Sequence

from .db import Connection
from .errors import translate_errors
from .models import Message
from .repositories.conversations import CONVERSATION
from .repositories.messages import MESSAGE
from .repositories.sessions import SESSION
from .rows import Row
from .rules import budget_floor, counted_tokens, estimated_tokens

__all__ = ["CONTEXT", "read_context", "with_context"]

# A turn statement that also returns, as further rows, the messages before the turn's (up
# to its last parameter of them): the turn's context, in the same round trip. Those rows
# carry only m_ columns and ``touched``. They are read under the statement's snapshot,
# which the turn may have taken long before it got its locks, so add_turn reads the
# context again (a second round trip, only then) when the snapshot may be out of date:
# - an append another client committed after the snapshot is missing: a gap in seq;
# - a message removed after the snapshot (pop, clear), perhaps replaced by a later
#   append under the same seq, is still visible to the snapshot, but its row carries the
#   remover's transaction id in xmax (messages are never updated or locked, so xmax is
#   0 on a row nobody removed): ``touched``.
# The queued messages written by the statement itself are not in its snapshot: their
# rows come from the insert's RETURNING.
_TURN_AT = """(SELECT m_conversation_id, m_seq, m_tokens, m_content FROM msg
  UNION ALL SELECT m_conversation_id, m_seq, m_tokens, m_content FROM stored) AS t"""
_NO_TURN_COLUMNS = ", ".join(
    ["NULL"] * (len(CONVERSATION.names) + len(SESSION.names) + 1)  # + stored_in
)


def with_context(turn: str, limit: str, budget: str, *, queued: bool) -> str:
    """``turn`` (a turn statement) that also returns, as further rows, the up to ``limit``
    (a parameter) messages before the turn's own that fit, with it, in ``budget`` (a
    parameter, NULL for none) tokens; with ``queued``, those the statement wrote itself
    (CTE ``earlier``) among them."""
    left = f"({budget}::integer - {counted_tokens('t.m_tokens', 't.m_content')})"
    if queued:  # the messages it wrote are not in the snapshot: cut the union in memory
        floor = "0"
    else:
        floor = budget_floor(
            conversation="t.m_conversation_id", upper="t.m_seq", limit=limit, budget=left
        )
    rows = f"""SELECT {MESSAGE.select(prefix="m_", alias="e")}, NOT (e.xmax = '0'::xid) AS touched
    FROM messages e
    WHERE e.conversation_id = t.m_conversation_id AND e.seq < t.m_seq AND e.seq > {floor}
    ORDER BY e.seq DESC
    LIMIT {limit}"""
    if queued:
        rows = f"""SELECT {", ".join("b.m_" + name for name in MESSAGE.names)}, b.touched FROM (
        SELECT u.*, sum({counted_tokens("u.m_tokens", "u.m_content")}) OVER (
            ORDER BY u.m_seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS running FROM (
            ({rows})
            UNION ALL
            SELECT earlier.*, NULL::boolean FROM earlier  -- NULL: written by the statement
        ) u
        ORDER BY u.m_seq DESC
        LIMIT {limit}
    ) b
    WHERE {left} IS NULL OR b.running <= {left}"""
    return f"""{turn}
UNION ALL
SELECT {", ".join("e.m_" + name for name in MESSAGE.names)}, {_NO_TURN_COLUMNS}, e.touched
FROM {_TURN_AT}
CROSS JOIN LATERAL (
    {rows}
) e
"""


# The context read again (see ADD_TURN_CONTEXT): the latest $2 messages before seq $3
# within $4 tokens (NULL: no budget).
CONTEXT = f"""
SELECT {MESSAGE.select()} FROM messages
WHERE conversation_id = $1 AND seq < $3
  AND seq > {budget_floor(conversation="$1", upper="$3", limit="$2", budget="$4::integer")}
ORDER BY seq DESC
LIMIT $2
"""


async def read_context(
    conn: Connection, new: Message, rows: Sequence[Row], size: int, budget: int | None
) -> list[Message]:
    """The turn's context: the statement's extra rows, or — if its snapshot may be out of
    date (a gap in seq, or a row some remover has touched) — the messages before the
    turn read again under a fresh snapshot. Either way it ends with the turn's own
    message, and the messages before it are the conversation as stored when it was read.

    ``budget`` (tokens, the turn's own included): the turn's message alone when it does
    not fit, else the latest messages before it that fit with it."""
    left = None if budget is None else budget - estimated_tokens(new.tokens, new.content)
    if size == 1 or (left is not None and left < 0):
        return [new]  # alone: nothing before it could be picked, whatever the snapshot
    extra = [r for r in rows if r["c_id"] is None]
    earlier = sorted((MESSAGE.one(r, "m_") for r in extra), key=_seq)
    # The snapshot is the stored conversation if it shows a run of messages ending right
    # before the turn's, none removed since: later appends than the snapshot's would
    # leave a gap there (they come right before the turn's), and a removal (pop, clear,
    # prune) marks the rows it removed. Fewer rows than asked then means no more were
    # stored, or the budget cut them. No rows at all can also be a snapshot that misses
    # every earlier message: read again (also when the latest was removed: no run).
    # The statement's own queued messages come right before the turn's, so a run made of
    # them alone says nothing of the snapshot: an append committed after it lands right
    # before them, and a budget cut there hides the gap. Unless the limit cut the rows,
    # such a run must start at seq 1.
    seqs = [m.seq for m in earlier]
    own_only = all(r["touched"] is None for r in extra) and len(extra) < size - 1
    complete = bool(earlier) and seqs == list(range(new.seq - len(seqs), new.seq))
    if complete and own_only and seqs[0] > 1:
        complete = False
    if (complete or new.seq == 1) and not any(r["touched"] for r in extra):
        return [*earlier, new]
    with translate_errors():
        again = await conn.fetch(CONTEXT, new.conversation_id, size - 1, new.seq, left)
    return [*MESSAGE.many(again)[::-1], new]


def _seq(message: Message) -> int:
    return message.seq
