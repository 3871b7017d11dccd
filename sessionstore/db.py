"""The connection pool, per-connection setup, pooler rules and error translation.

This is the only module that catches asyncpg exceptions: :func:`translate_errors` turns
them into the tree in :mod:`sessionstore.errors`, keeping the SQLSTATE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .config import StoreConfig, redact_dsn
from .errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    SessionStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)

__all__ = [
    "ConfigureCallback",
    "Connection",
    "Database",
    "Row",
    "UserScopedDatabase",
    "translate_errors",
]

logger = logging.getLogger("sessionstore")

Connection = asyncpg.Connection | PoolConnectionProxy
#: A result row: an asyncpg ``Record`` or any sequence of values in column order.
Row = asyncpg.Record | Sequence[Any]
#: Called with each new connection after sessionstore's own setup (e.g. to register codecs).
ConfigureCallback = Callable[[asyncpg.Connection], Awaitable[None]]
T = TypeVar("T")

#: SQLSTATEs after which the same statement may succeed if sent again.
_UNAVAILABLE = frozenset({"53300", "57P01", "57P02", "57P03"})
_RETRY_ATTEMPTS = 3
_RETRY_BASE_DELAY = 0.05


def _error_from_postgres(exc: asyncpg.PostgresError) -> SessionStoreError:
    state: str = exc.sqlstate or ""
    message = exc.args[0] if exc.args else str(exc)
    if state.startswith("08") or state in _UNAVAILABLE:
        return StoreUnavailableError(f"database unavailable: {message}", sqlstate=state)
    if state == "57014":
        return StoreTimeoutError(f"statement cancelled: {message}", sqlstate=state)
    if state == "23503":
        return NotFoundError(
            f"referenced row does not exist: {exc.detail or message}", sqlstate=state
        )
    if state in ("23505", "40001", "40P01"):
        return ConflictError(f"concurrent write conflict: {exc.detail or message}", sqlstate=state)
    if state == "42501":
        return PermissionDeniedError(f"permission denied: {message}", sqlstate=state)
    if state.startswith("22") or state in ("23502", "23514"):
        field = (
            getattr(exc, "column_name", None) or getattr(exc, "constraint_name", None) or "value"
        )
        error = InvalidInputError(field, f"rejected by the database: {message}")
        error.sqlstate = state
        return error
    return SessionStoreError(f"database error {state}: {message}", sqlstate=state or None)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise driver and socket errors as :class:`SessionStoreError` subclasses.

    ``CancelledError`` passes through untouched, as do sessionstore's own errors.
    """
    try:
        yield
    except SessionStoreError:
        raise
    except asyncpg.PostgresError as exc:
        raise _error_from_postgres(exc) from exc
    except TimeoutError as exc:  # before OSError, of which it is a subclass
        raise StoreTimeoutError(
            "operation timed out on the client; it was cancelled and its outcome is unknown"
        ) from exc
    except OSError as exc:  # ConnectionError included
        raise StoreUnavailableError(f"connection to the database lost: {exc}") from exc
    except asyncpg.exceptions.InternalClientError as exc:
        # Seen when the server ends a connection mid-operation (pg_terminate_backend):
        # the protocol is left in a state no further operation can use.
        raise StoreUnavailableError(f"connection to the database broken: {exc}") from exc
    except asyncpg.InterfaceError as exc:
        raise SessionStoreError(f"driver error: {exc}") from exc


def is_transient(error: SessionStoreError) -> bool:
    """Whether sending the same work again may succeed."""
    return isinstance(error, StoreUnavailableError) or error.sqlstate in ("40001", "40P01")


def _encode_json(value: Any) -> str:
    # Repositories pass metadata already serialised (validation needs the text anyway).
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _decode_json(text: str) -> Any:
    # Most metadata is the column default; skip the parser for it (one per message row).
    return {} if text == "{}" else json.loads(text)


async def _register_json(conn: asyncpg.Connection) -> None:
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=_encode_json, decoder=_decode_json, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: deliberately nothing.

    asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, advisory unlock) costs a round
    trip on every release. sessionstore leaves no session state on pooled connections,
    asyncpg still rolls back any open transaction before this hook, a ``configure``
    callback's settings must survive, and behind a transaction pooler ``RESET ALL``
    would land on a server session some other client is using.
    """


class Database:
    """One asyncpg pool configured from a :class:`StoreConfig`.

    Operations acquire a connection for one statement or one transaction. Acquiring waits
    at most ``acquire_timeout``; connecting at most ``connect_timeout``; each statement at
    most ``command_timeout`` on the client and ``statement_timeout`` on the server.
    """

    #: Whether operations run under row-level security in a per-operation transaction.
    rls_scoped = False

    def __init__(self, config: StoreConfig, *, configure: ConfigureCallback | None = None) -> None:
        if not config.dsn:
            raise InvalidInputError(
                "dsn", "no database URL: pass one or set SESSIONSTORE_DATABASE_URL"
            )
        self.config = config
        self.pooler = config.effective_pooler
        self._configure = configure
        self._pool: asyncpg.Pool | None = None

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        await _register_json(conn)
        if self._configure is not None:
            await self._configure(conn)

    @property
    def pool(self) -> asyncpg.Pool:
        """The open pool. :class:`SessionStoreError` before ``open()`` or after ``close()``."""
        if self._pool is None:
            raise SessionStoreError("the store is not open (use `async with` or `await connect()`)")
        return self._pool

    def connect_kwargs(self) -> dict[str, Any]:
        """Arguments for ``asyncpg.connect``/``create_pool`` that follow the pooler rules."""
        cfg = self.config
        settings = {"application_name": cfg.application_name}
        kwargs: dict[str, Any] = {
            "timeout": cfg.connect_timeout,
            "command_timeout": cfg.command_timeout,
        }
        if self.pooler == "transaction":
            # Server-side prepared statements and startup GUCs do not survive a transaction pooler.
            kwargs["statement_cache_size"] = 0
        elif cfg.statement_timeout is not None:
            settings["statement_timeout"] = str(int(cfg.statement_timeout * 1000))
        try:
            ssl_arg = cfg.ssl_argument()
        except ValueError as exc:
            raise InvalidInputError("ssl", str(exc)) from None
        if ssl_arg is not None:
            kwargs["ssl"] = ssl_arg
        kwargs["server_settings"] = settings
        return kwargs

    async def open(self) -> None:
        """Create the pool (opening ``min_size`` connections)."""
        if self._pool is not None:
            return
        cfg = self.config
        with translate_errors():
            try:
                self._pool = await asyncio.wait_for(
                    asyncpg.create_pool(
                        cfg.dsn,
                        min_size=cfg.min_size,
                        max_size=cfg.max_size,
                        max_inactive_connection_lifetime=cfg.max_inactive_connection_lifetime,
                        init=self._init_connection,
                        reset=_keep_session,
                        **self.connect_kwargs(),
                    ),
                    timeout=cfg.connect_timeout * max(cfg.min_size, 1) + cfg.connect_timeout,
                )
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                raise StoreUnavailableError(
                    f"could not connect to {redact_dsn(cfg.dsn)} "
                    f"within connect_timeout={cfg.connect_timeout}s: {exc}",
                    sqlstate=getattr(exc, "sqlstate", None),
                ) from exc
        logger.info(
            "pool open: %s (pooler=%s, size %d..%d)",
            redact_dsn(cfg.dsn),
            self.pooler,
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
            await asyncio.wait_for(pool.close(), timeout=self.config.connect_timeout)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            logger.warning("pool did not close cleanly (%r); terminating its connections", exc)
            pool.terminate()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A pooled connection, released (or discarded if broken) on exit."""
        pool = self.pool
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
                await self._release(pool, conn)

    @staticmethod
    async def _release(pool: asyncpg.Pool, conn: PoolConnectionProxy[Any]) -> None:
        try:
            await pool.release(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # asyncpg has terminated the broken connection and the pool will open a new
            # one; the caller's own outcome (result or error) is what matters.
            logger.debug("discarded a connection that failed to reset: %r", exc)

    async def run(self, work: Callable[[Connection], Awaitable[T]], *, retry: bool = False) -> T:
        """Run ``work`` on a pooled connection, translating errors.

        With ``retry=True`` (reads and idempotent writes only) transient failures are
        retried up to 3 times with jittered exponential backoff.
        """
        attempt = 0
        while True:
            try:
                # acquire() translates errors raised inside its block too
                async with self.acquire() as conn:
                    return await work(conn)
            except SessionStoreError as error:
                attempt += 1
                if not (retry and is_transient(error)) or attempt >= _RETRY_ATTEMPTS:
                    raise
                delay = _RETRY_BASE_DELAY * 2**attempt * (0.5 + random.random())
                logger.warning(
                    "transient database error, retry %d in %.2fs: %s", attempt, delay, error
                )
                await asyncio.sleep(delay)

    async def fetchrow(self, query: str, *args: Any, retry: bool = False) -> asyncpg.Record | None:
        """One row of ``query`` (or ``None``)."""
        return await self.run(lambda conn: conn.fetchrow(query, *args), retry=retry)

    async def fetch(self, query: str, *args: Any, retry: bool = False) -> list[asyncpg.Record]:
        """All rows of ``query``."""
        return await self.run(lambda conn: conn.fetch(query, *args), retry=retry)

    async def fetchval(self, query: str, *args: Any, retry: bool = False) -> Any:
        """The first column of the first row of ``query``."""
        return await self.run(lambda conn: conn.fetchval(query, *args), retry=retry)


# Transaction-local (is_local = true): the settings end with the transaction, so nothing
# reaches the next user of the connection, even behind a transaction pooler.
SET_USER_SCOPE = """
SELECT set_config('request.jwt.claims', $1, true), set_config('role', 'authenticated', true)
"""


class UserScopedDatabase(Database):
    """The pool of ``parent``, with every operation run as a Supabase ``authenticated`` user.

    Each acquisition opens a transaction and sets ``request.jwt.claims`` and the role
    locally before the work runs; commit or rollback ends both.
    """

    rls_scoped = True

    def __init__(self, parent: Database, claims_json: str) -> None:
        # Deliberately not Database.__init__: this shares the parent's pool.
        self.config = parent.config
        self.pooler = parent.pooler
        self._parent = parent
        self._claims = claims_json

    @property
    def pool(self) -> asyncpg.Pool:
        """The parent's pool."""
        return self._parent.pool

    async def open(self) -> None:
        """Open the parent's pool."""
        await self._parent.open()

    async def close(self) -> None:
        """Nothing: the parent owns the pool."""

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A pooled connection inside a transaction scoped to the user."""
        async with self._parent.acquire() as conn:
            with translate_errors():
                async with conn.transaction():
                    try:
                        await conn.execute(SET_USER_SCOPE, self._claims)
                    except (
                        asyncpg.InvalidParameterValueError,  # no such role
                        asyncpg.InsufficientPrivilegeError,  # not granted to this login
                    ) as exc:
                        raise PermissionDeniedError(
                            "as_user needs the role 'authenticated' granted to the connecting "
                            f"role (Supabase sets this up; see docs/supabase.md): {exc}",
                            sqlstate=exc.sqlstate,
                        ) from exc
                    yield conn
