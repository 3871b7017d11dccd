"""The chat loop: a conversation named by its continuation id everywhere, and a turn
that returns its context in the same round trip (issue 14, items 1 and 2)."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    ContinuationId,
    InvalidInputError,
    NotFoundError,
    SessionStore,
)

from ...conftest import store_overrides
from ...helpers import row_counts


async def test_every_conversation_method_takes_a_continuation_id(store: SessionStore) -> None:
    turn = await store.add_turn("cont-a", "user", "one")
    ref = ContinuationId("cont-a")
    await store.messages.add(ref, "assistant", "two", tokens=3)
    await store.messages.add_many(ref, [("user", "three"), ("assistant", "four")])
    assert [m.content for m in await store.messages.history(ref)] == ["one", "two", "three", "four"]
    assert [m.seq for m in await store.messages.history(ref, limit=2, before=4)] == [2, 3]
    assert await store.messages.count(ref) == 4
    assert (await store.conversations.get(ref)).id == turn.conversation.id
    await store.messages.enqueue(ref, "user", "five")
    store.messages.enqueue_nowait(ref, "assistant", "six")
    await store.flush()
    assert await store.messages.count(turn.conversation.id) == 6
    await store.conversations.delete(ref)
    with pytest.raises(NotFoundError, match="continuation_id 'cont-a'"):
        await store.messages.history(ref)


async def test_a_plain_string_is_never_taken_for_a_continuation_id(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """A client that names another conversation's UUID as its continuation id must not
    reach that conversation, and a UUID string stays a UUID."""
    victim = (await store.add_turn("victim", "user", "private")).conversation
    attacker = await store.add_turn(str(victim.id), "user", "mine")
    by_continuation = await store.messages.history(ContinuationId(str(victim.id)))
    assert [m.content for m in by_continuation] == ["mine"]
    assert by_continuation[0].conversation_id == attacker.conversation.id
    by_id = await store.messages.history(str(victim.id))
    assert [m.content for m in by_id] == ["private"]
    with pytest.raises(InvalidInputError) as info:
        await store.messages.history("victim")  # a continuation id, but not marked as one
    assert info.value.field == "conversation_id"
    assert (await row_counts(conn))["messages"] == 2


async def test_enqueue_by_continuation_id_to_a_missing_conversation_is_set_aside(
    store: SessionStore,
) -> None:
    mid = await store.messages.enqueue(ContinuationId("nowhere"), "user", "lost?")
    await store.flush()
    (failed,) = store.failed_writes()
    assert (failed.id, failed.continuation_id) == (mid, "nowhere")
    with pytest.raises(NotFoundError):
        await store.messages.count(ContinuationId("nowhere"))


async def test_add_turn_returns_its_context_oldest_first(store: SessionStore) -> None:
    s = await store.sessions.create("u")
    first = await store.add_turn("ctx", "user", "m1", session_id=s.id, context=3)
    assert first.context is not None
    assert [m.content for m in first.context] == ["m1"]
    for n in range(2, 6):
        turn = await store.add_turn("ctx", "user", f"m{n}", session_id=s.id, context=3)
    assert turn.context is not None
    assert [m.content for m in turn.context] == ["m3", "m4", "m5"]
    assert turn.context[-1] == turn.message
    assert turn.context == await store.messages.history(ContinuationId("ctx"), limit=3)
    plain = await store.add_turn("ctx", "user", "m6", session_id=s.id)
    assert plain.context is None


async def test_a_resent_turn_returns_the_context_it_had(store: SessionStore) -> None:
    mid = UUID("0190a5c4-0000-7000-8000-000000000001")
    await store.add_turn("resend", "user", "a")
    sent = await store.add_turn("resend", "user", "b", message_id=mid, context=5)
    await store.add_turn("resend", "user", "c")
    again = await store.add_turn("resend", "user", "b", message_id=mid, context=5)
    assert again.context == sent.context
    assert again.context is not None
    assert [m.content for m in again.context] == ["a", "b"]


@pytest.mark.parametrize("context", [0, 1001, True, "20"])
async def test_context_out_of_range_is_refused(
    store: SessionStore, conn: asyncpg.Connection, context: object
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await store.add_turn("x", "user", "y", context=context)  # type: ignore[arg-type]
    assert info.value.field == "context"
    assert (await row_counts(conn))["messages"] == 0


async def test_add_turn_with_context_is_one_round_trip(dsn: str) -> None:
    queries: list[str] = []

    async def configure(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda record: queries.append(record.query))

    async with sessionstore.connect(dsn, configure=configure, **store_overrides()) as store:
        s = await store.sessions.create("u1")
        await store.add_turn("rt", "user", "warm-up", session_id=s.id, context=20)
        queries.clear()
        turn = await store.add_turn("rt", "user", "x", session_id=s.id, tokens=1, context=20)
        assert len(queries) == 1
        assert "INSERT INTO messages" in queries[0]
        assert turn.context is not None
        assert [m.content for m in turn.context] == ["warm-up", "x"]
        queries.clear()
        await store.messages.history(ContinuationId("rt"), limit=20)
        await store.messages.count(ContinuationId("rt"))
        assert len(queries) == 2


async def test_concurrent_turns_each_see_a_gapless_context(store: SessionStore) -> None:
    """Appends committed between a turn's snapshot and its lock are in its context."""

    async def chat(client: int) -> list[list[int]]:
        seen = []
        for n in range(25):
            turn = await store.add_turn("busy", "user", f"{client}-{n}", context=5)
            assert turn.context is not None
            seen.append([m.seq for m in turn.context])
        return seen

    for contexts in await asyncio.gather(*(chat(c) for c in range(4))):
        for seqs in contexts:
            assert seqs == list(range(max(seqs[-1] - 4, 1), seqs[-1] + 1))
    assert await store.messages.count(ContinuationId("busy")) == 100


async def test_history_reads_this_process_s_queued_messages_in_final_order(
    slow_writer: SessionStore, conn: asyncpg.Connection
) -> None:
    store = slow_writer
    await store.add_turn("ryw", "user", "stored-1")
    conversation = await store.conversations.get(ContinuationId("ryw"))

    async def producer(name: str) -> None:
        for n in range(5):
            if n % 2:
                await store.messages.enqueue(conversation.id, "assistant", f"{name}{n}")
            else:
                await store.enqueue_turn("ryw", "user", f"{name}{n}")

    await asyncio.gather(producer("a"), producer("b"))
    # Some may be durable already (a batch holds one kind, so alternating kinds end
    # batches early); the rest are queued. The read shows all, as they will be stored.
    queued = store.stats().queued + store.stats().in_flight
    assert queued > 0
    before = await store.messages.history(ContinuationId("ryw"), limit=50)
    assert [m.seq for m in before] == list(range(1, 12))
    assert await store.messages.history(conversation.id, limit=3) == before[-3:]
    assert await store.messages.history(conversation.id, limit=2, before=3) == before[:2]
    await store.flush()
    after = await store.messages.history(ContinuationId("ryw"), limit=50)
    assert [(m.id, m.seq, m.content) for m in after] == [(m.id, m.seq, m.content) for m in before]


async def test_enqueue_turn_then_history_needs_no_get_or_create(
    slow_writer: SessionStore,
) -> None:
    store = slow_writer
    mid = await slow_writer.enqueue_turn("brand-new", "user", "first")
    history = await store.messages.history(ContinuationId("brand-new"))
    assert [(m.id, m.seq, m.content) for m in history] == [(mid, 1, "first")]


async def test_add_turn_writes_the_queued_message_first_and_its_context_holds_it(
    slow_writer: SessionStore,
) -> None:
    """A message queued for the conversation before a direct turn is written by that
    turn's statement, before it (issue 27, item 3: it used to land after the turn, and
    the context missed it)."""
    store = slow_writer
    await store.add_turn("mixed", "user", "one")
    queued = await store.enqueue_turn("mixed", "assistant", "two (queued)")
    turn = await store.add_turn("mixed", "user", "three", context=5)
    assert turn.context is not None
    assert [(m.seq, m.content) for m in turn.context] == [
        (1, "one"),
        (2, "two (queued)"),
        (3, "three"),
    ]
    assert turn.context[1].id == queued
    await store.flush()
    stored = await store.messages.history(ContinuationId("mixed"))
    assert [(m.seq, m.content) for m in stored] == [(1, "one"), (2, "two (queued)"), (3, "three")]


async def test_reads_during_writes_never_lose_an_accepted_message(store: SessionStore) -> None:
    """Reads by the other key than the one messages were queued under, while the writer
    writes them: each read holds every message accepted before it, once, numbered
    1, 2, … (a message judged by a second snapshot could once show in neither list)."""
    await store.add_turn("race", "user", "first")
    conversation = await store.conversations.get(ContinuationId("race"))
    accepted: list[UUID] = []

    async def produce() -> None:
        for n in range(150):
            accepted.append(await store.enqueue_turn("race", "user", f"m{n}"))
            if n % 10 == 0:
                await asyncio.sleep(0)  # let the writer and the reader interleave

    async def read() -> None:
        while len(accepted) < 150:
            before = set(accepted)
            history = await store.messages.history(conversation.id, limit=1000)
            assert [m.seq for m in history] == list(range(1, len(history) + 1))
            assert before <= {m.id for m in history}

    await asyncio.gather(produce(), read())
    await store.flush()
    assert await store.messages.count(conversation.id) == 151
