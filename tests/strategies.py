"""Hostile inputs for the property-based tests (``tests/fuzz/``), and the oracles that
say what the library must do with each: accept it and give it back exactly, refuse it
with ``InvalidInputError`` naming the argument, or either (what the contract leaves
open, such as a cursor nobody handed out). The limits docs/limits.md states
(metadata depth and integer length, the longest ``ttl``, the latest ``expires_at``) are
judged exactly, on both sides.

The oracles are written from the public contract (docs and design.md), not from the
library's code: text is UTF-8 without NUL; metadata is JSON that round-trips exactly
through jsonb; times stay inside PostgreSQL's and Python's ranges.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hypothesis import strategies as st

__all__ = [
    "CANARY",
    "CURSORS",
    "EXPIRES_AT",
    "HOSTILE_IDS",
    "HOSTILE_TEXT",
    "IDENTIFIERS",
    "INTS",
    "METADATA",
    "ROLES",
    "TTLS",
    "WRONG_TYPES",
    "Deep",
    "Forged",
    "Opaque",
    "Verdict",
    "cursor_verdict",
    "deep",
    "expires_at_verdict",
    "forge_cursor",
    "identifier_verdict",
    "int_verdict",
    "metadata_shape",
    "real",
    "role_verdict",
    "same_json",
    "text_verdict",
    "ttl_verdict",
    "uuid_verdict",
    "worst",
]

#: Marks hostile strings: an error message must never contain it (no echoed content).
CANARY = "c4n4ry"
INT4_MAX = 2**31 - 1
#: The earliest and the latest time the library accepts (docs/limits.md): the
#: last microsecond of Python's range at each end is stored as ±infinity, so refused.
#: As distances from ``datetime.min``.
_EARLIEST = timedelta(microseconds=1)
_LATEST = datetime.max - datetime.min - timedelta(microseconds=1)
#: The latest instant Python can hold, as a distance from ``datetime.min``.
_PY_SPAN = datetime.max - datetime.min


class Verdict(enum.Enum):
    """What the library must do with a value."""

    OK = 0  # accept it, and give it back exactly
    EITHER = 1  # refuse it naming the argument, or accept it and give it back exactly
    BAD = 2  # refuse it: InvalidInputError naming the argument, nothing written


def worst(*verdicts: Verdict) -> Verdict:
    """The strictest of ``verdicts`` (BAD over EITHER over OK)."""
    return max(verdicts, key=lambda v: v.value, default=Verdict.OK)


class Opaque:
    """An object no JSON encoder or database driver knows (with a stable repr)."""

    def __repr__(self) -> str:
        return "Opaque()"


# --- text -------------------------------------------------------------------------------

_NASTY_CHARS = [
    "\x00",
    "\ud800",
    "\udfff",
    "\udc80",
    "\ufeff",
    "\uffff",
    "\ufffe",
    "\u2028",
    "\U0010ffff",
    "\\",
    '"',
    "'",
    "\n",
    "\r",
    "\x1c",
    "\x7f",
    "é",
    "\u0301",
    "😀",
]
#: Any code point, lone surrogates included (hypothesis leaves those out by default).
ANY_CHAR = st.one_of(
    st.characters(codec=None, exclude_categories=()), st.sampled_from(_NASTY_CHARS)
)
SPECIAL_TEXT = [
    "",
    " ",
    "\t\n ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "\udbff\udfff",  # a surrogate *pair* as two code points: still not valid UTF-8 text
    "\\u0000",  # the six characters backslash-u-0000, not a NUL: valid
    "\\\\u0000",
    "\\ud800",
    "null",
    "'; DROP TABLE sessions; --",
    "%s %(x)s {0} $1",
    "\U0010ffff\ufeff",
]


def _canary(poison: str, size: int) -> str:
    """A ``size``-character string made of the canary, with ``poison`` in the middle."""
    body = (CANARY + "-") * (size // 7 + 2)
    half = max(0, (size - len(poison)) // 2)
    return (body[:half] + poison + body)[:size]


#: Long strings carrying the canary: valid ones (no poison) and invalid ones.
CANARY_TEXT = st.builds(
    _canary,
    st.sampled_from(["", "\x00", "\ud800"]),
    st.sampled_from([40, 255, 256, 300, 10_000, 100_000]),
)
HOSTILE_TEXT: st.SearchStrategy[str] = st.one_of(
    st.text(max_size=12),
    st.text(ANY_CHAR, max_size=24),
    st.sampled_from(SPECIAL_TEXT),
    CANARY_TEXT,
)
#: Values of the wrong type for any argument.
WRONG_TYPES: st.SearchStrategy[object] = st.sampled_from(
    [
        None,
        0,
        -1,
        1.5,
        True,
        b"bytes",
        bytearray(b"ba"),
        ["list"],
        {"a": 1},
        Opaque(),
        Decimal("1"),
        date(2030, 1, 1),
    ]
)


def text_verdict(value: object, *, optional: bool = False) -> Verdict:
    """Text: a ``str`` that is valid UTF-8 (no lone surrogates) without NUL."""
    if value is None:
        return Verdict.OK if optional else Verdict.BAD
    if type(value) is not str:
        return Verdict.BAD
    if "\x00" in value:
        return Verdict.BAD
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return Verdict.BAD
    return Verdict.OK


IDENTIFIERS: st.SearchStrategy[object] = st.one_of(
    st.text(min_size=1, max_size=12), HOSTILE_TEXT, WRONG_TYPES
)


def identifier_verdict(value: object) -> Verdict:
    """An identifier (user id, continuation id): text, not blank, at most 255 characters."""
    if isinstance(value, UUID):
        return Verdict.EITHER  # a UUID object as a user id: refused, or taken as its text
    verdict = text_verdict(value)
    if verdict is not Verdict.OK:
        return verdict
    assert isinstance(value, str)
    if not value.strip() or len(value) > 255:
        return Verdict.BAD
    if len(value.encode()) > 255:
        return Verdict.EITHER  # 255 characters or 255 bytes: the contract does not say
    return Verdict.OK


# --- ids --------------------------------------------------------------------------------


def uuid_verdict(value: object) -> tuple[Verdict, UUID | None]:
    """An id: a ``UUID`` or its string form (other spellings ``UUID()`` reads: either)."""
    if isinstance(value, UUID):
        return Verdict.OK, value
    if type(value) is not str:
        return Verdict.BAD, None
    try:
        parsed = UUID(value)
    except ValueError:
        return Verdict.BAD, None
    if value.lower() == str(parsed):
        return Verdict.OK, parsed
    return Verdict.EITHER, parsed


#: Raw values for an id argument (the tests also pass real ids, see ``tests.fuzz.world.Id``).
HOSTILE_IDS: st.SearchStrategy[object] = st.one_of(
    st.uuids().map(str),  # well-formed, but names nothing
    st.sampled_from(
        [
            "00000000-0000-0000-0000-000000000000",
            "not-a-uuid",
            "",
            " ",
            "123",
            "00000000-0000-0000-0000-00000000000g",
            "{00000000-0000-4000-8000-000000000001}",
            "urn:uuid:00000000-0000-4000-8000-000000000001",
            "00000000000040008000000000000001",
            "00000000-0000-4000-8000-000000000001\x00",
            "\ud800",
            _canary("", 60),
        ]
    ),
    HOSTILE_TEXT,
    WRONG_TYPES,
)


# --- enums and integers -------------------------------------------------------------------

ROLES: st.SearchStrategy[object] = st.one_of(
    st.sampled_from(["user", "assistant", "system"]),
    st.sampled_from(["USER", "robot", "", "user ", "tool", "user\x00"]),
    WRONG_TYPES,
)


def role_verdict(value: object) -> Verdict:
    """A role: a ``MessageRole`` or its value (``StrEnum`` members are those strings)."""
    return (
        Verdict.OK
        if value in ("user", "assistant", "system") and isinstance(value, str)
        else Verdict.BAD
    )


#: Integers around every edge the arguments have, and wrong types.
INTS: st.SearchStrategy[object] = st.one_of(
    st.integers(min_value=0, max_value=1000),
    st.sampled_from(
        [
            -(2**63),
            -(2**31),
            -1,
            0,
            1,
            2,
            999,
            1000,
            1001,
            100000,
            100001,
            INT4_MAX - 1,
            INT4_MAX,
            INT4_MAX + 1,
            2**63,
            10**30,
            10**5000,  # Python will not print it: a refusal must not try
            f"my private {CANARY} note",  # a refusal must name its type, not quote it
        ]
    ),
    st.integers(),
    WRONG_TYPES,
)


def int_verdict(value: object, low: int, high: int, *, optional: bool = False) -> Verdict:
    """An ``int`` (not a ``bool``) in ``[low, high]``."""
    if value is None:
        return Verdict.OK if optional else Verdict.BAD
    if type(value) is not int or not low <= value <= high:
        return Verdict.BAD
    return Verdict.OK


# --- metadata ------------------------------------------------------------------------------

#: Metadata nests at most this many containers (objects and lists; the metadata object is
#: level 1, a scalar adds none); one more is refused (docs/limits.md).
MAX_DEPTH = 100
#: Larger (encoded) than this may be refused.
MAX_OK_SIZE = 8192
#: Integers of more digits (sign not counted) are refused.
MAX_INT_DIGITS = 4300
_INT_TOO_LONG = 10**MAX_INT_DIGITS


def deep(levels: int, kind: str = "dict") -> dict[str, Any]:
    """A JSON object ``levels`` containers deep (the outer object counts as one); the
    innermost is empty, or for ``kind="leaf"`` a ``{"a": 0}`` holding a scalar."""
    if kind == "leaf":
        inner: Any = 0
        for _ in range(levels - 1):
            inner = {"a": inner}
        return {"a": inner}
    inner = {} if kind == "dict" else []
    for _ in range(levels - 2):
        inner = {"a": inner} if kind == "dict" else [inner]
    return {"a": inner} if levels > 1 else {}


@dataclass(frozen=True)
class Deep:
    """Stands for ``deep(levels, kind)`` in generated arguments, so that hypothesis can
    print a failing example (its printer recurses); tests pass :func:`real` of it."""

    levels: int
    kind: str = "dict"

    def __repr__(self) -> str:
        return f"deep({self.levels}, {self.kind!r})"


def real(value: object) -> Any:
    """The value a generated argument stands for: a :class:`Deep` becomes the object,
    inside option dicts and message tuples too."""
    if isinstance(value, Deep):
        return deep(value.levels, value.kind)
    if type(value) is dict and any(isinstance(v, Deep) for v in value.values()):
        return {k: real(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(real(v) for v in value)
    if type(value) is list and any(type(v) is tuple for v in value):
        return [real(v) for v in value]
    return value


def _collision() -> dict[Any, Any]:
    return {"a": {1: "x", "1": "y"}}


SPECIAL_METADATA: list[object] = [
    {},
    {"x": "\\u0000"},  # six characters, not a NUL: must be accepted and kept
    {"\\u0000": "\\ud800"},
    {"x": "\x00"},
    {"\x00": 1},
    {"x": "\ud800"},
    {"\udfff": 1},
    _collision(),
    {1: "x", "1": "y"},
    {"x": 1e300},
    {"x": 1e16},
    {"x": 1.5e16},
    {"x": 123.0},
    {"x": 0.1},
    {"x": 1e-7},
    {"x": 5e-324},
    {"x": -0.0},
    {"x": float("nan")},
    {"x": float("inf")},
    {"x": -float("inf")},
    {"x": 2**63},
    {"x": -(2**64)},
    {"x": 10**100},
    {"x": 10**4400},
    {"x": 10**MAX_INT_DIGITS - 1},  # 4,300 digits: kept
    {"x": [-(10**MAX_INT_DIGITS - 1)]},
    {"x": 10**MAX_INT_DIGITS},  # 4,301 digits: refused
    {"x": -(10**MAX_INT_DIGITS)},
    {"x": (1, 2)},
    {"x": {1, 2}},
    {"x": frozenset()},
    {"x": b"bytes"},
    {"x": Decimal("1.5")},
    {"x": datetime(2030, 1, 1, tzinfo=UTC)},
    {"x": UUID(int=1)},
    {"x": Opaque()},
    {"x": [1, [2, [3, {"y": None}]]]},
    {"x": True, "y": False, "z": None, "n": 1},
    {None: 1},
    {True: 1},
    {(1, 2): 1},
    {1.5: 1},
    OrderedDict(a=1),
    MappingProxyType({"a": 1}),
    [1, 2],
    (("a", 1),),
    "{}",
    '{"a": 1}',
    1,
    b"{}",
]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
_KEYS: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=6),
    st.text(ANY_CHAR, max_size=6),
    st.integers(-3, 3),
    st.sampled_from([None, True, 1.5, (1, 2), b"k"]),
)
_HOSTILE_LEAVES: st.SearchStrategy[Any] = st.one_of(
    st.floats(),
    st.sampled_from([1e300, -0.0, 2**64, 10**40, float("nan"), (1,), {1}, b"b", Opaque()]),
    st.text(ANY_CHAR, max_size=8),
    st.sampled_from(SPECIAL_TEXT),
)
#: Mostly-valid JSON objects (string keys, finite numbers, text).
VALID_JSON: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        _SCALARS,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=10,
    ),
    max_size=5,
)
#: Anything JSON-looking: non-string keys, hostile numbers, tuples, sets, bad text.
HOSTILE_JSON: st.SearchStrategy[Any] = st.dictionaries(
    _KEYS,
    st.recursive(
        st.one_of(_SCALARS, _HOSTILE_LEAVES),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(_KEYS, inner, max_size=3),
            st.tuples(inner),
        ),
        max_leaves=8,
    ),
    max_size=4,
)
METADATA: st.SearchStrategy[object] = st.one_of(
    st.none(),
    VALID_JSON,
    VALID_JSON,
    HOSTILE_JSON,
    st.sampled_from(SPECIAL_METADATA),
    st.sampled_from(SPECIAL_METADATA),
    st.builds(
        Deep,
        st.sampled_from([2, 16, 17, 99, 100, 101, 102, 999, 1000, 1001, 5000, 20_000]),
        st.sampled_from(["dict", "list", "leaf"]),
    ),
    st.builds(lambda s: {"k": s}, CANARY_TEXT),
    WRONG_TYPES,
)


def metadata_shape(value: object, *, optional: bool = True) -> tuple[Verdict, bool]:
    """The verdict on metadata from its shape alone, and whether jsonb must be asked how
    its numbers come back (floats: ``1e300`` returns as an integer, ``0.1`` as itself).

    Iterative: it must judge 20,000-deep values without recursing.
    """
    if value is None:
        return (Verdict.OK if optional else Verdict.BAD), False
    if not isinstance(value, Mapping):
        return Verdict.BAD, False
    verdict = Verdict.OK
    has_float = False
    # (a value, the number of containers around it, itself included if it is one)
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if (isinstance(node, Mapping) or type(node) is list) and depth > MAX_DEPTH:
            return Verdict.BAD, False
        if isinstance(node, Mapping):
            if type(node) is not dict:
                verdict = worst(verdict, Verdict.EITHER)  # a Mapping that is not a dict
            for key, item in node.items():
                if type(key) is not str or text_verdict(key) is not Verdict.OK:
                    return Verdict.BAD, False
                stack.append((item, depth + 1))
        elif type(node) is list:
            stack.extend((item, depth + 1) for item in node)
        elif node is None or type(node) is bool:
            pass
        elif type(node) is int:
            if not -_INT_TOO_LONG < node < _INT_TOO_LONG:
                return Verdict.BAD, False
        elif type(node) is float:
            if not math.isfinite(node):
                return Verdict.BAD, False
            if node == 0 and math.copysign(1.0, node) < 0:
                verdict = worst(verdict, Verdict.EITHER)  # jsonb keeps no sign on zero
            has_float = True
        elif type(node) is str:
            if text_verdict(node) is not Verdict.OK:
                return Verdict.BAD, False
        else:  # tuple, set, bytes, Decimal, datetime, UUID, objects: not JSON as given
            return Verdict.BAD, False
    if verdict is Verdict.OK and len(json.dumps(value).encode()) > MAX_OK_SIZE:
        verdict = Verdict.EITHER
    return verdict, has_float and verdict is Verdict.OK


def same_json(written: object, read: object) -> bool:
    """``read`` is exactly ``written``: equal, and of the same JSON types throughout (an
    ``int`` is not a ``float``, ``True`` is not ``1``, a tuple is not a list)."""
    stack: list[tuple[object, object]] = [(written, read)]
    while stack:
        a, b = stack.pop()
        if isinstance(a, Mapping):
            if type(b) is not dict or set(a) != set(b):
                return False
            stack.extend((a[k], b[k]) for k in a)
        elif type(a) is list:
            if type(b) is not list or len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif type(a) is not type(b) or a != b:
            return False
    return True


# --- times ---------------------------------------------------------------------------------


def _zones() -> list[Any]:
    zones: list[Any] = [
        UTC,
        timezone(timedelta(hours=14)),
        timezone(timedelta(hours=-14)),
        timezone(timedelta(hours=23, minutes=59)),
        timezone(-timedelta(hours=23, minutes=59)),
        timezone(timedelta(hours=5, minutes=45)),
        timezone(timedelta(seconds=1, microseconds=7)),
    ]
    for key in ("America/New_York", "Pacific/Kiritimati", "Australia/Lord_Howe"):
        with contextlib.suppress(ZoneInfoNotFoundError):
            zones.append(ZoneInfo(key))
    return zones


ZONES = st.one_of(
    st.sampled_from(_zones()),
    st.builds(
        timezone,
        st.timedeltas(
            min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
        ),
    ),
)
_NEG14 = timezone(timedelta(hours=-14))
_POS14 = timezone(timedelta(hours=14))
EXPIRES_AT: st.SearchStrategy[object] = st.one_of(
    st.datetimes(timezones=ZONES),
    st.datetimes(min_value=datetime(2030, 1, 1), max_value=datetime(3000, 1, 1), timezones=ZONES),
    st.datetimes(),  # naive
    st.sampled_from(
        [
            datetime.max.replace(tzinfo=_NEG14),
            datetime.max.replace(tzinfo=UTC),  # stored as infinity: refused
            datetime.max.replace(microsecond=999_998, tzinfo=UTC),  # the latest accepted
            datetime.max.replace(tzinfo=timezone(timedelta(microseconds=1))),
            datetime.max.replace(tzinfo=_POS14),
            datetime(9999, 12, 31, 23, 0, tzinfo=UTC),
            datetime(9999, 12, 31, 12, 0, tzinfo=_NEG14),
            datetime.min.replace(tzinfo=_POS14),
            datetime.min.replace(tzinfo=UTC),
            datetime(3000, 1, 1, tzinfo=UTC),
            datetime(2000, 1, 1, tzinfo=UTC),
            datetime(3000, 1, 1),
            "2100-01-01T00:00:00+00:00",
            4102444800,
            date(2100, 1, 1),
        ]
    ),
)
TTLS: st.SearchStrategy[object] = st.one_of(
    st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=36_500)),
    st.timedeltas(),
    st.sampled_from(
        [
            timedelta(0),
            timedelta(microseconds=-1),
            timedelta(days=-1),
            timedelta(seconds=1),
            timedelta(hours=24),
            timedelta(days=365_000),  # the longest accepted
            timedelta(days=365_000, microseconds=1),
            timedelta(days=365_250),
            timedelta(days=2_000_000),
            timedelta(days=2_900_000),
            timedelta(days=3_000_000),
            timedelta.max,
            timedelta.min,
        ]
    ),
    st.sampled_from([3600, 1.5, "1 day", True, "PT1H"]),
)


def _instant(value: datetime) -> timedelta | None:
    """``value``'s UTC instant as a distance from ``datetime.min`` (never overflows)."""
    offset = value.utcoffset()
    if offset is None:
        return None
    return value.replace(tzinfo=None) - datetime.min - offset


def expires_at_verdict(value: object, now: datetime) -> Verdict:
    """An expiry time: an aware ``datetime``, in the future, from 0001-01-01
    00:00:00.000001 to 9999-12-31 23:59:59.999998 in UTC."""
    if not isinstance(value, datetime):
        return Verdict.BAD
    at = _instant(value)
    if at is None or not _EARLIEST <= at <= _LATEST:
        return Verdict.BAD
    ahead = at - (now.replace(tzinfo=None) - datetime.min)
    if ahead <= timedelta(seconds=-5):
        return Verdict.BAD
    if ahead <= timedelta(seconds=5):
        return Verdict.EITHER  # "now" on the client and on the server differ a little
    return Verdict.OK


#: The longest ``ttl``: 365,000 days (docs/limits.md).
MAX_TTL = timedelta(days=365_000)


def ttl_verdict(value: object) -> Verdict:
    """A duration: a positive ``timedelta`` of at most :data:`MAX_TTL`."""
    if type(value) is not timedelta:
        return Verdict.BAD
    if value <= timedelta(0) or value > MAX_TTL:
        return Verdict.BAD
    return Verdict.OK


# --- cursors -------------------------------------------------------------------------------


def forge_cursor(stamp: str, row_id: str) -> str:
    """A cursor in the shape the listings used to hand out (base64 of ``stamp|id``)."""
    import base64

    return base64.urlsafe_b64encode(f"{stamp}|{row_id}".encode()).decode().rstrip("=")


@dataclass(frozen=True)
class Forged:
    """A cursor the library never handed out, made from a time and an id."""

    stamp: str
    row_id: str

    @property
    def cursor(self) -> str:
        return forge_cursor(self.stamp, self.row_id)


_STAMPS = st.one_of(
    st.datetimes(timezones=ZONES).map(datetime.isoformat),
    st.sampled_from(
        [
            "9999-12-31T23:59:59.999999-14:00",
            "9999-12-31T23:59:59+00:00",
            "9999-12-31T00:00:00-00:30",
            "0001-01-01T00:00:00+14:00",
            "0001-01-01T00:00:00+00:00",
            "2020-01-01T00:00:00",
            "infinity",
            "nan",
            "",
        ]
    ),
)
#: Cursors nobody handed out: garbage, and forged ones of every time.
CURSORS: st.SearchStrategy[object] = st.one_of(
    st.builds(Forged, _STAMPS, st.one_of(st.uuids().map(str), st.sampled_from(["x", ""]))),
    HOSTILE_TEXT,
    st.sampled_from(["", "=", "====", "AAAA", "fA", "%%%"]),
    WRONG_TYPES,
)


def cursor_verdict(value: object) -> Verdict:
    """A cursor nobody handed out may be refused (``InvalidInputError`` on ``cursor``) or
    read for what it says; one whose time Python cannot hold in UTC must be refused.
    Not text at all: refused."""
    if value is None:
        return Verdict.OK
    if isinstance(value, Forged):
        try:
            stamp = datetime.fromisoformat(value.stamp)
        except ValueError:
            return Verdict.BAD
        at = _instant(stamp)
        if at is not None and not timedelta(0) <= at <= _PY_SPAN:
            return Verdict.BAD
        return Verdict.EITHER
    if text_verdict(value) is not Verdict.OK:
        return Verdict.BAD
    return Verdict.EITHER
