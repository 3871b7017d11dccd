"""conversations.fork of a conversation of 10,000 messages.

    python bench/fork.py --dsn URL          # a server where a fresh database may be made

The source holds 10,000 messages of 200 characters, each with a token count and a small
metadata object, in a session. Each run forks all of it (then half of it) into the same
session under a new continuation id; the fork is one transaction whose copy is one
statement. Prints p50, min and max over the runs, and messages copied per second at the
p50. For scale, the same copy as one plain INSERT ... SELECT on a direct connection
(no fork row, no locks): the floor the server sets. The database is dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from urllib.parse import urlsplit

import asyncpg
from common import fresh_database

import sessionstore
from sessionstore import ContinuationId

MESSAGES, RUNS = 10_000, 7

SEED = """
WITH c AS (
    UPDATE conversations SET message_count = $2, total_tokens = $2 * 50,
                             last_message_at = now()
    WHERE id = $1 RETURNING id
)
INSERT INTO messages (conversation_id, seq, role, content, metadata, tokens)
SELECT c.id, g, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END::message_role,
       repeat('x', 190) || lpad(g::text, 10, '0'), jsonb_build_object('n', g, 'model', 'm1'), 50
FROM c, generate_series(1, $2) g
"""
# The floor: the copy alone, into a conversation made for it.
PLAIN_COPY = """
INSERT INTO messages (conversation_id, seq, role, content, metadata, tokens, created_at)
SELECT $2, seq, role, content, metadata, tokens, created_at FROM messages
WHERE conversation_id = $1 AND seq <= $3
"""


def _summary(name: str, seconds: list[float], copied: int) -> str:
    p50 = statistics.median(seconds)
    return (
        f"{name}: p50 {p50 * 1000:.1f} ms (min {min(seconds) * 1000:.1f}, max"
        f" {max(seconds) * 1000:.1f}) over {len(seconds)} runs; {copied / p50:,.0f} messages/s"
    )


async def main(dsn: str, runs: int) -> None:
    target = await fresh_database(dsn, "fork")
    try:
        await _run(target, runs)
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP DATABASE {urlsplit(target).path.lstrip('/')} WITH (FORCE)")
        finally:
            await conn.close()


async def _run(target: str, runs: int) -> None:
    async with sessionstore.connect(target) as store:
        s = await store.sessions.create("bench")
        source = await store.conversations.get_or_create("source", session_id=s.id)
        conn = await asyncpg.connect(target)
        try:
            await conn.execute(SEED, source.id, MESSAGES)
            await conn.execute("VACUUM ANALYZE")
            timings: dict[int, list[float]] = {MESSAGES: [], MESSAGES // 2: []}
            for run in range(runs + 1):  # the first run warms caches and statements
                for through in timings:
                    started = time.perf_counter()
                    fork = await store.conversations.fork(
                        ContinuationId("source"),
                        continuation_id=f"fork-{through}-{run}",
                        session_id=s.id,
                        through_seq=through,
                    )
                    took = time.perf_counter() - started
                    assert fork.message_count == through
                    if run:
                        timings[through].append(took)
            plain: list[float] = []
            for run in range(runs + 1):
                empty = await conn.fetchval(
                    "INSERT INTO conversations (continuation_id) VALUES ($1) RETURNING id",
                    f"plain-{run}",
                )
                started = time.perf_counter()
                await conn.execute(PLAIN_COPY, source.id, empty, MESSAGES)
                if run:
                    plain.append(time.perf_counter() - started)
        finally:
            await conn.close()
    print(f"PostgreSQL: {await _server_version(target)}; source of {MESSAGES:,} messages")
    for through, seconds in timings.items():
        print(_summary(f"fork of {through:,} messages", seconds, through))
    print(_summary(f"plain INSERT ... SELECT of {MESSAGES:,} (floor)", plain, MESSAGES))


async def _server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.runs))
