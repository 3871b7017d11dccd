"""A turn's context: the messages before it, returned by the turn's own statement
(``add_turn(context=N)``) and read again only when that statement's snapshot may be out
of date."""

from __future__ import annotations

from collections.abc import Sequence

from .db import Connection, Database
from .errors import translate_errors
from .models import Message
from .repositories.conversations import CONVERSATION
from .repositories.message_sql import read_messages
from .repositories.messages import MESSAGE
from .repositories.sessions import SESSION
from .rows import Row
from .rules import (
    budget_floor,
    compacted_view,
    counted_tokens,
    estimated_tokens,
    kept,
    latest_summary,
    placed,
    position,
)

__all__ = ["CONTEXT", "CONTEXT_KEYED", "read_context", "with_context"]

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
_TURN_AT = """(SELECT m_conversation_id, m_seq, m_tokens, m_content, m_content_sealed FROM msg
  UNION ALL SELECT m_conversation_id, m_seq, m_tokens, m_content, m_content_sealed FROM stored
) AS t"""
_NO_TURN_COLUMNS = ", ".join(
    ["NULL"] * (len(CONVERSATION.names) + len(SESSION.names) + 1)  # + stored_in
)


def with_context(turn: str, limit: str, budget: str, *, queued: bool) -> str:
    """``turn`` (a turn statement) that also returns, as further rows, the up to ``limit``
    (a parameter) messages before the turn's own that fit, with it, in ``budget`` (a
    parameter, NULL for none) tokens; with ``queued``, those the statement wrote itself
    (CTE ``earlier``) among them. After a compaction they are the compacted view before
    the turn (:func:`~sessionstore.rules.compacted_view`), and the seqs of the summaries
    among them come as rows of their own (``m_id`` null) for :func:`read_context`."""
    left = (
        f"({budget}::integer - {counted_tokens('t.m_tokens', 't.m_content', 't.m_content_sealed')})"
    )
    if queued:  # the messages it wrote are not in the snapshot: cut the union in memory
        floor = "0"
    else:
        floor = budget_floor(
            conversation="t.m_conversation_id", upper="t.m_seq", limit=limit, budget=left
        )
    rows = f"""SELECT {_context_columns("e")}
    FROM messages e
    WHERE e.conversation_id = t.m_conversation_id AND e.seq < t.m_seq AND e.seq > {floor}
      AND g.id IS NULL
    ORDER BY e.seq DESC
    LIMIT {limit}"""
    if queued:
        rows = f"""SELECT {", ".join("b.m_" + name for name in MESSAGE.names)}, b.touched FROM (
        SELECT u.*, sum({counted_tokens("u.m_tokens", "u.m_content", "u.m_content_sealed")}) OVER (
            ORDER BY u.m_seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS running FROM (
            ({rows})
            UNION ALL
            SELECT earlier.*, NULL::boolean FROM earlier WHERE g.id IS NULL  -- NULL: its own
        ) u
        ORDER BY u.m_seq DESC
        LIMIT {limit}
    ) b
    WHERE {left} IS NULL OR b.running <= {left}"""
    view = compacted_view(
        conversation="t.m_conversation_id",
        upper="t.m_seq",
        limit=limit,
        budget="NULL::integer" if queued else left,
        summary="g.id",
        through="g.through",
        columns=_context_columns,
        prefix="m_",
        where=" AND g.id IS NOT NULL",
        also=(
            "UNION ALL SELECT earlier.*, NULL::boolean, earlier.m_seq FROM earlier"
            " WHERE g.id IS NOT NULL"
        )
        if queued
        else "",
    )
    return f"""{turn}
UNION ALL
SELECT {", ".join("e.m_" + name for name in MESSAGE.names)}, {_NO_TURN_COLUMNS}, e.touched
FROM {_TURN_AT}
LEFT JOIN LATERAL (
    {latest_summary("t.m_conversation_id", before="t.m_seq")}
) g ON true
CROSS JOIN LATERAL (
    ({rows})
    UNION ALL
    SELECT {", ".join("v.m_" + name for name in MESSAGE.names)}, v.touched
    FROM ({kept(view, limit=limit, budget=left)}) v
    UNION ALL
    SELECT {_HIDDEN} FROM messages h
    WHERE h.conversation_id = t.m_conversation_id AND h.covers_through IS NOT NULL
      AND h.seq > g.through AND h.seq < t.m_seq
) e
"""


def _context_columns(alias: str) -> str:
    """A context row's columns: the message (``m_``) and whether a remover touched it."""
    return f"{MESSAGE.select(prefix='m_', alias=alias)}, NOT ({alias}.xmax = '0'::xid) AS touched"


# The summaries among the context's seqs, as rows of their own: only their seq (and
# whether a remover touched them) is read, for the snapshot check in read_context.
_HIDDEN = (
    ", ".join("h.seq" if name == "seq" else "NULL" for name in MESSAGE.names)
    + ", NOT (h.xmax = '0'::xid)"
)


def _context(session: str | None) -> str:
    """The context read again (see ADD_TURN_CONTEXT): the latest $2 messages before seq
    $3 within $4 tokens (NULL: no budget), of the view as it was when the turn was
    appended (the latest summary before it, and what follows), in any order.
    ``session``: the distributed layout's placing session (``$5``)."""
    view = compacted_view(
        conversation="$1",
        upper="$3",
        limit="$2",
        budget="$4::integer",
        summary="g.id",
        through="g.through",
        columns=lambda alias: MESSAGE.select(alias=alias),
        where=" AND g.id IS NOT NULL",
        session=session,
    )
    floor = budget_floor(
        conversation="$1", upper="$3", limit="$2", budget="$4::integer", session=session
    )
    return f"""
SELECT m.* FROM (SELECT 1) one
LEFT JOIN LATERAL ({latest_summary("$1", before="$3", session=session)}) g ON true
CROSS JOIN LATERAL (
    (SELECT {MESSAGE.select()} FROM messages
     WHERE conversation_id = $1{placed("", session)} AND seq < $3 AND g.id IS NULL
       AND seq > {floor}
     ORDER BY seq DESC
     LIMIT $2)
    UNION ALL
    SELECT {", ".join("v." + name for name in MESSAGE.names)}
    FROM ({kept(view, limit="$2", budget="$4::integer")}) v
) m
"""


CONTEXT = _context(None)
CONTEXT_KEYED = _context("$5::uuid")


async def read_context(
    db: Database,
    conn: Connection,
    new: Message,
    rows: Sequence[Row],
    size: int,
    budget: int | None,
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
    found = await read_messages(db, [r for r in extra if r["m_id"] is not None], "m_")
    earlier = sorted(found, key=position)
    # The snapshot is the stored conversation if it shows a run of messages ending right
    # before the turn's, none removed since: later appends than the snapshot's would
    # leave a gap there (they come right before the turn's), and a removal (pop, clear,
    # prune, a deleting compaction) marks the rows it removed. Summaries the view does
    # not show still fill their seq in the run (they come as rows without an id); a
    # compaction committed after the snapshot leaves its summary's seq a gap. Fewer rows
    # than asked then means no more were stored, or the budget cut them. No rows at all
    # can also be a snapshot that misses every earlier message: read again (also when
    # the latest was removed: no run). The statement's own queued messages (``touched``
    # NULL) come right before the turn's, so a run made of them alone says nothing of
    # the snapshot: an append committed after it lands right before them, and a budget
    # cut there hides the gap. Unless the limit cut the rows, such a run must start at 1.
    seqs = {m.seq for m in earlier}
    if seqs:
        lowest = min(seqs)
        seqs |= {r["m_seq"] for r in extra if r["m_id"] is None and r["m_seq"] >= lowest}
    run = bool(earlier) and seqs == set(range(new.seq - len(seqs), new.seq))
    own_only = all(r["touched"] is None for r in extra) and len(extra) < size - 1
    if run and own_only and min(seqs) > 1:
        run = False
    if (run or new.seq == 1) and not any(r["touched"] for r in extra):
        return [*earlier, new]
    with translate_errors():
        if db.keyed:
            session = next(r["c_session_id"] for r in rows if r["c_id"] is not None)
            again = await conn.fetch(
                CONTEXT_KEYED, new.conversation_id, size - 1, new.seq, left, session
            )
        else:
            again = await conn.fetch(CONTEXT, new.conversation_id, size - 1, new.seq, left)
    return [*sorted(await read_messages(db, again), key=position), new]
