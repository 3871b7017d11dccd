"""Fuzz properties of what acts for one user: ``purge_user``, and ``as_user`` (row-level
security on a Supabase-like database)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import uuid4

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import ContinuationId, NotFoundError, PurgeCounts, SessionStore, UserView

from ..strategies import IDENTIFIERS, INTS, METADATA, identifier_verdict, real, text_verdict
from .world import (
    BAD,
    CALLBACKS,
    CASES,
    OK,
    OMITTED,
    C,
    Expect,
    S,
    World,
    callback_verdict,
    cases,
    check_session,
    fuzz,
    limit_verdict,
    named,
)

# --- purge ---------------------------------------------------------------------------------------


@fuzz(80)
@given(
    sessions=st.integers(0, 3),
    user=st.one_of(st.just("victim"), st.just("victim"), IDENTIFIERS),
    batch_size=st.one_of(st.just(OMITTED), st.integers(1, 3), INTS),
    on_progress=CALLBACKS,
)
async def test_purge_user(
    store: SessionStore,
    conn: asyncpg.Connection,
    sessions: int,
    user: object,
    batch_size: object,
    on_progress: object,
) -> None:
    CASES["purge_user"] += 1
    world = World(store, conn)
    victim = world.fresh("victim")
    sids, _ = await world.build(
        [S(world.fresh("bystander")), *(S(victim) for _ in range(sessions))],
        [C(session=0, messages=1), *(C(session=i + 1, messages=2) for i in range(sessions))],
    )
    bystander = sids[0]
    user_id = victim if user == "victim" else user
    expect = Expect().arg("user_id", identifier_verdict(user_id))
    options: dict[str, object] = {}
    progress: list[PurgeCounts] = []
    if batch_size is not OMITTED:
        options["batch_size"] = batch_size
        expect.arg("batch_size", limit_verdict(batch_size, 1000))
    if on_progress is not OMITTED:
        options["on_progress"] = progress.append if on_progress == "record" else on_progress
        expect.arg("on_progress", callback_verdict(on_progress))
    owned = await conn.fetchrow(
        "SELECT count(DISTINCT s.id) AS s, count(DISTINCT c.id) AS c, count(m.id) AS m"
        " FROM sessions s LEFT JOIN conversations c ON c.session_id = s.id"
        " LEFT JOIN messages m ON m.conversation_id = c.id WHERE s.user_id = $1",
        user_id if text_verdict(user_id) is OK else "",
    )

    out = await world.attempt(lambda: world.api.purge_user(user_id, **options), expect)
    if not out.ok:
        return
    counts: PurgeCounts = out.result
    assert owned is not None
    assert (counts.sessions, counts.conversations, counts.messages) == tuple(owned)
    assert not await conn.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", user_id)
    assert await world.row("sessions", bystander) is not None, "purge deleted another user's row"
    assert all(isinstance(p, PurgeCounts) for p in progress)


# --- as_user (row-level security on a Supabase-like database) -----------------------------------


CLAIMS = st.one_of(
    st.just(OMITTED),
    st.none(),
    st.just({"email": "a@example.com"}),
    st.sampled_from([{"sub": "someone-else"}, {"role": "service_role"}, {"role": "anon"}]),
    METADATA,
)


# What both the generated and the pinned test of this property draw.
_AS_USER_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    user=st.one_of(st.just("uuid"), st.just("name"), IDENTIFIERS, st.uuids()),
    claims=CLAIMS,
    op=st.sampled_from(["create", "list", "get_other", "add_turn", "history", "purge_user"]),
)


@fuzz(120)
@given(**_AS_USER_DRAWN)
async def test_as_user(
    rls: tuple[SessionStore, asyncpg.Connection], user: object, claims: object, op: str
) -> None:
    """``as_user`` refuses bad ids and claims up front; a view it returns works on the
    user's own rows and sees nobody else's."""
    await check_as_user(rls, user, claims, op)


@named
@cases(
    {"user": "uuid", "claims": OMITTED, "op": "create"},
    {"user": ""},
    {"user": "\x00"},
    {"user": "\ud800"},
    {"user": "x" * 300},
    {"claims": {"sub": "someone-else"}},
    {"claims": [1, 2]},
    {"claims": 0},
    {"claims": {"k": 1e300}},
)
@given(**_AS_USER_DRAWN)
async def test_as_user_named(
    rls: tuple[SessionStore, asyncpg.Connection], user: object, claims: object, op: str
) -> None:
    """The cases the issue names, pinned (reported apart from the generated ones)."""
    await check_as_user(rls, user, claims, op)


async def check_as_user(
    rls: tuple[SessionStore, asyncpg.Connection], user: object, claims: object, op: str
) -> None:
    CASES["as_user"] += 1
    claims = real(claims)
    store, conn = rls
    world = World(store, conn)
    other = await world.session(world.fresh("other-user"))
    user_id = (
        {"uuid": str(uuid4()), "name": world.fresh("user")}.get(user, user)
        if isinstance(user, str)
        else user
    )
    expect = Expect().arg("user_id", identifier_verdict(user_id))
    kwargs: dict[str, object] = {}
    if claims is not OMITTED:
        kwargs["claims"] = claims
        verdict = await world.metadata_verdict(claims)
        if isinstance(claims, Mapping) and (
            claims.get("sub", user_id) != user_id
            or claims.get("role", "authenticated") != "authenticated"
        ):
            verdict = BAD  # sub and role are as_user's to set
        expect.arg("claims", verdict)
    out = await world.attempt(lambda: store.as_user(user_id, **kwargs), expect)  # type: ignore[arg-type]
    if not out.ok:
        return
    view: UserView = out.result
    uid = str(user_id)
    api: Any = view
    if op == "create":
        made = await world.attempt(lambda: api.sessions.create(uid), Expect())
        row = await world.row("sessions", made.result.id)
        assert row is not None
        assert row["user_id"] == uid
        check_session(made.result, row)
    elif op == "list":
        own = [await world.session(uid) for _ in range(2)]
        page = await world.attempt(lambda: api.sessions.list(user_id=uid), Expect())
        assert {s.id for s in page.result.items} == set(own), "listed rows not the user's own"
        everyone = await world.attempt(lambda: api.sessions.list(user_id=None), Expect())
        assert {s.id for s in everyone.result.items} == set(own), "saw another user's rows"
    elif op == "get_other":
        await world.attempt(lambda: api.sessions.get(other), Expect().require(NotFoundError))
    elif op in ("add_turn", "history"):
        sid = await world.session(uid)
        cont = world.fresh("rls")
        turn = await world.attempt(
            lambda: api.add_turn(cont, "user", "hi", session_id=sid, tokens=3), Expect()
        )
        assert turn.result.session.turn_count == 1
        history = await world.attempt(lambda: api.messages.history(ContinuationId(cont)), Expect())
        assert [m.id for m in history.result] == [turn.result.message.id]
        count = await world.attempt(
            lambda: api.messages.count(turn.result.conversation.id), Expect()
        )
        assert count.result == 1
    else:
        sid = await world.session(uid)
        await world.conversation(session_id=sid, messages=2)
        counts = await world.attempt(lambda: api.purge_user(uid), Expect())
        assert (counts.result.sessions, counts.result.conversations, counts.result.messages) == (
            1,
            1,
            2,
        )
        assert await world.row("sessions", other) is not None
