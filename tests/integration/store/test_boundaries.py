"""The boundaries docs/limits.md states, each tested just inside and just outside
(issue 27, item 8): the latest ``expires_at``, the longest ``ttl``, metadata depth and
integer length, an ``add_many`` token sum, refusal texts that never quote a value, which
error a turn refused twice raises, and ``get_or_create`` naming a missing session."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from sessionstore import (
    ConflictError,
    ContinuationId,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    SessionExpiredError,
    SessionStore,
)
from sessionstore import validation as v

from ...helpers import expire, row_counts

LATEST = datetime(9999, 12, 31, 23, 59, 59, 999_998, tzinfo=UTC)
INT4_MAX = 2**31 - 1


# --- expires_at: the last microsecond of Python's range would be stored as infinity -----


async def test_the_last_microsecond_is_refused_as_expires_at(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """Regression: ``datetime.max`` in UTC was accepted, stored as ``infinity`` and read
    back one microsecond earlier."""
    before = await row_counts(conn)
    for refused in (
        LATEST + timedelta(microseconds=1),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),  # past it in UTC
    ):
        with pytest.raises(InvalidInputError) as caught:
            await store.sessions.create("u", ttl=v.UNSET, expires_at=refused)
        assert caught.value.field == "expires_at"
        assert "9999-12-31 23:59:59.999998" in str(caught.value)
    assert await row_counts(conn) == before


async def test_the_latest_expires_at_reads_back_exactly(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    for accepted in (LATEST, datetime.max.replace(tzinfo=timezone(timedelta(hours=1)))):
        made = await store.sessions.create("u", expires_at=accepted)
        assert made.expires_at == accepted
        assert (await store.sessions.get(made.id)).expires_at == accepted
        stored = await conn.fetchval("SELECT expires_at::text FROM sessions WHERE id = $1", made.id)
        assert stored != "infinity"


def test_the_earliest_time_is_one_microsecond_after_pythons() -> None:
    earliest = datetime.min.replace(microsecond=1, tzinfo=UTC)
    assert v.aware_datetime(earliest, "at") == earliest
    with pytest.raises(InvalidInputError, match=r"0001-01-01 00:00:00\.000001"):
        v.aware_datetime(datetime.min.replace(tzinfo=UTC), "at")
    assert (earliest, LATEST) == (v.EARLIEST, v.LATEST)


# --- ttl: 365,000 days ------------------------------------------------------------------


async def test_ttl_is_at_most_365000_days(store: SessionStore, conn: asyncpg.Connection) -> None:
    longest = timedelta(days=365_000)
    made = await store.sessions.create("u", ttl=longest)
    assert made.expires_at is not None
    assert made.expires_at - made.created_at == longest
    extended = await store.sessions.extend(made.id, longest)
    assert extended.expires_at is not None
    assert extended.expires_at - extended.updated_at == longest
    before = await row_counts(conn)
    too_long = longest + timedelta(microseconds=1)
    calls: list[Awaitable[object]] = [
        store.sessions.create("u", ttl=too_long),
        store.sessions.extend(made.id, too_long),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError, match="365000 days") as caught:
            await call
        assert caught.value.field == "ttl"
    assert await row_counts(conn) == before


# --- metadata: depth in containers, integers of at most 4,300 digits ---------------------


def _nested(containers: int, leaf: object, kind: str = "dict") -> dict[str, Any]:
    """``leaf`` inside ``containers`` containers (the outer object is one)."""
    inner: Any = leaf
    for i in range(containers - 1):
        inner = [inner] if kind == "list" and i % 2 else {"a": inner}
    return {"a": inner}


@pytest.mark.parametrize("kind", ["dict", "list"])
async def test_a_scalar_inside_100_containers_is_100_levels(
    store: SessionStore, conn: asyncpg.Connection, kind: str
) -> None:
    inside = _nested(100, 7, kind)
    made = await store.sessions.create("u", metadata=inside)
    assert (await store.sessions.get(made.id)).metadata == inside
    before = await row_counts(conn)
    for outside in (_nested(101, 7, kind), _nested(100, {}, kind), _nested(100, [], kind)):
        with pytest.raises(InvalidInputError, match="deeper than 100 levels") as caught:
            await store.sessions.create("u", metadata=outside)
        assert caught.value.field == "metadata"
    assert await row_counts(conn) == before


async def test_integers_of_4300_digits_round_trip_and_longer_are_refused(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    longest = 10**4300 - 1
    written = {"big": longest, "neg": -longest, "in": [longest]}
    made = await store.sessions.create("u", metadata=written)
    read = (await store.sessions.get(made.id)).metadata
    assert read == written
    assert type(read["big"]) is int
    before = await row_counts(conn)
    for too_long in (10**4300, -(10**4300), 10**5000):
        with pytest.raises(InvalidInputError, match="at most 4300 digits") as caught:
            await store.sessions.create("u", metadata={"x": [too_long]})
        assert caught.value.field == "metadata"
    assert await row_counts(conn) == before


@pytest.fixture
def low_int_limit() -> Iterator[int]:
    """This process converts at most 1,000 digits between int and text."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(1000)
    try:
        yield 1000
    finally:
        sys.set_int_max_str_digits(old)


def test_a_process_with_a_lower_int_limit_refuses_from_it(low_int_limit: int) -> None:
    assert v.metadata_json({"x": 10**low_int_limit - 1}) is not None
    with pytest.raises(InvalidInputError, match="at most 1000 digits in this process"):
        v.metadata_json({"x": 10**low_int_limit})


# --- add_many: one append's tokens fit an integer -----------------------------------------


@pytest.mark.parametrize("in_session", [False, True])
async def test_add_many_tokens_sum_to_at_most_int4(
    store: SessionStore, conn: asyncpg.Connection, in_session: bool
) -> None:
    session = await store.sessions.create("u")
    sid = session.id if in_session else None
    conv = await store.conversations.get_or_create("c", session_id=sid)
    before = await row_counts(conn)
    with pytest.raises(InvalidInputError, match="tokens must sum to at most 2147483647") as caught:
        await store.messages.add_many(
            conv.id, [("user", "a", None, INT4_MAX), ("user", "b", None, 1)], session_id=sid
        )
    assert caught.value.field == "messages"
    assert await row_counts(conn) == before
    added = await store.messages.add_many(
        conv.id, [("user", "a", None, INT4_MAX - 1), ("user", "b", None, 1)], session_id=sid
    )
    assert [m.tokens for m in added] == [INT4_MAX - 1, 1]
    assert (await store.conversations.get(conv.id)).total_tokens == INT4_MAX
    if in_session:
        assert (await store.sessions.get(session.id)).total_tokens == INT4_MAX


# --- refusals name the type, never the value ------------------------------------------------

PRIVATE = "my private note"
#: Values refused by every integer argument; none may appear in the error text.
REFUSED = [PRIVATE, 987_654_321_987_654_321, -987_654_321_987, 10**5000]
Sweep = Callable[[SessionStore, dict[str, Any], Any], Awaitable[object]]
# Every integer (count, size, version, position) argument of the public API.
SWEEP: list[tuple[str, str, Sweep]] = [
    ("sessions.list", "limit", lambda s, ids, x: s.sessions.list(user_id="u", limit=x)),
    ("cleanup_expired", "batch_size", lambda s, ids, x: s.sessions.cleanup_expired(batch_size=x)),
    ("update", "expected_version", lambda s, i, x: s.sessions.update(i["s"], expected_version=x)),
    ("record_turn", "tokens", lambda s, ids, x: s.sessions.record_turn(ids["s"], tokens=x)),
    (
        "list_for_session",
        "limit",
        lambda s, i, x: s.conversations.list_for_session(i["s"], limit=x),
    ),
    ("history", "limit", lambda s, ids, x: s.messages.history(ids["c"], limit=x)),
    ("history", "before", lambda s, ids, x: s.messages.history(ids["c"], before=x)),
    ("add", "tokens", lambda s, ids, x: s.messages.add(ids["c"], "user", "hi", tokens=x)),
    (
        "add_many",
        "messages[0].tokens",
        lambda s, ids, x: s.messages.add_many(ids["c"], [("user", "hi", None, x)]),
    ),
    ("enqueue", "tokens", lambda s, ids, x: s.messages.enqueue(ids["c"], "user", "hi", tokens=x)),
    ("add_turn", "tokens", lambda s, ids, x: s.add_turn("c", "user", "hi", tokens=x)),
    ("add_turn", "context", lambda s, ids, x: s.add_turn("c", "user", "hi", context=x)),
    ("enqueue_turn", "tokens", lambda s, ids, x: s.enqueue_turn("c", "user", "hi", tokens=x)),
    ("purge_user", "batch_size", lambda s, ids, x: s.purge_user("u", batch_size=x)),
]


@pytest.mark.parametrize("value", REFUSED, ids=["text", "large", "negative", "5000-digit"])
@pytest.mark.parametrize(("method", "field", "call"), SWEEP, ids=[f"{m}-{f}" for m, f, _ in SWEEP])
async def test_integer_refusals_never_quote_the_value(
    store: SessionStore,
    conn: asyncpg.Connection,
    method: str,
    field: str,
    call: Sweep,
    value: object,
) -> None:
    """Regression: ``sessions.list(limit="my private note")`` said ``got 'my private
    note'``; a 5,000-digit int raised ``ValueError`` (Python would not print it)."""
    session = await store.sessions.create("u")
    conv = await store.conversations.get_or_create("c", session_id=session.id)
    await store.messages.add(conv.id, "user", "seed")
    before = await row_counts(conn)
    with pytest.raises(InvalidInputError) as caught:
        await call(store, {"s": session.id, "c": conv.id}, value)
    text = str(caught.value)
    assert caught.value.field == field, text
    for quoted in (PRIVATE, "987654321987", "0000000000"):
        assert quoted not in text, text
    assert await row_counts(conn) == before


# --- a turn refused by its session and by its conversation: the session's error -------------


async def _other_sessions_conversation(store: SessionStore, cont: str) -> None:
    owner = await store.sessions.create("owner")
    await store.conversations.get_or_create(cont, session_id=owner.id)


async def _session_in(store: SessionStore, conn: asyncpg.Connection, state: str) -> UUID:
    if state == "missing":
        return uuid4()
    session = await store.sessions.create("u")
    if state == "paused":
        await store.sessions.pause(session.id)
    elif state == "completed":
        await store.sessions.complete(session.id)
    elif state == "expired":
        await expire(conn, session.id)
    return session.id


WINS: dict[str, type[Exception]] = {
    "active": ConflictError,  # just inside: only ownership refuses
    "missing": NotFoundError,
    "paused": InvalidStateError,
    "completed": InvalidStateError,
    "expired": SessionExpiredError,
}


@pytest.mark.parametrize("state", list(WINS))
async def test_the_sessions_refusal_wins_over_ownership(
    store: SessionStore, conn: asyncpg.Connection, state: str
) -> None:
    await _other_sessions_conversation(store, "theirs")
    sid = await _session_in(store, conn, state)
    before = await row_counts(conn)
    with pytest.raises(WINS[state]):
        await store.add_turn("theirs", "user", "hi", session_id=sid)
    with pytest.raises(WINS[state]):
        await store.messages.add_many(ContinuationId("theirs"), [("user", "hi")], session_id=sid)
    await store.enqueue_turn("theirs", "user", "hi", session_id=sid)
    await store.flush()
    (failed,) = store.failed_writes()
    owner = state == "active"
    assert ("another session" in failed.reason) is owner, failed.reason
    assert ("session not found" in failed.reason) is not owner, failed.reason
    assert await row_counts(conn) == before


# --- get_or_create naming a session that does not exist -------------------------------------


@pytest.mark.parametrize("bound", ["unbound", "other", "new"])
async def test_get_or_create_naming_a_missing_session_is_not_found(
    store: SessionStore, conn: asyncpg.Connection, bound: str
) -> None:
    """Regression: an existing unbound conversation was returned, although the docstring
    promised ``NotFoundError``."""
    if bound == "unbound":
        await store.conversations.get_or_create("c")
    elif bound == "other":
        await _other_sessions_conversation(store, "c")
    missing = uuid4()
    before = await row_counts(conn)
    with pytest.raises(NotFoundError, match=f"session {missing} not found"):
        await store.conversations.get_or_create("c", session_id=missing)
    assert await row_counts(conn) == before


async def test_get_or_create_naming_an_existing_session_returns_the_conversation(
    store: SessionStore,
) -> None:
    """Just inside: an existing session of any status; an unbound conversation is returned
    as it is (not bound), one bound to that session too."""
    loose = await store.conversations.get_or_create("loose")
    session = await store.sessions.create("u")
    await store.sessions.pause(session.id)
    again = await store.conversations.get_or_create("loose", session_id=session.id)
    assert (again.id, again.session_id) == (loose.id, None)
    mine = await store.conversations.get_or_create("mine", session_id=session.id)
    assert (await store.conversations.get_or_create("mine", session_id=session.id)) == mine
