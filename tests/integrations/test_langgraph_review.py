"""An adversarial review of ``SessionStoreSaver``: races driven by row locks held from a
second connection, retries after a timeout, hostile input, row-level security with
Supabase's real grants, and what AsyncPostgresSaver does that the saver must too."""

from __future__ import annotations

import asyncio
import operator
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any, TypedDict
from uuid import UUID

import asyncpg
import pytest

pytest.importorskip("langgraph.checkpoint.base")

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint, empty_checkpoint
from langgraph.graph import END, START, StateGraph

import sessionstore
from sessionstore import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SessionStore,
)
from sessionstore.integrations.langgraph import SessionStoreSaver

from ..conftest import as_supabase_postgres, store_overrides
from ..helpers import wait_for_lock_waiters
from ..servers import TestServer

TABLES = ("langgraph_threads", "langgraph_checkpoints", "langgraph_blobs", "langgraph_writes")
ALICE = "6f1c1a52-0000-4000-8000-00000000a11c"
BOB = "6f1c1a52-0000-4000-8000-000000000b0b"
WAIT = 30.0  # bound on every await of a blocked call (a busy machine)


def _config(thread: str, session: object = None, **more: Any) -> RunnableConfig:
    configurable: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": "", **more}
    if session is not None:
        configurable["session_id"] = str(session)
    return {"configurable": configurable}


def _checkpoint(messages: list[str], version: int | None = None) -> Checkpoint:
    checkpoint = empty_checkpoint()
    number = len(messages) if version is None else version
    checkpoint["channel_values"] = {"messages": messages}
    checkpoint["channel_versions"] = {"messages": f"{number:032}.1"}
    return checkpoint


async def _put(
    saver: SessionStoreSaver,
    config: RunnableConfig,
    messages: list[str],
    checkpoint: Checkpoint | None = None,
) -> RunnableConfig:
    checkpoint = checkpoint or _checkpoint(messages)
    versions = dict(checkpoint["channel_versions"])
    return await saver.aput(config, checkpoint, {"source": "loop", "step": 1}, versions)


async def _rows(conn: asyncpg.Connection) -> dict[str, int]:
    return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}


# --- AsyncPostgresSaver's contract -----------------------------------------------------


async def test_keep_latest_keeps_the_writes_of_a_checkpoint_not_saved_yet(
    store: SessionStore,
) -> None:
    """A run saves a step's writes in the background, and they can commit before the
    checkpoint they belong to: a prune in between must not take them (AsyncPostgresSaver
    deletes only the writes of the checkpoints it deletes)."""
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    first = await _put(saver, _config("t", session.id), ["a"])
    await _put(saver, first, ["a", "b"])
    pending = _checkpoint(["a", "b", "c"])
    ahead = _config("t", session.id, checkpoint_id=pending["id"])
    await saver.aput_writes(ahead, [("messages", ["d"])], "task-1")
    await saver.aprune(["t"], strategy="keep_latest")
    await _put(saver, first, ["a", "b", "c"], pending)
    got = await saver.aget_tuple(_config("t"))
    assert got is not None
    assert got.checkpoint["id"] == pending["id"]
    assert got.pending_writes == [("task-1", "messages", ["d"])]


# --- hostile input ---------------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def _cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


@pytest.mark.parametrize(
    "hostile",
    [_nested(5_000), _cyclic(), {"big": "x" * (9 * 1024 * 1024)}],
    ids=["deep", "cyclic", "huge"],
)
async def test_hostile_metadata_and_filters_are_refused_naming_them(
    store: SessionStore, conn: asyncpg.Connection, hostile: dict[str, Any]
) -> None:
    """Too deep (the encoder's recursion), a cycle (the NUL scan looped forever, the
    event loop with it) or larger than metadata may be anywhere in the store: refused as
    ``InvalidInputError`` naming the argument, nothing sent."""
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    before = await _rows(conn)
    checkpoint = _checkpoint(["a"])
    versions = dict(checkpoint["channel_versions"])
    metadata: Any = {"source": "loop", "step": 1, "x": hostile}
    with pytest.raises(InvalidInputError) as refused:
        await asyncio.wait_for(
            saver.aput(_config("t", session.id), checkpoint, metadata, versions), WAIT
        )
    assert refused.value.field == "metadata"
    with pytest.raises(InvalidInputError) as refused:
        await asyncio.wait_for(anext(saver.alist(None, filter={"x": hostile})), WAIT)
    assert refused.value.field == "filter"
    assert await _rows(conn) == before


@pytest.mark.parametrize("before", [{}, {"configurable": {}}, "t"], ids=repr)
async def test_a_malformed_before_is_refused_naming_it(store: SessionStore, before: Any) -> None:
    """``before`` without a checkpoint id: AsyncPostgresSaver lists nothing (``< NULL``),
    the saver listed everything, or raised a ``KeyError``."""
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    await _put(saver, _config("t", session.id), ["a"])
    with pytest.raises(InvalidInputError) as refused:
        [t async for t in saver.alist(_config("t"), before=before)]
    assert refused.value.field == "before"


async def test_a_namespace_too_long_for_the_keys_is_refused_before_it_is_sent(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """A checkpoint namespace (the subgraph path) is part of every key; one the index
    cannot hold is refused naming it, not sent to fail there — and so is a writes' key
    whose parts each fit alone but not together."""
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    rng = random.Random(24)
    namespace = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(1_000))
    before = await _rows(conn)
    with pytest.raises(InvalidInputError) as refused:
        await _put(saver, _config("t", session.id, checkpoint_ns=namespace), ["a"])
    assert refused.value.field == "checkpoint_ns"
    assert await _rows(conn) == before
    # Each part within its own bound, the writes' key (thread, namespace, checkpoint,
    # task) beyond the index's.
    thread = "".join(chr(rng.randrange(0x10000, 0x10FFFF)) for _ in range(200))
    task = "".join(chr(rng.randrange(0x10000, 0x10FFFF)) for _ in range(255))
    namespace = namespace[:300]
    stored = await _put(saver, _config(thread, session.id, checkpoint_ns=namespace), ["a"])
    before = await _rows(conn)
    writes_to: RunnableConfig = {
        "configurable": {**stored["configurable"], "session_id": str(session.id)}
    }
    with pytest.raises(InvalidInputError) as refused:
        await saver.aput_writes(writes_to, [("messages", ["w"])], task)
    assert refused.value.field == "task_id"
    assert await _rows(conn) == before


async def test_hostile_thread_ids_and_namespaces_stay_data(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """SQL, LIKE and jsonb metacharacters are plain data: each thread reads back alone."""
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    names = ["'; DROP TABLE langgraph_threads; --", "%", "_", "a|b:c", "$1", "\\", '{"a":1}']
    for n, name in enumerate(names):
        await _put(saver, _config(name, session.id, checkpoint_ns=name), [str(n)])
    for n, name in enumerate(names):
        got = await saver.aget_tuple(_config(name, checkpoint_ns=name))
        assert got is not None
        assert got.checkpoint["channel_values"]["messages"] == [str(n)]
        listed = [t async for t in saver.alist({"configurable": {"thread_id": name}})]
        assert [t.config["configurable"]["thread_id"] for t in listed] == [name]
    found = [t async for t in saver.alist(None, filter={"source": "loop", "step": 1})]
    assert len(found) == len(names)
    assert [t async for t in saver.alist(None, filter={"source": "%"})] == []
    assert await conn.fetchval("SELECT count(*) FROM langgraph_threads") == len(names)


# --- retries after a timeout -----------------------------------------------------------


async def test_aput_and_aput_writes_sent_again_store_the_same(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """A caller that timed out and sends the same call again gets what one call stores."""
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    checkpoint = _checkpoint(["a"])
    stored = await _put(saver, _config("t", session.id), ["a"], checkpoint)
    writes = [("messages", ["w1"]), ("messages", ["w2"]), ("__interrupt__", "ask")]
    await saver.aput_writes(stored, writes, "task-1", "path")
    once = await _rows(conn)
    again = await _put(saver, _config("t", session.id), ["a"], checkpoint)
    await saver.aput_writes(stored, writes, "task-1", "path")
    assert again == stored
    assert await _rows(conn) == once
    got = await saver.aget_tuple(stored)
    assert got is not None
    assert got.pending_writes == [
        ("task-1", "__interrupt__", "ask"),
        ("task-1", "messages", ["w1"]),
        ("task-1", "messages", ["w2"]),
    ]


# --- races, driven by row locks a second connection holds -------------------------------


@pytest.fixture
async def watch(admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection outside the lock holder's transaction, which would see one snapshot
    of pg_stat_activity (taken at its first read) until it ends."""
    connection = await asyncpg.connect(admin_dsn, statement_cache_size=0)
    yield connection
    await connection.close()


async def test_a_session_deleted_while_aput_waits_takes_the_checkpoint_along(
    store: SessionStore, conn: asyncpg.Connection, watch: asyncpg.Connection
) -> None:
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    first = await _put(saver, _config("t", session.id), ["a"])
    async with conn.transaction():
        await conn.execute("DELETE FROM sessions WHERE id = $1", session.id)
        waiting = asyncio.ensure_future(_put(saver, first, ["a", "b"]))
        await wait_for_lock_waiters(watch, 1)
    with pytest.raises(NotFoundError) as refused:
        await asyncio.wait_for(waiting, WAIT)
    assert "['a', 'b']" not in str(refused.value)
    assert await _rows(conn) == dict.fromkeys(TABLES, 0)


async def test_two_first_writes_naming_different_sessions_bind_the_thread_once(
    store: SessionStore, conn: asyncpg.Connection, watch: asyncpg.Connection
) -> None:
    """Both first writes find no thread; the thread row one of them creates is locked
    until the other's creation runs into it: one session wins, the other is refused."""
    saver = SessionStoreSaver(store)
    mine, other = await store.sessions.create("alice"), await store.sessions.create("bob")
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO langgraph_threads (thread_id, session_id) VALUES ('t', $1)", mine.id
        )
        racing = asyncio.ensure_future(_put(saver, _config("t", other.id), ["theirs"]))
        await wait_for_lock_waiters(watch, 1)
    with pytest.raises(ConflictError, match="belongs to another session"):
        await asyncio.wait_for(racing, WAIT)
    await _put(saver, _config("t", mine.id), ["mine"])
    assert await conn.fetchval("SELECT session_id FROM langgraph_threads") == mine.id
    assert await conn.fetchval("SELECT count(*) FROM langgraph_checkpoints") == 1


async def test_keep_latest_racing_an_aput_keeps_what_the_aput_saves(
    store: SessionStore, conn: asyncpg.Connection, watch: asyncpg.Connection
) -> None:
    """An aput waiting while the prune holds the thread saves after it, complete."""
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    first = await _put(saver, _config("t", session.id), ["a"])
    second = await _put(saver, first, ["a", "b"])
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM langgraph_threads WHERE thread_id = 't' FOR UPDATE")
        pruning = asyncio.ensure_future(saver.aprune(["t"]))
        await wait_for_lock_waiters(watch, 1)
        putting = asyncio.ensure_future(_put(saver, second, ["a", "b", "c"]))
        await wait_for_lock_waiters(watch, 2)
    await asyncio.wait_for(asyncio.gather(pruning, putting), WAIT)
    got = await saver.aget_tuple(_config("t"))
    assert got is not None
    assert got.checkpoint["channel_values"]["messages"] == ["a", "b", "c"]
    assert got.parent_config == second
    listed = [t async for t in saver.alist(_config("t"))]
    assert len(listed) == 2


async def test_copy_thread_racing_a_session_delete_leaves_nothing_behind(
    store: SessionStore, conn: asyncpg.Connection, watch: asyncpg.Connection
) -> None:
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    stored = await _put(saver, _config("src", session.id), ["a"])
    await saver.aput_writes(stored, [("messages", ["w"])], "task")
    async with conn.transaction():
        await conn.execute("DELETE FROM sessions WHERE id = $1", session.id)
        copying = asyncio.ensure_future(saver.acopy_thread("src", "dst"))
        await wait_for_lock_waiters(watch, 1)
    with pytest.raises(NotFoundError):
        await asyncio.wait_for(copying, WAIT)
    assert await _rows(conn) == dict.fromkeys(TABLES, 0)


async def test_a_session_deleted_after_copy_thread_takes_both_threads(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")
    await _put(saver, _config("src", session.id), ["a"])
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR KEY SHARE", session.id)
        await saver.acopy_thread("src", "dst")
    assert (await _rows(conn))["langgraph_threads"] == 2
    await store.sessions.delete(session.id)
    assert await _rows(conn) == dict.fromkeys(TABLES, 0)


# --- row-level security, with Supabase's real grants ------------------------------------


async def _threads_of_both(store: SessionStore) -> tuple[SessionStoreSaver, UUID, UUID]:
    alice = SessionStoreSaver(store.as_user(ALICE))
    bob = SessionStoreSaver(store.as_user(BOB))
    a = await store.sessions.create(ALICE)
    b = await store.sessions.create(BOB)
    stored = await _put(alice, _config("alice-t", a.id), ["alice secret"])
    writes_to = _config("alice-t", a.id, checkpoint_id=stored["configurable"]["checkpoint_id"])
    await alice.aput_writes(writes_to, [("messages", ["alice write"])], "task")
    stored = await _put(bob, _config("bob-t", b.id), ["bob secret"])
    writes_to = _config("bob-t", b.id, checkpoint_id=stored["configurable"]["checkpoint_id"])
    await bob.aput_writes(writes_to, [("messages", ["bob write"])], "task")
    await _put(SessionStoreSaver(store), _config("service-t"), ["service"])
    return alice, a.id, b.id


async def test_anon_and_other_users_read_no_checkpoint_table(
    supabase: tuple[SessionStore, asyncpg.Connection],
) -> None:
    """Supabase grants every new table in public to anon and authenticated (default
    privileges); row-level security alone keeps them out."""
    store, conn = supabase
    await _threads_of_both(store)
    queries = [f"SELECT count(*) FROM {table}" for table in TABLES]
    for role, claims, seen in [
        ("anon", None, (0, 0, 0, 0)),
        ("anon", '{"role": "anon"}', (0, 0, 0, 0)),
        ("authenticated", f'{{"sub": "{ALICE}", "role": "anon"}}', (0, 0, 0, 0)),
        ("authenticated", f'{{"sub": "{ALICE}", "role": "authenticated"}}', (1, 1, 1, 1)),
        ("authenticated", '{"role": "service_role"}', (3, 3, 3, 2)),
    ]:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            if claims:
                await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", claims)
            assert tuple([await conn.fetchval(q) for q in queries]) == seen, (role, claims)
            if role == "anon":
                for table in TABLES:
                    status = await conn.execute(f"DELETE FROM {table}")
                    assert status == "DELETE 0"


async def test_under_as_user_alist_none_and_filters_see_only_the_users_threads(
    supabase: tuple[SessionStore, asyncpg.Connection],
) -> None:
    store, _ = supabase
    alice, _, bob_session = await _threads_of_both(store)
    listed = [t async for t in alice.alist(None)]
    assert [t.config["configurable"]["thread_id"] for t in listed] == ["alice-t"]
    assert listed[0].pending_writes == [("task", "messages", ["alice write"])]
    by_session = [t async for t in alice.alist(None, filter={"session_id": str(bob_session)})]
    assert by_session == []
    assert [t async for t in alice.alist(_config("bob-t"))] == []
    await alice.adelete_for_runs(["x"])  # no run id: nothing of anyone's
    await alice.aprune(["bob-t", "service-t"], strategy="keep_latest")
    service = SessionStoreSaver(store)
    assert await service.aget_tuple(_config("bob-t")) is not None
    assert await service.aget_tuple(_config("service-t")) is not None


async def test_a_thread_id_another_user_holds_is_refused_and_left_alone(
    supabase: tuple[SessionStore, asyncpg.Connection],
) -> None:
    """Thread ids are one namespace: Bob naming Alice's is refused, nothing of hers
    changes, and the refusal says nothing of what her thread holds."""
    store, conn = supabase
    _, _, bob_session = await _threads_of_both(store)
    bob = SessionStoreSaver(store.as_user(BOB))
    before = await conn.fetch("SELECT * FROM langgraph_checkpoints ORDER BY checkpoint_id")
    with pytest.raises(ConflictError) as refused:
        await _put(bob, _config("alice-t", bob_session), ["take over"])
    assert "secret" not in str(refused.value)
    with pytest.raises(ConflictError):
        await bob.acopy_thread("bob-t", "alice-t")
    assert await conn.fetch("SELECT * FROM langgraph_checkpoints ORDER BY checkpoint_id") == (
        before
    )


async def test_sliding_expiry_moves_under_as_user_too(
    pg_server: TestServer, supabase_database: str
) -> None:
    overrides = {**store_overrides(), "sliding_expiry": True}
    dsn = as_supabase_postgres(pg_server.dsn_for(supabase_database))
    async with sessionstore.connect(dsn, **overrides) as store:
        session = await store.sessions.create(ALICE, ttl=timedelta(minutes=1))
        saver = SessionStoreSaver(store.as_user(ALICE))
        await _put(saver, _config("t", session.id), ["a"])
        after = await store.sessions.get(session.id)
        assert session.expires_at is not None
        assert after.expires_at is not None
        assert after.expires_at > session.expires_at


# --- a fork that reuses a version number -------------------------------------------------


class _State(TypedDict):
    items: Annotated[list[str], operator.add]


async def test_a_fork_from_an_old_checkpoint_keeps_both_branches_values(
    store: SessionStore,
) -> None:
    """update_state from an old checkpoint gives the channel the same version number
    the newer branch already stored (one above the old one); the random tail of
    get_next_version keeps the two values apart (blobs are stored once per version)."""
    saver = SessionStoreSaver(store)
    session = await store.sessions.create("alice")

    def step(state: _State) -> dict[str, list[str]]:
        return {"items": ["step"]}

    builder = StateGraph(_State)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_edge("step", END)
    graph = builder.compile(checkpointer=saver)
    config: RunnableConfig = {"configurable": {"thread_id": "t", "session_id": str(session.id)}}
    await graph.ainvoke({"items": ["a"]}, config)
    await graph.ainvoke({"items": ["b"]}, config)
    states = [s async for s in graph.aget_state_history(config)]
    old = next(s for s in states if s.values.get("items") == ["a", "step"])
    history = [t async for t in saver.alist({"configurable": {"thread_id": "t"}})]
    main = await graph.aget_state(config)
    forked = await graph.aupdate_state(
        {"configurable": {**old.config["configurable"], "session_id": str(session.id)}},
        {"items": ["fork"]},
    )
    fork_tuple = await saver.aget_tuple(forked)
    assert fork_tuple is not None
    fork_version = str(fork_tuple.checkpoint["channel_versions"]["items"])
    main_versions = {
        str(t.checkpoint["channel_versions"]["items"])
        for t in history
        if "items" in t.checkpoint["channel_versions"]
    }
    same_number = {v for v in main_versions if v.split(".")[0] == fork_version.split(".")[0]}
    assert same_number, (fork_version, main_versions)  # the number is reused...
    assert fork_version not in main_versions  # ...the version is not
    assert (await graph.aget_state(forked)).values["items"] == ["a", "step", "fork"]
    assert (await graph.aget_state(main.config)).values["items"] == ["a", "step", "b", "step"]
    assert (await graph.aget_state(old.config)).values["items"] == ["a", "step"]
