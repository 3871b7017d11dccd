"""What the benchmark scripts share."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from sessionstore.migrations import upgrade


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointed at database ``name``."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def fresh_database(dsn: str, tag: str) -> str:
    """A new database on ``dsn``'s server, migrated to head; its DSN."""
    name = f"bench_{tag}_{os.getpid()}_{time.time_ns() % 10**9}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    target = with_database(dsn, name)
    await asyncio.to_thread(upgrade, target)
    return target


async def drop_database(dsn: str, target: str) -> None:
    """Drop ``target``'s database (made by :func:`fresh_database`), connecting to ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP DATABASE {urlsplit(target).path.lstrip('/')} WITH (FORCE)")
    finally:
        await conn.close()


@contextmanager
def scratch_database(dsn: str, tag: str) -> Iterator[str]:
    """``with scratch_database(dsn, tag) as target:`` a :func:`fresh_database`'s DSN,
    the database dropped on exit (outside any event loop: each step runs its own)."""
    target = asyncio.run(fresh_database(dsn, tag))
    try:
        yield target
    finally:
        asyncio.run(drop_database(dsn, target))


def pct(values: list[float], p: int) -> float:
    """The ``p``-th percentile of ``values`` (inclusive method), to 2 decimals."""
    return round(statistics.quantiles(values, n=100, method="inclusive")[p - 1], 2)


def pool_runs(runs: list[dict[str, Any]], unit: str, *, cpu_digits: int) -> dict[str, Any]:
    """Timed runs of one thing as one row, in ``unit`` (a run has ``{unit}s``, ``seconds``,
    ``{unit}s_per_s``, ``latencies_ms`` and ``client_cpu_ms_per_{unit}``): the count,
    ``{unit}s_per_s`` over the runs' summed time (a run cut short weighs by its length),
    each run's in ``rounds_{unit}s_per_s``, p50 and p99 over all their calls, and the
    client CPU per ``unit`` weighted by each run's count."""
    count = f"{unit}s"
    done = sum(r[count] for r in runs)
    latencies = [x for r in runs for x in r["latencies_ms"]]
    return {
        count: done,
        f"{count}_per_s": round(done / sum(r["seconds"] for r in runs), 1),
        f"rounds_{count}_per_s": [r[f"{count}_per_s"] for r in runs],
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        f"client_cpu_ms_per_{unit}": round(
            sum(r[f"client_cpu_ms_per_{unit}"] * r[count] for r in runs) / done, cpu_digits
        ),
    }


def proxy_counts(counts: dict[str, Any], done: int, unit: str) -> dict[str, float]:
    """What bench/latency.py's proxy counted (``LatencyProxy.counts``) over ``done``
    ``unit``s: ``statements_per_{unit}`` and ``round_trips_per_{unit}``."""
    per = 1 / done
    return {
        f"statements_per_{unit}": round(counts["statements"] * per, 2),
        f"round_trips_per_{unit}": round(counts["round_trips"] * per, 2),
    }


def run_workload(impl: str, dsn: str, clients: int, turns: int, *extra: str) -> dict[str, Any]:
    """bench/workload.py for ``impl`` in a process of its own; its JSON result."""
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parent / "workload.py"),
            "--impl",
            impl,
            "--dsn",
            dsn,
            "--clients",
            str(clients),
            "--turns",
            str(turns),
            *extra,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def rtt_list(text: str) -> list[float]:
    """``--rtts``: round-trip times in ms, separated by commas (0: a direct connection)."""
    try:
        rtts = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not numbers separated by commas: {text!r}") from None
    if min(rtts) < 0:
        raise argparse.ArgumentTypeError(f"a round-trip time below 0: {text!r}")
    return rtts


def rtt_parser(doc: str | None, rtts: str) -> argparse.ArgumentParser:
    """The parser of a benchmark run on one server at several RTTs, with the options such
    benchmarks share: ``--dsn``, ``--rtts`` (default ``rtts``; parsed to a list of
    floats) and ``--json``."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", required=True, help="a server where a database may be created")
    parser.add_argument(
        "--rtts", type=rtt_list, default=rtts, help="round-trip times, ms (0: direct)"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON line: the rows and the section"
    )
    return parser


def run_cells(row: dict[str, Any], unit: str) -> str:
    """A row of :func:`pool_runs` as markdown cells: ``{unit}s/s (each round) | p50 ms |
    p99 ms | client CPU ms/{unit}``."""
    count = f"{unit}s"
    each = " / ".join(f"{x:g}" for x in row[f"rounds_{count}_per_s"])
    return (
        f"{row[f'{count}_per_s']} ({each}) | {row['p50_ms']} | {row['p99_ms']}"
        f" | {row[f'client_cpu_ms_per_{unit}']}"
    )
