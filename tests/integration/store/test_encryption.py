"""Encryption at rest, on the real PostgreSQL: nothing people wrote is stored in clear,
everything reads back exactly, a value off its row is refused, erasure reaches copies,
rotation under load loses nothing, and no key shows anywhere."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import subprocess
import traceback
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sessionstore
from sessionstore import (
    ContinuationId,
    EncryptionError,
    InvalidInputError,
    MasterKey,
    SessionStore,
    SessionStoreError,
    health,
)
from sessionstore.crypto import SEALED_OVERHEAD, sealed_key_id

from ...conftest import store_overrides
from ...servers import TestServer
from ...strategies import ANY_CHAR, SPECIAL_TEXT

MARKER = "Zx9MarkerQ"
KEY = base64.b64encode(os.urandom(32)).decode()
OTHER_KEY = base64.b64encode(os.urandom(32)).decode()

TABLES = (
    "sessions",
    "conversations",
    "messages",
    "sessionstore_private.keys",
    "adk_session_states",
    "adk_user_states",
    "langgraph_checkpoints",
    "langgraph_blobs",
    "langgraph_writes",
)


@pytest.fixture
async def sealed(dsn: str) -> AsyncIterator[SessionStore]:
    """An open store that encrypts."""
    async with sessionstore.connect(dsn, encryption_key=KEY, **store_overrides()) as opened:
        yield opened


async def _marked_everywhere(store: SessionStore) -> tuple[UUID, list[str]]:
    """One message of every write path, each carrying MARKER in content and metadata;
    the session id and the continuation ids written."""
    session = await store.sessions.create("alice")
    meta = {"note": MARKER, "deep": [{"x": MARKER}]}
    await store.add_turn("c-turn", "user", f"turn {MARKER}", session_id=session.id, metadata=meta)
    await store.add_turn(
        "c-turn", "user", f"ctx {MARKER}", session_id=session.id, metadata=meta, context=5
    )
    await store.enqueue_turn(
        "c-queued", "assistant", f"queued {MARKER}", session_id=session.id, metadata=meta
    )
    await store.flush()
    await store.enqueue_turn("c-turn", "assistant", f"reply {MARKER}", session_id=session.id)
    await store.add_turn(
        "c-turn", "user", f"after reply {MARKER}", session_id=session.id, context=10
    )
    conv = await store.conversations.get_or_create("c-plain", session_id=session.id)
    await store.messages.add(conv.id, "user", f"add {MARKER}", metadata=meta)
    await store.messages.add_many(
        conv.id, [("user", f"many {MARKER}", meta), ("assistant", f"many2 {MARKER}")]
    )
    await store.messages.add_many(
        conv.id, [("user", f"many-turn {MARKER}", meta)], session_id=session.id
    )
    await store.messages.enqueue(conv.id, "assistant", f"enqueued {MARKER}", metadata=meta)
    await store.flush()
    await store.messages.compact(conv.id, through_seq=2, summary=f"summary {MARKER}", metadata=meta)
    await store.conversations.fork(conv.id, continuation_id="c-fork", session_id=session.id)
    unbound = await store.conversations.get_or_create("c-unbound")
    await store.messages.add(unbound.id, "user", f"unbound {MARKER}", metadata=meta)
    return session.id, ["c-turn", "c-queued", "c-plain", "c-fork", "c-unbound"]


async def test_no_marker_in_any_column_or_in_pg_dump(
    sealed: SessionStore, conn: asyncpg.Connection, admin_dsn: str
) -> None:
    _, names = await _marked_everywhere(sealed)
    for table in TABLES:
        rows = await conn.fetch(f"SELECT t::text AS r FROM {table} t")
        assert not [r["r"] for r in rows if MARKER in r["r"]], table
    # The sealed values themselves, decoded as text every way a reader might.
    for row in await conn.fetch("SELECT content_sealed, metadata_sealed FROM messages"):
        assert row["content_sealed"] is not None
        for value in row.values():
            assert value is None or MARKER.encode() not in value
    # Every message is sealed, and reads back.
    assert await conn.fetchval("SELECT count(*) FROM messages WHERE content_sealed IS NULL") == 0
    assert await conn.fetchval("SELECT count(*) FROM messages WHERE content <> ''") == 0
    for name in names:
        for message in await sealed.messages.history(ContinuationId(name), include_compacted=True):
            assert MARKER in message.content
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.skip("no pg_dump here (the SQL check above ran)")
    dump = await asyncio.to_thread(
        subprocess.run, [pg_dump, "--data-only", admin_dsn], capture_output=True, timeout=60
    )
    if dump.returncode != 0 and b"version mismatch" in dump.stderr:
        pytest.skip("this pg_dump is older than the server (the SQL check above ran)")
    assert dump.returncode == 0, dump.stderr.decode(errors="replace")

    assert dump.stdout.count(b"\nCOPY public.messages") == 1
    assert MARKER.encode() not in dump.stdout


async def test_the_token_budget_counts_sealed_bytes_exactly(
    sealed: SessionStore, store: SessionStore
) -> None:
    """A message without a token count costs ⌈UTF-8 bytes / 4⌉ in SQL, sealed or not."""
    for s, name in ((sealed, "sealed"), (store, "clear")):
        conv = await s.conversations.get_or_create(name)
        for text in ("ä" * 10, "x" * 7, "🙂" * 3):  # 20, 7 and 12 bytes: 5, 2 and 3 tokens
            await s.messages.add(conv.id, "user", text)
        got = [m.content for m in await s.messages.history(conv.id, max_tokens=5)]
        assert got == ["x" * 7, "🙂" * 3], name
        got = [m.content for m in await s.messages.history(conv.id, max_tokens=10)]
        assert got == ["ä" * 10, "x" * 7, "🙂" * 3], name


async def test_sealed_length_is_content_bytes_plus_overhead(
    sealed: SessionStore, conn: asyncpg.Connection
) -> None:
    conv = await sealed.conversations.get_or_create("len")
    message = await sealed.messages.add(conv.id, "user", "héllo")
    size = await conn.fetchval(
        "SELECT octet_length(content_sealed) FROM messages WHERE id = $1", message.id
    )
    assert size == len("héllo".encode()) + SEALED_OVERHEAD


TEXT = st.one_of(st.text(ANY_CHAR, max_size=40), st.sampled_from(SPECIAL_TEXT))
METADATA = st.dictionaries(
    st.text(ANY_CHAR, max_size=6), st.one_of(TEXT, st.integers()), max_size=3
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=TEXT, metadata=METADATA)
async def test_every_unicode_form_round_trips_exactly(
    sealed: SessionStore, store: SessionStore, content: str, metadata: dict[str, Any]
) -> None:
    """What the clear store accepts the sealed one accepts and returns exactly; what it
    refuses the sealed one refuses with the same InvalidInputError."""
    outcomes: list[tuple[str, str | None]] = []
    for s in (store, sealed):
        try:
            turn = await s.add_turn("uni", "user", content, metadata=metadata)
        except InvalidInputError as exc:
            outcomes.append(("refused", exc.field))
            continue
        back = await s.messages.history(ContinuationId("uni"), limit=1)
        assert back[-1].content == content == turn.message.content
        assert back[-1].metadata == metadata == turn.message.metadata
        outcomes.append(("stored", None))
    assert outcomes[0] == outcomes[1]


async def test_a_ciphertext_moved_to_another_row_or_column_is_refused(
    sealed: SessionStore, conn: asyncpg.Connection
) -> None:
    conv = await sealed.conversations.get_or_create("move")
    first = await sealed.messages.add(conv.id, "user", f"first {MARKER}", metadata={"a": 1})
    second = await sealed.messages.add(conv.id, "user", "second")
    await conn.execute(
        "UPDATE messages SET content_sealed = (SELECT content_sealed FROM messages WHERE id = $1)"
        " WHERE id = $2",
        first.id,
        second.id,
    )
    with pytest.raises(EncryptionError) as moved:
        await sealed.messages.history(conv.id)
    assert MARKER not in str(moved.value)
    # Back in place, then the metadata's sealed value into the content column.
    await conn.execute(
        "UPDATE messages SET content_sealed = metadata_sealed WHERE id = $1", first.id
    )
    with pytest.raises(EncryptionError):
        await sealed.messages.history(conv.id, before=2)


async def test_another_master_key_is_refused_in_one_sentence(
    sealed: SessionStore, dsn: str
) -> None:
    conv = await sealed.conversations.get_or_create("other-key")
    await sealed.messages.add(conv.id, "user", f"secret {MARKER}")
    async with sessionstore.connect(dsn, encryption_key=OTHER_KEY, **store_overrides()) as other:
        with pytest.raises(EncryptionError) as wrong:
            await other.messages.history(conv.id)
    async with sessionstore.connect(dsn, **store_overrides()) as keyless:
        with pytest.raises(EncryptionError) as missing:
            await keyless.messages.history(conv.id)
    for exc in (wrong.value, missing.value):
        text = "".join(traceback.format_exception(exc))
        assert "\n" not in str(exc)
        for secret in (KEY, OTHER_KEY, MARKER):
            assert secret not in text
    assert "encryption_key" in str(missing.value)


async def test_purge_then_restore_from_a_saved_copy_never_decrypts(
    sealed: SessionStore, conn: asyncpg.Connection
) -> None:
    """The user's rows saved before purge_user and put back afterwards (a restored
    backup) read as EncryptionError; another user's rows are untouched."""
    alice = await sealed.sessions.create("alice")
    bob = await sealed.sessions.create("bob")
    await sealed.add_turn("a", "user", f"alice {MARKER}", session_id=alice.id)
    await sealed.add_turn("b", "user", "bob's", session_id=bob.id)
    saved = {
        table: await conn.fetch(f"SELECT * FROM {table} WHERE {where}")
        for table, where in (
            ("sessions", "user_id = 'alice'"),
            ("conversations", "continuation_id = 'a'"),
            (
                "messages",
                "conversation_id IN (SELECT id FROM conversations WHERE continuation_id = 'a')",
            ),
        )
    }
    counts = await sealed.purge_user("alice")
    assert counts.messages == 1
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM sessionstore_private.keys WHERE user_id = 'alice'"
        )
        == 0
    )
    for table, rows in saved.items():
        for row in rows:
            columns = list(row.keys())
            placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
            await conn.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})",
                *row.values(),
            )
    with pytest.raises(EncryptionError, match="no longer exist"):
        await sealed.messages.history(ContinuationId("a"))
    # A new store (nothing cached) says the same.
    async with sessionstore.connect(
        sealed.config.dsn, encryption_key=KEY, **store_overrides()
    ) as fresh:
        with pytest.raises(EncryptionError):
            await fresh.messages.history(ContinuationId("a"))
        assert [m.content for m in await fresh.messages.history(ContinuationId("b"))] == ["bob's"]


async def test_purge_destroys_the_key_even_from_a_store_without_one(
    sealed: SessionStore, store: SessionStore, conn: asyncpg.Connection
) -> None:
    alice = await sealed.sessions.create("alice")
    await sealed.add_turn("a", "user", "hi", session_id=alice.id)
    await store.purge_user("alice")
    assert await conn.fetchval("SELECT count(*) FROM sessionstore_private.keys") == 0


async def test_a_user_gets_a_new_key_after_a_purge(
    sealed: SessionStore, conn: asyncpg.Connection
) -> None:
    first = await sealed.sessions.create("alice")
    old = (await sealed.add_turn("a", "user", "one", session_id=first.id)).message
    await sealed.purge_user("alice")
    again = await sealed.sessions.create("alice")
    new = (await sealed.add_turn("a2", "user", "two", session_id=again.id)).message
    sealed_values = await conn.fetch("SELECT id, content_sealed FROM messages")
    assert [r["id"] for r in sealed_values] == [new.id]
    assert old.id != new.id
    assert [m.content for m in await sealed.messages.history(ContinuationId("a2"))] == ["two"]


async def test_each_user_has_their_own_key_and_no_api_role_can_read_them(
    sealed: SessionStore, conn: asyncpg.Connection
) -> None:
    for user in ("alice", "bob"):
        session = await sealed.sessions.create(user)
        await sealed.add_turn(f"c-{user}", "user", "hi", session_id=session.id)
    rows = await conn.fetch(
        "SELECT c.continuation_id, m.content_sealed FROM messages m"
        " JOIN conversations c ON c.id = m.conversation_id ORDER BY 1"
    )
    key_ids = {r["continuation_id"]: sealed_key_id(r["content_sealed"]) for r in rows}
    assert key_ids["c-alice"] != key_ids["c-bob"]
    stored = {r["key_id"] for r in await conn.fetch("SELECT key_id FROM sessionstore_private.keys")}
    assert set(key_ids.values()) <= stored
    assert await conn.fetchval(
        "SELECT relrowsecurity FROM pg_class WHERE oid = 'sessionstore_private.keys'::regclass"
    )


async def test_rotation_under_load_loses_nothing(sealed: SessionStore, dsn: str) -> None:
    users = [f"u{i}" for i in range(30)]
    sessions = {u: (await sealed.sessions.create(u)).id for u in users}
    written: list[tuple[str, str]] = []
    for user in users:  # each user's key exists, wrapped by the old master key
        await sealed.add_turn(f"c-{user}", "user", f"{user}-first", session_id=sessions[user])
        written.append((user, f"{user}-first"))
    stop = asyncio.Event()

    async def chat(user: str) -> None:
        n = 0
        while not stop.is_set() or n < 3:
            text = f"{user}-{n}"
            await sealed.add_turn(f"c-{user}", "user", text, session_id=sessions[user])
            written.append((user, text))
            n += 1

    async def rotate() -> int:
        try:
            return await sealed.rotate_master_key(OTHER_KEY, batch_size=4)
        finally:
            stop.set()

    async with asyncio.timeout(60):
        results = await asyncio.gather(rotate(), *(chat(u) for u in users))
    assert results[0] == 30
    async with sessionstore.connect(dsn, encryption_key=OTHER_KEY, **store_overrides()) as new:
        for user in users:
            got = [
                m.content
                for m in await new.messages.history(ContinuationId(f"c-{user}"), limit=1000)
            ]
            assert got == [t for u, t in written if u == user]
        # Run again once every process holds the new key: nothing left to re-wrap.
        assert await new.rotate_master_key(OTHER_KEY) == 0


async def test_the_key_shows_nowhere(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """The secrets probe for the master key: repr, logs (DEBUG), and the errors of a
    wrong key, a malformed key and a wrong master key."""
    raw = base64.b64decode(KEY)
    forms = (KEY, raw.hex(), repr(raw), base64.urlsafe_b64encode(raw).decode())
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with sessionstore.connect(dsn, encryption_key=KEY, **store_overrides()) as opened:
        texts += [repr(opened), repr(opened.config), str(opened.config), repr(opened._db.keys)]
        texts += [repr(MasterKey(KEY)), str(opened.config.model_dump())]
        session = await opened.sessions.create("alice")
        await opened.add_turn("c", "user", "hi", session_id=session.id)
        await opened.messages.history(ContinuationId("c"))
    for bad in (KEY[:-4], KEY + "AAAA", raw[:31], "not base64 at all " + KEY):
        with pytest.raises(InvalidInputError) as refused:
            sessionstore.connect(dsn, encryption_key=bad)
        assert refused.value.field == "encryption_key"
        texts.append("".join(traceback.format_exception(refused.value)))
    async with sessionstore.connect(dsn, encryption_key=OTHER_KEY, **store_overrides()) as other:
        with pytest.raises(SessionStoreError) as wrong:
            await other.messages.history(ContinuationId("c"))
        texts.append("".join(traceback.format_exception(wrong.value)))
    texts.append(caplog.text)
    for text in texts:
        for form in forms:
            assert form not in text


async def test_the_environment_variable_turns_encryption_on(
    dsn: str, monkeypatch: pytest.MonkeyPatch, conn: asyncpg.Connection
) -> None:
    monkeypatch.setenv("SESSIONSTORE_ENCRYPTION_KEY", KEY)
    async with sessionstore.connect(dsn, **store_overrides()) as opened:
        conv = await opened.conversations.get_or_create("env")
        await opened.messages.add(conv.id, "user", f"env {MARKER}")
    assert await conn.fetchval("SELECT count(*) FROM messages WHERE content_sealed IS NULL") == 0


async def test_clear_rows_written_before_keep_reading(
    store: SessionStore, sealed: SessionStore
) -> None:
    conv = await store.conversations.get_or_create("mixed")
    await store.messages.add(conv.id, "user", "clear one", metadata={"m": 1})
    await sealed.messages.add(conv.id, "assistant", "sealed two", metadata={"m": 2})
    got = await sealed.messages.history(conv.id)
    assert [(m.content, m.metadata) for m in got] == [
        ("clear one", {"m": 1}),
        ("sealed two", {"m": 2}),
    ]


async def test_fork_copies_are_sealed_again_for_their_own_ids_and_owner(
    sealed: SessionStore, conn: asyncpg.Connection
) -> None:
    """A fork into the source's session keeps alice's key; an unbound fork is no user's
    (purge_user does not reach it: it takes the key of no user) and outlives her purge."""
    alice = await sealed.sessions.create("alice")
    await sealed.add_turn("src", "user", "one", session_id=alice.id)
    await sealed.add_turn("src", "user", "two", session_id=alice.id)
    source = await sealed.conversations.get_or_create("src")
    await sealed.conversations.fork(source.id, continuation_id="same", session_id=alice.id)
    await sealed.conversations.fork(source.id, continuation_id="unbound")
    keys = {
        r["user_id"]: r["key_id"]
        for r in await conn.fetch("SELECT user_id, key_id FROM sessionstore_private.keys")
    }
    rows = await conn.fetch(
        "SELECT c.continuation_id, m.id, m.content_sealed FROM messages m"
        " JOIN conversations c ON c.id = m.conversation_id"
    )
    by_name: dict[str, list[UUID]] = {}
    for r in rows:
        by_name.setdefault(r["continuation_id"], []).append(sealed_key_id(r["content_sealed"]))
    assert by_name["same"] == [keys["alice"]] * 2
    assert by_name["unbound"] == [keys[None]] * 2
    assert len({r["id"] for r in rows}) == 6
    for name in ("same", "unbound"):
        got = [m.content for m in await sealed.messages.history(ContinuationId(name))]
        assert got == ["one", "two"]
    await sealed.purge_user("alice")
    got = [m.content for m in await sealed.messages.history(ContinuationId("unbound"))]
    assert got == ["one", "two"]


async def test_key_provider_and_encryption_key_together_are_refused(dsn: str) -> None:
    with pytest.raises(InvalidInputError) as both:
        sessionstore.connect(dsn, encryption_key=KEY, key_provider=MasterKey(OTHER_KEY))
    assert both.value.field == "key_provider"


async def test_a_kms_like_provider_is_called_once_per_key(dsn: str) -> None:
    calls: list[str] = []

    class Provider:
        key_id = "kms:test"

        def __init__(self) -> None:
            self._inner = MasterKey(OTHER_KEY)

        async def wrap(self, data_key: bytes) -> bytes:
            calls.append("wrap")
            return await self._inner.wrap(data_key)

        async def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
            calls.append("unwrap")
            return await self._inner.unwrap(wrapped, self._inner.key_id)

    async with sessionstore.connect(dsn, key_provider=Provider(), **store_overrides()) as s:
        session = await s.sessions.create("alice")
        for i in range(5):
            await s.add_turn("c", "user", f"m{i}", session_id=session.id)
        assert len(await s.messages.history(ContinuationId("c"))) == 5
    assert calls == ["wrap", "unwrap"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    new=st.one_of(st.binary(max_size=40), st.text(ANY_CHAR, max_size=50), st.integers(), st.none()),
    batch_size=st.one_of(st.integers(-5, 5), st.sampled_from([100_001, True, "10", 2.0])),
)
async def test_hostile_rotation_input_is_refused_before_anything_changes(
    sealed: SessionStore, conn: asyncpg.Connection, new: object, batch_size: object
) -> None:
    session = await sealed.sessions.create("alice")
    cid = f"c-{session.id}"  # the fixtures are shared by every example
    await sealed.add_turn(cid, "user", "hi", session_id=session.id)
    before = await conn.fetch(
        "SELECT key_id, wrapped, master_key_id FROM sessionstore_private.keys"
    )
    valid_key = isinstance(new, bytes) and len(new) == 32
    valid_size = type(batch_size) is int and 1 <= batch_size <= 100_000
    refused: InvalidInputError | None = None
    try:
        await sealed.rotate_master_key(new, batch_size=batch_size)  # type: ignore[arg-type]
    except InvalidInputError as exc:
        refused = exc
    if refused is None:
        assert valid_size
        assert [m.content for m in await sealed.messages.history(ContinuationId(cid))] == ["hi"]
        return
    assert refused.field in ("new", "batch_size")
    assert not (valid_key and valid_size)
    after = await conn.fetch("SELECT key_id, wrapped, master_key_id FROM sessionstore_private.keys")
    assert after == before
    for form in (repr(new), str(new)):
        assert len(form) < 8 or form not in str(refused)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch_size=st.one_of(
        st.integers(-3, 3), st.sampled_from([100_001, True, "10", 2.0, None, 10**30])
    ),
    on_progress=st.sampled_from([None, print, "print", 1, lambda n: None]),
)
async def test_hostile_encrypt_stored_input_is_refused_before_anything_changes(
    sealed: SessionStore, store: SessionStore, batch_size: object, on_progress: object
) -> None:
    conv = await store.conversations.get_or_create(f"clear-{id(batch_size)}-{id(on_progress)}")
    await store.messages.add(conv.id, "user", "in clear")
    before = await sealed.count_unencrypted()
    valid = type(batch_size) is int and 1 <= batch_size <= 100_000
    valid = valid and (on_progress is None or callable(on_progress))
    refused: InvalidInputError | None = None
    try:
        done = await sealed.encrypt_stored(
            batch_size=batch_size,  # type: ignore[arg-type]
            on_progress=on_progress,  # type: ignore[arg-type]
        )
    except InvalidInputError as exc:
        refused = exc
    if refused is None:
        assert valid
        assert done == before
        assert await sealed.count_unencrypted() == 0
    else:
        assert not valid
        assert refused.field in ("batch_size", "on_progress")
        assert await sealed.count_unencrypted() == before


async def test_status_reports_an_api_role_that_can_reach_the_keys(
    pg_server: TestServer, supabase_database: str
) -> None:
    """Supabase's roles and default privileges: none reaches the keys after migrating;
    a later grant on their schema is reported by ``sessionstore status``."""
    admin_dsn = pg_server.admin_dsn_for(supabase_database)
    config = sessionstore.StoreConfig(dsn=admin_dsn)
    assert not [p for p in (await health.check(config)).problems if "data keys" in p]
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute("GRANT USAGE ON SCHEMA sessionstore_private TO service_role")
    finally:
        await admin.close()
    problems = (await health.check(config)).problems
    assert [p for p in problems if p.startswith("service_role can reach the data keys")]


async def test_a_write_behind_batch_looks_each_owners_key_up_once(
    sealed: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages queued to a conversation (no session: its owner is looked up, not
    cached) cost one key lookup per batch, not one per message."""
    keys = sealed._db.keys
    assert keys is not None
    lookups = 0
    real = keys._owner_row

    async def counted(owner: Any) -> Any:
        nonlocal lookups
        lookups += 1
        return await real(owner)

    monkeypatch.setattr(keys, "_owner_row", counted)
    conv = await sealed.conversations.get_or_create("queued-many")
    for i in range(200):
        await sealed.messages.enqueue(conv.id, "user", f"m{i}")
    await sealed.flush()
    got = [m.content for m in await sealed.messages.history(conv.id, limit=500)]
    assert got == [f"m{i}" for i in range(200)]
    # one per batch (a few: the writer may cut the 200 into more than one); 200 before
    assert 1 <= lookups <= 5, lookups
