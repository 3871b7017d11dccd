"""Fuzz properties of ``messages``: add, add_many (as one turn), history, count, pop and
clear."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import (
    ConflictError,
    InvalidStateError,
    Message,
    NotFoundError,
    SessionExpiredError,
    SessionStore,
)

from ..strategies import (
    HOSTILE_IDS,
    HOSTILE_TEXT,
    INT4_MAX,
    INTS,
    METADATA,
    ROLES,
    WRONG_TYPES,
    Verdict,
    int_verdict,
    real,
    role_verdict,
    same_json,
    text_verdict,
    worst,
)
from .world import (
    BAD,
    CASES,
    EITHER,
    LIMITS,
    NAMED_METADATA,
    NAMED_TEXT,
    OMITTED,
    Expect,
    Id,
    World,
    cases,
    check_message,
    conversation_arg,
    conversation_ids,
    expect_target,
    fuzz,
    limit_verdict,
    message_verdicts,
    named,
    options_strategy,
    resolve,
    session_arg,
    within_tokens,
)

# --- messages ------------------------------------------------------------------------------------


NEW_MESSAGES = st.one_of(
    st.lists(
        st.one_of(
            st.tuples(ROLES, HOSTILE_TEXT),
            st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=20)),
            st.tuples(ROLES, HOSTILE_TEXT, METADATA),
            st.tuples(ROLES, HOSTILE_TEXT, METADATA, INTS),
            st.sampled_from([(), ("user",), ("user", "a", None, None, "extra"), ["user", "a"]]),
            WRONG_TYPES,
        ),
        max_size=4,
    ),
    st.sampled_from([[], 42, "user", None]),
)


async def new_messages_verdict(world: World, items: object) -> tuple[Verdict, int]:
    """The verdict on ``add_many``'s ``messages`` and how many there are."""
    if not isinstance(items, list):
        return BAD, 0
    verdicts = [] if items else [BAD]
    for item in items:
        if type(item) is list and len(item) in (2, 3, 4):
            verdicts.append(EITHER)  # a list for a tuple: may be refused
            item = tuple(item)
        if not isinstance(item, tuple) or not 2 <= len(item) <= 4:
            verdicts.append(BAD)
            continue
        verdicts.append(role_verdict(item[0]))
        verdicts.append(text_verdict(item[1]))
        if len(item) > 2:
            verdicts.append(await world.metadata_verdict(item[2]))
        if len(item) > 3:
            verdicts.append(int_verdict(item[3], 0, INT4_MAX, optional=True))
    # One append's tokens fit an integer, like one message's (docs/limits.md).
    tokens = [i[3] for i in items if isinstance(i, tuple | list) and len(i) == 4]
    if sum(t for t in tokens if type(t) is int and t > 0) > INT4_MAX:
        verdicts.append(BAD)
    return worst(*verdicts), len(items)


# What both the generated and the pinned test of this property draw.
#: ``add_many``'s and ``history``'s ``session_id``: a session set up in a state (``S``),
#: one that owns the conversation already (``"S:owner"``), or a hostile value; drawn with
#: whether the conversation is bound to a session beforehand.
_TURN_SESSIONS = st.one_of(
    st.just(OMITTED),
    st.sampled_from(["S:active", "S:expired", "S:paused", "S:completed", "S:owner"]),
    HOSTILE_IDS,
)
_MESSAGES_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    op=st.sampled_from(["add", "add", "add_many", "history", "count", "pop", "clear"]),
    seeded=st.integers(0, 4),
    conversation=conversation_ids("conversation"),
    role=ROLES,
    content=HOSTILE_TEXT,
    options=options_strategy("metadata", "tokens"),
    new=NEW_MESSAGES,
    limit=st.one_of(st.just(OMITTED), LIMITS),
    before=st.one_of(st.just(OMITTED), st.none(), st.integers(1, 6), INTS),
    turn=st.tuples(_TURN_SESSIONS, st.booleans()),
    max_tokens=st.one_of(st.just(OMITTED), st.none(), st.integers(1, 12), INTS),
)


@fuzz(300)
@given(**_MESSAGES_DRAWN)
async def test_messages(
    store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    seeded: int,
    conversation: object,
    role: object,
    content: object,
    options: dict[str, object],
    new: object,
    limit: object,
    before: object,
    turn: tuple[object, bool],
    max_tokens: object,
) -> None:
    """``add``, ``add_many`` and ``history`` (each with and without ``session_id``),
    ``count``, ``pop``, ``clear``."""
    await check_messages(
        store,
        conn,
        op,
        seeded,
        conversation,
        role,
        content,
        options,
        new,
        limit,
        before,
        turn,
        max_tokens,
    )


@named
@cases(
    {
        "op": "add",
        "seeded": 1,
        "conversation": Id("conversation"),
        "role": "user",
        "content": "hi",
        "options": {},
        "new": [("user", "a")],
        "limit": OMITTED,
        "before": OMITTED,
        "turn": (OMITTED, False),
        "max_tokens": OMITTED,
    },
    *({"options": m} for m in NAMED_METADATA),
    *({"content": t} for t in NAMED_TEXT),
    {"conversation": Id("conversation", "cont")},
    {"op": "add_many", "new": [("user", "a"), ("assistant", "b", {"x": 1e300})]},
    {"op": "add_many", "new": [("user", "a", None, INT4_MAX - 1), ("user", "b", None, 1)]},
    {"op": "add_many", "new": [("user", "a", None, INT4_MAX), ("user", "b", None, 1)]},
    {"op": "history", "limit": "my private c4n4ry note"},
    {"op": "history", "before": 0},
    {"op": "history", "before": 2**31},
    {"op": "history", "seeded": 4, "max_tokens": 7},  # seeded tokens 1..4: the latest 4 and 3
    {"op": "history", "seeded": 4, "max_tokens": 3},  # the latest alone is 4: none
    {"op": "history", "max_tokens": 0},
    {"op": "history", "max_tokens": "my private c4n4ry note"},
    {"op": "history", "turn": ("S:owner", True)},
    {"op": "history", "turn": ("S:active", True)},  # another session's conversation
    {"op": "history", "turn": ("S:owner", False)},  # an unbound conversation
    {"op": "history", "turn": ("not-a-uuid", True)},
    {"op": "add_many", "turn": ("S:expired", False)},
    {"op": "add_many", "turn": ("S:active", True)},
    {"op": "add_many", "turn": ("S:owner", True)},
    {"op": "pop", "seeded": 0},
    {"op": "clear", "seeded": 3},
)
@given(**_MESSAGES_DRAWN)
async def test_messages_named(
    store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    seeded: int,
    conversation: object,
    role: object,
    content: object,
    options: dict[str, object],
    new: object,
    limit: object,
    before: object,
    turn: tuple[object, bool],
    max_tokens: object,
) -> None:
    """The cases the issue names, pinned (reported apart from the generated ones)."""
    await check_messages(
        store,
        conn,
        op,
        seeded,
        conversation,
        role,
        content,
        options,
        new,
        limit,
        before,
        turn,
        max_tokens,
    )


async def check_messages(
    store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    seeded: int,
    conversation: object,
    role: object,
    content: object,
    options: dict[str, object],
    new: object,
    limit: object,
    before: object,
    turn: tuple[object, bool],
    max_tokens: object,
) -> None:
    CASES["messages"] += 1
    options, new = real(options), real(new)
    session, bound = turn
    world = World(store, conn)
    cont = world.fresh("talk")
    owner = await world.session() if bound else None
    cid = await world.conversation(cont, owner, messages=seeded)
    value = resolve(conversation, {"conversation": cid}, {"conversation": cont})
    verdict, target = await conversation_arg(world, value)
    expect = Expect().arg("conversation_id", verdict)
    expect_target(expect, target)
    before_row = await world.row("conversations", target) if target else None
    count = 0 if before_row is None else int(before_row["message_count"])

    if op == "add":
        expect.arg("role", role_verdict(role)).arg("content", text_verdict(content))
        await message_verdicts(world, expect, options, frozenset())
        out = await world.attempt(
            lambda: world.api.messages.add(value, role, content, **options), expect
        )
        if not out.ok:
            return
        message: Message = out.result
        row = await world.row("messages", message.id)
        assert row is not None
        assert before_row is not None
        check_message(message, row)
        assert (message.conversation_id, message.seq) == (target, count + 1)
        assert (message.role.value, message.content) == (role, content), "content differs"
        meta = options.get("metadata")
        assert same_json({} if meta is None else meta, message.metadata), "metadata"
        assert message.tokens == options.get("tokens")
        after = await world.row("conversations", target)
        assert after is not None
        assert after["message_count"] == count + 1
        added = options.get("tokens") or 0
        assert isinstance(added, int)
        assert after["total_tokens"] == before_row["total_tokens"] + added
        assert (await store.messages.history(message.conversation_id, limit=1)) == [message]
    elif op == "add_many":
        new_verdict, n = await new_messages_verdict(world, new)
        expect.arg("messages", new_verdict)
        kwargs: dict[str, object] = {}
        named: UUID | None = None
        if session is not OMITTED:
            sid: object = session
            if session == "S:owner":
                sid = owner or await world.session()
            elif isinstance(session, str) and session.startswith("S:"):
                sid = await world.session(state=session[2:])
            kwargs["session_id"] = sid
            session_verdict, named = await session_arg(world, sid)
            expect.arg("session_id", session_verdict)
            situation = await world.session_state(named)
            bound_to = None if before_row is None else before_row["session_id"]
            if named is None:
                expect.require(NotFoundError)
            elif situation == "expired":
                expect.require(SessionExpiredError, InvalidStateError)
            elif situation in ("paused", "completed"):
                expect.require(InvalidStateError)
            elif bound_to not in (None, named):
                expect.require(ConflictError)
        session_row = None if named is None else await world.row("sessions", named)
        out = await world.attempt(lambda: world.api.messages.add_many(value, new, **kwargs), expect)
        if not out.ok:
            return
        assert isinstance(new, list)
        written: list[Message] = out.result
        assert [m.seq for m in written] == list(range(count + 1, count + n + 1))
        if session_row is not None:
            after_session = await world.row("sessions", named)
            assert after_session is not None
            tokens = sum((item[3] or 0) if len(item) > 3 else 0 for item in new)
            assert after_session["turn_count"] == session_row["turn_count"] + 1
            assert after_session["total_tokens"] == session_row["total_tokens"] + tokens
            after_conv = await world.row("conversations", target)
            assert after_conv is not None
            assert after_conv["session_id"] == named
        for m, item in zip(written, new, strict=True):
            row = await world.row("messages", m.id)
            assert row is not None
            check_message(m, row)
            assert (m.role.value, m.content) == (item[0], item[1]), "content differs"
            meta = item[2] if len(item) > 2 else None
            assert same_json({} if meta is None else meta, m.metadata), "metadata"
            assert m.tokens == (item[3] if len(item) > 3 else None)
    elif op == "history":
        options_: dict[str, object] = {}
        if limit is not OMITTED:
            options_["limit"] = limit
            expect.arg("limit", limit_verdict(limit))
        if before is not OMITTED:
            options_["before"] = before
            expect.arg("before", int_verdict(before, 1, INT4_MAX, optional=True))
        if max_tokens is not OMITTED:
            options_["max_tokens"] = max_tokens
            expect.arg("max_tokens", int_verdict(max_tokens, 1, INT4_MAX, optional=True))
        if session is not OMITTED:
            # read as a session: only its own conversation; any other (another
            # session's, an unbound one) reads as missing, whatever the session's state
            reader: object = session
            if session == "S:owner":
                reader = owner or await world.session()
            elif isinstance(session, str) and session.startswith("S:"):
                reader = await world.session(state=session[2:])
            options_["session_id"] = reader
            reader_verdict, named = await session_arg(world, reader)
            expect.arg("session_id", reader_verdict)
            bound_to = None if before_row is None else before_row["session_id"]
            if named is None or bound_to != named:
                expect.require(NotFoundError)
        out = await world.attempt(lambda: world.api.messages.history(value, **options_), expect)
        if not out.ok:
            return
        size = 50 if limit is OMITTED else limit
        upper = INT4_MAX if before in (OMITTED, None) else before
        assert isinstance(size, int)
        assert isinstance(upper, int)
        rows = await conn.fetch(
            "SELECT * FROM messages WHERE conversation_id = $1 AND seq < $2"
            " ORDER BY seq DESC LIMIT $3",
            target,
            upper,
            size,
        )
        rows = within_tokens(rows, None if max_tokens is OMITTED else max_tokens)
        history: list[Message] = out.result
        assert [m.id for m in history] == [r["id"] for r in reversed(rows)], "wrong history"
        for m, r in zip(history, reversed(rows), strict=True):
            check_message(m, r)
    elif op == "pop":
        latest = await conn.fetchrow(
            "SELECT * FROM messages WHERE conversation_id = $1 ORDER BY seq DESC LIMIT 1", target
        )
        out = await world.attempt(lambda: world.api.messages.pop(value), expect)
        if not out.ok:
            return
        assert target is not None
        if latest is None:
            assert out.result is None
        else:
            check_message(out.result, latest)
            assert await world.row("messages", latest["id"]) is None, "the message is still there"
        after = await world.row("conversations", target)
        assert after is not None
        assert after["message_count"] == max(count - 1, 0) == await world.messages_of(target)
    elif op == "clear":
        out = await world.attempt(lambda: world.api.messages.clear(value), expect)
        if not out.ok:
            return
        assert target is not None
        assert out.result == count
        after = await world.row("conversations", target)
        assert after is not None
        assert (after["message_count"], after["total_tokens"]) == (0, 0)
        assert await world.messages_of(target) == 0
    else:
        out = await world.attempt(lambda: world.api.messages.count(value), expect)
        if out.ok:
            assert target is not None
            assert out.result == count == await world.messages_of(target)
