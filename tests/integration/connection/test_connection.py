"""The connection layer: opening, closing, timeouts, error translation, cancellation."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    InvalidInputError,
    SessionStore,
    SessionStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)

from ...conftest import store_overrides
from ...helpers import wait_for_lock_waiters


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_await_form_and_idempotent_close(dsn: str) -> None:
    store = await sessionstore.connect(dsn, **store_overrides())
    try:
        assert (await store.sessions.create("u")).user_id == "u"
    finally:
        await store.close()
        await store.close()
    with pytest.raises(SessionStoreError, match="not open"):
        await store.sessions.get("00000000-0000-0000-0000-000000000000")


async def test_unreachable_database_raises_store_unavailable() -> None:
    dsn = f"postgresql://nobody@127.0.0.1:{_unused_port()}/nothing"
    with pytest.raises(StoreUnavailableError, match="could not connect") as info:
        await sessionstore.connect(dsn, connect_timeout=2)
    assert "nobody" in str(info.value)


async def test_missing_dsn_and_unknown_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSIONSTORE_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(InvalidInputError) as info:
        sessionstore.connect()
    assert info.value.field == "dsn"
    with pytest.raises(InvalidInputError) as unknown:
        sessionstore.connect("postgresql://x@127.0.0.1/db", pool_size=3)
    assert unknown.value.field == "pool_size"
    with pytest.raises(InvalidInputError) as bad:
        sessionstore.connect("mysql://x@127.0.0.1/db")
    assert bad.value.field == "dsn"


async def test_blocked_statement_times_out(
    store: SessionStore, dsn: str, conn: asyncpg.Connection
) -> None:
    """Server-side statement_timeout (direct) or client-side command_timeout (behind a
    transaction pooler, which cannot carry statement_timeout) both end the wait."""
    s = await store.sessions.create("u")
    async with sessionstore.connect(
        dsn, statement_timeout=0.2, command_timeout=1.0, **store_overrides()
    ) as impatient:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", s.id)
            with pytest.raises(StoreTimeoutError):
                await impatient.sessions.record_turn(s.id, tokens=1)
            # A client-side cancel reaches the server asynchronously: keep the lock until
            # it has landed, or the "timed out" statement could still commit.
            await wait_for_lock_waiters(conn, 0)
        # the pool is healthy afterwards, and the timed-out call wrote nothing
        assert (await impatient.sessions.record_turn(s.id, tokens=1)).turn_count == 1


async def test_cancelled_caller_leaves_no_partial_write_and_a_healthy_pool(
    dsn: str, conn: asyncpg.Connection
) -> None:
    async with sessionstore.connect(
        dsn,
        min_size=1,
        max_size=1,
        **{k: v for k, v in store_overrides().items() if k != "max_size"},
    ) as store:
        s = await store.sessions.create("u")
        await conn.execute("BEGIN")
        await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", s.id)
        task = asyncio.create_task(store.add_turn("c", "user", "x", session_id=s.id, tokens=3))
        await wait_for_lock_waiters(conn, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for_lock_waiters(conn, 0)
        await conn.execute("ROLLBACK")
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
        assert await conn.fetchval("SELECT turn_count FROM sessions") == 0
        # the only pooled connection works for the next caller
        turn = await store.add_turn("c", "user", "y", session_id=s.id, tokens=3)
        assert turn.message.seq == 1


def _floor_restore_record(error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord(
        "asyncpg.pool",
        logging.WARNING,
        __file__,
        1,
        "Failed to restore the pool connection floor; retrying",
        None,
        info,
    )


async def test_asyncpg_floor_restore_tracebacks_are_dropped_for_our_pools_only(dsn: str) -> None:
    """sessionstore reports its own pools' connect failures in one line; asyncpg's
    traceback about them is dropped, and other pools' records are left alone."""
    asyncpg_pool_logger = logging.getLogger("asyncpg.pool")
    async with sessionstore.connect(dsn, **store_overrides()):
        installed = [
            f for f in asyncpg_pool_logger.filters if type(f).__name__ == "_FloorRestoreFilter"
        ]
    assert len(installed) == 1  # once per process, however many stores
    ours = _floor_restore_record(StoreUnavailableError("could not connect to …: refused"))
    theirs = _floor_restore_record(ConnectionRefusedError(111, "Connection refused"))
    assert not asyncpg_pool_logger.filter(ours)
    assert asyncpg_pool_logger.filter(theirs)
