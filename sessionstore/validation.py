"""Argument checks run before anything is sent to the database.

Each check raises :class:`InvalidInputError` naming the argument and the rule it broke,
and returns the value in the form the SQL needs. Pure functions, no I/O.
"""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple, TypeVar
from uuid import UUID

from .errors import InvalidInputError
from .models import ContinuationId, MessageRole, SessionStatus

__all__ = [
    "MAX_LIMIT",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_TTL",
    "UNSET",
    "CheckedMessage",
    "Unset",
    "aware_datetime",
    "callback",
    "claims",
    "conversation",
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
#: Nesting of a metadata object (the object itself is level 1). Far beyond real use, far
#: below what recursive JSON code in Python (about 1,000) and PostgreSQL (a few thousand
#: with the default ``max_stack_depth``) can take.
MAX_METADATA_DEPTH = 100
#: A metadata object's size as UTF-8 JSON text.
MAX_METADATA_BYTES = 8 * 1024 * 1024
#: The longest ``ttl``: any expiry it gives stays far inside Python's ``datetime`` range
#: (year 9999), so every stored ``expires_at`` can be read back. No expiry: ``ttl=None``.
MAX_TTL = timedelta(days=1000 * 365)
#: jsonb keeps numbers as ``numeric``, which prints a float of 1e16 or more without a
#: decimal point or exponent (1e16 -> 10000000000000000): it would read back as an int.
_FLOAT_AS_INT = 1e16
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
    raise InvalidInputError(field, f"must be a UUID or its string form, got {_shape(value)}")


def conversation(value: object, field: str = "conversation_id") -> UUID | ContinuationId:
    """A conversation's id (a ``UUID`` or its text) or its :class:`ContinuationId`."""
    if isinstance(value, ContinuationId):
        return ContinuationId(identifier(value, field))
    return uuid(value, field)


def _shape(value: object) -> str:
    """What a refused value is, without its content (which may be private)."""
    if isinstance(value, str | bytes):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _check_text(value: str, field: str, where: str = "") -> None:
    # Postgres text holds neither NUL nor anything that is not UTF-8 (a lone surrogate
    # such as "\ud800" cannot be encoded); refusing here keeps the driver from quoting
    # the value in its own error.
    if "\x00" in value:
        raise InvalidInputError(field, f"must not contain NUL (\\x00) characters{where}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                field, f"must be valid UTF-8 text{where}: a lone surrogate at index {exc.start}"
            ) from None


def text(value: object, field: str, *, optional: bool = False) -> str | None:
    """A string PostgreSQL ``text`` can hold: no NUL, no lone surrogate (valid UTF-8)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string, got {type(value).__name__}")
    _check_text(value, field)
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
        raise InvalidInputError(field, f"must be one of {allowed}, got {_shape(value)}")
    return member


def role(value: object, field: str = "role") -> MessageRole:
    """A :class:`MessageRole` or its string value."""
    return _member(_ROLES, value, field)


def status(value: object, field: str = "status") -> SessionStatus:
    """A :class:`SessionStatus` or its string value."""
    return _member(_STATUSES, value, field)


def metadata_json(value: object, field: str = "metadata") -> str | None:
    """Serialise a JSON object for a jsonb column; ``None`` stays ``None``.

    Only what reads back exactly is accepted: mappings with string keys, lists,
    strings (no NUL, valid UTF-8; the six characters ``\\u0000`` are fine), ints,
    finite floats below 1e16 in magnitude (jsonb would print larger ones as integers),
    booleans and ``None``, nested at most :data:`MAX_METADATA_DEPTH` deep and at most
    :data:`MAX_METADATA_BYTES` as UTF-8 JSON. Tuples are refused (they would read back
    as lists). ``-0.0`` reads back as ``0.0`` (equal). The error names the path of the
    offending value (``metadata.a[2]``), never the value.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            field, f"must be a JSON object (a mapping), got {type(value).__name__}"
        )
    plain = _plain_json(value, field)
    try:
        encoded = json.dumps(plain, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except ValueError:  # an int longer than Python will print or parse
        limit_ = sys.get_int_max_str_digits()
        raise InvalidInputError(
            field, f"integers of more than {limit_} digits do not read back: pass a string"
        ) from None
    if len(encoded) > MAX_METADATA_BYTES or len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidInputError(field, f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return encoded


#: A container still to copy: (source, its plain copy, its path, its depth).
_Pending = tuple[object, dict[str, object] | list[object], str, int]


def _plain_json(value: Mapping[object, object], field: str) -> dict[str, object]:
    """``value`` checked all the way down, as plain dicts and lists (``json.dumps`` takes
    no other mapping). Iterative, so a hostile depth raises the depth error, not
    ``RecursionError``. Refusals name ``field`` and, in the rule, the path to the value."""
    root: dict[str, object] = {}
    stack: list[_Pending] = [(value, root, "", 1)]
    while stack:
        source, target, path, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise InvalidInputError(field, f"nests deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(target, dict):
            assert isinstance(source, Mapping)
            for key, item in source.items():
                if not isinstance(key, str):
                    raise InvalidInputError(
                        field,
                        f"keys must be strings, got a key of type {type(key).__name__}"
                        f"{_at(path)} (it would be stored as a string, or merged)",
                    )
                where = f"{path}[{_key_text(key)}]"
                _check_text(key, field, f" in a key{_at(path)}")
                target[key] = _copy(item, field, where, depth, stack)
        else:
            assert isinstance(source, list)
            for index, item in enumerate(source):
                target.append(_copy(item, field, f"{path}[{index}]", depth, stack))
    return root


def _key_text(key: str) -> str:
    # Keys name things; still, a path in an error shows at most a short ASCII form.
    shown = json.dumps(key[:20])
    return shown if len(key) <= 20 else shown[:-1] + '..."'


def _at(path: str) -> str:
    return f" at {path}" if path else ""


def _copy(item: object, field: str, path: str, depth: int, stack: list[_Pending]) -> object:
    if item is None or isinstance(item, bool | int):
        return item
    if isinstance(item, str):
        _check_text(item, field, _at(path))
        return item
    if isinstance(item, float):
        if not math.isfinite(item):
            raise InvalidInputError(
                field, f"numbers must be finite (not NaN or infinity){_at(path)}"
            )
        if abs(item) >= _FLOAT_AS_INT:
            raise InvalidInputError(
                field,
                f"floats of 1e16 or more read back as integers{_at(path)}: pass an int or a string",
            )
        return item
    container: dict[str, object] | list[object]
    if isinstance(item, Mapping):
        container = {}
    elif isinstance(item, list):
        container = []
    else:
        kind = type(item).__name__
        why = "tuples read back as lists: pass a list" if isinstance(item, tuple) else kind
        raise InvalidInputError(
            field,
            f"must hold only mappings, lists, str, int, float, bool or None{_at(path)}: {why}",
        )
    stack.append((item, container, path, depth + 1))
    return container


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
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidInputError(
            field, "must lie between the years 1 and 9999 in UTC (Python's datetime range)"
        ) from None


def ttl(value: object, field: str = "ttl") -> timedelta:
    """A positive ``timedelta`` of at most :data:`MAX_TTL` (1,000 years)."""
    if not isinstance(value, timedelta):
        raise InvalidInputError(field, f"must be a timedelta, got {type(value).__name__}")
    if value <= timedelta(0):
        raise InvalidInputError(field, "must be positive")
    if value > MAX_TTL:
        raise InvalidInputError(
            field, "must be at most 1000 years (pass ttl=None for a session that never expires)"
        )
    return value


C = TypeVar("C", bound=Callable[..., object])


def callback(value: C | None, field: str) -> C | None:
    """A callable or ``None`` (checked before any work, not when first called)."""
    if value is not None and not callable(value):
        raise InvalidInputError(field, f"must be callable or None, got {type(value).__name__}")
    return value


def claims(value: object, field: str = "claims") -> dict[str, object]:
    """Extra JWT claims: a mapping (``None`` for none)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(field, f"must be a mapping or None, got {type(value).__name__}")
    return dict(value)


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
