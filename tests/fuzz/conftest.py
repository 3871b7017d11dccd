"""Fixtures of the fuzzer: the case report in the terminal summary, a store whose
write-behind batches leave at once, and a store on a Supabase-like database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

import sessionstore
from sessionstore import SessionStore

from ..conftest import as_supabase_postgres, store_overrides
from ..servers import TestServer
from .world import CASES


class _CaseReport:
    """A plugin registered by this conftest: reports the number of cases in the summary."""

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if CASES:
            detail = ", ".join(f"{name} {n}" for name, n in sorted(CASES.items()))
            terminalreporter.write_line(f"fuzz: {sum(CASES.values())} hypothesis cases ({detail})")


@pytest.fixture(autouse=True, scope="module")
def _report_cases(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("sessionstore-fuzz-cases"):
        manager.register(_CaseReport(), "sessionstore-fuzz-cases")


@pytest.fixture
async def quick_store(dsn: str) -> AsyncIterator[SessionStore]:
    """A store whose write-behind batches leave at once (``flush`` does not wait out
    ``max_delay``), to keep the example count high."""
    async with sessionstore.connect(dsn, **{**store_overrides(), "max_delay": 0.0}) as opened:
        yield opened


@pytest.fixture
async def rls(
    pg_server: TestServer, supabase_database: str
) -> AsyncIterator[tuple[SessionStore, asyncpg.Connection]]:
    """A store on a Supabase-like database (as its ``postgres``) and a direct connection."""
    conn = await asyncpg.connect(pg_server.admin_dsn_for(supabase_database))
    try:
        dsn = as_supabase_postgres(pg_server.dsn_for(supabase_database))
        async with sessionstore.connect(dsn, **store_overrides()) as store:
            yield store, conn
    finally:
        await conn.close()
