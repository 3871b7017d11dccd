"""Fixtures: one PostgreSQL per run (see ``servers.py``), a migrated template database,
and a fresh database cloned from it for every test."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

import sessionstore
from sessionstore import SessionStore
from sessionstore.migrations import upgrade

from .servers import TestServer, test_server
from .supabase_sql import AUTH_AND_GRANTS, OWNER, OWNER_PASSWORD, ROLES

_names = itertools.count()
_RUN = f"{os.getpid()}"
_used: list[str] = []


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    """The run's PostgreSQL server."""
    with test_server() as server:
        _used.append(server.source)
        yield server


# Fixtures that give a test a real PostgreSQL: the run's, or one the test controls.
_SERVER_FIXTURES = frozenset({"pg_server", "controlled", "tls_server"})

# The slow suites, by where they are: CI runs each of them one way of four (.ci/run).
_SUITES = {
    "fuzz": ("tests/fuzz/",),
    "wheel": ("tests/integration/cli/test_wheel.py",),
    "conformance": ("tests/integrations/test_adk_contract.py",),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test ``integration`` (a real PostgreSQL, or the package built and
    installed) or ``unit`` (pure logic, fakes at most), so that ``pytest -m unit`` starts
    and waits for no database; and the slow suites ``fuzz``, ``wheel``, ``conformance``.

    A test that starts a server some other way (a subprocess, the CLI) says so with
    ``@pytest.mark.integration``.
    """
    for item in items:
        where = item.path.relative_to(config.rootpath).as_posix()
        suites = [name for name, places in _SUITES.items() if where.startswith(places)]
        for suite in suites:
            item.add_marker(suite)
        names = set(getattr(item, "fixturenames", ()))
        integration = (
            bool(names & _SERVER_FIXTURES)
            or item.get_closest_marker("integration") is not None
            or "wheel" in suites
        )
        if not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration if integration else pytest.mark.unit)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which PostgreSQL the run used, so every CI log shows it."""
    if _used:
        terminalreporter.write_line(f"PostgreSQL under test: {' '.join(_used)}")


async def admin_execute(server: TestServer, sql: str) -> None:
    """Run ``sql`` directly on the admin database, on a connection of its own."""
    await _admin_on(server, None, sql)


async def _admin_on(server: TestServer, database: str | None, sql: str) -> str:
    """Run ``sql`` directly on ``database`` (default: the admin database); return the
    server's version."""
    dsn = server.admin_dsn if database is None else server.admin_dsn_for(database)
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        await conn.execute(sql)
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def as_supabase_postgres(dsn: str) -> str:
    """``dsn`` logging in as the role that plays Supabase's ``postgres``: not a superuser,
    bypasses row-level security, owns the Supabase-like databases (see supabase_sql)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{OWNER}:{OWNER_PASSWORD}@{host}"))


async def create_database(
    server: TestServer, template: str | None = None, *, owner: str | None = None
) -> str:
    """A new, uniquely named database (a copy of ``template`` if given)."""
    name = f"sstest_{_RUN}_{next(_names)}"
    clause = f" TEMPLATE {template}" if template else ""
    clause += f" OWNER {owner}" if owner else ""
    version = await _admin_on(server, None, f"CREATE DATABASE {name}{clause}")
    if len(_used) == 1:
        _used.append(version)
    return name


async def drop_database(server: TestServer, name: str) -> None:
    """Drop ``name``, disconnecting anyone still on it."""
    await admin_execute(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
async def template_db(pg_server: TestServer) -> AsyncIterator[str]:
    """A database migrated to head, cloned for each test."""
    name = await create_database(pg_server)
    await asyncio.to_thread(upgrade, pg_server.admin_dsn_for(name))
    yield name
    await drop_database(pg_server, name)


async def create_supabase_like(server: TestServer) -> str:
    """A new database with Supabase's roles, auth schema and default grants, owned by the
    role that plays Supabase's ``postgres``."""
    await admin_execute(server, ROLES)
    name = await create_database(server, owner=OWNER)
    await _admin_on(server, name, AUTH_AND_GRANTS)
    return name


@pytest.fixture(scope="session")
async def supabase_template(pg_server: TestServer) -> AsyncIterator[str]:
    """A Supabase-like database (roles, auth schema, default grants) migrated to head by
    its owner, as `sessionstore migrate` runs on Supabase."""
    name = await create_supabase_like(pg_server)
    await asyncio.to_thread(upgrade, as_supabase_postgres(pg_server.admin_dsn_for(name)))
    yield name
    await drop_database(pg_server, name)


@pytest.fixture
async def supabase_database(pg_server: TestServer, supabase_template: str) -> AsyncIterator[str]:
    """A fresh Supabase-like database at head, for this test only. Reach it as Supabase's
    ``postgres`` with ``as_supabase_postgres(pg_server.dsn_for(name))``."""
    name = await create_database(pg_server, template=supabase_template, owner=OWNER)
    yield name
    try:
        await _check_sealed(pg_server, name)
    finally:
        await drop_database(pg_server, name)


@pytest.fixture
async def empty_dsn(pg_server: TestServer) -> AsyncIterator[str]:
    """A fresh database with no schema (for migration tests), reached directly."""
    name = await create_database(pg_server)
    yield pg_server.admin_dsn_for(name)
    await drop_database(pg_server, name)


# CI runs the adapters' and the examples' tests a second time with encryption at rest on
# (SESSIONSTORE_ENCRYPTION_KEY, which every store reads) and this set: each test's
# database must then hold no message in clear.
_EXPECT_SEALED = "SESSIONSTORE_TEST_EXPECT_SEALED"
_CLEAR_MESSAGES = "SELECT count(*) FROM messages WHERE content_sealed IS NULL"


async def _check_sealed(server: TestServer, name: str) -> None:
    if not os.environ.get(_EXPECT_SEALED):
        return
    conn = await asyncpg.connect(server.admin_dsn_for(name))
    try:
        clear = await conn.fetchval(_CLEAR_MESSAGES)
    finally:
        await conn.close()
    assert clear == 0, f"{clear} message(s) stored in clear with encryption on"


@pytest.fixture
async def database(pg_server: TestServer, template_db: str) -> AsyncIterator[str]:
    """The name of a fresh database at head, for this test only."""
    name = await create_database(pg_server, template=template_db)
    yield name
    try:
        await _check_sealed(pg_server, name)
    finally:
        await drop_database(pg_server, name)


@pytest.fixture
def dsn(pg_server: TestServer, database: str) -> str:
    """The application DSN of this test's database (through the pooler under test, if any)."""
    return pg_server.dsn_for(database)


@pytest.fixture
def admin_dsn(pg_server: TestServer, database: str) -> str:
    """A direct DSN to this test's database, for migrations and checks."""
    return pg_server.admin_dsn_for(database)


def store_overrides() -> dict[str, Any]:
    """Settings every test store gets (the pooler mode under test comes from the env).

    The session cache is off here: these tests change rows behind the store's back (as
    another process would) and check database semantics;
    ``integration/connection/test_cache.py`` tests the cache.
    """
    return {
        "pooler": os.environ.get("SESSIONSTORE_TEST_POOLER", "auto"),
        "max_size": 10,
        "cache_size": 0,
    }


@pytest.fixture
async def supabase_store(
    pg_server: TestServer, supabase_database: str
) -> AsyncIterator[SessionStore]:
    """An open store on a Supabase-like database, logged in as Supabase's ``postgres``
    (``as_user`` views run under row-level security)."""
    dsn = as_supabase_postgres(pg_server.dsn_for(supabase_database))
    async with sessionstore.connect(dsn, **store_overrides()) as opened:
        yield opened


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[SessionStore]:
    """An open store on this test's database."""
    async with sessionstore.connect(dsn, **store_overrides()) as opened:
        yield opened


@pytest.fixture
async def slow_writer(dsn: str) -> AsyncIterator[SessionStore]:
    """An open store whose writer holds what it collects until flush() (or an hour: never
    within a test, however loaded the machine), so read-your-writes and the queued-turn
    handover are observable. A batch still starts at once when a message of another kind
    follows (a turn, then a plain message): hold the rows to keep such a batch back."""
    async with sessionstore.connect(
        dsn, max_delay=3600.0, batch_size=10_000, **store_overrides()
    ) as opened:
        yield opened


@pytest.fixture
async def conn(admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to this test's database, for checking what was written."""
    connection = await asyncpg.connect(admin_dsn, statement_cache_size=0)
    yield connection
    await connection.close()
