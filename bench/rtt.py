"""The chat loop across a network: every system through bench/latency.py's proxy at
several round-trip times, one run per RTT, the systems interleaved within it.

    python bench/rtt.py --dsn URL [--rtts 0,1,5 --clients 50 --turns 10]
    python bench/rtt.py --dsn URL --chat-loop [--rtts 5 --clients 20 --turns 40]

A chat turn: append the user's message, read the last 20 messages (what goes to the
model), append the reply. Each system runs in its own process and fresh database, its
clients' sessions created directly and its turns sent through the proxy, which counts
the statements and round trips of the measured turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from common import fresh_database, run_workload
from frameworks import available
from latency import LatencyProxy

HERE = Path(__file__).resolve().parent
#: The systems compared, in the order each RTT runs them (framework stores appended when
#: their packages are installed).
SYSTEMS = [
    "sessionstore-context",
    "sessionstore-chat-loop",
    "sessionstore-writebehind-chat",
    "asyncpg",
    "threadpool",
    "sqlalchemy",
]
FRAMEWORK_STORES = ["agents-builtin", "adk-builtin", "langchain-builtin"]


def upstream_of(dsn: str) -> str:
    """The proxy's upstream for ``dsn``: ``host:port``, or ``unix:PATH`` for a server
    reached through its socket directory (``?host=/dir``, the embedded server)."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "127.0.0.1"
    port = int(query.get("port") or parts.port or 5432)
    if host.startswith("/"):
        return f"unix:{host}/.s.PGSQL.{port}"
    return f"{host}:{port}"


def through(dsn: str, port: int) -> str:
    """``dsn`` with its host and port replaced by the proxy's."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


async def ping(dsn: str, n: int = 200) -> float:
    """The median ``SELECT 1`` round trip, ms."""
    conn = await asyncpg.connect(dsn)
    try:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await conn.fetchval("SELECT 1")
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await conn.close()
    return round(statistics.median(times), 3)


def one(system: str, dsn: str, rtt: float, clients: int, turns: int) -> dict[str, Any]:
    """One system's run at ``rtt`` ms, in its own process and database."""
    target = asyncio.run(fresh_database(dsn, f"rtt_{system.replace('-', '_')}"))
    proxy = LatencyProxy(upstream_of(target), rtt_ms=rtt)
    with proxy as port:
        row = run_workload(
            system,
            through(target, port),
            clients,
            turns,
            "--setup-dsn",
            target,
            "--proxy-pid",
            str(proxy.pid),
        )
    row["rtt_ms"] = rtt
    row["statements_per_turn"] = round(proxy.counts["statements"] / row["turns"], 1)
    row["round_trips_per_turn"] = round(proxy.counts["round_trips"] / row["turns"], 1)
    row["cpu_ms_per_turn"] = round(row["client_cpu_s"] / row["turns"] * 1000, 2)
    row["per_client_turns_per_s"] = round(row["turns_per_s"] / clients, 1)
    return row


def overhead(dsn: str) -> dict[str, float]:
    """The proxy's own cost: ``SELECT 1`` direct, and through it at 0, 1 and 5 ms."""
    out = {"direct": asyncio.run(ping(dsn))}
    for rtt in (0.0, 1.0, 5.0):
        with LatencyProxy(upstream_of(dsn), rtt_ms=rtt) as port:
            out[f"proxy {rtt:g} ms"] = asyncio.run(ping(through(dsn, port)))
    return out


def run(
    dsn: str, rtts: list[float], clients: int, turns: int
) -> tuple[list[dict[str, Any]], dict[str, float], list[str]]:
    """Every system at every RTT, then each with one client alone at the largest RTT
    (``"clients": 1``: a turn's latency without waiting for a connection or the
    server); the proxy's overhead; notes on skipped systems."""
    names, skipped = available()
    systems = SYSTEMS + [s for s in FRAMEWORK_STORES if s in names]
    rows = []
    for rtt in rtts:
        for system in systems:
            rows.append({**one(system, dsn, rtt, clients, turns), "clients": clients})
            print(json.dumps(rows[-1]), flush=True)
    for system in systems:
        rows.append({**one(system, dsn, rtts[-1], 1, turns), "clients": 1})
        print(json.dumps(rows[-1]), flush=True)
    return rows, overhead(dsn), skipped


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """turns/s and p99 against RTT, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    shared = [r for r in rows if r["clients"] > 1]
    for system in dict.fromkeys(r["impl"] for r in shared):
        mine = [r for r in shared if r["impl"] == system]
        style = "-o" if system.startswith("sessionstore") else "--."
        a.plot([r["rtt_ms"] for r in mine], [r["turns_per_s"] for r in mine], style, label=system)
        b.plot([r["rtt_ms"] for r in mine], [r["p99_ms"] for r in mine], style, label=system)
    a.set_xlabel("round-trip time, ms")
    a.set_ylabel("chat turns per second (higher is better)")
    a.set_yscale("log")
    b.set_xlabel("round-trip time, ms")
    b.set_ylabel("p99 chat-turn latency, ms (lower is better)")
    b.set_yscale("log")
    b.legend(fontsize=7)
    fig.suptitle("The chat loop across a network: 50 clients, pool of 10, one run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def section(
    rows: list[dict[str, Any]],
    over: dict[str, float],
    skipped: list[str],
    clients: int,
    turns: int,
) -> str:
    """The docs/benchmarks.md section for one run."""
    table = [
        "| RTT ms | system | turns/s | per client | p50 ms | p99 ms | client CPU ms/turn"
        " | statements/turn | round trips/turn |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in (r for r in rows if r["clients"] > 1):
        table.append(
            f"| {r['rtt_ms']:g} | {r['impl']} | {r['turns_per_s']} | {r['per_client_turns_per_s']}"
            f" | {r['p50_ms']} | {r['p99_ms']} | {r['cpu_ms_per_turn']}"
            f" | {r['statements_per_turn']} | {r['round_trips_per_turn']} |"
        )
    alone = [r for r in rows if r["clients"] == 1]
    top = alone[0]["rtt_ms"] if alone else None
    measured = over.get(f"proxy {top:g} ms") if top is not None else None
    single = [
        "| system | p50 ms | p99 ms | round trips/turn | p50 / (2 × measured RTT + 3 ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in alone:
        floor = None if measured is None else 2 * measured + 3
        share = "" if floor is None else round(r["p50_ms"] / floor, 2)
        single.append(
            f"| {r['impl']} | {r['p50_ms']} | {r['p99_ms']} | {r['round_trips_per_turn']}"
            f" | {share} |"
        )
    pings = ", ".join(f"{k} {v} ms" for k, v in over.items())
    notes = "".join(f"\n- {note}" for note in skipped)
    return f"""### The chat loop across a network

{clients} clients × {turns} turns per system and RTT, pool of 10 connections, each system
in its own process and fresh database; a turn appends the user's message, reads the last
20 messages and appends the reply. `sessionstore-context` = `add_turn(context=20)` +
`add_turn`; `sessionstore-writebehind-chat` = `enqueue_turn` + `history` (which includes
the queued message) + `enqueue_turn`, the clock stopping after `flush()`; the others as
in the table above (the framework stores through their own interfaces). Latency comes
from bench/latency.py, a proxy in a process of its own that holds every byte for half the
RTT in each direction (the kernel's netem is not available on these machines); it also
counts what clients send (statements: Query and Execute messages; round trips: Query and
Sync). Its own cost, as the median `SELECT 1`: {pings}.

{chr(10).join(table)}{notes}

![turns per second and p99 against RTT](benchmarks-rtt.png)

One client alone at RTT {top:g} ms ({turns} turns; the proxy's measured `SELECT 1` round
trip: {measured} ms): a turn's latency without waiting for a connection or for the
server's CPU. The target is a p50 of at most twice the round trip plus 3 ms (the last
column at most 1).

{chr(10).join(single)}
"""


def chat_loop(dsn: str, rtt: float, turns: int, clients: int) -> dict[str, Any]:
    """The recommended MCP loop (``add_turn(user, context=20)`` + ``enqueue_turn(reply)``)
    through the proxy at ``rtt`` ms: a turn's blocking part in measured round trips (the
    proxy's ``SELECT 1``), with one client and with ``clients``. The workload itself
    checks the stored order and every context (it fails otherwise)."""
    with LatencyProxy(upstream_of(dsn), rtt_ms=rtt) as port:
        measured = asyncio.run(ping(through(dsn, port)))
    out: dict[str, Any] = {"rtt_ms": rtt, "measured_round_trip_ms": measured}
    for n in (1, clients):
        row = one("sessionstore-chat-loop", dsn, rtt, n, turns)
        out[f"clients_{n}"] = {
            **{k: row[k] for k in ("turns", "p50_ms", "p95_ms", "round_trips_per_turn")},
            "p50_round_trips": round(row["p50_ms"] / measured, 2),
            "contexts_missing_reply": row["contexts_missing_reply"],
            "conversations_out_of_order": row["conversations_out_of_order"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rtts", default="0,1,5")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument(
        "--chat-loop",
        action="store_true",
        help="only the chat loop on write-behind, at the largest RTT (target: one "
        "client's p50 at most 1.3 measured round trips)",
    )
    args = parser.parse_args()
    if args.chat_loop:
        rtt = float(args.rtts.split(",")[-1])
        print(json.dumps(chat_loop(args.dsn, rtt, args.turns, args.clients), indent=2))
        return
    rtts = [float(x) for x in args.rtts.split(",")]
    rows, over, skipped = run(args.dsn, rtts, args.clients, args.turns)
    chart(rows, HERE.parent / "docs" / "benchmarks-rtt.png")
    print(section(rows, over, skipped, args.clients, args.turns))


if __name__ == "__main__":
    main()
