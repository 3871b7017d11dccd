"""Fixtures the framework adapters' tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

import sessionstore
from sessionstore import SessionStore

from ..conftest import as_supabase_postgres, store_overrides
from ..servers import TestServer


@pytest.fixture
async def supabase(
    pg_server: TestServer, supabase_database: str
) -> AsyncIterator[tuple[SessionStore, asyncpg.Connection]]:
    """A store logged in as Supabase's ``postgres`` on a Supabase-like database (its
    roles, grants and default privileges), and an admin connection to the same database."""
    conn = await asyncpg.connect(pg_server.admin_dsn_for(supabase_database))
    async with sessionstore.connect(
        as_supabase_postgres(pg_server.dsn_for(supabase_database)), **store_overrides()
    ) as store:
        yield store, conn
    await conn.close()
