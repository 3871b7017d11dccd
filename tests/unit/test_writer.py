"""Unit tests of the write-behind engine (:class:`sessionstore.writebehind.engine.Writer`) against a
scripted fake of the batch-writing function: no database, no network.

Every wait is bounded; nothing sleeps to wait for what can be awaited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID, uuid4

import pytest

import sessionstore.writebehind.engine
from sessionstore import validation
from sessionstore.errors import (
    ConflictError,
    InvalidInputError,
    QueueFullError,
    SessionStoreError,
    StoreUnavailableError,
    WriteBehindError,
)
from sessionstore.models import FailedWrite, Kind, PendingWrite
from sessionstore.retry import Backoff
from sessionstore.writebehind.engine import Writer
from sessionstore.writebehind.items import accept
from sessionstore.writebehind.spill import read_spill

BOUND = 5.0  # seconds: the generous bound on every wait


# -- the fake batch writer ----------------------------------------------------------------


class FakeWrite:
    """Stands in for the store's ``write`` function and records every call.

    Scripting, checked in this order on each call:

    - ``gate``: when set to an unset :class:`asyncio.Event`, the call blocks until it is set;
    - ``hold``: call number (1-based) -> an event that call blocks on until it is set;
    - ``failures``: raised one per call, oldest first, until used up;
    - ``outage_from``: from that call number on (1-based), every call raises
      :class:`StoreUnavailableError`;
    - ``always``: raised on every call;
    - ``poison``: a batch holding one of these ids raises the error mapped to it;
    - ``reject``: ids returned as rejected (with the reason) when in the batch.
    """

    def __init__(self) -> None:
        self.calls: list[list[UUID]] = []
        self.call_kinds: list[list[Kind]] = []
        self.written: list[list[UUID]] = []  # the batches that succeeded
        self.gate: asyncio.Event | None = None
        self.hold: dict[int, asyncio.Event] = {}
        self.failures: deque[BaseException] = deque()
        self.outage_from: int | None = None
        self.always: BaseException | None = None
        self.poison: dict[UUID, SessionStoreError] = {}
        self.reject: dict[UUID, str] = {}
        self._called = asyncio.Event()

    def fail(self, error: BaseException, times: int) -> None:
        self.failures.extend([error] * times)

    def heal(self) -> None:
        """No more failures, no more blocking (used at teardown)."""
        self.failures.clear()
        self.outage_from = None
        self.always = None
        self.poison.clear()
        if self.gate is not None:
            self.gate.set()
        for event in self.hold.values():
            event.set()

    def written_ids(self) -> list[UUID]:
        return [i for batch in self.written for i in batch]

    async def wait_for_calls(self, n: int) -> None:
        """Until at least ``n`` calls have started (bounded)."""
        async with asyncio.timeout(BOUND):
            while len(self.calls) < n:
                self._called.clear()
                await self._called.wait()

    async def __call__(self, batch: Sequence[PendingWrite]) -> Mapping[UUID, str]:
        ids = [item.id for item in batch]
        self.calls.append(ids)
        self.call_kinds.append([item.kind for item in batch])
        self._called.set()
        if self.gate is not None:
            await self.gate.wait()
        if len(self.calls) in self.hold:
            await self.hold[len(self.calls)].wait()
        if self.failures:
            raise self.failures.popleft()
        if self.outage_from is not None and len(self.calls) >= self.outage_from:
            raise StoreUnavailableError("database unavailable: connection refused")
        if self.always is not None:
            raise self.always
        for i in ids:
            if i in self.poison:
                raise self.poison[i]
        self.written.append(ids)
        return {i: reason for i, reason in self.reject.items() if i in ids}


# -- helpers and fixtures -----------------------------------------------------------------

FIELDS = validation.message("user", "text", {}, frozenset({"metadata", "tokens"}))
CONVERSATION = uuid4()
SESSION = uuid4()


def item(kind: Kind = "message", content: str = "text", **options: Any) -> PendingWrite:
    fields = validation.message("user", content, options, frozenset({"metadata", "tokens"}))
    if kind == "turn":
        return accept(kind, fields, continuation_id="thread-1", session_id=SESSION)
    return accept(kind, fields, conversation_id=CONVERSATION)


def items(n: int, kind: Kind = "message") -> list[PendingWrite]:
    return [item(kind, f"message {k}") for k in range(n)]


def ids(batch: Iterable[PendingWrite]) -> list[UUID]:
    return [i.id for i in batch]


class MakeWriter(Protocol):
    def __call__(
        self,
        fake: FakeWrite,
        *,
        batch_size: int = ...,
        max_delay: float = ...,
        max_pending: int = ...,
        write_deadline: float = ...,
        spill_path: Path | None = ...,
        on_write_error: Callable[[FailedWrite], None] | None = ...,
        on_written: Callable[[Sequence[PendingWrite]], None] | None = ...,
    ) -> Writer: ...


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry delays of a few milliseconds, so that failing tests stay fast."""
    monkeypatch.setattr(
        sessionstore.writebehind.engine, "WRITER", Backoff(first=0.001, cap=0.005, attempts=None)
    )


@pytest.fixture
async def make_writer() -> AsyncIterator[MakeWriter]:
    """Builds writers and, at teardown, heals their fakes and closes them, so that no
    writer task outlives its test (the event loop is shared by the whole session)."""
    made: list[tuple[Writer, FakeWrite]] = []

    def make(
        fake: FakeWrite,
        *,
        batch_size: int = 10,
        max_delay: float = 0.01,
        max_pending: int = 1000,
        write_deadline: float = 30.0,
        spill_path: Path | None = None,
        on_write_error: Callable[[FailedWrite], None] | None = None,
        on_written: Callable[[Sequence[PendingWrite]], None] | None = None,
    ) -> Writer:
        writer = Writer(
            fake,
            batch_size=batch_size,
            max_delay=max_delay,
            max_pending=max_pending,
            write_deadline=write_deadline,
            spill_path=spill_path,
            on_write_error=on_write_error,
            on_written=on_written,
        )
        writer.open()
        made.append((writer, fake))
        return writer

    yield make
    for writer, fake in made:
        fake.heal()
        try:
            async with asyncio.timeout(BOUND):
                await writer.close()
        except SessionStoreError:
            pass  # a test that left a failed writer behind has checked it already


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition`` holds (a bounded number of turns)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)  # one turn of the event loop, not a wait for time
    pytest.fail("condition not reached after 1000 turns of the event loop")


async def flush(writer: Writer) -> None:
    async with asyncio.timeout(BOUND):
        await writer.flush()


# -- batching -----------------------------------------------------------------------------


async def test_batches_of_batch_size_in_acceptance_order(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=10, max_delay=0.01)
    accepted = items(25)
    for i in accepted:
        writer.put_nowait(i)  # no await: the writer task has not run yet
    assert fake.calls == []
    assert writer.stats().queued == 25

    await flush(writer)

    assert [len(c) for c in fake.calls] == [10, 10, 5]
    assert fake.written_ids() == ids(accepted)
    stats = writer.stats()
    assert (stats.queued, stats.in_flight, stats.written) == (0, 0, 25)
    assert (stats.retried, stats.set_aside) == (0, 0)
    assert stats.oldest_age is None
    assert stats.failing_for is None


async def test_flush_returns_only_once_everything_is_written(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    fake.gate = asyncio.Event()
    writer = make_writer(fake, batch_size=10, max_delay=0.0)
    accepted = items(12)
    for i in accepted:
        writer.put_nowait(i)
    flushing = asyncio.create_task(writer.flush())
    await fake.wait_for_calls(1)
    done, _ = await asyncio.wait({flushing}, timeout=0.05)
    assert not done  # the first batch is still blocked
    fake.gate.set()
    async with asyncio.timeout(BOUND):
        await flushing
    assert fake.written_ids() == ids(accepted)
    assert writer.stats().written == 12


async def test_a_batch_holds_one_kind(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=10, max_delay=0.01)
    kinds: list[Kind] = ["message", "message", "turn", "turn", "turn", "message", "turn"]
    accepted = [item(k, f"{k} {n}") for n, k in enumerate(kinds)]
    for i in accepted:
        writer.put_nowait(i)

    await flush(writer)

    assert fake.call_kinds == [
        ["message", "message"],
        ["turn", "turn", "turn"],
        ["message"],
        ["turn"],
    ]
    assert fake.written_ids() == ids(accepted)
    assert writer.stats().written == len(accepted)


async def test_max_delay_writes_an_incomplete_batch(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=10, max_delay=0.2)
    first, second = item(content="first"), item(content="second")
    writer.put_nowait(first)
    await until(lambda: writer.stats().in_flight == 1)  # the writer is collecting
    writer.put_nowait(second)  # well within max_delay: joins the same batch

    # batch_size is never reached: only max_delay can send the batch.
    await fake.wait_for_calls(1)
    assert fake.calls == [[first.id, second.id]]
    assert time.monotonic() - first.accepted >= 0.2 * 0.9

    lone = item(content="alone")
    writer.put_nowait(lone)
    await fake.wait_for_calls(2)  # without any flush()
    assert fake.calls[1] == [lone.id]
    await flush(writer)
    assert writer.stats().written == 3


# -- permanent errors: splitting, conflicts, rejections ----------------------------------


async def test_a_poisoned_row_is_isolated_and_the_rest_lands(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    reported: list[FailedWrite] = []
    on_written: list[UUID] = []
    writer = make_writer(
        fake,
        batch_size=16,
        max_delay=0.01,
        on_write_error=reported.append,
        on_written=lambda batch: on_written.extend(ids(batch)),
    )
    accepted = items(16)
    bad = accepted[11]
    fake.poison[bad.id] = InvalidInputError("content", "bad", sqlstate="22021")
    for i in accepted:
        writer.put_nowait(i)

    await flush(writer)

    good = [i for i in ids(accepted) if i != bad.id]
    assert fake.written_ids() == good  # each written once, in acceptance order
    assert on_written == good
    # halves, depth first, down to the bad row (index 11): only halves holding it fail
    assert [len(c) for c in fake.calls] == [16, 8, 8, 4, 2, 2, 1, 1, 4]
    expected = FailedWrite(
        bad.id,
        "message",
        CONVERSATION,
        None,
        None,
        "InvalidInputError (SQLSTATE 22021; field content); the message had content "
        f"{len(bad.content)} characters",
        "22021",
    )
    assert writer.set_aside() == [expected]
    assert reported == [expected]
    stats = writer.stats()
    assert (stats.written, stats.set_aside, stats.retried) == (15, 1, 0)
    assert (stats.queued, stats.in_flight) == (0, 0)


async def test_a_failing_on_write_error_callback_does_not_stop_the_writer(
    make_writer: MakeWriter,
) -> None:
    fake = FakeWrite()

    def explode(failed: FailedWrite) -> None:
        raise RuntimeError("callback bug")

    writer = make_writer(fake, batch_size=2, max_delay=0.0, on_write_error=explode)
    bad, good = item(), item()
    fake.poison[bad.id] = InvalidInputError("content", "bad")
    writer.put_nowait(bad)
    writer.put_nowait(good)
    await flush(writer)
    later = item()
    writer.put_nowait(later)
    await flush(writer)
    assert fake.written_ids() == [good.id, later.id]
    assert [f.id for f in writer.set_aside()] == [bad.id]


async def test_a_unique_violation_on_one_row_counts_as_written(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    reported: list[FailedWrite] = []
    writer = make_writer(fake, batch_size=2, max_delay=0.0, on_write_error=reported.append)
    first, replayed = item(), item()
    fake.poison[replayed.id] = ConflictError("dup", sqlstate="23505")
    writer.put_nowait(first)
    writer.put_nowait(replayed)

    await flush(writer)

    assert fake.calls == [[first.id, replayed.id], [first.id], [replayed.id]]
    assert fake.written_ids() == [first.id]
    assert writer.set_aside() == []
    assert reported == []
    stats = writer.stats()
    assert (stats.written, stats.set_aside) == (2, 0)


async def test_another_conflict_on_one_row_is_set_aside(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=1, max_delay=0.0)
    clash = item()
    fake.poison[clash.id] = ConflictError("stale version", sqlstate="23P01")
    writer.put_nowait(clash)
    await flush(writer)
    assert [(f.id, f.reason, f.sqlstate) for f in writer.set_aside()] == [
        (
            clash.id,
            "ConflictError (SQLSTATE 23P01); the message had content "
            f"{len(clash.content)} characters",
            "23P01",
        )
    ]
    assert (writer.stats().written, writer.stats().set_aside) == (0, 1)


async def test_rejected_rows_are_set_aside_with_the_reason(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    reported: list[FailedWrite] = []
    writer = make_writer(fake, batch_size=10, max_delay=0.01, on_write_error=reported.append)
    turn_items = items(5, "turn")
    fake.reject = {
        turn_items[1].id: "the conversation is gone",
        turn_items[3].id: "the session expired",
    }
    for i in turn_items:
        writer.put_nowait(i)

    await flush(writer)

    assert len(fake.calls) == 1  # rejections are not errors: no split, no retry
    assert [(f.id, f.reason, f.sqlstate, f.kind) for f in writer.set_aside()] == [
        (turn_items[1].id, "the conversation is gone", None, "turn"),
        (turn_items[3].id, "the session expired", None, "turn"),
    ]
    assert reported == writer.set_aside()
    assert all(f.session_id == SESSION and f.continuation_id == "thread-1" for f in reported)
    stats = writer.stats()
    assert (stats.written, stats.set_aside, stats.retried) == (3, 2, 0)


# -- transient errors, deadline, spill ----------------------------------------------------


async def test_transient_errors_are_retried_until_the_batch_lands(
    make_writer: MakeWriter,
) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=10, max_delay=0.0)
    fake.fail(StoreUnavailableError("database unavailable"), 2)
    third = fake.hold[3] = asyncio.Event()  # hold the third attempt while we look
    accepted = items(3)
    for i in accepted:
        writer.put_nowait(i)
    await fake.wait_for_calls(3)
    stats = writer.stats()
    assert stats.retried == 2
    assert stats.failing_for is not None
    assert (stats.in_flight, stats.written) == (3, 0)

    third.set()
    await flush(writer)

    assert fake.calls == [ids(accepted)] * 3  # the same batch, resent as is
    assert fake.written == [ids(accepted)]
    stats = writer.stats()
    assert (stats.written, stats.retried, stats.set_aside) == (3, 2, 0)
    assert stats.failing_for is None


async def test_an_unexpected_error_is_retried_and_the_writer_survives(
    make_writer: MakeWriter,
) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=10, max_delay=0.0)
    fake.fail(RuntimeError("driver bug"), 1)
    first = items(2)
    for i in first:
        writer.put_nowait(i)
    await flush(writer)
    assert fake.calls == [ids(first), ids(first)]
    assert writer.stats().retried == 1
    assert writer.set_aside() == []

    later = item()
    writer.put_nowait(later)
    await flush(writer)
    assert fake.written_ids() == [*ids(first), later.id]
    assert writer.stats().written == 3


async def test_a_cancelled_flush_leaves_the_writer_working(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    fake.gate = asyncio.Event()
    writer = make_writer(fake, batch_size=10, max_delay=0.0)
    accepted = items(3)
    for i in accepted:
        writer.put_nowait(i)
    await fake.wait_for_calls(1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(writer.flush(), timeout=0.05)
    fake.gate.set()
    await flush(writer)
    assert fake.written_ids() == ids(accepted)
    assert writer.stats().written == 3


async def test_deadline_flush_and_close_report_and_spill_the_unwritten(
    make_writer: MakeWriter, tmp_path: Path
) -> None:
    fake = FakeWrite()
    fake.always = StoreUnavailableError("database unavailable: connection refused")
    spill = tmp_path / "spill.jsonl"
    writer = make_writer(fake, batch_size=2, max_delay=0.0, write_deadline=0.2, spill_path=spill)
    accepted = [
        item("message", "first", metadata={"k": "v", "n": [1, 2]}, tokens=7),
        item("message", "second ünïcode"),
        item("turn", "third", metadata={"nested": {"a": None}}, tokens=0),
    ]
    for i in accepted:
        writer.put_nowait(i)

    started = time.monotonic()
    with pytest.raises(WriteBehindError) as flushed:
        await flush(writer)
    assert time.monotonic() - started >= 0.2 * 0.9
    assert ids(flushed.value.unwritten) == ids(accepted)
    assert flushed.value.spill_path is None
    stats = writer.stats()
    assert (stats.queued, stats.in_flight, stats.written) == (1, 2, 0)
    assert stats.retried >= 1
    assert stats.failing_for is not None
    assert stats.failing_for >= 0.2 * 0.9
    assert not spill.exists()  # flush() does not spill

    with pytest.raises(WriteBehindError) as closed:
        async with asyncio.timeout(BOUND):
            await writer.close()
    assert closed.value.spill_path == spill
    assert ids(closed.value.unwritten) == ids(accepted)

    spilled = read_spill(spill)
    assert [
        (s.id, s.kind, s.conversation_id, s.continuation_id, s.session_id, s.role, s.content)
        for s in spilled
    ] == [
        (a.id, a.kind, a.conversation_id, a.continuation_id, a.session_id, a.role, a.content)
        for a in accepted
    ]
    assert [s.tokens for s in spilled] == [7, None, 0]
    # jsonb does not keep formatting: the same JSON value, not necessarily the same text
    assert [None if s.metadata is None else json.loads(s.metadata) for s in spilled] == [
        {"k": "v", "n": [1, 2]},
        None,
        {"nested": {"a": None}},
    ]
    assert [s.enqueued_at for s in spilled] == [a.enqueued_at for a in accepted]

    with pytest.raises(SessionStoreError, match="closed") as refused:
        writer.put_nowait(item())
    assert not isinstance(refused.value, QueueFullError)
    with pytest.raises(SessionStoreError, match="closed"):
        async with asyncio.timeout(BOUND):
            await writer.put(item())

    calls = len(fake.calls)
    await asyncio.sleep(0.05)  # time for attempts a still-running writer would make
    assert len(fake.calls) == calls  # close() stopped the writer task


async def test_close_drains_then_refuses_new_messages(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=10, max_delay=0.01)
    accepted = items(4)
    for i in accepted:
        writer.put_nowait(i)
    async with asyncio.timeout(BOUND):
        await writer.close()
    assert fake.written_ids() == ids(accepted)
    with pytest.raises(SessionStoreError, match="closed"):
        writer.put_nowait(item())


# -- backpressure and stats ---------------------------------------------------------------


async def test_backpressure_on_max_pending_waiting_messages(make_writer: MakeWriter) -> None:
    fake = FakeWrite()
    fake.gate = asyncio.Event()
    writer = make_writer(fake, batch_size=1, max_delay=0.0, max_pending=3)
    a, b, c, d, e = items(5)
    writer.put_nowait(a)
    await fake.wait_for_calls(1)  # a was taken into a batch: no longer waiting
    assert (writer.stats().queued, writer.stats().in_flight) == (0, 1)
    for i in (b, c, d):
        writer.put_nowait(i)
    assert (writer.stats().queued, writer.stats().in_flight) == (3, 1)

    with pytest.raises(QueueFullError):
        writer.put_nowait(e)
    assert writer.stats().queued == 3  # e was not accepted

    putting = asyncio.create_task(writer.put(e))
    done, _ = await asyncio.wait({putting}, timeout=0.05)
    assert not done  # put() waits while 3 are waiting
    assert writer.stats().queued == 3

    fake.gate.set()
    async with asyncio.timeout(BOUND):
        await putting
    await flush(writer)
    assert fake.written_ids() == ids([a, b, c, d, e])
    assert writer.stats().written == 5


async def test_stats_count_the_batch_being_written_as_in_flight(
    make_writer: MakeWriter,
) -> None:
    fake = FakeWrite()
    fake.gate = asyncio.Event()
    writer = make_writer(fake, batch_size=4, max_delay=0.0)
    for i in items(10):
        writer.put_nowait(i)
    await fake.wait_for_calls(1)
    stats = writer.stats()
    assert (stats.queued, stats.in_flight, stats.written) == (6, 4, 0)
    assert stats.oldest_age is not None

    for i in items(2):
        writer.put_nowait(i)
    stats = writer.stats()
    assert stats.queued + stats.in_flight == 12 - stats.written
    assert (stats.queued, stats.in_flight) == (8, 4)

    fake.gate.set()
    await flush(writer)
    stats = writer.stats()
    assert (stats.queued, stats.in_flight, stats.written) == (0, 0, 12)


async def test_stats_count_the_batch_being_collected_as_in_flight(
    make_writer: MakeWriter,
) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=5, max_delay=30.0)
    accepted = items(5)
    writer.put_nowait(accepted[0])
    writer.put_nowait(accepted[1])
    await until(lambda: writer.stats().in_flight == 2)  # taken, waiting for more
    stats = writer.stats()
    assert (stats.queued, stats.in_flight, stats.written) == (0, 2, 0)
    assert stats.oldest_age is not None

    writer.put_nowait(accepted[2])
    await until(lambda: writer.stats().in_flight == 3)
    assert writer.stats().queued == 0
    assert fake.calls == []  # still collecting

    writer.put_nowait(accepted[3])
    writer.put_nowait(accepted[4])  # batch_size reached: sent without waiting max_delay
    await flush(writer)
    assert fake.calls == [ids(accepted)]
    assert writer.stats().written == 5


# -- regressions: bugs these tests found in the first version of the new writer ------------


async def test_failing_for_is_cleared_when_a_retried_row_is_set_aside(
    make_writer: MakeWriter,
) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=1, max_delay=0.0)
    bad = item()
    fake.fail(StoreUnavailableError("database unavailable"), 2)
    fake.poison[bad.id] = InvalidInputError("content", "bad")
    writer.put_nowait(bad)
    await flush(writer)
    stats = writer.stats()
    assert (stats.retried, stats.set_aside, stats.written) == (2, 1, 0)
    assert stats.failing_for is None


async def test_a_healthy_flush_after_a_set_aside_row_does_not_raise(
    make_writer: MakeWriter,
) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=1, max_delay=0.0, write_deadline=0.1)
    bad = item()
    fake.fail(StoreUnavailableError("database unavailable"), 1)
    fake.poison[bad.id] = InvalidInputError("content", "bad")
    writer.put_nowait(bad)
    await flush(writer)
    assert writer.stats().set_aside == 1
    await asyncio.sleep(0.15)  # time passes: longer than write_deadline, all healthy

    good = item()
    writer.put_nowait(good)
    await flush(writer)  # raises WriteBehindError
    assert fake.written_ids() == [good.id]


async def test_rows_written_by_a_split_are_not_reported_unwritten(
    make_writer: MakeWriter,
) -> None:
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=4, max_delay=0.0, write_deadline=0.1)
    a, b, c, bad = items(4)
    fake.poison[bad.id] = InvalidInputError("content", "bad")
    fake.outage_from = 3  # call 1: [a b c bad] refused, 2: [a b] lands, 3+: database down
    for i in (a, b, c, bad):
        writer.put_nowait(i)
    with pytest.raises(WriteBehindError) as flushed:
        await flush(writer)
    assert fake.written == [[a.id, b.id]]
    assert writer.stats().written == 2
    assert ids(flushed.value.unwritten) == [c.id, bad.id]


async def test_put_after_a_failed_close_raises_instead_of_waiting(
    make_writer: MakeWriter, tmp_path: Path
) -> None:
    fake = FakeWrite()
    fake.always = StoreUnavailableError("database unavailable")
    writer = make_writer(
        fake,
        batch_size=1,
        max_delay=0.0,
        max_pending=2,
        write_deadline=0.1,
        spill_path=tmp_path / "spill.jsonl",
    )
    first, *rest = items(3)
    writer.put_nowait(first)
    await fake.wait_for_calls(1)
    for i in rest:  # one in flight, two waiting: full
        writer.put_nowait(i)
    with pytest.raises(WriteBehindError):
        async with asyncio.timeout(BOUND):
            await writer.close()
    with pytest.raises(SessionStoreError, match="closed"):
        async with asyncio.timeout(0.5):
            await writer.put(item())


async def test_a_put_waiting_for_room_raises_when_close_fails(
    make_writer: MakeWriter, tmp_path: Path
) -> None:
    fake = FakeWrite()
    fake.always = StoreUnavailableError("database unavailable")
    writer = make_writer(fake, batch_size=1, max_delay=0.0, max_pending=2, write_deadline=0.1)
    first, *rest = items(3)
    writer.put_nowait(first)
    await fake.wait_for_calls(1)
    for i in rest:
        writer.put_nowait(i)
    waiting = asyncio.create_task(writer.put(item()))  # full: waits for room
    with pytest.raises(WriteBehindError):
        async with asyncio.timeout(BOUND):
            await writer.close()
    with pytest.raises(SessionStoreError, match="closed"):
        async with asyncio.timeout(BOUND):
            await waiting


# -- what failures say: bounded deadline, one warning per outage, no content ------------

CANARY = "CANARY-CONTENT-7f3a"


class DriverError(Exception):
    """Stands in for an asyncpg error: its text quotes the values it was sent, and it
    names the schema objects involved."""

    sqlstate = "23514"
    table_name = "messages"
    column_name = None
    constraint_name = "no_canaries"


def quoting_error() -> InvalidInputError:
    """A translated error whose own text and whose driver cause both quote content."""
    cause = DriverError(f"invalid input for query argument $4: ['{CANARY}']")
    error = InvalidInputError(
        "no_canaries", f"rejected by the database: {CANARY}", sqlstate="23514"
    )
    error.__cause__ = cause
    return error


async def test_reasons_and_logs_never_quote_message_content(
    make_writer: MakeWriter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sessionstore")
    fake = FakeWrite()
    reported: list[FailedWrite] = []
    writer = make_writer(fake, batch_size=4, max_delay=0.0, on_write_error=reported.append)
    bad = item(content=f"{CANARY} in the content", metadata={"secret": CANARY}, tokens=3)
    fake.poison[bad.id] = quoting_error()
    fake.fail(RuntimeError(f"driver bug while encoding {CANARY}"), 1)  # an unexpected error
    others = items(3)
    for i in [bad, *others]:
        writer.put_nowait(i)

    await flush(writer)

    assert [f.id for f in writer.set_aside()] == [bad.id]
    reason = writer.set_aside()[0].reason
    assert CANARY not in reason
    # what the reason does say: class, SQLSTATE, the schema objects, the sizes
    assert reason.startswith("InvalidInputError (SQLSTATE 23514; table messages, constraint")
    assert f"content {len(bad.content)} characters" in reason
    assert "tokens 3" in reason
    assert reported == writer.set_aside()
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert any("unexpected RuntimeError" in r.getMessage() for r in loud)
    assert any(str(bad.id) in r.getMessage() for r in loud)  # the set-aside row, by id
    for record in loud:
        assert CANARY not in record.getMessage()
        assert record.exc_info is None  # a traceback would print the exception's text


async def test_an_outage_logs_one_warning_and_one_recovery(
    make_writer: MakeWriter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sessionstore")
    fake = FakeWrite()
    writer = make_writer(fake, batch_size=10, max_delay=0.0)
    fake.fail(StoreUnavailableError("database unavailable: connection refused"), 20)
    for i in items(3):
        writer.put_nowait(i)
    await flush(writer)
    assert writer.stats().retried == 20
    loud = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert len(loud) == 2, loud
    (down_level, down), (back_level, back) = loud
    assert down_level == "WARNING"
    assert "could not be written (StoreUnavailableError: database unavailable" in down
    assert back_level == "INFO"
    assert "writing again" in back
    # each retry is still there for whoever wants it
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) >= 20


async def test_write_deadline_counts_from_the_first_attempt(make_writer: MakeWriter) -> None:
    """A first attempt that hangs (a server that stopped answering, before any
    command_timeout) counts: the deadline does not wait for a first failure."""
    fake = FakeWrite()
    fake.gate = asyncio.Event()  # every attempt hangs
    writer = make_writer(fake, batch_size=10, max_delay=0.0, write_deadline=0.2)
    accepted = items(3)
    for i in accepted:
        writer.put_nowait(i)
    await fake.wait_for_calls(1)
    started = time.monotonic()
    with pytest.raises(WriteBehindError, match="first attempt has not finished") as info:
        await flush(writer)
    assert time.monotonic() - started < 0.2 + 0.5  # the bound on how late it may be
    assert ids(info.value.unwritten) == ids(accepted)
    assert len(fake.calls) == 1  # no failure happened: only the deadline spoke
    with pytest.raises(WriteBehindError, match="were not written"):
        async with asyncio.timeout(BOUND):
            await writer.close()


async def test_pending_holds_exactly_the_unresolved_messages(make_writer: MakeWriter) -> None:
    """What read-your-writes adds to reads: accepted, not yet written or set aside."""
    fake = FakeWrite()
    fake.gate = asyncio.Event()
    writer = make_writer(fake, batch_size=2, max_delay=0.0, write_deadline=0.1)
    bad, good, later = items(3)
    fake.poison[bad.id] = InvalidInputError("content", "bad")
    for i in (bad, good, later):
        writer.put_nowait(i)
    assert ids(writer.pending.matching(CONVERSATION)) == ids([bad, good, later])
    await fake.wait_for_calls(1)  # [bad, good] in flight: still pending
    assert ids(writer.pending.matching(CONVERSATION)) == ids([bad, good, later])
    fake.gate.set()
    await flush(writer)
    assert not writer.pending  # written or set aside: nothing left to add to reads

    fake.always = StoreUnavailableError("database unavailable")
    stuck = item()
    writer.put_nowait(stuck)
    assert ids(writer.pending.matching(CONVERSATION)) == [stuck.id]
    with pytest.raises(WriteBehindError):
        async with asyncio.timeout(BOUND):
            await writer.close()
    assert not writer.pending  # handed over with the error (spilled, when configured)
