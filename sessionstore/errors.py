"""The exception tree. Every error sessionstore raises is a :class:`SessionStoreError`.

Errors that come from the server carry its SQLSTATE in ``sqlstate`` (``None`` when the
error was detected on the client). Driver exceptions never reach callers: ``db.py``
translates them in one place.
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "InvalidInputError",
    "InvalidStateError",
    "NotFoundError",
    "PermissionDeniedError",
    "SessionExpiredError",
    "SessionStoreError",
    "StoreTimeoutError",
    "StoreUnavailableError",
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

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field


class PermissionDeniedError(SessionStoreError):
    """Row-level security or a missing grant refused the operation (SQLSTATE 42501)."""


class StoreUnavailableError(SessionStoreError):
    """The database could not be reached, or dropped the connection, within the time allowed."""


class StoreTimeoutError(SessionStoreError, TimeoutError):
    """An operation did not finish within its timeout; the server cancelled or will cancel it."""
