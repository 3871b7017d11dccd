"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio

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


async def wait_for_lock_waiters(conn: asyncpg.Connection, wanted: int) -> None:
    """Poll until exactly ``wanted`` backends wait for a lock.

    Lock waits happen on the server, where there is no event to await.
    """
    while await lock_waiters(conn) != wanted:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
