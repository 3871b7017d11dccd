"""The store on the distributed layout (``sessionstore.distribution``): the README's
calls, the chat loop, write-behind, deletes and purge, compaction and forks, and the
refusals — on the keyed layout of the PostgreSQL under test (every CI way) and on a
real Citus cluster (``SESSIONSTORE_TEST_CITUS_DSN``)."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    ConflictError,
    ContinuationId,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    SessionStore,
)

from ...conftest import store_overrides
from .conftest import Placed, wait_for_waiters


def _contents(messages: Any) -> list[str]:
    return [m.content for m in messages]


async def test_the_chat_loop_is_stored_in_order_and_read_back(store: SessionStore) -> None:
    s = await store.sessions.create("alice")
    turn = await store.add_turn("chat", "user", "u1", session_id=s.id, context=10, tokens=3)
    assert _contents(turn.context or []) == ["u1"]
    assert turn.session is not None
    assert turn.session.turn_count == 1
    for n in range(2, 5):
        await store.enqueue_turn("chat", "assistant", f"a{n - 1}", session_id=s.id, tokens=2)
        turn = await store.add_turn("chat", "user", f"u{n}", session_id=s.id, context=3)
    assert _contents(turn.context or []) == ["u3", "a3", "u4"]
    await store.flush()
    history = await store.messages.history(ContinuationId("chat"))
    assert _contents(history) == ["u1", "a1", "u2", "a2", "u3", "a3", "u4"]
    assert [m.seq for m in history] == list(range(1, 8))
    by_id = await store.messages.history(turn.conversation.id, limit=2)
    assert _contents(by_id) == ["a3", "u4"]
    assert await store.messages.count(ContinuationId("chat")) == 7
    conversation = await store.conversations.get(ContinuationId("chat"))
    assert conversation.session_id == s.id
    assert conversation.message_count == 7
    session = await store.sessions.get(s.id)
    assert session.turn_count == 7
    assert session.total_tokens == 3 + 3 * 2


async def test_a_resend_returns_the_stored_turn(store: SessionStore) -> None:
    s = await store.sessions.create("alice")
    first = await store.add_turn("chat", "user", "hi", session_id=s.id, message_id=_ID)
    again = await store.add_turn("chat", "user", "hi", session_id=s.id, message_id=_ID)
    assert again.message.id == first.message.id == _ID
    assert await store.messages.count(ContinuationId("chat")) == 1
    with pytest.raises(ConflictError):
        await store.add_turn("chat", "user", "other", session_id=s.id, message_id=_ID)


_ID = UUID("01a25200-0000-7000-8000-000000000001")


async def test_a_continuation_id_is_one_session_s_across_processes(
    store: SessionStore, other: SessionStore
) -> None:
    a = await store.sessions.create("alice")
    b = await other.sessions.create("bob")
    await store.add_turn("shared", "user", "mine", session_id=a.id)
    with pytest.raises(ConflictError, match="belongs to another session"):
        await other.add_turn("shared", "user", "theirs", session_id=b.id)
    # Concurrent first turns of one new continuation id: one session gets it.
    results = await asyncio.gather(
        store.add_turn("race", "user", "a", session_id=a.id),
        other.add_turn("race", "user", "b", session_id=b.id),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "Turn"]
    assert await store.messages.count(ContinuationId("race")) == 1


async def test_a_deleted_session_frees_its_continuation_ids(
    store: SessionStore, other: SessionStore
) -> None:
    a = await store.sessions.create("alice")
    await store.add_turn("reused", "user", "old", session_id=a.id)
    await other.messages.history(ContinuationId("reused"))  # the other process remembers it
    await store.sessions.delete(a.id)
    b = await other.sessions.create("bob")
    turn = await other.add_turn("reused", "user", "new", session_id=b.id)
    assert turn.message.seq == 1
    assert turn.conversation.session_id == b.id
    assert _contents(await store.messages.history(ContinuationId("reused"))) == ["new"]


async def test_a_remembered_place_of_a_deleted_conversation_is_asked_again(
    store: SessionStore, other: SessionStore
) -> None:
    s = await store.sessions.create("alice")
    await store.add_turn("gone", "user", "one", session_id=s.id)
    await store.messages.history(ContinuationId("gone"))
    await other.conversations.delete(ContinuationId("gone"))
    with pytest.raises(NotFoundError):
        await store.messages.history(ContinuationId("gone"))
    turn = await store.add_turn("gone", "user", "again", session_id=s.id)
    assert turn.message.seq == 1
    # The route was released with the conversation: another session may take the id.
    await store.conversations.delete(ContinuationId("gone"))
    b = await other.sessions.create("bob")
    assert (await other.add_turn("gone", "user", "b", session_id=b.id)).message.seq == 1


async def test_write_behind_batches_over_many_sessions(store: SessionStore) -> None:
    sessions = [await store.sessions.create(f"user-{n}") for n in range(6)]
    for round_ in range(3):
        for n, s in enumerate(sessions):
            await store.enqueue_turn(f"conv-{n}", "user", f"m{round_}", session_id=s.id)
    await store.flush()
    assert store.failed_writes() == []
    for n, s in enumerate(sessions):
        assert _contents(await store.messages.history(ContinuationId(f"conv-{n}"))) == [
            "m0",
            "m1",
            "m2",
        ]
        assert (await store.sessions.get(s.id)).turn_count == 3
    # A turn of another session's conversation, and a new conversation without a
    # session, are set aside; the rest of their batch is written.
    await store.enqueue_turn("conv-0", "user", "intruder", session_id=sessions[1].id)
    await store.enqueue_turn("nowhere", "user", "lost")
    await store.enqueue_turn("conv-1", "user", "fine", session_id=sessions[1].id)
    await store.flush()
    reasons = sorted(f.reason for f in store.failed_writes())
    assert len(reasons) == 2
    assert _contents(await store.messages.history(ContinuationId("conv-1")))[-1] == "fine"


async def test_deleting_a_session_takes_a_turn_that_waited_for_it(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection, placed: Placed
) -> None:
    s = await store.sessions.create("alice")
    await store.add_turn("chat", "user", "before", session_id=s.id)
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", s.id)
        turn = asyncio.create_task(other.add_turn("chat", "user", "racing", session_id=s.id))
        deleting = asyncio.create_task(store.sessions.delete(s.id))
        await wait_for_waiters(placed, 2)
    await deleting
    with pytest.raises(NotFoundError):
        await turn
    assert not await conn.fetchval("SELECT count(*) FROM messages WHERE session_id = $1", s.id)
    assert not await conn.fetchval("SELECT count(*) FROM conversations WHERE session_id = $1", s.id)


async def test_purge_user_deletes_every_session_of_the_user(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    keep = await store.sessions.create("bob")
    await store.add_turn("bob-chat", "user", "stays", session_id=keep.id)
    for n in range(5):
        s = await store.sessions.create("alice")
        for m in range(3):
            await store.add_turn(f"alice-{n}", "user", f"m{m}", session_id=s.id)
    counts = await store.purge_user("alice", batch_size=2)
    assert (counts.sessions, counts.conversations, counts.messages) == (5, 5, 15)
    assert not await conn.fetchval("SELECT count(*) FROM sessions WHERE user_id = 'alice'")
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1


async def test_compaction_and_forks_stay_in_the_session(store: SessionStore) -> None:
    s = await store.sessions.create("alice")
    for n in range(1, 6):
        await store.add_turn("long", "user", f"m{n}", session_id=s.id, tokens=1)
    summary = await store.messages.compact(ContinuationId("long"), through_seq=3, summary="S")
    assert summary.covers_through == 3
    assert _contents(await store.messages.history(ContinuationId("long"))) == ["S", "m4", "m5"]
    turn = await store.add_turn("long", "user", "m7", session_id=s.id, context=10)
    assert _contents(turn.context or []) == ["S", "m4", "m5", "m7"]
    fork = await store.conversations.fork(
        ContinuationId("long"), continuation_id="branch", session_id=s.id, through_seq=6
    )
    assert fork.forked_at_seq == 6
    assert fork.session_id == s.id
    assert _contents(await store.messages.history(ContinuationId("branch"))) == ["S", "m4", "m5"]
    again = await store.conversations.fork(
        ContinuationId("long"), continuation_id="branch", session_id=s.id, through_seq=6
    )
    assert again.id == fork.id  # a resend
    other_session = await store.sessions.create("bob")
    with pytest.raises(NotFoundError):  # another session's source reads as missing
        await store.conversations.fork(
            ContinuationId("long"), continuation_id="x", session_id=other_session.id
        )
    with pytest.raises(InvalidInputError, match=r"^session_id"):
        await store.conversations.fork(ContinuationId("long"), continuation_id="y")


async def test_messages_pop_clear_and_appends(store: SessionStore) -> None:
    s = await store.sessions.create("alice")
    c = await store.conversations.get_or_create("plain", session_id=s.id)
    await store.messages.add(ContinuationId("plain"), "user", "a")
    await store.messages.add_many(c.id, [("assistant", "b"), ("user", "c")])
    await store.messages.add_many(ContinuationId("plain"), [("user", "d")], session_id=s.id)
    assert _contents(await store.messages.history(c.id)) == ["a", "b", "c", "d"]
    popped = await store.messages.pop(ContinuationId("plain"))
    assert popped is not None
    assert popped.content == "d"
    assert await store.messages.clear(c.id) == 3
    assert (await store.messages.add(c.id, "user", "again")).seq == 1


async def test_what_the_layout_refuses_says_so(store: SessionStore) -> None:
    with pytest.raises(InvalidInputError, match=r"^session_id: .*placed by its session"):
        await store.add_turn("orphan", "user", "no session")
    with pytest.raises(InvalidInputError, match=r"^session_id"):
        await store.conversations.get_or_create("orphan")
    with pytest.raises(InvalidStateError, match="as_user is not available"):
        await store.as_user("alice").sessions.list(user_id="alice")
    with pytest.raises(InvalidStateError, match="prune is not yet available"):
        await store.prune(keep_last=1)


async def test_expired_sessions_go_with_their_conversations(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("alice")
    await store.add_turn("chat", "user", "x", session_id=s.id)
    await conn.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1", s.id
    )
    assert await store.sessions.count_expired() == 1
    assert await store.sessions.cleanup_expired() == 1
    assert not await conn.fetchval("SELECT count(*) FROM conversations")


async def test_a_batch_meeting_a_deleted_conversation_places_it_again(
    store: SessionStore, other: SessionStore
) -> None:
    s = await store.sessions.create("alice")
    await store.enqueue_turn("batch", "user", "one", session_id=s.id)
    await store.flush()  # the writer now remembers where "batch" lives
    await other.conversations.delete(ContinuationId("batch"))
    await store.enqueue_turn("batch", "user", "two", session_id=s.id)
    await store.flush()
    assert store.failed_writes() == []
    history = await store.messages.history(ContinuationId("batch"))
    assert [(m.seq, m.content) for m in history] == [(1, "two")]


async def test_a_batch_larger_than_one_insert_keeps_every_turn_in_order(
    placed: Placed,
) -> None:
    async with sessionstore.connect(
        placed.dsn, max_delay=3600.0, batch_size=10_000, **store_overrides()
    ) as store:
        s = await store.sessions.create("alice")
        for n in range(1_500):  # more than one placed insert carries (1,000)
            await store.enqueue_turn("long", "user", f"m{n}", session_id=s.id, tokens=1)
        await store.flush()
        assert store.failed_writes() == []
        latest = await store.messages.history(ContinuationId("long"), limit=1_000)
        earliest = await store.messages.history(ContinuationId("long"), limit=1_000, before=501)
        assert [m.seq for m in earliest + latest] == list(range(1, 1_501))
        assert [m.content for m in latest[-2:]] == ["m1498", "m1499"]
        session = await store.sessions.get(s.id)
        assert (session.turn_count, session.total_tokens) == (1_500, 1_500)


async def test_messages_are_sealed_and_the_key_goes_with_the_user(
    placed: Placed, conn: asyncpg.Connection
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    async with sessionstore.connect(placed.dsn, encryption_key=key, **store_overrides()) as store:
        s = await store.sessions.create("alice")
        await store.add_turn("secret", "user", "the plan", session_id=s.id)
        await store.enqueue_turn("secret", "assistant", "noted", session_id=s.id)
        await store.flush()
        await store.messages.add(ContinuationId("secret"), "user", "more")
        history = await store.messages.history(ContinuationId("secret"))
        assert _contents(history) == ["the plan", "noted", "more"]
        clear = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE content_sealed IS NULL OR content <> ''"
        )
        assert clear == 0
        fork = await store.conversations.fork(
            ContinuationId("secret"), continuation_id="secret-fork", session_id=s.id
        )
        copies = await store.messages.history(fork.id)  # sealed again for their own ids
        assert _contents(copies) == ["the plan", "noted", "more"]
        with pytest.raises(InvalidStateError, match="encrypt before distributing"):
            await store.encrypt_stored()
        await store.purge_user("alice")
        assert not await conn.fetchval(
            "SELECT count(*) FROM sessionstore_private.keys WHERE user_id = 'alice'"
        )
