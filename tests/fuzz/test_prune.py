"""Fuzz properties of retention: ``prune`` (and the dry run's ``count_prunable``) on the
service store, and ``as_user(...).prune`` under row-level security.

The oracle reads every conversation of the database before the call (the store lives for
the whole test, so earlier examples' rows are there too) and says which messages are
due: from each conversation's first stored message on, while not among its latest
``keep_last`` numbers and (with ``older_than``) older than that.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import PruneCounts, SessionStore

from ..strategies import INT4_MAX, INTS, TTLS, WRONG_TYPES, int_verdict, ttl_verdict
from .world import BAD, CALLBACKS, CASES, OMITTED, C, Expect, World, callback_verdict, fuzz

OLD = timedelta(days=100)
#: Closer than this to a message's age, ``older_than`` may judge it either way (the
#: server's clock moves on between the oracle's read and the call).
SLACK = timedelta(seconds=10)

AGES = st.sampled_from([timedelta(days=30), timedelta(days=200), timedelta(seconds=1)])
#: Each call passes valid arguments but (for a quarter of them) one drawn from hostile
#: values: most calls prune, and every argument's refusals are met.
VALID = {
    "keep_last": st.one_of(st.integers(0, 4), st.integers(0, 4), st.none(), st.just(OMITTED)),
    "older_than": st.one_of(AGES, AGES, st.none(), st.just(OMITTED)),
    "batch_size": st.one_of(st.just(OMITTED), st.integers(1, 3), st.just(10_000)),
    "on_progress": st.sampled_from([OMITTED, None, "record", "record"]),
}
HOSTILE = {
    "keep_last": st.one_of(INTS, WRONG_TYPES),
    "older_than": st.one_of(TTLS, WRONG_TYPES),
    "batch_size": st.one_of(INTS, WRONG_TYPES),
    "on_progress": CALLBACKS,
}
ARGUMENTS = st.builds(
    lambda valid, bad, which: {**valid, which: bad[which]} if which else valid,
    st.fixed_dictionaries(VALID),
    st.fixed_dictionaries(HOSTILE),
    st.sampled_from([None, None, None, *HOSTILE]),
)


class Stored:
    """Every conversation's stored messages (in seq order) and counters, read directly."""

    def __init__(self, rows: list[asyncpg.Record], now: datetime) -> None:
        self.now = now
        self.messages: dict[UUID, list[asyncpg.Record]] = defaultdict(list)
        self.counters: dict[UUID, tuple[int, int]] = {}
        for r in rows:
            self.counters[r["cid"]] = (r["message_count"], r["total_tokens"])
            if r["seq"] is not None:
                self.messages[r["cid"]].append(r)

    @classmethod
    async def read(cls, conn: asyncpg.Connection, user: str | None = None) -> Stored:
        rows = await conn.fetch(
            "SELECT c.id AS cid, c.message_count, c.total_tokens, m.id, m.seq, m.tokens,"
            " m.created_at FROM conversations c"
            " LEFT JOIN sessions s ON s.id = c.session_id"
            " LEFT JOIN messages m ON m.conversation_id = c.id"
            " WHERE $1::text IS NULL OR s.user_id = $1 ORDER BY c.id, m.seq",
            user,
        )
        return cls(rows, await conn.fetchval("SELECT now()"))

    def due(self, keep: int, older_than: timedelta | None) -> dict[UUID, list[asyncpg.Record]]:
        """The messages a prune takes, by conversation."""
        found: dict[UUID, list[asyncpg.Record]] = {}
        for cid, rows in self.messages.items():
            upto = self.counters[cid][0] - keep
            taken = []
            for r in rows:
                if r["seq"] > upto:
                    break
                if older_than is not None and not self.now - r["created_at"] > older_than:
                    break
                taken.append(r)
            if taken:
                found[cid] = taken
        return found

    def doubtful(self, older_than: timedelta | None) -> bool:
        """Whether some message's age is too close to ``older_than`` to judge."""
        return older_than is not None and any(
            abs(self.now - r["created_at"] - older_than) < SLACK
            for rows in self.messages.values()
            for r in rows
        )


def _given(value: object) -> bool:
    return value is not OMITTED and value is not None


def rule_expect(expect: Expect, keep_last: object, older_than: object) -> dict[str, Any]:
    """The rule's verdicts, and the options to pass."""
    options: dict[str, Any] = {}
    if keep_last is not OMITTED:
        options["keep_last"] = keep_last
    if older_than is not OMITTED:
        options["older_than"] = older_than
    if _given(keep_last):
        expect.arg("keep_last", int_verdict(keep_last, 0, INT4_MAX))
    if _given(older_than):
        expect.arg("older_than", ttl_verdict(older_than))
    if not _given(keep_last) and not _given(older_than):
        expect.arg(("keep_last", "older_than"), BAD)  # a rule is required
    return options


async def _world(world: World, user: str, sizes: list[int], old: int, late_old: bool) -> None:
    """Conversations of ``sizes`` messages in a session of ``user``, their first ``old``
    messages (and with ``late_old`` their last one: after younger ones) 100 days old."""
    sid = await world.session(user)
    _, cids = await world.build([], [C(session=sid, messages=n) for n in sizes])
    await world.conn.execute(
        "UPDATE messages m SET created_at = now() - $3::interval FROM conversations c"
        " WHERE c.id = m.conversation_id AND m.conversation_id = ANY($1::uuid[])"
        " AND (m.seq <= $2 OR ($4 AND m.seq = c.message_count))",
        cids,
        old,
        OLD,
        late_old,
    )


def check_pruned(
    before: Stored, after: Stored, due: dict[UUID, list[asyncpg.Record]], counts: PruneCounts
) -> None:
    """What the prune did is what was due, and nothing else: what stays of each
    conversation is a run of seq, message_count stays, total_tokens drops by the tokens
    pruned."""
    assert (counts.messages, counts.conversations, counts.skipped) == (
        sum(map(len, due.values())),
        len(due),
        0,
    ), f"{counts} for {sum(map(len, due.values()))} due in {len(due)} conversations"
    for cid, (count, tokens) in before.counters.items():
        gone = {r["id"] for r in due.get(cid, [])}
        kept = [r["id"] for r in before.messages.get(cid, []) if r["id"] not in gone]
        assert [r["id"] for r in after.messages.get(cid, [])] == kept, "wrong messages pruned"
        seqs = [r["seq"] for r in after.messages.get(cid, [])]
        assert not seqs or seqs == list(range(seqs[0], seqs[-1] + 1)), "a gap left"
        dropped = sum(r["tokens"] or 0 for r in due.get(cid, []))
        assert after.counters[cid] == (count, tokens - dropped), "counters wrong after prune"


@fuzz(100)
@given(
    sizes=st.lists(st.integers(0, 6), max_size=4),
    old=st.integers(0, 6),
    late_old=st.booleans(),
    op=st.sampled_from(["prune", "prune", "prune", "count"]),
    arguments=ARGUMENTS,
)
async def test_prune(
    store: SessionStore,
    conn: asyncpg.Connection,
    sizes: list[int],
    old: int,
    late_old: bool,
    op: str,
    arguments: dict[str, object],
) -> None:
    CASES["prune"] += 1
    world = World(store, conn)
    await _world(world, world.fresh("pruned"), sizes, old, late_old)
    expect = Expect()
    keep_last, older_than = arguments["keep_last"], arguments["older_than"]
    batch_size, on_progress = arguments["batch_size"], arguments["on_progress"]
    options = rule_expect(expect, keep_last, older_than)
    before = await Stored.read(conn)
    if op == "count":
        prints = await world.fingerprint()
        out = await world.attempt(lambda: world.api.count_prunable(**options), expect)
        assert await world.fingerprint() == prints, "the dry run's count wrote"
    else:
        progress: list[PruneCounts] = []
        if batch_size is not OMITTED:
            options["batch_size"] = batch_size
            expect.arg("batch_size", int_verdict(batch_size, 1, 10_000))
        if on_progress is not OMITTED:
            options["on_progress"] = progress.append if on_progress == "record" else on_progress
            expect.arg("on_progress", callback_verdict(on_progress))
        out = await world.attempt(lambda: world.api.prune(**options), expect)
    if not out.ok:
        return
    keep = options.get("keep_last") or 0
    age: Any = options.get("older_than")
    assert isinstance(keep, int)
    if before.doubtful(age):
        return
    due = before.due(keep, age)
    if op == "count":
        assert out.result == sum(map(len, due.values()))
        return
    check_pruned(before, await Stored.read(conn), due, out.result)
    if on_progress == "record":
        assert len(progress) == out.result.batches
        assert progress[-1:] == ([out.result] if progress else [])


@fuzz(40)
@given(
    mine=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    theirs=st.lists(st.integers(1, 5), min_size=1, max_size=2),
    old=st.integers(0, 5),
    keep_last=st.one_of(st.integers(0, 4), st.integers(0, 4), st.none()),
    older_than=st.one_of(AGES, st.none(), st.none()),
    batch_size=st.integers(1, 4),
)
async def test_prune_as_user(
    rls: tuple[SessionStore, asyncpg.Connection],
    mine: list[int],
    theirs: list[int],
    old: int,
    keep_last: int | None,
    older_than: timedelta | None,
    batch_size: int,
) -> None:
    """A user's prune takes what is due in their own conversations only."""
    CASES["prune.as_user"] += 1
    store, conn = rls
    world = World(store, conn)
    user, other = world.fresh("pruner"), world.fresh("bystander")
    await _world(world, user, mine, old, late_old=False)
    await _world(world, other, theirs, old, late_old=False)
    expect = Expect()
    options = rule_expect(expect, keep_last, older_than)
    own, others = await Stored.read(conn, user), await Stored.read(conn, other)
    out = await world.attempt(
        lambda: store.as_user(user).prune(**options, batch_size=batch_size), expect
    )
    if not out.ok:
        return
    after = await Stored.read(conn, user)
    check_pruned(own, after, own.due(keep_last or 0, older_than), out.result)
    check_pruned(others, await Stored.read(conn, other), {}, PruneCounts())
