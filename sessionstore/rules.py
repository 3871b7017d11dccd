"""The domain's rules, each written once, as SQL fragments the statements are built from.

Every statement that reads a session's status, records a turn, appends messages or
cleans up expired sessions is composed from these fragments, so the direct path
(``add_turn``, ``messages.add``), the write-behind batches, the cache and the CLI cannot
drift apart. Each function takes the table alias its fragment refers to (``""`` for
none) and the SQL expressions it combines (parameters such as ``"$3"`` or columns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from .crypto import SEALED_OVERHEAD
from .models import SessionStatus

__all__ = [
    "accepts_turns",
    "aged_prefix",
    "batch_ordinal",
    "bind",
    "budget_floor",
    "bump_conversation",
    "bump_session",
    "cleanup_due",
    "compacted_view",
    "counted_tokens",
    "created_before",
    "drop_latest",
    "effective_status",
    "estimated_tokens",
    "kept",
    "latest_summary",
    "may_read",
    "may_write",
    "not_past_expiry",
    "placed",
    "position",
    "prune_upto",
    "read_status",
    "seq_of",
    "within_budget",
]


def _col(alias: str, column: str) -> str:
    return f"{alias}.{column}" if alias else column


def placed(alias: str, session: str | None) -> str:
    """``AND`` the message (or conversation) is in ``session``'s shard: on the
    distributed layout (:mod:`sessionstore.distribution`) every read of messages names
    its session, so that Citus routes the statement to one shard. Nothing when
    ``session`` is ``None`` (one PostgreSQL)."""
    return "" if session is None else f" AND {_col(alias, 'session_id')} = {session}"


def not_past_expiry(alias: str = "") -> str:
    """The session's ``expires_at`` is unset or still ahead."""
    at = _col(alias, "expires_at")
    return f"({at} IS NULL OR {at} > now())"


def accepts_turns(alias: str = "") -> str:
    """A live session: active and not past ``expires_at``. Only these take turns."""
    return f"{_col(alias, 'status')} = 'active' AND {not_past_expiry(alias)}"


def read_status(alias: str = "") -> str:
    """The status a session reads as: an active or paused one past ``expires_at`` is
    ``expired``, even before anything has persisted that. :func:`effective_status` is the
    same rule for a session already in memory."""
    status, at = _col(alias, "status"), _col(alias, "expires_at")
    return (
        f"CASE WHEN {status} IN ('active', 'paused') AND {at} <= now() THEN 'expired'"
        f" ELSE {status} END"
    )


def effective_status(
    status: SessionStatus, expires_at: datetime | None, now: datetime
) -> SessionStatus:
    """:func:`read_status` evaluated on the client, at ``now``."""
    due = expires_at is not None and expires_at <= now
    if due and status in (SessionStatus.ACTIVE, SessionStatus.PAUSED):
        return SessionStatus.EXPIRED
    return status


def bump_session(alias: str, *, turns: str, tokens: str, slide: str) -> str:
    """A turn's effect on its session, as ``SET`` assignments: ``turns`` more turns,
    ``tokens`` more tokens and, when ``slide`` (an interval) is not null, ``expires_at``
    pushed to at least now + ``slide`` (never pulled in; a session without expiry keeps none).
    """
    at = _col(alias, "expires_at")
    return (
        f"turn_count = {_col(alias, 'turn_count')} + {turns},"
        f" total_tokens = {_col(alias, 'total_tokens')} + {tokens},"
        f" expires_at = CASE WHEN {slide}::interval IS NOT NULL AND {at} IS NOT NULL"
        f" THEN greatest({at}, now() + {slide}::interval) ELSE {at} END"
    )


def bump_conversation(alias: str, *, messages: str, tokens: str, at: str) -> str:
    """An append's effect on its conversation, as ``SET`` assignments: ``messages`` more
    messages, ``tokens`` more tokens, ``last_message_at`` moved forward to ``at``.

    The conversation row is locked by this update, which is what orders concurrent
    appends: see :func:`seq_of`.
    """
    return (
        f"message_count = {_col(alias, 'message_count')} + {messages},"
        f" total_tokens = {_col(alias, 'total_tokens')} + {tokens},"
        f" last_message_at = greatest({_col(alias, 'last_message_at')}, {at})"
    )


def drop_latest(*, seq: str, tokens: str, previous_at: str) -> str:
    """Removing a conversation's latest message (``seq``, ``tokens``) as ``SET``
    assignments: the next append takes ``seq`` again, so numbers stay gapless;
    ``last_message_at`` becomes ``previous_at`` (the latest time among the remaining
    messages, or null). The conversation row must be locked before the message is read."""
    return (
        f"message_count = {seq} - 1,"
        f" total_tokens = total_tokens - coalesce({tokens}, 0),"
        f" last_message_at = {previous_at}"
    )


def seq_of(count: str, *, added: str, ordinal: str) -> str:
    """The ``seq`` of the ``ordinal``-th (1-based) of ``added`` messages just appended,
    given the conversation's ``message_count`` after :func:`bump_conversation`: appended
    messages take the numbers after those already there, in order, without gaps."""
    return f"{count} - {added} + {ordinal}"


def batch_ordinal(conversation: str, order: str) -> str:
    """The ``ordinal`` for :func:`seq_of` of a batch row: its position among the batch's
    rows for the same ``conversation``, in batch ``order``."""
    return f"row_number() OVER (PARTITION BY {conversation} ORDER BY {order})"


def may_write(owner: str, session: str) -> str:
    """Ownership: a conversation bound to a session (``owner``) is written only through
    that session; one without a session, or a write naming none, is not restricted."""
    return f"({owner} IS NULL OR {session} IS NULL OR {owner} = {session})"


def may_read(owner: str, session: str) -> str:
    """Reading as a session: a session reads only the conversations bound to it (not an
    unbound one, nor another session's); a read naming no session is not restricted.
    Never NULL (a boolean column can carry it)."""
    return f"({session} IS NULL OR {owner} IS NOT DISTINCT FROM {session})"


def bind(owner: str, session: str) -> str:
    """The conversation's session after a write naming ``session``: an unbound
    conversation is bound by the first turn that names one; a bound one keeps its own."""
    return f"coalesce({owner}, {session})"


def cleanup_due(alias: str = "") -> str:
    """The original ``cleanup_expired_sessions()`` rule: ``expires_at`` set and in the
    past, and the session not ``completed``."""
    at = _col(alias, "expires_at")
    return f"{at} IS NOT NULL AND {at} < now() AND {_col(alias, 'status')} <> 'completed'"


# A message stored without a token count still costs tokens: one per four bytes of its
# UTF-8 text, rounded up. Never free, so an unknown message cannot slip past a budget.
# Bytes, not characters: PostgreSQL counts characters by the database's encoding (on a
# SQL_ASCII database char_length counts bytes), while the UTF-8 length is the same in
# SQL and in memory on every database a client writes UTF-8 to; and a character of a
# non-Latin script costs a model more than a Latin letter does.
_BYTES_PER_TOKEN = 4


def counted_tokens(
    tokens: str = "tokens", content: str = "content", sealed: str = "content_sealed"
) -> str:
    """The tokens a message (its ``tokens``, ``content`` and ``content_sealed`` columns)
    counts for in a budget: its token count, or, stored without one, ⌈UTF-8 bytes / 4⌉.
    :func:`estimated_tokens` is the same rule in memory. A sealed content's bytes are
    its sealed length less :data:`~sessionstore.crypto.SEALED_OVERHEAD` (AES-GCM keeps
    the length), so budgets need no key."""
    per = _BYTES_PER_TOKEN
    size = f"coalesce(octet_length({sealed}) - {SEALED_OVERHEAD}, octet_length({content}))"
    return f"coalesce({tokens}, ({size} + {per - 1}) / {per})"


def estimated_tokens(tokens: int | None, content: str) -> int:
    """:func:`counted_tokens` for a message in memory."""
    if tokens is not None:
        return tokens
    return -(-len(content.encode("utf-8")) // _BYTES_PER_TOKEN)


def budget_floor(
    *,
    conversation: str,
    upper: str,
    limit: str,
    budget: str,
    where: str = "",
    session: str | None = None,
) -> str:
    """A token budget as a bound on ``seq``: the latest messages of ``conversation`` with
    ``seq < upper`` (at most ``limit`` of them) that fit in ``budget`` tokens are those
    with ``seq`` above this expression — a run ending at the latest, cut before the first
    message that would overflow it (older, smaller ones are not picked up past the cut).
    0 when they all fit, or when ``budget`` is NULL (no budget: nothing is read then).

    The scan stops at the first message past the budget: a large conversation costs no
    more than a small one. ``budget`` below 0 cuts before the latest message. ``where``
    (``AND …`` over the message's columns) narrows the messages counted (those of a
    compacted view: :func:`compacted_view`). ``session``: see :func:`placed`."""
    return f"""(CASE WHEN {budget} IS NULL THEN 0 ELSE coalesce((
        SELECT b.seq FROM (
            SELECT seq, sum({counted_tokens()}) OVER (
                ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            ) AS running
            FROM messages
            WHERE conversation_id = {conversation}{placed("", session)} AND seq < {upper}{where}
            ORDER BY seq DESC LIMIT {limit}
        ) b WHERE b.running > {budget} ORDER BY b.seq DESC LIMIT 1
    ), 0) END)"""


def compacted_view(
    *,
    conversation: str,
    upper: str,
    limit: str,
    budget: str,
    summary: str,
    through: str,
    columns: Callable[[str], str],
    prefix: str = "",
    where: str = "",
    also: str = "",
    session: str | None = None,
) -> str:
    """The rows of a compacted conversation's view below ``upper``: its live summary
    (the message ``summary``, standing for every ``seq`` up to ``through``) then every
    message that is no summary with ``seq`` above ``through``, in that order (``pos``:
    ``through`` for the summary, ``seq`` for the others) — the latest ``limit`` of them
    that fit in ``budget`` (NULL: none) tokens, a run ending at the latest, as
    :func:`budget_floor` cuts a plain conversation. The summary is the oldest element:
    kept only if every later message is and it fits after them.

    ``columns(alias)`` is the select list (names with ``prefix``) the rows carry, plus
    ``pos``; ``where`` (``AND …`` over alias ``e``) narrows the messages read; ``also``
    (``UNION ALL SELECT …, pos``) adds rows counted among the latest (a turn's queued
    messages, newer than every stored one). The summary is compared with ``upper`` by
    its position, the others by ``seq``. ``session``: see :func:`placed`.
    """
    scope = f" AND seq > {through} AND covers_through IS NULL"
    floor = budget_floor(
        conversation=conversation,
        upper=upper,
        limit=limit,
        budget=budget,
        where=scope,
        session=session,
    )
    here = placed("e", session)
    tokens = counted_tokens(f"u.{prefix}tokens", f"u.{prefix}content", f"u.{prefix}content_sealed")
    if session is None:  # the floor computed once
        source, f = f"(SELECT {floor} AS f) fl\n    CROSS JOIN LATERAL (", "fl.f"
    else:  # Citus runs no correlated subquery beside a subquery without FROM: inline
        source, f = "(", floor
    return f"""SELECT u.*, count(*) OVER w AS k, sum({tokens}) OVER w AS running
    FROM {source}
        (SELECT {columns("e")}, e.seq AS pos FROM messages e
         WHERE e.conversation_id = {conversation}{here} AND e.seq < {upper}
           AND e.seq > greatest({through}, {f}) AND e.covers_through IS NULL{where}
         ORDER BY e.seq DESC LIMIT {limit})
        {also}
        UNION ALL
        SELECT {columns("e")}, e.covers_through FROM messages e
        WHERE e.id = {summary} AND e.conversation_id = {conversation}{here} AND {f} = 0
          AND e.covers_through < {upper}{where}
    ) u
    WINDOW w AS (ORDER BY u.pos DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"""


def kept(view: str, *, limit: str, budget: str) -> str:
    """The rows of :func:`compacted_view` ``view`` that make the cut (as ``x``)."""
    return f"""SELECT x.* FROM ({view}) x
    WHERE x.k <= {limit} AND ({budget} IS NULL OR x.running <= {budget})"""


def latest_summary(
    conversation: str, *, before: str | None = None, where: str = "", session: str | None = None
) -> str:
    """A query of the live summary of ``conversation`` (its ``id`` and ``covers_through``
    as ``through``): its latest summary, or with ``before`` its latest with a lower
    ``seq`` (the live one when the message at ``before`` was appended). Compactions are
    serialised by the conversation's lock, append, and never cover less than the one
    before: the latest summary is the live one. One probe of the partial index.
    ``where``: ``AND …`` conditions (a one-time switch). ``session``: see :func:`placed`."""
    bound = "" if before is None else f" AND s.seq < {before}"
    return f"""SELECT s.id, s.covers_through AS through FROM messages s
    WHERE s.conversation_id = {conversation}{placed("s", session)}
      AND s.covers_through IS NOT NULL{bound}{where}
    ORDER BY s.seq DESC LIMIT 1"""


def position(message: _Placed) -> int:
    """Where a message stands in a compacted view: a summary at the last ``seq`` it
    covers (before every message it is followed by), any other message at its ``seq``."""
    through = message.covers_through
    return message.seq if through is None else through


class _Placed(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def covers_through(self) -> int | None: ...


class _Counted(Protocol):
    @property
    def tokens(self) -> int | None: ...
    @property
    def content(self) -> str: ...


_M = TypeVar("_M", bound=_Counted)


def within_budget(messages: Sequence[_M], budget: int | None) -> list[_M]:
    """:func:`budget_floor` for messages in memory (oldest first): the latest of them
    whose counted tokens sum to at most ``budget``, cut before the first that would
    overflow it."""
    if budget is None:
        return list(messages)
    kept = 0
    spent = 0
    for message in reversed(messages):
        spent += estimated_tokens(message.tokens, message.content)
        if spent > budget:
            break
        kept += 1
    return list(messages[len(messages) - kept :])


def prune_upto(count: str, keep: str) -> str:
    """``keep_last``: the highest ``seq`` a prune may delete in a conversation whose
    ``message_count`` is ``count`` — all but the latest ``keep`` numbers. (Stored messages
    are a run of ``seq`` ending at ``message_count``, or none: appends add at the end, pop
    takes the end, and prunes take from the start.)"""
    return f"{count} - {keep}"


def created_before(created_at: str, cutoff: str) -> str:
    """``older_than``: a message created before ``cutoff`` (NULL: no age rule)."""
    return f"({cutoff} IS NULL OR {created_at} < {cutoff})"


def aged_prefix(created_at: str, cutoff: str, *, conversation: str, seq: str) -> str:
    """``older_than`` as a window over messages: true for a message when it and every
    message before it in its conversation were created before ``cutoff``. A prune takes
    only these, so it never leaves a gap in a conversation when times do not rise with
    ``seq`` (see :func:`drop_latest`), and what it keeps stays a run of ``seq``."""
    return (
        f"bool_and({created_before(created_at, cutoff)})"
        f" OVER (PARTITION BY {conversation} ORDER BY {seq})"
    )
