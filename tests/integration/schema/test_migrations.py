"""Alembic revisions: up, down, up again; the drift check against schema.py; what
SQLAlchemy cannot describe (RLS, policies, triggers, functions); and backfills."""

from __future__ import annotations

import asyncio
import configparser
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import alembic
import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import sessionstore
from sessionstore.migrations import (
    SCRIPT_LOCATION,
    alembic_config,
    downgrade,
    head_revision,
    upgrade,
)
from sessionstore.schema import metadata

from ...helpers import wait_for_lock_waiters

ROOT = Path(__file__).resolve().parents[3]

# sessionstore/alembic/env.py's advisory lock that serialises migrations across processes
MIGRATION_LOCK = 7_201_864_355_130_912

OBJECTS = """
SELECT 'table:' || tablename FROM pg_tables
    WHERE schemaname = 'public' AND tablename <> 'alembic_version'
UNION ALL SELECT 'table:' || schemaname || '.' || tablename FROM pg_tables
    WHERE schemaname = 'sessionstore_private'
UNION ALL SELECT 'schema:' || nspname FROM pg_namespace WHERE nspname = 'sessionstore_private'
UNION ALL SELECT 'type:' || typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname = 'public' AND t.typtype = 'e'
UNION ALL SELECT 'function:' || proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'public'
"""


async def _objects(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r[0] for r in await conn.fetch(OBJECTS)}
    finally:
        await conn.close()


async def test_upgrade_downgrade_upgrade(empty_dsn: str) -> None:
    await asyncio.to_thread(upgrade, empty_dsn)
    assert await _objects(empty_dsn) == {
        "table:sessions",
        "table:conversations",
        "table:messages",
        "table:adk_session_states",
        "table:adk_app_states",
        "table:adk_user_states",
        "table:langgraph_threads",
        "table:langgraph_checkpoints",
        "table:langgraph_blobs",
        "table:langgraph_writes",
        "table:sessionstore_private.keys",
        "schema:sessionstore_private",
        "type:message_role",
        "function:update_updated_at_column",
        "function:update_sessions_updated_at",
        "function:cleanup_expired_sessions",
        "function:sessionstore_notify_session",
        "function:sessionstore_append_original",
    }
    await asyncio.to_thread(downgrade, empty_dsn, "base")
    assert await _objects(empty_dsn) == set()
    await asyncio.to_thread(upgrade, empty_dsn)
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
    finally:
        await conn.close()


def _diff(connection: Any) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            # public, and the data keys' own schema (revision 0012)
            "include_schemas": True,
            "include_name": lambda name, kind, _parents: (
                kind != "schema" or name in (None, "sessionstore_private")
            ),
        },
    )
    return list(compare_metadata(context, metadata))


async def test_schema_py_matches_the_migrated_database(admin_dsn: str) -> None:
    engine = create_async_engine(
        "postgresql+asyncpg://",
        async_creator=lambda: asyncpg.connect(admin_dsn, statement_cache_size=0),
        poolclass=NullPool,
    )
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(_diff)
    finally:
        await engine.dispose()
    assert diff == []


async def test_rls_policies_triggers_and_cleanup_function(conn: asyncpg.Connection) -> None:
    rls = {
        r[0]: r[1]
        for r in await conn.fetch(
            "SELECT relname, relrowsecurity FROM pg_class WHERE relname = ANY($1)",
            ["sessions", "conversations", "messages"],
        )
    }
    assert rls == {"sessions": True, "conversations": True, "messages": True}
    policies = {
        (r[0], r[1]) for r in await conn.fetch("SELECT tablename, policyname FROM pg_policies")
    }
    assert policies == {
        ("sessions", "sessions_select_own"),
        ("sessions", "sessions_insert_own"),
        ("sessions", "sessions_update_own"),
        ("sessions", "sessions_delete_own"),
        ("sessions", "sessions_service_role_all"),
        ("conversations", "conversations_own"),
        ("conversations", "conversations_service_role_all"),
        ("messages", "messages_own"),
        ("messages", "messages_service_role_all"),
        ("adk_session_states", "adk_session_states_own"),
        ("adk_session_states", "adk_session_states_service_role_all"),
        ("adk_app_states", "adk_app_states_read"),
        ("adk_app_states", "adk_app_states_service_role_all"),
        ("adk_user_states", "adk_user_states_own"),
        ("adk_user_states", "adk_user_states_service_role_all"),
        ("langgraph_threads", "langgraph_threads_own"),
        ("langgraph_threads", "langgraph_threads_service_role_all"),
        ("langgraph_checkpoints", "langgraph_checkpoints_own"),
        ("langgraph_checkpoints", "langgraph_checkpoints_service_role_all"),
        ("langgraph_blobs", "langgraph_blobs_own"),
        ("langgraph_blobs", "langgraph_blobs_service_role_all"),
        ("langgraph_writes", "langgraph_writes_own"),
        ("langgraph_writes", "langgraph_writes_service_role_all"),
    }
    triggers = {
        r[0] for r in await conn.fetch("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    }
    assert triggers == {
        "update_conversations_updated_at",
        "trigger_sessions_updated_at",
        "sessions_notify_update",
        "sessions_notify_delete",
        "sessionstore_append_original",
    }
    await conn.execute(
        """
        INSERT INTO sessions (user_id, status, expires_at) VALUES
            ('a', 'active', now() - interval '1 hour'),
            ('b', 'paused', now() - interval '1 hour'),
            ('c', 'completed', now() - interval '1 hour'),
            ('d', 'active', now() + interval '1 hour'),
            ('e', 'active', NULL)
        """
    )
    assert await conn.fetchval("SELECT cleanup_expired_sessions()") == 2
    assert {r[0] for r in await conn.fetch("SELECT user_id FROM sessions")} == {"c", "d", "e"}


async def test_policies_apply_to_a_role_without_bypass(conn: asyncpg.Connection) -> None:
    """The portable policies mean what auth.uid()/auth.role() meant on Supabase."""
    await conn.execute("INSERT INTO sessions (user_id) VALUES ('alice'), ('bob')")
    await conn.execute("DROP ROLE IF EXISTS sstest_rls_user")
    await conn.execute("CREATE ROLE sstest_rls_user NOLOGIN")
    try:
        await conn.execute("GRANT SELECT ON sessions TO sstest_rls_user")
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE sstest_rls_user")
            assert await conn.fetchval("SELECT count(*) FROM sessions") == 0
            await conn.execute(
                "SELECT set_config('request.jwt.claims', $1, true)",
                '{"sub": "alice", "role": "authenticated"}',
            )
            assert [r[0] for r in await conn.fetch("SELECT user_id FROM sessions")] == ["alice"]
            await conn.execute(
                "SELECT set_config('request.jwt.claims', $1, true)", '{"role": "service_role"}'
            )
            assert await conn.fetchval("SELECT count(*) FROM sessions") == 2
    finally:
        await conn.execute("REVOKE ALL ON sessions FROM sstest_rls_user")
        await conn.execute("DROP ROLE sstest_rls_user")


async def test_counters_and_seq_are_backfilled(empty_dsn: str) -> None:
    await asyncio.to_thread(upgrade, empty_dsn, "0002_sessions")
    conn = await asyncpg.connect(empty_dsn)
    try:
        conv = await conn.fetchval(
            "INSERT INTO conversations (continuation_id, metadata)"
            " VALUES ('old', NULL) RETURNING id"
        )
        # inserted out of time order: seq must follow created_at, not insertion
        for content, minutes in [("third", 3), ("first", 1), ("second", 2)]:
            await conn.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at)"
                " VALUES ($1, 'user', $2, now() - make_interval(mins => 10 - $3))",
                conv,
                content,
                minutes,
            )
        await conn.execute("INSERT INTO sessions (user_id, turn_count) VALUES ('u', NULL)")
        await asyncio.to_thread(upgrade, empty_dsn)
        rows = await conn.fetch("SELECT seq, content FROM messages ORDER BY seq")
        assert [(r["seq"], r["content"]) for r in rows] == [
            (1, "first"),
            (2, "second"),
            (3, "third"),
        ]
        c = await conn.fetchrow(
            "SELECT message_count, last_message_at, metadata FROM conversations"
        )
        assert c is not None
        last = await conn.fetchval("SELECT max(created_at) FROM messages")
        assert (c["message_count"], c["last_message_at"], c["metadata"]) == (3, last, "{}")
        s = await conn.fetchrow("SELECT turn_count, total_tokens, version FROM sessions")
        assert s is not None
        assert tuple(s) == (0, 0, 1)
    finally:
        await conn.close()


@pytest.mark.parametrize("revision", ["0002_sessions", "0001_baseline"])
async def test_each_downgrade_step_works_with_data(admin_dsn: str, revision: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        sid = await conn.fetchval("INSERT INTO sessions (user_id) VALUES ('u') RETURNING id")
        cid = await conn.fetchval(
            "INSERT INTO conversations (continuation_id, session_id, message_count)"
            " VALUES ('c', $1, 1) RETURNING id",
            sid,
        )
        await conn.execute(
            "INSERT INTO messages (conversation_id, seq, role, content)"
            " VALUES ($1, 1, 'user', 'x')",
            cid,
        )
    finally:
        await conn.close()
    await asyncio.to_thread(downgrade, admin_dsn, revision)
    conn = await asyncpg.connect(admin_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 1
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == revision
    finally:
        await conn.close()
    await asyncio.to_thread(upgrade, admin_dsn)


async def test_a_migration_waits_for_the_lock_past_command_timeout(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrations do not inherit the service's per-statement timeouts: waiting for the
    migration lock (or for locks of live traffic) must not time out."""
    monkeypatch.setenv("SESSIONSTORE_COMMAND_TIMEOUT", "1")
    monkeypatch.setenv("SESSIONSTORE_STATEMENT_TIMEOUT", "1")
    holder = await asyncpg.connect(empty_dsn)
    try:
        await holder.execute(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
        migrating = asyncio.ensure_future(asyncio.to_thread(upgrade, empty_dsn))
        await wait_for_lock_waiters(holder, 1)
        await asyncio.sleep(1.5)  # hold the lock past both timeouts
        assert not migrating.done()
    finally:
        await holder.execute(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
        await holder.close()
    await asyncio.wait_for(migrating, timeout=60)
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
    finally:
        await conn.close()


def test_the_revisions_live_in_the_package_and_every_config_names_them() -> None:
    """One place for the revisions, inside the package (so a wheel carries them without
    a copy step), named the same way by the library, the root alembic.ini and the docs."""
    package = Path(sessionstore.__file__).resolve().parent
    found = Path(ScriptDirectory.from_config(alembic_config("")).dir).resolve()
    assert found == package / "alembic"
    assert (found / "env.py").is_file()
    assert (found / "script.py.mako").is_file()
    assert not (ROOT / "alembic").exists()
    # No __init__.py: a plain directory can never stand in for the alembic library.
    assert not (found / "__init__.py").exists()
    assert package not in Path(alembic.__file__).resolve().parents
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "alembic.ini")
    assert ini["alembic"]["script_location"] == SCRIPT_LOCATION == "sessionstore:alembic"
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert "force-include" not in wheel["targets"]["wheel"]
    documented = f"script_location = {SCRIPT_LOCATION}"
    for doc in ("README.md", "docs/migrating.md"):
        assert documented in (ROOT / doc).read_text(), doc


async def _alembic(
    ini: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        "-c",
        str(ini),
        *args,
        cwd=ini.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_two_line_ini_without_logging_sections(empty_dsn: str, tmp_path: Path) -> None:
    """What docs/migrating.md gives a user of the installed package: `fileConfig` would
    fail on it (KeyError: 'formatters'); env.py logs to stderr instead."""
    ini = tmp_path / "sessionstore.ini"
    ini.write_text(f"[alembic]\nscript_location = {SCRIPT_LOCATION}\n")
    code, _, err = await _alembic(ini, "-x", f"dsn={empty_dsn}", "upgrade", "head")
    assert code == 0, err
    assert f"-> {head_revision()}" in err  # the progress lines, on stderr
    code, out, err = await _alembic(ini, "-x", f"dsn={empty_dsn}", "current")
    assert code == 0, err
    assert out.split() == [head_revision(), "(head)"]


async def test_the_alembic_command_without_a_url_names_what_it_takes(tmp_path: Path) -> None:
    ini = tmp_path / "sessionstore.ini"
    ini.write_text(f"[alembic]\nscript_location = {SCRIPT_LOCATION}\n")
    unset = ("SESSIONSTORE_DATABASE_URL", "DATABASE_URL", "SESSIONSTORE_DSN")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    code, _, err = await _alembic(ini, "current", env=env)
    assert code != 0
    assert "set SESSIONSTORE_DATABASE_URL (or DATABASE_URL), or pass -x dsn=..." in err
    assert "--dsn" not in err  # sessionstore's own commands have it; alembic does not
