"""record_turn latency while 50,000 expired sessions are cleaned up.

    python bench/cleanup.py               # embedded PostgreSQL; or --dsn URL

Four tasks call record_turn on 100 live sessions without pause, first alone (baseline),
then while two cleaners run cleanup_expired(batch_size=1000) concurrently. Prints p50,
p99 and max latency of each phase, and the cleanup's duration and totals.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from contextlib import ExitStack

import asyncpg
from common import fresh_database

import sessionstore
from sessionstore.embedded import embedded_server

EXPIRED = 50_000


async def _turns(
    store: sessionstore.SessionStore, ids: list[object], stop: asyncio.Event
) -> list[float]:
    latencies: list[float] = []
    i = 0
    while not stop.is_set():
        started = time.perf_counter()
        await store.sessions.record_turn(ids[i % len(ids)], tokens=1)  # type: ignore[arg-type]
        latencies.append((time.perf_counter() - started) * 1000)
        i += 1
    return latencies


def _summary(name: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"{name:<22} {len(ms):>8} {q[49]:>8.2f} {q[98]:>8.2f} {max(ms):>8.2f}"


async def run(dsn: str, seconds: float) -> None:
    target = await fresh_database(dsn, "cleanup")
    async with sessionstore.connect(target, max_size=8, cache_size=0) as store:
        ids = [(await store.sessions.create(f"live-{i}")).id for i in range(100)]
        conn = await asyncpg.connect(target)
        await conn.execute(
            "INSERT INTO sessions (user_id, expires_at) SELECT 'old-' || g,"
            " now() - interval '1 hour' FROM generate_series(1, $1) g",
            EXPIRED,
        )
        await conn.execute("VACUUM ANALYZE sessions")

        stop = asyncio.Event()
        writers = [asyncio.create_task(_turns(store, ids, stop)) for _ in range(4)]
        await asyncio.sleep(seconds)
        stop.set()
        baseline = [ms for w in writers for ms in await w]

        stop = asyncio.Event()
        writers = [asyncio.create_task(_turns(store, ids, stop)) for _ in range(4)]
        started = time.perf_counter()
        totals = await asyncio.gather(
            store.sessions.cleanup_expired(batch_size=1000),
            store.sessions.cleanup_expired(batch_size=1000),
        )
        cleanup_s = time.perf_counter() - started
        stop.set()
        during = [ms for w in writers for ms in await w]
        left = await conn.fetchval("SELECT count(*) FROM sessions WHERE user_id LIKE 'old-%'")
        await conn.close()

    print(
        f"cleanup of {EXPIRED} expired sessions by two cleaners: {cleanup_s:.2f} s,"
        f" totals {totals} (sum {sum(totals)}), {left} left"
    )
    print(f"{'record_turn':<22} {'calls':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(_summary("alone", baseline))
    print(_summary("during cleanup", during))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=os.environ.get("SESSIONSTORE_DATABASE_URL"))
    parser.add_argument("--baseline-seconds", type=float, default=3.0)
    args = parser.parse_args()
    with ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(embedded_server())
        asyncio.run(run(dsn, args.baseline_seconds))


if __name__ == "__main__":
    main()
