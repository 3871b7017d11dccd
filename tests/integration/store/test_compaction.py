"""Compaction: ``messages.compact`` appends a summary standing for the messages up to
``through_seq``; ``history`` and ``add_turn(context=…)`` then read the live summary and
every later message that is no summary; ``include_compacted=True`` reads everything.
Refusals, resends, counters, ``delete_originals``, pop and clear after a compaction."""

from __future__ import annotations

import uuid

import pytest

import sessionstore
from sessionstore import (
    ConflictError,
    ContinuationId,
    InvalidInputError,
    Message,
    NotFoundError,
    SessionStore,
    turn_context,
)
from sessionstore.integrations.common import latest

from ...conftest import store_overrides


async def _chat(store: SessionStore, name: str, count: int, *, tokens: int = 10) -> None:
    session = await store.sessions.create("alice")
    for n in range(1, count + 1):
        await store.add_turn(name, "user", f"m{n}", session_id=session.id, tokens=tokens)


def _names(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


async def test_reads_show_the_summary_then_what_follows(store: SessionStore) -> None:
    await _chat(store, "c", 6)
    conv = ContinuationId("c")
    summary = await store.messages.compact(conv, through_seq=4, summary="S1", tokens=3)
    assert (summary.seq, summary.covers_through, summary.role.value) == (7, 4, "system")
    await store.messages.add(conv, "user", "m8", tokens=10)

    assert _names(await store.messages.history(conv)) == ["S1", "m5", "m6", "m8"]
    every = await store.messages.history(conv, include_compacted=True)
    assert [m.seq for m in every] == list(range(1, 9))
    assert every[6].covers_through == 4

    stored = await store.conversations.get(conv)
    assert (stored.compacted_through, stored.message_count, stored.total_tokens) == (4, 8, 73)

    # limit and budget take the latest of the view: the summary is the oldest element
    assert _names(await store.messages.history(conv, limit=3)) == ["m5", "m6", "m8"]
    assert _names(await store.messages.history(conv, limit=4)) == ["S1", "m5", "m6", "m8"]
    assert _names(await store.messages.history(conv, max_tokens=32)) == ["m5", "m6", "m8"]
    assert _names(await store.messages.history(conv, max_tokens=33)) == [
        "S1",
        "m5",
        "m6",
        "m8",
    ]
    assert _names(await store.messages.history(conv, max_tokens=20)) == ["m6", "m8"]
    # before= compares the summary by the last seq it covers
    assert _names(await store.messages.history(conv, before=6)) == ["S1", "m5"]
    assert _names(await store.messages.history(conv, before=5)) == ["S1"]
    assert _names(await store.messages.history(conv, before=4)) == []

    turn = await store.add_turn("c", "user", "m9", tokens=1, context=50)
    assert turn.context is not None
    assert _names(turn.context) == ["S1", "m5", "m6", "m8", "m9"]
    turn = await store.add_turn("c", "user", "m10", tokens=1, context=4)
    assert turn.context is not None
    assert _names(turn.context) == ["m6", "m8", "m9", "m10"]
    # m11 1, m10 1, m9 1, m8 10, m6 10 = 23; m5 would make 33
    turn = await store.add_turn("c", "user", "m11", tokens=1, context_tokens=25)
    assert turn.context is not None
    assert _names(turn.context) == ["m6", "m8", "m9", "m10", "m11"]
    # and with room for everything: the summary (3) last of all: 23 + 10 + 3
    turn = await store.add_turn("c", "user", "m12", tokens=0, context_tokens=36)
    assert turn.context is not None
    assert _names(turn.context) == ["S1", "m5", "m6", "m8", "m9", "m10", "m11", "m12"]
    turn = await store.add_turn("c", "user", "m13", tokens=0, context_tokens=35)
    assert turn.context is not None
    assert _names(turn.context)[0] == "m5"


async def test_a_later_compaction_replaces_the_live_summary(store: SessionStore) -> None:
    await _chat(store, "c", 5)
    conv = ContinuationId("c")
    await store.messages.compact(conv, through_seq=2, summary="S1")
    await store.messages.compact(conv, through_seq=2, summary="S1b")  # same range: replaces
    assert _names(await store.messages.history(conv)) == ["S1b", "m3", "m4", "m5"]
    # S1b (seq 7) is superseded even where it is not covered: summaries show only live
    await store.messages.compact(conv, through_seq=6, summary="S2")
    assert _names(await store.messages.history(conv)) == ["S2"]
    turn = await store.add_turn("c", "user", "m9", context=10)
    assert turn.context is not None
    assert _names(turn.context) == ["S2", "m9"]
    every = await store.messages.history(conv, include_compacted=True)
    assert _names(every) == ["m1", "m2", "m3", "m4", "m5", "S1", "S1b", "S2", "m9"]


@pytest.mark.parametrize(
    ("through", "why"),
    [(0, "between"), (-1, "between"), (True, "integer"), (1.5, "integer"), ("3", "integer")],
)
async def test_bad_through_seq_is_refused_before_sending(
    store: SessionStore, through: object, why: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await store.messages.compact(ContinuationId("nowhere"), through_seq=through, summary="s")  # type: ignore[arg-type]
    assert caught.value.field == "through_seq"
    assert why in str(caught.value)


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("summary", {"summary": 5}),
        ("summary", {"summary": "a\x00b"}),
        ("tokens", {"tokens": -1}),
        ("metadata", {"metadata": {1: 2}}),
        ("role", {"role": "robot"}),
        ("message_id", {"message_id": "not-a-uuid"}),
        ("delete_originals", {"delete_originals": "yes"}),
    ],
)
async def test_bad_fields_are_refused_by_name(
    store: SessionStore, field: str, options: dict[str, object]
) -> None:
    arguments: dict[str, object] = {"through_seq": 1, "summary": "s", **options}
    with pytest.raises(InvalidInputError) as caught:
        await store.messages.compact(ContinuationId("nowhere"), **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert "robot" not in str(caught.value)
    assert "not-a-uuid" not in str(caught.value)


async def test_covering_less_or_past_the_end_is_refused(store: SessionStore) -> None:
    await _chat(store, "c", 3)
    conv = ContinuationId("c")
    with pytest.raises(InvalidInputError) as caught:
        await store.messages.compact(conv, through_seq=4, summary="s")
    assert caught.value.field == "through_seq"
    assert "past" in str(caught.value)
    await store.messages.compact(conv, through_seq=3, summary="S")
    with pytest.raises(InvalidInputError) as caught:
        await store.messages.compact(conv, through_seq=2, summary="s")
    assert caught.value.field == "through_seq"
    assert "less" in str(caught.value)
    assert await store.messages.count(conv) == 4  # only the one summary written
    with pytest.raises(NotFoundError):
        await store.messages.compact(ContinuationId("nowhere"), through_seq=1, summary="s")


async def test_a_resend_returns_the_stored_summary(store: SessionStore) -> None:
    await _chat(store, "c", 3)
    conv = ContinuationId("c")
    mid = uuid.uuid4()
    first = await store.messages.compact(conv, through_seq=2, summary="S", message_id=mid)
    await store.messages.add(conv, "user", "m5")
    await store.messages.compact(conv, through_seq=4, summary="S2")
    again = await store.messages.compact(conv, through_seq=2, summary="S", message_id=mid)
    assert again == first  # covering less than the live one: still the stored summary
    with pytest.raises(ConflictError):
        await store.messages.compact(conv, through_seq=2, summary="other", message_id=mid)
    with pytest.raises(ConflictError):
        await store.messages.compact(conv, through_seq=3, summary="S", message_id=mid)
    assert await store.messages.count(conv) == 6


async def test_deleting_originals_lowers_tokens_not_the_count(store: SessionStore) -> None:
    await _chat(store, "c", 5)
    conv = ContinuationId("c")
    await store.messages.compact(conv, through_seq=2, summary="S1", tokens=4)
    await store.messages.compact(conv, through_seq=4, summary="S2", tokens=5, delete_originals=True)
    every = await store.messages.history(conv, include_compacted=True)
    assert _names(every) == ["m5", "S2"]
    stored = await store.conversations.get(conv)
    # m1..m4 (40) and S1 (4) deleted; m5 10 + S2 5 remain
    assert (stored.message_count, stored.total_tokens, stored.compacted_through) == (7, 15, 4)
    appended = await store.messages.add(conv, "user", "m8")
    assert appended.seq == 8
    assert _names(await store.messages.history(conv)) == ["S2", "m5", "m8"]


async def test_pop_and_clear_undo_the_compaction(store: SessionStore) -> None:
    await _chat(store, "c", 4)
    conv = ContinuationId("c")
    await store.messages.compact(conv, through_seq=2, summary="S1")
    await store.messages.compact(conv, through_seq=3, summary="S2")
    popped = await store.messages.pop(conv)
    assert popped is not None
    assert popped.content == "S2"
    assert (await store.conversations.get(conv)).compacted_through == 2
    assert _names(await store.messages.history(conv)) == ["S1", "m3", "m4"]
    await store.messages.pop(conv)
    assert (await store.conversations.get(conv)).compacted_through is None
    assert _names(await store.messages.history(conv)) == ["m1", "m2", "m3", "m4"]
    await store.messages.compact(conv, through_seq=4, summary="S3")
    assert await store.messages.clear(conv) == 5
    assert (await store.conversations.get(conv)).compacted_through is None
    await store.messages.add(conv, "user", "again")
    assert _names(await store.messages.history(conv)) == ["again"]


async def test_a_fork_carries_the_compaction_of_its_prefix(store: SessionStore) -> None:
    await _chat(store, "c", 4)
    conv = ContinuationId("c")
    await store.messages.compact(conv, through_seq=2, summary="S1")
    whole = await store.conversations.fork(conv, continuation_id="whole")
    assert whole.compacted_through == 2
    assert _names(await store.messages.history(whole.id)) == ["S1", "m3", "m4"]
    before = await store.conversations.fork(conv, continuation_id="before", through_seq=4)
    assert before.compacted_through is None
    assert _names(await store.messages.history(before.id)) == ["m1", "m2", "m3", "m4"]
    turn = await store.add_turn("whole", "user", "m6", context=10)
    assert turn.context is not None
    assert _names(turn.context) == ["S1", "m3", "m4", "m6"]


async def test_queued_messages_read_after_the_view(slow_writer: SessionStore) -> None:
    store = slow_writer
    await _chat(store, "q", 3)
    conv = ContinuationId("q")
    await store.messages.enqueue(conv, "assistant", "queued-1", tokens=10)
    # the compaction first makes the queued message durable: it covers seq 4
    summary = await store.messages.compact(conv, through_seq=2, summary="S", tokens=2)
    assert summary.seq == 5
    assert store.stats().written == 1
    await store.messages.enqueue(conv, "assistant", "queued-2", tokens=10)
    assert store.stats().written == 1  # still waiting
    seen = await store.messages.history(conv)
    assert _names(seen) == ["S", "m3", "queued-1", "queued-2"]
    assert _names(await store.messages.history(conv, limit=3)) == ["m3", "queued-1", "queued-2"]
    assert _names(await store.messages.history(conv, max_tokens=31)) == [
        "m3",
        "queued-1",
        "queued-2",
    ]
    assert _names(await store.messages.history(conv, max_tokens=32)) == _names(seen)
    every = await store.messages.history(conv, include_compacted=True)
    assert _names(every) == ["m1", "m2", "m3", "queued-1", "S", "queued-2"]
    # a turn writes the queued reply first and reads the view
    turn = await store.add_turn("q", "user", "m7", context=10)
    assert turn.context is not None
    assert _names(turn.context) == ["S", "m3", "queued-1", "queued-2", "m7"]


async def test_a_turn_after_a_compaction_reads_its_context_once(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncontended, the turn's own statement returns the view and the snapshot check
    accepts it (summaries among the seqs fill their places): the context is not read
    again — here a second read would fail."""
    await _chat(store, "c", 5, tokens=1)
    conv = ContinuationId("c")
    await store.messages.compact(conv, through_seq=2, summary="S1")
    await store.messages.add(conv, "user", "m7", tokens=1)
    await store.messages.compact(conv, through_seq=2, summary="S2")  # S1 superseded
    monkeypatch.setattr(turn_context, "CONTEXT", "SELECT no_such_column")
    for size, budget, expected in [
        (50, None, ["S2", "m3", "m4", "m5", "m7", "t"]),
        (3, None, ["m5", "m7", "t"]),
        (50, 3, ["m5", "m7", "t"]),  # a budget cut inside the later messages
        (6, None, ["S2", "m3", "m4", "m5", "m7", "t"]),
    ]:
        turn = await store.add_turn("c", "user", "t", tokens=1, context=size, context_tokens=budget)
        assert turn.context is not None
        assert _names(turn.context)[-1] == "t"
        assert _names(turn.context) == expected
        await store.messages.pop(conv)


async def test_the_adapters_read_a_compacted_view_once(store: SessionStore) -> None:
    """The framework adapters page backwards by seq: a full page that starts with the
    summary is the view's first (paging on from its seq would read the view again)."""
    await _chat(store, "c", 4)
    conv = ContinuationId("c")
    await store.messages.compact(conv, through_seq=2, summary="S")
    await store.messages.add(conv, "user", "m6")
    for first_page in (1, 3, 4, 50):
        read = await latest(store, conv, None, first_page=first_page)
        assert _names(read) == ["S", "m3", "m4", "m6"]


async def test_prune_never_deletes_the_live_summary(store: SessionStore) -> None:
    """Retention meets compaction: the live summary stays whatever the rule (it stands
    for everything compacted); what it covers, and an older summary, go as any message."""
    conv = await store.conversations.get_or_create("pruned-summary")
    await store.messages.add_many(conv.id, [("user", f"m{n}") for n in range(1, 7)])
    old = await store.messages.compact(conv.id, through_seq=2, summary="s1")
    live = await store.messages.compact(conv.id, through_seq=4, summary="s2")
    await store.messages.add(conv.id, "user", "m9")  # seqs: m1-m6, s1 7, s2 8, m9 9
    assert await store.count_prunable(keep_last=0) == 8  # all but the live summary
    counts = await store.prune(keep_last=0)
    assert counts.messages == 8
    stored = await store.messages.history(conv.id, include_compacted=True)
    assert [m.id for m in stored] == [live.id]
    assert old.id != live.id
    assert [m.content for m in await store.messages.history(conv.id)] == ["s2"]
    appended = await store.messages.add(conv.id, "user", "m10")
    assert appended.seq == 10  # numbering goes on
    assert [m.content for m in await store.messages.history(conv.id)] == ["s2", "m10"]
    assert await store.count_prunable(keep_last=1) == 0  # the summary is not counted


async def test_a_compaction_by_another_process_shows_at_the_next_read(
    store: SessionStore, dsn: str
) -> None:
    """A repository reads a conversation it has not seen compacted with the plain
    statement, which also says whether it is: a compaction committed by another process
    in between shows at the very next read, and a clear afterwards reads as plain."""
    await _chat(store, "elsewhere", 4)
    conv = ContinuationId("elsewhere")
    assert _names(await store.messages.history(conv)) == ["m1", "m2", "m3", "m4"]
    async with sessionstore.connect(dsn, **store_overrides()) as other:
        await other.messages.compact(conv, through_seq=3, summary="S")
    assert _names(await store.messages.history(conv)) == ["S", "m4"]
    assert _names(await store.messages.history(conv)) == ["S", "m4"]  # known: one read
    assert len(await store.messages.history(conv, include_compacted=True)) == 5
    async with sessionstore.connect(dsn, **store_overrides()) as other:
        await other.messages.clear(conv)
        await other.messages.add(conv, "user", "fresh")
    assert _names(await store.messages.history(conv)) == ["fresh"]
