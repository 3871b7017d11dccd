"""Fuzz properties of ``add_turn``: one statement, all or nothing."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import (
    ConflictError,
    InvalidStateError,
    NotFoundError,
    SessionExpiredError,
    SessionStore,
    Turn,
)

from ..strategies import (
    HOSTILE_IDS,
    HOSTILE_TEXT,
    IDENTIFIERS,
    INTS,
    ROLES,
    identifier_verdict,
    real,
    role_verdict,
    same_json,
    text_verdict,
    uuid_verdict,
)
from .world import (
    CASES,
    NAMED_METADATA,
    NAMED_TEXT,
    OK,
    OMITTED,
    STATES,
    C,
    Expect,
    Id,
    S,
    World,
    cases,
    check_conversation,
    check_message,
    check_session,
    fuzz,
    ids,
    message_verdicts,
    named,
    options_strategy,
    own_tokens,
    resolve,
    session_arg,
    within_tokens,
)

# --- turns ---------------------------------------------------------------------------------------

MESSAGE_IDS = st.one_of(
    st.just(OMITTED),
    st.none(),
    st.sampled_from(["fresh", "fresh", "fresh-str", "taken", "resend"]),
    HOSTILE_IDS,
)


# What both the generated and the pinned test of this property draw.
_ADD_TURN_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    continuation=st.one_of(st.sampled_from(["mine", "loose", "theirs", "new", "new"]), IDENTIFIERS),
    state=STATES,
    session=st.one_of(st.just(OMITTED), st.none(), ids("session", "other")),
    role=ROLES,
    content=HOSTILE_TEXT,
    options=options_strategy("metadata", "tokens"),
    message_id=MESSAGE_IDS,
    context=st.one_of(st.just(OMITTED), st.none(), st.integers(1, 4), INTS),
    context_tokens=st.one_of(st.just(OMITTED), st.none(), st.integers(1, 12), INTS),
)


@fuzz(260)
@given(**_ADD_TURN_DRAWN)
async def test_add_turn(
    store: SessionStore,
    conn: asyncpg.Connection,
    continuation: object,
    state: str,
    session: object,
    role: object,
    content: object,
    options: dict[str, object],
    message_id: object,
    context: object,
    context_tokens: object,
) -> None:
    """``add_turn`` with every option: ``session_id``, ``metadata``, ``tokens``,
    ``message_id``, ``context``."""
    await check_add_turn(
        store,
        conn,
        continuation,
        state,
        session,
        role,
        content,
        options,
        message_id,
        context,
        context_tokens,
    )


@named
@cases(
    {
        "continuation": "mine",
        "state": "active",
        "session": Id("session"),
        "role": "user",
        "content": "hi",
        "options": {"tokens": 3},
        "message_id": "fresh",
        "context": 2,
        "context_tokens": OMITTED,
    },
    {"context": 2, "context_tokens": 1, "options": {"tokens": 3}},  # its own message alone
    {"context": OMITTED, "context_tokens": 50},  # a budget alone: up to 1,000 messages
    {"context_tokens": 0},
    {"context_tokens": "my private c4n4ry note"},
    *({"options": m} for m in NAMED_METADATA),
    *({"content": t} for t in NAMED_TEXT),
    {"session": Id("other")},
    {"message_id": "taken"},
    {"continuation": "\ud800"},
)
@given(**_ADD_TURN_DRAWN)
async def test_add_turn_named(
    store: SessionStore,
    conn: asyncpg.Connection,
    continuation: object,
    state: str,
    session: object,
    role: object,
    content: object,
    options: dict[str, object],
    message_id: object,
    context: object,
    context_tokens: object,
) -> None:
    """The cases the issue names, pinned (reported apart from the generated ones)."""
    await check_add_turn(
        store,
        conn,
        continuation,
        state,
        session,
        role,
        content,
        options,
        message_id,
        context,
        context_tokens,
    )


async def check_add_turn(
    store: SessionStore,
    conn: asyncpg.Connection,
    continuation: object,
    state: str,
    session: object,
    role: object,
    content: object,
    options: dict[str, object],
    message_id: object,
    context: object,
    context_tokens: object,
) -> None:
    CASES["add_turn"] += 1
    options = real(options)
    world = World(store, conn)
    options = {k: v for k, v in options.items() if k not in ("session_id", "message_id")}
    if context is not OMITTED:
        options["context"] = context
    if context_tokens is not OMITTED:
        options["context_tokens"] = context_tokens
    conts = {name: world.fresh(name) for name in ("mine", "loose", "theirs", "new")}
    (sid, other), _ = await world.build(
        [S(state=state), S()],
        [C(conts["mine"], 0, 1), C(conts["loose"], None, 1), C(conts["theirs"], 1, 1)],
    )
    cont = conts.get(continuation, continuation) if isinstance(continuation, str) else continuation
    session_value = (
        None if session is OMITTED else resolve(session, {"session": sid, "other": other})
    )
    kwargs = dict(options)
    if session is not OMITTED:
        kwargs["session_id"] = session_value
    taken = await conn.fetchval("SELECT id FROM messages LIMIT 1")
    mid: object = (
        {
            "fresh": uuid4(),
            "fresh-str": str(uuid4()),
            "taken": taken,
            "resend": uuid4(),
        }.get(message_id, message_id)
        if isinstance(message_id, str)
        else message_id
    )
    if message_id is not OMITTED:
        kwargs["message_id"] = mid

    expect = Expect().arg("continuation_id", identifier_verdict(cont))
    expect.arg("role", role_verdict(role)).arg("content", text_verdict(content))
    await message_verdicts(world, expect, options, frozenset({"context", "context_tokens"}))
    named: UUID | None = None
    if session_value is not None:
        session_verdict, named = await session_arg(world, session_value)
        expect.arg("session_id", session_verdict)
    mid_verdict, mid_uuid = (OK, None) if mid in (OMITTED, None) else uuid_verdict(mid)
    expect.arg("message_id", mid_verdict)
    existing = (
        await conn.fetchrow("SELECT * FROM conversations WHERE continuation_id = $1", cont)
        if isinstance(cont, str) and text_verdict(cont) is OK
        else None
    )
    situation = await world.session_state(named) if session_value is not None else "none"
    stored = await world.row("messages", mid_uuid) if mid_uuid is not None else None
    if stored is not None:
        expect.require(ConflictError)  # another message's id (this turn was never sent)
    elif session_value is not None and named is None:
        expect.require(NotFoundError)
    elif situation == "expired":
        expect.require(SessionExpiredError, InvalidStateError)
    elif situation in ("paused", "completed"):
        expect.require(InvalidStateError)
    elif existing is not None and existing["session_id"] not in (None, named):
        if named is None:
            expect.allow(ConflictError)  # a bound conversation, written without its session
        else:
            expect.require(ConflictError)

    call = lambda: world.api.add_turn(cont, role, content, **kwargs)  # noqa: E731
    out = await world.attempt(call, expect)
    if not out.ok:
        return
    turn: Turn = out.result
    m, c = turn.message, turn.conversation
    row = await world.row("messages", m.id)
    assert row is not None
    check_message(m, row)
    assert (m.role.value, m.content) == (role, content), "content differs"
    meta = options.get("metadata")
    assert same_json({} if meta is None else meta, m.metadata), "metadata"
    assert m.tokens == options.get("tokens")
    if mid_uuid is not None:
        assert m.id == mid_uuid, "the message did not get the given message_id"
    old_count = 0 if existing is None else int(existing["message_count"])
    assert m.seq == c.message_count == old_count + 1
    crow = await world.row("conversations", c.id)
    assert crow is not None
    check_conversation(c, crow)
    assert c.continuation_id == cont
    owner = None if existing is None else existing["session_id"]
    assert c.session_id == (named if owner is None else owner), "the conversation's session"
    tokens = options.get("tokens") or 0
    assert isinstance(tokens, int)
    if named is None:
        assert turn.session is None
    else:
        assert turn.session is not None
        srow = await world.row("sessions", named)
        assert srow is not None
        check_session(turn.session, srow)
        assert (turn.session.turn_count, turn.session.total_tokens) == (1, tokens)
    size, budget = options.get("context"), options.get("context_tokens")
    if size is None and budget is not None:
        size = 1000  # a budget alone reads up to the largest context
    if size is None:
        assert turn.context is None
    else:
        latest = await conn.fetch(
            "SELECT * FROM messages WHERE conversation_id = $1 ORDER BY seq DESC LIMIT $2",
            c.id,
            size,
        )
        if budget is not None:  # the turn's own message always, alone if it overflows
            assert isinstance(budget, int)
            left = budget - own_tokens(latest[0])
            latest = [latest[0], *(within_tokens(latest[1:], left) if left >= 0 else [])]
        assert turn.context is not None, "context was asked for and not returned"
        assert [x.id for x in turn.context] == [r["id"] for r in reversed(latest)], "context"
        for got, r in zip(turn.context, reversed(latest), strict=True):
            check_message(got, r)
    if mid_uuid is not None:  # a resend returns the stored turn and counts nothing twice
        fingerprint = await world.fingerprint()
        again = await world.attempt(call, Expect())
        assert again.result.message == m, "a resend did not return the stored message"
        assert await world.fingerprint() == fingerprint, "a resend wrote again"
