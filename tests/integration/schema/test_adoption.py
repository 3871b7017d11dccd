"""Adopting a database created by the original Supabase SQL, with rows in it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

import sessionstore
from sessionstore.cli import app
from sessionstore.migrations import downgrade, head_revision, upgrade

from ...supabase_sql import ORIGINAL_BASE, ORIGINAL_SESSIONS, UUID_OSSP

ROOT = Path(__file__).resolve().parents[3]
ALICE = "6f1c1a52-0000-4000-8000-00000000a11c"

ROWS = """
INSERT INTO sessions (id, user_id, title, turn_count, total_tokens, expires_at, metadata)
VALUES ('11111111-1111-4111-8111-111111111111', $1, 'old', 4, 120, now() + interval '1 day', NULL);
INSERT INTO conversations (id, continuation_id, title, session_id)
VALUES ('22222222-2222-4222-8222-222222222222', 'cont-old', 't',
        '11111111-1111-4111-8111-111111111111'),
       ('33333333-3333-4333-8333-333333333333', 'cont-loose', NULL, NULL);
"""
# Inserted out of time order, with a tie on created_at broken by id.
MESSAGES = [
    (
        "22222222-2222-4222-8222-222222222222",
        "assistant",
        "third",
        3,
        "aaaaaaaa-0000-4000-8000-000000000003",
    ),
    (
        "22222222-2222-4222-8222-222222222222",
        "user",
        "first",
        1,
        "aaaaaaaa-0000-4000-8000-000000000001",
    ),
    (
        "22222222-2222-4222-8222-222222222222",
        "user",
        "second-a",
        2,
        "aaaaaaaa-0000-4000-8000-00000000002a",
    ),
    (
        "22222222-2222-4222-8222-222222222222",
        "user",
        "second-b",
        2,
        "aaaaaaaa-0000-4000-8000-00000000002b",
    ),
    (
        "33333333-3333-4333-8333-333333333333",
        "system",
        "alone",
        1,
        "aaaaaaaa-0000-4000-8000-000000000009",
    ),
]


async def _make_original(dsn: str, *, with_sessions: bool = True) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(UUID_OSSP)
        await conn.execute(ORIGINAL_BASE)
        if with_sessions:
            await conn.execute(ORIGINAL_SESSIONS)
            for statement in ROWS.strip().split(";\n"):
                await conn.execute(statement, *([ALICE] if "$1" in statement else []))
        else:
            await conn.execute(
                "INSERT INTO conversations (id, continuation_id) VALUES"
                " ('22222222-2222-4222-8222-222222222222', 'cont-old'),"
                " ('33333333-3333-4333-8333-333333333333', 'cont-loose')"
            )
        for conv, role, content, minute, mid in MESSAGES:
            await conn.execute(
                "INSERT INTO messages (id, conversation_id, role, content, created_at)"
                " VALUES ($1, $2, $3, $4,"
                " timestamptz '2025-01-01 00:00+00' + make_interval(mins => $5))",
                mid,
                conv,
                role,
                content,
                minute,
            )
    finally:
        await conn.close()


@pytest.fixture
async def original_dsn(supabase_like_empty: str) -> str:
    await _make_original(supabase_like_empty)
    return supabase_like_empty


async def _check_adopted(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
        assert await conn.fetchval("SELECT count(*) FROM messages") == len(MESSAGES)
    finally:
        await conn.close()
    async with sessionstore.connect(dsn) as store:
        history = await store.messages.history("22222222-2222-4222-8222-222222222222")
        assert [(m.seq, m.content) for m in history] == [
            (1, "first"),
            (2, "second-a"),
            (3, "second-b"),
            (4, "third"),
        ]
        conv = await store.conversations.get_by_continuation_id("cont-old")
        assert (conv.message_count, conv.last_message_at) == (4, history[-1].created_at)
        loose = await store.conversations.get_by_continuation_id("cont-loose")
        assert (loose.message_count, loose.session_id) == (1, None)
        s = await store.sessions.get("11111111-1111-4111-8111-111111111111")
        assert (s.title, s.turn_count, s.total_tokens, s.metadata, s.version) == (
            "old",
            4,
            120,
            {},
            1,
        )
        # and the adopted database works as a new one does, under RLS too
        turn = await store.add_turn("cont-old", "assistant", "fifth", session_id=s.id, tokens=5)
        assert turn.message.seq == 5
        assert (await store.as_user(ALICE).messages.count(conv.id)) == 5


async def test_sessionstore_migrate_adopts(original_dsn: str) -> None:
    result = await asyncio.to_thread(CliRunner().invoke, app, ["migrate", "--dsn", original_dsn])
    assert result.exit_code == 0, result.output
    await _check_adopted(original_dsn)


async def test_alembic_upgrade_head_adopts(original_dsn: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        "-x",
        f"dsn={original_dsn}",
        "upgrade",
        "head",
        cwd=ROOT,
        env={**os.environ},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "adopting the existing original schema as revision 0002_sessions" in err.decode()
    await _check_adopted(original_dsn)


async def test_baseline_only_database_is_adopted_at_0001(supabase_like_empty: str) -> None:
    await _make_original(supabase_like_empty, with_sessions=False)
    await asyncio.to_thread(upgrade, supabase_like_empty)
    conn = await asyncpg.connect(supabase_like_empty)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 0
        seqs = await conn.fetch(
            "SELECT content, seq FROM messages WHERE conversation_id = $1 ORDER BY seq",
            "22222222-2222-4222-8222-222222222222",
        )
        assert [r["content"] for r in seqs] == ["first", "second-a", "second-b", "third"]
    finally:
        await conn.close()


async def test_downgrade_to_the_adoption_point_leaves_the_original_usable(
    original_dsn: str,
) -> None:
    await asyncio.to_thread(upgrade, original_dsn)
    await asyncio.to_thread(downgrade, original_dsn, "0002_sessions")
    conn = await asyncpg.connect(original_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == len(MESSAGES)
        # what the original application did still works
        cid = await conn.fetchval(
            "INSERT INTO conversations (continuation_id) VALUES ('after') RETURNING id"
        )
        await conn.execute(
            "INSERT INTO messages (conversation_id, role, content) VALUES ($1, 'user', 'x')", cid
        )
        sid = await conn.fetchval(
            "INSERT INTO sessions (user_id, expires_at)"
            " VALUES ('u', now() - $1::interval) RETURNING id",
            timedelta(hours=1),
        )
        assert await conn.fetchval("SELECT cleanup_expired_sessions()") == 1
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE id = $1", sid) == 0
    finally:
        await conn.close()
    await asyncio.to_thread(upgrade, original_dsn)
    await _check_adopted_rows_only(original_dsn)


async def _check_adopted_rows_only(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == len(MESSAGES) + 1
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
    finally:
        await conn.close()


OLD = datetime(2025, 1, 2, tzinfo=UTC)


async def test_adoption_changes_no_existing_value(original_dsn: str) -> None:
    conn = await asyncpg.connect(original_dsn)
    try:
        # the original's triggers would stamp these updates; the setup sets them as-is
        for table in ("sessions", "conversations"):
            await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            await conn.execute(f"UPDATE {table} SET updated_at = $1", OLD)
            await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        for mid, metadata in (
            ("aaaaaaaa-0000-4000-8000-000000000001", '{"model": "glm-4.6", "tokens": 7}'),
            ("aaaaaaaa-0000-4000-8000-00000000002a", '{"usage": {"total_tokens": 30}}'),
            ("aaaaaaaa-0000-4000-8000-00000000002b", '{"tokens": "many"}'),  # not a count
            ("aaaaaaaa-0000-4000-8000-000000000003", '{"token_count": 5}'),
        ):
            await conn.execute("UPDATE messages SET metadata = $2 WHERE id = $1", mid, metadata)
        before = {
            table: await conn.fetch(f"SELECT * FROM {table} ORDER BY id")
            for table in ("sessions", "conversations", "messages")
        }
    finally:
        await conn.close()
    await asyncio.to_thread(upgrade, original_dsn)
    conn = await asyncpg.connect(original_dsn)
    try:
        for table, rows in before.items():
            after = await conn.fetch(f"SELECT * FROM {table} ORDER BY id")
            for old, new in zip(rows, after, strict=True):
                for column, value in old.items():
                    if column == "metadata" and value is None:
                        continue  # NULL metadata becomes '{}' (the column is NOT NULL now)
                    assert new[column] == value, (table, column)
        rows = await conn.fetch(
            "SELECT id::text, tokens FROM messages WHERE conversation_id = $1",
            "22222222-2222-4222-8222-222222222222",
        )
        tokens = {r["id"]: r["tokens"] for r in rows}
        assert tokens == {
            "aaaaaaaa-0000-4000-8000-000000000001": 7,
            "aaaaaaaa-0000-4000-8000-00000000002a": 30,
            "aaaaaaaa-0000-4000-8000-00000000002b": None,
            "aaaaaaaa-0000-4000-8000-000000000003": 5,
        }
        assert (
            await conn.fetchval(
                "SELECT total_tokens FROM conversations WHERE continuation_id = 'cont-old'"
            )
            == 42
        )
    finally:
        await conn.close()


async def test_the_original_servers_writes_keep_working_at_head(original_dsn: str) -> None:
    """Expand before contract: what the original save_conversation / save_message sent
    still works after the upgrade, and gets its seq and counters from the database."""
    await asyncio.to_thread(upgrade, original_dsn)
    conn = await asyncpg.connect(original_dsn)
    try:
        # save_conversation: an upsert by continuation id
        cid = await conn.fetchval(
            "INSERT INTO conversations (continuation_id, title, metadata)"
            " VALUES ('from-old-server', 'Conversation from-old', '{}')"
            " ON CONFLICT (continuation_id) DO UPDATE SET title = EXCLUDED.title"
            " RETURNING id"
        )
        # save_message: no seq, no tokens
        for n in range(3):
            await conn.execute(
                "INSERT INTO messages (conversation_id, role, content, metadata)"
                " VALUES ($1, 'assistant', $2, $3)",
                cid,
                f"old {n}",
                '{"model": "kimi", "tokens": 10}',
            )
    finally:
        await conn.close()
    async with sessionstore.connect(original_dsn) as store:
        turn = await store.add_turn("from-old-server", "user", "new", tokens=1)
        assert turn.message.seq == 4
        history = await store.messages.history(cid)
        assert [(m.seq, m.content, m.tokens) for m in history] == [
            (1, "old 0", 10),
            (2, "old 1", 10),
            (3, "old 2", 10),
            (4, "new", 1),
        ]
        conv = await store.conversations.get(cid)
        assert (conv.message_count, conv.total_tokens) == (4, 31)
        # and the old per-session trigger still answers for the old cleanup function
        old_existing = await store.conversations.get_by_continuation_id("cont-old")
        assert old_existing.message_count == 4


CATALOG = """
SELECT json_build_object(
    'defaults', (
        SELECT json_object_agg(c.relname || '.' || a.attname, pg_get_expr(d.adbin, d.adrelid))
        FROM pg_attrdef d
        JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        JOIN pg_class c ON c.oid = d.adrelid
        WHERE c.relname IN ('sessions', 'conversations', 'messages') AND a.attname = 'id'
    ),
    'indexes', (
        SELECT json_object_agg(indexname, indexdef) FROM pg_indexes
        WHERE tablename IN ('sessions', 'conversations', 'messages')
    ),
    'policies', (
        SELECT json_agg(json_build_object('n', policyname, 'c', cmd, 'q', qual, 'w', with_check)
                        ORDER BY policyname)
        FROM pg_policies WHERE tablename IN ('sessions', 'conversations', 'messages')
    )
)::text
"""


async def _catalog(dsn: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return json.loads(await conn.fetchval(CATALOG))
    finally:
        await conn.close()


async def test_downgrade_to_the_adoption_point_is_exact(original_dsn: str) -> None:
    """Defaults, policies and index definitions come back as they were before adoption,
    including an index the original had on other columns than the baseline's."""
    conn = await asyncpg.connect(original_dsn)
    try:
        await conn.execute("DROP INDEX idx_messages_conversation_id")
        await conn.execute(
            "CREATE INDEX idx_messages_conversation_id ON messages (conversation_id, created_at)"
        )
    finally:
        await conn.close()
    before = await _catalog(original_dsn)
    assert before["defaults"]["conversations.id"] == "uuid_generate_v4()"
    assert any("auth.uid()" in (p["q"] or "") for p in before["policies"])
    await asyncio.to_thread(upgrade, original_dsn)
    assert await _catalog(original_dsn) != before
    await asyncio.to_thread(downgrade, original_dsn, "0002_sessions")
    assert await _catalog(original_dsn) == before
    await asyncio.to_thread(upgrade, original_dsn)  # and up again, rows intact
    await _check_adopted(original_dsn)
