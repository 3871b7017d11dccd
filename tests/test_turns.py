"""``add_turn``: one statement, all or nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    InvalidInputError,
    InvalidStateError,
    MessageRole,
    NotFoundError,
    SessionExpiredError,
    SessionStore,
)

from .conftest import store_overrides
from .helpers import expire, row_counts


async def test_add_turn_creates_appends_and_counts(store: SessionStore) -> None:
    s = await store.sessions.create("u1")
    t1 = await store.add_turn("cont-1", MessageRole.USER, "hi", session_id=s.id, tokens=40)
    t2 = await store.add_turn("cont-1", "assistant", "hello", session_id=str(s.id), tokens=2)
    assert (t1.message.seq, t2.message.seq) == (1, 2)
    assert t1.conversation.id == t2.conversation.id
    assert t1.conversation.session_id == s.id
    assert (t2.conversation.message_count, t2.conversation.total_tokens) == (2, 42)
    assert t2.session is not None
    assert (t2.session.turn_count, t2.session.total_tokens) == (2, 42)
    assert await store.sessions.get(s.id) == t2.session
    assert [m.content for m in await store.messages.history(t1.conversation.id)] == ["hi", "hello"]


async def test_add_turn_without_session(store: SessionStore) -> None:
    t = await store.add_turn("loose", "user", "x", metadata={"k": "v"})
    assert t.session is None
    assert t.conversation.session_id is None
    assert t.message.metadata == {"k": "v"}


async def test_add_turn_is_one_round_trip(dsn: str) -> None:
    queries: list[str] = []

    async def configure(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda record: queries.append(record.query))

    async with sessionstore.connect(dsn, configure=configure, **store_overrides()) as store:
        s = await store.sessions.create("u1")
        await store.add_turn("rt", "user", "warm-up", session_id=s.id)  # type introspection
        queries.clear()
        await store.add_turn("rt", "user", "x", session_id=s.id, tokens=1)
    assert len(queries) == 1
    assert "INSERT INTO messages" in queries[0]


@pytest.mark.parametrize(
    ("prepare", "error"),
    [
        ("missing", NotFoundError),
        ("pause", InvalidStateError),
        ("complete", InvalidStateError),
        ("expire", SessionExpiredError),
    ],
)
async def test_add_turn_on_unusable_session_writes_nothing(
    store: SessionStore, conn: asyncpg.Connection, prepare: str, error: type[Exception]
) -> None:
    s = await store.sessions.create("u1")
    target: object = s.id
    if prepare == "missing":
        target = "00000000-0000-0000-0000-000000000000"
    elif prepare == "expire":
        await expire(conn, s.id)
    else:
        await getattr(store.sessions, prepare)(s.id)
    with pytest.raises(error):
        await store.add_turn("cont", "user", "hi", session_id=target, tokens=5)  # type: ignore[arg-type]
    counts = await row_counts(conn)
    assert (counts["conversations"], counts["messages"]) == (0, 0)
    assert await conn.fetchval("SELECT turn_count FROM sessions WHERE id = $1", s.id) == 0


async def test_failing_step_rolls_back_the_whole_turn(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("u1")
    await store.add_turn("cont", "user", "first", session_id=s.id, tokens=1)
    # Make the last step (the message insert) fail inside the database.
    await conn.execute("ALTER TABLE messages ADD CONSTRAINT no_boom CHECK (content <> 'boom')")
    with pytest.raises(InvalidInputError):
        await store.add_turn("cont", "user", "boom", session_id=s.id, tokens=10)
    with pytest.raises(InvalidInputError):
        await store.add_turn("new-cont", "user", "boom", session_id=s.id, tokens=10)
    session = await store.sessions.get(s.id)
    assert (session.turn_count, session.total_tokens) == (1, 1)
    assert (await store.conversations.get_by_continuation_id("cont")).message_count == 1
    counts = await row_counts(conn)
    assert (counts["conversations"], counts["messages"]) == (1, 1)


async def test_concurrent_turns_on_a_new_continuation(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("u1")
    turns = await asyncio.gather(
        *(store.add_turn("busy", "user", str(i), session_id=s.id, tokens=1) for i in range(100))
    )
    assert len({t.conversation.id for t in turns}) == 1
    assert sorted(t.message.seq for t in turns) == list(range(1, 101))
    assert (await store.sessions.get(s.id)).turn_count == 100
    assert await conn.fetchval("SELECT count(*) FROM conversations") == 1


async def _session_state(conn: asyncpg.Connection, session_id: object) -> tuple[object, ...]:
    row = await conn.fetchrow(
        "SELECT turn_count, total_tokens, expires_at, status, version FROM sessions WHERE id = $1",
        session_id,
    )
    assert row is not None
    return tuple(row.values())


@pytest.mark.parametrize("sliding", [False, True])
async def test_add_turn_and_enqueue_turn_have_the_same_effect(
    dsn: str, conn: asyncpg.Connection, sliding: bool
) -> None:
    """The direct and the write-behind turn are one rule: counters, tokens and sliding
    expiry move alike (enqueue_turn used to leave expires_at where it was)."""
    ttl = timedelta(hours=2)
    settings = {**store_overrides(), "sliding_expiry": sliding, "default_ttl": ttl}
    async with sessionstore.connect(dsn, **settings) as store:
        short = timedelta(minutes=5)
        direct = await store.sessions.create("u", ttl=short)
        queued = await store.sessions.create("u", ttl=short)
        for i in range(3):
            await store.add_turn("direct", "user", f"m{i}", session_id=direct.id, tokens=7)
            await store.enqueue_turn("queued", "user", f"m{i}", session_id=queued.id, tokens=7)
        await store.flush()
        assert store.stats().set_aside == 0
        now = await conn.fetchval("SELECT now()")
        for before in (direct, queued):
            turns, tokens, expires_at, status, version = await _session_state(conn, before.id)
            assert (turns, tokens, status, version) == (3, 21, "active", before.version)
            assert isinstance(expires_at, datetime)
            assert before.expires_at is not None
            if sliding:
                assert expires_at >= now + ttl - timedelta(minutes=1)
            else:
                assert expires_at == before.expires_at
        for continuation_id in ("direct", "queued"):
            c = await store.conversations.get_by_continuation_id(continuation_id)
            assert (c.message_count, c.total_tokens) == (3, 21)


@pytest.mark.parametrize("state", ["paused", "completed", "expired"])
async def test_add_turn_and_enqueue_turn_refuse_the_same_sessions(
    store: SessionStore, conn: asyncpg.Connection, state: str
) -> None:
    s = await store.sessions.create("u")
    if state == "paused":
        await store.sessions.pause(s.id)
    elif state == "completed":
        await store.sessions.complete(s.id)
    else:
        await expire(conn, s.id)
    refused = SessionExpiredError if state == "expired" else InvalidStateError
    with pytest.raises(refused):
        await store.add_turn("direct", "user", "x", session_id=s.id, tokens=3)
    before = (await row_counts(conn), await _session_state(conn, s.id))
    queued = await store.enqueue_turn("queued", "user", "x", session_id=s.id, tokens=3)
    await store.flush()
    assert [f.id for f in store.failed_writes()] == [queued]
    assert (await row_counts(conn), await _session_state(conn, s.id)) == before
    assert before[0] == {"sessions": 1, "conversations": 0, "messages": 0}


async def test_unknown_keyword_options_are_refused_before_anything_is_sent(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    c = await store.conversations.get_or_create("c")
    s = await store.sessions.create("u")
    bad: dict[str, Any] = {"token": 5}  # a misspelt `tokens` must not be ignored
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.add_turn("c", "user", "x", session_id=s.id, **bad),
        lambda: store.enqueue_turn("c", "user", "x", **bad),
        lambda: store.messages.add(c.id, "user", "x", **bad),
        lambda: store.messages.enqueue(c.id, "user", "x", **bad),
        lambda: store.as_user("u").add_turn("c", "user", "x", **bad),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError) as info:
            await call()
        assert info.value.field == "token"
    with pytest.raises(InvalidInputError) as nowait:
        store.messages.enqueue_nowait(c.id, "user", "x", **bad)
    assert nowait.value.field == "token"
    await store.flush()
    assert await row_counts(conn) == {"sessions": 1, "conversations": 1, "messages": 0}
    assert store.stats().written == 0
