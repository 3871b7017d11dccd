"""Small helpers shared by the tests."""

from __future__ import annotations

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
