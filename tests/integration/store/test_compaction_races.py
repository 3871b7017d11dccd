"""Compaction under races, forced by a row lock another connection holds: appends
committed before or after a compaction are never lost or hidden, a turn waiting for its
lock while a compaction commits gets the view as stored, the second of two racing
compactions sees the first; and under ``as_user`` one compacts only one's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import asyncpg
import pytest

from sessionstore import (
    ContinuationId,
    InvalidInputError,
    Message,
    NotFoundError,
    SessionStore,
)

from ...helpers import wait_for_lock_waiters

_CONV = ContinuationId("c")


@pytest.fixture
async def connections(admin_dsn: str) -> AsyncIterator[tuple[asyncpg.Connection, ...]]:
    """A connection to hold a lock in a transaction, and one to watch the waiters."""
    holder, watcher = await asyncpg.connect(admin_dsn), await asyncpg.connect(admin_dsn)
    yield holder, watcher
    await holder.close()
    await watcher.close()


async def _chat(store: SessionStore, count: int) -> None:
    for n in range(1, count + 1):
        await store.add_turn("c", "user", f"m{n}", tokens=1)


def _names(messages: list[Message] | None) -> list[str]:
    assert messages is not None
    return [m.content for m in messages]


async def _in_order(
    connections: tuple[asyncpg.Connection, ...], lock: str, key: object, *calls: Awaitable[object]
) -> list[object]:
    """Run ``calls`` while ``lock`` (a row lock statement of ``key``) is held, each one
    queued behind the last (waiting for the lock in that order), then release it; their
    results or exceptions, in order."""
    holder, watcher = connections
    tasks = []
    async with holder.transaction():
        await holder.execute(lock, key)
        for n, call in enumerate(calls, 1):
            tasks.append(asyncio.ensure_future(call))
            await wait_for_lock_waiters(watcher, n)
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


_LOCK_CONVERSATION = "SELECT 1 FROM conversations WHERE continuation_id = $1 FOR UPDATE"


async def test_an_append_that_commits_first_is_judged_and_shown(
    store: SessionStore, connections: tuple[asyncpg.Connection, ...]
) -> None:
    """The append waits first, the compaction behind it: through_seq 4 names the
    appended message (judged once locked), and the view holds it."""
    await _chat(store, 3)
    done = await _in_order(
        connections,
        _LOCK_CONVERSATION,
        "c",
        store.messages.add(_CONV, "user", "m4"),
        store.messages.compact(_CONV, through_seq=4, summary="S"),
    )
    summary = done[1]
    assert isinstance(summary, Message)
    assert (summary.seq, summary.covers_through) == (5, 4)
    assert _names(await store.messages.history(_CONV)) == ["S"]
    await store.messages.add(_CONV, "user", "m6")
    assert _names(await store.messages.history(_CONV)) == ["S", "m6"]


async def test_an_append_behind_the_compaction_follows_the_summary(
    store: SessionStore, connections: tuple[asyncpg.Connection, ...]
) -> None:
    await _chat(store, 3)
    done = await _in_order(
        connections,
        _LOCK_CONVERSATION,
        "c",
        store.messages.compact(_CONV, through_seq=2, summary="S", delete_originals=True),
        store.add_turn("c", "user", "m5", context=10),
    )
    assert not any(isinstance(d, BaseException) for d in done)
    assert _names(await store.messages.history(_CONV)) == ["S", "m3", "m5"]
    assert _names(done[1].context) == ["S", "m3", "m5"]  # type: ignore[attr-defined]


async def test_a_second_compaction_sees_the_first(
    store: SessionStore, connections: tuple[asyncpg.Connection, ...]
) -> None:
    await _chat(store, 4)
    done = await _in_order(
        connections,
        _LOCK_CONVERSATION,
        "c",
        store.messages.compact(_CONV, through_seq=3, summary="S1"),
        store.messages.compact(_CONV, through_seq=2, summary="S2"),
        store.messages.compact(_CONV, through_seq=3, summary="S3"),
    )
    assert isinstance(done[0], Message)
    assert isinstance(done[1], InvalidInputError)
    assert done[1].field == "through_seq"
    assert isinstance(done[2], Message)
    assert _names(await store.messages.history(_CONV)) == ["S3", "m4"]
    assert (await store.conversations.get(_CONV)).message_count == 6


@pytest.mark.parametrize("delete_originals", [False, True])
async def test_a_turn_waiting_while_a_compaction_commits_reads_the_view(
    store: SessionStore, connections: tuple[asyncpg.Connection, ...], delete_originals: bool
) -> None:
    """The turn takes its snapshot, then waits for its session while a compaction (which
    takes no session lock) commits: the turn's context is the view as stored — the
    summary first — not the snapshot's plain messages."""
    session = await store.sessions.create("alice")
    for n in range(1, 5):
        await store.add_turn("c", "user", f"m{n}", session_id=session.id, tokens=1)
    holder, watcher = connections
    async with holder.transaction():
        await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session.id)
        turn = asyncio.ensure_future(
            store.add_turn("c", "user", "m6", session_id=session.id, context=10)
        )
        await wait_for_lock_waiters(watcher, 1)
        await store.messages.compact(
            _CONV, through_seq=2, summary="S", delete_originals=delete_originals
        )
    done = await asyncio.wait_for(turn, 10)
    assert _names(done.context) == ["S", "m3", "m4", "m6"]
    assert _names(await store.messages.history(_CONV)) == ["S", "m3", "m4", "m6"]


async def test_a_turn_waiting_while_a_resummary_commits_reads_the_new_summary(
    store: SessionStore, connections: tuple[asyncpg.Connection, ...]
) -> None:
    session = await store.sessions.create("alice")
    for n in range(1, 4):
        await store.add_turn("c", "user", f"m{n}", session_id=session.id, tokens=1)
    await store.messages.compact(_CONV, through_seq=1, summary="S1")
    holder, watcher = connections
    async with holder.transaction():
        await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session.id)
        turn = asyncio.ensure_future(
            store.add_turn("c", "user", "m6", session_id=session.id, context=10)
        )
        await wait_for_lock_waiters(watcher, 1)
        await store.messages.compact(_CONV, through_seq=1, summary="S2")
    done = await asyncio.wait_for(turn, 10)
    assert _names(done.context) == ["S2", "m2", "m3", "m6"]


async def test_as_user_compacts_only_their_own(supabase_store: SessionStore) -> None:
    alice, bob = supabase_store.as_user("alice"), supabase_store.as_user("bob")
    session = await alice.sessions.create("alice")
    for n in range(1, 4):
        await alice.add_turn("mine", "user", f"m{n}", session_id=session.id)
    with pytest.raises(NotFoundError):
        await bob.messages.compact(ContinuationId("mine"), through_seq=2, summary="stolen")
    summary = await alice.messages.compact(ContinuationId("mine"), through_seq=2, summary="S")
    assert summary.seq == 4
    assert _names(await alice.messages.history(ContinuationId("mine"))) == ["S", "m3"]
    turn = await alice.add_turn("mine", "user", "m5", session_id=session.id, context=5)
    assert _names(turn.context) == ["S", "m3", "m5"]
    every = await supabase_store.messages.history(ContinuationId("mine"), include_compacted=True)
    assert _names(every) == ["m1", "m2", "m3", "S", "m5"]


async def test_compactions_beside_chat_loops_lose_nothing(store: SessionStore) -> None:
    """Four clients take turns with a context while another compacts again and again
    (some deleting): every turn is stored, every context is a view (at most one summary,
    first, then later messages in order, ending with the turn), and the counters and the
    final view agree with the rows."""
    sessions = [await store.sessions.create(f"u{n}") for n in range(4)]
    await store.conversations.get_or_create("c")

    compactions: list[asyncio.Future[Message]] = []

    async def compact(k: int) -> Message:
        count = await store.messages.count(_CONV)
        return await store.messages.compact(
            _CONV, through_seq=max(count - 2, 1), summary=f"S{k}", delete_originals=k % 3 == 2
        )

    async def chat(n: int) -> list[Message]:
        turns = []
        for k in range(15):
            turn = await store.add_turn(
                "c", "user", f"c{n}-{k}", session_id=None, tokens=1, context=8
            )
            if n == 0:  # a compaction starts beside every turn of the first client
                compactions.append(asyncio.ensure_future(compact(k)))
            assert turn.context is not None
            seen = turn.context[:-1]
            assert turn.context[-1].id == turn.message.id
            if seen and seen[0].covers_through is not None:
                assert all(m.seq > seen[0].covers_through for m in seen[1:])
                seen = seen[1:]
            assert all(m.covers_through is None for m in seen)
            seqs = [m.seq for m in seen]
            assert seqs == sorted(seqs)
            assert all(s < turn.message.seq for s in seqs)
            turns.append(turn.message)
        return turns

    results = await asyncio.wait_for(asyncio.gather(*(chat(n) for n in range(len(sessions)))), 60)
    outcomes = await asyncio.wait_for(asyncio.gather(*compactions, return_exceptions=True), 60)
    refused = [o for o in outcomes if not isinstance(o, Message)]
    # a compaction refused only because a racing one had covered more
    assert all(isinstance(o, InvalidInputError) and o.field == "through_seq" for o in refused)
    assert len(refused) < len(outcomes)
    written = [m for turns in results for m in turns]
    every = await store.messages.history(_CONV, limit=1000, include_compacted=True)
    stored = {m.id for m in every}
    conv = await store.conversations.get(_CONV)
    assert conv.total_tokens == sum(m.tokens or 0 for m in every)
    assert conv.message_count == every[-1].seq
    summaries = [m for m in every if m.covers_through is not None]
    assert conv.compacted_through == summaries[-1].covers_through
    through = summaries[-1].covers_through
    assert through is not None
    # every turn is stored unless a deleting compaction covered it
    assert all(m.id in stored or m.seq <= through for m in written)
    view = await store.messages.history(_CONV, limit=1000)
    later = [m for m in every if m.covers_through is None and m.seq > through]
    assert [m.id for m in view] == [summaries[-1].id, *(m.id for m in later)]
