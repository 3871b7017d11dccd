"""Connections: the arguments every connection is opened with, the pool, and the
``Database`` that runs work on it — as the service or, under row-level security, as a user.

:func:`connect_arguments` is the one place connection settings are built: the pool, the
cache's listener, ``sessionstore status`` and Alembic all use it. Errors are translated
by :func:`sessionstore.errors.translate_errors`.

Time bounds (docs/scaling.md states them for users):

- opening a connection — TCP, TLS, login and the per-connection setup together — takes
  at most ``connect_timeout``; one that hangs fails naming ``connect_timeout``;
- waiting for a free pooled connection takes at most ``acquire_timeout`` (the error names
  it and ``max_size``; if the wait was for a new connection that hung, it says that);
- each statement takes at most ``command_timeout`` on the client;
- a connection left broken by a timeout or a cancellation is cleaned up in the
  background, never while the caller waits: asyncpg's release first waits for its cancel
  request (within the release's budget, the acquire's timeout), which on a server that
  stopped answering would at least double the caller's wait. :meth:`Pool.close` stops waiting
  for those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from . import jsonb
from .config import StoreConfig, redact_dsn
from .errors import (
    InvalidInputError,
    PermissionDeniedError,
    SessionStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    is_transient,
    translate,
    translate_errors,
)
from .retry import READS, describe, retrying

__all__ = [
    "ConfigureCallback",
    "Connection",
    "Database",
    "Pool",
    "connect_arguments",
    "connect_direct",
    "init_connection",
]

logger = logging.getLogger("sessionstore")

Connection = asyncpg.Connection | PoolConnectionProxy
#: Called with each new connection after sessionstore's own setup (e.g. to register codecs).
ConfigureCallback = Callable[[asyncpg.Connection], Awaitable[None]]
T = TypeVar("T")


def connect_arguments(
    config: StoreConfig,
    *,
    application_name: str | None = None,
    statement_cache: bool = True,
    migrations: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``asyncpg.connect``/``create_pool`` (the DSN included).

    Behind a transaction pooler there is no server-side statement cache and no startup
    setting (neither survives the pooler); ``statement_cache=False`` turns the cache off
    anyway (one-off connections gain nothing from it). ``migrations=True`` drops
    ``command_timeout`` and ``statement_timeout``: a migration waits for the migration
    lock and for locks held by live traffic, and backfills large tables, for as long as
    that takes (connecting is still bounded by ``connect_timeout``).
    """
    if not config.dsn:
        raise InvalidInputError("dsn", "no database URL: pass one or set SESSIONSTORE_DATABASE_URL")
    settings = {"application_name": application_name or config.application_name}
    kwargs: dict[str, Any] = {
        "dsn": config.dsn,
        "timeout": config.connect_timeout,
        "command_timeout": None if migrations else config.command_timeout,
    }
    if config.effective_pooler == "transaction":
        kwargs["statement_cache_size"] = 0
    else:
        if config.statement_timeout is not None and not migrations:
            settings["statement_timeout"] = str(int(config.statement_timeout * 1000))
        if not statement_cache:
            kwargs["statement_cache_size"] = 0
    try:
        ssl_arg = config.ssl_argument()
    except ValueError as exc:
        raise InvalidInputError("ssl", str(exc)) from None
    if ssl_arg is not None:
        kwargs["ssl"] = ssl_arg
    kwargs["server_settings"] = settings
    return kwargs


async def connect_direct(
    config: StoreConfig, *, application_name: str | None = None, migrations: bool = False
) -> asyncpg.Connection:
    """One connection outside the pool (the listener, ``status``, migrations: see
    :func:`connect_arguments`)."""
    arguments = connect_arguments(
        config, application_name=application_name, statement_cache=False, migrations=migrations
    )
    try:
        return await _connect(**arguments)
    except Exception as exc:
        raise _connect_error(config, exc) from exc


async def _connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """``asyncpg.connect``, never cancelled half-way: a caller that stops waiting (a
    timeout, ``Pool.close`` stopping asyncpg's floor restore) leaves the attempt to finish
    on its own — it is bounded by its ``timeout`` argument, ``connect_timeout`` — and the
    connection is then dropped.

    Why: cancelling asyncpg while the TCP connection is being set up for the TLS request
    leaves a future failed and never retrieved, which asyncio reports at ERROR ("Future
    exception was never retrieved") — noise in the application's logs.
    """
    attempt = asyncio.ensure_future(asyncpg.connect(*args, **kwargs))
    try:
        return await asyncio.shield(attempt)
    except asyncio.CancelledError:
        attempt.add_done_callback(_drop_unwanted)
        raise


def _drop_unwanted(attempt: asyncio.Future[asyncpg.Connection]) -> None:
    if attempt.cancelled():
        return
    if attempt.exception() is None:  # retrieving it keeps asyncio from reporting it
        attempt.result().terminate()


def _connect_error(config: StoreConfig, exc: Exception) -> SessionStoreError:
    """What a failed connection attempt raises: a hang names ``connect_timeout`` (it is not
    a statement whose outcome is unknown), a socket error says the server was not reached,
    and a refusal by the server keeps its own class (e.g. ``AuthenticationError``)."""
    where = redact_dsn(config.dsn)
    if isinstance(exc, TimeoutError):
        return StoreUnavailableError(
            f"could not connect to {where}: no answer within "
            f"connect_timeout={config.connect_timeout}s (the connection attempt hung)"
        )
    if isinstance(exc, OSError):
        return StoreUnavailableError(f"could not connect to {where}: {describe(exc)}")
    if isinstance(exc, asyncpg.UndefinedObjectError) and _url_parameter(exc, config.dsn):
        # asyncpg sends a URL query parameter it does not know as a server setting; the
        # server refuses the name with the SQLSTATE of a missing type (42704).
        return InvalidInputError(
            "dsn", f"{exc}: remove it from the URL's query string", sqlstate=exc.sqlstate
        )
    error = translate(exc)
    if error is None:
        raise exc  # not a database or network failure: e.g. a bug in a configure callback
    return error


async def init_connection(conn: asyncpg.Connection) -> None:
    """Set ``conn`` up as sessionstore needs: its json/jsonb codec (:mod:`sessionstore.jsonb`).

    sessionstore's own pool runs this on every new connection. A pool handed to
    ``connect(pool=...)`` must do the same: create it with
    ``asyncpg.create_pool(..., init=sessionstore.init_connection)``, or await this from
    your own ``init``. The codec applies to the connection's every jsonb and json value,
    also in your own queries: writes take JSON text or any value ``json.dumps`` takes,
    reads give Python values.
    """
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=jsonb.encode, decoder=jsonb.decode, schema="pg_catalog"
        )


# What a given pool's connections must answer (see Pool._adopt): JSON text sent as jsonb
# arrives as an object (not a JSON string), and jsonb comes back as a Python value.
_CODEC_CHECK = """SELECT jsonb_typeof($1::jsonb), '{"k": 1}'::jsonb"""


def _url_parameter(exc: asyncpg.UndefinedObjectError, dsn: str | None) -> bool:
    """Whether ``exc`` refuses a setting that ``dsn``'s query string names."""
    named = re.match(r'unrecognized configuration parameter "([^"]+)"', str(exc))
    return bool(named and dsn and named.group(1) in parse_qs(urlsplit(dsn).query))


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
        # Background releases of connections a timeout or a cancellation left broken.
        self._releasing: set[asyncio.Task[None]] = set()
        # The two outage conditions: monotonic time they started, None while all is well.
        self._unanswered_since: float | None = None
        self._connect_failing_since: float | None = None
        # Cleaning up a broken connection: asyncpg's cancel request gives up (and drops
        # the connection) after command_timeout; this bounds it when that is None.
        self._cleanup_timeout = config.command_timeout or config.connect_timeout

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        if self._configure is not None:
            await self._configure(conn)

    async def _open_connection(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        """asyncpg's ``connect`` for this pool: connect and set the connection up
        (:meth:`_init_connection`), all within ``connect_timeout``.

        Failures are :class:`SessionStoreError` s (see :func:`_connect_error`) and are
        logged as one condition. Called by asyncpg for callers' acquisitions and for its
        background floor restore alike.
        """
        checkout = _CHECKOUT.get()
        if checkout is not None:
            checkout.connecting = True
        deadline = asyncio.get_running_loop().time() + self.config.connect_timeout
        try:
            conn = await _connect(*args, **kwargs)  # bounded by connect_timeout itself
            try:
                async with asyncio.timeout_at(deadline):
                    await self._init_connection(conn)
            except BaseException:
                conn.terminate()  # half set up: never handed out
                raise
        except Exception as exc:
            error = _connect_error(self.config, exc)
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
            raise StoreUnavailableError(
                f"could not open the pool on {redact_dsn(cfg.dsn)} "
                f"within 2 × connect_timeout={cfg.connect_timeout}s"
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
                    row = await conn.fetchrow(_CODEC_CHECK, '{"k": 1}')
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
            await self._stop_releases()  # its owner closes it
            return
        try:
            if not self.answering:
                # A goodbye to a server that does not answer waits for nothing but time.
                logger.info("pool closed without waiting: the database was not answering")
                pool.terminate()
                return
            async with asyncio.timeout(self._cleanup_timeout):
                await pool.close()
        except TimeoutError:
            logger.warning(
                "pool did not close within %.1fs (calls still running, or the database "
                "stopped answering); its connections were dropped",
                self._cleanup_timeout,
            )
            pool.terminate()
        except BaseException:
            pool.terminate()  # close() itself cancelled: leave no connection behind
            raise
        finally:
            # Only now, with the pool closed: a connection dropped while it was open would
            # make asyncpg start reconnecting to keep min_size.
            await self._stop_releases()

    async def _stop_releases(self) -> None:
        releasing = list(self._releasing)
        for task in releasing:
            task.cancel()  # each drops its connection, if the pool has not already
        if releasing:
            await asyncio.wait(releasing)

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
            if pool is self._given and in_use < most:
                # Not every connection was in use: the wait was for one the application's
                # pool was opening (its own connect function, which sessionstore does not
                # see, hung or hit the pool's own timeout).
                raise StoreUnavailableError(
                    "could not connect to the database: a new connection of the application's "
                    f"pool did not open (within acquire_timeout={cfg.acquire_timeout}s, or "
                    "the pool's own connect timeout)"
                ) from exc
            if checkout.connecting:
                raise StoreUnavailableError(
                    f"could not connect to {redact_dsn(cfg.dsn)} within "
                    f"acquire_timeout={cfg.acquire_timeout}s: opening a new connection "
                    f"did not finish (connect_timeout={cfg.connect_timeout}s)"
                ) from exc
            raise StoreTimeoutError(
                f"no connection free within acquire_timeout={cfg.acquire_timeout}s: all "
                f"max_size={pool.get_max_size()} connections were in use (raise max_size or "
                "acquire_timeout, or look for calls that hold connections for long)"
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
                yield conn
        except BaseException as exc:
            self._release_later(pool, conn)
            self._observe(exc)
            raise
        if _in_transaction(conn):  # the block left a transaction open: not normal
            self._release_later(pool, conn)
        else:
            # No network I/O: nothing to roll back, no cancel pending, a reset hook that
            # does nothing (_keep_session).
            await _release(pool, conn)
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

    def _release_later(self, pool: asyncpg.Pool, conn: PoolConnectionProxy[Any]) -> None:
        """Clean ``conn`` up without making the caller wait for the server."""
        if _in_transaction(conn):
            # Dropping the connection is the rollback (COMMIT was never answered, so the
            # server commits nothing), and it waits for nothing; a ROLLBACK would wait
            # for the server — first for the cancel of the statement before it.
            conn.terminate()  # asyncpg hands the pool slot back at once
            return
        task = asyncio.create_task(self._release_bounded(pool, conn), name="sessionstore-release")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_bounded(self, pool: asyncpg.Pool, conn: PoolConnectionProxy[Any]) -> None:
        # asyncpg's release waits for the cancel request of an interrupted statement (which
        # still commits if it finishes first: its outcome is unknown) and drops the
        # connection if the server does not confirm within command_timeout; the timeout
        # here only covers command_timeout=None. Cancelled by Pool.close: drop it now.
        try:
            async with asyncio.timeout(self._cleanup_timeout):
                await _release(pool, conn)
        except TimeoutError:
            logger.debug("dropped a connection whose cleanup did not finish in time")
            _terminate(conn)
        except asyncio.CancelledError:
            _terminate(conn)
            raise


def _in_transaction(conn: PoolConnectionProxy[Any]) -> bool:
    try:
        return conn.is_in_transaction()
    except asyncpg.InterfaceError:
        return False  # already handed back: asyncpg dropped the connection when it broke


def _terminate(conn: PoolConnectionProxy[Any]) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # already released: nothing to drop
        conn.terminate()


async def _release(pool: asyncpg.Pool, conn: PoolConnectionProxy[Any]) -> None:
    try:
        with translate_errors():
            await pool.release(conn)
    except SessionStoreError as exc:
        # asyncpg has terminated the broken connection and the pool will open a new
        # one; the caller's own outcome (result or error) is what matters.
        logger.debug("discarded a connection that failed to reset: %s", describe(exc))


#: The margin stated on every time bound (docs/scaling.md): scheduling, one local round
#: trip, and the event loop's timer granularity.
_MARGIN = 0.5


# Transaction-local (is_local = true): the settings end with the transaction, so nothing
# reaches the next user of the connection, even behind a transaction pooler.
SET_USER_SCOPE = """
SELECT set_config('request.jwt.claims', $1, true), set_config('role', 'authenticated', true)
"""
# No such role (22023), or the role is not granted to the connecting login (42501).
_SCOPE_REFUSED = ("22023", "42501")


def _retry_read(error: BaseException) -> bool:
    # A client-side timeout, or a connection attempt that hung until connect_timeout,
    # has used up the caller's time budget: it is not tried again. What is retried fails
    # fast: a pooled connection the server dropped, a server restarting, a conflict.
    return (
        is_transient(error)
        and not isinstance(error, StoreTimeoutError)
        and not isinstance(error.__cause__, TimeoutError)
    )


def _server_answered(exc: BaseException) -> bool:
    """Whether the connection is known to be in step with the server after ``exc``: a
    result or an error the server sent, or an error raised by our own code in between —
    not a timeout, a cancellation or a lost connection."""
    if not isinstance(exc, Exception):
        return False
    error = translate(exc) or exc
    return not isinstance(error, StoreUnavailableError | StoreTimeoutError)


class Database:
    """Runs work on the pool's connections, as the connecting role or — when ``claims``
    (a JSON object) is given — as a Supabase ``authenticated`` user under row-level
    security: each acquisition then opens a transaction that sets the claims and the
    role locally, and commit or rollback ends both.

    Each statement is bounded by ``command_timeout`` on the client and
    ``statement_timeout`` on the server.
    """

    def __init__(self, pool: Pool, claims: str | None = None) -> None:
        self.pool = pool
        self.config = pool.config
        self._claims = claims

    @property
    def rls_scoped(self) -> bool:
        """Whether operations run under row-level security, each in its own transaction."""
        return self._claims is not None

    def as_user(self, claims: str) -> Database:
        """The same pool, with every operation run as the user the JWT ``claims`` name."""
        return Database(self.pool, claims)

    async def _once(self, work: Callable[[Connection], Awaitable[T]], transaction: bool) -> T:
        async with self.pool.acquire() as conn:
            if self._claims is None and not transaction:
                return await work(conn)
            return await self._transaction(conn, self._claims, work)

    async def _transaction(
        self, conn: Connection, claims: str | None, work: Callable[[Connection], Awaitable[T]]
    ) -> T:
        # Not `async with conn.transaction()`: its exit sends ROLLBACK even after a
        # statement that got no answer, and that ROLLBACK waits for the server again (first
        # for the cancel of the statement): two command_timeouts on a hung server. Here
        # such a connection is dropped instead, which is the rollback: the server commits
        # nothing it has not been asked to (an unanswered COMMIT leaves the outcome
        # unknown, as StoreTimeoutError says).
        tx = conn.transaction()
        try:
            await tx.start()
            if claims is not None:
                await self._enter_user_scope(conn, claims)
            result = await work(conn)
        except BaseException as exc:
            if not _server_answered(exc):
                conn.terminate()
            elif conn.is_in_transaction():  # BEGIN itself may have been refused
                await tx.rollback()
            raise
        try:
            await tx.commit()
        except BaseException as exc:
            if not _server_answered(exc):
                conn.terminate()
            raise
        return result

    @staticmethod
    async def _enter_user_scope(conn: Connection, claims: str) -> None:
        try:
            with translate_errors():
                await conn.execute(SET_USER_SCOPE, claims)
        except SessionStoreError as exc:
            if exc.sqlstate not in _SCOPE_REFUSED:
                raise
            raise PermissionDeniedError(
                "as_user needs the role 'authenticated' granted to the connecting "
                f"role (Supabase sets this up; see docs/supabase.md): {exc}",
                sqlstate=exc.sqlstate,
            ) from exc

    async def run(
        self,
        work: Callable[[Connection], Awaitable[T]],
        *,
        retry: bool = False,
        transaction: bool = False,
    ) -> T:
        """Run ``work`` on a connection, translating errors; with ``transaction=True`` in
        one transaction (work under ``as_user`` always runs in one).

        With ``retry=True`` (reads and idempotent writes only) a lost connection, a
        restarting server or a serialisation failure is retried twice more with the
        :data:`sessionstore.retry.READS` backoff. A timeout is not retried (the caller's
        time is used up; see ``_retry_read``).
        """
        try:
            return await self._once(work, transaction)
        except SessionStoreError as error:
            if not (retry and _retry_read(error)):
                raise
            first = error
        # The first attempt above skipped tenacity's per-call cost; it counts as attempt 1.
        async for attempt in retrying(READS, retry_on=_retry_read, what="read"):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first
                return await self._once(work, transaction)
        raise AssertionError("unreachable: the retry loop returns or raises")

    async def fetchrow(self, query: str, *args: Any, retry: bool = False) -> asyncpg.Record | None:
        """One row of ``query`` (or ``None``)."""
        return await self.run(lambda conn: conn.fetchrow(query, *args), retry=retry)

    async def fetch(self, query: str, *args: Any, retry: bool = False) -> list[asyncpg.Record]:
        """All rows of ``query``."""
        return await self.run(lambda conn: conn.fetch(query, *args), retry=retry)

    async def fetchval(self, query: str, *args: Any, retry: bool = False) -> Any:
        """The first column of the first row of ``query``."""
        return await self.run(lambda conn: conn.fetchval(query, *args), retry=retry)
