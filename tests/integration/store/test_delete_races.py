"""Deletes are total: after ``sessions.delete``, ``conversations.delete``,
``cleanup_expired(delete_conversations=True)`` or ``purge_user`` returns, nothing they
cover exists — including what a turn racing them wrote — and nothing is left detached
(``session_id`` null, invisible under RLS, open to the next turn that names it).

Each race is driven twice: deterministically (a second connection holds the session row,
both calls queue behind it, the lock is released) and by bounded random load.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import sessionstore
from sessionstore import NotFoundError, SessionStore, UserView

from ...conftest import as_supabase_postgres, store_overrides
from ...helpers import eventually, wait_for_lock_waiters
from ...servers import TestServer

# What a turn that lost the race may raise: its session is gone.
GONE = (NotFoundError,)
TRIALS = 25
CLEANUP_TRIALS = 100
WRITERS = 6
ROUNDS = 40  # at most: a writer stops at the first turn its session refuses
ALICE = "6f1c1a52-0000-4000-8000-00000000a11c"


async def _leftovers(conn: asyncpg.Connection, *sessions: UUID) -> dict[str, int]:
    """What survived of the deleted ``sessions``: the sessions themselves, conversations
    still bound to them, and detached conversations (the tests make none on purpose)
    with their messages."""
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM sessions WHERE id = ANY($1::uuid[])) AS sessions,
               (SELECT count(*) FROM conversations WHERE session_id = ANY($1::uuid[]))
                   AS bound,
               (SELECT count(*) FROM conversations WHERE session_id IS NULL) AS detached,
               (SELECT count(*) FROM messages m JOIN conversations c
                   ON c.id = m.conversation_id WHERE c.session_id IS NULL) AS detached_messages
        """,
        list(sessions),
    )
    assert row is not None
    return dict(row)


NOTHING = {"sessions": 0, "bound": 0, "detached": 0, "detached_messages": 0}


async def _settle(*tasks: Awaitable[Any]) -> list[Any]:
    """Await ``tasks`` (bounded), returning results or the exceptions they raised."""
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def _race_behind_lock(
    conn: asyncpg.Connection,
    holder: asyncpg.Connection,
    session_id: UUID,
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
) -> list[Any]:
    """Hold the session row, start ``first`` and then ``second`` (each waits for it),
    release, and return both outcomes."""
    await holder.execute("BEGIN")
    await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session_id)
    try:
        a = asyncio.ensure_future(first())
        await wait_for_lock_waiters(conn, 1)
        b = asyncio.ensure_future(second())
        await wait_for_lock_waiters(conn, 2)
    finally:
        await holder.execute("ROLLBACK")
    return await _settle(a, b)


@pytest.fixture
async def holder(admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A second direct connection, to hold row locks."""
    other = await asyncpg.connect(admin_dsn, statement_cache_size=0)
    yield other
    await other.close()


def _no_unexpected(outcomes: list[Any]) -> None:
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, GONE):
            raise outcome


async def _session_with_history(store: SessionStore | UserView, user: str) -> UUID:
    session = await store.sessions.create(user)
    await store.add_turn(f"old-{session.id}", "user", "before", session_id=session.id)
    return session.id


# ---------------------------------------------------------------- deterministic


@pytest.mark.parametrize("turn_first", [True, False], ids=["turn-queued-first", "delete-first"])
async def test_session_delete_racing_a_turn_leaves_nothing(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection, turn_first: bool
) -> None:
    sid = await _session_with_history(store, "u")

    def turn() -> Awaitable[Any]:
        return store.add_turn("new", "user", "PRIVATE", session_id=sid)

    def delete() -> Awaitable[None]:
        return store.sessions.delete(sid)

    first, second = (turn, delete) if turn_first else (delete, turn)
    outcomes = await _race_behind_lock(conn, holder, sid, first, second)
    _no_unexpected(outcomes)
    assert outcomes[1 if turn_first else 0] is None  # the delete itself succeeded
    if not turn_first:  # the turn waited behind the delete: it found the session gone
        assert isinstance(outcomes[1], NotFoundError)
    assert await _leftovers(conn, sid) == NOTHING
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_purge_racing_a_turn_leaves_nothing_and_counts_it(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection
) -> None:
    sid = await _session_with_history(store, "forget-me")
    turn, counts = await _race_behind_lock(
        conn,
        holder,
        sid,
        lambda: store.add_turn("new", "user", "PRIVATE", session_id=sid),
        lambda: store.purge_user("forget-me"),
    )
    _no_unexpected([turn, counts])
    assert await _leftovers(conn, sid) == NOTHING
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    # The turn got the lock first and committed: the purge took (and counted) it too.
    assert counts == sessionstore.PurgeCounts(sessions=1, conversations=2, messages=2)


async def test_write_behind_turn_racing_a_delete_is_set_aside_or_deleted(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection
) -> None:
    sid = await _session_with_history(store, "u")
    await store.enqueue_turn("new", "user", "PRIVATE", session_id=sid)
    outcomes = await _race_behind_lock(
        conn, holder, sid, store.flush, lambda: store.sessions.delete(sid)
    )
    _no_unexpected(outcomes)
    assert await _leftovers(conn, sid) == NOTHING
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


@pytest.mark.parametrize("many", [False, True], ids=["add", "add_many"])
async def test_append_racing_a_session_delete_leaves_nothing(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection, many: bool
) -> None:
    """An append to an existing conversation locks only the conversation: hold that."""
    sid = await _session_with_history(store, "u")
    cid = await conn.fetchval("SELECT id FROM conversations WHERE session_id = $1", sid)

    def append() -> Awaitable[Any]:
        if many:
            return store.messages.add_many(cid, [("user", "PRIVATE")] * 3)
        return store.messages.add(cid, "user", "PRIVATE")

    await holder.execute("BEGIN")
    await holder.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", cid)
    try:
        a = asyncio.ensure_future(append())
        await wait_for_lock_waiters(conn, 1)
        b = asyncio.ensure_future(store.sessions.delete(sid))
        await wait_for_lock_waiters(conn, 2)
    finally:
        await holder.execute("ROLLBACK")
    _no_unexpected(await _settle(a, b))
    assert await _leftovers(conn, sid) == NOTHING
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_append_racing_a_conversation_delete_leaves_nothing(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection
) -> None:
    sid = await _session_with_history(store, "u")
    cid = await conn.fetchval("SELECT id FROM conversations WHERE session_id = $1", sid)
    await holder.execute("BEGIN")
    await holder.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", cid)
    try:
        a = asyncio.ensure_future(store.messages.add(cid, "user", "PRIVATE"))
        await wait_for_lock_waiters(conn, 1)
        b = asyncio.ensure_future(store.conversations.delete(cid))
        await wait_for_lock_waiters(conn, 2)
    finally:
        await holder.execute("ROLLBACK")
    _no_unexpected(await _settle(a, b))
    assert await conn.fetchval("SELECT count(*) FROM conversations") == 0
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


# ---------------------------------------------------------------- under RLS


@pytest.fixture
async def supabase_store(
    pg_server: TestServer, supabase_database: str
) -> AsyncIterator[tuple[SessionStore, asyncpg.Connection, asyncpg.Connection]]:
    """A store on a Supabase-like database, a direct connection and a lock holder."""
    admin = pg_server.admin_dsn_for(supabase_database)
    conn, other = await asyncpg.connect(admin), await asyncpg.connect(admin)
    try:
        async with sessionstore.connect(
            as_supabase_postgres(pg_server.dsn_for(supabase_database)), **store_overrides()
        ) as store:
            yield store, conn, other
    finally:
        await conn.close()
        await other.close()


@pytest.mark.parametrize("purge", [False, True], ids=["delete", "purge"])
async def test_user_scoped_delete_racing_a_user_scoped_turn_leaves_nothing(
    supabase_store: tuple[SessionStore, asyncpg.Connection, asyncpg.Connection], purge: bool
) -> None:
    store, conn, holder = supabase_store
    alice = store.as_user(ALICE)
    sid = await _session_with_history(alice, ALICE)

    def delete() -> Awaitable[Any]:
        return alice.purge_user(ALICE) if purge else alice.sessions.delete(sid)

    outcomes = await _race_behind_lock(
        conn,
        holder,
        sid,
        lambda: alice.add_turn("new", "user", "PRIVATE", session_id=sid),
        delete,
    )
    _no_unexpected(outcomes)
    assert not isinstance(outcomes[1], BaseException)
    assert await _leftovers(conn, sid) == NOTHING
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


# ---------------------------------------------------------------- random load


async def _jitter(rng: random.Random) -> None:
    """Yield to the event loop a random number of times: a different interleaving of
    the racing calls' statements on every trial (no waiting for time to pass)."""
    for _ in range(rng.randrange(12)):
        await asyncio.sleep(0)


async def _jittered(rng: random.Random, call: Callable[[], Awaitable[Any]]) -> Any:
    await _jitter(rng)
    return await call()


async def _turns(
    store: SessionStore, rng: random.Random, sessions: list[UUID], tag: str
) -> list[Awaitable[Any]]:
    """Writers that each send turns, one after another, until their session is gone
    (at most ``ROUNDS``), so that they are still writing when the delete ends."""

    async def one(i: int) -> None:
        for r in range(ROUNDS):
            await _jitter(rng)
            try:
                await store.add_turn(
                    f"{tag}-{i}-{r}", "user", "PRIVATE", session_id=rng.choice(sessions)
                )
            except (*GONE, sessionstore.SessionExpiredError):
                return

    return [one(i) for i in range(WRITERS)]


async def test_session_deletes_under_random_racing_turns_leave_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    rng = random.Random(27)
    leaked = 0
    for trial in range(TRIALS):
        sid = await _session_with_history(store, "u")

        delete = _jittered(rng, functools.partial(store.sessions.delete, sid))
        calls = [*await _turns(store, rng, [sid], f"t{trial}"), delete]
        rng.shuffle(calls)
        outcomes = await _settle(*calls)
        _no_unexpected(outcomes)
        left = await _leftovers(conn, sid)
        assert left["sessions"] == 0, f"trial {trial}: the cleaner never took the session"
        leaked += left["detached"] + left["bound"]
        await conn.execute("DELETE FROM conversations WHERE session_id IS NULL")
    assert leaked == 0


async def test_purges_under_random_racing_turns_leave_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    rng = random.Random(27)
    leaky_trials = 0
    for trial in range(TRIALS):
        user = f"forget-{trial}"
        sessions = [await _session_with_history(store, user) for _ in range(2)]

        purge = _jittered(rng, functools.partial(store.purge_user, user, batch_size=4))
        calls = [*await _turns(store, rng, sessions, f"t{trial}"), purge]
        rng.shuffle(calls)
        _no_unexpected(await _settle(*calls))
        left = await _leftovers(conn, *sessions)
        if left["sessions"]:  # a turn came after the purge: purge again, as a retry would
            await store.purge_user(user)
            left = await _leftovers(conn, *sessions)
        leaky_trials += left != NOTHING
        await conn.execute("DELETE FROM conversations WHERE session_id IS NULL")
    assert leaky_trials == 0


async def _expire_and_clean(store: SessionStore, conn: asyncpg.Connection, sid: UUID) -> None:
    """Expire the session, then clean until it is gone. A turn in flight may hold its row
    (the cleaner skips it): on a loaded machine for longer than 100 quick attempts took,
    so the bound is time (10 s), not a count."""
    await conn.execute("UPDATE sessions SET expires_at = clock_timestamp() WHERE id = $1", sid)

    async def gone() -> bool:
        await store.sessions.cleanup_expired(delete_conversations=True)
        return not await conn.fetchval("SELECT count(*) FROM sessions WHERE id = $1", sid)

    await eventually(gone, what="the expired session cleaned up", every=0.002)


async def test_cleanup_under_random_racing_turns_leaves_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """Turns queue on the session's lock while it runs out (their statements began
    before it did); the cleaner, deleting with conversations, runs meanwhile."""
    rng = random.Random(27)
    leaked = 0
    # The window is narrow (a turn committing between the cleaner's snapshot and its
    # SKIP LOCKED attempt on the session): more trials than the others.
    for trial in range(CLEANUP_TRIALS):
        sid = (await store.sessions.create("u", ttl=None)).id
        await store.add_turn(f"old-{trial}", "user", "before", session_id=sid)

        clean = _jittered(rng, functools.partial(_expire_and_clean, store, conn, sid))
        calls = [*await _turns(store, rng, [sid], f"t{trial}"), clean]
        rng.shuffle(calls)
        outcomes = await _settle(*calls)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, (*GONE, sessionstore.SessionExpiredError)
            ):
                raise outcome
        left = await _leftovers(conn, sid)
        assert left["sessions"] == 0, f"trial {trial}: the cleaner never took the session"
        leaked += left["detached"] + left["bound"]
        await conn.execute("DELETE FROM conversations WHERE session_id IS NULL")
    assert leaked == 0
