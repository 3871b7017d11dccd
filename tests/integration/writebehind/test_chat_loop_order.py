"""The chat loop on write-behind (issue 27, item 3): ``add_turn(user, context=N)`` before
the model call and ``enqueue_turn(reply)`` after it — one blocking round trip per turn,
stored in order, the next context complete. An ``add_turn`` writes the messages this
process queued for its conversation first, in the same statement."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import sessionstore
from sessionstore import ContinuationId, FailedWrite, SessionExpiredError, SessionStore, turns
from sessionstore.turn_context import CONTEXT

from ...conftest import store_overrides
from ...helpers import expire, lock_waiters, wait_for_lock_waiters


@dataclass
class Logged:
    store: SessionStore
    queries: list[str] = field(default_factory=list)
    failed: list[FailedWrite] = field(default_factory=list)


async def _open(dsn: str, **overrides: Any) -> AsyncIterator[Logged]:
    logged: list[str] = []
    failed: list[FailedWrite] = []

    async def configure(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda record: logged.append(record.query))

    async with sessionstore.connect(
        dsn,
        configure=configure,
        on_write_error=failed.append,
        **{**store_overrides(), **overrides},
    ) as store:
        yield Logged(store, logged, failed)


@pytest.fixture
async def held(dsn: str) -> AsyncIterator[Logged]:
    """A store whose writer holds what it collects until flushed (or an hour): the reply
    is still queued when the next turn comes."""
    async for logged in _open(dsn, max_delay=3600.0, batch_size=10_000):
        yield logged


@pytest.fixture
async def prompt(dsn: str) -> AsyncIterator[Logged]:
    """A store whose writer sends each message at once."""
    async for logged in _open(dsn, max_delay=0.0):
        yield logged


async def _stored(conn: asyncpg.Connection, name: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " WHERE c.continuation_id = $1 ORDER BY m.seq",
        name,
    )
    return [r["content"] for r in rows]


async def _counters(conn: asyncpg.Connection, session_id: UUID) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT turn_count, total_tokens FROM sessions WHERE id = $1", session_id
    )
    assert row is not None
    return row["turn_count"], row["total_tokens"]


_TURN_STATEMENTS = {
    turns.ADD_TURN,
    turns.ADD_TURN_CONTEXT,
    turns.ADD_TURN_AFTER_QUEUED,
    turns.ADD_TURN_AFTER_QUEUED_CONTEXT,
    CONTEXT,
}


def _turn_statements(queries: list[str]) -> list[str]:
    """What add_turn sent (not the writer's batches)."""
    return [q for q in queries if q in _TURN_STATEMENTS]


async def test_the_reply_queued_before_a_turn_is_in_its_context_and_stored_first(
    held: Logged, conn: asyncpg.Connection
) -> None:
    store = held.store
    warm = await store.sessions.create("u")  # prepares the statement on the connection
    await store.enqueue_turn("warm-up", "assistant", "a0", session_id=warm.id)
    await store.add_turn("warm-up", "user", "u1", session_id=warm.id, context=20)
    s = await store.sessions.create("u")
    await store.add_turn("loop", "user", "u1", session_id=s.id, tokens=1, context=20)
    a1 = await store.enqueue_turn("loop", "assistant", "a1", session_id=s.id, tokens=10)
    held.queries.clear()
    written = store.stats().written
    turn = await store.add_turn("loop", "user", "u2", session_id=s.id, tokens=100, context=20)
    assert len(held.queries) == 1  # one round trip, the reply in it
    assert turn.context is not None
    assert [m.content for m in turn.context] == ["u1", "a1", "u2"]
    assert [m.seq for m in turn.context] == [1, 2, 3]
    assert turn.context[1].id == a1
    assert await _stored(conn, "loop") == ["u1", "a1", "u2"]
    assert await _counters(conn, s.id) == (3, 111)
    assert turn.session is not None
    assert (turn.session.turn_count, turn.session.total_tokens) == (3, 111)
    assert (turn.conversation.message_count, turn.conversation.total_tokens) == (3, 111)
    stats = store.stats()
    assert (stats.queued, stats.in_flight, stats.written) == (0, 0, written + 1)
    held.queries.clear()
    await store.flush()  # nothing left to write
    assert _turn_statements(held.queries) == []
    history = await store.messages.history(ContinuationId("loop"))
    assert [m.content for m in history] == ["u1", "a1", "u2"]


async def test_a_turn_without_context_and_queued_messages_by_continuation_id(
    held: Logged, conn: asyncpg.Connection
) -> None:
    """``messages.enqueue`` by ``ContinuationId`` is claimed too (it counts on the
    conversation, not as a turn on the session); a plain turn stays the plain statement."""
    store = held.store
    s = await store.sessions.create("u")
    await store.add_turn("plain", "user", "u1", session_id=s.id)
    await store.messages.enqueue(ContinuationId("plain"), "system", "t1", tokens=5)
    await store.enqueue_turn("plain", "assistant", "a1", session_id=s.id, tokens=7)
    await store.add_turn("plain", "user", "u2", session_id=s.id, tokens=1)
    assert await _stored(conn, "plain") == ["u1", "t1", "a1", "u2"]
    assert await _counters(conn, s.id) == (3, 8)
    conversation = await store.conversations.get(ContinuationId("plain"))
    assert (conversation.message_count, conversation.total_tokens) == (4, 13)
    held.queries.clear()
    await store.add_turn("plain", "user", "u3", session_id=s.id)
    (sent,) = held.queries
    assert sent == turns.ADD_TURN  # nothing queued: the plain statement


async def test_a_refused_turn_gives_its_claimed_messages_back(
    held: Logged, conn: asyncpg.Connection
) -> None:
    store = held.store
    s = await store.sessions.create("u")
    await store.add_turn("refused", "user", "u1", session_id=s.id)
    a1 = await store.enqueue_turn("refused", "assistant", "a1", session_id=s.id)
    await store.enqueue_turn("refused", "system", "t1")  # counts on no session
    await expire(conn, s.id)
    with pytest.raises(SessionExpiredError):
        await store.add_turn("refused", "user", "u2", session_id=s.id, context=20)
    assert await _stored(conn, "refused") == ["u1"]  # nothing of the turn's statement
    stats = store.stats()
    assert stats.queued + stats.in_flight == 2  # back with the writer
    await store.flush()
    # As without the turn: the reply's session refuses it, the plain message lands.
    assert [(f.id, f.reason) for f in held.failed] == [
        (a1, "session not found, not active or expired")
    ]
    assert await _stored(conn, "refused") == ["u1", "t1"]
    assert (await _counters(conn, s.id))[0] == 1


async def test_a_resend_that_finds_its_turn_stored_gives_the_queued_reply_back(
    held: Logged, conn: asyncpg.Connection
) -> None:
    """A resend (same ``message_id``) writes nothing: the reply queued since is written by
    the writer, after the stored turn."""
    store = held.store
    s = await store.sessions.create("u")
    first = await store.add_turn("resend", "user", "u1", session_id=s.id)
    await store.enqueue_turn("resend", "assistant", "a1", session_id=s.id)
    again = await store.add_turn(
        "resend", "user", "u1", session_id=s.id, message_id=first.message.id
    )
    assert again.message.id == first.message.id
    assert await _stored(conn, "resend") == ["u1"]
    await store.flush()
    assert await _stored(conn, "resend") == ["u1", "a1"]
    assert await _counters(conn, s.id) == (2, 0)


async def test_a_reply_in_a_batch_being_written_is_waited_for(
    prompt: Logged, conn: asyncpg.Connection, admin_dsn: str
) -> None:
    """The writer's batch holding the reply is stuck behind a held session lock when the
    next turn comes: the turn waits for the batch, then writes after it."""
    store = prompt.store
    s = await store.sessions.create("u")
    await store.add_turn("stuck", "user", "u1", session_id=s.id, context=20)
    holder, watcher = await asyncpg.connect(admin_dsn), await asyncpg.connect(admin_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", s.id)
            await store.enqueue_turn("stuck", "assistant", "a1", session_id=s.id)
            await wait_for_lock_waiters(watcher, 1)  # the batch is being written
            prompt.queries.clear()
            task = asyncio.create_task(
                store.add_turn("stuck", "user", "u2", session_id=s.id, context=20)
            )
            for _ in range(10):  # let it run up to where it waits: no I/O on the way
                await asyncio.sleep(0)
            assert not task.done()
            # It waits for the batch in this process: it has sent nothing, nor waits for
            # the lock itself (the old code sent its turn and waited on the session row).
            assert await lock_waiters(watcher) == 1
            assert _turn_statements(prompt.queries) == []
        turn = await asyncio.wait_for(task, 10)
    finally:
        await holder.close()
        await watcher.close()
    assert turn.context is not None
    assert [m.content for m in turn.context] == ["u1", "a1", "u2"]
    assert _turn_statements(prompt.queries) == [turns.ADD_TURN_CONTEXT]
    assert await _stored(conn, "stuck") == ["u1", "a1", "u2"]
    assert (await _counters(conn, s.id))[0] == 3


async def test_the_chat_loop_under_load_keeps_every_conversation_in_order(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """20 clients × 40 turns of ``add_turn(user, context=20)`` + ``enqueue_turn(reply)``
    (the issue's run: 752 contexts missed the previous reply, all 20 conversations were
    stored out of order)."""
    clients, turns = 20, 40
    rng = random.Random(27)
    missed: list[tuple[int, int]] = []
    async with sessionstore.connect(dsn, **store_overrides()) as store:
        sessions = [await store.sessions.create(f"u{c}") for c in range(clients)]

        async def client(c: int) -> None:
            name, sid = f"load-{c}", sessions[c].id
            for t in range(turns):
                turn = await store.add_turn(name, "user", f"u{t}", session_id=sid, context=20)
                assert turn.context is not None
                if t and [m.content for m in turn.context[-2:]] != [f"a{t - 1}", f"u{t}"]:
                    missed.append((c, t))
                for _ in range(rng.randrange(3)):  # the model's call, roughly
                    await asyncio.sleep(0)
                await store.enqueue_turn(name, "assistant", f"a{t}", session_id=sid, tokens=2)

        await asyncio.gather(*(client(c) for c in range(clients)))
        await store.flush()
        assert store.failed_writes() == []
    assert missed == []
    expected = [x for t in range(turns) for x in (f"u{t}", f"a{t}")]
    out_of_order = [c for c in range(clients) if await _stored(conn, f"load-{c}") != expected]
    assert out_of_order == []
    for s in sessions:
        assert await _counters(conn, s.id) == (2 * turns, 2 * turns)


async def _contents(store: SessionStore, name: str) -> list[str]:
    return [m.content for m in await store.messages.history(ContinuationId(name), limit=50)]


@pytest.mark.parametrize("ending", ["fails", "cancelled"])
async def test_a_reply_given_back_by_a_failed_turn_still_lands_before_later_ones(
    dsn: str, ending: str
) -> None:
    """A turn holds the queued reply R1 while another task queues R2 for the same
    conversation; the turn then fails (its ``after`` raises) or its caller cancels it.
    R1 goes back to the writer and lands first: R2 waited behind it."""
    async with sessionstore.connect(dsn, max_delay=0.0, **store_overrides()) as store:
        session = await store.sessions.create("alice")
        await store.add_turn("held", "user", "U1", session_id=session.id)
        await store.enqueue_turn("held", "assistant", "R1", session_id=session.id)
        holding, release = asyncio.Event(), asyncio.Event()

        async def hook(conn: Any, turn: Any, written: bool) -> None:
            holding.set()
            await release.wait()
            raise RuntimeError("the hook failed")

        task = asyncio.create_task(
            store.add_turn("held", "user", "U2", session_id=session.id, after=hook)
        )
        await asyncio.wait_for(holding.wait(), 10)
        await store.enqueue_turn("held", "assistant", "R2", session_id=session.id)
        if ending == "fails":
            release.set()
            with pytest.raises(RuntimeError):
                await asyncio.wait_for(task, 10)
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.wait_for(store.flush(), 10)
        assert await _contents(store, "held") == ["U1", "R1", "R2"]


async def test_a_flush_behind_a_turn_that_holds_queued_messages_is_bounded(dsn: str) -> None:
    """flush() while a direct turn holds queued messages (its ``after`` waits): the
    wait counts against ``write_deadline`` like a stuck batch, then WriteBehindError."""
    async with sessionstore.connect(
        dsn, max_delay=3600.0, write_deadline=1.0, **store_overrides()
    ) as store:
        session = await store.sessions.create("alice")
        await store.add_turn("held", "user", "U1", session_id=session.id)
        await store.enqueue_turn("held", "assistant", "R1", session_id=session.id)
        holding, release = asyncio.Event(), asyncio.Event()

        async def hook(conn: Any, turn: Any, written: bool) -> None:
            holding.set()
            await release.wait()

        task = asyncio.create_task(
            store.add_turn("held", "user", "U2", session_id=session.id, after=hook)
        )
        await asyncio.wait_for(holding.wait(), 10)
        started = asyncio.get_running_loop().time()
        with pytest.raises(sessionstore.WriteBehindError, match="add_turn writing queued"):
            await asyncio.wait_for(store.flush(), 10)
        # The stated bound: write_deadline plus the 0.5 s margin.
        assert asyncio.get_running_loop().time() - started < 1.5
        release.set()
        await asyncio.wait_for(task, 10)
        await asyncio.wait_for(store.flush(), 10)
        assert await _contents(store, "held") == ["U1", "R1", "U2"]
