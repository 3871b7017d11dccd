"""The keyed layout for Citus (``sessionstore.distribution``), built on plain PostgreSQL:
the invariants Citus demands hold, existing rows carry over, and a database it cannot
place is refused with nothing changed. ``test_citus.py`` distributes it on a real cluster.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from sessionstore import ContinuationId, InvalidInputError, SessionStore
from sessionstore.config import StoreConfig
from sessionstore.distribution import distribute, is_keyed
from sessionstore.health import check
from sessionstore.migrations import downgrade

from ...distributed import citus_violations

_COUNTS = """
SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM conversations),
       (SELECT count(*) FROM messages)
"""


async def _counts(conn: asyncpg.Connection) -> tuple[int, ...]:
    row = await conn.fetchrow(_COUNTS)
    assert row is not None
    return tuple(row)


_TRIGGERS = "SELECT count(*) FROM pg_trigger t WHERE NOT t.tgisinternal"


async def _chat(store: SessionStore) -> None:
    """Two users' sessions with conversations, a compaction and a fork."""
    for user in ("alice", "bob"):
        s = await store.sessions.create(user)
        for n in range(3):
            await store.add_turn(f"{user}-{n}", "user", f"hello {n}", session_id=s.id, tokens=2)
            await store.add_turn(f"{user}-{n}", "assistant", "hi", session_id=s.id, tokens=1)
        await store.messages.compact(ContinuationId(f"{user}-0"), through_seq=1, summary="S")
        await store.conversations.fork(
            ContinuationId(f"{user}-1"), continuation_id=f"{user}-fork", session_id=s.id
        )


async def test_the_classic_layout_breaks_citus_rules(conn: asyncpg.Connection) -> None:
    """The check below can fail: on the layout plain PostgreSQL keeps, it finds what a
    new user met on Citus (keys without the session, triggers, policies with subqueries)."""
    found = await citus_violations(conn)
    assert "conversations.conversations_continuation_id_key lacks session_id" in found
    assert "messages.messages_pkey lacks session_id" in found
    assert "trigger sessions.sessions_notify_update" in found
    assert any(f.startswith("policy conversations.") for f in found)


async def test_the_keyed_layout_keeps_every_key_on_the_session(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    await _chat(store)
    before = await _counts(conn)
    assert await distribute(conn, citus=False)
    assert await citus_violations(conn) == []
    assert await _counts(conn) == before
    # Every message carries its conversation's session; every conversation has its route.
    assert not await conn.fetchval(
        "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " WHERE m.session_id IS DISTINCT FROM c.session_id"
    )
    routes = await conn.fetch(
        "SELECT r.continuation_id FROM continuations r JOIN conversations c"
        " ON c.session_id = r.session_id AND c.id = r.conversation_id"
        " AND c.continuation_id = r.continuation_id"
    )
    assert len(routes) == before[1]
    assert not await conn.fetchval("SELECT count(*) FROM pg_policies WHERE schemaname = 'public'")
    # Deleting a session still takes its conversations and their messages along.
    victim = await conn.fetchval("SELECT id FROM sessions ORDER BY created_at LIMIT 1")
    await conn.execute("DELETE FROM sessions WHERE id = $1", victim)
    assert not await conn.fetchval("SELECT count(*) FROM messages WHERE session_id = $1", victim)
    # Keys that lead with the session still keep a session's own rows apart.
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            "INSERT INTO messages (session_id, conversation_id, seq, role, content)"
            " SELECT session_id, conversation_id, seq, role, content FROM messages LIMIT 1"
        )
    # A continuation id is unique across sessions.
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            "INSERT INTO continuations SELECT continuation_id, gen_random_uuid(),"
            " gen_random_uuid() FROM continuations LIMIT 1"
        )
    assert not await distribute(conn, citus=False)  # there already: nothing to do


async def test_a_conversation_without_a_session_is_refused_and_nothing_changes(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    await _chat(store)
    await store.add_turn("unbound", "user", "no session")
    triggers = await conn.fetchval(_TRIGGERS)
    with pytest.raises(InvalidInputError, match=r"^dsn: 1 conversations belong to no session"):
        await distribute(conn, citus=False)
    assert not await is_keyed(conn)
    assert await conn.fetchval(_TRIGGERS) == triggers
    assert "messages.messages_pkey lacks session_id" in await citus_violations(conn)


async def test_the_keyed_layout_is_not_downgraded(
    store: SessionStore, conn: asyncpg.Connection, admin_dsn: str
) -> None:
    await _chat(store)
    await distribute(conn, citus=False)
    with pytest.raises(InvalidInputError, match=r"^revision: .*cannot be downgraded"):
        await asyncio.to_thread(downgrade, admin_dsn, "0011_langgraph")
    assert await is_keyed(conn)
    assert await citus_violations(conn) == []


async def test_status_reads_the_keyed_layout_as_healthy(
    store: SessionStore, conn: asyncpg.Connection, admin_dsn: str
) -> None:
    """It has no policies by design (as_user is refused there): not a problem to report,
    unlike a classic database missing them."""
    config = StoreConfig(dsn=admin_dsn)
    await conn.execute("DROP POLICY messages_own ON messages")
    before = await check(config)
    assert "messages is missing policies: messages_own" in before.problems
    await distribute(conn, citus=False)
    after = await check(config)
    assert after.distributed
    assert after.problems == []
