"""A fresh database on a real Citus cluster per test, when ``SESSIONSTORE_TEST_CITUS_DSN``
names its coordinator (a superuser's URL; the workers are reached with the same user and
password at the addresses the coordinator lists). Without it every test here is skipped:
CI has no Citus package."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import pytest

from ...servers import with_database

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
