"""Fuzz properties of ``store.conversations``: get_or_create, get, delete, and listing
a session's conversations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import ConflictError, Conversation, NotFoundError, Page, SessionStore

from ..strategies import (
    CURSORS,
    IDENTIFIERS,
    METADATA,
    cursor_verdict,
    identifier_verdict,
    real,
    same_json,
    text_verdict,
)
from .world import (
    BAD,
    CASES,
    CREATED,
    LIMITS,
    OK,
    TITLES,
    C,
    Expect,
    S,
    World,
    check_conversation,
    conversation_arg,
    conversation_ids,
    cursor_value,
    expect_target,
    fuzz,
    ids,
    limit_verdict,
    resolve,
    session_arg,
    walk,
)

# --- conversations -------------------------------------------------------------------------------

CONTINUATIONS = st.one_of(st.sampled_from(["mine", "loose", "theirs", "new", "new"]), IDENTIFIERS)
LIST_CONVERSATIONS_SQL = """
SELECT id FROM conversations WHERE session_id = $1 ORDER BY created_at DESC, id DESC
"""


@fuzz(260)
@given(
    op=st.sampled_from(
        ["get_or_create", "get_or_create", "get", "get_by_continuation_id", "delete"]
    ),
    continuation=CONTINUATIONS,
    conversation=conversation_ids("mine", "loose"),
    session=st.one_of(st.none(), ids("session", "other")),
    title=TITLES,
    metadata=METADATA,
)
async def test_conversations(
    store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    continuation: object,
    conversation: object,
    session: object,
    title: object,
    metadata: object,
) -> None:
    """``get_or_create``, ``get``, ``get_by_continuation_id``, ``delete``."""
    CASES["conversations"] += 1
    metadata = real(metadata)
    world = World(store, conn)
    conts = {name: world.fresh(name) for name in ("mine", "loose", "theirs", "new")}
    (sid, other), (mine, loose, theirs) = await world.build(
        [S(), S()],
        [C(conts["mine"], 0, 2), C(conts["loose"], None, 1), C(conts["theirs"], 1, 0)],
    )
    rows: dict[str, UUID | None] = {"session": sid, "other": other}
    rows.update(mine=mine, loose=loose, theirs=theirs)

    if op in ("get_or_create", "get_by_continuation_id"):
        cont = (
            conts.get(continuation, continuation) if isinstance(continuation, str) else continuation
        )
        verdict = identifier_verdict(cont)
        existing = (
            await conn.fetchrow("SELECT * FROM conversations WHERE continuation_id = $1", cont)
            if verdict is not BAD and isinstance(cont, str)
            else None
        )
        expect = Expect().arg("continuation_id", verdict)
        if op == "get_by_continuation_id":
            expect_target(expect, None if existing is None else existing["id"])
            out = await world.attempt(
                lambda: world.api.conversations.get_by_continuation_id(cont), expect
            )
            if out.ok:
                assert existing is not None
                check_conversation(out.result, existing)
            return
        session_value = resolve(session, rows)
        session_verdict, named = (
            (OK, None) if session_value is None else await session_arg(world, session_value)
        )
        expect.arg("session_id", session_verdict)
        expect.arg("title", text_verdict(title, optional=True))
        expect.arg("metadata", await world.metadata_verdict(metadata))
        # A missing session is refused whether the conversation exists or not (an unbound
        # one too), before whose the conversation is (docs/limits.md).
        if session_value is not None and named is None:
            expect.require(NotFoundError)
        elif named is not None and existing is not None:
            bound = existing["session_id"]
            if bound is not None and bound != named:
                expect.require(ConflictError)
        out = await world.attempt(
            lambda: world.api.conversations.get_or_create(
                cont, session_id=session_value, title=title, metadata=metadata
            ),
            expect,
        )
        if not out.ok:
            return
        made: Conversation = out.result
        row = await world.row("conversations", made.id)
        assert row is not None
        check_conversation(made, row)
        if existing is None:
            assert (made.continuation_id, made.session_id) == (cont, named)
            assert made.title == title
            assert same_json({} if metadata is None else metadata, made.metadata), "metadata"
            assert (made.message_count, made.total_tokens, made.last_message_at) == (0, 0, None)
        else:
            assert made.id == existing["id"], "get_or_create made a second conversation"
            assert (made.title, made.metadata) == (
                existing["title"],
                json.loads(existing["metadata"]),
            ), "get_or_create changed an existing conversation"
            assert made.session_id in (existing["session_id"], named)
        return

    value = resolve(conversation, rows, conts)
    verdict, target = await conversation_arg(world, value)
    expect = Expect().arg("conversation_id", verdict)
    expect_target(expect, target)
    before = await world.row("conversations", target) if target else None
    method = getattr(world.api.conversations, op)
    out = await world.attempt(lambda: method(value), expect)
    if not out.ok:
        return
    assert target is not None
    assert before is not None
    if op == "delete":
        assert out.result is None
        assert await world.row("conversations", target) is None, "deleted conversation remains"
        assert await world.messages_of(target) == 0, "its messages remain"
        return
    check_conversation(out.result, before)


@fuzz(100)
@given(
    created=CREATED,
    target=ids("session"),
    limit=LIMITS,
    cursor=st.one_of(st.none(), st.just("real"), st.just("real"), CURSORS),
)
async def test_conversations_list(
    store: SessionStore,
    conn: asyncpg.Connection,
    created: list[int],
    target: object,
    limit: object,
    cursor: object,
) -> None:
    """``conversations.list_for_session``: pages and cursors."""
    CASES["conversations.list"] += 1
    world = World(store, conn)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    (sid,), _ = await world.build(
        [S()], [C(session=0, created_at=base + timedelta(seconds=offset)) for offset in created]
    )
    value = resolve(target, {"session": sid})
    verdict, found = await session_arg(world, value)
    expect = Expect().arg("session_id", verdict).arg("limit", limit_verdict(limit))
    expect_target(expect, found)
    expected = [r["id"] for r in await conn.fetch(LIST_CONVERSATIONS_SQL, found)] if found else []
    cursor_arg = cursor_value(cursor)
    after = 0
    if cursor == "real":
        cursor_arg = None
        if len(expected) > 1:
            first = await store.conversations.list_for_session(sid, limit=1)
            cursor_arg, after = first.next_cursor, 1
    else:
        expect.arg("cursor", cursor_verdict(cursor))

    out = await world.attempt(
        lambda: world.api.conversations.list_for_session(value, limit=limit, cursor=cursor_arg),
        expect,
    )
    if not out.ok:
        return
    page: Page[Conversation] = out.result
    assert isinstance(limit, int)
    got = [c.id for c in page.items]
    if cursor != "real" and cursor is not None:
        assert set(got) <= set(expected), "a forged cursor listed another session's rows"
        return
    assert got == expected[after : after + limit], "the page is not the listing's next rows"
    for c in page.items:
        row = await world.row("conversations", c.id)
        assert row is not None
        check_conversation(c, row)
    if after == 0:

        async def following(c: str) -> Page[Any]:
            got: Page[Any] = await world.api.conversations.list_for_session(
                value, limit=limit, cursor=c
            )
            return got

        assert await walk(page, following, limit, len(expected) + 2) == expected
