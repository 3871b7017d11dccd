"""``sessionstore.distribution`` on a real Citus cluster: a database the store has
written to is distributed in place, co-located by session, and its rows carried over."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

import sessionstore
from sessionstore import ContinuationId, InvalidInputError
from sessionstore.distribution import distribute, is_distributed
from sessionstore.migrations import downgrade, upgrade

from ...distributed import DISTRIBUTED, citus_violations

pytestmark = [pytest.mark.citus, pytest.mark.integration]

_PLACEMENT = """
SELECT DISTINCT nodeport FROM pg_dist_shard_placement
WHERE shardid = get_shard_id_for_distribution_column($1::regclass, $2::text)
"""


async def test_a_written_database_is_distributed_by_session(citus_dsn: str) -> None:
    """Rows written before the layout (here by the original schema's writers, at the
    revision before head) are carried to the shards by ``migrate``, and read back."""
    await asyncio.to_thread(upgrade, citus_dsn, "0011_langgraph")
    conn = await asyncpg.connect(citus_dsn)
    try:
        sessions = []
        for n in range(8):
            sid = await conn.fetchval(
                "INSERT INTO sessions (user_id) VALUES ($1) RETURNING id", f"user-{n}"
            )
            cid = await conn.fetchval(
                "INSERT INTO conversations (continuation_id, session_id) VALUES ($1, $2)"
                " RETURNING id",
                f"conv-{n}",
                sid,
            )
            for content in ("hello", "hi"):  # seq given by the original writers' trigger
                await conn.execute(
                    "INSERT INTO messages (conversation_id, role, content) VALUES ($1, 'user', $2)",
                    cid,
                    content,
                )
            sessions.append(sid)
        assert not await is_distributed(conn)
        await asyncio.to_thread(upgrade, citus_dsn)
        assert await is_distributed(conn)
        assert not await distribute(conn, citus=True)  # there already
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
        async with sessionstore.connect(citus_dsn) as store:
            history = await store.messages.history(ContinuationId("conv-3"))
            assert [(m.seq, m.content) for m in history] == [(1, "hello"), (2, "hi")]
            await store.add_turn("conv-3", "user", "after", session_id=sessions[3])
            assert await store.messages.count(ContinuationId("conv-3")) == 3
        nodes = set()
        for sid in sessions:
            placed = {
                port
                for table in ("sessions", "conversations", "messages")
                for (port,) in await conn.fetch(_PLACEMENT, table, str(sid))
            }
            assert len(placed) == 1, placed
            nodes |= placed
        assert len(nodes) == 2  # eight sessions over both workers
    finally:
        await conn.close()


async def test_migrate_distributes_a_citus_database_and_refuses_what_it_cannot(
    citus_dsn: str,
) -> None:
    # A database written before the citus extension could place it: one conversation has
    # no session. migrate stops at the layout, says why, and leaves the tables local.
    await asyncio.to_thread(upgrade, citus_dsn, "0011_langgraph")
    conn = await asyncpg.connect(citus_dsn)
    try:
        await conn.execute("INSERT INTO conversations (continuation_id) VALUES ('loose')")
        with pytest.raises(InvalidInputError, match="1 conversations belong to no session"):
            await asyncio.to_thread(upgrade, citus_dsn)
        assert not await is_distributed(conn)
        await conn.execute("DELETE FROM conversations")
        await asyncio.to_thread(upgrade, citus_dsn)  # now it can
        assert await is_distributed(conn)
        assert await citus_violations(conn) == []
        with pytest.raises(InvalidInputError, match=r"^revision: .*cannot be downgraded"):
            await asyncio.to_thread(downgrade, citus_dsn, "0011_langgraph")
        assert await is_distributed(conn)
    finally:
        await conn.close()


_COUNTERS = """
SELECT query_execution_single_shard AS single, query_execution_multi_shard AS multi
FROM citus_stat_counters WHERE name = current_database()
"""


async def test_a_turn_with_context_runs_on_its_session_s_shard_alone(citus_dsn: str) -> None:
    """Measured by the coordinator's own counters (``citus_stat_counters``): a known
    conversation's ``add_turn(context=…)`` is single-shard executions only (5 short
    statements and the context's read), none on several shards."""
    conn = await asyncpg.connect(citus_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET citus.enable_stat_counters = on')
        await asyncio.to_thread(upgrade, citus_dsn)
        async with sessionstore.connect(citus_dsn) as store:
            s = await store.sessions.create("alice")
            await store.add_turn("chat", "user", "first", session_id=s.id)  # claims the route
            before = await conn.fetchrow(_COUNTERS)
            for n in range(20):
                turn = await store.add_turn("chat", "user", f"m{n}", session_id=s.id, context=5)
            after = await conn.fetchrow(_COUNTERS)
        assert before is not None
        assert after is not None
        assert [m.content for m in turn.context or []] == ["m15", "m16", "m17", "m18", "m19"]
        assert after["multi"] - before["multi"] == 0
        assert after["single"] - before["single"] == 20 * 6
    finally:
        await conn.close()
