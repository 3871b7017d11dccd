"""``connect(pool=...)``: a pool the application owns — used, checked, never closed — and
connection failures named by their real cause (refused, authentication, hang)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    AuthenticationError,
    InvalidInputError,
    StoreUnavailableError,
)

from ...conftest import store_overrides
from ...servers import TestServer

POOLER = os.environ.get("SESSIONSTORE_TEST_POOLER", "auto")


def _pool_options() -> dict[str, Any]:
    """What an application's pool needs behind the pooler under test."""
    return {"statement_cache_size": 0} if POOLER == "transaction" else {}


def _overrides() -> dict[str, Any]:
    # The cache is on here: these tests show how it is kept fresh.
    return {**store_overrides(), "cache_size": 100}


@pytest.fixture(autouse=True)
def _no_dsn_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A URL in the environment would become the store's DSN: these tests say when they want one.
    monkeypatch.delenv("SESSIONSTORE_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture
async def app_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """The application's pool, set up as the docs say."""
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=3, init=sessionstore.init_connection, **_pool_options()
    )
    try:
        yield pool
    finally:
        await pool.close()


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_the_store_uses_the_pool_and_leaves_it_open(app_pool: asyncpg.Pool) -> None:
    async with sessionstore.connect(pool=app_pool, **_overrides()) as store:
        session = await store.sessions.create("u1")
        turn = await store.add_turn(
            "given-pool", "user", "hi", session_id=session.id, metadata={"k": [1, "é"]}
        )
        await store.enqueue_turn("given-pool", "assistant", "hello", session_id=session.id)
        await store.flush()
        history = await store.messages.history(turn.conversation.id)
        assert [m.content for m in history] == ["hi", "hello"]
        assert history[0].metadata == {"k": [1, "é"]}
        # No DSN was given: there is no listener connection to keep the cache fresh.
        assert store.stats().cache_invalidation == "ttl"
    assert not app_pool.is_closing()
    async with app_pool.acquire() as conn:  # the application goes on using it
        assert await conn.fetchval("SELECT turn_count FROM sessions") == 2
        # The codec applies to the application's own queries too.
        assert await conn.fetchval("SELECT $1::jsonb", {"a": 1}) == {"a": 1}


async def test_a_dsn_beside_the_pool_feeds_the_cache_listener(
    dsn: str, app_pool: asyncpg.Pool
) -> None:
    async with sessionstore.connect(dsn, pool=app_pool, **_overrides()) as store:
        expected = "ttl" if POOLER == "transaction" else "notify"
        assert store.stats().cache_invalidation == expected
        assert (await store.sessions.create("u1")).user_id == "u1"
    assert not app_pool.is_closing()


async def test_a_pool_without_the_codec_is_refused_before_any_write(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, **_pool_options())
    try:
        store = sessionstore.connect(pool=pool, **_overrides())
        with pytest.raises(InvalidInputError) as info:
            await store.open()
        assert info.value.field == "pool"
        assert "init=sessionstore.init_connection" in str(info.value)
        assert not pool.is_closing()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM sessions") == 0
    finally:
        await pool.close()


async def test_a_codec_that_quotes_json_text_is_refused(dsn: str) -> None:
    # A common application codec: json.dumps would store sessionstore's JSON text as a
    # JSON string ('"{\"k\": 1}"') instead of an object.
    async def init(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init, **_pool_options())
    try:
        with pytest.raises(InvalidInputError, match="lack sessionstore's json/jsonb codec"):
            await sessionstore.connect(pool=pool, **_overrides())
    finally:
        await pool.close()


async def test_a_pool_that_is_not_open_is_named(dsn: str) -> None:
    closed = await asyncpg.create_pool(dsn, min_size=0, init=sessionstore.init_connection)
    await closed.close()
    with pytest.raises(InvalidInputError, match="pool: is closed"):
        await sessionstore.connect(pool=closed, **_overrides())
    never_opened = asyncpg.create_pool(dsn, min_size=0)  # not awaited
    with pytest.raises(InvalidInputError, match=r"pool: cannot be used: .*not initialized"):
        await sessionstore.connect(pool=never_opened, **_overrides())


def test_what_cannot_be_a_pool_is_refused_at_once() -> None:
    with pytest.raises(InvalidInputError) as info:
        sessionstore.connect(pool="postgresql://h/db")  # type: ignore[arg-type]
    assert info.value.field == "pool"


async def test_configure_is_for_sessionstores_own_pool(app_pool: asyncpg.Pool) -> None:
    async def configure(conn: asyncpg.Connection) -> None:
        pass

    with pytest.raises(InvalidInputError) as info:
        sessionstore.connect(pool=app_pool, configure=configure)
    assert info.value.field == "configure"


async def test_a_refused_connection_says_so_not_lost() -> None:
    url = f"postgresql://u:secret@127.0.0.1:{_unused_port()}/db"
    with pytest.raises(StoreUnavailableError) as own:
        await sessionstore.connect(url, connect_timeout=5)
    assert "could not connect to postgresql://u:***@127.0.0.1" in str(own.value)
    assert "lost" not in str(own.value)
    # The same through an application's pool (asyncpg opens its connections itself).
    pool = await asyncpg.create_pool(url, min_size=0, init=sessionstore.init_connection)
    try:
        with pytest.raises(StoreUnavailableError) as given:
            await sessionstore.connect(pool=pool)
        assert str(given.value).startswith("could not connect to the database:")
        assert "secret" not in str(given.value)
    finally:
        await pool.close()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word (a hung server)."""
    hung: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        hung.append(w)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in hung:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_connection_that_hangs_names_connect_timeout(silent_port: int) -> None:
    with pytest.raises(StoreUnavailableError) as info:
        await sessionstore.connect(
            f"postgresql://u@127.0.0.1:{silent_port}/db", connect_timeout=0.5, min_size=1
        )
    assert "no answer within connect_timeout=0.5s" in str(info.value)
    assert "lost" not in str(info.value)


def _as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:pw@{host}"))


async def test_a_refused_login_is_an_authentication_error(
    pg_server: TestServer, conn: asyncpg.Connection, database: str
) -> None:
    # A role that may not log in (and has no password): the server refuses it whatever
    # pg_hba.conf allows, so this holds on a trust-authenticated test server too.
    await conn.execute("DROP ROLE IF EXISTS sstest_nologin; CREATE ROLE sstest_nologin NOLOGIN")
    url = _as_user(pg_server.admin_dsn_for(database), "sstest_nologin")
    try:
        with pytest.raises(AuthenticationError) as info:
            await sessionstore.connect(url, connect_timeout=5)
        # 28000 where the server trusts the address, 28P01 where it asks for a password
        # first (the container): a refusal either way, never a hang or a lost connection.
        assert info.value.sqlstate in ("28000", "28P01")
        expected = {"28000": "login refused by the server", "28P01": "authentication failed"}
        assert expected[info.value.sqlstate or ""] in str(info.value)
        assert "connect_timeout" not in str(info.value)
    finally:
        await conn.execute("DROP ROLE sstest_nologin")


async def test_an_unknown_url_parameter_is_named_not_called_a_missing_schema(
    pg_server: TestServer, database: str
) -> None:
    # asyncpg sends query parameters it does not know as server settings; the server
    # refuses the name with the same SQLSTATE (42704) as a missing type.
    url = pg_server.admin_dsn_for(database)
    url += ("&" if "?" in url else "?") + "sstest_no_such_setting=1"
    with pytest.raises(InvalidInputError) as info:
        await sessionstore.connect(url, connect_timeout=5)
    assert info.value.field == "dsn"
    assert 'unrecognized configuration parameter "sstest_no_such_setting"' in str(info.value)
    assert "sessionstore migrate" not in str(info.value)


async def test_a_given_pool_that_cannot_connect_is_not_called_exhausted(
    silent_port: int,
) -> None:
    url = f"postgresql://u@127.0.0.1:{silent_port}/db"
    # The pool's own connect timeout first, then sessionstore's acquire_timeout.
    for timeout, acquire_timeout in ((0.3, 5.0), (60.0, 0.5)):
        pool = await asyncpg.create_pool(
            url, min_size=0, timeout=timeout, init=sessionstore.init_connection
        )
        try:
            with pytest.raises(StoreUnavailableError) as info:
                await sessionstore.connect(pool=pool, acquire_timeout=acquire_timeout)
            assert "a new connection of the application's pool did not open" in str(info.value)
            assert "in use" not in str(info.value)
        finally:
            pool.terminate()


async def test_beside_a_pool_the_environments_url_is_not_read(
    app_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It may name another database than the pool's: the cache's listener would LISTEN
    # there, and telemetry would name it.
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@elsewhere.invalid:5432/other")
    # Not even checked: this one would be refused.
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", "mysql://u:secret@h/db")
    async with sessionstore.connect(pool=app_pool, **_overrides()) as store:
        assert store.config.dsn is None
        assert store.stats().cache_invalidation == "ttl"
        assert (await store.sessions.create("u1")).user_id == "u1"


def test_settings_beside_a_pool_are_checked_as_without_one(
    dsn: str, app_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError) as info:
        sessionstore.connect(
            dsn, pool=app_pool, ssl="require", ssl_root_cert=tmp_path / "no-such-ca.crt"
        )
    assert info.value.field == "ssl_root_cert"
