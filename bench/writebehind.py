"""Write-behind throughput and memory.

    python bench/writebehind.py                  # embedded PostgreSQL, 100k and 1M messages
    python bench/writebehind.py --dsn URL        # any server (a fresh database is created)

Each size runs in its own process (peak RSS only grows). Prints a table and JSON lines.
Throughput counts messages durable after ``flush()``, from the first ``enqueue``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import ExitStack

import asyncpg
from common import fresh_database

import sessionstore
from sessionstore.embedded import embedded_server


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _one(
    dsn: str, messages: int, producers: int, conversations: int, max_pending: int
) -> dict[str, object]:
    target = await fresh_database(dsn, "writebehind")
    async with sessionstore.connect(target, max_size=4, max_pending=max_pending) as store:
        convs = [
            (await store.conversations.get_or_create(f"wb-{i}")).id for i in range(conversations)
        ]
        per = messages // producers
        rss_before = _rss_mib()
        cpu0 = time.process_time()
        t0 = time.perf_counter()

        async def produce(p: int) -> None:
            for i in range(per):
                await store.messages.enqueue(
                    convs[(p + i) % conversations], "assistant", f"message {p}/{i}"
                )

        await asyncio.gather(*(produce(p) for p in range(producers)))
        accepted = time.perf_counter() - t0
        await store.flush()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        written = store.stats().written
    conn = await asyncpg.connect(target)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM messages")
    finally:
        await conn.close()
    assert stored == written == per * producers, (stored, written)
    return {
        "messages": stored,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(stored / elapsed),
        "enqueue_seconds": round(accepted, 2),
        "client_cpu_s": round(cpu, 2),
        "rss_before_mib": round(rss_before, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
        "max_pending": max_pending,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=os.environ.get("SESSIONSTORE_DATABASE_URL"))
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--producers", type=int, default=50)
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--max-pending", type=int, default=10_000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        result = asyncio.run(
            _one(args.dsn, args.one, args.producers, args.conversations, args.max_pending)
        )
        print(json.dumps(result))
        return

    with ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(embedded_server())
        server = "embedded" if not args.dsn else "given DSN"
        print(
            f"write-behind benchmark on {server}; {os.cpu_count()} cores,"
            f" Python {platform.python_version()}"
        )
        rows = []
        for size in (int(s) for s in args.sizes.split(",")):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--dsn",
                    dsn,
                    "--one",
                    str(size),
                    "--producers",
                    str(args.producers),
                    "--conversations",
                    str(args.conversations),
                    "--max-pending",
                    str(args.max_pending),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]))
    print(
        f"\n{'messages':>10} {'seconds':>8} {'msg/s':>8} {'client CPU s':>12} {'peak RSS MiB':>13}"
    )
    for r in rows:
        print(
            f"{r['messages']:>10} {r['seconds']:>8} {r['messages_per_s']:>8}"
            f" {r['client_cpu_s']:>12} {r['peak_rss_mib']:>13}"
        )


if __name__ == "__main__":
    main()
