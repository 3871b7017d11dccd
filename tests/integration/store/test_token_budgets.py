"""Token budgets: ``history(max_tokens=)`` and ``add_turn(context_tokens=)`` return the
latest messages whose tokens fit, a run ending at the latest; a message stored without a
token count counts ⌈UTF-8 bytes / 4⌉, the same in SQL and in memory; the turn's own message
is always in its context — also when the context is read again after a race, and with
messages this process still holds for write-behind."""

from __future__ import annotations

import asyncio
import math

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionstore import ContinuationId, InvalidInputError, SessionStore

from ...helpers import wait_for_lock_waiters


async def _chat(store: SessionStore, name: str, tokens: list[int | None]) -> None:
    session = await store.sessions.create("alice")
    for n, count in enumerate(tokens, 1):
        await store.add_turn(name, "user", f"m{n}-" + "x" * 9, session_id=session.id, tokens=count)


async def _seqs(
    store: SessionStore, name: str, *, max_tokens: int, limit: int = 50, before: int | None = None
) -> list[int]:
    found = await store.messages.history(
        ContinuationId(name), limit=limit, before=before, max_tokens=max_tokens
    )
    return [m.seq for m in found]


async def test_history_keeps_the_latest_run_that_fits(store: SessionStore) -> None:
    # m6 7, m5 unknown: 12 characters = 3, m4 3, m3 100, m2 10, m1 5
    await _chat(store, "budget", [5, 10, 100, 3, None, 7])
    assert await _seqs(store, "budget", max_tokens=13) == [4, 5, 6]
    # the cut is before m3: the older, smaller m1 and m2 are not picked up past it
    assert await _seqs(store, "budget", max_tokens=112) == [4, 5, 6]
    assert await _seqs(store, "budget", max_tokens=113) == [3, 4, 5, 6]
    assert await _seqs(store, "budget", max_tokens=12) == [5, 6]
    assert await _seqs(store, "budget", max_tokens=6) == []  # the latest alone is 7
    assert await _seqs(store, "budget", max_tokens=1000, limit=2) == [5, 6]
    assert await _seqs(store, "budget", max_tokens=10, before=6) == [4, 5]


async def test_a_message_without_a_token_count_is_never_free(store: SessionStore) -> None:
    session = await store.sessions.create("alice")
    await store.add_turn("estimated", "user", "a" * 40, session_id=session.id)  # 10
    # 6 characters, 18 bytes of UTF-8: 5 (by characters it would be 2)
    await store.add_turn("estimated", "user", "é🎉" * 3, session_id=session.id)
    await store.add_turn("estimated", "user", "", session_id=session.id)  # nothing to count
    assert await _seqs(store, "estimated", max_tokens=4) == [3]
    assert await _seqs(store, "estimated", max_tokens=5) == [2, 3]
    assert await _seqs(store, "estimated", max_tokens=14) == [2, 3]
    assert await _seqs(store, "estimated", max_tokens=15) == [1, 2, 3]


@pytest.mark.parametrize("field", ["max_tokens"])
@pytest.mark.parametrize("value", [0, -1, 2**31, True, 1.5, "10"])
async def test_a_bad_budget_is_refused_before_anything_is_sent(
    store: SessionStore, field: str, value: object
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await store.messages.history(ContinuationId("nowhere"), **{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(value) not in str(caught.value).replace("2147483647", "")


async def test_the_turn_is_in_its_context_alone_when_it_overflows(store: SessionStore) -> None:
    await _chat(store, "turns", [5, 10, 100, 3, None, 7])
    session = await store.sessions.create("bob")
    await store.add_turn("own", "user", "hi", session_id=session.id, tokens=1)

    fits = await store.add_turn("turns", "user", "q", tokens=4, context=10, context_tokens=30)
    assert fits.context is not None
    assert [m.seq for m in fits.context] == [4, 5, 6, 7]  # 4 + 7 + 3 + 3 = 17, m3 overflows

    alone = await store.add_turn("turns", "user", "q", tokens=40, context=10, context_tokens=30)
    assert alone.context is not None
    assert [m.id for m in alone.context] == [alone.message.id]

    capped = await store.add_turn("turns", "user", "q", tokens=1, context=2, context_tokens=999)
    assert capped.context is not None
    assert [m.seq for m in capped.context] == [8, 9]

    only_budget = await store.add_turn("turns", "user", "q", tokens=1, context_tokens=10**6)
    assert only_budget.context is not None
    assert [m.seq for m in only_budget.context] == list(range(1, 11))

    with pytest.raises(InvalidInputError) as caught:
        await store.add_turn("turns", "user", "q", context=5, context_tokens=0)
    assert caught.value.field == "context_tokens"
    assert await store.messages.count(ContinuationId("turns")) == 10  # nothing written


# Characters PostgreSQL stores: no NUL, no lone surrogates (both refused before sending).
_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(contents=st.lists(_TEXT, min_size=1, max_size=6))
async def test_the_estimate_is_the_same_in_sql_and_in_memory(
    store: SessionStore, contents: list[str]
) -> None:
    """A budget of exactly the messages' estimated sum returns them all, one token less
    drops the oldest: the server's ⌈UTF-8 bytes / 4⌉ is the one computed here."""
    conv = await store.conversations.get_or_create(f"est-{len(contents)}-{id(contents)}")
    await store.messages.add_many(conv.id, [("user", text) for text in contents])
    counts = [math.ceil(len(text.encode("utf-8")) / 4) for text in contents]
    total = sum(counts)
    if total == 0:
        return  # an all-empty conversation fits any budget; nothing to tell apart
    assert len(await store.messages.history(conv.id, max_tokens=total)) == len(contents)
    if total > 1:
        older = next(n for n, count in enumerate(counts) if count > 0)  # the oldest counting
        fewer = await store.messages.history(conv.id, max_tokens=total - 1)
        assert len(fewer) == len(contents) - older - 1
    await store.conversations.delete(conv.id)


async def test_a_budgeted_context_read_again_after_a_race_is_still_budgeted(
    store: SessionStore, admin_dsn: str
) -> None:
    """The turn takes its snapshot, then waits for its session while another caller pops
    the latest message and appends a larger one: the context (read again: the snapshot
    holds a removed row) is budgeted against what is stored."""
    session = await store.sessions.create("alice")
    for n, count in enumerate([2, 2, 2], 1):
        await store.add_turn("raced", "user", f"m{n}", session_id=session.id, tokens=count)
    holder, watcher = await asyncpg.connect(admin_dsn), await asyncpg.connect(admin_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session.id)
            task = asyncio.create_task(
                store.add_turn(
                    "raced",
                    "user",
                    "NEW",
                    session_id=session.id,
                    tokens=1,
                    context=10,
                    context_tokens=6,
                )
            )
            await wait_for_lock_waiters(watcher, 1)
            assert await store.messages.pop(ContinuationId("raced")) is not None
            await store.messages.add(ContinuationId("raced"), "user", "m3-big", tokens=4)
        turn = await asyncio.wait_for(task, 10)
    finally:
        await holder.close()
        await watcher.close()
    assert turn.context is not None
    # stored: m1 2, m2 2, m3-big 4, NEW 1 — within 6: m3-big and NEW (m2 would make 7)
    assert [m.content for m in turn.context] == ["m3-big", "NEW"]


async def test_budgets_count_the_messages_still_queued(slow_writer: SessionStore) -> None:
    store = slow_writer
    session = await store.sessions.create("alice")
    await store.add_turn("queued", "user", "u1", session_id=session.id, tokens=5)
    await store.enqueue_turn("queued", "assistant", "a" * 16, session_id=session.id)  # 4
    assert store.stats().written == 0  # the reply is still queued

    history = await store.messages.history(ContinuationId("queued"), max_tokens=8)
    assert [m.content for m in history] == ["a" * 16]  # u1 would make 9
    history = await store.messages.history(ContinuationId("queued"), max_tokens=9)
    assert [m.content for m in history] == ["u1", "a" * 16]

    # the turn writes the queued reply first, in the same statement, and counts it
    turn = await store.add_turn(
        "queued", "user", "u2", session_id=session.id, tokens=2, context=10, context_tokens=6
    )
    assert turn.context is not None
    assert [m.content for m in turn.context] == ["a" * 16, "u2"]
    turn = await store.add_turn(
        "queued", "user", "u3", session_id=session.id, tokens=2, context=10, context_tokens=13
    )
    assert turn.context is not None
    assert [m.content for m in turn.context] == ["u1", "a" * 16, "u2", "u3"]
