"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import asyncpg

TABLES = ("sessions", "conversations", "messages")


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """How many rows each of our tables holds."""
    return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}


async def expire(conn: asyncpg.Connection, session_id: object) -> None:
    """Move a session's ``expires_at`` into the past (without touching its status)."""
    await conn.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1", session_id
    )


async def lock_waiters(conn: asyncpg.Connection) -> int:
    """How many backends on this database are waiting for a lock."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
    )


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    *,
    what: str,
    within: float = 10.0,
    every: float = 0.01,
) -> None:
    """Poll ``check`` until it is true; fail the test if ``within`` seconds pass first.

    Only for states with no event to await: lock waits on the server, a background
    connection coming up or going down, a TTL running out.
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(every)


async def wait_for_lock_waiters(conn: asyncpg.Connection, wanted: int) -> None:
    """Wait until exactly ``wanted`` backends wait for a lock (at most 10 s)."""

    async def reached() -> bool:
        return await lock_waiters(conn) == wanted

    await eventually(reached, what=f"{wanted} backends waiting for a lock")
