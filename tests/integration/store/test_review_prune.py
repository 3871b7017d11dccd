"""Review of ``store.prune``: hostile arguments are refused before anything is deleted."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import sessionstore
from sessionstore import InvalidInputError, PruneCounts, SessionStore
from sessionstore.prune import COUNT_DUE, LOCK_BATCH, SCAN_WINDOW

from ...conftest import store_overrides


async def test_an_async_on_progress_is_refused_not_silently_never_awaited(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """``on_progress`` is called, not awaited: a coroutine function passed there would
    report nothing (each call makes a coroutine nobody awaits). It is refused, naming the
    argument, before anything is deleted."""
    for i in range(3):
        await store.add_turn("c", "user", f"m{i}", tokens=1)
    seen: list[PruneCounts] = []

    async def progress(counts: PruneCounts) -> None:
        seen.append(counts)  # pragma: no cover - never awaited

    for view in (store, store.as_user("someone")):
        with pytest.raises(InvalidInputError) as info:
            await view.prune(keep_last=0, on_progress=progress)  # type: ignore[arg-type]
        assert info.value.field == "on_progress"
    assert await conn.fetchval("SELECT count(*) FROM messages") == 3


async def test_purge_and_cleanup_refuse_an_async_on_progress_too(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """The same rule for ``purge_user`` and ``cleanup_expired``, which took a coroutine
    function and never awaited it: refused naming ``on_progress``, nothing deleted."""
    session = await store.sessions.create("gone")
    await store.add_turn("c", "user", "m", session_id=session.id)
    await conn.execute("UPDATE sessions SET expires_at = now() - interval '1 hour'")

    async def progress(count: object) -> None:
        del count  # pragma: no cover - never awaited

    with pytest.raises(InvalidInputError) as purge:
        await store.purge_user("gone", on_progress=progress)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError) as cleanup:
        await store.sessions.cleanup_expired(on_progress=progress)  # type: ignore[arg-type]
    assert purge.value.field == cleanup.value.field == "on_progress"
    assert await conn.fetchval("SELECT count(*) FROM sessions") == 1
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1


async def _short_conversations(conn: asyncpg.Connection, n: int) -> None:
    """``n`` conversations of one message each (of 1 token)."""
    await conn.execute(
        """
        WITH c AS (
            INSERT INTO conversations (continuation_id, message_count, total_tokens)
            SELECT 'c-' || g, 1, 1 FROM generate_series(1, $1::integer) g RETURNING id
        )
        INSERT INTO messages (conversation_id, seq, role, content, tokens)
        SELECT c.id, 1, 'user', 'm', 1 FROM c
        """,
        n,
    )


def _rows_read(plan: dict[str, Any], relation: str) -> int:
    """The rows the plan's nodes over ``relation`` returned, over all their loops."""
    here = 0
    if plan.get("Relation Name") == relation:
        here = int(plan["Actual Rows"]) * int(plan["Actual Loops"])
    return here + sum(_rows_read(child, relation) for child in plan.get("Plans", []))


async def test_one_batch_reads_a_bounded_window_of_conversations(
    conn: asyncpg.Connection,
) -> None:
    """A batch's first statement looks for conversations with due messages from the
    cursor on. Where none is due (a large table of short conversations under
    ``keep_last``), it must not read every remaining conversation in one statement: that
    statement grows with the table (about 1 s per 300,000 conversations here) until it
    exceeds ``command_timeout`` (30 s by default), and then every run fails at the same
    place, the cursor starting again from the first conversation each time."""
    await _short_conversations(conn, 30_000)
    await conn.execute("ANALYZE conversations, messages")
    explained = await conn.fetchval(  # nothing is due: it locks nothing
        "EXPLAIN (ANALYZE, FORMAT JSON) " + LOCK_BATCH, UUID(int=0), True, 5, None, 100
    )
    plan = json.loads(explained)[0]["Plan"]
    assert _rows_read(plan, "conversations") <= 10_000


async def test_due_conversations_far_apart_are_all_found(
    store: SessionStore, conn: asyncpg.Connection, admin_dsn: str
) -> None:
    """Conversations with due messages thousands of conversations apart (more than one
    statement looks at), one of them busy: each is found, the counts are exact."""
    await _short_conversations(conn, 6_500)
    ids = [r["id"] for r in await conn.fetch("SELECT id FROM conversations ORDER BY id")]
    due = [ids[0], ids[2100], ids[4300], ids[4301], ids[6499]]
    await conn.execute(
        "INSERT INTO messages (conversation_id, seq, role, content, tokens)"
        " SELECT c, g, 'user', 'm', 1 FROM unnest($1::uuid[]) c, generate_series(2, 5) g",
        due,
    )
    await conn.execute(
        "UPDATE conversations SET message_count = 5, total_tokens = 5 WHERE id = ANY($1)", due
    )
    busy = await asyncpg.connect(admin_dsn)
    try:
        async with busy.transaction():
            await busy.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", due[2])
            counts = await store.prune(keep_last=1, batch_size=3)
    finally:
        await busy.close()
    assert (counts.messages, counts.conversations, counts.skipped) == (16, 4, 1)
    left = await conn.fetch(
        "SELECT conversation_id, min(seq) AS first FROM messages"
        " WHERE conversation_id = ANY($1) GROUP BY 1",
        due,
    )
    assert {r["conversation_id"]: r["first"] for r in left} == {
        c: (1 if c == due[2] else 5) for c in due
    }
    assert await store.prune(keep_last=1) == PruneCounts(messages=4, conversations=1, batches=1)


async def test_the_dry_run_counts_in_bounded_windows(dsn: str, conn: asyncpg.Connection) -> None:
    """``count_prunable`` was one statement over every message (a very large store
    outlasted ``command_timeout``): it now counts ``SCAN_WINDOW`` conversations per
    statement, and the windows add up to what the prune then deletes."""
    queries: list[str] = []

    async def configure(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda record: queries.append(record.query))

    await _short_conversations(conn, SCAN_WINDOW + 500)
    async with sessionstore.connect(dsn, configure=configure, **store_overrides()) as store:
        await store.add_turn("long", "user", "a", tokens=1)
        await store.add_turn("long", "user", "b", tokens=1)
        queries.clear()
        assert await store.count_prunable(keep_last=1) == 1  # only "long" has one beyond
        assert sum(q == COUNT_DUE for q in queries) == 2  # 2,000 then 501 conversations
        assert await store.count_prunable(keep_last=0) == SCAN_WINDOW + 502
        assert (await store.prune(keep_last=0)).messages == SCAN_WINDOW + 502
