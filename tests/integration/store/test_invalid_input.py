"""Bad input raises InvalidInputError naming the field, and writes nothing."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from sessionstore import InvalidInputError, SessionStore

from ...helpers import row_counts

# The store is typed Any here: these calls break the signatures on purpose.
Call = Callable[[Any, dict[str, Any]], Awaitable[object]]

NOT_UUID = "not-a-uuid"
#: Refused values carry this; no error text may repeat it.
CANARY = "CANARY-PRIVATE-TEXT"
LONE = CANARY + "\ud800"
FAR_WEST = timezone(timedelta(hours=-14))


def _nested(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth - 1):
        node["a"] = {}
        node = node["a"]
    return root


def _forged_cursor(stamp: str) -> str:
    raw = f"{stamp}|00000000-0000-0000-0000-000000000000".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class Unserialisable:
    pass


CASES: list[tuple[str, str, Call]] = [
    ("session id not a UUID", "session_id", lambda st, ids: st.sessions.get(NOT_UUID)),
    ("session id wrong type", "session_id", lambda st, ids: st.sessions.record_turn(42)),
    (
        "conversation id not a UUID",
        "conversation_id",
        lambda st, ids: st.messages.add(NOT_UUID, "user", "x"),
    ),
    ("history id not a UUID", "conversation_id", lambda st, ids: st.messages.history("123")),
    ("unknown role", "role", lambda st, ids: st.messages.add(ids["c"], "robot", "x")),
    ("unknown role in a turn", "role", lambda st, ids: st.add_turn("c", "wizard", "x")),
    ("unknown status", "status", lambda st, ids: st.sessions.list(user_id="u", status="sleeping")),
    ("empty user_id", "user_id", lambda st, ids: st.sessions.create("")),
    ("blank user_id", "user_id", lambda st, ids: st.sessions.create("   ")),
    ("user_id not text", "user_id", lambda st, ids: st.sessions.create(7)),
    ("too long user_id", "user_id", lambda st, ids: st.sessions.create("u" * 256)),
    ("NUL in content", "content", lambda st, ids: st.messages.add(ids["c"], "user", "a\x00b")),
    ("NUL in turn content", "content", lambda st, ids: st.add_turn("c", "user", "\x00")),
    ("NUL in title", "title", lambda st, ids: st.sessions.create("u", title="t\x00")),
    ("content not text", "content", lambda st, ids: st.messages.add(ids["c"], "user", b"x")),
    (
        "metadata not JSON",
        "metadata",
        lambda st, ids: st.sessions.create("u", metadata={"x": Unserialisable()}),
    ),
    (
        "metadata NaN",
        "metadata",
        lambda st, ids: st.messages.add(ids["c"], "user", "x", metadata={"x": float("nan")}),
    ),
    (
        "metadata not an object",
        "metadata",
        lambda st, ids: st.sessions.create("u", metadata=[1, 2]),
    ),
    (
        "metadata with \\u0000",
        "metadata",
        lambda st, ids: st.sessions.update(ids["s"], metadata={"x": "\x00"}),
    ),
    (
        "metadata non-string key",
        "metadata",
        lambda st, ids: st.conversations.get_or_create("c", metadata={1: "x"}),
    ),
    (
        "negative tokens",
        "tokens",
        lambda st, ids: st.messages.add(ids["c"], "user", "x", tokens=-1),
    ),
    ("negative turn tokens", "tokens", lambda st, ids: st.add_turn("c", "user", "x", tokens=-5)),
    (
        "negative record_turn tokens",
        "tokens",
        lambda st, ids: st.sessions.record_turn(ids["s"], tokens=-1),
    ),
    (
        "boolean tokens",
        "tokens",
        lambda st, ids: st.messages.add(ids["c"], "user", "x", tokens=True),
    ),
    (
        "tokens past int4",
        "tokens",
        lambda st, ids: st.messages.add(ids["c"], "user", "x", tokens=2**31),
    ),
    ("limit zero", "limit", lambda st, ids: st.messages.history(ids["c"], limit=0)),
    ("limit too large", "limit", lambda st, ids: st.sessions.list(user_id="u", limit=1001)),
    (
        "limit not int",
        "limit",
        lambda st, ids: st.conversations.list_for_session(ids["s"], limit="5"),
    ),
    ("before zero", "before", lambda st, ids: st.messages.history(ids["c"], before=0)),
    (
        "naive expires_at",
        "expires_at",
        lambda st, ids: st.sessions.create("u", expires_at=datetime(2030, 1, 1)),
    ),
    (
        "expires_at in the past",
        "expires_at",
        lambda st, ids: st.sessions.create(
            "u", expires_at=datetime.fromisoformat("2000-01-01T00:00:00+00:00")
        ),
    ),
    ("negative ttl", "ttl", lambda st, ids: st.sessions.create("u", ttl=timedelta(seconds=-1))),
    ("ttl not a timedelta", "ttl", lambda st, ids: st.sessions.create("u", ttl=60)),
    (
        "bad expected_version",
        "expected_version",
        lambda st, ids: st.sessions.update(ids["s"], title="x", expected_version=0),
    ),
    (
        "empty continuation_id",
        "continuation_id",
        lambda st, ids: st.conversations.get_or_create(""),
    ),
    ("empty turn continuation_id", "continuation_id", lambda st, ids: st.add_turn("", "user", "x")),
    (
        "bad cursor",
        "cursor",
        lambda st, ids: st.conversations.list_for_session(ids["s"], cursor="%%%"),
    ),
    ("empty add_many", "messages", lambda st, ids: st.messages.add_many(ids["c"], [])),
    (
        "add_many item not a tuple",
        "messages[0]",
        lambda st, ids: st.messages.add_many(ids["c"], ["x"]),
    ),
    # issue 13, item 1: out-of-range times are refused before anything is committed
    (
        "ttl past year 9999",
        "ttl",
        lambda st, ids: st.sessions.create("u", ttl=timedelta(days=3_000_000)),
    ),
    ("ttl max", "ttl", lambda st, ids: st.sessions.create("u", ttl=timedelta.max)),
    (
        "extend past year 9999",
        "ttl",
        lambda st, ids: st.sessions.extend(ids["s"], timedelta(days=3_000_000)),
    ),
    (
        "expires_at past year 9999 in UTC",
        "expires_at",
        lambda st, ids: st.sessions.create("u", expires_at=datetime.max.replace(tzinfo=FAR_WEST)),
    ),
    (
        "cursor past year 9999 in UTC",
        "cursor",
        lambda st, ids: st.sessions.list(
            user_id="u", cursor=_forged_cursor("9999-12-31T23:59:59-14:00")
        ),
    ),
    # item 2: lone surrogates, in every kind of text
    ("surrogate in content", "content", lambda st, ids: st.messages.add(ids["c"], "user", LONE)),
    ("surrogate in turn content", "content", lambda st, ids: st.add_turn("c", "user", LONE)),
    (
        "surrogate in enqueued content",
        "content",
        lambda st, ids: st.messages.enqueue(ids["c"], "user", LONE),
    ),
    (
        "surrogate in enqueued turn",
        "content",
        lambda st, ids: st.enqueue_turn("c", "user", LONE),
    ),
    ("surrogate in title", "title", lambda st, ids: st.sessions.create("u", title=LONE)),
    ("surrogate in user_id", "user_id", lambda st, ids: st.sessions.create(LONE)),
    (
        "surrogate in continuation_id",
        "continuation_id",
        lambda st, ids: st.conversations.get_or_create(LONE),
    ),
    (
        "surrogate in metadata",
        "metadata",
        lambda st, ids: st.sessions.create("u", metadata={"k": LONE}),
    ),
    (
        "surrogate in a metadata key",
        "metadata",
        lambda st, ids: st.sessions.create("u", metadata={LONE: 1}),
    ),
    (
        "surrogate in as_user",
        "user_id",
        lambda st, ids: st.as_user(LONE).sessions.list(user_id=None),
    ),
    # item 3: depth
    (
        "metadata 1,000 deep",
        "metadata",
        lambda st, ids: st.sessions.create("u", metadata=_nested(1000)),
    ),
    # item 5: nothing silently changed
    (
        "nested non-string key",
        "metadata",
        lambda st, ids: st.sessions.create("u", metadata={"a": {1: "x", "1": "y"}}),
    ),
    (
        "float read back as int",
        "metadata",
        lambda st, ids: st.sessions.create("u", metadata={"x": 1e300}),
    ),
    (
        "tuple read back as list",
        "metadata",
        lambda st, ids: st.sessions.create("u", metadata={"x": (1, 2)}),
    ),
    (
        "cleanup batch_size zero",
        "batch_size",
        lambda st, ids: st.sessions.cleanup_expired(batch_size=0),
    ),
]


@pytest.mark.parametrize(
    ("field", "call"), [(f, c) for _, f, c in CASES], ids=[n for n, _, _ in CASES]
)
async def test_invalid_input_names_the_field_and_writes_nothing(
    store: SessionStore, conn: asyncpg.Connection, field: str, call: Call
) -> None:
    s = await store.sessions.create("owner", metadata={"keep": True})
    c = await store.conversations.get_or_create("existing", session_id=s.id)
    before = await row_counts(conn)
    snapshot = await conn.fetch("SELECT * FROM sessions ORDER BY id")
    with pytest.raises(InvalidInputError) as info:
        await call(store, {"s": s.id, "c": c.id})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert CANARY not in str(info.value)
    assert isinstance(info.value, ValueError)
    assert await row_counts(conn) == before
    assert await conn.fetch("SELECT * FROM sessions ORDER BY id") == snapshot


async def test_metadata_that_looks_like_an_escape_round_trips(store: SessionStore) -> None:
    """Item 4: the six characters backslash-u-0000 are text, not a NUL."""
    literal = {"path": "C:\\u0000", "k\\u0000": ["\\u0000"]}
    session = await store.sessions.create("u", title="\\u0000", metadata=literal)
    assert (await store.sessions.get(session.id)).metadata == literal
    assert store.as_user("user\\u0000").user_id == "user\\u0000"


async def test_metadata_round_trips_at_the_edges(store: SessionStore) -> None:
    edges = {
        "deep": _nested(99),  # with `edges` itself: 100 levels, the most allowed
        "small": 5e-324,
        "below_1e16": 9999999999999998.0,
        "big_int": 10**300,
        "unicode": "é😀\u2028",
        "nested": {"1": [1, 2.5, None, True, {"": ""}]},
    }
    session = await store.sessions.create("u", metadata=edges)
    store_read = (await store.sessions.get(session.id)).metadata
    assert store_read == edges
    assert type(store_read["below_1e16"]) is float
    assert type(store_read["big_int"]) is int
