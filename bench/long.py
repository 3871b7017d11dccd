"""add_turn with a context on long conversations, before and after a compaction.

    python bench/long.py --dsn URL          # a server where a fresh database may be made

Conversations of 10², 10⁴ and 10⁵ stored messages (bulk-loaded with generate_series, 40
tokens each, as each turn's message). The p50 and p99 of ``add_turn(context_tokens=8000)``
(the turn and the latest 199 messages fit) and of ``add_turn(context=50)``, one client,
one turn at a time, the sizes interleaved; then the same after ``messages.compact`` of
all but the latest 100 messages. The point: a p50 flat from the smallest conversation to
the largest (the statement reads only what it returns, and the budget's cut). Not part
of bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import asyncpg
from common import fresh_database

import sessionstore

SIZES = (100, 10_000, 100_000)
WARMUP, TURNS = 20, 300
TEXT = "stored message " * 10  # what every stored message holds, 40 tokens
LOAD = """
WITH s AS (INSERT INTO sessions (user_id) VALUES ('bench') RETURNING id),
c AS (
    INSERT INTO conversations (continuation_id, session_id, message_count, total_tokens)
    SELECT $1, s.id, $2, $2 * 40 FROM s RETURNING id, session_id
),
m AS (
    INSERT INTO messages (conversation_id, seq, role, content, tokens)
    SELECT c.id, g, CASE WHEN g % 2 = 0 THEN 'assistant' ELSE 'user' END::message_role,
           repeat('stored message ', 10), 40
    FROM c, generate_series(1, $2) g
)
SELECT session_id FROM c
"""


async def _round(
    store: sessionstore.SessionStore, sessions: dict[int, Any], **context: int
) -> dict[int, dict[str, Any]]:
    """Turns on every size in turn (interleaved: a load that drifts meanwhile, such as
    other work on the machine, weighs on every size alike); per size its p50, p99 and
    the context's length."""
    latencies: dict[int, list[float]] = {size: [] for size in SIZES}
    lengths: dict[int, int] = {}
    for n in range(WARMUP + TURNS):
        for size, sid in sessions.items():
            started = time.perf_counter()
            turn = await store.add_turn(
                f"long-{size}", "user", TEXT, session_id=sid, tokens=40, **context
            )
            if n >= WARMUP:
                latencies[size].append((time.perf_counter() - started) * 1000)
            assert turn.context
            lengths[size] = len(turn.context)
    found = {}
    for size, values in latencies.items():
        q = statistics.quantiles(values, n=100)
        found[size] = {"p50_ms": round(q[49], 3), "p99_ms": round(q[98], 3)}
        found[size]["context"] = lengths[size]
    return found


async def main(dsn: str) -> None:
    target = await fresh_database(dsn, "long")
    conn = await asyncpg.connect(target)
    sessions = {}
    for size in SIZES:
        sessions[size] = await conn.fetchval(LOAD, f"long-{size}", size)
    await conn.execute("VACUUM ANALYZE")
    await conn.close()
    results: list[dict[str, Any]] = []
    async with sessionstore.connect(target, cache_size=0) as store:
        for compacted in (False, True):
            if compacted:
                for size in SIZES:
                    name = sessionstore.ContinuationId(f"long-{size}")
                    count = await store.messages.count(name)
                    await store.messages.compact(
                        name, through_seq=count - 100, summary="summary " * 100, tokens=300
                    )
            for label, context in (
                ("context_tokens=8000", {"context_tokens": 8000}),
                ("context=50", {"context": 50}),
            ):
                for size, row in (await _round(store, sessions, **context)).items():
                    row.update(messages=size, call=label, compacted=compacted)
                    results.append(row)
                    print(json.dumps(row), flush=True)
    for compacted in (False, True):
        for label in ("context_tokens=8000", "context=50"):
            p50 = {r["messages"]: r["p50_ms"] for r in results
                   if r["call"] == label and r["compacted"] == compacted}  # fmt: skip
            ratio = p50[SIZES[-1]] / p50[SIZES[0]]
            state = "after compaction" if compacted else "plain"
            print(f"{label} {state}: p50 10^5 / 10^2 = {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    asyncio.run(main(parser.parse_args().dsn))
