"""Session lifecycle under concurrency: every transition from every state, expiry,
sliding expiry, extend, cancellation, and cleanup racing writers and other cleaners."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from uuid import UUID

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    InvalidStateError,
    SessionExpiredError,
    SessionStatus,
    SessionStore,
)

from ...conftest import store_overrides
from ...helpers import expire

Action = Callable[[SessionStore, UUID], Awaitable[object]]
ACTIONS: dict[str, Action] = {
    "pause": lambda st, s: st.sessions.pause(s),
    "resume": lambda st, s: st.sessions.resume(s),
    "complete": lambda st, s: st.sessions.complete(s),
    "record_turn": lambda st, s: st.sessions.record_turn(s, tokens=1),
    "add_turn": lambda st, s: st.add_turn("c", "user", "x", session_id=s, tokens=1),
    "update": lambda st, s: st.sessions.update(s, title="changed"),
    "extend": lambda st, s: st.sessions.extend(s, timedelta(hours=1)),
}
# What each action does from each state: the resulting status, or the error.
OUTCOMES: dict[tuple[str, str], SessionStatus | type[Exception]] = {
    ("active", "pause"): SessionStatus.PAUSED,
    ("active", "resume"): InvalidStateError,
    ("active", "complete"): SessionStatus.COMPLETED,
    ("active", "record_turn"): SessionStatus.ACTIVE,
    ("active", "add_turn"): SessionStatus.ACTIVE,
    ("active", "update"): SessionStatus.ACTIVE,
    ("active", "extend"): SessionStatus.ACTIVE,
    ("paused", "pause"): InvalidStateError,
    ("paused", "resume"): SessionStatus.ACTIVE,
    ("paused", "complete"): SessionStatus.COMPLETED,
    ("paused", "record_turn"): InvalidStateError,
    ("paused", "add_turn"): InvalidStateError,
    ("paused", "update"): SessionStatus.PAUSED,
    ("paused", "extend"): SessionStatus.PAUSED,
    ("completed", "pause"): InvalidStateError,
    ("completed", "resume"): InvalidStateError,
    ("completed", "complete"): InvalidStateError,
    ("completed", "record_turn"): InvalidStateError,
    ("completed", "add_turn"): InvalidStateError,
    ("completed", "update"): SessionStatus.COMPLETED,
    ("completed", "extend"): InvalidStateError,
    **{("expired", a): SessionExpiredError for a in ACTIONS},
}


async def _in_state(store: SessionStore, conn: asyncpg.Connection, state: str) -> UUID:
    s = await store.sessions.create("u")
    if state == "paused":
        await store.sessions.pause(s.id)
    elif state == "completed":
        await store.sessions.complete(s.id)
    elif state == "expired":
        await expire(conn, s.id)
    return s.id


@pytest.mark.parametrize(("state", "action"), list(OUTCOMES), ids=[f"{s}-{a}" for s, a in OUTCOMES])
async def test_every_action_from_every_state(
    store: SessionStore, conn: asyncpg.Connection, state: str, action: str
) -> None:
    sid = await _in_state(store, conn, state)
    before = await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", sid)
    expected = OUTCOMES[(state, action)]
    if isinstance(expected, SessionStatus):
        await ACTIONS[action](store, sid)
        assert (await store.sessions.get(sid)).status is expected
        return
    with pytest.raises(expected) as info:
        await ACTIONS[action](store, sid)
    after = await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", sid)
    assert before is not None
    assert after is not None
    if state == "expired":
        # the only change: the expiry it found is now persisted
        assert (after["status"], before["status"]) == ("expired", "active")
        assert {k: v for k, v in after.items() if k not in ("status", "version", "updated_at")} == {
            k: v for k, v in before.items() if k not in ("status", "version", "updated_at")
        }
    else:
        assert after == before
        if action in ("pause", "resume", "complete"):
            assert state in str(info.value)
            assert "→" in str(info.value)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_extend_and_sliding_expiry(dsn: str) -> None:
    async with sessionstore.connect(
        dsn, sliding_expiry=True, default_ttl=timedelta(hours=2), **store_overrides()
    ) as store:
        s = await store.sessions.create("u", ttl=timedelta(minutes=1))
        assert s.expires_at is not None
        turned = await store.sessions.record_turn(s.id)
        assert turned.expires_at is not None
        assert turned.expires_at >= turned.updated_at + timedelta(hours=2)
        turn = await store.add_turn("c", "user", "x", session_id=s.id)
        assert turn.session is not None
        assert turn.session.expires_at is not None
        assert turn.session.expires_at >= turned.expires_at
        extended = await store.sessions.extend(s.id, timedelta(minutes=5))
        assert extended.expires_at is not None
        assert extended.expires_at < turn.session.expires_at  # extend sets, not pushes
        assert extended.version == turn.session.version + 1
    async with sessionstore.connect(dsn, **store_overrides()) as fixed:
        s = await fixed.sessions.create("u", ttl=timedelta(minutes=1))
        assert (await fixed.sessions.record_turn(s.id)).expires_at == s.expires_at


async def test_cancelled_turns_are_all_or_nothing(dsn: str, conn: asyncpg.Connection) -> None:
    async with sessionstore.connect(dsn, **store_overrides()) as store:
        s = await store.sessions.create("u")
        rng = random.Random(7)

        async def one(i: int) -> None:
            await store.add_turn(f"cancel-{i}", "user", f"m{i}", session_id=s.id, tokens=1)

        tasks = [asyncio.create_task(one(i)) for i in range(100)]
        # cancel each at a random point of its life: before sending, in flight, or after
        for task in rng.sample(tasks, len(tasks)):
            await asyncio.sleep(rng.uniform(0, 0.003))
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
        # Every turn is fully present or fully absent. One statement, so one snapshot: a
        # cancelled task's statement may still commit while its connection is cleaned up
        # in the background (the cancel request can lose the race), and two reads could
        # straddle that commit.
        seen = await conn.fetchrow(
            "SELECT s.turn_count, s.total_tokens,"
            " (SELECT count(*) FROM conversations) AS conversations,"
            " (SELECT count(*) FROM conversations c WHERE c.message_count <> 1"
            "  OR (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) <> 1) AS partial"
            " FROM sessions s"
        )
        assert seen is not None
        assert seen["partial"] == 0
        assert seen["turn_count"] == seen["total_tokens"] == seen["conversations"]
        assert cancelled > 0  # some really were cancelled
        # and the pool serves new calls
        assert (await store.add_turn("after", "user", "x", session_id=s.id)).message.seq == 1


async def test_cleanup_races_writers_and_another_cleaner(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO sessions (user_id, expires_at)"
        " SELECT 'old-' || g, now() - interval '1 hour' FROM generate_series(1, 50000) g"
    )
    live = [await store.sessions.create("live") for _ in range(10)]
    progress: list[int] = []
    writes = 0
    stop = asyncio.Event()

    async def writer() -> None:
        nonlocal writes
        while not stop.is_set():
            await store.sessions.record_turn(live[writes % len(live)].id, tokens=1)
            writes += 1

    async def cleaner(record: list[int] | None) -> int:
        return await store.sessions.cleanup_expired(
            batch_size=1000, on_progress=None if record is None else record.append
        )

    writing = asyncio.create_task(writer())
    totals = await asyncio.gather(cleaner(progress), cleaner(None))
    stop.set()
    await writing
    assert sum(totals) == 50000  # each row deleted once, between the two
    assert await conn.fetchval("SELECT count(*) FROM sessions WHERE user_id LIKE 'old-%'") == 0
    assert progress == sorted(progress)
    assert progress[-1] == totals[0]
    turns = await conn.fetchval("SELECT sum(turn_count) FROM sessions WHERE user_id = 'live'")
    assert turns == writes > 0
