"""Rows another client wrote, with values Python cannot hold as they are, still read.

PostgreSQL takes jsonb a few thousand levels deep, integers of any length and times from
4713 BC to 294276 AD (and ±infinity); Python's ``json`` stops near 1,000 levels and
4,300 digits, its ``datetime`` at years 1 and 9999 (issue 13, items 1 and 3).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from sessionstore import SessionStore

DEPTH = 5000  # PostgreSQL 15 with the default max_stack_depth takes this; Python does not
# The ends of Python's range, less asyncpg's ±infinity sentinels (datetime.max / min)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC)
EARLIEST = datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)


def _deep_json(depth: int, leaf: str) -> str:
    return '{"a": ' * depth + leaf + "}" * depth


def _descend(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = value["a"]
    return value


async def test_deep_metadata_written_elsewhere_reads_exactly(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    session = await store.sessions.create("u")
    conversation = await store.conversations.get_or_create("c", session_id=session.id)
    await store.messages.add(conversation.id, "user", "hello")
    deep = _deep_json(DEPTH, "[1, 2.5]")
    await conn.execute("UPDATE sessions SET metadata = $1::text::jsonb", deep)
    await conn.execute("UPDATE conversations SET metadata = $1::text::jsonb", deep)
    await conn.execute("UPDATE messages SET metadata = $1::text::jsonb", deep)

    got = await store.sessions.list(user_id="u")
    assert _descend(got.items[0].metadata, DEPTH) == [1, 2.5]
    conv = await store.conversations.get(conversation.id)
    assert _descend(conv.metadata, DEPTH) == [1, 2.5]
    (message,) = await store.messages.history(conversation.id)
    assert _descend(message.metadata, DEPTH) == [1, 2.5]


async def test_long_integers_written_elsewhere_read_exactly(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    session = await store.sessions.create("u")
    digits = "7" * 5000  # past Python's default int_max_str_digits (4300)
    await conn.execute(
        "UPDATE sessions SET metadata = jsonb_build_object('n', $1::text::numeric) WHERE id = $2",
        digits,
        session.id,
    )
    (read,) = (await store.sessions.list(user_id="u")).items
    assert read.metadata["n"] == int(Decimal(digits))  # int(str) would refuse 5,000 digits


async def test_times_outside_pythons_range_read_as_its_ends(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    forever = await store.sessions.create("u")
    ancient = await store.sessions.create("u")
    conversation = await store.conversations.get_or_create("c", session_id=forever.id)
    await store.messages.add(conversation.id, "user", "hello")
    await conn.execute(
        "UPDATE sessions SET expires_at = 'infinity', created_at = '20000-01-01+00' WHERE id = $1",
        forever.id,
    )
    await conn.execute(
        "UPDATE sessions SET created_at = '-infinity', expires_at = '4000-01-01 BC+00' "
        "WHERE id = $1",
        ancient.id,
    )
    await conn.execute("UPDATE messages SET created_at = '100000-01-01+00'")
    await conn.execute("UPDATE conversations SET last_message_at = 'infinity'")

    listed = {s.id: s for s in (await store.sessions.list(user_id="u")).items}
    assert listed[forever.id].expires_at == LATEST
    assert listed[forever.id].created_at == LATEST
    assert listed[ancient.id].created_at == EARLIEST
    assert listed[ancient.id].expires_at == EARLIEST
    assert listed[ancient.id].status == "expired"
    assert (await store.sessions.get(forever.id)).status == "active"
    (message,) = await store.messages.history(conversation.id)
    assert message.created_at == LATEST
    assert (await store.conversations.get(conversation.id)).last_message_at == LATEST


async def _pages_end_without_repeats(
    store: SessionStore, user_id: str, *, limit: int, pages: int
) -> None:
    """Paging ``user_id``'s sessions ends within ``pages`` pages and shows no row twice."""
    seen: list[UUID] = []
    cursor = None
    for _ in range(pages):
        page = await store.sessions.list(user_id=user_id, limit=limit, cursor=cursor)
        seen += [s.id for s in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None
    assert len(seen) == len(set(seen))


async def test_paging_past_out_of_range_times_ends(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """A cursor at the end of Python's range once paged the same row forever: asyncpg
    sends datetime.max as infinity."""
    ids = {(await store.sessions.create("u")).id for _ in range(3)}
    await conn.execute(
        "UPDATE sessions SET created_at = '20000-01-01+00' WHERE id = ANY($1::uuid[])",
        list(ids)[:2],
    )
    await _pages_end_without_repeats(store, "u", limit=1, pages=5)


async def test_decimals_too_long_for_a_float_read_exactly(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """json reads 400 digits and a fraction as float('inf'), without an error."""
    session = await store.sessions.create("u")
    digits = "9" * 400 + ".5"
    await conn.execute(
        "UPDATE sessions SET metadata = jsonb_build_object('d', $1::text::numeric) WHERE id = $2",
        digits,
        session.id,
    )
    (read,) = (await store.sessions.list(user_id="u")).items
    assert read.metadata["d"] == Decimal(digits)


async def test_paging_through_rows_older_than_year_1_ends(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """More rows before year 1 than fit on a page once paged the same page forever."""
    for _ in range(4):
        await store.sessions.create("old")
    await conn.execute("UPDATE sessions SET created_at = '4000-01-01 BC+00' WHERE user_id = 'old'")
    await _pages_end_without_repeats(store, "old", limit=2, pages=6)
