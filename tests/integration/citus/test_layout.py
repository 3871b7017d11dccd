"""``sessionstore.distribution`` on a real Citus cluster: a database the store has
written to is distributed in place, co-located by session, and its rows carried over."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

import sessionstore
from sessionstore.distribution import distribute, is_distributed
from sessionstore.migrations import upgrade

from ...distributed import DISTRIBUTED, citus_violations

pytestmark = [pytest.mark.citus, pytest.mark.integration]

_PLACEMENT = """
SELECT DISTINCT nodeport FROM pg_dist_shard_placement
WHERE shardid = get_shard_id_for_distribution_column($1::regclass, $2::text)
"""


async def test_a_written_database_is_distributed_by_session(citus_dsn: str) -> None:
    await asyncio.to_thread(upgrade, citus_dsn)
    async with sessionstore.connect(citus_dsn) as store:  # tables still on the coordinator
        sessions = [await store.sessions.create(f"user-{n}") for n in range(8)]
        for n, s in enumerate(sessions):
            await store.add_turn(f"conv-{n}", "user", "hello", session_id=s.id, tokens=2)
            await store.add_turn(f"conv-{n}", "assistant", "hi", session_id=s.id, tokens=1)
    conn = await asyncpg.connect(citus_dsn)
    try:
        assert not await is_distributed(conn)
        assert await distribute(conn, citus=True)
        assert await is_distributed(conn)
        assert not await distribute(conn, citus=True)
        assert await citus_violations(conn) == []
        layout = {
            r["name"]: (r["partmethod"], r["colocationid"])
            for r in await conn.fetch(
                "SELECT logicalrelid::text AS name, partmethod::text, colocationid"
                " FROM pg_dist_partition"
            )
        }
        columns = {
            r["name"]: r["column_name"]
            for r in await conn.fetch(
                "SELECT logicalrelid::text AS name,"
                " column_to_column_name(logicalrelid, partkey) AS column_name"
                " FROM pg_dist_partition WHERE partmethod = 'h'"
            )
        }
        assert columns == DISTRIBUTED
        groups = {name: group for name, (_, group) in layout.items()}
        assert len({groups[t] for t in ("sessions", "conversations", "messages")}) == 1
        assert groups["continuations"] != groups["sessions"]
        for reference in ("adk_app_states", "adk_user_states", "sessionstore_private.keys"):
            assert layout[reference][0] == "n"  # a reference table
        # The rows came along, and each session's rows share one node.
        assert await conn.fetchval("SELECT count(*) FROM messages") == 16
        nodes = set()
        for s in sessions:
            placed = {
                port
                for table in ("sessions", "conversations", "messages")
                for (port,) in await conn.fetch(_PLACEMENT, table, str(s.id))
            }
            assert len(placed) == 1, placed
            nodes |= placed
        assert len(nodes) == 2  # eight sessions over both workers
    finally:
        await conn.close()
