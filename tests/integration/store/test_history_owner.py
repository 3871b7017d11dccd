"""``messages.history(..., session_id=)``: a session reads only its own conversations
(issue 27, item 6). Another session's conversation, or an unbound one, is refused exactly
like a missing one, in the read's own round trip, on the service path and on the
write-behind path with queued messages, named by UUID or by continuation id."""

from __future__ import annotations

import asyncio
import random
from uuid import UUID

import asyncpg
import pytest

import sessionstore
from sessionstore import ContinuationId, InvalidInputError, NotFoundError, SessionStore

from ...conftest import store_overrides

MISSING = "0190a5c4-0000-7000-8000-000000000000"


async def _refusal(call: object) -> str:
    """The text of the ``NotFoundError`` ``call`` raises."""
    assert asyncio.iscoroutine(call)
    with pytest.raises(NotFoundError) as info:
        await call
    return str(info.value)


async def test_a_session_reads_its_own_conversation_only(store: SessionStore) -> None:
    alice = await store.sessions.create("u1")
    bob = await store.sessions.create("u1")
    await store.add_turn("alice-chat", "user", "hello", session_id=alice.id)
    turn = await store.add_turn("bob-chat", "user", "bob's secret", session_id=bob.id)
    unbound = await store.conversations.get_or_create("unbound")
    await store.messages.add(unbound.id, "user", "nobody's")
    bobs = turn.conversation.id

    mine = await store.messages.history(ContinuationId("alice-chat"), session_id=alice.id)
    assert [m.content for m in mine] == ["hello"]
    theirs = await store.messages.history(bobs, session_id=str(bob.id))
    assert [m.content for m in theirs] == ["bob's secret"]
    assert await store.messages.history(bobs) == theirs  # no session_id: unrestricted

    for ref, missing in (
        (ContinuationId("bob-chat"), ContinuationId("no-such-chat")),
        (bobs, UUID(MISSING)),
    ):
        refused = await _refusal(store.messages.history(ref, session_id=alice.id))
        absent = await _refusal(store.messages.history(missing, session_id=alice.id))
        # the same error, word for word, as for a conversation that does not exist
        assert refused == absent.replace(str(missing), str(ref))
        assert "secret" not in refused
    # an unbound conversation is no session's: refused too
    await _refusal(store.messages.history(ContinuationId("unbound"), session_id=alice.id))
    await _refusal(store.messages.history(unbound.id, session_id=MISSING))
    # a session that does not exist owns nothing
    await _refusal(store.messages.history(bobs, session_id=MISSING))
    # an expired or completed session still reads its own conversations
    await store.sessions.complete(bob.id)
    assert await store.messages.history(bobs, session_id=bob.id) == theirs


async def test_session_id_is_checked_before_anything_is_sent(dsn: str) -> None:
    queries: list[str] = []

    async def configure(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda record: queries.append(record.query))

    async with sessionstore.connect(dsn, configure=configure, **store_overrides()) as store:
        await store.conversations.get_or_create("c")
        queries.clear()
        for bad in ("nope", 42, b"\x00" * 16, "0190a5c4-0000-7000-8000-00000000000g"):
            with pytest.raises(InvalidInputError) as info:
                await store.messages.history(ContinuationId("c"), session_id=bad)  # type: ignore[arg-type]
            assert info.value.field == "session_id"
            assert str(bad) not in str(info.value)
        assert queries == []


async def test_the_check_is_in_the_read_s_one_round_trip(dsn: str) -> None:
    queries: list[str] = []

    async def configure(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda record: queries.append(record.query))

    async with sessionstore.connect(dsn, configure=configure, **store_overrides()) as store:
        s = await store.sessions.create("u1")
        other = await store.sessions.create("u1")
        await store.add_turn("rt", "user", "x", session_id=s.id)
        queries.clear()
        await store.messages.history(ContinuationId("rt"), session_id=s.id)
        assert len(queries) == 1
        queries.clear()
        with pytest.raises(NotFoundError):
            await store.messages.history(ContinuationId("rt"), session_id=other.id)
        assert len(queries) == 1


async def test_queued_messages_of_another_session_are_not_read(
    slow_writer: SessionStore, conn: asyncpg.Connection, admin_dsn: str
) -> None:
    store = slow_writer
    alice = await store.sessions.create("u1")
    bob = await store.sessions.create("u1")
    stored = await store.add_turn("bob-chat", "user", "stored secret", session_id=bob.id)
    bobs = stored.conversation.id
    # The writer starts a batch at once when the next message is of another kind (a turn,
    # then a plain message): held on Bob's rows, no batch can commit while they are read.
    holder = await asyncpg.connect(admin_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", bob.id)
            await holder.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", bobs)
            await store.enqueue_turn("bob-chat", "assistant", "queued secret", session_id=bob.id)
            await store.messages.enqueue(bobs, "user", "queued by id")
            # only in the queue: enqueue_turn to a new continuation id
            await store.enqueue_turn("bob-new", "user", "queued only", session_id=bob.id)
            assert store.stats().queued + store.stats().in_flight == 3

            for ref in (ContinuationId("bob-chat"), bobs):
                await _refusal(store.messages.history(ref, session_id=alice.id))
                own = await store.messages.history(ref, session_id=bob.id)
                assert [m.content for m in own] == [
                    "stored secret",
                    "queued secret",
                    "queued by id",
                ]
            stored_count = "SELECT count(*) FROM messages WHERE conversation_id = $1"
            assert await conn.fetchval(stored_count, bobs) == 1  # the rest still queued
    finally:
        await holder.close()

    await _refusal(store.messages.history(ContinuationId("bob-new"), session_id=alice.id))
    own = await store.messages.history(ContinuationId("bob-new"), session_id=bob.id)
    assert [m.content for m in own] == ["queued only"]
    # an unbound conversation with queued messages: refused to any session
    unbound = await store.conversations.get_or_create("unbound")
    await store.messages.enqueue(unbound.id, "user", "nobody's")
    await _refusal(store.messages.history(unbound.id, session_id=bob.id))
    assert [m.content for m in await store.messages.history(unbound.id)] == ["nobody's"]
    with pytest.raises(InvalidInputError) as info:
        await store.messages.history(bobs, session_id="nope")
    assert info.value.field == "session_id"


async def test_concurrent_sessions_read_only_their_own(slow_writer: SessionStore) -> None:
    """Bounded random load: sessions append (durably and queued) to their own and
    each other's conversations while reading; a read never returns another's message."""
    store = slow_writer
    rng = random.Random(27)
    sessions = [await store.sessions.create("u1") for _ in range(3)]
    names = [f"chat-{n}" for n in range(3)]
    for s, name in zip(sessions, names, strict=True):
        await store.add_turn(name, "user", f"{s.id}:0", session_id=s.id)

    async def client(me: int) -> None:
        s = sessions[me]
        for n in range(1, 30):
            name = names[rng.randrange(3)]
            owner = names.index(name)
            if rng.random() < 0.5:
                await store.enqueue_turn(names[me], "user", f"{s.id}:{n}", session_id=s.id)
            else:
                await store.add_turn(names[me], "user", f"{s.id}:{n}", session_id=s.id)
            if owner == me:
                page = await store.messages.history(ContinuationId(name), session_id=s.id)
                assert page
                assert all(m.content.startswith(f"{s.id}:") for m in page)
            else:
                await _refusal(store.messages.history(ContinuationId(name), session_id=s.id))

    async with asyncio.timeout(60):
        await asyncio.gather(*(client(i) for i in range(3)))
