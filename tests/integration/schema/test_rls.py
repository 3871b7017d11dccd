"""Row-level security as a Supabase user, on a Supabase-like database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    PurgeCounts,
    SessionStore,
    UserView,
)

from ...conftest import as_supabase_postgres, store_overrides
from ...helpers import row_counts
from ...servers import TestServer

ALICE = "6f1c1a52-0000-4000-8000-00000000a11c"
BOB = "6f1c1a52-0000-4000-8000-000000000b0b"


@dataclass
class World:
    store: SessionStore
    conn: asyncpg.Connection
    alice_session: UUID
    bob_session: UUID
    bob_expired: UUID
    bob_conversation: UUID
    orphan_conversation: UUID


@pytest.fixture
async def world(pg_server: TestServer, supabase_database: str) -> AsyncIterator[World]:
    conn = await asyncpg.connect(pg_server.admin_dsn_for(supabase_database))
    async with sessionstore.connect(
        as_supabase_postgres(pg_server.dsn_for(supabase_database)), **store_overrides()
    ) as store:
        a = await store.sessions.create(ALICE)
        b = await store.sessions.create(BOB)
        b_old = await store.sessions.create(BOB)
        await conn.execute(
            "UPDATE sessions SET expires_at = now() - interval '1 hour' WHERE id = $1", b_old.id
        )
        await store.add_turn("alice-c", "user", "hi from alice", session_id=a.id, tokens=1)
        bob_turn = await store.add_turn("bob-c", "user", "secret", session_id=b.id, tokens=1)
        orphan = await store.add_turn("orphan-c", "user", "no session")
        yield World(
            store, conn, a.id, b.id, b_old.id, bob_turn.conversation.id, orphan.conversation.id
        )
    await conn.close()


async def _bob_state(conn: asyncpg.Connection) -> list[Any]:
    return [
        await conn.fetch("SELECT * FROM sessions WHERE user_id = $1 ORDER BY id", BOB),
        await conn.fetch("SELECT * FROM conversations ORDER BY id"),
        await conn.fetch("SELECT * FROM messages ORDER BY id"),
    ]


Attempt = Callable[[UserView, World], Awaitable[object]]

HIDDEN: list[tuple[str, Attempt]] = [
    ("get session", lambda a, w: a.sessions.get(w.bob_session)),
    ("update session", lambda a, w: a.sessions.update(w.bob_session, title="mine")),
    ("record turn", lambda a, w: a.sessions.record_turn(w.bob_session, tokens=5)),
    ("pause", lambda a, w: a.sessions.pause(w.bob_session)),
    ("complete", lambda a, w: a.sessions.complete(w.bob_session)),
    ("delete session", lambda a, w: a.sessions.delete(w.bob_session)),
    ("get conversation", lambda a, w: a.conversations.get(w.bob_conversation)),
    ("get orphan", lambda a, w: a.conversations.get(w.orphan_conversation)),
    ("by continuation", lambda a, w: a.conversations.get_by_continuation_id("bob-c")),
    ("list conversations", lambda a, w: a.conversations.list_for_session(w.bob_session)),
    ("history", lambda a, w: a.messages.history(w.bob_conversation)),
    ("count", lambda a, w: a.messages.count(w.bob_conversation)),
    ("add message", lambda a, w: a.messages.add(w.bob_conversation, "user", "x")),
    ("add many", lambda a, w: a.messages.add_many(w.bob_conversation, [("user", "x")])),
    ("add to orphan", lambda a, w: a.messages.add(w.orphan_conversation, "user", "x")),
    (
        "turn on bob's session",
        lambda a, w: a.add_turn("new-c", "user", "x", session_id=w.bob_session),
    ),
]
REFUSED: list[tuple[str, Attempt]] = [
    ("create for bob", lambda a, w: a.sessions.create(BOB)),
    ("claim bob's continuation", lambda a, w: a.conversations.get_or_create("bob-c")),
    ("claim the orphan", lambda a, w: a.conversations.get_or_create("orphan-c")),
    (
        "turn into bob's conversation",
        lambda a, w: a.add_turn("bob-c", "user", "x", session_id=w.alice_session),
    ),
    ("session-less conversation", lambda a, w: a.conversations.get_or_create("alice-loose")),
    ("session-less turn", lambda a, w: a.add_turn("alice-loose", "user", "x")),
]


@pytest.mark.parametrize("attempt", [a for _, a in HIDDEN], ids=[n for n, _ in HIDDEN])
async def test_other_users_rows_read_as_absent(world: World, attempt: Attempt) -> None:
    before = await _bob_state(world.conn)
    with pytest.raises(NotFoundError):
        await attempt(world.store.as_user(ALICE), world)
    assert await _bob_state(world.conn) == before


@pytest.mark.parametrize("attempt", [a for _, a in REFUSED], ids=[n for n, _ in REFUSED])
async def test_writes_the_policies_refuse(world: World, attempt: Attempt) -> None:
    before = await _bob_state(world.conn)
    alice_before = await world.conn.fetchrow("SELECT * FROM sessions WHERE user_id = $1", ALICE)
    with pytest.raises(PermissionDeniedError):
        await attempt(world.store.as_user(ALICE), world)
    assert await _bob_state(world.conn) == before
    after = await world.conn.fetchrow("SELECT * FROM sessions WHERE user_id = $1", ALICE)
    assert after == alice_before  # a refused turn rolled back alice's counters too


async def test_listing_and_cleanup_see_only_own_rows(world: World) -> None:
    alice = world.store.as_user(ALICE)
    assert (await alice.sessions.list(user_id=BOB)).items == []
    assert [s.id for s in (await alice.sessions.list(user_id=ALICE)).items] == [world.alice_session]
    assert await alice.sessions.cleanup_expired() == 0
    assert (
        await world.conn.fetchval("SELECT count(*) FROM sessions WHERE id = $1", world.bob_expired)
        == 1
    )
    bob = world.store.as_user(BOB)
    assert await bob.sessions.cleanup_expired() == 1


async def test_a_user_works_on_own_rows(world: World) -> None:
    alice = world.store.as_user(ALICE, claims={"email": "alice@example.com"})
    s = await alice.sessions.create(ALICE, title="mine")
    turn = await alice.add_turn("alice-2", "user", "hello", session_id=s.id, tokens=3)
    await alice.messages.add(turn.conversation.id, "assistant", "hi")
    assert [m.content for m in await alice.messages.history(turn.conversation.id)] == [
        "hello",
        "hi",
    ]
    assert await alice.messages.count(turn.conversation.id) == 2
    updated = await alice.sessions.update(s.id, metadata={"k": 1}, expected_version=s.version)
    assert updated.metadata == {"k": 1}
    assert (await alice.sessions.pause(s.id)).status == "paused"
    page = await alice.conversations.list_for_session(s.id)
    assert [c.continuation_id for c in page.items] == ["alice-2"]


async def test_claims_may_not_override_sub_or_role(world: World) -> None:
    with pytest.raises(InvalidInputError) as info:
        world.store.as_user(ALICE, claims={"sub": BOB})
    assert info.value.field == "claims"
    with pytest.raises(InvalidInputError):
        world.store.as_user(ALICE, claims={"role": "service_role"})


@pytest.mark.parametrize(
    ("role", "claims"),
    [
        ("anon", None),
        ("authenticated", None),
        ("anon", f'{{"sub": "{ALICE}", "role": "anon"}}'),
        ("authenticated", f'{{"sub": "{ALICE}", "role": "anon"}}'),
    ],
    ids=["anon", "no claims", "anon token with a subject", "subject without authenticated role"],
)
async def test_anon_and_claimless_see_nothing(world: World, role: str, claims: str | None) -> None:
    async with world.conn.transaction():
        await world.conn.execute(f"SET LOCAL ROLE {role}")
        if claims:
            await world.conn.execute("SELECT set_config('request.jwt.claims', $1, true)", claims)
        assert await row_counts(world.conn) == {"sessions": 0, "conversations": 0, "messages": 0}


async def test_service_role_claim_sees_everything(world: World) -> None:
    async with world.conn.transaction():
        await world.conn.execute("SET LOCAL ROLE authenticated")
        await world.conn.execute(
            "SELECT set_config('request.jwt.claims', $1, true)", '{"role": "service_role"}'
        )
        assert await row_counts(world.conn) == {"sessions": 3, "conversations": 3, "messages": 3}


async def test_service_path_sees_everything(world: World) -> None:
    assert len((await world.store.sessions.list(user_id=BOB)).items) == 2
    assert (await world.store.conversations.get(world.orphan_conversation)).session_id is None


async def test_released_connection_carries_nothing(
    pg_server: TestServer, supabase_database: str
) -> None:
    overrides = {**store_overrides(), "min_size": 1, "max_size": 1}
    dsn = as_supabase_postgres(pg_server.dsn_for(supabase_database))
    async with sessionstore.connect(dsn, **overrides) as store:
        await store.sessions.create(BOB)
        alice = store.as_user(ALICE)
        await alice.sessions.create(ALICE)
        assert len((await alice.sessions.list(user_id=ALICE)).items) == 1
        row = await store._db.fetchrow(
            "SELECT current_user AS who, current_setting('request.jwt.claims', true) AS claims"
        )
        assert row is not None
        assert row["who"] != "authenticated"
        assert not row["claims"]
        # and the service path still sees bob's session on that same connection
        assert len((await store.sessions.list(user_id=BOB)).items) == 1


async def test_policies_look_up_the_user_once_per_statement(world: World) -> None:
    async with world.conn.transaction():
        await world.conn.execute("SET LOCAL ROLE authenticated")
        await world.conn.execute(
            "SELECT set_config('request.jwt.claims', $1, true)", f'{{"sub": "{ALICE}"}}'
        )
        for table in ("sessions", "conversations", "messages"):
            plan = "\n".join(r[0] for r in await world.conn.fetch(f"EXPLAIN SELECT * FROM {table}"))
            assert "InitPlan" in plan, plan


async def test_as_user_without_supabase_roles_says_so(
    admin_dsn: str, conn: asyncpg.Connection
) -> None:
    """On a database where 'authenticated' is missing (or not granted), a clear error.

    Over the direct DSN: the CI's PgBouncer logs every client in as one server role.
    """
    # a password for servers that require one (the container); trust auth ignores it
    await conn.execute("CREATE ROLE sstest_no_roles LOGIN PASSWORD 'sstest-pw'")
    try:
        await conn.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO sstest_no_roles")
        parts = urlsplit(admin_dsn)
        host = parts.netloc.split("@")[-1]
        stranger = urlunsplit(parts._replace(netloc=f"sstest_no_roles:sstest-pw@{host}"))
        async with sessionstore.connect(stranger, cache_size=0) as store:
            with pytest.raises(
                PermissionDeniedError, match="as_user needs the role 'authenticated'"
            ):
                await store.as_user(ALICE).sessions.list(user_id=ALICE)
    finally:
        await conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM sstest_no_roles")
        await conn.execute("DROP ROLE sstest_no_roles")


async def test_a_user_can_purge_only_their_own_data(world: World) -> None:
    before = await _bob_state(world.conn)
    alice = world.store.as_user(ALICE)
    assert await alice.purge_user(BOB) == PurgeCounts()  # bob's rows are not visible
    assert await _bob_state(world.conn) == before
    assert await alice.purge_user(ALICE) == PurgeCounts(sessions=1, conversations=1, messages=1)
    assert await world.conn.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", ALICE) == 0
    left = {r[0] for r in await world.conn.fetch("SELECT continuation_id FROM conversations")}
    assert left == {"bob-c", "orphan-c"}
    assert await row_counts(world.conn) == {"sessions": 2, "conversations": 2, "messages": 2}


async def test_a_user_deletes_own_session_with_its_conversations(world: World) -> None:
    before = await _bob_state(world.conn)
    alice = world.store.as_user(ALICE)
    with pytest.raises(NotFoundError):
        await alice.conversations.delete(world.bob_conversation)
    assert await _bob_state(world.conn) == before
    await alice.sessions.delete(world.alice_session)
    assert await row_counts(world.conn) == {"sessions": 2, "conversations": 2, "messages": 2}
    left = {r[0] for r in await world.conn.fetch("SELECT continuation_id FROM conversations")}
    assert left == {"bob-c", "orphan-c"}
