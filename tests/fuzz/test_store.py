"""Fuzz properties of the store's own methods: open/close/flush/stats in any order,
``replay`` of spill files, and ``connect`` with hostile settings."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
from hypothesis import example, given
from hypothesis import strategies as st

import sessionstore
from sessionstore import (
    InvalidInputError,
    NotFoundError,
    Session,
    SessionStore,
    SessionStoreError,
    StoreStats,
)

from ..conftest import store_overrides
from ..strategies import HOSTILE_TEXT, INTS, TTLS, Verdict, text_verdict, ttl_verdict, worst
from .world import BAD, CASES, EITHER, OK, OMITTED, Expect, World, fuzz, named, names_argument

# --- the store's own methods ---------------------------------------------------------------------


async def settle(call: Callable[[], object]) -> tuple[object, BaseException | None]:
    """What ``call`` returned (awaited), or what it raised."""
    try:
        result = call()
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        return None, exc
    return result, None


@fuzz(15)
@given(
    ops=st.lists(
        st.sampled_from(
            [
                "open",
                "await",
                "close",
                "flush",
                "stats",
                "failed_writes",
                "enqueue",
                "read",
                "pooler",
            ]
        ),
        max_size=7,
    )
)
async def test_store_lifecycle(dsn: str, conn: asyncpg.Connection, ops: list[str]) -> None:
    await check_store_lifecycle(dsn, conn, ops)


@named
@example(ops=["enqueue"])  # a store never opened: accept and write, or refuse
@example(ops=["open", "close", "enqueue", "open", "read"])
@example(ops=["await", "await", "close", "close", "flush", "stats"])
@given(ops=st.lists(st.sampled_from(["open", "close"])))
async def test_store_lifecycle_named(dsn: str, conn: asyncpg.Connection, ops: list[str]) -> None:
    """The sequences that matter most, pinned."""
    await check_store_lifecycle(dsn, conn, ops)


async def check_store_lifecycle(dsn: str, conn: asyncpg.Connection, ops: list[str]) -> None:
    """``open`` (and ``await store``), ``close``, ``flush``, ``stats``, ``failed_writes``,
    ``pooler``, ``config`` in any order: idempotent, never a driver error, and every
    message accepted while open is durable once ``close`` returns."""
    CASES["store.lifecycle"] += 1
    store = sessionstore.connect(dsn, **store_overrides())
    world = World(store, conn)
    cid = await world.conversation(messages=0)
    assert store.config.dsn is not None
    state = "new"
    accepted: list[UUID] = []
    try:
        for op in ops:
            live = state == "open"
            if op in ("open", "await"):
                result, error = await settle(store.open if op == "open" else lambda: store)
                if state == "closed" and error is not None:
                    assert isinstance(error, SessionStoreError), repr(error)
                    continue
                assert error is None, f"{op} raised {error!r}"
                assert result is store
                state = "open"
            elif op == "close":
                _, error = await settle(store.close)
                assert error is None, f"close raised {error!r}"
                state = "closed"
            elif op == "flush":
                _, error = await settle(store.flush)
                assert error is None, f"flush raised {error!r}"
            elif op == "stats":
                stats = store.stats()
                assert isinstance(stats, StoreStats)
                assert min(stats.queued, stats.in_flight, stats.written, stats.set_aside) >= 0
            elif op == "failed_writes":
                assert store.failed_writes() == []
            elif op == "pooler":
                assert store.pooler in ("none", "session", "transaction")
            elif op == "enqueue":
                result, error = await settle(lambda: store.messages.enqueue(cid, "user", "queued"))
                if live:
                    assert error is None, f"enqueue on an open store raised {error!r}"
                if error is None:
                    assert isinstance(result, UUID)
                    accepted.append(result)
                else:
                    assert isinstance(error, SessionStoreError), f"enqueue raised {error!r}"
            else:
                result, error = await settle(lambda: store.sessions.get(uuid4()))
                assert isinstance(error, SessionStoreError), f"get raised {error!r}"
                if live:
                    assert isinstance(error, NotFoundError), repr(error)
    finally:
        await store.close()
    for mid in accepted:
        assert await world.row("messages", mid) is not None, "accepted, then lost at close"


SPILL_KINDS = st.sampled_from(
    ["valid", "valid", "missing", "directory", "nul", "garbage", "tampered", "empty"]
)


@fuzz(30)
@given(
    kind=SPILL_KINDS, messages=st.lists(HOSTILE_TEXT, min_size=1, max_size=3), as_path=st.booleans()
)
async def test_replay(
    store: SessionStore,
    conn: asyncpg.Connection,
    tmp_path: Path,
    kind: str,
    messages: list[str],
    as_path: bool,
) -> None:
    """``replay``: a spill file's messages land exactly once; a path that is no spill file
    is refused naming ``path`` and writes nothing."""
    from sessionstore.validation import CheckedMessage
    from sessionstore.writebehind.items import accept
    from sessionstore.writebehind.spill import append_spill

    CASES["replay"] += 1
    world = World(store, conn)
    cid = await world.conversation()
    path = tmp_path / world.fresh("spill")
    valid = [m for m in messages if text_verdict(m) is OK]
    items = [
        accept("message", CheckedMessage("user", m, None, None), conversation_id=cid) for m in valid
    ]
    expect = Expect()
    if kind in ("valid", "tampered", "empty"):
        append_spill(path, items)
        if kind == "tampered":
            with path.open("a", encoding="utf-8") as spill:
                spill.write(
                    json.dumps({"id": str(uuid4()), "kind": "message", "content": 5}) + "\n"
                )
            expect.arg("path", BAD)
    elif kind == "missing":
        expect.arg("path", BAD).allow(NotFoundError)
    elif kind == "directory":
        path.mkdir()
        expect.arg("path", BAD)
    elif kind == "nul":
        path = Path(str(path) + "\x00")
        expect.arg("path", BAD)
    else:
        path.write_bytes(b"\xff\xfe not json\n")
        expect.arg("path", BAD)
    if kind == "empty":
        path.write_text("")
        items = []
    argument = path if as_path else str(path)

    out = await world.attempt(lambda: world.api.replay(argument), expect)
    if not out.ok:
        return
    assert out.result == len(items)
    for item in items:
        row = await world.row("messages", item.id)
        assert row is not None, "a replayed message is missing"
        assert row["content"] == item.content, "replayed content differs"
    fingerprint = await world.fingerprint()
    assert await store.replay(argument) == len(items)
    assert await world.fingerprint() == fingerprint, "a second replay wrote again"


def default_ttl_verdict(value: object) -> Verdict:
    """A ``default_ttl`` setting: what ``ttl=`` takes (numbers are seconds, as pydantic
    reads them); a library may refuse more (strings, very long durations)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            value = timedelta(seconds=value)
        except (OverflowError, ValueError):
            return BAD
    if isinstance(value, timedelta):
        return worst(ttl_verdict(value), EITHER)
    return EITHER


@fuzz(60)
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            [
                "default_ttl",
                "batch_size",
                "max_pending",
                "cache_ttl",
                "max_delay",
                "min_size",
                "command_timeout",
                "write_deadline",
                "pooler",
                "nonsense",
            ]
        ),
        st.one_of(
            INTS,
            TTLS,
            st.sampled_from([float("nan"), float("inf"), -1.0, 0.5, "fast", "none", None]),
        ),
        min_size=1,
        max_size=2,
    )
)
async def test_connect(dsn: str, overrides: dict[str, object]) -> None:
    """``connect(dsn, **settings)``: a setting that is unknown or out of range is refused
    naming it; a ``default_ttl`` that is accepted can be used."""
    CASES["connect"] += 1
    expect = Expect()
    for name, value in overrides.items():
        if name == "nonsense":
            expect.arg(name, BAD)
        elif isinstance(value, float) and value != value:
            expect.arg(name, BAD)  # NaN is no setting
        elif name == "default_ttl" and value is not None:
            expect.arg(name, default_ttl_verdict(value))
        elif name == "min_size":
            expect.arg(("min_size", "max_size"), EITHER)  # min_size > max_size: either named
        else:
            expect.arg(name, EITHER)
    settings_ = {**store_overrides(), **overrides}
    _, error = await settle(lambda: sessionstore.connect(dsn, **settings_))
    if error is not None:
        assert isinstance(error, InvalidInputError), f"connect raised {error!r}"
        assert names_argument(error.field, expect.refusable), f"{error.field!r}: {error}"
        return
    assert not expect.bad, f"connect accepted {expect.bad}"
    ttl = overrides.get("default_ttl", OMITTED)
    if isinstance(ttl, timedelta) and ttl > timedelta(days=36_500):
        async with sessionstore.connect(dsn, **settings_) as store:
            made, error = await settle(lambda: store.sessions.create("u"))
            if error is not None:
                assert isinstance(error, InvalidInputError), repr(error)
                assert error.field in ("ttl", "default_ttl"), error.field
            else:
                assert isinstance(made, Session)
                assert made.expires_at is not None
                assert made.expires_at - made.created_at == ttl
