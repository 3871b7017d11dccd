"""Fixtures of the schema tests (the others they use are in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ...conftest import as_supabase_postgres, create_supabase_like, drop_database
from ...servers import TestServer


@pytest.fixture
async def supabase_like_empty(pg_server: TestServer) -> AsyncIterator[str]:
    """A fresh Supabase-like database with no schema of ours; its direct DSN as the role
    that plays Supabase's ``postgres``."""
    name = await create_supabase_like(pg_server)
    yield as_supabase_postgres(pg_server.admin_dsn_for(name))
    await drop_database(pg_server, name)
