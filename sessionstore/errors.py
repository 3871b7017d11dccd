"""The exception tree, and the one place where driver errors become sessionstore errors.

Every error sessionstore raises is a :class:`SessionStoreError`. Errors that come from
the server carry its SQLSTATE in ``sqlstate`` (``None`` when the error was detected on
the client). Driver and socket exceptions never reach callers: :func:`translate_errors`
(and :func:`translate`, which it uses) is the only code in the package that looks at
asyncpg's exception classes, and :func:`is_transient` the only rule for "may succeed if
sent again".
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import asyncpg

from .retry import describe

if TYPE_CHECKING:
    from .models import PendingWrite

__all__ = [
    "AdoptionError",
    "AuthenticationError",
    "ConflictError",
    "EncryptionError",
    "InvalidInputError",
    "InvalidStateError",
    "NotFoundError",
    "PermissionDeniedError",
    "QueueFullError",
    "SessionExpiredError",
    "SessionStoreError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "WriteBehindError",
    "acquire_timeout_error",
    "connect_error",
    "is_transient",
    "pool_open_timeout_error",
    "translate",
    "translate_errors",
    "translate_wrapped",
]


class SessionStoreError(Exception):
    """Root of every sessionstore error."""

    sqlstate: str | None

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class NotFoundError(SessionStoreError):
    """The session, conversation or message referred to does not exist."""


class SessionExpiredError(SessionStoreError):
    """A write was attempted on a session whose ``expires_at`` has passed."""


class InvalidStateError(SessionStoreError):
    """The session's status does not allow the operation (e.g. resuming a completed one)."""


class ConflictError(SessionStoreError):
    """Another writer got there first: a stale ``expected_version`` or a unique clash."""


class InvalidInputError(SessionStoreError, ValueError):
    """An argument broke a rule. ``field`` names the argument; nothing was written."""

    field: str

    def __init__(self, field: str, rule: str, *, sqlstate: str | None = None) -> None:
        super().__init__(f"{field}: {rule}", sqlstate=sqlstate)
        self.field = field


class PermissionDeniedError(SessionStoreError):
    """Row-level security or a missing grant refused the operation (SQLSTATE 42501)."""


class AuthenticationError(PermissionDeniedError):
    """The server refused the login: wrong user name or password (SQLSTATE 28P01, 28000)."""


class StoreUnavailableError(SessionStoreError):
    """The database could not be reached, or dropped the connection, within the time allowed."""


class StoreTimeoutError(SessionStoreError, TimeoutError):
    """An operation did not finish within its timeout. Its outcome is unknown: the server
    may have committed it before the cancellation arrived. Reads can simply be retried;
    ``add_turn`` can be resent safely with the same ``message_id``."""


class QueueFullError(SessionStoreError):
    """``enqueue_nowait`` found ``max_pending`` messages already waiting."""


class WriteBehindError(SessionStoreError):
    """Accepted messages could not be made durable within ``write_deadline``.

    ``unwritten`` holds exactly those messages; ``spill_path`` names the file they were
    written to (``None`` if no ``spill_path`` was configured).
    """

    def __init__(
        self, message: str, unwritten: list[PendingWrite], spill_path: Path | None
    ) -> None:
        super().__init__(message)
        self.unwritten = unwritten
        self.spill_path = spill_path


class EncryptionError(SessionStoreError):
    """Encrypted data could not be read or written: its data key is gone (the user was
    purged, so rows restored from a copy stay unreadable), the ciphertext was not written
    for the row it is on, or no configured master key opens its data key. The message
    names no key and quotes nothing that was encrypted."""

    #: The master key provider failed (a KMS unreachable, say): the same work may
    #: succeed later. The write-behind writer retries such a batch until
    #: ``write_deadline`` instead of setting it aside.
    transient: bool

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class AdoptionError(SessionStoreError):
    """The tables exist but match no known state; adopting them could lose data."""


#: SQLSTATEs after which the same statement may succeed if sent again.
_UNAVAILABLE = frozenset({"53300", "57P01", "57P02", "57P03"})
_RETRY_CONFLICTS = frozenset({"40001", "40P01"})


def _from_postgres(exc: asyncpg.PostgresError) -> SessionStoreError:
    state: str = exc.sqlstate or ""
    message = exc.args[0] if exc.args else str(exc)
    # PgBouncer refuses a login with a protocol-violation SQLSTATE, not a 28xxx one.
    refused_by_pgbouncer = state == "08P01" and (
        "authentication failed" in message or "no such user" in message
    )
    if state == "28P01" or refused_by_pgbouncer:
        return AuthenticationError(
            f"authentication failed: {message}; check the user name and password",
            sqlstate=state,
        )
    if state.startswith("08") or state in _UNAVAILABLE:
        return StoreUnavailableError(f"database unavailable: {message}", sqlstate=state)
    if state == "57014":
        return StoreTimeoutError(f"statement cancelled: {message}", sqlstate=state)
    if state == "23503":
        return NotFoundError(
            f"referenced row does not exist: {exc.detail or message}", sqlstate=state
        )
    if state == "23505" or state in _RETRY_CONFLICTS:
        return ConflictError(f"concurrent write conflict: {exc.detail or message}", sqlstate=state)
    if state.startswith("28"):
        # 28000: no pg_hba.conf entry (often: TLS required or refused), or a role that
        # may not log in — a password would not help.
        return AuthenticationError(f"login refused by the server: {message}", sqlstate=state)
    if state == "3D000":
        return StoreUnavailableError(
            f"{message}: create the database or fix the URL", sqlstate=state
        )
    if state in ("42P01", "42704", "3F000"):  # missing table, type or schema
        return SessionStoreError(
            f"the sessionstore schema is missing ({message}): run `sessionstore migrate`",
            sqlstate=state,
        )
    if state == "42501":
        return PermissionDeniedError(f"permission denied: {message}", sqlstate=state)
    if state.startswith("22") or state in ("23502", "23514"):
        field = (
            getattr(exc, "column_name", None) or getattr(exc, "constraint_name", None) or "value"
        )
        if state.startswith("22"):
            # Data errors quote the value after a colon ('invalid input syntax for type
            # uuid: "…"', and the driver's own 'invalid input for query argument $4:
            # <value> (…)'): the value may be a message or a secret, so it is cut.
            message = message.split(": ", 1)[0]
        return InvalidInputError(field, f"rejected by the database: {message}", sqlstate=state)
    return SessionStoreError(f"database error {state}: {message}", sqlstate=state or None)


def translate(exc: BaseException) -> SessionStoreError | None:
    """The sessionstore error for a driver or socket exception; ``None`` for anything else.

    A :class:`SessionStoreError` is returned unchanged.
    """
    if isinstance(exc, SessionStoreError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        return _from_postgres(exc)
    if isinstance(exc, TimeoutError):  # before OSError, of which it is a subclass
        return StoreTimeoutError(
            "operation timed out on the client and was cancelled, but it may have been "
            "committed: its outcome is unknown (a turn or compaction sent again with the "
            "same message_id, or a fork with the same arguments, returns what was stored)"
        )
    if isinstance(exc, ConnectionRefusedError | socket.gaierror):
        # Only connecting raises these (a pool opening a connection for a caller): the
        # server was never reached, nothing was lost.
        return StoreUnavailableError(
            f"could not connect to the database: {exc or type(exc).__name__}"
        )
    if isinstance(exc, OSError):  # ConnectionError included
        return StoreUnavailableError(
            f"connection to the database lost: {exc or type(exc).__name__}"
        )
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # Seen when the server ends a connection mid-operation (pg_terminate_backend):
        # the protocol is left in a state no further operation can use.
        return StoreUnavailableError(
            f"connection to the database broken: {exc or type(exc).__name__}"
        )
    if isinstance(exc, asyncpg.InterfaceError):
        return SessionStoreError(f"driver error: {exc or type(exc).__name__}")
    return None


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise driver and socket errors as :class:`SessionStoreError` subclasses.

    ``CancelledError`` passes through untouched, as do sessionstore's own errors and
    anything that is not a database or network failure.
    """
    try:
        yield
    except SessionStoreError:
        raise  # already ours (StoreTimeoutError is an OSError too)
    except asyncpg.PostgresError as exc:
        raise _from_postgres(exc) from exc
    except (OSError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
        error = translate(exc)  # OSError includes TimeoutError and ConnectionError
        assert error is not None  # translate() knows every class caught here
        raise error from exc


def translate_wrapped(exc: BaseException) -> SessionStoreError | None:
    """:func:`translate` of the first exception, along ``exc``'s chain, that is a driver or
    socket error (or a sessionstore error): Alembic and SQLAlchemy wrap driver errors in
    their own (``orig``, ``__cause__``, ``__context__``). ``None`` if there is none; a
    cyclic chain is walked once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        error = translate(current)
        if error is not None:
            return error
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return None


def is_transient(error: BaseException) -> bool:
    """Whether sending the same work again may succeed: the database was unreachable, the
    client gave up waiting, a serialisation failure or deadlock aborted it, or the master
    key provider failed."""
    return (
        isinstance(error, StoreUnavailableError | StoreTimeoutError)
        or (isinstance(error, SessionStoreError) and error.sqlstate in _RETRY_CONFLICTS)
        or (isinstance(error, EncryptionError) and error.transient)
    )


# -- connecting ----------------------------------------------------------------------------
# What a caller is told when a connection cannot be had: these sentences name the setting
# that bounded the wait, so that a hang is not mistaken for a statement whose outcome is
# unknown. ``where`` is the URL already redacted (the caller's ``redact_dsn``).


def connect_error(
    exc: Exception, *, where: str | None, dsn: str | None, connect_timeout: float
) -> SessionStoreError:
    """What a failed connection attempt raises: a hang names ``connect_timeout``, a socket
    error says the server was not reached, an unknown URL query parameter is an
    :class:`InvalidInputError` for ``dsn``, and a refusal by the server keeps its own
    class (e.g. :class:`AuthenticationError`).

    ``exc`` itself is re-raised when it is not a database or network failure (e.g. a bug
    in a ``configure`` callback).
    """
    if isinstance(exc, TimeoutError):
        return StoreUnavailableError(
            f"could not connect to {where}: no answer within "
            f"connect_timeout={connect_timeout}s (the connection attempt hung)"
        )
    if isinstance(exc, OSError):
        return StoreUnavailableError(f"could not connect to {where}: {describe(exc)}")
    if isinstance(exc, asyncpg.UndefinedObjectError) and _url_parameter(exc, dsn):
        # asyncpg sends a URL query parameter it does not know as a server setting; the
        # server refuses the name with the SQLSTATE of a missing type (42704).
        return InvalidInputError(
            "dsn", f"{exc}: remove it from the URL's query string", sqlstate=exc.sqlstate
        )
    error = translate(exc)
    if error is None:
        raise exc
    return error


def _url_parameter(exc: asyncpg.UndefinedObjectError, dsn: str | None) -> bool:
    """Whether ``exc`` refuses a setting that ``dsn``'s query string names."""
    named = re.match(r'unrecognized configuration parameter "([^"]+)"', str(exc))
    return bool(named and dsn and named.group(1) in parse_qs(urlsplit(dsn).query))


def pool_open_timeout_error(*, where: str | None, connect_timeout: float) -> StoreUnavailableError:
    """Opening the pool (its first connection, then the others together) took longer than
    its bound, 2 × ``connect_timeout``."""
    return StoreUnavailableError(
        f"could not open the pool on {where} within 2 × connect_timeout={connect_timeout}s"
    )


def acquire_timeout_error(
    *,
    where: str | None,
    acquire_timeout: float,
    connect_timeout: float,
    max_size: int,
    opening: bool,
    given_pool_opening: bool,
) -> SessionStoreError:
    """No pooled connection within ``acquire_timeout``, told by what the wait was for:
    a connection the application's own pool was opening (``given_pool_opening``: not
    every connection was in use), one sessionstore's pool was opening (``opening``), or
    a free one while all ``max_size`` were in use — only the last is a
    :class:`StoreTimeoutError`."""
    if given_pool_opening:
        # Its own connect function, which sessionstore does not see, hung or hit the
        # pool's own timeout.
        return StoreUnavailableError(
            "could not connect to the database: a new connection of the application's "
            f"pool did not open (within acquire_timeout={acquire_timeout}s, or "
            "the pool's own connect timeout)"
        )
    if opening:
        return StoreUnavailableError(
            f"could not connect to {where} within "
            f"acquire_timeout={acquire_timeout}s: opening a new connection "
            f"did not finish (connect_timeout={connect_timeout}s)"
        )
    return StoreTimeoutError(
        f"no connection free within acquire_timeout={acquire_timeout}s: all "
        f"max_size={max_size} connections were in use (raise max_size or "
        "acquire_timeout, or look for calls that hold connections for long)"
    )
