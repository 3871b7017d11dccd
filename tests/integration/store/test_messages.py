"""Messages repository against a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from sessionstore import InvalidInputError, MessageRole, NotFoundError, SessionStore

from ...helpers import row_counts

MISSING = "00000000-0000-0000-0000-000000000000"


async def test_add_assigns_seq_and_keeps_counters(store: SessionStore) -> None:
    c = await store.conversations.get_or_create("c")
    m1 = await store.messages.add(c.id, MessageRole.USER, "hi", metadata={"lang": "en"}, tokens=3)
    m2 = await store.messages.add(str(c.id), "assistant", "hello")
    assert (m1.seq, m1.role, m1.content, m1.metadata, m1.tokens) == (
        1,
        MessageRole.USER,
        "hi",
        {"lang": "en"},
        3,
    )
    assert (m2.seq, m2.role, m2.tokens, m2.metadata) == (2, MessageRole.ASSISTANT, None, {})
    after = await store.conversations.get(c.id)
    assert (after.message_count, after.total_tokens, after.last_message_at) == (2, 3, m2.created_at)


async def test_add_to_missing_conversation_writes_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    with pytest.raises(NotFoundError, match="conversation"):
        await store.messages.add(MISSING, "user", "x")
    assert (await row_counts(conn))["messages"] == 0


async def test_concurrent_adds_get_distinct_consecutive_seqs(store: SessionStore) -> None:
    c = await store.conversations.get_or_create("c")
    added = await asyncio.gather(*(store.messages.add(c.id, "user", str(i)) for i in range(40)))
    assert sorted(m.seq for m in added) == list(range(1, 41))
    assert await store.messages.count(c.id) == 40


async def test_add_many_in_order(store: SessionStore) -> None:
    c = await store.conversations.get_or_create("c")
    await store.messages.add(c.id, "system", "be brief")
    ms = await store.messages.add_many(
        c.id,
        [(MessageRole.USER, "a"), ("assistant", "b", {"x": 1}, 7), ("user", "c", None, None)],
    )
    assert [(m.seq, m.content) for m in ms] == [(2, "a"), (3, "b"), (4, "c")]
    assert (ms[1].metadata, ms[1].tokens) == ({"x": 1}, 7)
    after = await store.conversations.get(c.id)
    assert (after.message_count, after.total_tokens) == (4, 7)


async def test_add_many_is_all_or_nothing(store: SessionStore, conn: asyncpg.Connection) -> None:
    c = await store.conversations.get_or_create("c")
    with pytest.raises(InvalidInputError) as info:
        await store.messages.add_many(c.id, [("user", "fine"), ("robot", "bad role")])
    assert info.value.field == "messages[1].role"
    # a failure inside the database also leaves nothing behind
    await conn.execute("ALTER TABLE messages ADD CONSTRAINT no_boom CHECK (content <> 'boom')")
    with pytest.raises(InvalidInputError):
        await store.messages.add_many(c.id, [("user", "fine"), ("user", "boom")])
    assert (await row_counts(conn))["messages"] == 0
    assert (await store.conversations.get(c.id)).message_count == 0
    with pytest.raises(NotFoundError):
        await store.messages.add_many(MISSING, [("user", "x")])


async def test_history_latest_oldest_first_with_before(store: SessionStore) -> None:
    c = await store.conversations.get_or_create("c")
    await store.messages.add_many(c.id, [("user", str(i)) for i in range(1, 11)])
    latest = await store.messages.history(c.id, limit=3)
    assert [m.seq for m in latest] == [8, 9, 10]
    older = await store.messages.history(c.id, limit=3, before=latest[0].seq)
    assert [m.content for m in older] == ["5", "6", "7"]
    assert [m.seq for m in await store.messages.history(c.id, limit=50, before=3)] == [1, 2]


async def test_history_empty_and_missing(store: SessionStore) -> None:
    c = await store.conversations.get_or_create("c")
    assert await store.messages.history(c.id) == []
    assert await store.messages.count(c.id) == 0
    with pytest.raises(NotFoundError):
        await store.messages.history(MISSING)
    with pytest.raises(NotFoundError):
        await store.messages.count(MISSING)


async def test_unicode_content_round_trips(store: SessionStore) -> None:
    c = await store.conversations.get_or_create("c")
    text = "héllo 👋 — 你好\n\ttabs"
    m = await store.messages.add(c.id, "user", text, metadata={"emoji": "👋"})
    assert (await store.messages.history(c.id))[0].content == text
    assert m.metadata == {"emoji": "👋"}
