"""Handing pooled connections back: at once when the call ended normally, in the
background when a timeout, an error or a cancellation left the connection in an unknown
state — so that the caller gets its outcome without waiting for the server again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..errors import SessionStoreError, translate_errors
from ..retry import describe

__all__ = ["Releases", "in_transaction", "release"]

logger = logging.getLogger("sessionstore")


class Releases:
    """The background releases of one pool's broken connections, each bounded by
    ``timeout`` (``command_timeout``, or ``connect_timeout`` when that is None)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def later(self, pool: asyncpg.Pool, conn: PoolConnectionProxy[Any]) -> None:
        """Clean ``conn`` up without making the caller wait for the server."""
        if in_transaction(conn):
            # Dropping the connection is the rollback (COMMIT was never answered, so the
            # server commits nothing), and it waits for nothing; a ROLLBACK would wait
            # for the server — first for the cancel of the statement before it.
            conn.terminate()  # asyncpg hands the pool slot back at once
            return
        task = asyncio.create_task(self._bounded(pool, conn), name="sessionstore-release")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bounded(self, pool: asyncpg.Pool, conn: PoolConnectionProxy[Any]) -> None:
        # asyncpg's release waits for the cancel request of an interrupted statement (which
        # still commits if it finishes first: its outcome is unknown) and drops the
        # connection if the server does not confirm within command_timeout; the timeout
        # here only covers command_timeout=None. Cancelled by stop(): drop it now.
        try:
            async with asyncio.timeout(self.timeout):
                await release(pool, conn)
        except TimeoutError:
            logger.debug("dropped a connection whose cleanup did not finish in time")
            _terminate(conn)
        except asyncio.CancelledError:
            _terminate(conn)
            raise

    async def stop(self) -> None:
        """Stop waiting for the releases still running: each drops its connection."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()  # each drops its connection, if the pool has not already
        if tasks:
            await asyncio.wait(tasks)


def in_transaction(conn: PoolConnectionProxy[Any]) -> bool:
    """Whether ``conn`` has a transaction open (``False`` once asyncpg dropped it)."""
    try:
        return conn.is_in_transaction()
    except asyncpg.InterfaceError:
        return False  # already handed back: asyncpg dropped the connection when it broke


def _terminate(conn: PoolConnectionProxy[Any]) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # already released: nothing to drop
        conn.terminate()


async def release(pool: asyncpg.Pool, conn: PoolConnectionProxy[Any]) -> None:
    """Hand ``conn`` back to ``pool``; a connection that fails to reset is discarded."""
    try:
        with translate_errors():
            await pool.release(conn)
    except SessionStoreError as exc:
        # asyncpg has terminated the broken connection and the pool will open a new
        # one; the caller's own outcome (result or error) is what matters.
        logger.debug("discarded a connection that failed to reset: %s", describe(exc))
