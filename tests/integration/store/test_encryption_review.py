"""Adversarial review of encryption at rest (issue #28), on the real PostgreSQL.

Tests named ``test_defect_*`` show a defect: they fail on the code they were written
against, and pass once it is fixed. The others are regression guards for what held.
Races are driven deterministically: a provider whose ``wrap`` waits for an event, a
row lock held from a second connection, ``on_progress`` callbacks; every wait is
bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    ConflictError,
    ContinuationId,
    EncryptionError,
    InvalidInputError,
    MasterKey,
    NotFoundError,
    PendingWrite,
    PurgeCounts,
    SessionStore,
)
from sessionstore.crypto import sealed_key_id
from sessionstore.writebehind.spill import append_spill

from ...conftest import as_supabase_postgres, store_overrides
from ...helpers import wait_for_lock_waiters
from ...servers import TestServer

MARKER = "Qv7ReviewMarker"
SECRET = "kms-secret-Pz4wQ"
KEY = base64.b64encode(os.urandom(32)).decode()
NEW_KEY = base64.b64encode(os.urandom(32)).decode()
THIRD_KEY = base64.b64encode(os.urandom(32)).decode()
ALICE = "6f1c1a52-0000-4000-8000-0000000a11ce"
BOB = "6f1c1a52-0000-4000-8000-000000000b0b"
WAIT = 30.0  # bounds every wait on another task, lock or event


def _overrides(**extra: Any) -> dict[str, Any]:
    return {**store_overrides(), **extra}


@pytest.fixture
async def sealed(dsn: str) -> AsyncIterator[SessionStore]:
    """An open store that encrypts."""
    async with sessionstore.connect(dsn, encryption_key=KEY, **store_overrides()) as opened:
        yield opened


@pytest.fixture
async def holder(admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A second direct connection, to hold row locks."""
    connection = await asyncpg.connect(admin_dsn, statement_cache_size=0)
    yield connection
    await connection.close()


async def _read(dsn: str, name: str, **history: Any) -> list[str]:
    """The contents of conversation ``name`` as a fresh store (nothing cached) reads them."""
    async with sessionstore.connect(dsn, encryption_key=KEY, **store_overrides()) as fresh:
        got = await fresh.messages.history(ContinuationId(name), limit=1000, **history)
        return [m.content for m in got]


async def _key_of(conn: asyncpg.Connection, user: str | None) -> UUID | None:
    if user is None:
        found = await conn.fetchval(
            "SELECT key_id FROM sessionstore_private.keys WHERE user_id IS NULL"
        )
    else:
        found = await conn.fetchval(
            "SELECT key_id FROM sessionstore_private.keys WHERE user_id = $1", user
        )
    assert found is None or isinstance(found, UUID)
    return found


async def _sealed_by(conn: asyncpg.Connection, message_id: UUID) -> UUID:
    value = await conn.fetchval("SELECT content_sealed FROM messages WHERE id = $1", message_id)
    assert value is not None, "the message is stored in clear"
    return sealed_key_id(value)


def _text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


class ScriptedKey:
    """A KeyProvider around a MasterKey that a test steers: the first ``gated`` wraps
    wait for ``release`` (``entered`` says one is waiting), a ``barrier`` makes wraps
    meet, and ``unwrap_errors`` / ``wrap_errors`` are raised by the next calls."""

    def __init__(self, key: str, *, gated: int = 0, barrier: asyncio.Barrier | None = None) -> None:
        self._inner = MasterKey(key)
        self.gated = gated
        self.barrier = barrier
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.wraps = 0
        self.unwraps = 0
        self.unwrap_errors: list[BaseException] = []
        self.wrap_errors: list[BaseException] = []
        self.short = False  # unwrap returns 16 bytes

    @property
    def key_id(self) -> str:
        return self._inner.key_id

    async def wrap(self, data_key: bytes) -> bytes:
        self.wraps += 1
        if self.wrap_errors:
            raise self.wrap_errors.pop(0)
        if self.gated:
            self.gated -= 1
            self.entered.set()
            await self.release.wait()
        if self.barrier is not None:
            await self.barrier.wait()
        return await self._inner.wrap(data_key)

    async def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        self.unwraps += 1
        if self.unwrap_errors:
            raise self.unwrap_errors.pop(0)
        raw = await self._inner.unwrap(wrapped, key_id)
        return raw[:16] if self.short else raw


# ----------------------------------------------------------------- owner caching


async def test_reused_continuation_id_is_sealed_with_the_previous_owners_key(
    sealed: SessionStore, dsn: str
) -> None:
    """The owner a conversation was met through stays cached for 2 s by its continuation
    id: a conversation deleted and created again under that id for another user gets
    its messages sealed with the first user's key. Purging that first user then makes
    the second user's live messages unreadable."""
    alice = await sealed.sessions.create("alice")
    bob = await sealed.sessions.create("bob")
    await sealed.conversations.get_or_create("shared-name", session_id=alice.id)
    await sealed.messages.add(ContinuationId("shared-name"), "user", "alice's")
    await sealed.conversations.delete(ContinuationId("shared-name"))
    await sealed.conversations.get_or_create("shared-name", session_id=bob.id)
    await sealed.messages.add(ContinuationId("shared-name"), "user", "bob's")
    await sealed.purge_user("alice")
    assert await _read(dsn, "shared-name") == ["bob's"]


async def test_message_after_binding_is_sealed_with_the_no_user_key(
    sealed: SessionStore, conn: asyncpg.Connection
) -> None:
    """docs/security.md: only messages written *before* a conversation is bound stay
    under the no-user key. A write right after the binding (within the 2 s the owner
    is cached) is sealed with it too, so purge_user never shreds it in backups."""
    alice = await sealed.sessions.create("alice")
    conv = await sealed.conversations.get_or_create("bound-later")
    await sealed.messages.add(conv.id, "user", "before binding")
    await sealed.add_turn("bound-later", "user", "binding turn", session_id=alice.id)
    after = await sealed.messages.add(conv.id, "assistant", "after binding")
    assert await _sealed_by(conn, after.id) == await _key_of(conn, "alice")


async def test_other_process_seals_a_new_sessions_message_with_the_purged_key(
    sealed: SessionStore, store: SessionStore, dsn: str
) -> None:
    """Two processes: ``sealed`` has met alice's conversation; ``store`` (another
    process) purges alice. Right after, alice comes back with a new session under the
    same continuation id and ``sealed`` writes to it: sealed with the destroyed key
    (still cached there), the message is stored, its session lives, and no fresh
    process can read it (nor ``sealed`` once its cache lapses)."""
    first = await sealed.sessions.create("alice")
    await sealed.add_turn("chat-alice", "user", "before purge", session_id=first.id)
    await sealed.messages.add(ContinuationId("chat-alice"), "assistant", "cached owner")
    await store.purge_user("alice")
    again = await sealed.sessions.create("alice")
    await sealed.conversations.get_or_create("chat-alice", session_id=again.id)
    await sealed.messages.add(ContinuationId("chat-alice"), "user", "after purge")
    await sealed.add_turn("chat-alice", "assistant", "no session named")
    assert await sealed.sessions.get(again.id)
    assert await _read(dsn, "chat-alice") == ["after purge", "no session named"]


async def test_a_turn_naming_the_new_session_after_a_purge_elsewhere_is_readable(
    sealed: SessionStore, store: SessionStore, dsn: str
) -> None:
    """Guard: the session path looks the owner up afresh (a session id is never reused)."""
    first = await sealed.sessions.create("alice")
    await sealed.add_turn("c1", "user", "before purge", session_id=first.id)
    await store.purge_user("alice")
    again = await sealed.sessions.create("alice")
    await sealed.add_turn("c2", "user", "after purge", session_id=again.id)
    await sealed.enqueue_turn("c2", "assistant", "queued after purge", session_id=again.id)
    await sealed.flush()
    assert await _read(dsn, "c2") == ["after purge", "queued after purge"]


async def test_encrypt_stored_after_a_purge_elsewhere_uses_the_destroyed_key(
    sealed: SessionStore, store: SessionStore, dsn: str
) -> None:
    """``encrypt_stored`` caches ("user", id) -> key for key_cache_ttl (60 s). Alice is purged
    by another process, comes back, and writes in clear (a process without the key);
    the next run seals her new messages with the destroyed key: unreadable for good."""
    first = await store.sessions.create("alice")
    await store.add_turn("old", "user", "old clear", session_id=first.id)
    assert await sealed.encrypt_stored() == 1
    await store.purge_user("alice")
    again = await store.sessions.create("alice")
    await store.add_turn("new", "user", "new clear", session_id=again.id)
    assert await sealed.encrypt_stored() == 1
    assert await _read(dsn, "new") == ["new clear"]


# ------------------------------------------------------------------ purge races


async def test_a_session_created_during_a_purge_keeps_its_messages_readable(
    sealed: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection, dsn: str
) -> None:
    """purge_user destroys a key made meanwhile at its end. A session the user creates
    after the purge's session batches (a sign-up again, a client retrying) keeps
    living, and so must the key its turns were sealed with. (A defect found in this
    review at e43f41c: the late DESTROY_KEY took that key; fixed by 8a80f1f.)"""
    first = await sealed.sessions.create("alice")
    await sealed.add_turn("old", "user", "old", session_id=first.id)
    await conn.execute("INSERT INTO adk_user_states (app_name, user_id) VALUES ('app', 'alice')")
    past_sessions = asyncio.Event()

    def progress(counts: PurgeCounts) -> None:
        if counts.sessions:
            past_sessions.set()

    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT 1 FROM adk_user_states WHERE user_id = 'alice' FOR UPDATE")
    purge = asyncio.create_task(sealed.purge_user("alice", on_progress=progress))
    try:
        async with asyncio.timeout(WAIT):
            await past_sessions.wait()
            await wait_for_lock_waiters(conn, 1)  # the purge waits on the state row
            again = await sealed.sessions.create("alice")
            await sealed.add_turn("new", "user", "hello again", session_id=again.id)
    finally:
        await tx.rollback()
    async with asyncio.timeout(WAIT):
        counts = await purge
    assert counts.sessions == 1
    assert (await sealed.sessions.get(again.id)).id == again.id
    assert await _read(dsn, "new") == ["hello again"]


async def test_key_made_by_a_turn_racing_the_purge_survives_it(
    dsn: str, store: SessionStore, conn: asyncpg.Connection
) -> None:
    """A turn found alice keyless and is creating her key (its provider call is slow)
    while another process purges her. The key row lands after the purge's last
    DESTROY_KEY: purge_user returns with a key row of alice's still stored."""
    provider = ScriptedKey(KEY, gated=1)
    async with sessionstore.connect(dsn, key_provider=provider, **store_overrides()) as slow:
        session = await slow.sessions.create("alice")
        turn = asyncio.create_task(slow.add_turn("c", "user", "x", session_id=session.id))
        try:
            async with asyncio.timeout(WAIT):
                await provider.entered.wait()
                await store.purge_user("alice")
        finally:
            provider.release.set()
        with pytest.raises(NotFoundError):
            async with asyncio.timeout(WAIT):
                await turn
    assert await _key_of(conn, "alice") is None


async def test_a_turn_racing_the_purge_into_the_purged_session_leaves_nothing(
    sealed: SessionStore, conn: asyncpg.Connection, holder: asyncpg.Connection
) -> None:
    """Guard: a turn whose session the purge is deleting waits, then finds it gone;
    no message and no key of alice's remain."""
    session = await sealed.sessions.create("alice")
    await sealed.add_turn("c", "user", "first", session_id=session.id)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session.id)
    purge = asyncio.create_task(sealed.purge_user("alice"))
    try:
        async with asyncio.timeout(WAIT):
            await wait_for_lock_waiters(conn, 1)
            turn = asyncio.create_task(sealed.add_turn("c", "user", "x", session_id=session.id))
            await wait_for_lock_waiters(conn, 2)
    finally:
        await tx.rollback()
    async with asyncio.timeout(WAIT):
        await purge
        outcome = await asyncio.gather(turn, return_exceptions=True)
    assert isinstance(outcome[0], NotFoundError)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    assert await _key_of(conn, "alice") is None


# ------------------------------------------------------------- concurrent keys


async def test_two_stores_creating_the_first_key_at_once_agree(
    dsn: str, conn: asyncpg.Connection
) -> None:
    barrier = asyncio.Barrier(2)
    first, second = ScriptedKey(KEY, barrier=barrier), ScriptedKey(KEY, barrier=barrier)
    async with (
        sessionstore.connect(dsn, key_provider=first, **store_overrides()) as a,
        sessionstore.connect(dsn, key_provider=second, **store_overrides()) as b,
    ):
        session = await a.sessions.create("alice")
        async with asyncio.timeout(WAIT):
            ta, tb = await asyncio.gather(
                a.add_turn("from-a", "user", "a", session_id=session.id),
                b.add_turn("from-b", "user", "b", session_id=session.id),
            )
    assert (first.wraps, second.wraps) == (1, 1)  # both really raced to create it
    key = await _key_of(conn, "alice")
    assert await conn.fetchval("SELECT count(*) FROM sessionstore_private.keys") == 1
    assert await _sealed_by(conn, ta.message.id) == key == await _sealed_by(conn, tb.message.id)
    assert await _read(dsn, "from-a") == ["a"]
    assert await _read(dsn, "from-b") == ["b"]


async def test_concurrent_first_writes_call_the_provider_once(dsn: str) -> None:
    """docs/security.md: the provider "is called once per data key created, and once per
    data key a process first reads". Ten concurrent first writes of one user (a cold
    start, or the cache lapsing under traffic) each wrap and unwrap a key of their own:
    ten KMS Encrypt and ten Decrypt calls, nine wrapped keys thrown away."""
    provider = ScriptedKey(KEY)
    async with sessionstore.connect(dsn, key_provider=provider, **store_overrides()) as s:
        session = await s.sessions.create("alice")
        async with asyncio.timeout(WAIT):
            await asyncio.gather(
                *(s.add_turn(f"c{i}", "user", "hi", session_id=session.id) for i in range(10))
            )
    assert (provider.wraps, provider.unwraps) == (1, 1)


# ------------------------------------------------------------------- providers


async def test_a_transient_provider_failure_is_retried_not_set_aside(
    sealed: SessionStore, dsn: str
) -> None:
    """A KMS that does not answer once (a timeout, a throttle) while the writer seals a
    batch: the accepted turn is retried, not set aside for good. (A defect found in this
    review at e43f41c: the unwrap error was a permanent EncryptionError; fixed by
    cd61ec1.)"""
    session = await sealed.sessions.create("alice")
    await sealed.add_turn("c", "user", "creates alice's key", session_id=session.id)
    provider = ScriptedKey(KEY)
    provider.unwrap_errors.append(ConnectionError(f"KMS unreachable {SECRET}"))
    async with sessionstore.connect(dsn, key_provider=provider, **store_overrides()) as writer:
        await writer.enqueue_turn("c", "assistant", f"reply {MARKER}", session_id=session.id)
        async with asyncio.timeout(WAIT):
            await writer.flush()
        failed = writer.failed_writes()
    for item in failed:
        assert MARKER not in item.reason
        assert SECRET not in item.reason
    assert failed == []
    assert await _read(dsn, "c") == ["creates alice's key", f"reply {MARKER}"]


async def test_rotation_reports_an_unwrap_error_without_its_text(dsn: str) -> None:
    """The provider's unwrap error is EncryptionError without its text, on reads and in
    rotate_master_key (a defect found in this review at 4dfcb85, fixed by e078f02)."""
    provider = ScriptedKey(KEY)
    async with sessionstore.connect(dsn, key_provider=provider, **store_overrides()) as s:
        session = await s.sessions.create("alice")
        await s.add_turn("c", "user", "hi", session_id=session.id)
        provider.unwrap_errors.append(RuntimeError(f"AccessDenied: token {SECRET}"))
        with pytest.raises(EncryptionError) as refused:
            async with asyncio.timeout(WAIT):
                await s.rotate_master_key(NEW_KEY)
    assert SECRET not in _text(refused.value)


@pytest.mark.parametrize("where", ["first_write", "rotation"])
async def test_a_providers_wrap_error_is_encryption_error_without_its_text(
    dsn: str, where: str
) -> None:
    """A user's first write and rotate_master_key (``new.wrap``) report the KMS's wrap
    error as EncryptionError without its text. (A defect found in this review at
    e078f02: the exception and its text reached the caller; fixed by cd61ec1.)"""
    provider = ScriptedKey(KEY)
    new = ScriptedKey(NEW_KEY)
    failing = provider if where == "first_write" else new
    async with sessionstore.connect(dsn, key_provider=provider, **store_overrides()) as s:
        session = await s.sessions.create("alice")
        if where == "rotation":
            await s.add_turn("c", "user", "hi", session_id=session.id)
        failing.wrap_errors.append(RuntimeError(f"ThrottlingException {SECRET}"))
        caught: BaseException | None = None
        try:
            if where == "first_write":
                await s.add_turn("c", "user", "hi", session_id=session.id)
            else:
                await s.rotate_master_key(new)
        except Exception as exc:
            caught = exc
    assert caught is not None
    assert SECRET not in _text(caught)
    assert isinstance(caught, EncryptionError)


class _CannotWrap(ScriptedKey):
    """A master key this process may not encrypt with (KMS AccessDenied on Encrypt)."""

    async def wrap(self, data_key: bytes) -> bytes:
        raise RuntimeError("AccessDenied: kms:Encrypt")


class _CannotUnwrap(ScriptedKey):
    """A master key this process may encrypt with but not decrypt with."""

    async def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        raise RuntimeError("AccessDenied: kms:Decrypt")


async def test_a_failed_rotation_leaves_the_store_wrapping_with_the_failed_key(
    sealed: SessionStore,
) -> None:
    """rotate_master_key installs the new key as this store's wrapping key before it
    has re-wrapped anything. When the rotation fails (here: the new KMS key refuses
    Encrypt), the store keeps wrapping with it: every new user's first write fails
    from then on, until the process restarts."""
    alice = await sealed.sessions.create("alice")
    await sealed.add_turn("a", "user", "alice's", session_id=alice.id)
    with pytest.raises(Exception):  # noqa: B017, PT011 (any error: the rotation failed)
        await sealed.rotate_master_key(_CannotWrap(NEW_KEY))
    bob = await sealed.sessions.create("bob")
    turn = await sealed.add_turn("b", "user", "bob's first", session_id=bob.id)
    assert turn.message.content == "bob's first"


async def test_rotation_commits_keys_its_provider_cannot_unwrap(
    sealed: SessionStore, dsn: str
) -> None:
    """Hardening: a rotation to a master key that wraps but cannot unwrap (a KMS key
    whose policy grants this role Encrypt only) re-wraps and commits every data key;
    nothing is readable any more, here or in any process holding the old key. A
    round trip (unwrap what was just wrapped) before the UPDATE would refuse it."""
    alice = await sealed.sessions.create("alice")
    await sealed.add_turn("a", "user", "alice's", session_id=alice.id)
    failed = False
    try:
        await sealed.rotate_master_key(_CannotUnwrap(NEW_KEY))
    except EncryptionError:
        failed = True
    assert failed, "the rotation committed keys it cannot open"
    assert await _read(dsn, "a") == ["alice's"]


async def test_an_unwrap_error_on_read_is_encryption_error_without_its_text(
    sealed: SessionStore, dsn: str
) -> None:
    session = await sealed.sessions.create("alice")
    await sealed.add_turn("c", "user", f"hi {MARKER}", session_id=session.id)
    provider = ScriptedKey(KEY)
    provider.unwrap_errors.append(RuntimeError(f"AccessDenied {SECRET}"))
    async with sessionstore.connect(dsn, key_provider=provider, **store_overrides()) as s:
        with pytest.raises(EncryptionError) as refused:
            await s.messages.history(ContinuationId("c"))
        assert [m.content for m in await s.messages.history(ContinuationId("c"))] == [
            f"hi {MARKER}"
        ]
    for secret in (SECRET, MARKER, KEY):
        assert secret not in _text(refused.value)


async def test_a_provider_returning_a_short_key_is_encryption_error(
    sealed: SessionStore, dsn: str
) -> None:
    session = await sealed.sessions.create("alice")
    await sealed.add_turn("c", "user", f"hi {MARKER}", session_id=session.id)
    provider = ScriptedKey(KEY)
    provider.short = True
    async with sessionstore.connect(dsn, key_provider=provider, **store_overrides()) as s:
        with pytest.raises(EncryptionError) as read:
            await s.messages.history(ContinuationId("c"))
        with pytest.raises(EncryptionError) as write:
            await s.add_turn("c", "user", "more", session_id=session.id)
    for exc in (read.value, write.value):
        assert MARKER not in _text(exc)
        assert KEY not in _text(exc)
    assert await _read(dsn, "c") == [f"hi {MARKER}"]


# -------------------------------------------------- a key fetched inside a transaction


@pytest.mark.parametrize("operation", ["pop", "fork", "add_turn_context", "ttl_0"])
async def test_a_cold_key_cache_needs_a_second_pooled_connection(
    sealed: SessionStore, dsn: str, operation: str
) -> None:
    """pop, fork, add_turn(context=) and (with key_cache_ttl=0) every add_turn open
    sealed messages while holding their pooled connection; a key not cached is then
    fetched on a second one. With every connection held that way (a pool of one here;
    a pool of N under N such calls after a cold start or a cache lapse) they all wait
    for acquire_timeout and fail. adopt_encryption.py names this hazard and avoids it;
    these paths do not."""
    conv = await sealed.conversations.get_or_create("c")
    await sealed.messages.add(conv.id, "user", "one")
    await sealed.messages.add(conv.id, "assistant", "two")
    session = await sealed.sessions.create("alice")
    ttl = 0.0 if operation == "ttl_0" else 60.0
    async with sessionstore.connect(
        dsn,
        encryption_key=KEY,
        **_overrides(max_size=1, acquire_timeout=1.0, key_cache_ttl=ttl),
    ) as cold:
        async with asyncio.timeout(WAIT):
            if operation == "pop":
                popped = await cold.messages.pop(conv.id)
                assert popped is not None
                assert popped.content == "two"
            elif operation == "fork":
                fork = await cold.conversations.fork(conv.id, continuation_id="f")
                assert fork.message_count == 2
            elif operation == "add_turn_context":
                turn = await cold.add_turn("c", "user", "three", session_id=session.id, context=5)
                assert turn.context is not None
                assert [m.content for m in turn.context] == ["one", "two", "three"]
            else:
                turn = await cold.add_turn("other", "user", "x", session_id=session.id)
                assert turn.message.content == "x"


# ------------------------------------------------------------------- resends


async def test_an_add_turn_resend_returns_the_stored_turn_and_a_clash_quotes_nothing(
    sealed: SessionStore, conn: asyncpg.Connection
) -> None:
    session = await sealed.sessions.create("alice")
    mid = uuid4()
    meta = {"k": MARKER}
    first = await sealed.add_turn(
        "c", "user", f"hello {MARKER}", session_id=session.id, message_id=mid, metadata=meta
    )
    again = await sealed.add_turn(
        "c", "user", f"hello {MARKER}", session_id=session.id, message_id=mid, metadata=meta
    )
    assert again.message == first.message
    assert again.conversation.message_count == 1
    with_context = await sealed.add_turn(
        "c",
        "user",
        f"hello {MARKER}",
        session_id=session.id,
        message_id=mid,
        metadata=meta,
        context=5,
    )
    assert with_context.context is not None
    assert [m.id for m in with_context.context] == [mid]
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1
    assert (await sealed.sessions.get(session.id)).turn_count == 1
    for content, metadata in ((f"other {MARKER}", meta), (f"hello {MARKER}", {"k": "changed"})):
        with pytest.raises(ConflictError) as clash:
            await sealed.add_turn(
                "c", "user", content, session_id=session.id, message_id=mid, metadata=metadata
            )
        assert MARKER not in _text(clash.value)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1


async def test_a_compact_resend_returns_the_summary_and_a_clash_quotes_nothing(
    sealed: SessionStore,
) -> None:
    conv = await sealed.conversations.get_or_create("c")
    for i in range(3):
        await sealed.messages.add(conv.id, "user", f"m{i}")
    mid = uuid4()
    summary = await sealed.messages.compact(
        conv.id, through_seq=2, summary=f"sum {MARKER}", message_id=mid, metadata={"s": 1}
    )
    again = await sealed.messages.compact(
        conv.id, through_seq=2, summary=f"sum {MARKER}", message_id=mid, metadata={"s": 1}
    )
    assert again == summary
    with pytest.raises(ConflictError) as clash:
        await sealed.messages.compact(
            conv.id, through_seq=2, summary=f"new {MARKER}", message_id=mid
        )
    assert MARKER not in _text(clash.value)
    assert [m.content for m in await sealed.messages.history(conv.id)] == [f"sum {MARKER}", "m2"]
    deleting = await sealed.conversations.get_or_create("d")
    for i in range(3):
        await sealed.messages.add(deleting.id, "user", f"d{i}")
    await sealed.messages.compact(deleting.id, through_seq=2, summary="s", delete_originals=True)
    got = await sealed.messages.history(deleting.id, include_compacted=True)
    assert [m.content for m in got] == ["d2", "s"]


# ---------------------------------------------------------- removal and retention


async def test_pop_clear_and_prune_of_sealed_messages(
    sealed: SessionStore, conn: asyncpg.Connection
) -> None:
    conv = await sealed.conversations.get_or_create("c")
    for i in range(4):
        await sealed.messages.add(conv.id, "user", f"m{i}", metadata={"i": i})
    popped = await sealed.messages.pop(conv.id)
    assert popped is not None
    assert (popped.content, popped.metadata) == ("m3", {"i": 3})
    counts = await sealed.prune(keep_last=1)
    assert counts.messages == 2
    assert [m.content for m in await sealed.messages.history(conv.id)] == ["m2"]
    assert await sealed.messages.clear(conv.id) == 1
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


# ---------------------------------------------------------------- token budgets


async def test_budgets_pick_exactly_what_they_pick_in_clear(
    sealed: SessionStore, store: SessionStore
) -> None:
    """history(max_tokens=) and add_turn(context=, context_tokens=) choose the same
    messages sealed as in clear, compacted or not, with and without token counts."""
    texts: list[tuple[str, int | None]] = [
        ("", None),
        ("ä" * 9, None),
        ("x" * 13, None),
        ("🙂" * 5, 3),
        ("short", None),
        ("日本語のテキスト", None),
        ("y" * 40, 2),
    ]
    for s, name in ((store, "clear"), (sealed, "sealed")):
        session = await s.sessions.create("alice")
        for text, tokens in texts:
            await s.add_turn(name, "user", text, session_id=session.id, tokens=tokens)
    for budget in range(1, 40):
        clear = [
            m.content
            for m in await store.messages.history(ContinuationId("clear"), max_tokens=budget)
        ]
        sealed_ = [
            m.content
            for m in await sealed.messages.history(ContinuationId("sealed"), max_tokens=budget)
        ]
        assert clear == sealed_, budget
    for s, name in ((store, "clear"), (sealed, "sealed")):
        await s.messages.compact(ContinuationId(name), through_seq=3, summary="sümmary " * 3)
    for step, budget in enumerate((3, 7, 12, 25, 60)):
        picked: list[list[str]] = []
        for s, name in ((store, "clear"), (sealed, "sealed")):
            history = await s.messages.history(ContinuationId(name), max_tokens=budget)
            turn = await s.add_turn(
                name, "assistant", f"t{step} " + "z" * step, context=20, context_tokens=budget
            )
            assert turn.context is not None
            picked.append([m.content for m in history] + ["|"] + [m.content for m in turn.context])
        assert picked[0] == picked[1], budget


# ------------------------------------------------------------------ write-behind


async def test_a_queued_reply_handed_over_to_a_turn_is_sealed(
    dsn: str, conn: asyncpg.Connection
) -> None:
    async with sessionstore.connect(
        dsn, encryption_key=KEY, max_delay=3600.0, batch_size=10_000, **store_overrides()
    ) as slow:
        session = await slow.sessions.create("alice")
        await slow.add_turn("c", "user", f"q1 {MARKER}", session_id=session.id)
        await slow.enqueue_turn(
            "c", "assistant", f"reply {MARKER}", session_id=session.id, metadata={"m": MARKER}
        )
        turn = await slow.add_turn("c", "user", f"q2 {MARKER}", session_id=session.id, context=5)
        assert turn.context is not None
        assert [m.content for m in turn.context] == [
            f"q1 {MARKER}",
            f"reply {MARKER}",
            f"q2 {MARKER}",
        ]
        assert slow.stats().queued == 0
    rows = await conn.fetch("SELECT m::text AS r, content_sealed FROM messages m")
    assert len(rows) == 3
    assert all(r["content_sealed"] is not None and MARKER not in r["r"] for r in rows)


async def test_set_aside_reasons_quote_nothing_and_replay_seals(
    sealed: SessionStore, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await sealed.enqueue_turn("c", "user", f"lost {MARKER}", session_id=uuid4())
    await sealed.flush()
    failed = sealed.failed_writes()
    assert len(failed) == 1
    assert MARKER not in failed[0].reason
    conv = await sealed.conversations.get_or_create("spilled")
    items = [
        PendingWrite(
            uuid4(),
            "message",
            conv.id,
            None,
            None,
            "user",
            f"s{i} {MARKER}",
            None,
            1,
            datetime.now(UTC),
        )
        for i in range(3)
    ]
    spill = tmp_path / "spill.jsonl"
    append_spill(spill, items)
    assert MARKER in spill.read_text()  # documented: the spill file is in clear
    assert await sealed.replay(spill) == 3
    rows = await conn.fetch("SELECT content, content_sealed FROM messages")
    assert len(rows) == 3
    assert all(r["content"] == "" and r["content_sealed"] for r in rows)
    got = [m.content for m in await sealed.messages.history(conv.id)]
    assert got == [f"s{i} {MARKER}" for i in range(3)]


# -------------------------------------------------------------------- rotation


async def test_rotation_with_an_old_key_process_writing_then_twice_more(
    dsn: str, conn: asyncpg.Connection
) -> None:
    async def chat(s: SessionStore, user: str) -> None:
        session = await s.sessions.create(user)
        await s.add_turn(f"c-{user}", "user", f"{user} says hi", session_id=session.id)

    async def reads_all(s: SessionStore, users: list[str]) -> None:
        for user in users:
            got = await s.messages.history(ContinuationId(f"c-{user}"))
            assert [m.content for m in got] == [f"{user} says hi"], user

    both = MasterKey(NEW_KEY, KEY)
    async with (
        sessionstore.connect(dsn, encryption_key=KEY, **store_overrides()) as old,
        sessionstore.connect(dsn, encryption_key=KEY, **store_overrides()) as rotator,
        sessionstore.connect(dsn, key_provider=both, **store_overrides()) as during,
    ):
        await chat(old, "alice")
        assert await rotator.rotate_master_key(NEW_KEY) == 1  # alice's
        await reads_all(during, ["alice"])
        await chat(old, "bob")  # a process still on the old key: bob's key wrapped by it
        await chat(during, "carol")
        await reads_all(during, ["alice", "bob", "carol"])
        assert await during.rotate_master_key(NEW_KEY) == 1  # bob's only
        assert await during.rotate_master_key(NEW_KEY) == 0
    masters = {
        r["master_key_id"] for r in await conn.fetch("SELECT * FROM sessionstore_private.keys")
    }
    assert masters == {MasterKey(NEW_KEY).key_id}
    async with sessionstore.connect(dsn, encryption_key=NEW_KEY, **store_overrides()) as new:
        await reads_all(new, ["alice", "bob", "carol"])
        assert await new.rotate_master_key(NEW_KEY) == 0  # the same key: nothing to do
        assert await new.rotate_master_key(THIRD_KEY) == 3
        await chat(new, "dave")
        await reads_all(new, ["alice", "bob", "carol", "dave"])
    async with sessionstore.connect(dsn, encryption_key=THIRD_KEY, **store_overrides()) as third:
        await reads_all(third, ["alice", "bob", "carol", "dave"])


# ---------------------------------------------------------------- wrong inputs


async def test_malformed_keys_are_refused_naming_the_field_and_quoting_nothing(dsn: str) -> None:
    raw = os.urandom(32)
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    while not {"-", "_"} & set(urlsafe):  # one that standard base64 would misread
        urlsafe = base64.urlsafe_b64encode(os.urandom(32)).decode()
    encoded = base64.b64encode(raw).decode()
    bad: list[str | bytes] = [
        os.urandom(31),
        os.urandom(33),
        encoded[:20] + "\n" + encoded[20:],
        urlsafe,
        encoded.rstrip("="),
        base64.b64encode(os.urandom(31)).decode(),
        base64.b64encode(os.urandom(33)).decode(),
    ]
    for value in bad:
        with pytest.raises(InvalidInputError) as refused:
            sessionstore.connect(dsn, encryption_key=value)
        assert refused.value.field == "encryption_key"
        text = _text(refused.value)
        forms = [repr(value), str(value)] if isinstance(value, str) else [repr(value), value.hex()]
        for form in forms:
            assert form not in text
        with pytest.raises(InvalidInputError):
            MasterKey(value)


async def test_key_forms_that_name_the_same_key_are_the_same_key(dsn: str) -> None:
    raw = base64.b64decode(KEY)
    expected = MasterKey(KEY).key_id
    forms: list[str | bytes | bytearray] = [
        raw,
        KEY,
        KEY + "\n",
        f"  {KEY}\r\n",
        KEY.encode(),
        bytearray(raw),
    ]
    for form in forms:
        store = sessionstore.connect(dsn, encryption_key=form, **store_overrides())
        assert store._db.keys is not None
        assert store._db.keys.provider.key_id == expected
        await store.close()


async def test_something_not_a_provider_is_refused(dsn: str) -> None:
    for value in (123, object(), [KEY], {"key": KEY}):
        with pytest.raises(InvalidInputError) as refused:
            sessionstore.connect(dsn, key_provider=value)  # type: ignore[arg-type]
        assert refused.value.field == "key_provider"


async def test_a_provider_with_blocking_methods_is_accepted(dsn: str) -> None:
    """KeyProvider is runtime_checkable, so any object with the three names passes;
    one whose wrap/unwrap are plain functions (a boto3 client used without
    ``asyncio.to_thread``) is accepted, and every first write then fails (a TypeError,
    since cd61ec1 reported as a *transient* EncryptionError: the writer retries it until
    write_deadline). Expected: refused at connect, naming key_provider."""

    class Blocking:
        key_id = "sync:1"

        def wrap(self, data_key: bytes) -> bytes:
            return data_key

        def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
            return wrapped

    refused: InvalidInputError | None = None
    try:
        accepted = sessionstore.connect(dsn, key_provider=Blocking())  # type: ignore[arg-type]
    except InvalidInputError as exc:
        refused = exc
    else:
        await accepted.close()
    assert refused is not None, "a provider whose wrap and unwrap cannot be awaited was accepted"
    assert refused.field == "key_provider"


async def test_an_empty_encryption_key_turns_encryption_off_silently(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """``encryption_key=""`` (a secret that failed to render into the deployment's
    config) is taken for "no key": the store opens and writes in clear. Fail-open on
    the one setting that decides whether content is encrypted; " " is refused."""
    with pytest.raises(InvalidInputError):
        sessionstore.connect(dsn, encryption_key=" ")
    refused: InvalidInputError | None = None
    try:
        opened = sessionstore.connect(dsn, encryption_key="", **store_overrides())
    except InvalidInputError as exc:
        refused = exc
    else:
        async with opened:
            conv = await opened.conversations.get_or_create("c")
            await opened.messages.add(conv.id, "user", f"in clear {MARKER}")
    in_clear = await conn.fetchval("SELECT count(*) FROM messages WHERE content <> ''")
    assert refused is not None, f"encryption_key='' wrote {in_clear} message(s) in clear"
    assert refused.field == "encryption_key"


# -------------------------------------------------- binding later: the documented gap


async def test_the_docs_say_truthfully_what_binding_later_leaves_behind(
    sealed: SessionStore, conn: asyncpg.Connection
) -> None:
    """Messages written before a conversation is bound to a session are sealed with the
    no-user key, which purge_user never destroys: a restored copy still reads them.
    docs/security.md says so; after the binding, the user's key seals (and is
    destroyed)."""
    docs = " ".join((Path(__file__).parents[3] / "docs" / "security.md").read_text().split())
    assert "Messages written before a conversation is bound to a session stay under" in docs
    alice = await sealed.sessions.create("alice")
    early = await sealed.add_turn("late-bound", "user", "unbound")
    bound = await sealed.add_turn("late-bound", "user", "bound", session_id=alice.id)
    assert await _sealed_by(conn, early.message.id) == await _key_of(conn, None)
    assert await _sealed_by(conn, bound.message.id) == await _key_of(conn, "alice")
    saved_conv = await conn.fetch("SELECT * FROM conversations")
    saved_messages = await conn.fetch("SELECT * FROM messages")
    saved_session = await conn.fetch("SELECT * FROM sessions")
    counts = await sealed.purge_user("alice")
    assert counts.messages == 2
    for table, rows in (
        ("sessions", saved_session),
        ("conversations", saved_conv),
        ("messages", saved_messages),
    ):
        for row in rows:
            columns = list(row.keys())
            marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
            await conn.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", *row.values()
            )
    got = await sealed.messages.history(ContinuationId("late-bound"), before=2)
    assert [m.content for m in got] == ["unbound"]
    with pytest.raises(EncryptionError):
        await sealed.messages.history(ContinuationId("late-bound"))


# ------------------------------------------------------------- Supabase, as_user


@pytest.fixture
async def supabase_sealed(
    pg_server: TestServer, supabase_database: str
) -> AsyncIterator[tuple[SessionStore, asyncpg.Connection]]:
    """An encrypting store on a Supabase-like database, as Supabase's postgres, and a
    superuser connection to the same database."""
    conn = await asyncpg.connect(pg_server.admin_dsn_for(supabase_database))
    try:
        async with sessionstore.connect(
            as_supabase_postgres(pg_server.dsn_for(supabase_database)),
            encryption_key=KEY,
            **store_overrides(),
        ) as store:
            yield store, conn
    finally:
        await conn.close()


async def test_as_user_turns_history_and_forks_are_sealed_and_read(
    supabase_sealed: tuple[SessionStore, asyncpg.Connection],
) -> None:
    store, conn = supabase_sealed
    alice = store.as_user(ALICE)
    session = await alice.sessions.create(ALICE)
    await alice.add_turn("a", "user", f"one {MARKER}", session_id=session.id, metadata={"m": 1})
    turn = await alice.add_turn("a", "assistant", f"two {MARKER}", session_id=session.id, context=5)
    assert turn.context is not None
    assert [m.content for m in turn.context] == [
        f"one {MARKER}",
        f"two {MARKER}",
    ]
    fork = await alice.conversations.fork(
        ContinuationId("a"), continuation_id="a-fork", session_id=session.id, through_seq=1
    )
    got = await alice.messages.history(fork.id)
    assert [(m.content, m.metadata) for m in got] == [(f"one {MARKER}", {"m": 1})]
    rows = await conn.fetch("SELECT m::text AS r, content_sealed FROM messages m")
    assert len(rows) == 3
    assert all(r["content_sealed"] is not None and MARKER not in r["r"] for r in rows)
    bob = store.as_user(BOB)
    with pytest.raises(NotFoundError):
        await bob.messages.history(ContinuationId("a"))


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
async def test_no_api_role_can_touch_the_key_table(
    supabase_sealed: tuple[SessionStore, asyncpg.Connection], role: str
) -> None:
    store, conn = supabase_sealed
    session = await store.sessions.create(ALICE)
    await store.add_turn("a", "user", "hi", session_id=session.id)
    for statement in (
        "SELECT * FROM sessionstore_private.keys",
        "DELETE FROM sessionstore_private.keys",
        "UPDATE sessionstore_private.keys SET master_key_id = 'x'",
        "INSERT INTO sessionstore_private.keys (key_id, wrapped, master_key_id)"
        " VALUES (gen_random_uuid(), '\\x00', 'x')",
        "TRUNCATE sessionstore_private.keys",
    ):
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute(f"SET LOCAL ROLE {role}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        finally:
            await tx.rollback()
    assert await conn.fetchval("SELECT count(*) FROM sessionstore_private.keys") == 1


async def test_a_routine_grant_hands_the_key_table_to_service_role(
    supabase_sealed: tuple[SessionStore, asyncpg.Connection],
) -> None:
    """Hardening, by revision 0006's own standard ("either lock alone can be undone by a
    routine grant"): after ``GRANT ALL ON ALL TABLES IN SCHEMA public TO service_role``
    (a common Supabase fix-up), service_role, which bypasses row-level security, can
    read every wrapped key and TRUNCATE the table: every user's messages crypto-shredded
    with the service key. A schema of its own, without USAGE for the API roles, would
    keep the table out of reach of such grants and of PostgREST."""
    store, conn = supabase_sealed
    session = await store.sessions.create(ALICE)
    await store.add_turn("a", "user", "hi", session_id=session.id)
    await conn.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO service_role")
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("SET LOCAL ROLE service_role")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT key_id, wrapped FROM sessionstore_private.keys")
    finally:
        await tx.rollback()


async def test_a_users_purge_of_another_user_leaves_that_users_key(
    supabase_sealed: tuple[SessionStore, asyncpg.Connection],
) -> None:
    store, conn = supabase_sealed
    alice = store.as_user(ALICE)
    session = await alice.sessions.create(ALICE)
    await alice.add_turn("a", "user", "alice's", session_id=session.id)
    counts = await store.as_user(BOB).purge_user(ALICE)
    assert counts == PurgeCounts()
    assert await _key_of(conn, ALICE) is not None
    assert [m.content for m in await alice.messages.history(ContinuationId("a"))] == ["alice's"]
    await alice.purge_user(ALICE)
    assert await _key_of(conn, ALICE) is None
