"""Fuzz properties over rows written by other clients, with values Python cannot hold
as they are."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import InvalidStateError, Page, SessionExpiredError, SessionStore

from .world import CASES, C, Expect, S, World, cases, fuzz, named, walk

# --- rows written by other clients ---------------------------------------------------------------

#: Times only another client can write: beyond Python's range, or infinite.
FOREIGN_TIMES = [
    "infinity",
    "-infinity",
    "20000-01-01 00:00:00+00",
    "294276-12-31 23:59:59+00",
    "4713-01-01 00:00:00+00 BC",
    "0001-01-01 00:00:00+00",
    "9999-12-31 23:59:59.999999+00",
    "9999-12-31 23:59:59.999999-14",
    "2024-01-01 00:00:00+00",
]
#: jsonb documents only another client can write (as SQL text).
FOREIGN_JSON = [
    "{}",
    '{"x": 1e5000}',
    '{"x": -1e-5000}',
    '{"x": 1.0e309}',
    '{"x": "\\\\u0000"}',
    '{"x": 123456789012345678901234567890}',
]


def nested(levels: int, inner: str = "{}") -> str:
    """The JSON object ``inner`` wrapped to ``levels`` levels, as text."""
    return '{"a":' * (levels - 1) + inner + "}" * (levels - 1)


FOREIGN_OPS = [
    "sessions.get",
    "sessions.list",
    "sessions.update",
    "sessions.record_turn",
    "conversations.get",
    "conversations.get_by_continuation_id",
    "conversations.list_for_session",
    "messages.history",
    "messages.count",
    "add_turn",
    "purge_user",
]


@fuzz(120)
@given(
    depth=st.sampled_from([1, 2, 100, 999, 1000, 1001, 2000, 5000]),
    document=st.sampled_from(FOREIGN_JSON),
    time=st.sampled_from(FOREIGN_TIMES),
    op=st.sampled_from(FOREIGN_OPS),
)
async def test_foreign_rows(
    store: SessionStore, conn: asyncpg.Connection, depth: int, document: str, time: str, op: str
) -> None:
    await check_foreign_rows(store, conn, depth, document, time, op)


@named
@cases(
    {"depth": 5000, "document": "{}", "time": "2024-01-01 00:00:00+00", "op": "sessions.get"},
    {"depth": 5000, "op": "sessions.list"},
    {"depth": 5000, "op": "messages.history"},
    {"depth": 1, "document": '{"x": 1e5000}', "op": "messages.history"},
    *(
        {"depth": 1, "time": time, "op": op}
        for time in ("infinity", "20000-01-01 00:00:00+00")
        for op in ("sessions.get", "sessions.list", "messages.history")
    ),
    {"depth": 1, "time": "20000-01-01 00:00:00+00", "op": "conversations.list_for_session"},
)
@given(
    depth=st.sampled_from([1, 5000]),
    document=st.sampled_from(FOREIGN_JSON),
    time=st.sampled_from(FOREIGN_TIMES),
    op=st.sampled_from(FOREIGN_OPS),
)
async def test_foreign_rows_named(
    store: SessionStore, conn: asyncpg.Connection, depth: int, document: str, time: str, op: str
) -> None:
    """The rows the issue names, pinned."""
    await check_foreign_rows(store, conn, depth, document, time, op)


async def check_foreign_rows(
    store: SessionStore, conn: asyncpg.Connection, depth: int, document: str, time: str, op: str
) -> None:
    """Rows that other clients wrote with plain SQL — metadata thousands of levels deep,
    numbers Python cannot parse, times beyond ``datetime`` (in every time column of the
    session, its conversation and its messages) — are read without ``RecursionError``,
    ``OverflowError`` or ``ValueError``: reads return the row; writes succeed or raise a
    domain error; listings page through them, each row once."""
    CASES["foreign_rows"] += 1
    world = World(store, conn)
    user = world.fresh("foreign")
    cont = world.fresh("foreign")
    (sid, other), (cid, _) = await world.build(
        [S(user), S(user)],  # a second session and conversation for the listings
        [C(cont, 0, 2), C(world.fresh("sibling"), 0)],
    )
    meta = nested(depth, document)
    for statement in (
        "UPDATE sessions SET metadata = $2::text::jsonb WHERE id = $1",
        "UPDATE conversations SET metadata = $2::text::jsonb WHERE session_id = $1",
        "UPDATE messages SET metadata = $2::text::jsonb"
        " WHERE conversation_id IN (SELECT id FROM conversations WHERE session_id = $1)",
    ):
        # Deeper than this server's stack allows: the row keeps its metadata.
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute(statement, sid, meta)
    await conn.execute(
        "UPDATE sessions SET expires_at = $2::text::timestamptz,"
        " created_at = $2::text::timestamptz, updated_at = $2::text::timestamptz WHERE id = $1",
        sid,
        time,
    )
    await conn.execute(
        "UPDATE conversations SET created_at = $2::text::timestamptz,"
        " updated_at = $2::text::timestamptz, last_message_at = $2::text::timestamptz"
        " WHERE id = $1",
        cid,
        time,
    )
    await conn.execute(
        "UPDATE messages SET created_at = $2::text::timestamptz WHERE conversation_id = $1",
        cid,
        time,
    )

    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "sessions.get": lambda: store.sessions.get(sid),
        "sessions.list": lambda: store.sessions.list(user_id=user, limit=1),
        "sessions.update": lambda: store.sessions.update(sid, title="t", metadata={"k": 1}),
        "sessions.record_turn": lambda: store.sessions.record_turn(sid, tokens=1),
        "conversations.get": lambda: store.conversations.get(cid),
        "conversations.get_by_continuation_id": lambda: store.conversations.get_by_continuation_id(
            cont
        ),
        "conversations.list_for_session": lambda: store.conversations.list_for_session(
            sid, limit=1
        ),
        "messages.history": lambda: store.messages.history(cid, limit=1),
        "messages.count": lambda: store.messages.count(cid),
        "add_turn": lambda: store.add_turn(cont, "user", "hi", session_id=sid),
        "purge_user": lambda: store.purge_user(user),
    }
    expect = Expect()
    if op in ("sessions.update", "sessions.record_turn", "add_turn"):
        expect.allow(SessionExpiredError, InvalidStateError)  # e.g. expires_at = -infinity
    out = await world.attempt(calls[op], expect)
    if op == "sessions.list" and out.ok:

        async def following(c: str) -> Page[Any]:
            return await store.sessions.list(user_id=user, limit=1, cursor=c)

        listed = await walk(out.result, following, 1, 4)
        assert sorted(listed) == sorted([sid, other]), "the listing lost or repeated a row"
    if op == "conversations.list_for_session" and out.ok:

        async def following_c(c: str) -> Page[Any]:
            return await store.conversations.list_for_session(sid, limit=1, cursor=c)

        listed = await walk(out.result, following_c, 1, 5)
        assert sorted(listed) == sorted(
            [
                cid,
                *[
                    r["id"]
                    for r in await conn.fetch(
                        "SELECT id FROM conversations WHERE session_id = $1 AND id <> $2", sid, cid
                    )
                ],
            ]
        ), "the listing lost or repeated a row"
