"""A fresh database on a real Citus cluster per test, when ``SESSIONSTORE_TEST_CITUS_DSN``
names its coordinator (a superuser's URL; the workers are reached with the same user and
password at the addresses the coordinator lists). Without it every test here is skipped:
CI has no Citus package."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import pytest

import sessionstore
from sessionstore import SessionStore
from sessionstore.distribution import distribute
from sessionstore.migrations import upgrade

from ...conftest import create_database, drop_database, store_overrides
from ...helpers import eventually, wait_for_lock_waiters
from ...servers import TestServer, with_database

CITUS_DSN = "SESSIONSTORE_TEST_CITUS_DSN"

_WORKERS = (
    "SELECT nodename, nodeport FROM pg_dist_node"
    " WHERE noderole = 'primary' AND groupid <> 0 AND isactive ORDER BY nodeid"
)


def _at(dsn: str, host: str, port: int) -> str:
    parts = urlsplit(dsn)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}:{port}" if auth else f"{host}:{port}"))


@pytest.fixture
async def citus_dsn() -> AsyncIterator[str]:
    """The URL of a new database on the cluster, with the ``citus`` extension on every
    node and the workers registered; dropped (on every node) afterwards."""
    async with citus_database() as dsn:
        yield dsn


@asynccontextmanager
async def citus_database() -> AsyncIterator[str]:
    """:func:`citus_dsn`'s database (the test is skipped without a cluster)."""
    coordinator = os.environ.get(CITUS_DSN)
    if not coordinator:
        pytest.skip(f"{CITUS_DSN} is not set (no Citus cluster)")
    name = f"sessionstore_citus_{uuid4().hex[:12]}"
    admin = await asyncpg.connect(coordinator)
    try:
        workers = [(r["nodename"], r["nodeport"]) for r in await admin.fetch(_WORKERS)]
        await admin.execute("SET citus.enable_create_database_propagation = on")
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    here = urlsplit(coordinator)
    dsn = with_database(coordinator, name)
    try:
        for host, port in workers:
            worker = await asyncpg.connect(with_database(_at(coordinator, host, port), name))
            try:
                await worker.execute("CREATE EXTENSION IF NOT EXISTS citus")
            finally:
                await worker.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
            await conn.execute(
                "SELECT citus_set_coordinator_host($1, $2)", here.hostname, here.port or 5432
            )
            for host, port in workers:
                await conn.execute("SELECT citus_add_node($1, $2)", host, port)
        finally:
            await conn.close()
        yield dsn
    finally:
        admin = await asyncpg.connect(coordinator)
        try:
            await admin.execute("SET citus.enable_create_database_propagation = on")
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class Placed(NamedTuple):
    """A database with the distributed layout: the URL stores use, one for checks."""

    dsn: str
    admin_dsn: str
    citus: bool


@pytest.fixture(params=["keyed", pytest.param("citus", marks=pytest.mark.citus)])
async def placed(
    request: pytest.FixtureRequest, pg_server: TestServer, template_db: str
) -> AsyncIterator[Placed]:
    """A database at head with the distributed layout, for this test only: on the
    PostgreSQL under test with the keyed layout (``keyed``: what Citus demands, without
    Citus, run everywhere), and distributed on the Citus cluster (``citus``: skipped
    without ``SESSIONSTORE_TEST_CITUS_DSN``)."""
    if request.param == "keyed":
        name = await create_database(pg_server, template=template_db)
        try:
            conn = await asyncpg.connect(pg_server.admin_dsn_for(name))
            try:
                await distribute(conn, citus=False)
            finally:
                await conn.close()
            yield Placed(pg_server.dsn_for(name), pg_server.admin_dsn_for(name), citus=False)
        finally:
            await drop_database(pg_server, name)
        return
    async with citus_database() as dsn:
        await asyncio.to_thread(upgrade, dsn)
        conn = await asyncpg.connect(dsn)
        try:
            await distribute(conn, citus=True)
        finally:
            await conn.close()
        yield Placed(dsn, dsn, citus=True)


@pytest.fixture
async def store(placed: Placed) -> AsyncIterator[SessionStore]:
    """An open store on the ``placed`` database."""
    async with sessionstore.connect(placed.dsn, **store_overrides()) as opened:
        yield opened


@pytest.fixture
async def other(placed: Placed) -> AsyncIterator[SessionStore]:
    """A second process's store (its own remembered routes)."""
    async with sessionstore.connect(placed.dsn, **store_overrides()) as opened:
        yield opened


@pytest.fixture
async def conn(placed: Placed) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the ``placed`` database, for checking what was written."""
    connection = await asyncpg.connect(placed.admin_dsn, statement_cache_size=0)
    yield connection
    await connection.close()


_CITUS_WAITERS = "SELECT count(DISTINCT waiting_gpid) FROM citus_lock_waits"


async def wait_for_waiters(placed: Placed, wanted: int) -> None:
    """Wait until exactly ``wanted`` statements wait for a lock, asked over a connection
    of its own: a transaction reads ``pg_stat_activity`` once (its snapshot is kept), so
    the connection holding the lock cannot watch others queue behind it. On Citus the
    statements wait on the workers: its distributed lock waits count."""
    watcher = await asyncpg.connect(placed.admin_dsn, statement_cache_size=0)
    try:
        if placed.citus:

            async def reached() -> bool:
                return int(await watcher.fetchval(_CITUS_WAITERS)) == wanted

            await eventually(reached, what=f"{wanted} statements waiting for a lock")
        else:
            await wait_for_lock_waiters(watcher, wanted)
    finally:
        await watcher.close()
