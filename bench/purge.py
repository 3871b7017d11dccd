"""add_turn latency of other users while one user's 100,000 messages are purged.

    python bench/purge.py --dsn URL          # a server where a fresh database may be made

The doomed user has 20 sessions with 5,000 messages each. Eight tasks run add_turn for
eight other users without pause, first alone (baseline), then while purge_user runs
(batch_size 1,000). Prints p50, p99 and max latency of each phase, and the purge's
duration and counts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from uuid import UUID

import asyncpg
from common import fresh_database

import sessionstore

SESSIONS, PER_SESSION, WRITERS = 20, 5_000, 8


async def _chat(store: sessionstore.SessionStore, sid: UUID, stop: asyncio.Event) -> list[float]:
    latencies: list[float] = []
    while not stop.is_set():
        started = time.perf_counter()
        await store.add_turn(f"live-{sid}", "user", "hello", session_id=sid, tokens=1)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def _summary(name: str, latencies: list[float]) -> str:
    q = statistics.quantiles(latencies, n=100)
    return (
        f"{name}: {len(latencies)} add_turn, p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms,"
        f" max {max(latencies):.2f} ms"
    )


async def main(dsn: str, baseline: float) -> None:
    target = await fresh_database(dsn, "purge")
    conn = await asyncpg.connect(target)
    await conn.execute(
        """
        WITH s AS (
            INSERT INTO sessions (user_id) SELECT 'doomed' FROM generate_series(1, $1)
            RETURNING id
        ),
        c AS (
            INSERT INTO conversations (continuation_id, session_id, message_count)
            SELECT 'c-' || s.id, s.id, $2 FROM s RETURNING id
        )
        INSERT INTO messages (conversation_id, seq, role, content)
        SELECT c.id, g, 'user', 'stored message' FROM c, generate_series(1, $2) g
        """,
        SESSIONS,
        PER_SESSION,
    )
    await conn.execute("VACUUM ANALYZE")
    await conn.close()
    async with sessionstore.connect(target, max_size=WRITERS + 2) as store:
        sids = [(await store.sessions.create(f"other-{i}")).id for i in range(WRITERS)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_chat(store, sid, stop)) for sid in sids]
        await asyncio.sleep(baseline)
        stop.set()
        alone = [x for t in tasks for x in await t]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_chat(store, sid, stop)) for sid in sids]
        started = time.perf_counter()
        counts = await store.purge_user("doomed", batch_size=1_000)
        took = time.perf_counter() - started
        stop.set()
        during = [x for t in tasks for x in await t]
    print(f"purge_user: {counts} in {took:.2f} s")
    print(_summary("alone", alone))
    print(_summary("during purge", during))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--baseline", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.baseline))
