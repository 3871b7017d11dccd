"""Each old call name works on the new store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from sessionstore import InvalidStateError
from sessionstore.compat import SessionManager

from ...conftest import store_overrides
from ...helpers import expire


@pytest.fixture
async def manager(dsn: str) -> AsyncIterator[SessionManager]:
    m = await SessionManager.connect(dsn, **store_overrides())
    yield m
    await m.shutdown()


async def test_conversation_calls(manager: SessionManager) -> None:
    saved = await manager.save_conversation_async("cont-1", title="t", metadata={"k": 1})
    assert (saved["continuation_id"], saved["title"], saved["metadata"]) == (
        "cont-1",
        "t",
        {"k": 1},
    )
    assert isinstance(saved["id"], str)
    assert await manager.get_conversation_async("cont-1") == saved
    assert await manager.get_conversation_async("nope") is None
    m1 = await manager.save_message_async("cont-1", "user", "hi")
    assert m1 is not None
    assert (m1["seq"], m1["role"], m1["content"]) == (1, "user", "hi")
    assert (
        await manager.save_message_async("cont-1", "assistant", "yo", fire_and_forget=True) is None
    )
    await manager.store.flush()
    history = await manager.get_conversation_history_async("cont-1")
    assert [(m["seq"], m["content"]) for m in history] == [(1, "hi"), (2, "yo")]
    assert await manager.get_conversation_history_async("nope") == []


async def test_session_calls(manager: SessionManager, conn: asyncpg.Connection) -> None:
    s = await manager.create_session("u1", title="a", ttl_hours=1)
    assert s["status"] == "active"
    assert await manager.get_session(s["id"]) == s
    assert await manager.get_session_async(s["id"]) == s
    assert await manager.get_session("00000000-0000-0000-0000-000000000000") is None
    updated = await manager.update_session(s["id"], title="b", metadata={"x": 1}, status="paused")
    assert updated is not None
    assert (updated["title"], updated["metadata"], updated["status"]) == ("b", {"x": 1}, "paused")
    with pytest.raises(TypeError):
        await manager.update_session(s["id"], colour="red")
    done = await manager.update_session(s["id"], status="completed")
    assert done is not None
    assert done["status"] == "completed"
    with pytest.raises(InvalidStateError):
        await manager.update_session(s["id"], status="active")
    assert await manager.update_session("00000000-0000-0000-0000-000000000000", title="x") is None
    other = await manager.create_session("u2")
    gone = await manager.create_session("u2")
    await expire(conn, gone["id"])
    assert [x["id"] for x in await manager.list_active_sessions("u2")] == [other["id"]]
    everyone = {x["id"] for x in await manager.list_active_sessions()}
    assert other["id"] in everyone
    assert gone["id"] not in everyone
    assert await manager.cleanup_expired_sessions() == 1


async def test_fire_and_forget_is_durable_at_shutdown(dsn: str, conn: asyncpg.Connection) -> None:
    manager = await SessionManager.connect(dsn, **store_overrides())
    for i in range(50):
        await manager.save_message_async("ff", "user", str(i), fire_and_forget=True)
    await manager.shutdown()
    assert await conn.fetchval("SELECT count(*) FROM messages") == 50


async def test_history_sees_fire_and_forget_messages_of_a_new_conversation(dsn: str) -> None:
    manager = await SessionManager.connect(dsn, max_delay=3600.0, **store_overrides())
    try:
        await manager.save_message_async("new", "user", "queued", fire_and_forget=True)
        history = await manager.get_conversation_history_async("new")
        assert [m["content"] for m in history] == ["queued"]
        assert await manager.get_conversation_history_async("unknown") == []
    finally:
        await manager.shutdown()
