"""Bad input raises InvalidInputError naming the field, and writes nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from sessionstore import InvalidInputError, SessionStore

from .helpers import row_counts

# The store is typed Any here: these calls break the signatures on purpose.
Call = Callable[[Any, dict[str, Any]], Awaitable[object]]

NOT_UUID = "not-a-uuid"


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
    assert isinstance(info.value, ValueError)
    assert await row_counts(conn) == before
    assert await conn.fetch("SELECT * FROM sessions ORDER BY id") == snapshot
