"""``conversations.fork`` under row-level security (``as_user`` on a Supabase-like
database): a user forks their own conversations into their own sessions, and nothing of
anyone else's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    ContinuationId,
    NotFoundError,
    PermissionDeniedError,
    SessionStore,
    UserView,
)

from ...conftest import as_supabase_postgres, store_overrides
from ...servers import TestServer

ALICE = "6f1c1a52-0000-4000-8000-00000000a11c"
BOB = "6f1c1a52-0000-4000-8000-000000000b0b"
MESSAGES = "SELECT seq, role, content, tokens, created_at FROM messages"
OF = " WHERE conversation_id = $1 ORDER BY seq"


@dataclass
class World:
    store: SessionStore
    conn: asyncpg.Connection
    alice: UUID  # alice's session, holding alice-c (3 messages)
    alice_other: UUID  # another session of alice's
    alice_conversation: UUID
    bob: UUID  # bob's session, holding bob-c
    bob_conversation: UUID


@pytest.fixture
async def world(pg_server: TestServer, supabase_database: str) -> AsyncIterator[World]:
    conn = await asyncpg.connect(pg_server.admin_dsn_for(supabase_database))
    dsn = as_supabase_postgres(pg_server.dsn_for(supabase_database))
    async with sessionstore.connect(dsn, **store_overrides()) as store:
        a = await store.sessions.create(ALICE)
        a2 = await store.sessions.create(ALICE)
        b = await store.sessions.create(BOB)
        for i in (1, 2, 3):
            turn = await store.add_turn("alice-c", "user", f"a{i}", session_id=a.id, tokens=i)
        bob = await store.add_turn("bob-c", "user", "bob's secret", session_id=b.id)
        await store.add_turn("orphan-c", "user", "no session")
        yield World(store, conn, a.id, a2.id, turn.conversation.id, b.id, bob.conversation.id)
    await conn.close()


async def _everything(conn: asyncpg.Connection) -> list[Any]:
    return [
        await conn.fetch(f"SELECT * FROM {table} ORDER BY id")
        for table in ("sessions", "conversations", "messages")
    ]


async def test_a_user_forks_their_own_conversation_into_their_own_session(world: World) -> None:
    alice = world.store.as_user(ALICE)
    fork = await alice.conversations.fork(
        ContinuationId("alice-c"),
        continuation_id="alice-edit",
        session_id=world.alice,
        through_seq=2,
    )
    assert (fork.session_id, fork.forked_from, fork.forked_at_seq) == (
        world.alice,
        world.alice_conversation,
        2,
    )
    source = await world.conn.fetch(MESSAGES + OF, world.alice_conversation)
    assert await world.conn.fetch(MESSAGES + OF, fork.id) == source[:2]
    assert (fork.message_count, fork.total_tokens) == (2, 3)
    turn = await alice.add_turn("alice-edit", "user", "edited", session_id=world.alice)
    assert turn.message.seq == 3
    # a resend under RLS returns the stored fork
    again = await alice.conversations.fork(
        world.alice_conversation,
        continuation_id="alice-edit",
        session_id=world.alice,
        through_seq=2,
    )
    assert again.id == fork.id
    # everything, by the conversation's id
    whole = await alice.conversations.fork(
        world.alice_conversation, continuation_id="alice-all", session_id=world.alice
    )
    assert await world.conn.fetch(MESSAGES + OF, whole.id) == source


Attempt = Callable[[UserView, World], Awaitable[object]]

# Each refused with the error it names, writing nothing: what is not the user's reads as
# absent; what the policies refuse raises PermissionDeniedError.
REFUSALS: list[tuple[str, Attempt, type[Exception]]] = [
    (
        "bob's conversation",
        lambda a, w: a.conversations.fork(w.bob_conversation, continuation_id="x"),
        NotFoundError,
    ),
    (
        "bob's conversation into alice's session",
        lambda a, w: a.conversations.fork(
            ContinuationId("bob-c"), continuation_id="x", session_id=w.alice
        ),
        NotFoundError,
    ),
    (
        "alice's conversation into bob's session",
        lambda a, w: a.conversations.fork(
            w.alice_conversation, continuation_id="x", session_id=w.bob
        ),
        NotFoundError,
    ),
    (
        "the orphan",
        lambda a, w: a.conversations.fork(ContinuationId("orphan-c"), continuation_id="x"),
        NotFoundError,
    ),
    (
        # the source is read as the target session reads it: another session's is refused
        "alice's conversation into her other session",
        lambda a, w: a.conversations.fork(
            w.alice_conversation, continuation_id="x", session_id=w.alice_other
        ),
        NotFoundError,
    ),
    (
        "an unbound fork",
        lambda a, w: a.conversations.fork(w.alice_conversation, continuation_id="x"),
        PermissionDeniedError,
    ),
    (
        "bob's continuation id",
        lambda a, w: a.conversations.fork(
            w.alice_conversation, continuation_id="bob-c", session_id=w.alice
        ),
        PermissionDeniedError,
    ),
]


@pytest.mark.parametrize(
    ("attempt", "error"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
async def test_refused_forks_write_nothing(
    world: World, attempt: Attempt, error: type[Exception]
) -> None:
    before = await _everything(world.conn)
    with pytest.raises(error):
        await attempt(world.store.as_user(ALICE), world)
    assert await _everything(world.conn) == before


async def test_a_fork_is_its_owner_s_alone(world: World) -> None:
    """The API roles see a fork as any conversation: its owner does, nobody else."""
    fork = await world.store.as_user(ALICE).conversations.fork(
        world.alice_conversation, continuation_id="alice-edit", session_id=world.alice
    )
    viewers = [("authenticated", ALICE, 1), ("authenticated", BOB, 0), ("anon", ALICE, 0)]
    for role, sub, seen in viewers:
        async with world.conn.transaction():
            await world.conn.execute(f"SET LOCAL ROLE {role}")
            await world.conn.execute(
                "SELECT set_config('request.jwt.claims', $1, true)",
                f'{{"sub": "{sub}", "role": "{role}"}}',
            )
            count = "SELECT count(*) FROM {} WHERE {} = $1"
            assert await world.conn.fetchval(count.format("conversations", "id"), fork.id) == seen
            copies = await world.conn.fetchval(count.format("messages", "conversation_id"), fork.id)
            assert copies == 3 * seen


async def test_deleting_a_source_is_not_blocked_by_a_fork_the_user_cannot_see(
    world: World,
) -> None:
    """The service path's unbound fork of alice's conversation is invisible to her; her
    delete of the source still clears its reference (the referential action is not
    subject to the policies)."""
    hidden = await world.store.conversations.fork(world.alice_conversation, continuation_id="svc")
    alice = world.store.as_user(ALICE)
    mine = await alice.conversations.fork(
        world.alice_conversation, continuation_id="alice-edit", session_id=world.alice
    )
    await alice.conversations.delete(world.alice_conversation)
    for fork in (hidden, mine):
        kept = await world.store.conversations.get(fork.id)
        assert (kept.forked_from, kept.forked_at_seq) == (None, 3)
    counts = await alice.purge_user(ALICE)
    assert counts.conversations == 1  # her fork; the service's unbound one is no one's
    assert (await world.store.conversations.get(hidden.id)).message_count == 3
