"""Fuzz properties of ``store.sessions``: create, update, the counters, the lifecycle
transitions, listing with cursors, and cleanup of expired sessions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import (
    ConflictError,
    InvalidStateError,
    NotFoundError,
    Page,
    Session,
    SessionExpiredError,
    SessionStore,
)

from ..strategies import (
    CURSORS,
    EXPIRES_AT,
    IDENTIFIERS,
    INT4_MAX,
    INTS,
    METADATA,
    TTLS,
    WRONG_TYPES,
    Forged,
    Verdict,
    cursor_verdict,
    expires_at_verdict,
    identifier_verdict,
    int_verdict,
    real,
    same_json,
    text_verdict,
    ttl_verdict,
)
from .world import (
    BAD,
    CALLBACKS,
    CASES,
    CREATED,
    LIMITS,
    NAMED_METADATA,
    NAMED_TEXT,
    OK,
    OMITTED,
    STATES,
    TITLES,
    C,
    Expect,
    S,
    World,
    callback_verdict,
    cases,
    check_session,
    cursor_value,
    fuzz,
    ids,
    limit_verdict,
    named,
    resolve,
    session_arg,
    walk,
)

_NEG14 = timezone(timedelta(hours=-14))


# --- sessions ----------------------------------------------------------------------------------


# What both the generated and the pinned test of this property draw.
_SESSIONS_CREATE_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    user_id=IDENTIFIERS,
    title=TITLES,
    metadata=METADATA,
    ttl=st.one_of(st.just(OMITTED), st.none(), TTLS),
    expires_at=st.one_of(st.just(OMITTED), st.just(OMITTED), EXPIRES_AT),
)


@fuzz(300)
@given(**_SESSIONS_CREATE_DRAWN)
async def test_sessions_create(
    store: SessionStore,
    conn: asyncpg.Connection,
    user_id: object,
    title: object,
    metadata: object,
    ttl: object,
    expires_at: object,
) -> None:
    await check_sessions_create(store, conn, user_id, title, metadata, ttl, expires_at)


@named
@cases(
    {"user_id": "u", "title": None, "metadata": None, "ttl": OMITTED, "expires_at": OMITTED},
    *NAMED_METADATA,
    *({"title": t} for t in NAMED_TEXT),
    {"user_id": "x" * 256},
    {"user_id": " \t"},
    {"ttl": timedelta(days=3_000_000)},
    {"ttl": timedelta.max},
    {"ttl": timedelta.min},
    {"ttl": timedelta(days=36_500)},
    {"ttl": timedelta(days=365_000)},
    {"ttl": timedelta(days=365_000, microseconds=1)},
    {"expires_at": datetime.max.replace(tzinfo=UTC)},
    {"expires_at": datetime.max.replace(microsecond=999_998, tzinfo=UTC)},
    {"expires_at": datetime.max.replace(tzinfo=_NEG14)},
    {"expires_at": datetime(9999, 12, 31, 12, tzinfo=_NEG14)},
    {"expires_at": datetime.min.replace(tzinfo=timezone(timedelta(hours=14)))},
    {"expires_at": datetime(2999, 1, 1)},
    {"expires_at": datetime(2999, 1, 1, tzinfo=UTC), "ttl": None},
)
@given(**_SESSIONS_CREATE_DRAWN)
async def test_sessions_create_named(
    store: SessionStore,
    conn: asyncpg.Connection,
    user_id: object,
    title: object,
    metadata: object,
    ttl: object,
    expires_at: object,
) -> None:
    """The cases the issue names, pinned (reported apart from the generated ones)."""
    await check_sessions_create(store, conn, user_id, title, metadata, ttl, expires_at)


async def check_sessions_create(
    store: SessionStore,
    conn: asyncpg.Connection,
    user_id: object,
    title: object,
    metadata: object,
    ttl: object,
    expires_at: object,
) -> None:
    CASES["sessions.create"] += 1
    metadata = real(metadata)
    world = World(store, conn)
    now = datetime.now(UTC)
    expect = (
        Expect()
        .arg("user_id", identifier_verdict(user_id))
        .arg("title", text_verdict(title, optional=True))
        .arg("metadata", await world.metadata_verdict(metadata))
    )
    options: dict[str, object] = {"title": title, "metadata": metadata}
    if ttl is not OMITTED:
        options["ttl"] = ttl
    if expires_at is not OMITTED:
        options["expires_at"] = expires_at
        if ttl is not OMITTED:
            expect.arg(("ttl", "expires_at"), BAD)  # both: contradictory
        elif expires_at is not None:
            expect.arg("expires_at", expires_at_verdict(expires_at, now))
    elif ttl is not OMITTED and ttl is not None:
        expect.arg("ttl", ttl_verdict(ttl))

    out = await world.attempt(lambda: world.api.sessions.create(user_id, **options), expect)
    if not out.ok:
        return
    session: Session = out.result
    row = await world.row("sessions", session.id)
    assert row is not None
    check_session(session, row)
    assert session.user_id == str(user_id)
    assert session.title == title
    assert same_json({} if metadata is None else metadata, session.metadata), "metadata"
    assert (session.turn_count, session.total_tokens) == (0, 0)
    if isinstance(expires_at, datetime):
        assert session.expires_at == expires_at
    elif ttl is None:
        assert session.expires_at is None
    else:
        span = store.config.default_ttl if ttl is OMITTED else ttl
        assert session.expires_at is not None
        assert session.expires_at - session.created_at == span, "expires_at != created + ttl"
    again = await store.sessions.get(session.id)
    assert again.model_dump(exclude={"status"}) == session.model_dump(exclude={"status"})


@fuzz(180)
@given(
    target=ids("target"),
    state=STATES,
    title=st.one_of(st.just(OMITTED), TITLES),
    metadata=METADATA,
    version=st.one_of(st.none(), st.sampled_from(["current", "stale"]), INTS),
)
async def test_sessions_update(
    store: SessionStore,
    conn: asyncpg.Connection,
    target: object,
    state: str,
    title: object,
    metadata: object,
    version: object,
) -> None:
    CASES["sessions.update"] += 1
    metadata = real(metadata)
    world = World(store, conn)
    sid = await world.session(state=state)
    value = resolve(target, {"target": sid})
    verdict, found = await session_arg(world, value)
    before = await world.row("sessions", found) if found else None
    current = 0 if before is None else int(before["version"])
    named_versions = {"current": current, "stale": current + 1}
    expected_version = named_versions.get(version, version) if type(version) is str else version
    expect = (
        Expect().arg("session_id", verdict).arg("metadata", await world.metadata_verdict(metadata))
    )
    expect.arg("expected_version", int_verdict(expected_version, 1, INT4_MAX, optional=True))
    options: dict[str, object] = {"metadata": metadata, "expected_version": expected_version}
    if title is not OMITTED:
        options["title"] = title
        expect.arg("title", text_verdict(title, optional=True))
    situation = await world.session_state(found)
    if situation == "missing":
        expect.require(NotFoundError)
    elif situation == "expired":
        expect.require(SessionExpiredError, InvalidStateError)
        expect.allow(ConflictError)
    elif expected_version is not None and expected_version != current:
        expect.require(ConflictError)
    elif situation == "completed":
        expect.allow(InvalidStateError)  # completed is terminal: updating it may be refused

    out = await world.attempt(lambda: world.api.sessions.update(value, **options), expect)
    if not out.ok:
        return
    assert before is not None
    session: Session = out.result
    row = await world.row("sessions", session.id)
    assert row is not None
    check_session(session, row)
    assert session.title == (before["title"] if title is OMITTED else title)
    merged = json.loads(before["metadata"])
    if metadata is not None:
        assert isinstance(metadata, Mapping)
        merged.update(metadata)
    assert same_json(merged, session.metadata), "metadata did not merge exactly"
    assert session.version in (current, current + 1)
    assert (await store.sessions.get(sid)).model_dump(exclude={"status"}) == session.model_dump(
        exclude={"status"}
    )


@fuzz(160)
@given(
    target=ids("target"),
    state=STATES,
    op=st.sampled_from(["record_turn", "record_turn", "extend"]),
    tokens=st.one_of(st.just(OMITTED), INTS),
    ttl=TTLS,
)
async def test_sessions_counters(
    store: SessionStore,
    conn: asyncpg.Connection,
    target: object,
    state: str,
    op: str,
    tokens: object,
    ttl: object,
) -> None:
    """``record_turn`` and ``extend``."""
    CASES["sessions.counters"] += 1
    world = World(store, conn)
    sid = await world.session(state=state)
    value = resolve(target, {"target": sid})
    verdict, found = await session_arg(world, value)
    before = await world.row("sessions", found) if found else None
    situation = await world.session_state(found)
    expect = Expect().arg("session_id", verdict)
    if situation == "missing":
        expect.require(NotFoundError)
    elif situation == "expired":
        expect.require(SessionExpiredError, InvalidStateError)

    if op == "record_turn":
        options = {} if tokens is OMITTED else {"tokens": tokens}
        if tokens is not OMITTED:
            expect.arg("tokens", int_verdict(tokens, 0, INT4_MAX))
        if situation in ("paused", "completed"):
            expect.require(InvalidStateError)
        out = await world.attempt(lambda: world.api.sessions.record_turn(value, **options), expect)
    else:
        expect.arg("ttl", ttl_verdict(ttl))
        if situation == "completed":
            expect.require(InvalidStateError)
        out = await world.attempt(lambda: world.api.sessions.extend(value, ttl), expect)
    if not out.ok:
        return
    assert before is not None
    session: Session = out.result
    row = await world.row("sessions", session.id)
    assert row is not None
    check_session(session, row)
    if op == "record_turn":
        added = 0 if tokens is OMITTED else tokens
        assert session.turn_count == before["turn_count"] + 1
        assert session.total_tokens == before["total_tokens"] + added
    else:
        assert session.expires_at is not None
        assert session.expires_at - session.updated_at == ttl, "expires_at != now + ttl"


@fuzz(180)
@given(
    target=ids("target"),
    state=STATES,
    op=st.sampled_from(["get", "pause", "resume", "complete", "delete"]),
    keep=st.one_of(st.just(OMITTED), st.booleans(), WRONG_TYPES, st.sampled_from(["false", 1])),
)
async def test_sessions_lifecycle(
    store: SessionStore,
    conn: asyncpg.Connection,
    target: object,
    state: str,
    op: str,
    keep: object,
) -> None:
    """``get``, ``pause``, ``resume``, ``complete``, ``delete``."""
    CASES["sessions.lifecycle"] += 1
    world = World(store, conn)
    (sid,), (cid,) = await world.build([S(state=state)], [C(session=0, messages=2)])
    value = resolve(target, {"target": sid})
    verdict, found = await session_arg(world, value)
    situation = await world.session_state(found)
    expect = Expect().arg("session_id", verdict)
    if situation == "missing":
        expect.require(NotFoundError)
    # Which states each transition starts from; the same state again may be a no-op.
    sources = {"pause": ("active",), "resume": ("paused",), "complete": ("active", "paused")}
    targets = {"pause": "paused", "resume": "active", "complete": "completed"}
    if op in sources and situation != "missing" and situation not in sources[op]:
        if situation == "expired":
            expect.require(SessionExpiredError, InvalidStateError)
        elif situation == targets[op]:
            expect.allow(InvalidStateError)
        else:
            expect.require(InvalidStateError)
    options: dict[str, object] = {}
    if op == "delete" and keep is not OMITTED:
        options["keep_conversations"] = keep
        expect.arg("keep_conversations", OK if isinstance(keep, bool) else BAD)

    method = getattr(world.api.sessions, op)
    out = await world.attempt(lambda: method(value, **options), expect)
    if not out.ok:
        return
    assert found is not None
    row = await world.row("sessions", found)
    if op == "delete":
        assert out.result is None
        assert row is None, "deleted session still there"
        conversation = await world.row("conversations", cid)
        if found == sid and keep is True:
            assert conversation is not None
            assert conversation["session_id"] is None
            assert await world.messages_of(cid) == 2
        elif found == sid:
            assert conversation is None, "the session's conversation survived its delete"
        return
    assert row is not None
    session: Session = out.result
    check_session(session, row)
    if op == "get":
        assert session.status.value == situation
    else:
        assert session.status.value == targets[op]


# --- listings and cursors ----------------------------------------------------------------------

SESSION_STATUS_SQL = (
    "CASE WHEN status IN ('active', 'paused') AND expires_at <= now()"
    " THEN 'expired' ELSE status END"
)
LIST_SESSIONS_SQL = f"""
SELECT id FROM sessions
WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR {SESSION_STATUS_SQL} = $2)
ORDER BY created_at DESC, id DESC
"""
STATUSES_ARG = st.one_of(
    st.none(),
    st.sampled_from(["active", "paused", "completed", "expired"]),
    st.sampled_from(["ACTIVE", "sleeping", "", "active\x00"]),
    WRONG_TYPES,
)


def status_verdict(value: object) -> Verdict:
    ok = isinstance(value, str) and value in ("active", "paused", "completed", "expired")
    return OK if value is None or ok else BAD


# What both the generated and the pinned test of this property draw.
_SESSIONS_LIST_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    created=CREATED,
    user=st.one_of(st.just("owner"), st.just("owner"), st.none(), IDENTIFIERS),
    status=STATUSES_ARG,
    limit=LIMITS,
    cursor=st.one_of(st.none(), st.just("real"), st.just("real"), CURSORS),
)


@fuzz(160)
@given(**_SESSIONS_LIST_DRAWN)
async def test_sessions_list(
    store: SessionStore,
    conn: asyncpg.Connection,
    created: list[int],
    user: object,
    status: object,
    limit: object,
    cursor: object,
) -> None:
    """``sessions.list``: pages, keyset cursors (real and forged)."""
    await check_sessions_list(store, conn, created, user, status, limit, cursor)


@named
@cases(
    {"created": [0, 1], "user": "owner", "status": None, "limit": 1, "cursor": None},
    {"cursor": Forged("9999-12-31T23:59:59.999999-14:00", str(UUID(int=1)))},
    {"cursor": Forged("9999-12-31T23:59:59+00:00", str(UUID(int=1)))},
    {"cursor": Forged("0001-01-01T00:00:00+14:00", str(UUID(int=1)))},
    {"cursor": "real", "limit": 1001},
    {"limit": 0},
)
@given(**_SESSIONS_LIST_DRAWN)
async def test_sessions_list_named(
    store: SessionStore,
    conn: asyncpg.Connection,
    created: list[int],
    user: object,
    status: object,
    limit: object,
    cursor: object,
) -> None:
    """The cases the issue names, pinned (reported apart from the generated ones)."""
    await check_sessions_list(store, conn, created, user, status, limit, cursor)


async def check_sessions_list(
    store: SessionStore,
    conn: asyncpg.Connection,
    created: list[int],
    user: object,
    status: object,
    limit: object,
    cursor: object,
) -> None:
    CASES["sessions.list"] += 1
    world = World(store, conn)
    owner = world.fresh("lister")
    base = datetime(2024, 1, 1, tzinfo=UTC)
    states = ("active", "paused", "completed", "expired")
    await world.build(
        [
            S(owner, states[i % len(states)], base + timedelta(seconds=offset))
            for i, offset in enumerate(created)
        ]
    )
    user_id = owner if user == "owner" else user
    expect = Expect().arg("status", status_verdict(status)).arg("limit", limit_verdict(limit))
    if user_id is not None:
        expect.arg("user_id", identifier_verdict(user_id))
    value: object = cursor_value(cursor)
    filters = (
        user_id if text_verdict(user_id) is OK else None,
        status if status_verdict(status) is OK else None,
    )
    expected = [r["id"] for r in await conn.fetch(LIST_SESSIONS_SQL, *filters)]
    after = 0
    if cursor == "real":
        value = None
        if user_id == owner and status_verdict(status) is OK and len(expected) > 1:
            first = await world.api.sessions.list(user_id=owner, status=status, limit=1)
            value, after = first.next_cursor, 1
    else:
        expect.arg("cursor", cursor_verdict(cursor))

    out = await world.attempt(
        lambda: world.api.sessions.list(user_id=user_id, status=status, limit=limit, cursor=value),
        expect,
    )
    if not out.ok:
        return
    page: Page[Session] = out.result
    assert isinstance(limit, int)
    got = [s.id for s in page.items]
    if isinstance(cursor, Forged) or (cursor is not None and cursor != "real"):
        assert set(got) <= set(expected), "a forged cursor listed rows outside the filter"
        return
    assert got == expected[after : after + limit], "the page is not the listing's next rows"
    for s in page.items:
        row = await world.row("sessions", s.id)
        assert row is not None
        check_session(s, row)
    if user_id == owner and after == 0:

        async def following(c: str) -> Page[Any]:
            got: Page[Any] = await world.api.sessions.list(
                user_id=owner, status=status, limit=limit, cursor=c
            )
            return got

        assert await walk(page, following, limit, len(expected) + 2) == expected


# --- cleanup and purge ---------------------------------------------------------------------------

DUE_SQL = (
    "SELECT id FROM sessions"
    " WHERE expires_at IS NOT NULL AND expires_at < now() AND status <> 'completed'"
)


@fuzz(80)
@given(
    due=st.integers(0, 4),
    op=st.sampled_from(["cleanup_expired", "cleanup_expired", "count_expired"]),
    batch_size=st.one_of(st.just(OMITTED), st.integers(1, 3), INTS),
    on_progress=CALLBACKS,
    delete_conversations=st.one_of(st.just(OMITTED), st.booleans(), WRONG_TYPES),
)
async def test_sessions_cleanup(
    store: SessionStore,
    conn: asyncpg.Connection,
    due: int,
    op: str,
    batch_size: object,
    on_progress: object,
    delete_conversations: object,
) -> None:
    """``cleanup_expired`` and ``count_expired``."""
    CASES["sessions.cleanup"] += 1
    world = World(store, conn)
    sids, conversations = await world.build(
        [S(state="completed-past"), *(S(state="expired") for _ in range(due))],
        [C(session=i + 1, messages=1) for i in range(due)],
    )
    kept, doomed = sids[0], sids[1:]
    due_before = {r["id"] for r in await conn.fetch(DUE_SQL)}
    assert set(doomed) <= due_before
    if op == "count_expired":
        out = await world.attempt(lambda: world.api.sessions.count_expired(), Expect())
        assert out.result == len(due_before)
        return
    expect = Expect()
    options: dict[str, object] = {}
    progress: list[int] = []
    if batch_size is not OMITTED:
        options["batch_size"] = batch_size
        expect.arg("batch_size", limit_verdict(batch_size, 1000))
    if on_progress is not OMITTED:
        options["on_progress"] = progress.append if on_progress == "record" else on_progress
        expect.arg("on_progress", callback_verdict(on_progress))
    if delete_conversations is not OMITTED:
        options["delete_conversations"] = delete_conversations
        expect.arg("delete_conversations", OK if isinstance(delete_conversations, bool) else BAD)

    out = await world.attempt(lambda: world.api.sessions.cleanup_expired(**options), expect)
    if not out.ok:
        return
    assert out.result == len(due_before), "cleanup_expired did not count what was due"
    assert not await conn.fetch(DUE_SQL), "expired sessions left after cleanup"
    assert await world.row("sessions", kept) is not None, "a completed session was deleted"
    for cid in conversations:
        row = await world.row("conversations", cid)
        if delete_conversations is True:
            assert row is None
        else:
            assert row is not None
            assert row["session_id"] is None
            assert await world.messages_of(cid) == 1
    assert progress == sorted(progress)
    assert all(n <= out.result for n in progress)
    if on_progress == "record" and out.result:
        assert progress, "on_progress was never called"
        assert progress[-1] == out.result, "on_progress missed the final total"
