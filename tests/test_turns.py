"""``add_turn``: one statement, all or nothing."""

from __future__ import annotations

import asyncio

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
