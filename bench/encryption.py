"""Encryption at rest: add_turn and history throughput with and without it, in one run.

    python bench/encryption.py --dsn URL [--tasks 20 --pool 10 --seconds 2 --rounds 5]

Two stores on one fresh database (migrated to head, dropped after): one opened with
``encryption_key`` (a random key for the run), one without; each has a pool of ``--pool``
connections. Two workloads, ``--tasks`` tasks at once, each task on a session (and so a
user, and with encryption a data key) of its own:

- add_turn: ``add_turn(conversation, "user", ~500 bytes, session_id=..., metadata={"k":
  "v"})`` without pause, each task on a conversation of its own (new each run);
- history: ``messages.history(conversation, limit=20)`` without pause, each task on a
  conversation of 40 messages of ~500 bytes (written before the clock starts, sealed by
  the encrypting store, in clear by the other).

Every (workload, store) first runs an untimed warm-up (every pooled connection opened and
its statements prepared, every data key unwrapped and cached); then ``--rounds`` timed
runs of ``--seconds`` each per store, alternating, the order flipped every round (clear,
encrypted, encrypted, clear, …) so that a load drifting meanwhile weighs on both alike.
Per workload and store: ops/s over the runs' summed time (each run's in brackets), p50
and p99 over all their calls, and the client CPU per call (``time.process_time``: this
process, the event loop and asyncpg included). The ratio encrypted / clear of ops/s is
the number to watch (target: at least 0.85). Not part of bench/run.py.

Prints one JSON line per run, then the markdown section (``--json``: one JSON line with
the rows and the section, as bench/checkpointers.py does; the per-run lines then go to
stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
from common import fresh_database

import sessionstore

MODES = ("clear", "encrypted")
WORKLOADS = ("add_turn", "history")
TARGET = 0.85
HISTORY_MESSAGES, HISTORY_LIMIT = 40, 20
WARMUP_SECONDS = 1.0
# ~500 bytes of chat text (ASCII: bytes = characters).
TEXT = ("A chat message of about five hundred bytes, as a user might type it. " * 8)[:500]
METADATA = {"k": "v"}
# The check that the encrypting store really sealed what it wrote (and the other did not).
SEALED_COUNT = """
SELECT count(*) FILTER (WHERE m.content_sealed IS NOT NULL) AS sealed,
       count(*) FILTER (WHERE m.content_sealed IS NULL) AS clear
FROM messages m JOIN conversations c ON c.id = m.conversation_id
WHERE c.continuation_id LIKE $1
"""

Op = Callable[[int], Awaitable[object]]


async def timed(tasks: int, seconds: float, op: Op) -> dict[str, Any]:
    """``tasks`` tasks calling ``op(task)`` without pause for ``seconds``: the count,
    time, every call's latency and the client CPU."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(task: int) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await op(task)
            latencies.append((time.perf_counter() - started) * 1000)

    gc.collect()  # garbage of the run before is not collected on this run's clock
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(t) for t in range(tasks)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    done = len(latencies)
    return {
        "ops": done,
        "seconds": round(elapsed, 3),
        "ops_per_s": round(done / elapsed, 1),
        "latencies_ms": latencies,
        "client_cpu_ms_per_op": round(cpu / done * 1000, 3),
    }


class Side:
    """One store and what its tasks work on."""

    def __init__(self, mode: str, store: sessionstore.SessionStore, tasks: int) -> None:
        self.mode = mode
        self.store = store
        self.tasks = tasks
        self.sessions: list[UUID] = []
        self.run = 0  # add_turn: each run writes to conversations of its own

    def add_turn_name(self, task: int) -> str:
        return f"enc-{self.mode}-turns-r{self.run}-t{task}"

    def history_name(self, task: int) -> sessionstore.ContinuationId:
        return sessionstore.ContinuationId(f"enc-{self.mode}-history-t{task}")

    async def prepare(self) -> None:
        """A session per task, and per task a conversation of 40 messages to read."""
        self.sessions = [
            (await self.store.sessions.create(f"enc-{self.mode}-user-{t}")).id
            for t in range(self.tasks)
        ]

        async def fill(task: int) -> None:
            for n in range(HISTORY_MESSAGES):
                await self.store.add_turn(
                    self.history_name(task),
                    "user" if n % 2 == 0 else "assistant",
                    TEXT,
                    session_id=self.sessions[task],
                    metadata=METADATA,
                )

        await asyncio.gather(*(fill(t) for t in range(self.tasks)))

    def op(self, workload: str) -> Op:
        """The call ``workload`` makes, for a task."""
        if workload == "add_turn":

            async def add_turn(task: int) -> object:
                return await self.store.add_turn(
                    self.add_turn_name(task),
                    "user",
                    TEXT,
                    session_id=self.sessions[task],
                    metadata=METADATA,
                )

            return add_turn

        async def history(task: int) -> object:
            got = await self.store.messages.history(self.history_name(task), limit=HISTORY_LIMIT)
            # Opened, not merely read: a sealed message's stored content is "".
            if len(got) != HISTORY_LIMIT or got[-1].content != TEXT:
                raise AssertionError(f"{self.mode}: history returned something else")
            return got

        return history


async def _check_sealed(target: str) -> dict[str, dict[str, int]]:
    """Per store, how many of its messages are sealed and how many clear."""
    conn = await asyncpg.connect(target)
    try:
        out = {}
        for mode in MODES:
            row = await conn.fetchrow(SEALED_COUNT, f"enc-{mode}-%")
            assert row is not None
            out[mode] = {"sealed": row["sealed"], "clear": row["clear"]}
    finally:
        await conn.close()
    if out["encrypted"]["clear"] or not out["encrypted"]["sealed"] or out["clear"]["sealed"]:
        raise AssertionError(f"messages not stored as expected: {out}")
    return out


async def measure(
    target: str, tasks: int, pool: int, seconds: float, rounds: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Every run on ``target``: one row per run (its latencies included), and the count
    of sealed and clear messages each store left."""
    key = base64.b64encode(os.urandom(32)).decode()  # this run's only: never shown
    runs: list[dict[str, Any]] = []
    async with (
        sessionstore.connect(target, min_size=pool, max_size=pool) as clear,
        sessionstore.connect(target, encryption_key=key, min_size=pool, max_size=pool) as encrypted,
    ):
        sides = {
            "clear": Side("clear", clear, tasks),
            "encrypted": Side("encrypted", encrypted, tasks),
        }
        for side in sides.values():
            await side.prepare()
        for workload in WORKLOADS:
            for side in sides.values():  # warm-up, untimed
                await timed(tasks, WARMUP_SECONDS, side.op(workload))
                side.run += 1
            for r in range(rounds):
                order = MODES if r % 2 == 0 else MODES[::-1]
                for mode in order:
                    side = sides[mode]
                    row = await timed(tasks, seconds, side.op(workload))
                    side.run += 1
                    row.update(workload=workload, mode=mode, round=r)
                    runs.append(row)
                    shown = {k: v for k, v in row.items() if k != "latencies_ms"}
                    print(json.dumps(shown), file=_log, flush=True)
    return runs, await _check_sealed(target)


def _pct(values: list[float], p: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[p - 1], 2)


def pooled(runs: list[dict[str, Any]], workload: str, mode: str) -> dict[str, Any]:
    """One workload's runs on one store as one row: ops/s over their summed time,
    percentiles over all their calls."""
    mine = [r for r in runs if r["workload"] == workload and r["mode"] == mode]
    latencies = [x for r in mine for x in r["latencies_ms"]]
    done = sum(r["ops"] for r in mine)
    return {
        "workload": workload,
        "mode": mode,
        "ops": done,
        "ops_per_s": round(done / sum(r["seconds"] for r in mine), 1),
        "rounds_ops_per_s": [r["ops_per_s"] for r in mine],
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
        "client_cpu_ms_per_op": round(
            sum(r["client_cpu_ms_per_op"] * r["ops"] for r in mine) / done, 3
        ),
    }


def ratios(rows: list[dict[str, Any]], workload: str) -> dict[str, Any]:
    """Encrypted over clear for ``workload``: ops/s (pooled, each round's pair and their
    median: the pooled ratio weighs a round where a burst of other load hit one side
    by its length, the median not at all), p50, p99 and client CPU per call."""
    by = {r["mode"]: r for r in rows if r["workload"] == workload}
    enc, clear = by["encrypted"], by["clear"]
    pairs = zip(enc["rounds_ops_per_s"], clear["rounds_ops_per_s"], strict=True)
    each = [round(e / c, 3) for e, c in pairs]
    return {
        "workload": workload,
        "ops_per_s": round(enc["ops_per_s"] / clear["ops_per_s"], 3),
        "rounds_ops_per_s": each,
        "median_round": round(statistics.median(each), 3),
        "p50": round(enc["p50_ms"] / clear["p50_ms"], 3),
        "p99": round(enc["p99_ms"] / clear["p99_ms"], 3),
        "client_cpu": round(enc["client_cpu_ms_per_op"] / clear["client_cpu_ms_per_op"], 3),
    }


def section(
    rows: list[dict[str, Any]],
    quotients: list[dict[str, Any]],
    tasks: int,
    pool: int,
    seconds: float,
    rounds: int,
) -> str:
    """The markdown section for one run."""
    table = [
        "| workload | store | ops/s (each round) | p50 ms | p99 ms | client CPU ms/op |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        each = " / ".join(f"{x:g}" for x in r["rounds_ops_per_s"])
        table.append(
            f"| {r['workload']} | {r['mode']} | {r['ops_per_s']:g} ({each}) | {r['p50_ms']}"
            f" | {r['p99_ms']} | {r['client_cpu_ms_per_op']} |"
        )
    summary = [
        "| workload | ops/s encrypted / clear (each round) | median of rounds | p50 | p99"
        f" | client CPU/op | target ≥ {TARGET} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for q in quotients:
        each = " / ".join(f"{x:.2f}" for x in q["rounds_ops_per_s"])
        verdict = "met" if q["ops_per_s"] >= TARGET else "**missed**"
        summary.append(
            f"| {q['workload']} | **{q['ops_per_s']:.2f}×** ({each}) | {q['median_round']:.2f}×"
            f" | {q['p50']:.2f}×"
            f" | {q['p99']:.2f}× | {q['client_cpu']:.2f}× | {verdict} |"
        )
    return f"""### Encryption at rest

`add_turn` (~500 bytes, `metadata={{"k": "v"}}`, `session_id`) and
`messages.history(limit={HISTORY_LIMIT})` (conversations of {HISTORY_MESSAGES} messages)
on two stores on one PostgreSQL: one with `encryption_key`, one without, each with a pool
of {pool} connections. {tasks} tasks at once, each on a session (a user) of its own;
after an untimed warm-up, {rounds} runs of {seconds:g} s per store and workload,
alternating (the order flipped every round): ops/s over the runs' summed time (each run's
in brackets), percentiles over all their calls, client CPU from `time.process_time`
(the whole process: event loop and asyncpg included).

{chr(10).join(table)}

Encrypted over clear (ops/s: higher is better; latency and CPU: lower is better):

{chr(10).join(summary)}
"""


async def _drop(dsn: str, target: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP DATABASE {urlsplit(target).path.lstrip('/')} WITH (FORCE)")
    finally:
        await conn.close()


async def run(
    dsn: str, tasks: int, pool: int, seconds: float, rounds: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, int]]]:
    """The whole benchmark on a fresh database (dropped after): the pooled rows, the
    ratios and the sealed/clear counts."""
    target = await fresh_database(dsn, "encryption")
    try:
        runs, stored = await measure(target, tasks, pool, seconds, rounds)
    finally:
        await _drop(dsn, target)
    rows = [pooled(runs, w, m) for w in WORKLOADS for m in MODES]
    return rows, [ratios(rows, w) for w in WORKLOADS], stored


_log = sys.stdout


def main() -> None:
    global _log
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", required=True, help="a server where a database may be created")
    parser.add_argument("--tasks", type=int, default=20, help="tasks calling at once")
    parser.add_argument("--pool", type=int, default=10, help="connections per store")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each timed run")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per store and workload")
    parser.add_argument(
        "--json", action="store_true", help="one JSON line: the rows and the section"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.tasks < 1 or args.seconds <= 0:
        parser.error("--rounds and --tasks must be at least 1, --seconds above 0")
    if args.json:
        _log = sys.stderr
    started = time.perf_counter()
    rows, quotients, stored = asyncio.run(
        run(args.dsn, args.tasks, args.pool, args.seconds, args.rounds)
    )
    text = section(rows, quotients, args.tasks, args.pool, args.seconds, args.rounds)
    took = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps({"rows": rows, "ratios": quotients, "stored": stored, "section": text}))
        return
    for row in [*rows, *quotients]:
        print(json.dumps(row))
    print(json.dumps({"stored": stored, "seconds": took}))
    print(text)


if __name__ == "__main__":
    main()
