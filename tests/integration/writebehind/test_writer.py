"""Write-behind: batched, ordered, retried, never lost — on the suite's server, and chaos
tests on an embedded server the test stops and restarts."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest
from typer.testing import CliRunner

import sessionstore
from sessionstore import (
    FailedWrite,
    InvalidInputError,
    QueueFullError,
    SessionStore,
    SessionStoreError,
    WriteBehindError,
)
from sessionstore.cli import app
from sessionstore.migrations import upgrade
from sessionstore.models import PendingWrite
from sessionstore.writebehind.spill import append_spill

from ...conftest import store_overrides
from ...helpers import eventually, expire, wait_for_lock_waiters
from ...servers import ControlledServer, with_database


async def _ids_by_seq(conn: asyncpg.Connection, conversation_id: UUID) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT id, seq FROM messages WHERE conversation_id = $1 ORDER BY seq", conversation_id
    )
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["id"] for r in rows]


async def test_enqueue_then_flush_is_durable_in_order(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    c = await store.conversations.get_or_create("c")
    ids = [await store.messages.enqueue(c.id, "user", f"m{i}", tokens=1) for i in range(1200)]
    await store.flush()
    assert await _ids_by_seq(conn, c.id) == ids
    conv = await store.conversations.get(c.id)
    assert (conv.message_count, conv.total_tokens) == (1200, 1200)
    stats = store.stats()
    assert (stats.queued, stats.in_flight, stats.written, stats.set_aside) == (0, 0, 1200, 0)
    assert stats.oldest_age is None


async def test_enqueue_turn_creates_and_counts(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("u")
    ids = [
        await store.enqueue_turn(
            "turns", "user" if i % 2 == 0 else "assistant", f"t{i}", session_id=s.id, tokens=2
        )
        for i in range(30)
    ]
    await store.flush()
    conv = await store.conversations.get_by_continuation_id("turns")
    assert await _ids_by_seq(conn, conv.id) == ids
    after = await store.sessions.get(s.id)
    assert (after.turn_count, after.total_tokens) == (30, 60)
    assert conv.session_id == s.id


async def test_mixed_kinds_keep_their_order(store: SessionStore, conn: asyncpg.Connection) -> None:
    c = await store.conversations.get_or_create("mixed")
    ids = []
    for i in range(20):
        if i % 3:
            ids.append(await store.messages.enqueue(c.id, "user", str(i)))
        else:
            ids.append(await store.enqueue_turn("mixed", "assistant", str(i)))
    await store.flush()
    assert await _ids_by_seq(conn, c.id) == ids


async def test_unwritable_rows_are_set_aside_and_the_rest_lands(
    dsn: str, conn: asyncpg.Connection
) -> None:
    reported: list[FailedWrite] = []
    async with sessionstore.connect(
        dsn, on_write_error=reported.append, **store_overrides()
    ) as store:
        c = await store.conversations.get_or_create("c")
        s = await store.sessions.create("u")
        await conn.execute("ALTER TABLE messages ADD CONSTRAINT no_boom CHECK (content <> 'boom')")
        good = [await store.messages.enqueue(c.id, "user", f"ok{i}") for i in range(4)]
        bad = await store.messages.enqueue(c.id, "user", "boom")
        good += [await store.messages.enqueue(c.id, "user", f"ok{i}") for i in range(4, 8)]
        orphan = await store.messages.enqueue("00000000-0000-0000-0000-000000000000", "user", "x")
        await expire(conn, s.id)
        late_turn = await store.enqueue_turn("late", "user", "x", session_id=s.id)
        await store.flush()
        assert await _ids_by_seq(conn, c.id) == good
        assert {f.id: f.reason for f in reported}.keys() == {bad, orphan, late_turn}
        reasons = {f.id: f for f in store.failed_writes()}
        assert "no_boom" in reasons[bad].reason
        assert reasons[bad].sqlstate == "23514"
        assert reasons[orphan].reason == "conversation not found"
        assert reasons[late_turn].reason == "session not found, not active or expired"
        assert store.stats().set_aside == 3
        assert store.stats().written == 8
        assert (
            await conn.fetchval("SELECT count(*) FROM conversations WHERE continuation_id = 'late'")
            == 0
        )


async def test_full_queue_waits_and_nowait_raises(dsn: str, conn: asyncpg.Connection) -> None:
    async with sessionstore.connect(
        dsn, max_pending=5, batch_size=2, max_delay=0, **store_overrides()
    ) as store:
        c = await store.conversations.get_or_create("c")
        async with conn.transaction():
            # hold the conversation row: the writer's first batch blocks on it
            await conn.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", c.id)
            first = await store.messages.enqueue(c.id, "user", "0")
            await wait_for_lock_waiters(conn, 1)
            accepted = [first] + [
                await store.messages.enqueue(c.id, "user", str(i)) for i in range(1, 6)
            ]
            assert store.stats().queued == 5
            with pytest.raises(QueueFullError):
                store.messages.enqueue_nowait(c.id, "user", "refused")
            waiting = asyncio.create_task(store.messages.enqueue(c.id, "user", "6"))
            done, _ = await asyncio.wait([waiting], timeout=0.2)
            assert not done  # it waits for room instead of dropping
        accepted.append(await waiting)
        await store.flush()
        assert await _ids_by_seq(conn, c.id) == accepted


async def test_stats_count_the_messages_being_collected(dsn: str) -> None:
    """Messages the writer has taken into the next batch, still waiting for more to
    arrive, are in flight: stats() never loses sight of an accepted message."""
    async with sessionstore.connect(dsn, batch_size=3, max_delay=30, **store_overrides()) as store:
        c = await store.conversations.get_or_create("c")
        await store.messages.enqueue(c.id, "user", "a")
        await store.messages.enqueue(c.id, "user", "b")
        await eventually(lambda: store.stats().in_flight == 2, what="the writer took both")
        stats = store.stats()
        assert (stats.queued, stats.in_flight, stats.written) == (0, 2, 0)
        assert stats.oldest_age is not None
        await store.messages.enqueue(c.id, "user", "c")  # batch_size: sent at once
        async with asyncio.timeout(10):
            await store.flush()
        stats = store.stats()
        assert (stats.queued, stats.in_flight, stats.written) == (0, 0, 3)


async def test_enqueue_checks_input_before_accepting(store: SessionStore) -> None:
    with pytest.raises(InvalidInputError) as info:
        await store.messages.enqueue("nope", "user", "x")
    assert info.value.field == "conversation_id"
    with pytest.raises(InvalidInputError):
        await store.enqueue_turn("c", "user", "\x00")
    with pytest.raises(InvalidInputError):
        store.messages.enqueue_nowait("00000000-0000-0000-0000-000000000000", "wizard", "x")
    assert store.stats().queued == 0
    # A user view has no write-behind queue, so no method that could only fail.
    assert not hasattr(store.as_user("u").messages, "enqueue")


async def test_closed_store_accepts_nothing(dsn: str) -> None:
    store = await sessionstore.connect(dsn, **store_overrides())
    c = await store.conversations.get_or_create("c")
    await store.messages.enqueue(c.id, "user", "x")
    await store.close()
    await store.close()
    with pytest.raises(SessionStoreError, match="closed"):
        await store.messages.enqueue(c.id, "user", "y")


# -- chaos, on a server the tests control ----------------------------------------------


@pytest.fixture(scope="module")
def controlled() -> Iterator[ControlledServer]:
    with tempfile.TemporaryDirectory(prefix="sessionstore-chaos-") as tmp:
        server = ControlledServer(Path(tmp))
        try:
            yield server
        finally:
            server.cleanup()


@pytest.fixture
async def chaos_dsn(controlled: ControlledServer) -> str:
    admin = await asyncpg.connect(controlled.dsn)
    name = f"chaos_{id(object())}"
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    dsn = with_database(controlled.dsn, name)
    await asyncio.to_thread(upgrade, dsn)
    return dsn


async def _postmaster_start(dsn: str) -> datetime:
    conn = await asyncpg.connect(dsn)
    try:
        started: datetime = await conn.fetchval("SELECT pg_postmaster_start_time()")
        return started
    finally:
        await conn.close()


async def _terminate_store_backends(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'sessionstore' AND datname = current_database()"
            )
        )
    finally:
        await conn.close()


async def test_zero_loss_under_faults(chaos_dsn: str, controlled: ControlledServer) -> None:
    producers, per_producer, conversations = 200, 500, 50
    total = producers * per_producer
    faults = {10_000: "terminate", 30_000: "terminate", 50_000: "restart", 70_000: "terminate"}
    triggered: asyncio.Queue[str] = asyncio.Queue()
    terminated = 0
    started = await _postmaster_start(chaos_dsn)
    async with sessionstore.connect(chaos_dsn, max_size=4, write_deadline=120) as store:
        convs = [
            (await store.conversations.get_or_create(f"c{i}")).id for i in range(conversations)
        ]
        order: dict[UUID, list[UUID]] = {c: [] for c in convs}
        enqueued = 0

        async def produce(p: int) -> None:
            nonlocal enqueued
            for i in range(per_producer):
                conv = convs[(p * 7 + i) % conversations]
                order[conv].append(await store.messages.enqueue(conv, "user", f"{p}:{i}"))
                enqueued += 1
                if enqueued in faults:
                    triggered.put_nowait(faults[enqueued])

        async def inject() -> None:
            nonlocal terminated
            for _ in faults:
                if await triggered.get() == "restart":
                    await asyncio.to_thread(controlled.restart)
                else:
                    terminated += await _terminate_store_backends(chaos_dsn)

        await asyncio.gather(inject(), *(produce(p) for p in range(producers)))
    # leaving `async with` closed the store: close() drains everything accepted
    conn = await asyncpg.connect(chaos_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == total
        assert await conn.fetchval("SELECT count(DISTINCT content) FROM messages") == total
        for conv, ids in order.items():
            assert await _ids_by_seq(conn, conv) == ids
            assert await conn.fetchval(
                "SELECT message_count FROM conversations WHERE id = $1", conv
            ) == len(ids)
    finally:
        await conn.close()
    # the faults were real: backends were killed and the server restarted mid-run
    assert terminated >= 1
    assert await _postmaster_start(chaos_dsn) > started


async def test_close_with_the_database_down_spills_and_replay_completes(
    chaos_dsn: str, controlled: ControlledServer, tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    store = await sessionstore.connect(chaos_dsn, write_deadline=1.0, spill_path=spill)
    c = await store.conversations.get_or_create("c")
    durable = [await store.messages.enqueue(c.id, "user", f"d{i}") for i in range(100)]
    await store.flush()
    controlled.stop()
    try:
        late = [await store.messages.enqueue(c.id, "user", f"late{i}") for i in range(50)]
        with pytest.raises(
            WriteBehindError, match=r"50 accepted messages were not written"
        ) as info:
            await store.close()
        assert [m.id for m in info.value.unwritten] == late
        assert info.value.spill_path == spill
        assert len(spill.read_text().splitlines()) == 50
    finally:
        controlled.start()
    async with sessionstore.connect(chaos_dsn) as again:
        assert await again.replay(spill) == 50
        assert await again.replay(spill) == 50  # the second replay adds nothing
        assert await again.messages.count(c.id) == 150
    conn = await asyncpg.connect(chaos_dsn)
    try:
        assert await _ids_by_seq(conn, c.id) == durable + late
    finally:
        await conn.close()


async def test_replay_command(dsn: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    async with sessionstore.connect(dsn, **store_overrides()) as store:
        c = await store.conversations.get_or_create("c")
    items = [
        PendingWrite(
            uuid4(), "message", c.id, None, None, "user", f"r{i}", None, 1, datetime.now(UTC)
        )
        for i in range(3)
    ]
    spill = tmp_path / "spill.jsonl"
    append_spill(spill, items)
    runner = CliRunner()
    for _ in range(2):
        result = await asyncio.to_thread(runner.invoke, app, ["replay", str(spill), "--dsn", dsn])
        assert result.exit_code == 0, result.output
        assert "replayed 3 messages" in result.output
    assert await _ids_by_seq(conn, c.id) == [i.id for i in items]


async def test_enqueue_on_a_store_never_opened_is_refused(dsn: str) -> None:
    """It used to be accepted, then set aside at close: a message lost without an error."""
    store = sessionstore.connect(dsn)
    with pytest.raises(SessionStoreError, match="not open"):
        await store.messages.enqueue("00000000-0000-0000-0000-000000000001", "user", "x")
    with pytest.raises(SessionStoreError, match="not open"):
        await store.enqueue_turn("c", "user", "x")
    await store.close()
    assert store.failed_writes() == []
