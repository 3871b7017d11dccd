"""Encryption at rest: add_turn and history throughput with and without it, in one run.

    python bench/encryption.py --dsn URL [--rtts 0,1 --tasks 20 --pool 10 --seconds 2 --rounds 5]

Two stores on one fresh database (migrated to head, dropped after): one opened with
``encryption_key`` (a random key for the run), one without; each has a pool of ``--pool``
connections. Two workloads, ``--tasks`` tasks at once, each task on a session (and so a
user, and with encryption a data key) of its own:

- add_turn: ``add_turn(conversation, "user", ~500 bytes, session_id=..., metadata={"k":
  "v"})`` without pause, each task on a conversation of its own (new each run);
- history: ``messages.history(conversation, limit=20)`` without pause, each task on a
  conversation of 40 messages of ~500 bytes (written before the clock starts, sealed by
  the encrypting store, in clear by the other).

Per round-trip time of ``--rtts`` (ms; default 0 and 1) and workload, both stores are
opened anew, each through a bench/latency.py proxy of its own at that RTT (one proxy per
store and run; RTT 0 is a direct connection, no proxy), so that both pay the same network;
the proxy also counts the statements and round trips of the timed runs. Each store first
runs an untimed warm-up (every pooled connection opened and its statements prepared,
every data key unwrapped and cached); then ``--rounds`` timed runs of ``--seconds`` each
per store, alternating, the order flipped every round (clear, encrypted, encrypted,
clear, …) so that a load drifting meanwhile weighs on both alike. Per RTT, workload and
store: ops/s over the runs' summed time (each run's in brackets), p50 and p99 over all
their calls, and the client CPU per call (``time.process_time``: this process, the event
loop and asyncpg included; the proxy runs in a process of its own). The ratio encrypted /
clear of ops/s at each RTT is the number to watch (target: at least 0.85). Not part of
bench/run.py.

Prints one JSON line per run, then the markdown section (``--json``: one JSON line with
the rows and the section, as bench/checkpointers.py does; the per-run lines then go to
stderr).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any
from uuid import UUID

import asyncpg
from common import pool_runs, proxy_counts, rtt_parser, run_cells, scratch_database
from latency import LatencyProxy
from rtt import through, upstream_of

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
    """One store's sessions and what its tasks work on (the store itself is opened anew
    for every RTT and workload)."""

    def __init__(self, mode: str, tasks: int) -> None:
        self.mode = mode
        self.tasks = tasks
        self.sessions: list[UUID] = []
        self.run = 0  # add_turn: each run writes to conversations of its own

    def add_turn_name(self, task: int) -> str:
        return f"enc-{self.mode}-turns-r{self.run}-t{task}"

    def history_name(self, task: int) -> sessionstore.ContinuationId:
        return sessionstore.ContinuationId(f"enc-{self.mode}-history-t{task}")

    async def prepare(self, store: sessionstore.SessionStore) -> None:
        """A session per task, and per task a conversation of 40 messages to read."""
        self.sessions = [
            (await store.sessions.create(f"enc-{self.mode}-user-{t}")).id for t in range(self.tasks)
        ]

        async def fill(task: int) -> None:
            for n in range(HISTORY_MESSAGES):
                await store.add_turn(
                    self.history_name(task),
                    "user" if n % 2 == 0 else "assistant",
                    TEXT,
                    session_id=self.sessions[task],
                    metadata=METADATA,
                )

        await asyncio.gather(*(fill(t) for t in range(self.tasks)))

    def op(self, store: sessionstore.SessionStore, workload: str) -> Op:
        """The call ``workload`` makes on ``store``, for a task."""
        if workload == "add_turn":

            async def add_turn(task: int) -> object:
                return await store.add_turn(
                    self.add_turn_name(task),
                    "user",
                    TEXT,
                    session_id=self.sessions[task],
                    metadata=METADATA,
                )

            return add_turn

        async def history(task: int) -> object:
            got = await store.messages.history(self.history_name(task), limit=HISTORY_LIMIT)
            # Opened, not merely read: a sealed message's stored content is "".
            if len(got) != HISTORY_LIMIT or got[-1].content != TEXT:
                raise AssertionError(f"{self.mode}: history returned something else")
            return got

        return history


def open_store(dsn: str, mode: str, key: str, pool: int) -> sessionstore.SessionStore:
    """The ``mode`` store on ``dsn`` (``async with`` it): with ``key`` if encrypted."""
    if mode == "encrypted":
        return sessionstore.connect(dsn, encryption_key=key, min_size=pool, max_size=pool)
    return sessionstore.connect(dsn, min_size=pool, max_size=pool)


async def prepare(target: str, key: str, sides: dict[str, Side], pool: int) -> None:
    """Each store's sessions and conversations to read, written directly (no proxy)."""
    for mode, side in sides.items():
        async with open_store(target, mode, key, pool) as store:
            await side.prepare(store)


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


async def _rounds(
    dsns: dict[str, str],
    pids: dict[str, int],
    key: str,
    sides: dict[str, Side],
    rtt: float,
    workload: str,
    *,
    tasks: int,
    pool: int,
    seconds: float,
    rounds: int,
) -> list[dict[str, Any]]:
    """``workload`` on both stores, each opened on its DSN in ``dsns``: a warm-up each,
    then ``rounds`` timed runs each, alternating; the proxy of a store (``pids``, none
    at RTT 0) counts only during its timed runs."""
    runs: list[dict[str, Any]] = []
    async with (
        open_store(dsns["clear"], "clear", key, pool) as clear,
        open_store(dsns["encrypted"], "encrypted", key, pool) as encrypted,
    ):
        stores = {"clear": clear, "encrypted": encrypted}
        for mode in MODES:  # warm-up, untimed
            await timed(tasks, WARMUP_SECONDS, sides[mode].op(stores[mode], workload))
            sides[mode].run += 1
        for r in range(rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                side, pid = sides[mode], pids.get(mode)
                if pid is not None:
                    os.kill(pid, signal.SIGUSR1)
                row = await timed(tasks, seconds, side.op(stores[mode], workload))
                if pid is not None:
                    os.kill(pid, signal.SIGUSR2)
                side.run += 1
                row.update(rtt_ms=rtt, workload=workload, mode=mode, round=r)
                runs.append(row)
                shown = {k: v for k, v in row.items() if k != "latencies_ms"}
                print(json.dumps(shown), file=_log, flush=True)
    return runs


Counted = dict[tuple[float, str, str], dict[str, float]]


def measure(
    target: str, rtts: list[float], tasks: int, pool: int, seconds: float, rounds: int
) -> tuple[list[dict[str, Any]], Counted, dict[str, dict[str, int]]]:
    """Every run on ``target``: one row per run (its latencies included); per (RTT,
    workload, store) through a proxy, its statements and round trips per call; and the
    count of sealed and clear messages each store left."""
    key = base64.b64encode(os.urandom(32)).decode()  # this run's only: never shown
    sides = {mode: Side(mode, tasks) for mode in MODES}
    asyncio.run(prepare(target, key, sides, pool))
    runs: list[dict[str, Any]] = []
    counted: Counted = {}
    for rtt in rtts:
        for workload in WORKLOADS:
            with ExitStack() as stack:
                proxies = {
                    mode: LatencyProxy(upstream_of(target), rtt_ms=rtt)
                    for mode in (MODES if rtt > 0 else ())
                }
                dsns = {
                    mode: through(target, stack.enter_context(p)) for mode, p in proxies.items()
                }
                mine = asyncio.run(
                    _rounds(
                        {mode: dsns.get(mode, target) for mode in MODES},
                        {mode: p.pid for mode, p in proxies.items()},
                        key,
                        sides,
                        rtt,
                        workload,
                        tasks=tasks,
                        pool=pool,
                        seconds=seconds,
                        rounds=rounds,
                    )
                )
            # The proxies have stopped: their counts are in.
            for mode, proxy in proxies.items():
                done = sum(r["ops"] for r in mine if r["mode"] == mode)
                counted[rtt, workload, mode] = proxy_counts(proxy.counts, done, "op")
            runs += mine
    return runs, counted, asyncio.run(_check_sealed(target))


def pooled(
    runs: list[dict[str, Any]], counted: Counted, rtt: float, workload: str, mode: str
) -> dict[str, Any]:
    """One workload's runs on one store at ``rtt`` as one row: ops/s over their summed
    time, percentiles over all their calls (and, through a proxy, statements and round
    trips per call)."""
    mine = [
        r for r in runs if r["rtt_ms"] == rtt and r["workload"] == workload and r["mode"] == mode
    ]
    return {
        "rtt_ms": rtt,
        "workload": workload,
        "mode": mode,
        **pool_runs(mine, "op", cpu_digits=3),
        **counted.get((rtt, workload, mode), {}),
    }


def ratios(rows: list[dict[str, Any]], rtt: float, workload: str) -> dict[str, Any]:
    """Encrypted over clear for ``workload`` at ``rtt``: ops/s (pooled, each round's pair
    and their median: the pooled ratio weighs a round where a burst of other load hit
    one side by its length, the median not at all), p50, p99 and client CPU per call."""
    by = {r["mode"]: r for r in rows if r["rtt_ms"] == rtt and r["workload"] == workload}
    enc, clear = by["encrypted"], by["clear"]
    pairs = zip(enc["rounds_ops_per_s"], clear["rounds_ops_per_s"], strict=True)
    each = [round(e / c, 3) for e, c in pairs]
    return {
        "rtt_ms": rtt,
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
        "| RTT ms | workload | store | ops/s (each round) | p50 ms | p99 ms | client CPU ms/op"
        " | round trips/op |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        table.append(
            f"| {r['rtt_ms']:g} | {r['workload']} | {r['mode']} | {run_cells(r, 'op')}"
            f" | {r.get('round_trips_per_op', '—')} |"
        )
    summary = [
        "| RTT ms | workload | ops/s encrypted / clear (each round) | median of rounds | p50"
        f" | p99 | client CPU/op | target ≥ {TARGET} |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for q in quotients:
        each = " / ".join(f"{x:.2f}" for x in q["rounds_ops_per_s"])
        verdict = "met" if q["ops_per_s"] >= TARGET else "**missed**"
        summary.append(
            f"| {q['rtt_ms']:g} | {q['workload']} | **{q['ops_per_s']:.2f}×** ({each})"
            f" | {q['median_round']:.2f}× | {q['p50']:.2f}× | {q['p99']:.2f}×"
            f" | {q['client_cpu']:.2f}× | {verdict} |"
        )
    proxied = ", ".join(f"{x:g}" for x in dict.fromkeys(r["rtt_ms"] for r in rows if r["rtt_ms"]))
    return f"""### Encryption at rest

`add_turn` (~500 bytes, `metadata={{"k": "v"}}`, `session_id`) and
`messages.history(limit={HISTORY_LIMIT})` (conversations of {HISTORY_MESSAGES} messages)
on two stores on one PostgreSQL: one with `encryption_key`, one without, each with a pool
of {pool} connections. {tasks} tasks at once, each on a session (a user) of its own. RTT 0
is a direct connection; at {proxied or "—"} ms each store goes through a bench/latency.py
proxy of its own, which also counts round trips (Query and Sync messages). Per RTT and
workload both stores are opened anew; after an untimed warm-up, {rounds} runs of
{seconds:g} s per store, alternating (the order flipped every round): ops/s over the
runs' summed time (each run's in brackets), percentiles over all their calls, client CPU
from `time.process_time` (the whole process: event loop and asyncpg included; not the
proxy's).

{chr(10).join(table)}

Encrypted over clear (ops/s: higher is better; latency and CPU: lower is better):

{chr(10).join(summary)}
"""


def run(
    dsn: str, rtts: list[float], tasks: int, pool: int, seconds: float, rounds: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, int]]]:
    """The whole benchmark on a fresh database (dropped after): the pooled rows, the
    ratios and the sealed/clear counts."""
    with scratch_database(dsn, "encryption") as target:
        runs, counted, stored = measure(target, rtts, tasks, pool, seconds, rounds)
    rows = [pooled(runs, counted, t, w, m) for t in rtts for w in WORKLOADS for m in MODES]
    return rows, [ratios(rows, t, w) for t in rtts for w in WORKLOADS], stored


_log = sys.stdout


def main() -> None:
    global _log
    parser = rtt_parser(__doc__, "0,1")
    parser.add_argument("--tasks", type=int, default=20, help="tasks calling at once")
    parser.add_argument("--pool", type=int, default=10, help="connections per store")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each timed run")
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed runs per store, workload and RTT"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.tasks < 1 or args.seconds <= 0:
        parser.error("--rounds and --tasks must be at least 1, --seconds above 0")
    if args.json:
        _log = sys.stderr
    started = time.perf_counter()
    rows, quotients, stored = run(
        args.dsn, args.rtts, args.tasks, args.pool, args.seconds, args.rounds
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
