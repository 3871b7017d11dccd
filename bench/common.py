"""What the benchmark scripts share."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
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
