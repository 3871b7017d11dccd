"""Retention (``store.prune``): each conversation keeps its latest messages, numbering
continues after them, and a prune beside live traffic never waits for a writer nor loses
what one writes.

The races are driven deterministically (a second connection holds a row, or a gate
trigger holds one side inside its transaction while the other starts) and by load.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    ContinuationId,
    Conversation,
    InvalidInputError,
    PruneCounts,
    SessionStore,
    Turn,
)
from sessionstore.db import Connection

from ...helpers import wait_for_lock_waiters

DAYS = timedelta(days=1)
OLD, NEW = 100.0, 1.0  # ages in days


async def _seed(
    conn: asyncpg.Connection, name: str, ages: Sequence[float], session_id: UUID | None = None
) -> UUID:
    """A conversation whose message ``g`` (seq ``g``, ``g`` tokens) is ``ages[g-1]`` days
    old, counters kept as the library keeps them, written as another client would."""
    n = len(ages)
    cid: UUID = await conn.fetchval(
        "INSERT INTO conversations (continuation_id, session_id, message_count, total_tokens,"
        " last_message_at) VALUES ($1, $2, $3, $4,"
        " CASE WHEN $3 > 0 THEN now() - $5 * interval '1 day' END) RETURNING id",
        name,
        session_id,
        n,
        n * (n + 1) // 2,
        ages[-1] if ages else 0.0,
    )
    await conn.execute(
        "INSERT INTO messages (conversation_id, seq, role, content, tokens, created_at)"
        " SELECT $1, a.g, 'user', 'm' || a.g, a.g, now() - a.age * interval '1 day'"
        " FROM unnest($2::float8[]) WITH ORDINALITY AS a(age, g)",
        cid,
        list(ages),
    )
    return cid


async def _seqs(conn: asyncpg.Connection, cid: UUID) -> list[int]:
    rows = await conn.fetch("SELECT seq FROM messages WHERE conversation_id = $1 ORDER BY 1", cid)
    return [r["seq"] for r in rows]


async def _counters(conn: asyncpg.Connection, cid: UUID) -> tuple[Any, ...]:
    row = await conn.fetchrow(
        "SELECT message_count, total_tokens, last_message_at FROM conversations WHERE id = $1",
        cid,
    )
    assert row is not None
    return tuple(row)


# ---------------------------------------------------------------- refusals


NEVER_OPENED = "postgresql://nobody@127.0.0.1:1/none"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({}, "keep_last"),
        ({"keep_last": None, "older_than": None}, "keep_last"),
        ({"keep_last": -1}, "keep_last"),
        ({"keep_last": True}, "keep_last"),
        ({"keep_last": "3"}, "keep_last"),
        ({"keep_last": 2**31}, "keep_last"),
        ({"older_than": timedelta(0)}, "older_than"),
        ({"older_than": -DAYS}, "older_than"),
        ({"older_than": 90}, "older_than"),
        ({"older_than": "90d"}, "older_than"),
        ({"older_than": timedelta(days=365_001)}, "older_than"),
        ({"keep_last": 1, "batch_size": 0}, "batch_size"),
        ({"keep_last": 1, "batch_size": 10_001}, "batch_size"),
        ({"keep_last": 1, "batch_size": 2.5}, "batch_size"),
        ({"keep_last": 1, "on_progress": 42}, "on_progress"),
    ],
)
async def test_refusals_name_the_argument_before_anything_is_sent(
    options: dict[str, Any], field: str
) -> None:
    store = sessionstore.connect(NEVER_OPENED)  # never opened: sending would fail otherwise
    for view in (store, store.as_user("someone")):
        with pytest.raises(InvalidInputError) as info:
            await view.prune(**options)
        assert info.value.field == field
    if field in ("keep_last", "older_than"):  # the dry run's count checks the rule alike
        rule = {k: v for k, v in options.items() if k in ("keep_last", "older_than")}
        with pytest.raises(InvalidInputError) as info:
            await store.count_prunable(**rule)
        assert info.value.field == field


async def test_the_widest_arguments_are_accepted(store: SessionStore) -> None:
    counts = await store.prune(
        keep_last=2**31 - 1, older_than=timedelta(days=365_000), batch_size=10_000
    )
    assert counts == PruneCounts()
    assert await store.prune(keep_last=0, batch_size=1) == PruneCounts()


# ---------------------------------------------------------------- the rules


async def test_keep_last_keeps_each_conversations_latest(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    empty = await _seed(conn, "empty", [])
    short = await _seed(conn, "short", [OLD] * 3)
    exact = await _seed(conn, "exact", [OLD] * 10)
    long = [await _seed(conn, f"long-{i}", [OLD] * 25) for i in range(5)]
    before = {cid: await _counters(conn, cid) for cid in (empty, short, exact, *long)}
    assert await store.count_prunable(keep_last=10) == 75
    progress: list[PruneCounts] = []

    counts = await store.prune(keep_last=10, batch_size=7, on_progress=progress.append)

    assert (counts.messages, counts.conversations, counts.skipped) == (75, 5, 0)
    assert counts.batches == len(progress) >= 11  # 75 messages, at most 7 a batch
    assert progress[-1] == counts
    steps = [b.messages - a.messages for a, b in itertools.pairwise(progress)]
    assert all(0 <= step <= 7 for step in steps)
    assert await _seqs(conn, empty) == []
    assert await _seqs(conn, short) == [1, 2, 3]
    assert await _seqs(conn, exact) == list(range(1, 11))
    for cid in long:
        assert await _seqs(conn, cid) == list(range(16, 26))
        count, tokens, last_at = await _counters(conn, cid)
        assert (count, tokens, last_at) == (25, sum(range(16, 26)), before[cid][2])
    for cid in (empty, short, exact):
        assert await _counters(conn, cid) == before[cid]
    assert await store.messages.count(long[0]) == 25  # the latest seq, beyond the rows
    assert [m.seq for m in await store.messages.history(long[0], limit=50)] == list(range(16, 26))
    assert await store.prune(keep_last=10) == PruneCounts()
    assert await store.count_prunable(keep_last=10) == 0


async def test_older_than_takes_only_a_run_of_old_messages_from_the_start(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """A message goes only with every message before it: old messages after a newer one
    stay (times need not rise with seq), so no conversation is left with a gap."""
    mixed = await _seed(conn, "mixed", [OLD, OLD, NEW, OLD, OLD])
    old = await _seed(conn, "old", [OLD] * 4)
    young = await _seed(conn, "young", [NEW] * 4)
    old_counters = await _counters(conn, old)
    assert await store.count_prunable(older_than=30 * DAYS) == 6

    counts = await store.prune(older_than=30 * DAYS)

    assert (counts.messages, counts.conversations, counts.skipped) == (6, 2, 0)
    assert await _seqs(conn, mixed) == [3, 4, 5]
    assert await _seqs(conn, young) == [1, 2, 3, 4]
    assert await _seqs(conn, old) == []  # with no keep_last, the latest goes too
    assert await _counters(conn, old) == (4, 0, old_counters[2])
    turn = await store.add_turn("old", "user", "again", tokens=7)
    assert turn.message.seq == 5
    assert (turn.conversation.message_count, turn.conversation.total_tokens) == (5, 7)


async def test_both_rules_take_what_both_let_go(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    all_old = await _seed(conn, "all-old", [OLD] * 10)
    half = await _seed(conn, "half", [OLD] * 5 + [NEW] * 5)
    all_new = await _seed(conn, "all-new", [NEW] * 10)
    assert await store.count_prunable(keep_last=3, older_than=30 * DAYS) == 7 + 5

    counts = await store.prune(keep_last=3, older_than=30 * DAYS, batch_size=4)

    assert (counts.messages, counts.conversations) == (12, 2)
    assert await _seqs(conn, all_old) == [8, 9, 10]
    assert await _seqs(conn, half) == list(range(6, 11))
    assert await _seqs(conn, all_new) == list(range(1, 11))


async def test_numbering_continues_after_a_prune_and_pop_takes_the_latest(
    store: SessionStore,
) -> None:
    for i in range(10):
        await store.add_turn("chat", "user", f"m{i}", tokens=1)
    assert (await store.prune(keep_last=3)).messages == 7

    turn = await store.add_turn("chat", "user", "after", tokens=1, context=5)
    assert turn.message.seq == 11
    assert turn.context is not None
    assert [m.seq for m in turn.context] == [8, 9, 10, 11]
    assert (turn.conversation.message_count, turn.conversation.total_tokens) == (11, 4)
    popped = await store.messages.pop(ContinuationId("chat"))
    assert popped is not None
    assert popped.seq == 11
    assert await store.messages.count(ContinuationId("chat")) == 10

    latest = (await store.conversations.get_by_continuation_id("chat")).last_message_at
    assert (await store.prune(keep_last=0)).messages == 3  # everything, the latest too
    assert await store.messages.history(ContinuationId("chat")) == []
    assert await store.messages.pop(ContinuationId("chat")) is None
    conversation: Conversation = await store.conversations.get_by_continuation_id("chat")
    assert (conversation.message_count, conversation.total_tokens) == (10, 0)
    assert conversation.last_message_at == latest
    assert (await store.add_turn("chat", "user", "next")).message.seq == 11


# ---------------------------------------------------------------- races, deterministic


async def test_a_conversation_busy_on_both_visits_is_taken_when_its_writer_lets_go(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection, admin_dsn: str
) -> None:
    """A conversation written to without pause was always skipped (SKIP LOCKED on both
    visits; bench/prune.py: 7 of 8 busy conversations left). The last visit now waits for
    its lock, at most BUSY_WAIT_MS: a writer that commits meanwhile lets it be pruned."""
    held = await _seed(conn, "held", [OLD] * 6)
    watcher = await asyncpg.connect(admin_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", held)
            pruning = asyncio.create_task(store.prune(keep_last=2))
            await wait_for_lock_waiters(watcher, 1)  # the last visit, waiting
        counts = await asyncio.wait_for(pruning, 10)
    finally:
        await watcher.close()
    assert (counts.messages, counts.conversations, counts.skipped) == (4, 1, 0)
    assert await _seqs(conn, held) == [5, 6]


@pytest.fixture
async def holder(admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A second direct connection, to hold locks while the store works."""
    connection = await asyncpg.connect(admin_dsn, statement_cache_size=0)
    yield connection
    await connection.close()


@pytest.mark.parametrize(
    ("lock", "busy"),
    [("FOR UPDATE", True), ("FOR NO KEY UPDATE", True), ("FOR KEY SHARE", False)],
)
async def test_a_conversation_being_written_is_passed_over_not_waited_for(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection, lock: str, busy: bool
) -> None:
    """Writers hold their conversation (FOR UPDATE: pop, clear; FOR NO KEY UPDATE: an
    append's update): a prune passes it over, waits for it at most BUSY_WAIT_MS at the
    end, and the next run takes one held longer. The foreign key of a plain insert holds
    FOR KEY SHARE, which does not conflict: pruned, no waiting."""
    held = await _seed(conn, "held", [OLD] * 6)
    free = await _seed(conn, "free", [OLD] * 6)
    async with holder.transaction():
        await holder.execute(f"SELECT 1 FROM conversations WHERE id = $1 {lock}", held)
        counts = await asyncio.wait_for(store.prune(keep_last=2), 10)
        assert (counts.messages, counts.skipped) == (4 + 4 * (not busy), int(busy))
        assert await _seqs(conn, held) == (list(range(1, 7)) if busy else [5, 6])
        assert await _seqs(conn, free) == [5, 6]
    again = await store.prune(keep_last=2)  # the next run takes it
    assert (again.messages, again.conversations, again.skipped) == (4 * busy, int(busy), 0)
    assert await _seqs(conn, held) == [5, 6]


async def test_a_held_message_stops_its_conversations_prune_there(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection
) -> None:
    held = await _seed(conn, "held", [OLD] * 10)
    other = await _seed(conn, "other", [OLD] * 10)
    async with holder.transaction():
        await holder.execute(
            "SELECT 1 FROM messages WHERE conversation_id = $1 AND seq = 3 FOR UPDATE", held
        )
        counts = await asyncio.wait_for(store.prune(keep_last=2), 10)
        assert (counts.messages, counts.conversations) == (2 + 8, 2)
        assert await _seqs(conn, held) == list(range(3, 11))  # no gap
        assert await _seqs(conn, other) == [9, 10]
    assert (await store.prune(keep_last=2)).messages == 6
    assert await _seqs(conn, held) == [9, 10]


async def test_a_prune_inside_an_uncommitted_turn_skips_its_conversation(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """A turn holds its conversation until it commits: a prune meanwhile passes it over
    without waiting, and the turn commits whole."""
    for i in range(6):
        await store.add_turn("turning", "user", f"m{i}")
    other = await _seed(conn, "other", [OLD] * 6)
    during: list[PruneCounts] = []

    async def prune_meanwhile(_: Connection, turn: Turn, written: bool) -> None:
        during.append(await asyncio.wait_for(store.prune(keep_last=2), 10))

    turn = await store.add_turn("turning", "user", "held", after=prune_meanwhile)
    assert (during[0].messages, during[0].skipped) == (4, 1)
    assert await _seqs(conn, other) == [5, 6]
    assert await _seqs(conn, turn.conversation.id) == list(range(1, 8))
    assert (await store.prune(keep_last=2)).messages == 5
    stored = await store.messages.history(ContinuationId("turning"))
    assert [m.id for m in stored][-1] == turn.message.id
    assert [m.seq for m in stored] == [6, 7]


GATE = """
CREATE TABLE test_gate (conversation_id uuid PRIMARY KEY);
CREATE FUNCTION test_gate_wait() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM test_gate WHERE conversation_id = OLD.conversation_id) THEN
        PERFORM pg_advisory_xact_lock_shared(4242);
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER test_gate BEFORE DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION test_gate_wait();
"""


async def _gated(
    conn: asyncpg.Connection,
    holder: asyncpg.Connection,
    cid: UUID,
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
    *,
    second_waits: bool = True,
) -> list[Any]:
    """Make every delete of ``cid``'s messages wait, inside its transaction, until
    ``holder`` releases advisory lock 4242; start ``first`` (it waits there), then
    ``second`` (which must then wait too, or with ``second_waits=False`` finish while
    ``first`` waits); release; return both results."""
    await conn.execute(GATE)
    await conn.execute("INSERT INTO test_gate VALUES ($1)", cid)
    await holder.execute("SELECT pg_advisory_lock(4242)")
    try:
        a = asyncio.ensure_future(first())
        await wait_for_lock_waiters(conn, 1)  # inside its transaction, the conversation held
        b = asyncio.ensure_future(second())
        if second_waits:
            await wait_for_lock_waiters(conn, 2)
        else:
            await asyncio.wait_for(b, 10)
    finally:
        await holder.execute("SELECT pg_advisory_unlock(4242)")
    return list(await asyncio.wait_for(asyncio.gather(a, b), 10))


async def test_an_append_meeting_a_prune_batch_waits_then_takes_the_next_seq(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection
) -> None:
    cid = await _seed(conn, "gated", [OLD] * 10)
    counts, turn = await _gated(
        conn,
        holder,
        cid,
        lambda: store.prune(keep_last=2),
        lambda: store.add_turn("gated", "user", "new", tokens=5),
    )
    assert (counts.messages, counts.skipped) == (8, 0)
    assert turn.message.seq == 11
    assert await _seqs(conn, cid) == [9, 10, 11]
    assert await _counters(conn, cid) == (11, 9 + 10 + 5, turn.message.created_at)


async def test_a_pop_meeting_a_prune_batch_pops_the_latest_after_it(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection
) -> None:
    cid = await _seed(conn, "gated", [OLD] * 10)
    counts, popped = await _gated(
        conn, holder, cid, lambda: store.prune(keep_last=2), lambda: store.messages.pop(cid)
    )
    assert counts.messages == 8
    assert popped is not None
    assert popped.seq == 10
    assert await _seqs(conn, cid) == [9]
    assert (await store.add_turn("gated", "user", "next")).message.seq == 10


async def test_a_prune_meeting_a_pop_passes_its_conversation_over(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection
) -> None:
    cid = await _seed(conn, "gated", [OLD] * 10)
    other = await _seed(conn, "other", [OLD] * 10)
    popped, counts = await _gated(
        conn,
        holder,
        cid,
        lambda: store.messages.pop(cid),
        lambda: store.prune(keep_last=2),
        second_waits=False,
    )
    assert (counts.messages, counts.skipped) == (8, 1)
    assert popped is not None
    assert popped.seq == 10
    assert await _seqs(conn, cid) == list(range(1, 10))
    assert await _seqs(conn, other) == [9, 10]


# ---------------------------------------------------------------- races, by load

WRITERS, TURNS, CONVERSATIONS, KEEP = 6, 40, 3, 3


async def test_prunes_under_racing_appends_and_pops_lose_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """Writers append and pop on a few conversations while prunes run back to back:
    every call succeeds, and every message appended is stored, popped or counted as
    pruned — exactly once; what stays is each conversation's latest, without gaps."""
    rng = random.Random(23)
    session = await store.sessions.create("load")
    names = [f"load-{i}" for i in range(CONVERSATIONS)]
    appended: dict[str, list[UUID]] = {name: [] for name in names}
    popped: dict[str, list[UUID]] = {name: [] for name in names}
    pruned = 0
    done = asyncio.Event()
    for name in names:  # pops need the conversation
        turn = await store.add_turn(name, "user", "first", session_id=session.id, tokens=1)
        appended[name].append(turn.message.id)

    async def writer() -> None:
        for _ in range(TURNS):
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            name = rng.choice(names)
            if rng.random() < 0.15:
                message = await store.messages.pop(ContinuationId(name))
                if message is not None:
                    popped[name].append(message.id)
            else:
                turn = await store.add_turn(name, "user", "x", session_id=session.id, tokens=1)
                appended[name].append(turn.message.id)

    async def pruner() -> None:
        nonlocal pruned
        while not done.is_set():
            pruned += (await store.prune(keep_last=KEEP, batch_size=2)).messages

    async def writers() -> None:
        await asyncio.gather(*(writer() for _ in range(WRITERS)))
        done.set()

    await asyncio.wait_for(asyncio.gather(writers(), pruner()), 120)
    assert pruned > 0, "no prune ran beside the writers"
    assert any(popped.values())
    final = await store.prune(keep_last=KEEP)
    assert final.skipped == 0
    pruned += final.messages

    stored_total = 0
    for name in names:
        conversation = await store.conversations.get_by_continuation_id(name)
        rows = await conn.fetch(
            "SELECT id, seq FROM messages WHERE conversation_id = $1 ORDER BY seq",
            conversation.id,
        )
        seqs = [r["seq"] for r in rows]
        count = conversation.message_count
        assert count == len(appended[name]) - len(popped[name])
        assert len(seqs) <= KEEP  # fewer where pops followed the last prune
        assert seqs == list(range(count - len(seqs) + 1, count + 1))
        assert {r["id"] for r in rows} <= set(appended[name])
        assert not {r["id"] for r in rows} & set(popped[name])
        assert conversation.total_tokens == len(rows)
        stored_total += len(rows)
    total = sum(map(len, appended.values()))
    assert stored_total + pruned + sum(map(len, popped.values())) == total
    assert (await store.sessions.get(session.id)).turn_count == total


# ---------------------------------------------------------------- row-level security


async def test_a_user_prunes_only_their_own_conversations(supabase_store: SessionStore) -> None:
    store = supabase_store
    alice_session = await store.sessions.create("alice")
    bob_session = await store.sessions.create("bob")
    for i in range(10):
        await store.add_turn("alice-chat", "user", f"a{i}", session_id=alice_session.id)
        await store.add_turn("bob-chat", "user", f"b{i}", session_id=bob_session.id)
        await store.add_turn("unbound", "user", f"u{i}")
    alice = store.as_user("alice")
    assert await alice.count_prunable(keep_last=2) == 8
    assert await store.count_prunable(keep_last=2) == 24

    counts = await alice.prune(keep_last=2, batch_size=3)

    assert (counts.messages, counts.conversations, counts.skipped) == (8, 1, 0)
    for name, left in (("alice-chat", 2), ("bob-chat", 10), ("unbound", 10)):
        assert len(await store.messages.history(ContinuationId(name))) == left
    assert await store.as_user("bob").prune(keep_last=0) == PruneCounts(
        messages=10, conversations=1, batches=1
    )
    assert len(await store.messages.history(ContinuationId("unbound"))) == 10
    assert (await store.prune(keep_last=2)).messages == 8  # the service store: the rest
