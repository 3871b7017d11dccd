"""A database built like Supabase's: the API roles (as PostgREST uses them, through the
NOINHERIT ``authenticator`` login) reach nothing they should not, the version table
included."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from sessionstore.migrations import downgrade, upgrade

from ...conftest import as_supabase_postgres
from ...servers import TestServer
from ...supabase_sql import AUTHENTICATOR_PASSWORD
from ..cli.test_cli import cli, text


def _as_authenticator(dsn: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"authenticator:{AUTHENTICATOR_PASSWORD}@{host}"))


@pytest.fixture
def admin(pg_server: TestServer, supabase_database: str) -> str:
    """A direct DSN, as Supabase's postgres (the owner), of a fresh Supabase-like
    database at head."""
    return as_supabase_postgres(pg_server.admin_dsn_for(supabase_database))


async def _api(dsn: str, role: str) -> asyncpg.Connection:
    """A connection as PostgREST makes it: log in as authenticator, switch to ``role``."""
    conn = await asyncpg.connect(_as_authenticator(dsn), statement_cache_size=0)
    await conn.execute(f"SET ROLE {role}")
    return conn


async def _version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
    finally:
        await conn.close()


@pytest.mark.parametrize("role", ["anon", "authenticated"])
async def test_the_api_roles_cannot_reach_the_version_table(admin: str, role: str) -> None:
    version = await _version(admin)
    conn = await _api(admin, role)
    try:
        for statement in (
            "SELECT version_num FROM alembic_version",
            "UPDATE alembic_version SET version_num = 'x'",
            "DELETE FROM alembic_version",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()
    # A routine blanket grant does not reopen it: row-level security with no policy.
    grant = await asyncpg.connect(admin)
    try:
        await grant.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    finally:
        await grant.close()
    conn = await _api(admin, role)
    try:
        assert await conn.fetch("SELECT version_num FROM alembic_version") == []
        assert await conn.execute("UPDATE alembic_version SET version_num = 'x'") == "UPDATE 0"
        assert await conn.execute("DELETE FROM alembic_version") == "DELETE 0"
    finally:
        await conn.close()
    assert await _version(admin) == version
    migrated = await cli("migrate", "--dsn", admin)
    assert migrated.exit_code == 0, migrated.output
    status = await cli("status", "--dsn", admin)
    assert status.exit_code == 0, status.output
    assert re.search(r"API roles can reach\W+nothing", text(status))


async def test_status_checks_the_version_table_too(admin: str) -> None:
    # The state before 0006: Supabase's default privileges had granted the new table
    # to the API roles (a downgrade does not give them back, so the test does).
    await asyncio.to_thread(downgrade, admin, "0005_session_notify")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute("GRANT ALL ON alembic_version TO anon, authenticated, service_role")
    finally:
        await conn.close()
    exposed = await cli("status", "--dsn", admin)
    assert exposed.exit_code == 1
    assert "anon can read or change alembic_version" in text(exposed)
    assert "row-level security is off on alembic_version" in text(exposed)
    await asyncio.to_thread(upgrade, admin)
    fixed = await cli("status", "--dsn", admin)
    assert fixed.exit_code == 0, fixed.output


async def test_the_api_roles_see_no_session_data_without_a_user(admin: str) -> None:
    conn = await _api(admin, "anon")
    try:
        for table in ("sessions", "conversations", "messages"):
            assert await conn.fetch(f"SELECT * FROM {table}") == []
    finally:
        await conn.close()
