"""Fuzz properties of write-behind: ``enqueue``, ``enqueue_nowait``, ``enqueue_turn``,
``flush`` and what ``stats``/``failed_writes`` report."""

from __future__ import annotations

import json
from uuid import UUID

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import SessionStore

from ..strategies import (
    HOSTILE_TEXT,
    IDENTIFIERS,
    ROLES,
    identifier_verdict,
    real,
    role_verdict,
    same_json,
    text_verdict,
)
from .world import (
    CASES,
    OMITTED,
    PERSIST_DUE_EXPIRY,
    STATES,
    C,
    Expect,
    S,
    World,
    conversation_arg,
    conversation_ids,
    fuzz,
    ids,
    message_verdicts,
    options_strategy,
    resolve,
    session_arg,
)

# --- write-behind --------------------------------------------------------------------------------


@fuzz(160)
@given(
    op=st.sampled_from(["enqueue", "enqueue_nowait", "enqueue_turn", "enqueue_turn"]),
    conversation=conversation_ids("conversation"),
    continuation=st.one_of(st.sampled_from(["mine", "new"]), IDENTIFIERS),
    state=STATES,
    session=st.one_of(st.just(OMITTED), st.none(), ids("session")),
    role=ROLES,
    content=HOSTILE_TEXT,
    options=options_strategy("metadata", "tokens"),
)
async def test_write_behind(
    quick_store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    conversation: object,
    continuation: object,
    state: str,
    session: object,
    role: object,
    content: object,
    options: dict[str, object],
) -> None:
    """``enqueue``, ``enqueue_nowait``, ``enqueue_turn``, then ``flush``: accepted messages
    land exactly, or are set aside and reported; refused ones are never queued."""
    CASES["write_behind"] += 1
    store = quick_store
    options = real(options)
    world = World(store, conn)
    cont = world.fresh("queued")
    (sid,), (cid,) = await world.build(
        [S(state=state)], [C(cont, 0 if op == "enqueue_turn" else None, 1)]
    )
    expect = Expect().arg("role", role_verdict(role)).arg("content", text_verdict(content))
    kwargs = {k: v for k, v in options.items() if k != "session_id"}
    await message_verdicts(world, expect, kwargs, frozenset())
    target: UUID | None = None
    situation = "none"
    if op == "enqueue_turn":
        name = {"mine": cont, "new": world.fresh("new")}
        turn_cont = (
            name.get(continuation, continuation) if isinstance(continuation, str) else continuation
        )
        expect.arg("continuation_id", identifier_verdict(turn_cont))
        if session is not OMITTED:
            value = resolve(session, {"session": sid})
            kwargs["session_id"] = value
            if value is not None:
                session_verdict, named = await session_arg(world, value)
                expect.arg("session_id", session_verdict)
                situation = await world.session_state(named)
        call = lambda: world.api.enqueue_turn(turn_cont, role, content, **kwargs)  # noqa: E731
    else:
        value = resolve(conversation, {"conversation": cid}, {"conversation": cont})
        verdict, target = await conversation_arg(world, value)
        expect.arg("conversation_id", verdict)
        method = getattr(world.api.messages, op)
        call = lambda: method(value, role, content, **kwargs)  # noqa: E731
    stats = store.stats()
    await world.conn.execute(PERSIST_DUE_EXPIRY)  # as attempt() does
    before = await world.fingerprint()
    set_aside = {f.id for f in store.failed_writes()}
    out = await world.attempt(call, expect)
    if not out.ok:
        after = store.stats()
        assert (after.queued, after.in_flight) == (stats.queued, stats.in_flight)
        await store.flush()
        assert await world.fingerprint() == before, "a refused message was written"
        return
    mid = out.result
    assert isinstance(mid, UUID)
    if op != "enqueue_turn" and target is not None:
        # Read-your-writes: before it is durable, the enqueuing process reads it.
        latest = await store.messages.history(target, limit=1)
        assert [m.id for m in latest] == [mid], "history misses an accepted message"
        assert latest[0].content == content, "content differs"
    await store.flush()
    row = await world.row("messages", mid)
    lost = mid in {f.id for f in store.failed_writes()} - set_aside
    if op == "enqueue_turn":
        refused = situation in ("missing", "expired", "paused", "completed")
        if refused:
            assert row is None, "a turn of a session that takes none was written"
            assert lost, "a refused turn was not reported (failed_writes)"
            return
    elif target is None:
        assert row is None, "a message to no conversation was written"
        assert lost, "a message to no conversation was not set aside"
        return
    assert row is not None, "an accepted message was not written"
    assert not lost
    assert (row["role"], row["content"]) == (role, content), "content differs"
    meta = kwargs.get("metadata")
    assert same_json({} if meta is None else meta, json.loads(row["metadata"])), "metadata"
    assert row["tokens"] == kwargs.get("tokens")
    if op != "enqueue_turn":
        assert (row["conversation_id"], row["seq"]) == (target, 2)
