"""``add_turn``: one statement, all or nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    ConflictError,
    InvalidInputError,
    InvalidStateError,
    MessageRole,
    NotFoundError,
    SessionExpiredError,
    SessionStore,
)

from ...conftest import store_overrides
from ...helpers import expire, row_counts


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


async def test_a_session_cannot_write_into_another_sessions_conversation(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    alice = await store.sessions.create("alice")
    bob = await store.sessions.create("bob")
    await store.add_turn("c-1", "user", "alice secret", session_id=alice.id, tokens=5)
    before = (await row_counts(conn), await _session_state(conn, bob.id))
    with pytest.raises(ConflictError, match="belongs to another session") as info:
        await store.add_turn("c-1", "user", "bob hi", session_id=bob.id, tokens=3)
    assert "alice secret" not in str(info.value)
    assert "bob hi" not in str(info.value)
    assert (await row_counts(conn), await _session_state(conn, bob.id)) == before
    c = await store.conversations.get_by_continuation_id("c-1")
    assert [m.content for m in await store.messages.history(c.id)] == ["alice secret"]
    assert (c.message_count, c.total_tokens, c.session_id) == (1, 5, alice.id)
    # write-behind: set aside and reported, never written
    queued = await store.enqueue_turn("c-1", "user", "bob again", session_id=bob.id)
    await store.flush()
    assert [(f.id, f.reason) for f in store.failed_writes()] == [
        (queued, "conversation belongs to another session")
    ]
    assert (await row_counts(conn), await _session_state(conn, bob.id)) == before
    with pytest.raises(ConflictError):
        await store.conversations.get_or_create("c-1", session_id=bob.id)
    # a turn naming no session is not a turn of another session
    await store.add_turn("c-1", "system", "note")
    assert (await store.conversations.get(c.id)).session_id == alice.id


async def test_an_unbound_conversation_is_bound_by_the_first_turn_naming_a_session(
    store: SessionStore,
) -> None:
    loose = await store.add_turn("adopted", "user", "from before sessions")
    assert loose.conversation.session_id is None
    s = await store.sessions.create("u")
    t = await store.add_turn("adopted", "user", "now in a session", session_id=s.id)
    assert t.conversation.session_id == s.id
    other = await store.sessions.create("v")
    with pytest.raises(ConflictError):
        await store.add_turn("adopted", "user", "x", session_id=other.id)


async def test_two_sessions_racing_to_bind_one_new_conversation(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    sessions = [await store.sessions.create(f"u{i}") for i in range(10)]
    results = await asyncio.gather(
        *(store.add_turn("contested", "user", "x", session_id=s.id) for s in sessions),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    winner = won[0].conversation.session_id
    turns = {
        r["id"]: r["turn_count"] for r in await conn.fetch("SELECT id, turn_count FROM sessions")
    }
    assert turns == {s.id: int(s.id == winner) for s in sessions}
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1


async def test_resending_a_turn_with_its_message_id_writes_it_once(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("u")
    mid = uuid4()
    first = await store.add_turn(
        "c", "user", "CANARY-hi", session_id=s.id, tokens=4, message_id=mid
    )
    again = await store.add_turn(
        "c", "user", "CANARY-hi", session_id=s.id, tokens=4, message_id=str(mid)
    )
    assert first.message == again.message
    assert first.message.id == mid
    racing = await asyncio.gather(
        *(
            store.add_turn("c", "user", "racing", session_id=s.id, tokens=1, message_id=racer)
            for racer in [uuid4()] * 5
        )
    )
    assert len({t.message.id for t in racing}) == 1
    assert await conn.fetchval("SELECT count(*) FROM messages") == 2
    after = await store.sessions.get(s.id)
    assert (after.turn_count, after.total_tokens) == (2, 5)
    conv = await store.conversations.get(first.conversation.id)
    assert (conv.message_count, conv.total_tokens) == (2, 5)
    for changed in (
        {"content": "CANARY-hi!"},
        {"tokens": 5},
        {"role": "assistant"},
        {"continuation_id": "elsewhere"},
        {"metadata": {"k": 1}},
    ):
        args: dict[str, Any] = {"continuation_id": "c", "role": "user", "content": "CANARY-hi"}
        args.update(changed)
        extra: dict[str, Any] = {
            "metadata": changed.get("metadata"),
            "tokens": changed.get("tokens", 4),
        }
        with pytest.raises(ConflictError, match="already the id of a different message") as info:
            await store.add_turn(
                args["continuation_id"],
                args["role"],
                args["content"],
                session_id=s.id,
                message_id=mid,
                **extra,
            )
        assert "CANARY" not in str(info.value)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 2
    assert (await store.sessions.get(s.id)).turn_count == 2
    with pytest.raises(InvalidInputError) as bad:
        await store.add_turn("c", "user", "x", message_id="not-a-uuid")
    assert bad.value.field == "message_id"
