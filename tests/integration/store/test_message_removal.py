"""``messages.pop`` and ``messages.clear`` (what framework sessions need to undo and
forget), and ``messages.add_many(..., session_id=...)``: several messages as one turn."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import asyncpg
import pytest

from sessionstore import (
    ConflictError,
    ContinuationId,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    SessionExpiredError,
    SessionStore,
)

from ...helpers import expire, row_counts

CONSISTENT = """
SELECT c.message_count = count(m.id) AND c.total_tokens = coalesce(sum(m.tokens), 0)
       AND c.message_count = coalesce(max(m.seq), 0)
       AND c.last_message_at IS NOT DISTINCT FROM max(m.created_at)
FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
WHERE c.continuation_id = $1
GROUP BY c.id
"""


async def test_pop_returns_the_latest_and_the_next_append_takes_its_seq(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    ref = ContinuationId("pop-1")
    await store.add_turn("pop-1", "user", "a", tokens=3)
    await store.messages.add(ref, "assistant", "b", tokens=5)
    popped = await store.messages.pop(ref)
    assert popped is not None
    assert (popped.seq, popped.content, popped.tokens) == (2, "b", 5)
    c = await store.conversations.get(ref)
    assert (c.message_count, c.total_tokens) == (1, 3)
    assert await conn.fetchval(CONSISTENT, "pop-1")
    again = await store.messages.add(ref, "assistant", "c")
    assert again.seq == 2
    assert [m.content for m in await store.messages.history(ref)] == ["a", "c"]


async def test_pop_of_an_empty_conversation_is_none_and_changes_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    c = await store.conversations.get_or_create("pop-empty")
    before = await row_counts(conn)
    assert await store.messages.pop(c.id) is None
    assert await row_counts(conn) == before
    assert (await store.conversations.get(c.id)).message_count == 0


async def test_clear_keeps_the_conversation_and_restarts_numbering(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    ref = ContinuationId("clear-1")
    await store.add_turn("clear-1", "user", "a", tokens=1)
    await store.messages.add_many(ref, [("assistant", "b", None, 2), ("user", "c")])
    assert await store.messages.clear(ref) == 3
    c = await store.conversations.get(ref)
    assert (c.message_count, c.total_tokens, c.last_message_at) == (0, 0, None)
    assert await store.messages.history(ref) == []
    assert (await store.messages.add(ref, "user", "again")).seq == 1
    assert await conn.fetchval(CONSISTENT, "clear-1")
    assert await store.messages.clear(ref) == 1


@pytest.mark.parametrize("method", ["pop", "clear"])
async def test_removal_from_a_missing_conversation_is_not_found(
    store: SessionStore, method: str
) -> None:
    with pytest.raises(NotFoundError, match="continuation_id 'nowhere'"):
        await getattr(store.messages, method)(ContinuationId("nowhere"))
    with pytest.raises(NotFoundError):
        await getattr(store.messages, method)(uuid4())
    with pytest.raises(InvalidInputError) as caught:
        await getattr(store.messages, method)("not-a-uuid")
    assert caught.value.field == "conversation_id"


async def test_pops_racing_appends_keep_numbers_gapless_and_counters_true(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """The conversation is locked before the latest message is read: a pop never
    misses an append that committed while it waited, and never lowers the count
    without removing a row."""
    ref = ContinuationId("race-1")
    await store.add_turn("race-1", "user", "seed", tokens=1)

    async def append(i: int) -> None:
        await store.messages.add(ref, "user", f"m{i}", tokens=1)

    async def pop() -> None:
        await store.messages.pop(ref)

    work = [append(i) for i in range(40)] + [pop() for _ in range(20)]
    await asyncio.gather(*work)
    assert await conn.fetchval(CONSISTENT, "race-1")
    seqs = [m.seq for m in await store.messages.history(ref, limit=100)]
    assert seqs == list(range(1, 22))  # 1 seed + 40 appended - 20 popped


async def test_pop_after_write_behind_removes_the_latest_accepted(store: SessionStore) -> None:
    ref = ContinuationId("wb-pop")
    await store.add_turn("wb-pop", "user", "a")
    await store.messages.enqueue(ref, "assistant", "queued")
    popped = await store.messages.pop(ref)
    assert popped is not None
    assert popped.content == "queued"
    await store.messages.enqueue(ref, "assistant", "queued-2")
    assert await store.messages.clear(ref) == 2
    await store.flush()
    assert await store.messages.history(ref) == []  # nothing landed after the clear


async def test_add_many_in_a_session_is_one_turn(store: SessionStore) -> None:
    s = await store.sessions.create("u1")
    c = await store.conversations.get_or_create("many-1")
    ms = await store.messages.add_many(
        ContinuationId("many-1"),
        [("user", "q", None, 4), ("assistant", "a", {"k": 1}, 6)],
        session_id=s.id,
    )
    assert [m.seq for m in ms] == [1, 2]
    after = await store.sessions.get(s.id)
    assert (after.turn_count, after.total_tokens) == (1, 10)
    assert (await store.conversations.get(c.id)).session_id == s.id  # bound by the turn


async def test_add_many_in_a_session_refuses_without_writing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    mine = await store.sessions.create("u1")
    other = await store.sessions.create("u2")
    await store.conversations.get_or_create("owned", session_id=mine.id)
    ref = ContinuationId("owned")
    done = await store.sessions.create("u1")
    await store.sessions.complete(done.id)
    gone = await store.sessions.create("u1")
    await expire(conn, gone.id)
    before = await row_counts(conn)
    with pytest.raises(ConflictError, match="belongs to another session"):
        await store.messages.add_many(ref, [("user", "x")], session_id=other.id)
    with pytest.raises(InvalidStateError):
        await store.messages.add_many(ref, [("user", "x")], session_id=done.id)
    with pytest.raises(SessionExpiredError):
        await store.messages.add_many(ref, [("user", "x")], session_id=gone.id)
    with pytest.raises(NotFoundError, match="session"):
        await store.messages.add_many(ref, [("user", "x")], session_id=uuid4())
    with pytest.raises(NotFoundError, match="continuation_id 'absent'"):
        await store.messages.add_many(ContinuationId("absent"), [("user", "x")], session_id=mine.id)
    with pytest.raises(InvalidInputError) as caught:
        await store.messages.add_many(ref, [("user", "x")], session_id="nope")
    assert caught.value.field == "session_id"
    counts = await row_counts(conn)
    assert {k: counts[k] for k in ("messages", "conversations")} == {
        k: before[k] for k in ("messages", "conversations")
    }
    for s in (mine, other, done):
        assert (await store.sessions.get(s.id)).turn_count == 0


async def test_add_many_meeting_a_conversation_created_meanwhile_is_no_conflict(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """An append that waited for the session's lock while another turn created the
    conversation does not see it in its snapshot; it is sent again, not refused as
    someone else's (the race was a false ConflictError in 88 of 400 tries)."""
    s = await store.sessions.create("u1")
    outcomes: list[str] = []
    for i in range(30):
        cont = f"meanwhile-{i}"

        async def append(cont: str = cont) -> None:
            try:
                await store.messages.add_many(
                    ContinuationId(cont), [("assistant", "b")], session_id=s.id
                )
                outcomes.append("added")
            except NotFoundError:  # sent before the conversation existed
                outcomes.append("not yet")

        await asyncio.gather(*(store.add_turn(cont, "user", "a", session_id=s.id), append()))
        assert await conn.fetchval(CONSISTENT, cont)
    assert "added" in outcomes
