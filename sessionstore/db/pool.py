"""The pool: one asyncpg pool configured from a :class:`StoreConfig`, its lifecycle and
its connections.

Time bounds (docs/scaling.md states them for users):

- opening a connection — TCP, TLS, login and the per-connection setup together — takes
  at most ``connect_timeout``; one that hangs fails naming ``connect_timeout``;
- waiting for a free pooled connection takes at most ``acquire_timeout`` (the error names
  it and ``max_size``; if the wait was for a new connection that hung, it says that);
- a connection left broken by a timeout or a cancellation is cleaned up in the
  background, never while the caller waits: asyncpg's release first waits for its cancel
  request (within the release's budget, the acquire's timeout), which on a server that
  stopped answering would at least double the caller's wait. :meth:`Pool.close` stops waiting
  for those.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..config import StoreConfig, redact_dsn
from ..distribution import KEYED_LAYOUT, ClockedConnection
from ..errors import (
    InvalidInputError,
    SessionStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    acquire_timeout_error,
    pool_open_timeout_error,
    translate,
    translate_errors,
)
from ..retry import describe
from .connection import (
    CODEC_CHECK,
    ConfigureCallback,
    Connection,
    connect_arguments,
    connect_failed,
    init_connection,
    open_connection,
)
from .release import Releases, in_transaction, release

__all__ = ["Pool"]

logger = logging.getLogger("sessionstore")

#: The margin stated on every time bound (docs/scaling.md): scheduling, one local round
#: trip, and the event loop's timer granularity.
_MARGIN = 0.5


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: deliberately nothing.

    asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, advisory unlock) costs a round
    trip on every release. sessionstore leaves no session state on pooled connections,
    asyncpg still rolls back any open transaction before this hook, a ``configure``
    callback's settings must survive, and behind a transaction pooler ``RESET ALL``
    would land on a server session some other client is using.
    """


class _Checkout:
    """One caller's wait for a pooled connection: whether it had to open a new one."""

    __slots__ = ("connecting",)

    def __init__(self) -> None:
        self.connecting = False


# Set by Pool.acquire around asyncpg's acquire, read by the connect function asyncpg calls
# from inside it (in a task of its own whose context is a copy: hence a mutable object).
_CHECKOUT: ContextVar[_Checkout | None] = ContextVar("sessionstore_checkout", default=None)


class _FloorRestoreFilter(logging.Filter):
    """Drops asyncpg's "Failed to restore the pool connection floor" records about
    sessionstore's own pools.

    With ``min_size`` > 0 asyncpg reopens lost connections in the background and logs
    each failed attempt at WARNING with a full traceback — which Python prints to stderr
    when the application configured no logging. Passing ``min_size=0`` to asyncpg would
    avoid that, but would also drop the floor itself (idle connections would close after
    ``max_inactive_connection_lifetime``, and nothing would reconnect after an outage).
    So the floor stays and this filter, on the ``asyncpg.pool`` logger, drops exactly the
    records whose exception is a :class:`SessionStoreError`: only sessionstore's connect
    function raises those into asyncpg, and it has already reported the condition once,
    in one line (:meth:`Pool._connect_failed`). Records about other asyncpg pools in the
    process pass untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, SessionStoreError)


_FLOOR_RESTORE_FILTER = _FloorRestoreFilter()


class Pool:
    """One asyncpg pool configured from a :class:`StoreConfig`: its lifecycle and its
    connections. Acquiring waits at most ``acquire_timeout``, connecting at most
    ``connect_timeout`` (see the module's time bounds).

    An outage is logged as conditions, once each: "cannot open connections" and "calls
    cannot reach the database" at WARNING when they start, at INFO when they end, and at
    DEBUG between.
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        configure: ConfigureCallback | None = None,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        self.config = config
        if pool is not None and not isinstance(pool, asyncpg.Pool):
            raise InvalidInputError("pool", "must be an asyncpg.Pool (asyncpg.create_pool)")
        if pool is not None and configure is not None:
            raise InvalidInputError(
                "configure", "cannot be used with pool=: set connections up in the pool's init="
            )
        if pool is None or config.dsn:
            # Checks the DSN and SSL settings now (beside a given pool, the cache's
            # listener connects with them).
            self._arguments = connect_arguments(config)
        self._configure = configure
        # A pool the application owns: used, checked, never closed by sessionstore.
        self._given = pool
        self._pool: asyncpg.Pool | None = None
        # The two outage conditions: monotonic time they started, None while all is well.
        self._unanswered_since: float | None = None
        self._connect_failing_since: float | None = None
        # Background releases of connections a timeout or a cancellation left broken.
        # asyncpg's cancel request gives up (and drops the connection) after
        # command_timeout; the releases' own bound covers command_timeout=None.
        self._releases = Releases(config.command_timeout or config.connect_timeout)
        #: Whether the database has the distributed (keyed) layout, read on the first
        #: acquisition (None before): restart the store after ``sessionstore distribute``.
        self.keyed: bool | None = None

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        if self._configure is not None:
            await self._configure(conn)

    async def _open_connection(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        """asyncpg's ``connect`` for this pool: connect and set the connection up
        (:meth:`_init_connection`), all within ``connect_timeout``.

        Failures are :class:`SessionStoreError` s
        (:func:`sessionstore.errors.connect_error`) and are logged as one condition.
        Called by asyncpg for callers' acquisitions and for its background floor
        restore alike.
        """
        checkout = _CHECKOUT.get()
        if checkout is not None:
            checkout.connecting = True
        deadline = asyncio.get_running_loop().time() + self.config.connect_timeout
        try:
            conn = await open_connection(*args, **kwargs)  # bounded by connect_timeout itself
            try:
                async with asyncio.timeout_at(deadline):
                    await self._init_connection(conn)
            except BaseException:
                conn.terminate()  # half set up: never handed out
                raise
        except Exception as exc:
            error = connect_failed(self.config, exc)
            self._connect_failed(error)
            raise error from exc
        if self._connect_failing_since is not None:
            logger.info(
                "connections to %s open again (after %.1fs)",
                redact_dsn(self.config.dsn),
                time.monotonic() - self._connect_failing_since,
            )
            self._connect_failing_since = None
        return conn

    def _connect_failed(self, error: SessionStoreError) -> None:
        if self._connect_failing_since is None:
            self._connect_failing_since = time.monotonic()
            logger.warning(
                "cannot open connections: %s; calls that need a new connection fail until "
                "it works again (logged at DEBUG until then)",
                error,
            )
        else:
            logger.debug("cannot open a connection: %s", error)

    async def open(self) -> None:
        """Create the pool (opening ``min_size`` connections). Idempotent.

        Raises what opening a connection raised (``StoreUnavailableError`` naming
        ``connect_timeout`` for a hang, ``AuthenticationError`` …) within about
        2 × ``connect_timeout``: asyncpg opens the first connection, then the others
        together.
        """
        if self._pool is not None:
            return
        if self._given is not None:
            await self._adopt(self._given)
            return
        cfg = self.config
        logging.getLogger("asyncpg.pool").addFilter(_FLOOR_RESTORE_FILTER)  # idempotent
        try:
            with translate_errors():
                self._pool = await asyncio.wait_for(
                    asyncpg.create_pool(
                        min_size=cfg.min_size,
                        max_size=cfg.max_size,
                        max_inactive_connection_lifetime=cfg.max_inactive_connection_lifetime,
                        connect=self._open_connection,
                        reset=_keep_session,
                        **self._arguments,
                    ),
                    timeout=2 * cfg.connect_timeout + _MARGIN,
                )
        except StoreTimeoutError as exc:  # only the bound above: connects raise their own
            raise pool_open_timeout_error(
                where=redact_dsn(cfg.dsn), connect_timeout=cfg.connect_timeout
            ) from exc
        logger.info(
            "pool open: %s (pooler=%s, size %d..%d)",
            redact_dsn(cfg.dsn),
            cfg.effective_pooler,
            cfg.min_size,
            cfg.max_size,
        )

    async def _adopt(self, pool: asyncpg.Pool) -> None:
        """Use the application's ``pool`` once one of its connections shows the codec
        sessionstore needs (one round trip); ``InvalidInputError`` names ``pool`` if not."""
        if pool.is_closing():
            raise InvalidInputError("pool", "is closed")
        self._pool = pool
        try:
            try:
                async with self.acquire() as conn:
                    row = await conn.fetchrow(CODEC_CHECK, '{"k": 1}')
            except SessionStoreError as exc:
                if isinstance(exc.__cause__, asyncpg.InterfaceError):  # e.g. not initialised
                    raise InvalidInputError("pool", f"cannot be used: {exc.__cause__}") from None
                raise
            assert row is not None  # one row, always
            if row[0] != "object" or row[1] != {"k": 1}:
                raise InvalidInputError(
                    "pool",
                    "its connections lack sessionstore's json/jsonb codec: create the pool "
                    "with init=sessionstore.init_connection (or await that in your init)",
                )
        except BaseException:
            self._pool = None
            raise
        logger.info("using the application's pool (sessionstore will not close it)")

    @property
    def answering(self) -> bool:
        """False while the database is known not to answer: the last call on the pool got
        no answer in time or lost its connection, or opening connections fails."""
        return self._unanswered_since is None and self._connect_failing_since is None

    def usage(self) -> tuple[int, int, int]:
        """Connections right now: open, of those in use, and the most allowed (for
        ``store.stats()`` and the pool metrics); ``(0, 0, max_size)`` while closed."""
        pool = self._pool
        if pool is None:
            return 0, 0, self.config.max_size
        size = pool.get_size()
        return size, size - pool.get_idle_size(), pool.get_max_size()

    async def close(self) -> None:
        """Close the pool. Idempotent. A pool given to ``connect(pool=...)`` stays open:
        only sessionstore's background cleanups on it are stopped.

        If the database is not answering (see :attr:`answering`), every connection is
        dropped at once. Otherwise the pool closes gracefully — waiting for calls still
        running and for the cleanup of connections a timeout interrupted — for at most
        ``command_timeout`` (``connect_timeout`` when that is None), after which the
        remaining connections are dropped.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if pool is self._given:
            await self._releases.stop()  # its owner closes it
            return
        try:
            if not self.answering:
                # A goodbye to a server that does not answer waits for nothing but time.
                logger.info("pool closed without waiting: the database was not answering")
                pool.terminate()
                return
            async with asyncio.timeout(self._releases.timeout):
                await pool.close()
        except TimeoutError:
            logger.warning(
                "pool did not close within %.1fs (calls still running, or the database "
                "stopped answering); its connections were dropped",
                self._releases.timeout,
            )
            pool.terminate()
        except BaseException:
            pool.terminate()  # close() itself cancelled: leave no connection behind
            raise
        finally:
            # Only now, with the pool closed: a connection dropped while it was open would
            # make asyncpg start reconnecting to keep min_size.
            await self._releases.stop()

    async def _checkout(self, pool: asyncpg.Pool) -> PoolConnectionProxy[Any]:
        cfg = self.config
        checkout = _Checkout()
        token = _CHECKOUT.set(checkout)
        try:
            try:
                # asyncio.timeout, not acquire(timeout=): on Python 3.11 asyncpg's
                # wait_for runs every acquire in a task of its own.
                async with asyncio.timeout(cfg.acquire_timeout):
                    conn: PoolConnectionProxy[Any] = await pool.acquire()
            finally:
                _CHECKOUT.reset(token)
        except SessionStoreError:
            raise  # from _open_connection: already says what happened
        except TimeoutError as exc:
            _, in_use, most = self.usage()
            raise acquire_timeout_error(
                where=redact_dsn(cfg.dsn),
                acquire_timeout=cfg.acquire_timeout,
                connect_timeout=cfg.connect_timeout,
                max_size=most,
                opening=checkout.connecting,
                given_pool_opening=pool is self._given and in_use < most,
            ) from exc
        except Exception as exc:
            error = translate(exc)
            if error is None:
                raise
            raise error from exc
        return conn

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A pooled connection, released (or discarded if broken) on exit. Errors raised
        inside the block are translated too.

        After an error or a cancellation inside the block, the connection is cleaned up
        in the background so that the caller gets its error at once; the next caller
        cannot get that connection before the cleanup is done.
        """
        pool = self._pool
        if pool is None:
            raise SessionStoreError("the store is not open (use `async with` or `await connect()`)")
        conn = await self._checkout(pool)
        try:
            with translate_errors():
                if self.keyed is None:  # the pool's first connection: which layout
                    self.keyed = bool(await conn.fetchval(KEYED_LAYOUT))
                yield cast(Connection, ClockedConnection(conn)) if self.keyed else conn
        except BaseException as exc:
            self._releases.later(pool, conn)
            self._observe(exc)
            raise
        if in_transaction(conn):  # the block left a transaction open: not normal
            self._releases.later(pool, conn)
        else:
            # No network I/O: nothing to roll back, no cancel pending, a reset hook that
            # does nothing (_keep_session).
            await release(pool, conn)
        self._observe(None)

    def _observe(self, outcome: BaseException | None) -> None:
        """Track the "calls cannot reach the database" condition from a call's outcome:
        a lost connection or a client-side timeout starts it, a result or an error the
        server sent ends it."""
        if isinstance(outcome, asyncio.CancelledError):
            return  # says nothing about the database
        lost = isinstance(outcome, StoreUnavailableError) or (
            isinstance(outcome, StoreTimeoutError) and outcome.sqlstate is None
        )
        if not lost:  # a result, or an error the server sent: it answers
            if self._unanswered_since is not None:
                logger.info(
                    "calls reach the database again (after %.1fs)",
                    time.monotonic() - self._unanswered_since,
                )
                self._unanswered_since = None
            return
        assert outcome is not None
        if self._unanswered_since is None:
            self._unanswered_since = time.monotonic()
            logger.warning(
                "a call could not reach the database or got no answer in time (%s); calls "
                "fail until one succeeds (logged at DEBUG until then)",
                describe(outcome),
            )
        else:
            logger.debug("a call could not reach the database (%s)", describe(outcome))
