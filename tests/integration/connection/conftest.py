"""Fixtures for the connection tests: a TCP proxy in front of the test's database, to
make the network fail (see :mod:`tests.proxy`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ...proxy import Proxy, upstream_of
from ...servers import TestServer


async def proxy_for(dsn: str) -> Proxy:
    """An open proxy in front of the server ``dsn`` names (skips the test when it names
    several hosts). Close it with ``await proxy.close()``."""
    upstream = upstream_of(dsn)
    if upstream is None:
        pytest.skip("the server under test has several hosts; the proxy stands for one")
    return await Proxy(upstream).__aenter__()


@pytest.fixture
async def proxy(pg_server: TestServer, database: str) -> AsyncIterator[Proxy]:
    """A proxy in front of this test's database (its DSN: ``proxy.dsn(dsn)``)."""
    opened = await proxy_for(pg_server.dsn_for(database))
    try:
        yield opened
    finally:
        await opened.close()
