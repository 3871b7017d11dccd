"""purge_user: every session, conversation and message of one user, in bounded batches,
while everyone else keeps writing."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg
import pytest

from sessionstore import InvalidInputError, PurgeCounts, SessionStore

from ...helpers import row_counts


async def _seed(conn: asyncpg.Connection, user: str, sessions: int, per_conversation: int) -> None:
    """``sessions`` sessions of ``user``, one conversation each, ``per_conversation``
    messages in each (bulk, as another client would have written them)."""
    await conn.execute(
        """
        WITH s AS (
            INSERT INTO sessions (user_id) SELECT $1 FROM generate_series(1, $2) RETURNING id
        ),
        c AS (
            INSERT INTO conversations (continuation_id, session_id, message_count)
            SELECT 'c-' || s.id, s.id, $3 FROM s RETURNING id
        )
        INSERT INTO messages (conversation_id, seq, role, content)
        SELECT c.id, g, 'user', 'm' FROM c, generate_series(1, $3) g
        """,
        user,
        sessions,
        per_conversation,
    )


async def test_purge_deletes_one_users_data_and_nothing_else(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    await _seed(conn, "doomed", sessions=5, per_conversation=1_000)
    await _seed(conn, "kept", sessions=2, per_conversation=10)
    loose = await store.add_turn("no-session", "user", "stays")
    seen: list[PurgeCounts] = []
    counts = await store.purge_user("doomed", batch_size=700, on_progress=seen.append)
    assert counts == PurgeCounts(sessions=5, conversations=5, messages=5_000)
    assert await row_counts(conn) == {"sessions": 2, "conversations": 3, "messages": 21}
    assert seen[0] == PurgeCounts(messages=700)
    assert seen[-1] == counts
    assert [p.messages for p in seen if p.conversations == 0 and p.sessions == 0] == sorted(
        p.messages for p in seen if p.conversations == 0 and p.sessions == 0
    )
    assert (await store.conversations.get(loose.conversation.id)).message_count == 1
    assert await store.purge_user("doomed") == PurgeCounts()
    with pytest.raises(InvalidInputError) as info:
        await store.purge_user("doomed", batch_size=0)
    assert info.value.field == "batch_size"


async def test_purge_runs_while_other_users_keep_writing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    await _seed(conn, "doomed", sessions=4, per_conversation=5_000)
    others = [await store.sessions.create(f"other-{i}") for i in range(4)]
    stop = asyncio.Event()
    written = 0

    async def chat(session_id: UUID) -> None:
        nonlocal written
        while not stop.is_set():
            await store.add_turn(f"live-{session_id}", "user", "x", session_id=session_id)
            written += 1

    writers = [asyncio.create_task(chat(s.id)) for s in others]
    try:
        counts = await store.purge_user("doomed", batch_size=1_000)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert counts == PurgeCounts(sessions=4, conversations=4, messages=20_000)
    assert written > 0
    assert await conn.fetchval("SELECT count(*) FROM messages") == written
    assert await conn.fetchval("SELECT sum(turn_count) FROM sessions") == written


async def test_purge_takes_the_users_framework_state_along(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """ADK's ``user:`` state is keyed by the user alone (session state goes with its
    session); purging the user deletes it in every app, and nobody else's."""
    await _seed(conn, "doomed", sessions=1, per_conversation=1)
    await conn.execute(
        "INSERT INTO adk_user_states (app_name, user_id, state) VALUES"
        """ ('a', 'doomed', '{"k": 1}'), ('b', 'doomed', '{}'), ('a', 'kept', '{"k": 2}')"""
    )
    counts = await store.purge_user("doomed")
    assert counts == PurgeCounts(sessions=1, conversations=1, messages=1, user_states=2)
    rows = await conn.fetch("SELECT app_name, user_id FROM adk_user_states")
    assert [(r["app_name"], r["user_id"]) for r in rows] == [("a", "kept")]
