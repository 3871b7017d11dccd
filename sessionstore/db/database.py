"""``Database``: runs work on the pool's connections — as the service or, under
row-level security, as a user — with transactions and the retry of reads.

Each statement takes at most ``command_timeout`` on the client (and
``statement_timeout`` on the server).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from ..errors import (
    InvalidStateError,
    SessionStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    is_transient,
    translate,
)
from ..retry import READS, retrying
from .connection import Connection
from .pool import Pool
from .scope import enter_user_scope

if TYPE_CHECKING:
    from ..keyring import KeyRing
    from ..routes import Routes

__all__ = ["Database"]

T = TypeVar("T")


async def _nothing(conn: Connection) -> None:
    """Work that only needs a connection acquired."""


#: Why ``as_user`` is refused on the distributed layout.
AS_USER_DISTRIBUTED = (
    "as_user is not available on a distributed (Citus) database: the claims it sets do not"
    " reach the workers and its policies read other tables; use the service path and check"
    " the user in the application"
)


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

    def __init__(
        self,
        pool: Pool,
        claims: str | None = None,
        keys: KeyRing | None = None,
        routes: Routes | None = None,
    ) -> None:
        self.pool = pool
        self.config = pool.config
        self._claims = claims
        #: The data keys, when encryption at rest is on (set once by the store).
        self.keys = keys
        #: Where conversations live on the distributed layout (set once by the store).
        self.routes = routes

    @property
    def keyed(self) -> bool:
        """Whether the database has the distributed layout (:mod:`sessionstore.distribution`):
        known once a connection has been acquired (statements are chosen inside the work
        a connection runs)."""
        return bool(self.pool.keyed)

    async def is_keyed(self) -> bool:
        """:attr:`keyed`, a connection acquired first if none has been yet."""
        if self.pool.keyed is None:
            await self.run(_nothing)
        return self.keyed

    @property
    def rls_scoped(self) -> bool:
        """Whether operations run under row-level security, each in its own transaction."""
        return self._claims is not None

    @property
    def service(self) -> Database:
        """The same pool as the connecting role (what no API role may do: the data keys)."""
        return self if self._claims is None else Database(self.pool, None, self.keys, self.routes)

    def as_user(self, claims: str) -> Database:
        """The same pool, with every operation run as the user the JWT ``claims`` name."""
        return Database(self.pool, claims, self.keys, self.routes)

    async def _once(self, work: Callable[[Connection], Awaitable[T]], transaction: bool) -> T:
        async with self.pool.acquire() as conn:
            if self._claims is not None and self.pool.keyed:
                raise InvalidStateError(AS_USER_DISTRIBUTED)
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
                await enter_user_scope(conn, claims)
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

    async def execute(self, query: str, *args: Any) -> str:
        """Run ``query`` for its effect; its status (``"DELETE 3"``)."""
        return await self.run(lambda conn: conn.execute(query, *args))
