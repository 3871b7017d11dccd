"""Connections: the arguments every connection is opened with, the pool, and the
``Database`` that runs work on it — as the service or, under row-level security, as a user.

:func:`connect_arguments` is the one place connection settings are built: the pool, the
cache's listener, ``sessionstore status`` and Alembic all use it. Errors are translated
by :func:`sessionstore.errors.translate_errors`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

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
    translate_errors,
)
from .retry import READS, retrying

__all__ = [
    "ConfigureCallback",
    "Connection",
    "Database",
    "Pool",
    "connect_arguments",
    "connect_direct",
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
    with translate_errors():
        return await asyncpg.connect(**arguments)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: deliberately nothing.

    asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, advisory unlock) costs a round
    trip on every release. sessionstore leaves no session state on pooled connections,
    asyncpg still rolls back any open transaction before this hook, a ``configure``
    callback's settings must survive, and behind a transaction pooler ``RESET ALL``
    would land on a server session some other client is using.
    """


class Pool:
    """One asyncpg pool configured from a :class:`StoreConfig`: its lifecycle and its
    connections. Acquiring waits at most ``acquire_timeout``, connecting at most
    ``connect_timeout``."""

    def __init__(self, config: StoreConfig, *, configure: ConfigureCallback | None = None) -> None:
        self.config = config
        self._arguments = connect_arguments(config)  # checks the DSN and SSL settings now
        self._configure = configure
        self._pool: asyncpg.Pool | None = None

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        for type_name in ("jsonb", "json"):
            await conn.set_type_codec(
                type_name, encoder=jsonb.encode, decoder=jsonb.decode, schema="pg_catalog"
            )
        if self._configure is not None:
            await self._configure(conn)

    async def open(self) -> None:
        """Create the pool (opening ``min_size`` connections). Idempotent."""
        if self._pool is not None:
            return
        cfg = self.config
        try:
            with translate_errors():
                self._pool = await asyncio.wait_for(
                    asyncpg.create_pool(
                        min_size=cfg.min_size,
                        max_size=cfg.max_size,
                        max_inactive_connection_lifetime=cfg.max_inactive_connection_lifetime,
                        init=self._init_connection,
                        reset=_keep_session,
                        **self._arguments,
                    ),
                    timeout=cfg.connect_timeout * max(cfg.min_size, 1) + cfg.connect_timeout,
                )
        except (StoreUnavailableError, StoreTimeoutError) as exc:
            raise StoreUnavailableError(
                f"could not connect to {redact_dsn(cfg.dsn)} "
                f"within connect_timeout={cfg.connect_timeout}s: {exc}",
                sqlstate=exc.sqlstate,
            ) from exc
        logger.info(
            "pool open: %s (pooler=%s, size %d..%d)",
            redact_dsn(cfg.dsn),
            cfg.effective_pooler,
            cfg.min_size,
            cfg.max_size,
        )

    async def close(self) -> None:
        """Close the pool, waiting for connections in use to be released.

        If a graceful close fails (the server is gone), the connections are terminated.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            with translate_errors():
                await asyncio.wait_for(pool.close(), timeout=self.config.connect_timeout)
        except SessionStoreError as exc:
            logger.warning("pool did not close cleanly (%s); terminating its connections", exc)
            pool.terminate()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A pooled connection, released (or discarded if broken) on exit. Errors raised
        inside the block are translated too."""
        pool = self._pool
        if pool is None:
            raise SessionStoreError("the store is not open (use `async with` or `await connect()`)")
        with translate_errors():
            try:
                conn = await pool.acquire(timeout=self.config.acquire_timeout)
            except TimeoutError:
                raise StoreTimeoutError(
                    f"no connection free within acquire_timeout={self.config.acquire_timeout}s "
                    f"(max_size={self.config.max_size})"
                ) from None
            try:
                yield conn
            finally:
                await _release(pool, conn)


async def _release(pool: asyncpg.Pool, conn: PoolConnectionProxy[Any]) -> None:
    try:
        with translate_errors():
            await pool.release(conn)
    except SessionStoreError as exc:
        # asyncpg has terminated the broken connection and the pool will open a new
        # one; the caller's own outcome (result or error) is what matters.
        logger.debug("discarded a connection that failed to reset: %s", exc)


# Transaction-local (is_local = true): the settings end with the transaction, so nothing
# reaches the next user of the connection, even behind a transaction pooler.
SET_USER_SCOPE = """
SELECT set_config('request.jwt.claims', $1, true), set_config('role', 'authenticated', true)
"""
# No such role (22023), or the role is not granted to the connecting login (42501).
_SCOPE_REFUSED = ("22023", "42501")


def _retry_read(error: BaseException) -> bool:
    # A client-side timeout has used up the caller's time budget: it is not re-sent.
    return is_transient(error) and not isinstance(error, StoreTimeoutError)


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

    async def _once(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        async with self.pool.acquire() as conn:
            if self._claims is None:
                return await work(conn)
            async with conn.transaction():
                await self._enter_user_scope(conn, self._claims)
                return await work(conn)

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

    async def run(self, work: Callable[[Connection], Awaitable[T]], *, retry: bool = False) -> T:
        """Run ``work`` on a connection, translating errors.

        With ``retry=True`` (reads and idempotent writes only) a lost connection, a
        restarting server or a serialisation failure is retried twice more with the
        :data:`sessionstore.retry.READS` backoff.
        """
        try:
            return await self._once(work)
        except SessionStoreError as error:
            if not (retry and _retry_read(error)):
                raise
            first = error
        # The first attempt above skipped tenacity's per-call cost; it counts as attempt 1.
        async for attempt in retrying(READS, retry_on=_retry_read, what="read"):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first
                return await self._once(work)
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
