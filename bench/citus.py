"""The chat loop on a Citus coordinator next to one PostgreSQL on the same machine.

    python bench/citus.py --postgres postgresql://postgres@127.0.0.1:5432/postgres \\
        --citus postgresql://postgres@127.0.0.1:9700/postgres --clients 8 --turns 50

Each target gets a fresh database at head (on Citus: the ``citus`` extension on every
node, the workers registered, and the distributed layout of ``sessionstore.distribution``).
Each client has its own session and conversation and runs the chat loop: ``add_turn``
with ``context=20`` for the user's message, then ``enqueue_turn`` for the reply. Printed:
turns per second, the latency of ``add_turn`` (p50, p99), and on Citus how many
single-shard and multi-shard executions the coordinator ran per turn
(``citus_stat_counters``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
from common import pct, with_database

import sessionstore
from sessionstore.distribution import distribute
from sessionstore.migrations import upgrade

_WORKERS = "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0 AND isactive"
_COUNTERS = """
SELECT query_execution_single_shard AS single, query_execution_multi_shard AS multi
FROM citus_stat_counters WHERE name = current_database()
"""


def _at(dsn: str, host: str, port: int) -> str:
    parts = urlsplit(dsn)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}:{port}" if auth else f"{host}:{port}"))


@asynccontextmanager
async def _database(admin_dsn: str, *, citus: bool) -> AsyncIterator[str]:
    """A fresh database at head on ``admin_dsn``'s server (distributed with ``citus``)."""
    name = f"sessionstore_bench_{uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    workers: list[tuple[str, int]] = []
    try:
        if citus:
            workers = [(r["nodename"], r["nodeport"]) for r in await admin.fetch(_WORKERS)]
            await admin.execute("SET citus.enable_create_database_propagation = on")
        await admin.execute(f'CREATE DATABASE "{name}"')
        if citus:
            await admin.execute(f'ALTER DATABASE "{name}" SET citus.enable_stat_counters = on')
    finally:
        await admin.close()
    dsn = with_database(admin_dsn, name)
    try:
        if citus:
            for host, port in workers:
                worker = await asyncpg.connect(with_database(_at(admin_dsn, host, port), name))
                await worker.execute("CREATE EXTENSION IF NOT EXISTS citus")
                await worker.close()
            conn = await asyncpg.connect(dsn)
            here = urlsplit(admin_dsn)
            await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
            await conn.execute(
                "SELECT citus_set_coordinator_host($1, $2)", here.hostname, here.port or 5432
            )
            for host, port in workers:
                await conn.execute("SELECT citus_add_node($1, $2)", host, port)
            await conn.close()
        await asyncio.to_thread(upgrade, dsn)
        if citus:
            conn = await asyncpg.connect(dsn)
            await distribute(conn, citus=True)
            await conn.close()
        yield dsn
    finally:
        admin = await asyncpg.connect(admin_dsn)
        if citus:
            await admin.execute("SET citus.enable_create_database_propagation = on")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _chat(dsn: str, clients: int, turns: int, *, citus: bool) -> dict[str, Any]:
    latencies: list[float] = []
    async with sessionstore.connect(dsn, max_size=clients + 2) as store:
        sessions = [await store.sessions.create(f"bench-{n}") for n in range(clients)]
        for n, s in enumerate(sessions):  # each conversation placed (its route claimed)
            await store.add_turn(f"bench-{n}", "user", "hello", session_id=s.id)

        async def client(n: int) -> None:
            sid = sessions[n].id
            for t in range(turns):
                started = time.perf_counter()
                await store.add_turn(
                    f"bench-{n}", "user", f"question {t}", session_id=sid, context=20
                )
                latencies.append((time.perf_counter() - started) * 1000)
                await store.enqueue_turn(f"bench-{n}", "assistant", f"answer {t}", session_id=sid)

        admin = await asyncpg.connect(dsn)
        before = await admin.fetchrow(_COUNTERS) if citus else None
        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        await store.flush()
        elapsed = time.perf_counter() - started
        after = await admin.fetchrow(_COUNTERS) if citus else None
        await admin.close()
    done = clients * turns
    result: dict[str, Any] = {
        "turns_per_s": round(done / elapsed, 1),
        "add_turn_p50_ms": pct(latencies, 50),
        "add_turn_p99_ms": pct(latencies, 99),
    }
    if before is not None and after is not None:
        # Per chat-loop turn: the add_turn and its share of the write-behind batches.
        result["single_shard_per_turn"] = round((after["single"] - before["single"]) / done, 2)
        result["multi_shard_per_turn"] = round((after["multi"] - before["multi"]) / done, 2)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", required=True, help="one PostgreSQL (an admin URL)")
    parser.add_argument("--citus", required=True, help="a Citus coordinator (an admin URL)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--turns", type=int, default=50)
    args = parser.parse_args()
    results = {}
    for label, dsn, citus in (("postgres", args.postgres, False), ("citus", args.citus, True)):
        async with _database(dsn, citus=citus) as database:
            results[label] = await _chat(database, args.clients, args.turns, citus=citus)
    print(json.dumps({"clients": args.clients, "turns": args.turns, **results}))


if __name__ == "__main__":
    asyncio.run(main())
