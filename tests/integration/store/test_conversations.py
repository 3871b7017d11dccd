"""Conversations repository against a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from sessionstore import ContinuationId, InvalidInputError, NotFoundError, SessionStore

from ...helpers import row_counts


async def test_get_or_create_creates_once(store: SessionStore) -> None:
    s = await store.sessions.create("u1")
    c = await store.conversations.get_or_create(
        "cont-1", session_id=s.id, title="t", metadata={"a": 1}
    )
    assert (c.continuation_id, c.session_id, c.title, c.metadata) == ("cont-1", s.id, "t", {"a": 1})
    assert (c.message_count, c.total_tokens, c.last_message_at) == (0, 0, None)
    again = await store.conversations.get_or_create("cont-1", title="ignored")
    assert again == c


async def test_get_or_create_is_race_free(store: SessionStore, conn: asyncpg.Connection) -> None:
    results = await asyncio.gather(*(store.conversations.get_or_create("same") for _ in range(30)))
    assert len({c.id for c in results}) == 1
    assert await conn.fetchval("SELECT count(*) FROM conversations") == 1


async def test_get_or_create_with_missing_session_writes_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    with pytest.raises(NotFoundError, match="session"):
        await store.conversations.get_or_create(
            "c", session_id="00000000-0000-0000-0000-000000000000"
        )
    assert (await row_counts(conn))["conversations"] == 0


async def test_get_and_get_by_continuation_id(store: SessionStore) -> None:
    c = await store.conversations.get_or_create("cont-2")
    assert await store.conversations.get(c.id) == c
    assert await store.conversations.get(str(c.id)) == c
    assert await store.conversations.get_by_continuation_id("cont-2") == c
    with pytest.raises(NotFoundError):
        await store.conversations.get("00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFoundError):
        await store.conversations.get_by_continuation_id("nope")


async def test_list_for_session_pages(store: SessionStore) -> None:
    s = await store.sessions.create("u1")
    other = await store.sessions.create("u1")
    made = [await store.conversations.get_or_create(f"c{i}", session_id=s.id) for i in range(5)]
    await store.conversations.get_or_create("elsewhere", session_id=other.id)
    first = await store.conversations.list_for_session(s.id, limit=3)
    assert first.next_cursor is not None
    second = await store.conversations.list_for_session(s.id, limit=3, cursor=first.next_cursor)
    assert second.next_cursor is None
    assert [c.id for c in first.items + second.items] == [c.id for c in reversed(made)]


async def test_list_for_session_empty_and_missing(store: SessionStore) -> None:
    s = await store.sessions.create("u1")
    page = await store.conversations.list_for_session(s.id)
    assert (page.items, page.next_cursor) == ([], None)
    with pytest.raises(NotFoundError):
        await store.conversations.list_for_session("00000000-0000-0000-0000-000000000000")


async def test_get_or_create_with_a_missing_session_says_so(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    missing = "00000000-0000-0000-0000-00000000abcd"
    with pytest.raises(NotFoundError, match=f"session {missing} not found"):
        await store.conversations.get_or_create("c", session_id=missing)
    assert await row_counts(conn) == {"sessions": 0, "conversations": 0, "messages": 0}


async def test_delete_a_conversation_with_its_messages(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("u")
    doomed = await store.add_turn("doomed", "user", "x", session_id=s.id)
    await store.add_turn("doomed", "assistant", "y", session_id=s.id)
    kept = await store.add_turn("kept", "user", "z", session_id=s.id)
    await store.conversations.delete(doomed.conversation.id)
    assert await row_counts(conn) == {"sessions": 1, "conversations": 1, "messages": 1}
    assert (await store.conversations.get(kept.conversation.id)).message_count == 1
    with pytest.raises(NotFoundError):
        await store.conversations.delete(doomed.conversation.id)


async def test_a_continuation_id_add_turn_took_must_be_wrapped_to_read_it(
    store: SessionStore,
) -> None:
    """The string ``add_turn`` takes is refused by ``history`` with the way out named,
    and read once wrapped."""
    await store.add_turn("my-chat", "user", "hello")
    with pytest.raises(InvalidInputError) as info:
        await store.messages.history("my-chat")
    assert info.value.field == "conversation_id"
    assert str(info.value).endswith("must be wrapped: ContinuationId(continuation_id)")
    assert "my-chat" not in str(info.value)
    history = await store.messages.history(ContinuationId("my-chat"))
    assert [m.content for m in history] == ["hello"]
