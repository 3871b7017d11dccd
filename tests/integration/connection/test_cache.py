"""The session cache: own writes at once, other processes through LISTEN/NOTIFY (or the
TTL behind a transaction pooler), expiry evaluated on every hit."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

import sessionstore
from sessionstore import SessionStatus, SessionStore

from ...conftest import store_overrides
from ...helpers import eventually
from ...proxy import Proxy

POOLER = store_overrides()["pooler"]
NOTIFY = POOLER != "transaction"


def _cached(**extra: Any) -> dict[str, Any]:
    return {**store_overrides(), "cache_size": 100, "cache_ttl": 30.0, **extra}


async def _listening(store: SessionStore) -> None:
    """The listener connects in the background after open(), and the cache is bypassed
    until it does; wait for it (there is no event to await). No-op in TTL mode."""
    await eventually(
        lambda: store.stats().cache_invalidation != "notify" or store.stats().cache_listening,
        what="the cache's listener is connected",
    )


async def test_reads_are_cached_and_own_writes_update_at_once(
    dsn: str, conn: asyncpg.Connection
) -> None:
    async with sessionstore.connect(dsn, **_cached()) as store:
        await _listening(store)
        s = await store.sessions.create("u")
        hits = store.stats().cache_hits
        assert await store.sessions.get(s.id) == s
        assert store.stats().cache_hits == hits + 1
        await store.sessions.update(s.id, title="new")
        assert (await store.sessions.get(s.id)).title == "new"
        await store.sessions.record_turn(s.id, tokens=3)
        turn = await store.add_turn("c", "user", "x", session_id=s.id, tokens=4)
        assert (await store.sessions.get(s.id)).turn_count == 2
        assert turn.session is not None
        assert (await store.sessions.get(s.id)) == turn.session
        await store.enqueue_turn("c", "user", "y", session_id=s.id, tokens=1)
        await store.flush()
        assert (await store.sessions.get(s.id)).turn_count == 3
        await store.sessions.pause(s.id)
        assert (await store.sessions.get(s.id)).status is SessionStatus.PAUSED
        await store.sessions.delete(s.id)
        with pytest.raises(sessionstore.NotFoundError):
            await store.sessions.get(s.id)


async def test_expiry_is_evaluated_on_every_hit(dsn: str) -> None:
    async with sessionstore.connect(dsn, **_cached()) as store:
        await _listening(store)
        # long enough that the first read below is surely before it runs out, loaded or not
        s = await store.sessions.create("u", ttl=timedelta(seconds=1))
        assert (await store.sessions.get(s.id)).status is SessionStatus.ACTIVE
        hits = store.stats().cache_hits
        assert s.expires_at is not None
        # let the session's time run out (on the client's clock); then no round trip follows
        await asyncio.sleep(max(0.0, (s.expires_at - s.created_at).total_seconds()) + 0.05)
        assert (await store.sessions.get(s.id)).status is SessionStatus.EXPIRED
        assert store.stats().cache_hits == hits + 1


@pytest.mark.skipif(not NOTIFY, reason="a transaction pooler carries no LISTEN; see the TTL test")
async def test_other_process_update_arrives_through_notify(dsn: str) -> None:
    async with (
        sessionstore.connect(dsn, **_cached()) as one,
        sessionstore.connect(dsn, **_cached()) as two,
    ):
        await _listening(two)
        s = await one.sessions.create("u", title="before")
        assert (await two.sessions.get(s.id)).title == "before"  # now cached in two
        await one.sessions.update(s.id, title="after")

        async def updated() -> bool:
            return (await two.sessions.get(s.id)).title == "after"

        # well within cache_ttl (30 s): only a notification explains it
        await eventually(updated, what="the other store's update is seen")
        assert two.stats().cache_invalidation == "notify"
        await one.sessions.delete(s.id)

        async def gone() -> bool:
            try:
                await two.sessions.get(s.id)
            except sessionstore.NotFoundError:
                return True
            return False

        await eventually(gone, what="the other store's delete is seen")


async def test_without_notifications_the_ttl_bounds_staleness(dsn: str) -> None:
    ttl = 1.0
    async with (
        sessionstore.connect(dsn, **_cached()) as one,
        sessionstore.connect(dsn, **_cached(notifications=False, cache_ttl=ttl)) as two,
    ):
        assert two.stats().cache_invalidation == "ttl"
        s = await one.sessions.create("u", title="before")
        assert (await two.sessions.get(s.id)).title == "before"
        cached_by = time.monotonic()  # the entry is no younger than this
        await one.sessions.update(s.id, title="after")
        assert (await two.sessions.get(s.id)).title == "before"  # stale, within the TTL
        # once the TTL has run out (nothing to await: time passing is the event), the
        # next read goes to the database
        await asyncio.sleep(max(0.0, cached_by + ttl - time.monotonic()) + 0.05)
        assert (await two.sessions.get(s.id)).title == "after"


async def test_users_never_read_the_service_cache(dsn: str) -> None:
    async with sessionstore.connect(dsn, **_cached()) as store:
        await _listening(store)
        s = await store.sessions.create("someone-else")
        await store.sessions.get(s.id)  # cached on the service path
        # absent to that user (Supabase-like database) or no grant at all (vanilla):
        # either way the database answered, not the cache
        with pytest.raises((sessionstore.NotFoundError, sessionstore.PermissionDeniedError)):
            await store.as_user("intruder").sessions.get(s.id)


@pytest.mark.skipif(not NOTIFY, reason="no listener behind a transaction pooler")
async def test_listener_reconnects_and_bypasses_the_cache_meanwhile(
    proxy: Proxy, dsn: str, conn: asyncpg.Connection
) -> None:
    async with sessionstore.connect(proxy.dsn(dsn), **_cached(min_size=1)) as store:
        await _listening(store)
        s = await store.sessions.create("u", title="a")
        await store.sessions.get(s.id)  # cached
        # Hold the listener down until the test has seen it down: its reconnects are
        # refused while the pool keeps the connection it has. (Left free, it is back
        # within milliseconds, and a poll can miss the outage altogether.)
        proxy.new_connections = "refuse"
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
        )
        assert killed == 1
        # The store learns of the loss when the socket closes; no event to await.
        await eventually(lambda: not store.stats().cache_listening, what="the loss is noticed")
        # while it is down a change made elsewhere is not missed: the cache is bypassed
        await conn.execute(
            "UPDATE sessions SET title = 'b', version = version + 1 WHERE id = $1", s.id
        )
        hits = store.stats().cache_hits
        assert (await store.sessions.get(s.id)).title == "b"
        assert (await store.sessions.get(s.id)).title == "b"
        assert store.stats().cache_hits == hits
        assert not store.stats().cache_listening  # still held down: nothing raced the reads
        # ...and it comes back, and serves from the cache again
        proxy.new_connections = "forward"
        await _listening(store)
        assert (await store.sessions.get(s.id)).title == "b"
        assert (await store.sessions.get(s.id)).title == "b"
        assert store.stats().cache_hits == hits + 1
