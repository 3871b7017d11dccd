"""A turn raced by other writers: its context is the stored conversation up to and
including its own message, and a resend that races the original returns the stored turn
— on the service path and under ``as_user``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from uuid import UUID, uuid4

import asyncpg
import pytest

from sessionstore import ContinuationId, SessionStore, Turn
from sessionstore.repositories.messages import POP

from ...conftest import as_supabase_postgres
from ...helpers import wait_for_lock_waiters
from ...servers import TestServer


async def _conversation(store: SessionStore, name: str) -> UUID:
    session = await store.sessions.create("alice")
    for n in (1, 2, 3):
        await store.add_turn(name, "user", f"m{n}", session_id=session.id)
    return session.id


async def _turn_waiting_on_its_session(
    store: SessionStore,
    admin_dsn: str,
    session_id: UUID,
    name: str,
    meanwhile: Callable[[], Awaitable[None]],
) -> Turn:
    """``add_turn(context=10)`` whose statement takes its snapshot, then waits for the
    session row another connection holds while ``meanwhile`` runs and commits. (A third
    connection watches: the holder's transaction would show a frozen pg_stat_activity.)"""
    holder, watcher = await asyncpg.connect(admin_dsn), await asyncpg.connect(admin_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session_id)
            task = asyncio.create_task(
                store.add_turn(name, "user", "NEW", session_id=session_id, context=10)
            )
            await wait_for_lock_waiters(watcher, 1)
            await meanwhile()
        return await asyncio.wait_for(task, 10)
    finally:
        await holder.close()
        await watcher.close()


async def _stored(store: SessionStore, name: str) -> list[str]:
    return [m.content for m in await store.messages.history(ContinuationId(name), limit=50)]


async def test_a_context_never_holds_a_message_popped_while_the_turn_waited(
    store: SessionStore, admin_dsn: str
) -> None:
    session_id = await _conversation(store, "popped")

    async def replace_the_last() -> None:
        popped = await store.messages.pop(ContinuationId("popped"))
        assert popped is not None
        assert popped.content == "m3"
        await store.messages.add(ContinuationId("popped"), "user", "m3-replacement")

    turn = await _turn_waiting_on_its_session(
        store, admin_dsn, session_id, "popped", replace_the_last
    )
    assert turn.context is not None
    assert [m.content for m in turn.context] == ["m1", "m2", "m3-replacement", "NEW"]
    assert [m.content for m in turn.context] == await _stored(store, "popped")


async def test_a_context_never_holds_messages_cleared_while_the_turn_waited(
    store: SessionStore, admin_dsn: str
) -> None:
    session_id = await _conversation(store, "cleared")

    async def clear_and_refill() -> None:
        assert await store.messages.clear(ContinuationId("cleared")) == 3
        for n in (1, 2, 3):
            await store.messages.add(ContinuationId("cleared"), "user", f"r{n}")

    turn = await _turn_waiting_on_its_session(
        store, admin_dsn, session_id, "cleared", clear_and_refill
    )
    assert turn.context is not None
    assert [m.content for m in turn.context] == ["r1", "r2", "r3", "NEW"]
    assert [m.content for m in turn.context] == await _stored(store, "cleared")


async def test_a_context_read_again_after_its_turn_was_popped_holds_no_removed_message(
    store: SessionStore, admin_dsn: str
) -> None:
    """The race CI's PgBouncer run met under load, driven step by step: a turn whose
    statement waited (an append committed meanwhile, so its context must be read again),
    and, between its commit and that second read, a client pops the turn's message and
    the append. The context is the stored run before the turn's seq at the second read
    — no removed message but the turn's own — not a run with a hole (the load test's
    claim that every context ends right before its turn was wrong in this case)."""
    session_id = await _conversation(store, "undone")
    name = ContinuationId("undone")
    conversation = await store.conversations.get_by_continuation_id(name)
    assert conversation is not None
    holder, watcher = await asyncpg.connect(admin_dsn), await asyncpg.connect(admin_dsn)
    remover = await asyncpg.connect(admin_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session_id)
            task = asyncio.create_task(
                store.add_turn(name, "user", "NEW", session_id=session_id, context=10)
            )
            await wait_for_lock_waiters(watcher, 1)
            await store.messages.add(name, "assistant", "m4")  # the snapshot misses it
            removal = remover.transaction()
            await removal.start()
            # Queued behind the turn's statement, granted once it commits; the second
            # read then waits behind it.
            locked = asyncio.create_task(
                remover.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            )
            await wait_for_lock_waiters(watcher, 2)
        await asyncio.wait_for(locked, 10)
        await wait_for_lock_waiters(watcher, 1)  # the second read
        assert not task.done()
        for gone in ("NEW", "m4"):
            row = await remover.fetchrow(POP, conversation.id)
            assert row is not None
            assert row["content"] == gone
        await removal.commit()
        turn = await asyncio.wait_for(task, 10)
    finally:
        for conn in (holder, watcher, remover):
            await conn.close()
    assert turn.message.seq == 5
    assert turn.context is not None
    assert [m.content for m in turn.context] == ["m1", "m2", "m3", "NEW"]
    assert await _stored(store, "undone") == ["m1", "m2", "m3"]


async def test_under_load_every_context_is_a_stored_run_ending_with_its_turn(
    store: SessionStore,
) -> None:
    """Turns with a context beside pops and appends of the same conversation: every
    context ends with the turn's own message, and the messages before it are a run
    without a gap (the stored conversation when it was read) — ending right before the
    turn's seq whenever the turn's message was never removed (see the test above for
    one that was)."""
    session = await store.sessions.create("alice")
    name = ContinuationId("busy")
    await store.add_turn(name, "user", "first", session_id=session.id)
    rng = random.Random(27)
    contexts: list[tuple[Turn, list[int]]] = []

    async def chat(client: int) -> None:
        for n in range(30):
            turn = await store.add_turn(
                name, "user", f"{client}-{n}", session_id=session.id, context=6
            )
            assert turn.context is not None
            contexts.append((turn, [m.seq for m in turn.context]))

    async def churn() -> None:
        for n in range(60):
            if rng.random() < 0.5:
                await store.messages.pop(name)
            else:
                await store.messages.add(name, "assistant", f"churn-{n}")

    await asyncio.gather(*(chat(c) for c in range(3)), churn())
    kept = {m.id for m in await store.messages.history(name, limit=1000)}
    assert len(contexts) == 90
    for turn, seqs in contexts:
        assert turn.context is not None
        assert turn.context[-1].id == turn.message.id
        before = seqs[:-1]
        assert before == list(range(seqs[0], seqs[0] + len(before)))
        if turn.message.id in kept:
            assert seqs == list(range(seqs[0], seqs[-1] + 1))
            assert len(seqs) == min(6, turn.message.seq)
        else:
            assert all(seq < turn.message.seq for seq in before)


@pytest.mark.parametrize("scope", ["service", "user"])
async def test_concurrent_resends_of_one_turn_all_return_the_stored_turn(
    supabase_store: SessionStore, pg_server: TestServer, supabase_database: str, scope: str
) -> None:
    """A resend racing the original (the caller timed out and sent again): every call
    returns the one stored turn, under ``as_user`` as on the service path — forced (all
    of them take their snapshot, then wait for the session row another connection
    holds) and under load (several rounds of ten at once)."""
    session = await supabase_store.sessions.create("alice")
    await supabase_store.add_turn("resent", "user", "before", session_id=session.id)
    api = supabase_store if scope == "service" else supabase_store.as_user("alice")

    def resends(mid: UUID, n: int) -> list[Awaitable[Turn]]:
        return [
            api.add_turn(
                "resent", "user", f"{mid}", session_id=session.id, message_id=mid, tokens=3
            )
            for _ in range(n)
        ]

    # Two direct connections: one holds the lock in a transaction, whose statistics
    # snapshot would never show the waiters; the other watches, as a superuser (a plain
    # role sees no wait events of other roles' sessions, e.g. a pooler's).
    admin = await asyncpg.connect(as_supabase_postgres(pg_server.admin_dsn_for(supabase_database)))
    watcher = await asyncpg.connect(pg_server.admin_dsn_for(supabase_database))
    try:
        mid = uuid4()
        async with admin.transaction():
            await admin.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session.id)
            tasks = [asyncio.ensure_future(call) for call in resends(mid, 4)]
            await wait_for_lock_waiters(watcher, 4)
        rounds = [await asyncio.wait_for(asyncio.gather(*tasks), 10)]
    finally:
        await admin.close()
        await watcher.close()
    for _ in range(5):
        mid = uuid4()
        rounds.append(await asyncio.gather(*resends(mid, 10)))
    for turns in rounds:
        assert len({t.message.id for t in turns}) == 1
        assert len({t.message.seq for t in turns}) == 1
    stored = await supabase_store.messages.history(ContinuationId("resent"))
    assert [m.id for m in stored[1:]] == [turns[0].message.id for turns in rounds]
    counted = await supabase_store.sessions.get(session.id)
    assert (counted.turn_count, counted.total_tokens) == (7, 18)
