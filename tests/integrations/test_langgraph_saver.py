"""``SessionStoreSaver``'s sessionstore guarantees, below the graph: a thread belongs to
one session and goes with it, a session that takes no turns takes no checkpoints,
row-level security keeps users apart, bad input is refused naming the argument before
anything is sent, and the calls LangGraph makes per step take one round trip each."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

pytest.importorskip("langgraph.checkpoint.base")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint, empty_checkpoint

import sessionstore
from sessionstore import (
    ConflictError,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    SessionExpiredError,
    SessionStore,
)
from sessionstore.integrations.langgraph import SessionStoreSaver

from ..conftest import store_overrides
from ..helpers import expire

TABLES = ("langgraph_threads", "langgraph_checkpoints", "langgraph_blobs", "langgraph_writes")


def _config(thread: str, session: object = None, **more: Any) -> RunnableConfig:
    configurable: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": "", **more}
    if session is not None:
        configurable["session_id"] = str(session)
    return {"configurable": configurable}


def _checkpoint(messages: list[str]) -> Checkpoint:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"messages": messages, "step": len(messages)}
    checkpoint["channel_versions"] = {"messages": f"{len(messages):032}.1", "step": "1"}
    return checkpoint


async def _put(
    saver: SessionStoreSaver, thread: str, session: object, messages: list[str]
) -> RunnableConfig:
    checkpoint = _checkpoint(messages)
    versions = dict(checkpoint["channel_versions"])
    return await saver.aput(
        _config(thread, session), checkpoint, {"source": "loop", "step": 1}, versions
    )


async def _rows(conn: asyncpg.Connection) -> dict[str, int]:
    return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}


async def test_a_put_reads_back_with_its_values_and_writes(store: SessionStore) -> None:
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    stored = await _put(saver, "t1", session.id, ["hi", "there"])
    await saver.aput_writes(stored, [("messages", ["more"]), ("__error__", "boom")], "task-1")
    got = await saver.aget_tuple(_config("t1"))
    assert got is not None
    assert got.checkpoint["channel_values"] == {"messages": ["hi", "there"], "step": 2}
    assert got.metadata["source"] == "loop"
    copied: dict[str, Any] = dict(got.metadata)  # LangGraph copies the config's keys
    assert copied["session_id"] == str(session.id)
    assert sorted(got.pending_writes or []) == [
        ("task-1", "__error__", "boom"),
        ("task-1", "messages", ["more"]),
    ]


async def test_a_thread_belongs_to_the_session_that_first_wrote_it(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    saver = SessionStoreSaver(store)
    mine, other = await store.sessions.create("alice"), await store.sessions.create("bob")
    await _put(saver, "bound", mine.id, ["a"])
    before = await _rows(conn)
    with pytest.raises(ConflictError, match="belongs to another session"):
        await _put(saver, "bound", other.id, ["b"])
    assert await _rows(conn) == before
    await _put(saver, "bound", None, ["a", "c"])  # naming no session: the thread's own
    # An unbound thread is bound by the first write that names a session.
    await _put(saver, "free", None, ["x"])
    await _put(saver, "free", other.id, ["x", "y"])
    with pytest.raises(ConflictError):
        await _put(saver, "free", mine.id, ["z"])
    bound = await conn.fetchval("SELECT session_id FROM langgraph_threads WHERE thread_id = 'free'")
    assert bound == other.id


async def test_a_session_that_takes_no_turns_takes_no_checkpoints(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    stored = await _put(saver, "t", session.id, ["a"])
    await store.sessions.pause(session.id)
    before = await _rows(conn)
    with pytest.raises(InvalidStateError):
        await _put(saver, "t", None, ["a", "b"])
    with pytest.raises(InvalidStateError):
        await saver.aput_writes(stored, [("messages", ["b"])], "task")
    await store.sessions.resume(session.id)
    await expire(conn, session.id)
    with pytest.raises(SessionExpiredError):
        await _put(saver, "t", session.id, ["a", "b"])
    with pytest.raises(NotFoundError):
        await _put(saver, "new", uuid4(), ["a"])
    assert await _rows(conn) == before


async def test_the_thread_goes_with_its_session_every_way_a_session_goes(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    saver = SessionStoreSaver(store)
    deleted, expired = await store.sessions.create("u1"), await store.sessions.create("u2")
    purged = [await store.sessions.create("u3") for _ in range(2)]
    for n, session in enumerate([deleted, expired, *purged]):
        parent = await _put(saver, f"t{n}", session.id, ["a"])
        await saver.aput_writes(parent, [("messages", ["w"])], "task")
        await _put(saver, f"t{n}", session.id, ["a", "b"])
    await _put(saver, "service-thread", None, ["kept"])
    await store.sessions.delete(deleted.id)
    assert await saver.aget_tuple(_config("t0")) is None
    await expire(conn, expired.id)
    assert await store.sessions.cleanup_expired() == 1
    assert await saver.aget_tuple(_config("t1")) is None
    counts = await store.purge_user("u3", batch_size=1)
    assert counts.checkpoints == 4
    assert counts.sessions == 2
    assert await _rows(conn) == {
        "langgraph_threads": 1,
        "langgraph_checkpoints": 1,
        "langgraph_blobs": 1,
        "langgraph_writes": 0,
    }
    assert await saver.aget_tuple(_config("service-thread")) is not None


@pytest.fixture
async def two_users(
    supabase_store: SessionStore,
) -> tuple[SessionStoreSaver, SessionStoreSaver, UUID, UUID]:
    alice = await supabase_store.sessions.create("alice")
    bob = await supabase_store.sessions.create("bob")
    return (
        SessionStoreSaver(supabase_store.as_user("alice")),
        SessionStoreSaver(supabase_store.as_user("bob")),
        alice.id,
        bob.id,
    )


async def test_under_row_level_security_a_user_reaches_only_their_threads(
    two_users: tuple[SessionStoreSaver, SessionStoreSaver, UUID, UUID],
) -> None:
    alice, bob, alice_session, bob_session = two_users
    stored = await _put(alice, "alice-thread", alice_session, ["secret"])
    assert await bob.aget_tuple(_config("alice-thread")) is None
    assert [t async for t in bob.alist(None)] == []
    with pytest.raises(ConflictError):
        await _put(bob, "alice-thread", bob_session, ["mine now"])
    with pytest.raises(ConflictError):
        await bob.aput_writes(
            _config(
                "alice-thread", bob_session, checkpoint_id=stored["configurable"]["checkpoint_id"]
            ),
            [("messages", ["x"])],
            "task",
        )
    with pytest.raises(NotFoundError):  # another user's session reads as absent
        await _put(bob, "bobs", alice_session, ["x"])
    await bob.adelete_thread("alice-thread")
    await bob.aprune(["alice-thread"], strategy="delete")
    await bob.acopy_thread("alice-thread", "stolen")
    assert [t async for t in bob.alist(None)] == []
    got = await alice.aget_tuple(_config("alice-thread"))
    assert got is not None
    assert got.checkpoint["channel_values"]["messages"] == ["secret"]
    with pytest.raises(InvalidInputError, match="session_id"):
        await _put(alice, "no-session", None, ["a"])


async def test_aput_and_aget_tuple_take_one_statement_each(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Once the thread exists, what LangGraph sends per step is one statement each (no
    transaction around it, no lock held in the process)."""
    queries: list[str] = []

    async def configure(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda record: queries.append(record.query))

    async with sessionstore.connect(dsn, configure=configure, **store_overrides()) as store:
        saver = SessionStoreSaver(store)
        session = await store.sessions.create("alice")
        stored = await _put(saver, "t", session.id, ["a"])
        for call in (
            lambda: _put(saver, "t", session.id, ["a", "b"]),
            lambda: saver.aput_writes(stored, [("messages", ["c"])], "task"),
            lambda: saver.aget_tuple(_config("t")),
            lambda: saver.aget_tuple(stored),
        ):
            await call()  # the first use of a type sends asyncpg's introspection too
            queries.clear()
            await call()
            assert len(queries) == 1, queries


async def test_concurrent_threads_do_not_wait_for_each_other(store: SessionStore) -> None:
    """Fifty threads stepping at once all land, each with its own latest checkpoint."""
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")

    async def thread(n: int) -> None:
        for step in range(3):
            await _put(saver, f"c{n}", session.id, [f"{n}-{s}" for s in range(step + 1)])

    await asyncio.wait_for(asyncio.gather(*(thread(n) for n in range(50))), 60)
    for n in range(50):
        got = await saver.aget_tuple(_config(f"c{n}"))
        assert got is not None
        assert got.checkpoint["channel_values"]["messages"] == [f"{n}-0", f"{n}-1", f"{n}-2"]


async def test_each_checkpoint_moves_a_sliding_expiry_forward(dsn: str) -> None:
    overrides = {**store_overrides(), "sliding_expiry": True}
    async with sessionstore.connect(dsn, **overrides) as store:
        saver = SessionStoreSaver(store)
        session = await store.sessions.create("alice", ttl=timedelta(minutes=1))
        await _put(saver, "t", session.id, ["a"])
        after = await store.sessions.get(session.id)
        assert session.expires_at is not None
        assert after.expires_at is not None
        assert after.expires_at > session.expires_at


HOSTILE = st.one_of(
    st.none(),
    st.just(""),
    st.just("   "),
    st.just("a\x00b"),
    st.just("\ud800"),
    st.text(min_size=256, max_size=300),
    st.binary(max_size=4),
    st.integers(),
    st.lists(st.text(max_size=3), max_size=2),
)
#: Values no field takes: text PostgreSQL cannot hold, or no text at all.
NEVER = ("a\x00b", "\ud800")


def _never(value: object) -> bool:
    return isinstance(value, bytes) or value in NEVER


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    field=st.sampled_from(["thread_id", "checkpoint_ns", "session_id", "metadata", "task_id"]),
    value=HOSTILE,
)
async def test_bad_input_is_refused_naming_it_before_anything_is_sent(
    store: SessionStore, conn: asyncpg.Connection, field: str, value: object
) -> None:
    """Hostile values in every argument LangGraph passes through: either accepted, or
    refused with ``InvalidInputError`` naming the argument and nothing written — and
    what no field can take (NUL, a lone surrogate, bytes) is always refused."""
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("fuzz")
    good = await _put(saver, f"fuzz-{uuid4()}", session.id, ["a"])
    configurable: dict[str, Any] = dict(good["configurable"])
    metadata: Any = {"source": "loop", "step": 1}
    task_id: Any = "task"
    if field == "metadata":
        # Nested: LangGraph itself strips NUL from top-level metadata strings.
        metadata["x"] = {"nested": [value]}
    elif field == "task_id":
        task_id = value
    else:
        configurable[field] = value
    calls = {
        "thread_id": ("aput", "aput_writes", "aget_tuple"),
        "checkpoint_ns": ("aput", "aput_writes", "aget_tuple"),
        "session_id": ("aput", "aput_writes"),
        "metadata": ("aput",),
        "task_id": ("aput_writes",),
    }[field]
    for call in calls:
        before = await _rows(conn)
        try:
            if call == "aput":
                checkpoint = _checkpoint(["a", "b"])
                versions = dict(checkpoint["channel_versions"])
                await saver.aput({"configurable": configurable}, checkpoint, metadata, versions)
            elif call == "aput_writes":
                await saver.aput_writes(
                    {"configurable": configurable}, [("messages", ["w"])], task_id
                )
            else:
                await saver.aget_tuple({"configurable": configurable})
        except InvalidInputError as refused:
            named: str | None = refused.field
        except (NotFoundError, ConflictError):
            continue  # a well-formed session id of no session, or a thread of another
        else:
            named = None
        if named is None:
            assert not _never(value), f"{call} accepted {value!r} in {field}"
            continue
        assert named == field, call
        assert await _rows(conn) == before, f"{call} wrote before refusing"


async def test_a_stale_session_cache_does_not_hide_why_a_write_is_refused(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """The statement finds the session paused while this process's session cache still
    holds it active (another process paused it; its notification not yet here): the
    refusal is InvalidStateError, read past the cache — it was ConflictError ("belongs
    to another session") after three attempts."""
    overrides = {**store_overrides(), "cache_size": 100, "cache_ttl": 60.0}
    async with sessionstore.connect(dsn, **overrides) as store:
        saver = SessionStoreSaver(store)
        session = await store.sessions.create("alice")
        await _put(saver, "t", session.id, ["a"])
        assert (await store.sessions.get(session.id)).status.value == "active"  # cached
        async with conn.transaction():
            # As from another process whose notification has not arrived (no trigger).
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("UPDATE sessions SET status = 'paused' WHERE id = $1", session.id)
        assert (await store.sessions.get(session.id)).status.value == "active"  # still
        before = await _rows(conn)
        with pytest.raises(InvalidStateError):
            await _put(saver, "t", session.id, ["a", "b"])
        assert await _rows(conn) == before
