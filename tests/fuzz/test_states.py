"""Fuzz property of the framework adapters' state repository (``store.states``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import NotFoundError, SessionStore
from sessionstore.repositories.states import StateDeltas, States, WrittenStates

from ..strategies import IDENTIFIERS, METADATA, identifier_verdict, real, same_json
from .world import CASES, OK, Expect, World, fuzz, ids, resolve, session_arg

# The ADK state tables, for "a refused call writes nothing" (FINGERPRINT has the core three).
STATES_FINGERPRINT = " UNION ALL ".join(
    f"SELECT '{table}', count(*), md5(coalesce(string_agg(ctid::text || ':' || xmin::text,"
    f" ',' ORDER BY ctid), '')) FROM {table}"
    for table in ("adk_app_states", "adk_user_states", "adk_session_states")
)


@fuzz(120)
@given(
    op=st.sampled_from(["read", "write", "write"]),
    app_name=st.one_of(st.just("app"), IDENTIFIERS),
    user_id=st.one_of(st.just("user"), IDENTIFIERS),
    session=ids("session"),
    delta=METADATA,
)
async def test_states(
    store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    app_name: object,
    user_id: object,
    session: object,
    delta: object,
) -> None:
    """``states.read`` and ``states.write`` (with deltas from ``StateDeltas.of``): hostile
    keys, session ids and deltas are refused naming the argument and write nothing; what
    is written reads back exactly."""
    CASES["states"] += 1
    delta = real(delta)
    world = World(store, conn)
    sid = await world.session()
    session_id = resolve(session, {"session": sid})
    id_verdict, target = await session_arg(world, session_id)
    user_verdict = OK if op == "read" and user_id is None else identifier_verdict(user_id)
    expect = Expect().arg("app_name", identifier_verdict(app_name)).arg("user_id", user_verdict)
    before = [tuple(r) for r in await conn.fetch(STATES_FINGERPRINT)]
    if op == "read":
        expect.arg("session_ids", id_verdict)
        out = await world.attempt(
            lambda: world.api.states.read(app_name, user_id, [session_id]), expect
        )
        assert [tuple(r) for r in await conn.fetch(STATES_FINGERPRINT)] == before, "read wrote"
        if out.ok:
            assert isinstance(out.result, States)
        return
    changes = isinstance(delta, dict) and bool(delta)
    expect.arg("session_id", id_verdict).arg("session", await world.metadata_verdict(delta))
    if target is None and changes:
        expect.require(NotFoundError)  # session state of a session that does not exist

    deltas_of: Any = StateDeltas.of  # typed Any: the delta breaks the signature on purpose

    def write() -> Awaitable[WrittenStates]:
        written: Awaitable[WrittenStates] = world.api.states.write(
            app_name, user_id, session_id, deltas_of(session=delta)
        )
        return written

    out = await world.attempt(write, expect)
    if not out.ok:
        after = [tuple(r) for r in await conn.fetch(STATES_FINGERPRINT)]
        assert after == before, f"refused ({type(out.error).__name__}) yet wrote"
        return
    stored = await conn.fetchval("SELECT state FROM adk_session_states WHERE session_id = $1", sid)
    if changes and target == sid:
        assert same_json(delta, json.loads(stored)), "session state"
        assert same_json(delta, out.result.session), "returned session state"
    else:
        assert stored is None, "a write without a delta created a row"
