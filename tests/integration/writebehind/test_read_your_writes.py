"""Read-your-writes holds whichever way a conversation is named: queued under its
continuation id and read by its UUID, or the other way round — also when the batch
that writes the queued messages commits in the middle of the read."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest

from sessionstore import ContinuationId, SessionStore


class _FlushAfterFirstRead:
    """The repository's database handle, flushing the writer right after the first read
    returns: the queued messages then commit after that read's snapshot and leave the
    writer's index before the read looks for them by the conversation's other key."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._db: Any = store.messages._db
        self.flushed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        rows = await self._db.fetch(*args, **kwargs)
        if not self.flushed:
            self.flushed = True
            await self._store.flush()
        return rows


async def _conversation(store: SessionStore) -> tuple[UUID, UUID]:
    session = await store.sessions.create("alice")
    first = await store.add_turn("chat", "user", "u1", session_id=session.id)
    return session.id, first.conversation.id


@pytest.mark.parametrize("queued_by", ["enqueue_turn", "enqueue"])
async def test_a_batch_landing_mid_read_shows_when_read_by_the_other_key(
    slow_writer: SessionStore, monkeypatch: pytest.MonkeyPatch, queued_by: str
) -> None:
    store = slow_writer
    session_id, conversation_id = await _conversation(store)
    if queued_by == "enqueue_turn":
        await store.enqueue_turn("chat", "assistant", "a1", session_id=session_id)
    else:
        await store.messages.enqueue(ContinuationId("chat"), "assistant", "a1")
    injected = _FlushAfterFirstRead(store)
    monkeypatch.setattr(store.messages, "_db", injected)
    history = await store.messages.history(conversation_id)
    assert injected.flushed
    assert [m.content for m in history] == ["u1", "a1"]


async def test_queued_by_uuid_and_read_by_continuation_id(
    slow_writer: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = slow_writer
    _, conversation_id = await _conversation(store)
    await store.messages.enqueue(conversation_id, "assistant", "a1")
    injected = _FlushAfterFirstRead(store)
    monkeypatch.setattr(store.messages, "_db", injected)
    history = await store.messages.history(ContinuationId("chat"))
    assert injected.flushed
    assert [m.content for m in history] == ["u1", "a1"]


async def test_under_load_no_read_by_uuid_misses_a_message_queued_by_continuation_id(
    store: SessionStore,
) -> None:
    """Clients queue their turns by continuation id and read by UUID while the writer
    writes batches as fast as it can: every read holds every message its client had
    queued before it, in order."""

    async def client(n: int) -> int:
        session = await store.sessions.create(f"user-{n}")
        name = f"chat-{n}"
        first = await store.add_turn(name, "user", "0", session_id=session.id)
        sent = ["0"]
        for k in range(1, 40):
            await store.enqueue_turn(name, "user", str(k), session_id=session.id)
            sent.append(str(k))
            history = await store.messages.history(first.conversation.id, limit=100)
            assert [m.content for m in history] == sent
        return len(sent)

    assert sum(await asyncio.gather(*(client(n) for n in range(10)))) == 400
