"""prune of 1,000,000 messages beside eight clients' chat loops.

    python bench/prune.py --dsn URL          # a server where a fresh database may be made

1,000 conversations of 1,100 messages (100 days old) are bulk-loaded; prune(keep_last=100)
deletes 1,000,000 of them, in batches of 1,000. Eight clients run the chat loop without
pause — add_turn(user, context=20), then add_turn(reply) — on conversations of their own
that start with 200 old messages (so the prune meets them too), first alone (baseline),
then while the prune runs. Prints the prune's duration and counts, and the p50, p99 and
max latency of the clients' add_turn calls in each phase. The database is dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
from common import fresh_database

import sessionstore

CONVERSATIONS, PER_CONVERSATION, KEEP = 1_000, 1_100, 100
CLIENTS, CLIENT_HISTORY, CONTEXT = 8, 200, 20

LOAD = """
WITH c AS (
    INSERT INTO conversations
        (continuation_id, session_id, message_count, total_tokens, last_message_at)
    SELECT $1 || g, $3::uuid, $2, $2 * 10, now() - interval '100 days'
    FROM generate_series(1, $4) g
    RETURNING id
)
INSERT INTO messages (conversation_id, seq, role, content, tokens, created_at)
SELECT c.id, g, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END::message_role,
       'a stored message of a long conversation', 10, now() - interval '100 days'
FROM c, generate_series(1, $2) g
"""


async def _chat(store: sessionstore.SessionStore, sid: UUID, stop: asyncio.Event) -> list[float]:
    """The chat loop on the client's conversation until ``stop``: each add_turn's ms."""
    latencies: list[float] = []
    cont = f"client-{sid}-1"  # as loaded
    while not stop.is_set():
        for role, context in (("user", CONTEXT), ("assistant", None)):
            started = time.perf_counter()
            await store.add_turn(cont, role, "hello", session_id=sid, tokens=5, context=context)
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def _summary(name: str, latencies: list[float]) -> str:
    q = statistics.quantiles(latencies, n=100)
    return (
        f"{name}: {len(latencies)} add_turn, p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms,"
        f" max {max(latencies):.2f} ms"
    )


async def _load(target: str) -> list[UUID]:
    """The bulk: the conversations to prune, and the clients' sessions with theirs."""
    conn = await asyncpg.connect(target)
    try:
        started = time.perf_counter()
        await conn.execute(LOAD, "bulk-", PER_CONVERSATION, None, CONVERSATIONS)
        sids: list[UUID] = []
        for i in range(CLIENTS):
            sid = await conn.fetchval(
                "INSERT INTO sessions (user_id) VALUES ($1) RETURNING id", f"client-{i}"
            )
            await conn.execute(LOAD, f"client-{sid}-", CLIENT_HISTORY, sid, 1)
            sids.append(sid)
        await conn.execute("VACUUM ANALYZE")
        total = await conn.fetchval("SELECT count(*) FROM messages")
        print(f"loaded {total} messages in {time.perf_counter() - started:.1f} s")
    finally:
        await conn.close()
    return sids


async def main(dsn: str, baseline: float) -> None:
    target = await fresh_database(dsn, "prune")
    try:
        sids = await _load(target)
        async with sessionstore.connect(target, max_size=CLIENTS + 2) as store:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(_chat(store, sid, stop)) for sid in sids]
            await asyncio.sleep(baseline)
            stop.set()
            alone = [x for t in tasks for x in await t]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(_chat(store, sid, stop)) for sid in sids]
            started = time.perf_counter()
            counts = await store.prune(keep_last=KEEP, batch_size=1_000)
            took = time.perf_counter() - started
            stop.set()
            during = [x for t in tasks for x in await t]
            left = await store.prune(keep_last=KEEP)
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP DATABASE {urlsplit(target).path.lstrip('/')} WITH (FORCE)")
        finally:
            await conn.close()
    print(f"prune(keep_last={KEEP}, batch_size=1000): {counts} in {took:.2f} s")
    print(f"a second prune after the clients stopped: {left}")
    print(_summary("alone", alone))
    print(_summary("during prune", during))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--baseline", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.baseline))
