"""Sessions repository against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import pytest

from sessionstore import (
    ConflictError,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    Page,
    Session,
    SessionExpiredError,
    SessionStatus,
    SessionStore,
)

from ...helpers import expire, row_counts


async def test_create_defaults(store: SessionStore) -> None:
    s = await store.sessions.create("u1")
    assert s.user_id == "u1"
    assert s.status is SessionStatus.ACTIVE
    assert (s.title, s.metadata, s.turn_count, s.total_tokens, s.version) == (None, {}, 0, 0, 1)
    assert s.created_at.tzinfo is not None
    assert s.expires_at == s.created_at + timedelta(hours=24)


async def test_create_with_ttl_title_metadata(store: SessionStore) -> None:
    s = await store.sessions.create(
        "u1", title="t", metadata={"k": [1, "x"]}, ttl=timedelta(minutes=5)
    )
    assert s.title == "t"
    assert s.metadata == {"k": [1, "x"]}
    assert s.expires_at == s.created_at + timedelta(minutes=5)
    assert await store.sessions.get(str(s.id)) == s


async def test_create_without_expiry_and_with_explicit_expiry(store: SessionStore) -> None:
    forever = await store.sessions.create("u1", ttl=None)
    assert forever.expires_at is None
    at = datetime.now(UTC) + timedelta(days=3)
    fixed = await store.sessions.create("u1", expires_at=at)
    assert fixed.expires_at == at


async def test_get_missing_raises_not_found(store: SessionStore) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        await store.sessions.get("00000000-0000-0000-0000-000000000000")


async def test_expired_session_reads_expired(store: SessionStore, conn: asyncpg.Connection) -> None:
    s = await store.sessions.create("u1")
    await expire(conn, s.id)
    assert (await store.sessions.get(s.id)).status is SessionStatus.EXPIRED


async def test_update_merges_metadata_and_bumps_version(store: SessionStore) -> None:
    s = await store.sessions.create("u1", title="a", metadata={"a": 1, "b": 2})
    u = await store.sessions.update(s.id, metadata={"b": 3, "c": 4}, expected_version=s.version)
    assert u.metadata == {"a": 1, "b": 3, "c": 4}
    assert u.title == "a"
    assert u.version == s.version + 1
    cleared = await store.sessions.update(s.id, title=None)
    assert cleared.title is None
    assert cleared.metadata == u.metadata


async def test_update_with_stale_version_conflicts_and_changes_nothing(store: SessionStore) -> None:
    s = await store.sessions.create("u1", title="first")
    await store.sessions.update(s.id, title="second", expected_version=s.version)
    with pytest.raises(ConflictError, match="expected 1"):
        await store.sessions.update(s.id, title="third", expected_version=s.version)
    assert (await store.sessions.get(s.id)).title == "second"


async def test_update_missing_and_expired(store: SessionStore, conn: asyncpg.Connection) -> None:
    with pytest.raises(NotFoundError):
        await store.sessions.update("00000000-0000-0000-0000-000000000001", title="x")
    s = await store.sessions.create("u1")
    await expire(conn, s.id)
    with pytest.raises(SessionExpiredError):
        await store.sessions.update(s.id, title="x")
    # touching an expired session persists its status
    assert await conn.fetchval("SELECT status FROM sessions WHERE id = $1", s.id) == "expired"


async def test_record_turn_is_atomic_under_concurrency(store: SessionStore) -> None:
    s = await store.sessions.create("u1")
    await asyncio.gather(*(store.sessions.record_turn(s.id, tokens=k) for k in range(200)))
    after = await store.sessions.get(s.id)
    assert after.turn_count == 200
    assert after.total_tokens == sum(range(200))
    assert after.version == s.version  # counters do not move the version


@pytest.mark.parametrize(
    ("prepare", "error"),
    [
        ("pause", InvalidStateError),
        ("complete", InvalidStateError),
        ("expire", SessionExpiredError),
    ],
)
async def test_record_turn_needs_an_active_session(
    store: SessionStore, conn: asyncpg.Connection, prepare: str, error: type[Exception]
) -> None:
    s = await store.sessions.create("u1")
    if prepare == "expire":
        await expire(conn, s.id)
    else:
        await getattr(store.sessions, prepare)(s.id)
    with pytest.raises(error):
        await store.sessions.record_turn(s.id, tokens=1)
    assert await conn.fetchval("SELECT turn_count FROM sessions WHERE id = $1", s.id) == 0


async def test_transitions(store: SessionStore) -> None:
    s = await store.sessions.create("u1")
    paused = await store.sessions.pause(s.id)
    assert paused.status is SessionStatus.PAUSED
    assert paused.version == s.version + 1
    with pytest.raises(InvalidStateError, match=r"cannot pause .*: paused → paused is not"):
        await store.sessions.pause(s.id)
    assert (await store.sessions.resume(s.id)).status is SessionStatus.ACTIVE
    done = await store.sessions.complete(s.id)
    assert done.status is SessionStatus.COMPLETED
    for action in ("resume", "pause", "complete"):
        with pytest.raises(InvalidStateError, match="completed"):
            await getattr(store.sessions, action)(s.id)


async def test_transition_of_expired_session(store: SessionStore, conn: asyncpg.Connection) -> None:
    s = await store.sessions.create("u1")
    await expire(conn, s.id)
    with pytest.raises(SessionExpiredError):
        await store.sessions.pause(s.id)
    with pytest.raises(NotFoundError):
        await store.sessions.complete("00000000-0000-0000-0000-000000000002")


async def test_list_pages_newest_first(store: SessionStore) -> None:
    made = [await store.sessions.create("u1", title=str(i)) for i in range(5)]
    await store.sessions.create("someone-else")
    seen = []
    cursor = None
    pages = 0
    for _ in range(10):  # bounded: a cursor that never ends fails the test
        page = await store.sessions.list(user_id="u1", limit=2, cursor=cursor)
        pages += 1
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert [s.id for s in seen] == [s.id for s in reversed(made)]


def _ids(page: Page[Session]) -> list[UUID]:
    return [s.id for s in page.items]


async def test_list_filters_by_effective_status(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    active = await store.sessions.create("u1")
    paused = await store.sessions.create("u1")
    await store.sessions.pause(paused.id)
    gone = await store.sessions.create("u1")
    await expire(conn, gone.id)
    assert _ids(await store.sessions.list(user_id="u1", status="active")) == [active.id]
    assert _ids(await store.sessions.list(user_id="u1", status=SessionStatus.PAUSED)) == [paused.id]
    assert _ids(await store.sessions.list(user_id="u1", status="expired")) == [gone.id]
    assert len((await store.sessions.list(user_id="u1")).items) == 3


async def test_delete_takes_the_conversations_and_messages_along(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("u1")
    other = await store.sessions.create("u1")
    for i in range(3):
        await store.add_turn(f"c{i}", "user", "x", session_id=s.id)
    kept = await store.add_turn("other", "user", "y", session_id=other.id)
    loose = await store.add_turn("loose", "user", "z")
    await store.sessions.delete(s.id)
    with pytest.raises(NotFoundError):
        await store.sessions.get(s.id)
    assert await row_counts(conn) == {"sessions": 1, "conversations": 2, "messages": 2}
    assert {r["id"] for r in await conn.fetch("SELECT id FROM conversations")} == {
        kept.conversation.id,
        loose.conversation.id,
    }
    with pytest.raises(NotFoundError):
        await store.sessions.delete(s.id)


async def test_delete_can_keep_the_conversations_detached(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("u1")
    t = await store.add_turn("c1", "user", "x", session_id=s.id)
    await store.sessions.delete(s.id, keep_conversations=True)
    assert (await store.conversations.get(t.conversation.id)).session_id is None
    assert await row_counts(conn) == {"sessions": 0, "conversations": 1, "messages": 1}
    with pytest.raises(InvalidInputError) as info:
        await store.sessions.delete(s.id, keep_conversations="no")  # type: ignore[arg-type]
    assert info.value.field == "keep_conversations"


async def test_cleanup_expired_in_batches(store: SessionStore, conn: asyncpg.Connection) -> None:
    doomed = [await store.sessions.create("u1") for _ in range(5)]
    kept_completed = await store.sessions.create("u1")
    await store.sessions.complete(kept_completed.id)
    live = await store.sessions.create("u1")
    forever = await store.sessions.create("u1", ttl=None)
    conv = await store.conversations.get_or_create("c-doomed", session_id=doomed[0].id)
    for s in [*doomed, kept_completed]:
        await expire(conn, s.id)
    assert await store.sessions.cleanup_expired(batch_size=2) == 5
    remaining = {r["id"] for r in await conn.fetch("SELECT id FROM sessions")}
    assert remaining == {kept_completed.id, live.id, forever.id}
    assert (await store.conversations.get(conv.id)).session_id is None
    assert await store.sessions.cleanup_expired() == 0


async def test_cleanup_can_delete_the_conversations_too(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    doomed = [await store.sessions.create("u1") for _ in range(3)]
    live = await store.sessions.create("u1")
    for s in [*doomed, live]:
        await store.add_turn(f"c-{s.id}", "user", "x", session_id=s.id)
        await store.add_turn(f"c-{s.id}", "assistant", "y", session_id=s.id)
    for s in doomed:
        await expire(conn, s.id)
    progress: list[int] = []
    deleted = await store.sessions.cleanup_expired(
        batch_size=2, on_progress=progress.append, delete_conversations=True
    )
    assert (deleted, progress) == (3, [2, 3])
    assert await row_counts(conn) == {"sessions": 1, "conversations": 1, "messages": 2}


async def test_invalid_cursor(store: SessionStore) -> None:
    with pytest.raises(InvalidInputError) as info:
        await store.sessions.list(user_id="u1", cursor="not-a-cursor")
    assert info.value.field == "cursor"
