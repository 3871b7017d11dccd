"""The distributed layout under races: two stores on one continuation id, deletes racing
turns, resends, write-behind batches and counters (keyed layout on PostgreSQL, and Citus)."""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID

import asyncpg
import pytest

from sessionstore import ConflictError, ContinuationId, NotFoundError, SessionStore

from .conftest import Placed, wait_for_waiters


async def _consistent(conn: asyncpg.Connection) -> None:
    """Message counters equal rows; seqs are 1..n per conversation; every conversation has a
    route naming it, and no two conversations share a continuation id."""
    rows = await conn.fetch(
        "SELECT c.id, c.continuation_id, c.message_count,"
        " (SELECT count(*) FROM messages m WHERE m.session_id = c.session_id"
        "  AND m.conversation_id = c.id) AS n,"
        " (SELECT array_agg(seq ORDER BY seq) FROM messages m WHERE m.session_id = c.session_id"
        "  AND m.conversation_id = c.id) AS seqs"
        " FROM conversations c"
    )
    for r in rows:
        assert r["message_count"] == r["n"], dict(r)
        assert list(r["seqs"] or []) == list(range(1, r["n"] + 1)), dict(r)
    conts = [r["continuation_id"] for r in rows]
    assert len(conts) == len(set(conts)), conts
    for r in rows:
        route = await conn.fetchrow(
            "SELECT session_id, conversation_id FROM continuations WHERE continuation_id = $1",
            r["continuation_id"],
        )
        assert route is not None, dict(r)
        assert route["conversation_id"] == r["id"], (dict(r), route)
    ids = await conn.fetchval("SELECT count(*) - count(DISTINCT id) FROM messages")
    assert ids == 0, "message ids are not unique"


_ID = UUID("01a25200-0000-7000-8000-0000000000aa")


# -- resends ---------------------------------------------------------------------------


async def test_a_message_id_is_unique_within_its_session(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    """On the distributed layout the primary key leads with the session (docs/scaling.md):
    a message id another session reuses names a message of its own there. Neither
    session's message is changed, and each session's resend finds its own."""
    a = await store.sessions.create("alice")
    b = await other.sessions.create("bob")
    first = await store.add_turn("a-chat", "user", "hi", session_id=a.id, message_id=_ID)
    second = await other.add_turn("b-chat", "user", "yo", session_id=b.id, message_id=_ID)
    assert (first.message.content, second.message.content) == ("hi", "yo")
    again = await store.add_turn("a-chat", "user", "hi", session_id=a.id, message_id=_ID)
    assert again.message.content == "hi"
    assert again.conversation.session_id == a.id
    with pytest.raises(ConflictError):  # within a session it is still one message's id
        await store.add_turn("a-chat", "user", "other", session_id=a.id, message_id=_ID)
    rows = await conn.fetch("SELECT session_id, content FROM messages WHERE id = $1", _ID)
    assert sorted(r["content"] for r in rows) == ["hi", "yo"]


async def test_concurrent_resends_behind_a_lock_write_once(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection, placed: Placed
) -> None:
    s = await store.sessions.create("alice")
    await store.add_turn("chat", "user", "first", session_id=s.id)
    await other.add_turn("chat", "user", "second", session_id=s.id)  # other remembers it
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", s.id)
        one = asyncio.create_task(
            store.add_turn("chat", "user", "again", session_id=s.id, message_id=_ID)
        )
        two = asyncio.create_task(
            other.add_turn("chat", "user", "again", session_id=s.id, message_id=_ID)
        )
        await wait_for_waiters(placed, 2)
    first, second = await one, await two
    assert first.message.id == second.message.id == _ID
    assert first.message.seq == second.message.seq == 3
    # Same id, other content: refused, nothing written.
    with pytest.raises(ConflictError):
        await other.add_turn("chat", "user", "changed", session_id=s.id, message_id=_ID)
    assert (await store.sessions.get(s.id)).turn_count == 3
    await _consistent(conn)


# -- refusals: the session's error first ------------------------------------------------


async def test_a_deleted_session_s_turn_on_another_s_conversation_is_not_found(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    """ "When both refuse, the session's error is raised" (add_turn's contract, and what
    one PostgreSQL does): a deleted session's turn is NotFoundError, not ConflictError."""
    a = await store.sessions.create("alice")
    gone = await other.sessions.create("bob")
    await store.add_turn("shared", "user", "mine", session_id=a.id)
    await other.sessions.delete(gone.id)
    with pytest.raises(NotFoundError):
        await other.add_turn("shared", "user", "late", session_id=gone.id)
    await _consistent(conn)


# -- write-behind ----------------------------------------------------------------------


async def test_a_batch_reply_without_session_after_its_first_turn_in_the_batch(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """One PostgreSQL places a conversation in the first session the batch names: a
    reply queued without session_id after the turn that creates the conversation is
    written. Here it is set aside ("needs a session"), order-dependently."""
    s = await store.sessions.create("alice")
    await store.enqueue_turn("fresh", "user", "hello", session_id=s.id)
    await store.enqueue_turn("fresh", "assistant", "hi there")
    await store.flush()
    assert [f.reason for f in store.failed_writes()] == []
    history = await store.messages.history(ContinuationId("fresh"))
    assert [m.content for m in history] == ["hello", "hi there"]
    await _consistent(conn)


async def test_a_batch_turn_without_session_follows_a_taken_over_route(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    """Another process deleted the session and a new session took the continuation id
    over: a batch turn without session_id must go to the conversation that holds the id
    now (as add_turn does), not be refused because this process's route is stale."""
    a = await store.sessions.create("alice")
    await store.enqueue_turn("moved", "user", "old", session_id=a.id)
    await store.flush()  # the writer remembers "moved" in a
    await other.sessions.delete(a.id)
    b = await other.sessions.create("bob")
    await other.add_turn("moved", "user", "new", session_id=b.id)
    await store.enqueue_turn("moved", "assistant", "reply")
    await store.flush()
    assert [f.reason for f in store.failed_writes()] == []
    history = await other.messages.history(ContinuationId("moved"))
    assert [m.content for m in history] == ["new", "reply"]
    await _consistent(conn)


async def test_a_batch_turn_without_session_whose_session_was_deleted_is_refused_alone(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    """The process remembers the conversation in a session another process deleted: a
    batch turn without session_id has no conversation to go to and is set aside with
    that reason; the batch's other turns are written."""
    a = await store.sessions.create("alice")
    keep = await store.sessions.create("carol")
    await store.enqueue_turn("doomed", "user", "old", session_id=a.id)
    await store.flush()  # the writer remembers "doomed" in a
    await other.sessions.delete(a.id)
    await store.enqueue_turn("doomed", "assistant", "reply")
    await store.enqueue_turn("kept", "user", "fine", session_id=keep.id)
    await store.flush()
    failed = store.failed_writes()
    assert len(failed) == 1, [f.reason for f in failed]
    # A refusal with its reason, not a foreign-key violation found by bisecting the batch.
    assert "SQLSTATE" not in failed[0].reason, failed[0].reason
    assert [m.content for m in await store.messages.history(ContinuationId("kept"))] == ["fine"]
    assert not await conn.fetchval("SELECT count(*) FROM conversations WHERE session_id = $1", a.id)
    await _consistent(conn)


async def test_a_batch_mixing_sessions_refusals_and_bare_turns(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    a = await store.sessions.create("alice")
    b = await store.sessions.create("bob")
    await store.add_turn("a-chat", "user", "a1", session_id=a.id)
    await other.add_turn("b-chat", "user", "b1", session_id=b.id)
    await store.enqueue_turn("a-chat", "assistant", "a2")
    await store.enqueue_turn("b-chat", "assistant", "b2")  # store has not seen b-chat
    await store.enqueue_turn("a-chat", "user", "intruder", session_id=b.id)
    await store.enqueue_turn("a-chat", "user", "a3", session_id=a.id)
    await store.enqueue_turn("b-chat", "user", "b3", session_id=b.id)
    await store.flush()
    assert len(store.failed_writes()) == 1
    assert [m.content for m in await store.messages.history(ContinuationId("a-chat"))] == [
        "a1",
        "a2",
        "a3",
    ]
    assert [m.content for m in await store.messages.history(ContinuationId("b-chat"))] == [
        "b1",
        "b2",
        "b3",
    ]
    assert (await store.sessions.get(a.id)).turn_count == 2  # a1, a3 (a2 had no session)
    msgs = await conn.fetchval("SELECT count(*) FROM messages WHERE session_id = $1", a.id)
    assert msgs == 3


# -- concurrency -----------------------------------------------------------------------


async def test_concurrent_turns_from_two_stores_are_numbered_exactly(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("alice")
    await store.add_turn("busy", "user", "m0", session_id=s.id, tokens=1)
    n = 20
    turns = await asyncio.gather(
        *(
            (store if k % 2 else other).add_turn(
                "busy", "user", f"m{k}", session_id=s.id if k % 4 else None, tokens=1
            )
            for k in range(1, n + 1)
        )
    )
    assert sorted(t.message.seq for t in turns) == list(range(2, n + 2))
    assert await store.messages.count(ContinuationId("busy")) == n + 1
    session = await store.sessions.get(s.id)
    assert session.turn_count == 1 + sum(1 for k in range(1, n + 1) if k % 4)
    await _consistent(conn)


async def test_concurrent_first_turns_of_one_session_from_two_stores(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("alice")
    turns = await asyncio.gather(
        *(
            (store if k % 2 else other).add_turn(f"new-{k % 3}", "user", f"m{k}", session_id=s.id)
            for k in range(12)
        )
    )
    assert len({t.conversation.id for t in turns}) == 3
    await _consistent(conn)


async def test_concurrent_first_turns_of_two_sessions_take_one_owner(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    sessions = [await store.sessions.create(f"u{k}") for k in range(4)]
    results = await asyncio.gather(
        *(
            (store if k % 2 else other).add_turn("contested", "user", f"m{k}", session_id=s.id)
            for k, s in enumerate(sessions * 3)
        ),
        return_exceptions=True,
    )
    owners = {r.conversation.session_id for r in results if not isinstance(r, BaseException)}
    assert len(owners) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    await _consistent(conn)


async def test_a_conversation_delete_racing_a_first_turn_of_another_process(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection, placed: Placed
) -> None:
    """The delete (conversation row, then its route) and the other process's turn
    (route, then session, then conversation) both wait for the conversation's row: both
    must complete, and the route must name the conversation that is left."""
    s = await store.sessions.create("alice")
    await store.add_turn("c", "user", "one", session_id=s.id)
    async with conn.transaction():
        await conn.execute(
            "SELECT 1 FROM conversations WHERE session_id = $1 AND continuation_id = 'c'"
            " FOR UPDATE",
            s.id,
        )
        deleting = asyncio.create_task(store.conversations.delete(ContinuationId("c")))
        await wait_for_waiters(placed, 1)
        turn = asyncio.create_task(other.add_turn("c", "user", "two", session_id=s.id))
        await wait_for_waiters(placed, 2)
    outcome = await asyncio.gather(deleting, turn, return_exceptions=True)
    assert not any(isinstance(r, BaseException) for r in outcome), outcome
    await _consistent(conn)


async def test_a_session_delete_racing_a_take_over(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection, placed: Placed
) -> None:
    a = await store.sessions.create("alice")
    b = await other.sessions.create("bob")
    await store.add_turn("c", "user", "one", session_id=a.id)
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", a.id)
        deleting = asyncio.create_task(store.sessions.delete(a.id))
        await wait_for_waiters(placed, 1)
        taking = asyncio.create_task(other.add_turn("c", "user", "b", session_id=b.id))
        # The take-over finds a's conversation still there (its delete waits): refused.
        with pytest.raises(ConflictError):
            await taking
    await deleting
    turn = await other.add_turn("c", "user", "b", session_id=b.id)
    assert turn.message.seq == 1
    assert turn.conversation.session_id == b.id
    # The process that deleted still remembers a's place: it must find b's.
    assert [m.content for m in await store.messages.history(ContinuationId("c"))] == ["b"]
    await _consistent(conn)


async def test_purge_user_while_turns_run(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    sessions = [await store.sessions.create("alice") for _ in range(3)]
    keep = await store.sessions.create("bob")
    for k, s in enumerate(sessions):
        await store.add_turn(f"a{k}", "user", "x", session_id=s.id)

    async def chatter() -> None:
        for r in range(5):
            for k, s in enumerate(sessions):
                with contextlib.suppress(NotFoundError):
                    await other.add_turn(f"a{k}", "user", f"r{r}", session_id=s.id)
            await other.add_turn("b", "user", f"r{r}", session_id=keep.id)

    await asyncio.gather(chatter(), store.purge_user("alice", batch_size=1))
    assert not await conn.fetchval("SELECT count(*) FROM sessions WHERE user_id = 'alice'")
    assert not await conn.fetchval(
        "SELECT count(*) FROM conversations WHERE session_id <> $1", keep.id
    )
    assert not await conn.fetchval("SELECT count(*) FROM messages WHERE session_id <> $1", keep.id)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 5


async def test_context_is_the_stored_order_with_queued_replies_and_another_process(
    store: SessionStore, other: SessionStore
) -> None:
    a = await store.sessions.create("alice")
    await store.add_turn("ctx", "user", "u1", session_id=a.id)
    await store.enqueue_turn("ctx", "assistant", "a1", session_id=a.id)
    await other.add_turn("ctx", "user", "u2", session_id=a.id)  # another process's turn
    await store.enqueue_turn("ctx", "assistant", "a2")
    turn = await store.add_turn("ctx", "user", "u3", session_id=a.id, context=10)
    await store.flush()
    history = await store.messages.history(ContinuationId("ctx"))
    assert [m.content for m in turn.context or []] == [m.content for m in history]
    assert [m.seq for m in history] == [1, 2, 3, 4, 5]
    assert sorted(m.content for m in history) == ["a1", "a2", "u1", "u2", "u3"]
    short = await other.add_turn("ctx", "user", "u4", session_id=a.id, context=2)
    assert [m.content for m in short.context or []] == [history[-1].content, "u4"]


async def test_a_turn_without_session_of_an_existing_conversation(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    """The docs: "an existing conversation may still be named by its continuation id
    alone" -- the chat loop's reply, added directly without session_id."""
    a = await store.sessions.create("alice")
    await store.add_turn("plain", "user", "hi", session_id=a.id)
    reply = await store.add_turn("plain", "assistant", "hello")
    assert reply.message.seq == 2
    again = await other.add_turn("plain", "assistant", "more", context=5)
    assert [m.content for m in again.context or []] == ["hi", "hello", "more"]
    assert (await store.sessions.get(a.id)).turn_count == 1
    await _consistent(conn)


async def test_a_turn_without_session_follows_a_taken_over_route(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    a = await store.sessions.create("alice")
    await store.add_turn("moved", "user", "old", session_id=a.id)
    await other.sessions.delete(a.id)
    b = await other.sessions.create("bob")
    await other.add_turn("moved", "user", "new", session_id=b.id)
    turn = await store.add_turn("moved", "assistant", "reply")
    assert turn.conversation.session_id == b.id
    assert turn.message.seq == 2
    await _consistent(conn)


async def test_a_batch_and_direct_turns_of_two_stores_interleave_exactly(
    store: SessionStore, other: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("alice")
    await other.add_turn("mix", "user", "start", session_id=s.id)

    async def direct() -> None:
        for k in range(10):
            await other.add_turn("mix", "user", f"d{k}", session_id=s.id if k % 2 else None)

    async def queued() -> None:
        for k in range(10):
            await store.enqueue_turn(
                "mix", "assistant", f"q{k}", session_id=s.id if k % 2 else None
            )
            if k % 3 == 0:
                await store.add_turn("mix", "user", f"s{k}", session_id=s.id)
        await store.flush()

    await asyncio.gather(direct(), queued())
    assert store.failed_writes() == []
    assert await store.messages.count(ContinuationId("mix")) == 1 + 10 + 10 + 4
    # Turns without session_id are not counted on the session.
    assert (await store.sessions.get(s.id)).turn_count == 1 + 5 + 5 + 4
    await _consistent(conn)
