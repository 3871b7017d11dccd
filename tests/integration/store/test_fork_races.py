"""Forks under races: the copy is exactly the source's prefix at one moment, whatever runs
beside it (appends, pops, clears, deletes), and nothing acknowledged is lost.

Each race is driven deterministically (a second connection holds a row lock, the calls
queue behind it, the lock is released) and by bounded random load.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from sessionstore import (
    ConflictError,
    ContinuationId,
    Conversation,
    InvalidInputError,
    NotFoundError,
    SessionStore,
)

from ...helpers import wait_for_lock_waiters

SRC = ContinuationId("src")
MESSAGES = "SELECT seq, role::text, content, tokens, created_at FROM messages"
OF = " WHERE conversation_id = $1 ORDER BY seq"
# The counters agree with the rows, and the numbers run 1..message_count without gaps.
GAPLESS = """
SELECT c.message_count = count(m.id) AND c.message_count = coalesce(max(m.seq), 0)
       AND c.total_tokens = coalesce(sum(m.tokens), 0)
       AND c.last_message_at IS NOT DISTINCT FROM max(m.created_at)
FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
WHERE c.id = $1
GROUP BY c.id
"""
# What the holder does to the source inside its open transaction, as another client's
# pop-and-replace, append or clear would (the conversation row first, as they lock it).
CHANGES = {
    "replace": [
        "DELETE FROM messages WHERE conversation_id = $1 AND seq = 3",
        "INSERT INTO messages (conversation_id, seq, role, content, tokens)"
        " VALUES ($1, 3, 'user', 'replacement', 9)",
        "UPDATE conversations SET total_tokens = total_tokens - 3 + 9 WHERE id = $1",
    ],
    "append": [
        "INSERT INTO messages (conversation_id, seq, role, content, tokens)"
        " VALUES ($1, 4, 'user', 'appended', 4)",
        "UPDATE conversations SET message_count = 4, total_tokens = total_tokens + 4 WHERE id = $1",
    ],
    "clear": [
        "DELETE FROM messages WHERE conversation_id = $1",
        "UPDATE conversations SET message_count = 0, total_tokens = 0, last_message_at = NULL"
        " WHERE id = $1",
    ],
}


@pytest.fixture
async def holder(admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A second direct connection, to hold row locks."""
    other = await asyncpg.connect(admin_dsn, statement_cache_size=0)
    yield other
    await other.close()


async def _settle(*tasks: Awaitable[Any]) -> list[Any]:
    """Await ``tasks`` (bounded), returning results or the exceptions they raised."""
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def _race_behind(
    conn: asyncpg.Connection,
    holder: asyncpg.Connection,
    lock: str,
    row: UUID,
    *,
    fork: Callable[[], Awaitable[Conversation]],
    delete: Callable[[], Awaitable[None]],
    fork_first: bool,
) -> list[Any]:
    """Hold ``row`` (``lock``), start the fork and the delete in the order asked (each
    waits for it), release, and return their outcomes: the fork's, then the delete's."""
    await holder.execute("BEGIN")
    await holder.execute(lock, row)
    try:
        first = asyncio.ensure_future((fork if fork_first else delete)())
        await wait_for_lock_waiters(conn, 1)
        second = asyncio.ensure_future((delete if fork_first else fork)())
        await wait_for_lock_waiters(conn, 2)
    finally:
        await holder.execute("ROLLBACK")
    outcomes = await _settle(first, second)
    return outcomes if fork_first else outcomes[::-1]


async def _three(store: SessionStore, session: UUID | None = None) -> UUID:
    """Conversation ``src`` with m1, m2, m3 (tokens 1, 2, 3)."""
    for i in (1, 2, 3):
        turn = await store.add_turn("src", "user", f"m{i}", session_id=session, tokens=i)
    return turn.conversation.id


@pytest.mark.parametrize("change", list(CHANGES))
async def test_a_fork_waiting_for_the_source_copies_it_as_the_writer_left_it(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection, change: str
) -> None:
    """The fork locks the source, then copies in a later snapshot: what a writer holding
    the source committed while the fork waited is copied (a copy from the snapshot taken
    before the wait would hold the replaced m3, or miss the append, under counters that
    say otherwise)."""
    src = await _three(store)
    await holder.execute("BEGIN")
    await holder.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", src)
    for statement in CHANGES[change]:
        await holder.execute(statement, src)
    try:
        everything = asyncio.ensure_future(store.conversations.fork(SRC, continuation_id="all"))
        await wait_for_lock_waiters(conn, 1)
        prefix = asyncio.ensure_future(
            store.conversations.fork(SRC, continuation_id="two", through_seq=2)
        )
        await wait_for_lock_waiters(conn, 2)
    finally:
        await holder.execute("COMMIT")
    forked, two = await _settle(everything, prefix)
    assert isinstance(forked, Conversation), forked
    expected = await conn.fetch(MESSAGES + OF, src)
    assert await conn.fetch(MESSAGES + OF, forked.id) == expected
    assert forked.forked_at_seq == len(expected)
    assert await conn.fetchval(GAPLESS, forked.id)
    if change == "clear":  # decided on the source as the fork found it once locked
        assert isinstance(two, InvalidInputError)
        assert two.field == "through_seq"
    else:
        assert isinstance(two, Conversation), two
        assert await conn.fetch(MESSAGES + OF, two.id) == expected[:2]


@pytest.mark.parametrize("holder_ends", ["ROLLBACK", "COMMIT"])
async def test_appends_and_pops_wait_for_a_fork_holding_the_source(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection, holder_ends: str
) -> None:
    """The holder makes the fork wait after it has locked the source (it inserts the
    fork's continuation id, uncommitted): a pop, an append and a turn of the source
    queue behind the fork and change the source only after it — never its copy."""
    s = await store.sessions.create("u1")
    src = await _three(store, s.id)
    before = await conn.fetch(MESSAGES + OF, src)
    await holder.execute("BEGIN")
    await holder.execute("INSERT INTO conversations (continuation_id) VALUES ('fork')")
    try:
        fork = asyncio.ensure_future(
            store.conversations.fork(SRC, continuation_id="fork", session_id=s.id)
        )
        await wait_for_lock_waiters(conn, 1)
        pop = asyncio.ensure_future(store.messages.pop(SRC))
        await wait_for_lock_waiters(conn, 2)
        add = asyncio.ensure_future(store.messages.add(SRC, "user", "added", tokens=5))
        await wait_for_lock_waiters(conn, 3)
        turn = asyncio.ensure_future(store.add_turn("src", "user", "turn", session_id=s.id))
        await wait_for_lock_waiters(conn, 4)
    finally:
        await holder.execute(holder_ends)
    forked, popped, added, turned = await _settle(fork, pop, add, turn)
    for outcome in (popped, added, turned):
        assert not isinstance(outcome, BaseException), outcome
    # (in an order the server picks as the fork ends: the turn, woken by the session's
    # lock, may reach the source before the pop queued on it)
    after = [r["content"] for r in await conn.fetch(MESSAGES + OF, src)]
    assert sorted([*after, popped.content]) == ["added", "m1", "m2", "m3", "turn"]
    assert await conn.fetchval(GAPLESS, src)
    if holder_ends == "COMMIT":  # the continuation id was taken meanwhile, by no fork
        assert isinstance(forked, ConflictError), forked
        assert await conn.fetchval("SELECT count(*) FROM conversations") == 2
        return
    assert isinstance(forked, Conversation), forked
    assert await conn.fetch(MESSAGES + OF, forked.id) == before
    assert (forked.forked_at_seq, forked.message_count) == (3, 3)


@pytest.mark.parametrize("fork_first", [True, False], ids=["fork-queued-first", "delete-first"])
async def test_a_session_delete_racing_a_fork_into_it_leaves_nothing(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection, fork_first: bool
) -> None:
    s = await store.sessions.create("u1")
    await _three(store, s.id)

    forked, deleted = await _race_behind(
        conn,
        holder,
        "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE",
        s.id,
        fork=lambda: store.conversations.fork(SRC, continuation_id="fork", session_id=s.id),
        delete=lambda: store.sessions.delete(s.id),
        fork_first=fork_first,
    )
    if fork_first:
        assert isinstance(forked, Conversation), forked
    else:  # the fork waited behind the delete: it found the session gone
        assert isinstance(forked, NotFoundError), forked
    assert deleted is None
    for table in ("sessions", "conversations", "messages"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table


@pytest.mark.parametrize("fork_first", [True, False], ids=["fork-queued-first", "delete-first"])
async def test_deleting_the_source_while_a_fork_waits(
    store: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection, fork_first: bool
) -> None:
    src = await _three(store)

    forked, deleted = await _race_behind(
        conn,
        holder,
        "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
        src,
        fork=lambda: store.conversations.fork(SRC, continuation_id="fork"),
        delete=lambda: store.conversations.delete(SRC),
        fork_first=fork_first,
    )
    assert deleted is None
    assert await conn.fetchval("SELECT count(*) FROM conversations WHERE id = $1", src) == 0
    if not fork_first:
        assert isinstance(forked, NotFoundError), forked
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
        return
    assert isinstance(forked, Conversation), forked
    kept = await store.conversations.get(forked.id)
    assert (kept.forked_from, kept.forked_at_seq, kept.message_count) == (None, 3, 3)
    assert [m.content for m in await store.messages.history(forked.id)] == ["m1", "m2", "m3"]


# ---------------------------------------------------------------- random load

WRITERS = 6
APPENDS = 25
FORKS = 20


async def test_forks_beside_appends_copy_true_prefixes_and_lose_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """Appends only: every fork is exactly the source's first ``forked_at_seq``
    messages, and every acknowledged append is in the source."""
    s = await store.sessions.create("u1")
    src = await _three(store, s.id)
    rng = random.Random(23)
    acknowledged: list[str] = []

    async def writer(w: int) -> None:
        for i in range(APPENDS):
            content = f"w{w}-{i}"
            if rng.random() < 0.5:
                await store.add_turn("src", "user", content, session_id=s.id, tokens=1)
            else:
                await store.messages.add(SRC, "assistant", content, tokens=2)
            acknowledged.append(content)

    async def forker(f: int) -> Conversation:
        await asyncio.sleep(0)  # let the writers start
        session = s.id if f % 2 else None
        upto = None if f % 3 else rng.randint(0, 3)
        return await store.conversations.fork(
            SRC, continuation_id=f"fork-{f}", session_id=session, through_seq=upto
        )

    outcomes = await asyncio.wait_for(
        asyncio.gather(*(writer(w) for w in range(WRITERS)), *(forker(f) for f in range(FORKS))),
        120,
    )
    source = await conn.fetch(MESSAGES + OF, src)
    assert {r["content"] for r in source} >= set(acknowledged)
    assert len(source) == 3 + WRITERS * APPENDS
    assert await conn.fetchval(GAPLESS, src)
    for fork in outcomes[WRITERS:]:
        assert isinstance(fork, Conversation)
        assert fork.forked_at_seq is not None
        assert await conn.fetch(MESSAGES + OF, fork.id) == source[: fork.forked_at_seq]
        assert await conn.fetchval(GAPLESS, fork.id)


async def test_forks_beside_appends_and_pops_stay_consistent(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """Pops and clears too: each fork's numbers run 1..forked_at_seq without gaps and
    its counters are true; the source's as well."""
    src = await _three(store)
    rng = random.Random(27)

    async def churn(w: int) -> None:
        for i in range(APPENDS):
            roll = rng.random()
            if roll < 0.6:
                await store.messages.add(SRC, "user", f"w{w}-{i}", tokens=1)
            elif roll < 0.95:
                await store.messages.pop(SRC)
            else:
                await store.messages.clear(SRC)

    async def forker(f: int) -> Conversation:
        await asyncio.sleep(0)
        return await store.conversations.fork(SRC, continuation_id=f"fork-{f}")

    outcomes = await asyncio.wait_for(
        asyncio.gather(*(churn(w) for w in range(WRITERS)), *(forker(f) for f in range(FORKS))),
        120,
    )
    assert await conn.fetchval(GAPLESS, src)
    for fork in outcomes[WRITERS:]:
        assert isinstance(fork, Conversation)
        assert fork.message_count == fork.forked_at_seq
        assert await conn.fetchval(GAPLESS, fork.id)
