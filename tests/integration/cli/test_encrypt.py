"""``encrypt_stored`` and ``sessionstore encrypt``: messages stored in clear are sealed in
place with their users' data keys, read back byte for byte, leave no clear text behind,
and the pass runs beside live traffic (a locked message is passed over, not waited for)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from typer.testing import CliRunner, Result

import sessionstore
from sessionstore import (
    ContinuationId,
    EncryptionError,
    InvalidInputError,
    Message,
    SessionStore,
)
from sessionstore.adopt_encryption import encrypt_stored
from sessionstore.cli import app
from sessionstore.crypto import sealed_key_id

from ...conftest import store_overrides
from ...helpers import eventually
from .test_cli import HELP_WIDTH, _wrapped_twice, text

MARKER = "zq-marker-7f3a"
#: Content and metadata that must come back exactly: non-ASCII, escapes, long numbers.
UNICODE = f'héllo {MARKER} — 日本語 🙂 \\n "quoted" \u2028 end'
METADATA: dict[str, Any] = {
    "note": f"métadonnée {MARKER} ✓",
    "nested": {"list": [1, 2.5, None, True, "ü"], "emoji": "🚀"},
    "big": 12345678901234567890,
}

runner = CliRunner()


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def key() -> str:
    return new_key()


@pytest.fixture
async def keyed(dsn: str, key: str) -> AsyncIterator[SessionStore]:
    """A store on the same database with the master key ``key``."""
    async with sessionstore.connect(dsn, encryption_key=key, **store_overrides()) as opened:
        yield opened


async def _write_clear(store: SessionStore) -> list[UUID]:
    """Messages in clear (``store`` has no key) of alice, of bob and of no user; the
    ids of their conversations."""
    conversations = []
    for user in ("alice", "bob"):
        session = await store.sessions.create(user)
        turn = await store.add_turn(
            f"chat-{user}", "user", UNICODE, session_id=session.id, metadata=METADATA
        )
        await store.add_turn(f"chat-{user}", "assistant", f"{user} reply", session_id=session.id)
        await store.add_turn(f"chat-{user}", "user", "", session_id=session.id, tokens=3)
        conversations.append(turn.conversation.id)
    loose = await store.add_turn("no-session", "user", UNICODE, metadata=METADATA)
    await store.add_turn("no-session", "assistant", "plain")
    conversations.append(loose.conversation.id)
    return conversations


async def _history(store: SessionStore, conversations: list[UUID]) -> list[Message]:
    return [m for c in conversations for m in await store.messages.history(c, limit=100)]


async def _clear_count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM messages WHERE content_sealed IS NULL"))


async def test_clear_messages_read_back_identical_once_sealed(
    store: SessionStore, keyed: SessionStore, conn: asyncpg.Connection
) -> None:
    conversations = await _write_clear(store)
    before = await _history(store, conversations)
    assert len(before) == 8
    assert await _clear_count(conn) == 8
    seen: list[int] = []
    assert await encrypt_stored(keyed._db, batch_size=3, on_progress=seen.append) == 8
    assert seen == [3, 6, 8]
    after = await _history(keyed, conversations)
    assert [m.model_dump() for m in after] == [m.model_dump() for m in before]
    assert after[0].content == UNICODE
    assert after[0].metadata == METADATA
    # Stored sealed: nothing in clear, in no column of any message.
    rows = await conn.fetch(
        "SELECT id, content, metadata::text AS metadata, content_sealed, metadata_sealed"
        " FROM messages"
    )
    assert len(rows) == 8
    with_metadata = {m.id for m in before if m.metadata}
    assert len(with_metadata) == 3
    for row in rows:
        assert row["content"] == ""
        assert row["metadata"] == "{}"
        assert row["content_sealed"] is not None
        if row["id"] in with_metadata:  # empty metadata may stay {} (as a live write's)
            assert row["metadata_sealed"] is not None
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM messages m WHERE m::text LIKE '%' || $1 || '%'", MARKER
        )
        == 0
    )
    sealed = b"".join(r["content_sealed"] + (r["metadata_sealed"] or b"") for r in rows)
    assert MARKER.encode() not in sealed
    # A store without the key no longer reads them.
    with pytest.raises(EncryptionError):
        await store.messages.history(conversations[0])


async def test_each_users_messages_are_sealed_with_that_users_key(
    store: SessionStore, keyed: SessionStore, conn: asyncpg.Connection
) -> None:
    await _write_clear(store)
    assert await encrypt_stored(keyed._db) == 8
    rows = await conn.fetch(
        """
        SELECT s.user_id, m.content_sealed, m.metadata_sealed FROM messages m
        JOIN conversations c ON c.id = m.conversation_id
        LEFT JOIN sessions s ON s.id = c.session_id
        """
    )
    key_of = {
        r["user_id"]: r["key_id"]
        for r in await conn.fetch("SELECT user_id, key_id FROM sessionstore_private.keys")
    }
    assert set(key_of) == {"alice", "bob", None}
    assert len(set(key_of.values())) == 3
    for row in rows:
        assert sealed_key_id(row["content_sealed"]) == key_of[row["user_id"]]
        if row["metadata_sealed"] is not None:
            assert sealed_key_id(row["metadata_sealed"]) == key_of[row["user_id"]]
    # What the store writes for alice from now on is sealed with the same key.
    alice = (await keyed.sessions.list(user_id="alice")).items[0]
    turn = await keyed.add_turn("chat-alice", "user", "new", session_id=alice.id)
    sealed = await conn.fetchval(
        "SELECT content_sealed FROM messages WHERE id = $1", turn.message.id
    )
    assert sealed_key_id(sealed) == key_of["alice"]


async def test_a_locked_message_is_passed_over_then_sealed_by_the_next_run(
    store: SessionStore, keyed: SessionStore, conn: asyncpg.Connection, admin_dsn: str
) -> None:
    conversations = await _write_clear(store)
    before = await _history(store, conversations)
    ids = [
        r["id"]
        for r in await conn.fetch(
            "SELECT id FROM messages WHERE content_sealed IS NULL ORDER BY id"
        )
    ]
    held = ids[len(ids) // 2]  # in the middle: batches before and after it
    holder = await asyncpg.connect(admin_dsn, statement_cache_size=0)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT id FROM messages WHERE id = $1 FOR UPDATE", held)
        async with asyncio.timeout(10):  # a pass that waited for the lock would hang here
            assert await encrypt_stored(keyed._db, batch_size=2) == 7
        assert await conn.fetchval(
            "SELECT content_sealed IS NULL FROM messages WHERE id = $1", held
        )
        await tx.rollback()
    finally:
        await holder.close()
    assert await encrypt_stored(keyed._db, batch_size=2) == 1
    assert await _clear_count(conn) == 0
    assert await encrypt_stored(keyed._db) == 0
    assert [(m.id, m.content) for m in await _history(keyed, conversations)] == [
        (m.id, m.content) for m in before
    ]


async def test_a_batch_reaching_past_what_was_read_ahead_finds_those_keys_first(
    keyed: SessionStore, conn: asyncpg.Connection, admin_dsn: str
) -> None:
    """The batch's owners are read ahead, unlocked; the batch itself passes over a locked
    message and takes the next, another user's: that user's key is found outside the
    transaction, and the batch run again."""
    first, second = UUID(int=1), UUID(int=2)
    for message_id, user in ((first, "alice"), (second, "bob")):
        await conn.execute(
            """
            WITH s AS (INSERT INTO sessions (user_id) VALUES ($2) RETURNING id),
            c AS (
                INSERT INTO conversations (continuation_id, session_id, message_count)
                SELECT 'c-' || $2, s.id, 1 FROM s RETURNING id
            )
            INSERT INTO messages (id, conversation_id, seq, role, content)
            SELECT $1, c.id, 1, 'user', 'text of ' || $2 FROM c
            """,
            message_id,
            user,
        )
    holder = await asyncpg.connect(admin_dsn, statement_cache_size=0)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", first)
            async with asyncio.timeout(10):
                assert await encrypt_stored(keyed._db, batch_size=1) == 1
    finally:
        await holder.close()
    sealed = await conn.fetchval("SELECT content_sealed FROM messages WHERE id = $1", second)
    bob = await conn.fetchval("SELECT key_id FROM sessionstore_private.keys WHERE user_id = 'bob'")
    assert sealed_key_id(sealed) == bob
    assert await encrypt_stored(keyed._db, batch_size=1) == 1
    read = await keyed.messages.history(ContinuationId("c-bob"))
    assert [m.content for m in read] == ["text of bob"]


async def test_a_second_run_seals_nothing(
    store: SessionStore, keyed: SessionStore, conn: asyncpg.Connection
) -> None:
    await _write_clear(store)
    assert await encrypt_stored(keyed._db) == 8
    stored = await conn.fetch("SELECT id, content_sealed FROM messages ORDER BY id")
    seen: list[int] = []
    assert await encrypt_stored(keyed._db, on_progress=seen.append) == 0
    assert seen == []
    assert await conn.fetch("SELECT id, content_sealed FROM messages ORDER BY id") == stored


async def test_sealing_beside_live_writers(
    store: SessionStore, keyed: SessionStore, conn: asyncpg.Connection
) -> None:
    """Clear and sealed writers keep appending to the same conversations during the pass;
    every message stays readable, and a later run leaves nothing in clear."""
    alice = await store.sessions.create("alice")
    for i in range(300):
        await store.add_turn("busy", "user", f"old {i}", session_id=alice.id)
    stop = asyncio.Event()
    written: list[str] = []

    async def chat(writer: SessionStore, tag: str) -> None:
        n = 0
        while not stop.is_set() and n < 200:  # history reads at most 1000 at once
            await writer.add_turn("busy", "user", f"{tag} {n}", session_id=alice.id)
            written.append(f"{tag} {n}")
            n += 1

    writers = [
        asyncio.create_task(chat(keyed, "sealed")),
        asyncio.create_task(chat(store, "clear")),
    ]
    try:
        await eventually(lambda: len(written) >= 10, what="both writers writing")
        async with asyncio.timeout(60):
            first = await encrypt_stored(keyed._db, batch_size=7)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    # A turn locks its conversation and session, never a stored message: nothing of the
    # old ones was passed over.
    assert first >= 300
    second = await encrypt_stored(keyed._db, batch_size=7)
    assert await _clear_count(conn) == 0
    history = await keyed.messages.history(
        (await keyed.conversations.get_by_continuation_id("busy")).id, limit=1000
    )
    assert len(history) == 300 + len(written)
    assert {m.content for m in history} == {f"old {i}" for i in range(300)} | set(written)
    assert first + second == 300 + sum(w.startswith("clear") for w in written)


async def test_one_pooled_connection_suffices(
    store: SessionStore, dsn: str, key: str, conn: asyncpg.Connection
) -> None:
    """Keys are found outside the batch's transaction: a pool of one connection does not
    wait on itself."""
    await _write_clear(store)
    overrides = {**store_overrides(), "min_size": 1, "max_size": 1, "acquire_timeout": 5.0}
    async with sessionstore.connect(dsn, encryption_key=key, **overrides) as small:
        async with asyncio.timeout(20):
            assert await encrypt_stored(small._db, batch_size=2) == 8
    assert await _clear_count(conn) == 0


async def test_needs_a_key_and_a_valid_batch_size(store: SessionStore, keyed: SessionStore) -> None:
    with pytest.raises(EncryptionError) as refused:
        await encrypt_stored(store._db)
    assert "encryption_key" in str(refused.value)
    for size in (0, -1, 100_001, True, "10", 2.0):
        with pytest.raises(InvalidInputError) as bad:
            await encrypt_stored(keyed._db, batch_size=size)  # type: ignore[arg-type]
        assert bad.value.field == "batch_size"

    async def coroutine(_: int) -> None:
        pass

    with pytest.raises(InvalidInputError) as bad:
        await encrypt_stored(keyed._db, on_progress=coroutine)  # type: ignore[arg-type]
    assert bad.value.field == "on_progress"


# -- the command ------------------------------------------------------------------------


async def cli(*args: str, key: str | None) -> Result:
    env = {"SESSIONSTORE_ENCRYPTION_KEY": key}
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


async def test_the_command_seals_what_is_in_clear(
    store: SessionStore, admin_dsn: str, dsn: str, key: str, conn: asyncpg.Connection
) -> None:
    conversations = await _write_clear(store)
    before = await _history(store, conversations)
    result = await cli("encrypt", "--dsn", admin_dsn, "--batch-size", "3", key=key)
    assert result.exit_code == 0, result.output
    assert "encrypted 8 messages stored in clear" in text(result)
    assert key not in result.output
    assert MARKER not in result.output
    assert await _clear_count(conn) == 0
    async with sessionstore.connect(dsn, encryption_key=key, **store_overrides()) as keyed:
        after = await _history(keyed, conversations)
    assert [m.model_dump() for m in after] == [m.model_dump() for m in before]
    again = await cli("encrypt", "--dsn", admin_dsn, key=key)
    assert again.exit_code == 0, again.output
    assert "encrypted 0 messages stored in clear" in text(again)


async def test_the_command_refuses_to_run_without_a_key(
    store: SessionStore, admin_dsn: str, conn: asyncpg.Connection
) -> None:
    await _write_clear(store)
    result = await cli("encrypt", "--dsn", admin_dsn, key=None)
    assert result.exit_code == 1
    assert "set SESSIONSTORE_ENCRYPTION_KEY" in text(result)
    assert await _clear_count(conn) == 8
    bad = await cli("encrypt", "--dsn", admin_dsn, key="not-a-key")
    assert bad.exit_code == 1
    assert "encryption_key" in text(bad)
    assert "not-a-key" not in bad.output


@pytest.mark.parametrize("size", ["0", "100001", "x"])
async def test_the_command_refuses_a_bad_batch_size(size: str, key: str) -> None:
    result = await cli(
        "encrypt", "--dsn", "postgresql://nobody@127.0.0.1:1/none", "--batch-size", size, key=key
    )
    assert result.exit_code == 2
    assert "Invalid value for '--batch-size'" in text(result)


async def test_the_command_has_plain_help() -> None:
    result = await asyncio.to_thread(
        runner.invoke,
        app,
        ["encrypt", "--help"],
        terminal_width=HELP_WIDTH,
        prog_name="sessionstore",
    )
    assert result.exit_code == 0
    assert result.output.startswith("Usage: sessionstore encrypt")
    assert "--batch-size N" in result.output
    assert "SESSIONSTORE_ENCRYPTION_KEY" in result.output
    assert _wrapped_twice(result.output) == []
    assert max(len(line) for line in result.output.splitlines()) <= HELP_WIDTH
