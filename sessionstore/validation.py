"""Argument checks run before anything is sent to the database.

Each check raises :class:`InvalidInputError` naming the argument and the rule it broke,
and returns the value in the form the SQL needs. Pure functions, no I/O.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final, NamedTuple, TypeVar
from uuid import UUID

from .errors import InvalidInputError
from .models import MessageRole, SessionStatus

__all__ = [
    "MAX_LIMIT",
    "UNSET",
    "CheckedMessage",
    "Unset",
    "aware_datetime",
    "flag",
    "identifier",
    "limit",
    "message",
    "metadata_json",
    "options",
    "positive_int",
    "role",
    "status",
    "text",
    "tokens",
    "ttl",
    "uuid",
]

MAX_LIMIT = 1000
MAX_IDENTIFIER = 255
_INT4_MAX = 2**31 - 1


def uuid(value: object, field: str) -> UUID:
    """Accept a ``UUID`` or its string form."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise InvalidInputError(field, f"must be a UUID or its string form, got {value!r:.60}")


def text(value: object, field: str, *, optional: bool = False) -> str | None:
    """A string without NUL bytes (Postgres text cannot hold them)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInputError(field, "must not contain NUL (\\x00) characters")
    return value


def identifier(value: object, field: str) -> str:
    """A non-empty, non-blank string of at most 255 characters without NUL bytes."""
    checked = text(value, field)
    assert checked is not None
    if not checked.strip():
        raise InvalidInputError(field, "must not be empty")
    if len(checked) > MAX_IDENTIFIER:
        raise InvalidInputError(field, f"must be at most {MAX_IDENTIFIER} characters")
    return checked


E = TypeVar("E", bound=enum.StrEnum)
_ROLES = {member.value: member for member in MessageRole}
_STATUSES = {member.value: member for member in SessionStatus}


def _member(members: Mapping[str, E], value: object, field: str) -> E:
    """The member named by ``value`` (a member or its value; a dict lookup, as this runs
    for every message)."""
    member = members.get(value) if isinstance(value, str) else None
    if member is None:
        allowed = ", ".join(members)
        raise InvalidInputError(field, f"must be one of {allowed}, got {value!r:.60}")
    return member


def role(value: object, field: str = "role") -> MessageRole:
    """A :class:`MessageRole` or its string value."""
    return _member(_ROLES, value, field)


def status(value: object, field: str = "status") -> SessionStatus:
    """A :class:`SessionStatus` or its string value."""
    return _member(_STATUSES, value, field)


def metadata_json(value: object, field: str = "metadata") -> str | None:
    """Serialise a JSON object for a jsonb column; ``None`` stays ``None``.

    Rejects non-mappings, non-string keys, NaN/Infinity and ``\\u0000``, all of which
    jsonb refuses or would change silently.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            field, f"must be a JSON object (a mapping), got {type(value).__name__}"
        )
    if not all(isinstance(key, str) for key in value):
        raise InvalidInputError(field, "keys must be strings")
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(field, f"must be JSON-serialisable: {exc}") from None
    if "\\u0000" in encoded:
        raise InvalidInputError(field, "must not contain NUL (\\u0000) characters")
    return encoded


def tokens(value: object, field: str = "tokens", *, optional: bool = True) -> int | None:
    """A non-negative integer that fits Postgres ``integer`` (booleans are refused)."""
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(field, f"must be an integer, got {type(value).__name__}")
    if not 0 <= value <= _INT4_MAX:
        raise InvalidInputError(field, f"must be between 0 and {_INT4_MAX}, got {value}")
    return value


def limit(value: object, field: str = "limit", *, maximum: int = MAX_LIMIT) -> int:
    """A page size between 1 and ``maximum``."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise InvalidInputError(field, f"must be an integer between 1 and {maximum}, got {value!r}")
    return value


def options(given: Mapping[str, object], allowed: frozenset[str]) -> None:
    """Refuse keyword options a method does not take: a misspelt ``token=`` must not be
    silently ignored."""
    for name in given:
        if name not in allowed:
            raise InvalidInputError(name, f"is not an option here (options: {sorted(allowed)})")


class CheckedMessage(NamedTuple):
    """A message's fields, checked and in the form the SQL takes."""

    role: str
    content: str
    metadata: str | None
    tokens: int | None


def message(
    role_: object, content: object, given: Mapping[str, object], allowed: frozenset[str]
) -> CheckedMessage:
    """Check a message to append: its role, its content and the keyword options ``given``
    (of which only ``allowed`` may appear; ``metadata`` and ``tokens`` are read here)."""
    options(given, allowed)
    checked = text(content, "content")
    assert checked is not None
    return CheckedMessage(
        role(role_).value,
        checked,
        metadata_json(given.get("metadata")),
        tokens(given.get("tokens")),
    )


def aware_datetime(value: object, field: str, *, optional: bool = True) -> datetime | None:
    """A timezone-aware ``datetime`` (naive ones are ambiguous and refused)."""
    if value is None and optional:
        return None
    if not isinstance(value, datetime):
        raise InvalidInputError(field, f"must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise InvalidInputError(field, "must be timezone-aware (naive datetimes are ambiguous)")
    return value


def ttl(value: object, field: str = "ttl") -> timedelta:
    """A positive ``timedelta``."""
    if not isinstance(value, timedelta):
        raise InvalidInputError(field, f"must be a timedelta, got {type(value).__name__}")
    if value <= timedelta(0):
        raise InvalidInputError(field, "must be positive")
    return value


def flag(value: object, field: str) -> bool:
    """A ``bool`` (not merely something truthy: ``"false"`` would be)."""
    if not isinstance(value, bool):
        raise InvalidInputError(field, f"must be True or False, got {type(value).__name__}")
    return value


def positive_int(value: object, field: str) -> int:
    """An integer >= 1 that fits Postgres ``integer``."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _INT4_MAX:
        raise InvalidInputError(field, f"must be a positive integer, got {value!r}")
    return value


class Unset(enum.Enum):
    """Marks an argument the caller did not pass (``None`` can be a real value)."""

    UNSET = enum.auto()


UNSET: Final = Unset.UNSET
