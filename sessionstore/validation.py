"""Argument checks run before anything is sent to the database.

Each check raises :class:`InvalidInputError` naming the argument and the rule it broke,
and returns the value in the form the SQL needs. Pure functions, no I/O.
"""

from __future__ import annotations

import enum
import inspect
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
    "EARLIEST",
    "LATEST",
    "MAX_INT_DIGITS",
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
    "duration",
    "flag",
    "identifier",
    "limit",
    "message",
    "metadata_json",
    "non_negative_int",
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
#: Nesting of a metadata object, counted in containers (objects and lists): the object
#: itself is level 1, and a scalar adds no level, so ``{"a": 1}`` is one level deep and a
#: scalar inside 100 containers is 100 deep. Far beyond real use, far below what
#: recursive JSON code in Python (about 1,000) and PostgreSQL (a few thousand with the
#: default ``max_stack_depth``) can take.
MAX_METADATA_DEPTH = 100
#: The most digits (sign not counted) of an integer in metadata: Python's default limit
#: for converting between int and text (``sys.get_int_max_str_digits()``), fixed here so
#: the rule does not depend on the process. A longer number cannot be sent as JSON text
#: by a default interpreter; pass it as a string.
MAX_INT_DIGITS = 4300
_INT_TOO_LONG = 10**MAX_INT_DIGITS
#: A metadata object's size as UTF-8 JSON text.
MAX_METADATA_BYTES = 8 * 1024 * 1024
#: The longest ``ttl``: 365,000 days (1,000 years of 365 days; a day is 24 hours, as in
#: ``timedelta``). Any expiry it gives stays far inside Python's ``datetime`` range (year
#: 9999), so every stored ``expires_at`` can be read back. No expiry: ``ttl=None``.
MAX_TTL = timedelta(days=365_000)
#: The earliest and the latest time accepted (and read back): Python's ``datetime`` range
#: in UTC less its last microsecond at each end, which asyncpg sends as ``-infinity`` and
#: ``infinity`` (so ``datetime.max`` would be stored as ``infinity`` and read back as
#: :data:`LATEST`, one microsecond off). ``sessionstore.rows`` reads stored times outside
#: this range as its nearest end.
EARLIEST: Final = datetime.min.replace(microsecond=1, tzinfo=UTC)
LATEST: Final = datetime.max.replace(microsecond=999_998, tzinfo=UTC)
_RANGE = "0001-01-01 00:00:00.000001 to 9999-12-31 23:59:59.999998"
#: jsonb keeps numbers as ``numeric``, which prints a float of 1e16 or more without a
#: decimal point or exponent (1e16 -> 10000000000000000): it would read back as an int.
_FLOAT_AS_INT = 1e16
_INT4_MAX = 2**31 - 1


def uuid(value: object, field: str, *, hint: str = "") -> UUID:
    """Accept a ``UUID`` or its string form; ``hint`` ends the error for a refused ``str``."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    else:
        hint = ""
    raise InvalidInputError(field, f"must be a UUID or its string form, got {_shape(value)}{hint}")


#: A string that is no UUID, where a conversation is expected, is most likely a
#: continuation id: ``add_turn`` takes one as a plain ``str``; the methods that take either
#: kind of id need it marked.
_WRAP_IT = "; a continuation id must be wrapped: ContinuationId(continuation_id)"


def conversation(value: object, field: str = "conversation_id") -> UUID | ContinuationId:
    """A conversation's id (a ``UUID`` or its text) or its :class:`ContinuationId`."""
    if isinstance(value, ContinuationId):
        return ContinuationId(identifier(value, field))
    return uuid(value, field, hint=_WRAP_IT)


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
        raise InvalidInputError(field, f"must be a string, got {_shape(value)}")
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
    booleans and ``None``, nested at most :data:`MAX_METADATA_DEPTH` deep (counting
    objects and lists, not scalars) and at most :data:`MAX_METADATA_BYTES` as UTF-8
    JSON, integers of at most :data:`MAX_INT_DIGITS` digits. Tuples are refused (they
    would read back as lists). ``-0.0`` reads back as ``0.0`` (equal). The error names
    the path of the offending value (``metadata.a[2]``), never the value.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidInputError(field, f"must be a JSON object (a mapping), got {_shape(value)}")
    plain = _plain_json(value, field)
    try:
        encoded = json.dumps(plain, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except ValueError:  # this process lowered Python's int-to-text limit below ours
        limit_ = sys.get_int_max_str_digits()
        raise InvalidInputError(
            field, f"integers must have at most {limit_} digits in this process: pass a string"
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
    if item is None or isinstance(item, bool):
        return item
    if isinstance(item, int):
        if not -_INT_TOO_LONG < item < _INT_TOO_LONG:
            raise InvalidInputError(
                field,
                f"integers must have at most {MAX_INT_DIGITS} digits{_at(path)}: pass a string",
            )
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
        raise InvalidInputError(field, f"must be an integer, got {_shape(value)}")
    if not 0 <= value <= _INT4_MAX:
        raise InvalidInputError(field, f"must be between 0 and {_INT4_MAX}")
    return value


def limit(value: object, field: str = "limit", *, maximum: int = MAX_LIMIT) -> int:
    """A page size between 1 and ``maximum``."""
    return _int_in(value, field, 1, maximum)


def _int_in(value: object, field: str, low: int, high: int) -> int:
    """An ``int`` (not a ``bool``) in ``[low, high]``. The refusal names the type of a
    value that is no int, never the value (a string passed here may be anything)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(
            field, f"must be an integer between {low} and {high}, got {_shape(value)}"
        )
    if not low <= value <= high:
        raise InvalidInputError(field, f"must be an integer between {low} and {high}")
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
    """A timezone-aware ``datetime`` from :data:`EARLIEST` to :data:`LATEST` in UTC,
    both included (naive ones are ambiguous and refused). Returned in UTC.

    The bounds are Python's range less one microsecond at each end: those two instants
    would be stored as ``±infinity`` and read back one microsecond off, so they are
    refused (``datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)`` is; 999998 is
    the largest accepted).
    """
    if value is None and optional:
        return None
    if not isinstance(value, datetime):
        raise InvalidInputError(field, f"must be a datetime, got {_shape(value)}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise InvalidInputError(field, "must be timezone-aware (naive datetimes are ambiguous)")
    try:
        at = value.astimezone(UTC)
    except OverflowError:
        at = None
    if at is None or not EARLIEST <= at <= LATEST:
        raise InvalidInputError(field, f"must lie from {_RANGE} UTC")
    return at


def duration(value: object, field: str) -> timedelta:
    """A positive ``timedelta`` of at most :data:`MAX_TTL` (365,000 days, both included)."""
    if not isinstance(value, timedelta):
        raise InvalidInputError(field, f"must be a timedelta, got {_shape(value)}")
    if value <= timedelta(0):
        raise InvalidInputError(field, "must be positive")
    if value > MAX_TTL:
        raise InvalidInputError(field, "must be at most 365000 days")
    return value


def ttl(value: object, field: str = "ttl") -> timedelta:
    """A :func:`duration` (``timedelta(days=365_000)`` is accepted, a microsecond more is
    refused, saying how to ask for no expiry)."""
    if isinstance(value, timedelta) and value > MAX_TTL:
        raise InvalidInputError(
            field,
            "must be at most 365000 days (1000 years of 365 days; pass ttl=None for a"
            " session that never expires)",
        )
    return duration(value, field)


C = TypeVar("C", bound=Callable[..., object])


def callback(value: C | None, field: str) -> C | None:
    """A callable or ``None`` (checked before any work, not when first called)."""
    if value is not None and not callable(value):
        raise InvalidInputError(field, f"must be callable or None, got {_shape(value)}")
    return value


def progress(value: C | None, field: str = "on_progress") -> C | None:
    """A progress callback: a plain callable or ``None``. A coroutine function is refused:
    it would be called and never awaited, so it would report nothing."""
    checked = callback(value, field)
    if inspect.iscoroutinefunction(checked):
        raise InvalidInputError(field, "must be a plain function, not a coroutine function")
    return checked


def claims(value: object, field: str = "claims") -> dict[str, object]:
    """Extra JWT claims: a mapping (``None`` for none)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(field, f"must be a mapping or None, got {_shape(value)}")
    return dict(value)


def flag(value: object, field: str) -> bool:
    """A ``bool`` (not merely something truthy: ``"false"`` would be)."""
    if not isinstance(value, bool):
        raise InvalidInputError(field, f"must be True or False, got {_shape(value)}")
    return value


def positive_int(value: object, field: str) -> int:
    """An integer >= 1 that fits Postgres ``integer``."""
    return _int_in(value, field, 1, _INT4_MAX)


def non_negative_int(value: object, field: str) -> int:
    """An integer >= 0 that fits Postgres ``integer``."""
    return _int_in(value, field, 0, _INT4_MAX)


class Unset(enum.Enum):
    """Marks an argument the caller did not pass (``None`` can be a real value)."""

    UNSET = enum.auto()


#: The default of an argument that may also be ``None``: not passed, leave it alone.
UNSET: Final = Unset.UNSET
