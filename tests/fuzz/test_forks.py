"""Fuzz properties of ``conversations.fork``: the copy, its refusals and resends."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import (
    ConflictError,
    Conversation,
    InvalidStateError,
    NotFoundError,
    SessionExpiredError,
    SessionStore,
)

from ..strategies import (
    HOSTILE_IDS,
    IDENTIFIERS,
    INT4_MAX,
    INTS,
    identifier_verdict,
    int_verdict,
    uuid_verdict,
)
from .world import (
    BAD,
    CASES,
    OK,
    OMITTED,
    PERSIST_DUE_EXPIRY,
    Expect,
    Id,
    World,
    cases,
    check_conversation,
    conversation_arg,
    conversation_ids,
    expect_target,
    fuzz,
    named,
    resolve,
    session_arg,
)

# The messages of a conversation as a fork must copy them (the ids aside).
COPIED = """
SELECT seq, role, content, metadata, tokens, created_at FROM messages
WHERE conversation_id = $1 AND seq <= $2 ORDER BY seq
"""
# A fork made earlier by another client: of $2 at seq $3, bound to $4.
EARLIER_FORK = """
INSERT INTO conversations (continuation_id, forked_from, forked_at_seq, session_id,
                           message_count)
VALUES ($1, $2, $3, $4, $3)
"""


def _mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A draw of ``usual`` three times in four, else of ``other`` (a ``one_of`` would
    draw each branch of a nested ``one_of`` as often as ``usual``)."""
    return st.tuples(st.integers(0, 3), usual, other).map(lambda t: t[1] if t[0] else t[2])


# What both the generated and the pinned test of this property draw. Mostly well-formed
# arguments (malformed ones are refused like every other method's), so that most cases
# reach the database and the model's refusals.
#: ``session_id``: a session set up in a state, the source's own (``"S:owner"``, a new
#: active one when the source is unbound), or a hostile value; drawn with whether the
#: source is bound to a session.
_FORK_SESSIONS = _mostly(
    st.sampled_from(
        [OMITTED, None, "S:active", "S:expired", "S:paused", "S:completed", "S:owner", "S:owner"]
    ),
    HOSTILE_IDS,
)
_FORKS_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    seeded=st.integers(0, 4),
    conversation=_mostly(
        st.builds(Id, st.just("source"), st.sampled_from(["uuid", "str", "cont"])),
        conversation_ids("source"),
    ),
    continuation=_mostly(
        st.sampled_from(["new", "new", "new", "source", "taken", "earlier", "earlier"]),
        IDENTIFIERS,
    ),
    session=st.tuples(_FORK_SESSIONS, st.booleans()),
    through=_mostly(st.sampled_from([OMITTED, None, 0, 1, 2, 3, 4, 5]), INTS),
    earlier_at=st.integers(0, 4),
)


@fuzz(160)
@given(**_FORKS_DRAWN)
async def test_forks(
    store: SessionStore,
    conn: asyncpg.Connection,
    seeded: int,
    conversation: object,
    continuation: object,
    session: tuple[object, bool],
    through: object,
    earlier_at: int,
) -> None:
    """``conversations.fork``: with and without ``session_id`` and ``through_seq``."""
    await check_forks(store, conn, seeded, conversation, continuation, session, through, earlier_at)


@named
@cases(
    {
        "seeded": 3,
        "conversation": Id("source"),
        "continuation": "new",
        "session": ("S:owner", True),
        "through": OMITTED,
        "earlier_at": 2,
    },
    {"through": 2},
    {"through": 0},
    {"through": 3},
    {"through": 4},  # past the last message
    {"through": -1},
    {"through": True},
    {"through": 2**31},
    {"through": "my private c4n4ry note"},
    {"through": 2.0},
    {"seeded": 0, "through": None},
    {"conversation": Id("source", "cont")},
    {"conversation": Id("missing")},
    {"continuation": "source"},  # the source's own continuation id
    {"continuation": "taken"},
    {"continuation": "earlier", "through": 2},  # a resend
    {"continuation": "earlier", "through": OMITTED},  # a resend of "everything"
    {"continuation": "earlier", "through": 1},  # another call: a conflict
    {"continuation": "earlier", "through": 2, "session": (None, True)},
    {"session": ("S:owner", False)},  # an unbound source, read as a session
    {"session": ("S:active", True)},  # another session's source
    {"session": ("S:completed", True)},
    {"session": ("S:expired", True)},
    {"session": ("00000000-0000-0000-0000-000000000000", True)},
    {"session": ("not-a-uuid", True)},
    {"session": (OMITTED, False)},
)
@given(**_FORKS_DRAWN)
async def test_forks_named(
    store: SessionStore,
    conn: asyncpg.Connection,
    seeded: int,
    conversation: object,
    continuation: object,
    session: tuple[object, bool],
    through: object,
    earlier_at: int,
) -> None:
    """The cases pinned (reported apart from the generated ones)."""
    await check_forks(store, conn, seeded, conversation, continuation, session, through, earlier_at)


async def check_forks(
    store: SessionStore,
    conn: asyncpg.Connection,
    seeded: int,
    conversation: object,
    continuation: object,
    session: tuple[object, bool],
    through: object,
    earlier_at: int,
) -> None:
    CASES["forks"] += 1
    session_spec, bound = session
    world = World(store, conn)
    conts = {name: world.fresh(name) for name in ("source", "taken", "earlier", "new")}
    owner = await world.session() if bound else None
    source = await world.conversation(conts["source"], owner, messages=seeded)
    await world.conversation(conts["taken"])
    upto_earlier = min(earlier_at, seeded)
    await conn.execute(EARLIER_FORK, conts["earlier"], source, upto_earlier, owner)

    value = resolve(conversation, {"source": source}, conts)
    verdict, target = await conversation_arg(world, value)
    cont = conts.get(continuation, continuation) if isinstance(continuation, str) else continuation
    expect = (
        Expect().arg("conversation_id", verdict).arg("continuation_id", identifier_verdict(cont))
    )
    kwargs: dict[str, object] = {"continuation_id": cont}
    named_session: UUID | None = None  # the session named, if it exists
    parsed_session: UUID | None = None  # the session id, if well-formed
    if session_spec is not OMITTED:
        sid: object = session_spec
        if session_spec == "S:owner":
            sid = owner or await world.session()
        elif isinstance(session_spec, str) and session_spec.startswith("S:"):
            sid = await world.session(state=session_spec[2:])
        kwargs["session_id"] = sid
        if sid is not None:
            session_verdict, named_session = await session_arg(world, sid)
            expect.arg("session_id", session_verdict)
            parsed_session = uuid_verdict(sid)[1]
    upto: int | None = None
    if through is not OMITTED:
        kwargs["through_seq"] = through
        through_verdict = int_verdict(through, 0, INT4_MAX, optional=True)
        expect.arg("through_seq", through_verdict)
        if through_verdict is OK and isinstance(through, int):
            upto = through

    # The model, in the order the contract gives (the docstring of fork).
    given_session = session_spec not in (OMITTED, None)
    source_row = await world.row("conversations", target) if target else None
    # read as the session named: only a source bound to it (not an unbound one)
    readable = source_row is not None and (
        not given_session or source_row["session_id"] in ({parsed_session} - {None})
    )
    taken = (
        await conn.fetchrow("SELECT * FROM conversations WHERE continuation_id = $1", cont)
        if identifier_verdict(cont) is not BAD and isinstance(cont, str)
        else None
    )
    resent = (
        readable
        and taken is not None
        and taken["forked_from"] == target
        and (not given_session or taken["session_id"] == named_session)
        and (upto is None or taken["forked_at_seq"] == upto)
    )
    situation = await world.session_state(named_session) if given_session else "active"
    count = 0 if source_row is None else int(source_row["message_count"])
    if resent:
        pass
    elif situation == "missing":
        expect.require(NotFoundError)
    elif situation == "expired":
        expect.require(SessionExpiredError, InvalidStateError)
    elif situation in ("paused", "completed"):
        expect.require(InvalidStateError)
    elif not readable:
        expect_target(expect, None)
    elif taken is not None:
        expect.require(ConflictError)
    elif upto is not None and upto > count:
        expect.arg("through_seq", BAD)
    await conn.execute(PERSIST_DUE_EXPIRY)  # as attempt() does: not the call's write
    before = await world.fingerprint()

    out = await world.attempt(lambda: world.api.conversations.fork(value, **kwargs), expect)
    if not out.ok:
        return
    fork: Conversation = out.result
    row = await world.row("conversations", fork.id)
    assert row is not None
    check_conversation(fork, row)
    if resent:
        assert taken is not None
        assert fork.id == taken["id"], "a resend made a second fork"
        assert await world.fingerprint() == before, "a resend wrote"
        return
    assert target is not None
    at = count if upto is None else upto
    assert (fork.continuation_id, fork.session_id) == (cont, named_session)
    assert (fork.forked_from, fork.forked_at_seq, fork.message_count) == (target, at, at)
    copied = await conn.fetch(COPIED, fork.id, at)
    assert copied == await conn.fetch(COPIED, target, at), "the copy differs from the source"
    assert fork.total_tokens == sum(r["tokens"] or 0 for r in copied)
    assert source_row is not None
    assert await world.row("conversations", target) == source_row, "the source changed"
