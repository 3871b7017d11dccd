"""Fuzz property of compaction: ``messages.compact`` with hostile arguments among
appends, pops, reads (``history`` with ``include_compacted``, ``limit``, ``before`` and
``max_tokens``) and turns with a context, against an oracle of the compacted view
(``world.compacted_view``) computed from the stored rows."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import ConflictError, Message, SessionStore

from ..strategies import (
    HOSTILE_IDS,
    HOSTILE_TEXT,
    INT4_MAX,
    INTS,
    METADATA,
    ROLES,
    WRONG_TYPES,
    int_verdict,
    real,
    role_verdict,
    same_json,
    text_verdict,
    uuid_verdict,
)
from .world import (
    BAD,
    CASES,
    LIMITS,
    OK,
    Expect,
    Id,
    World,
    cases,
    check_message,
    compacted_view,
    conversation_arg,
    conversation_ids,
    expect_target,
    fuzz,
    latest_of_view,
    limit_verdict,
    named,
    own_tokens,
    resolve,
)

_COMPACT = st.fixed_dictionaries(
    {
        "op": st.just("compact"),
        "conversation": st.one_of(conversation_ids("conversation"), st.just(Id("conversation"))),
        "through_seq": st.one_of(st.integers(-1, 9), st.integers(1, 9), INTS, WRONG_TYPES),
        "summary": st.one_of(st.sampled_from(["S", "summary"]), HOSTILE_TEXT, WRONG_TYPES),
    },
    optional={
        "tokens": st.one_of(st.none(), st.integers(0, 9), INTS),
        "metadata": METADATA,
        "role": ROLES,
        "message_id": st.one_of(
            st.none(), st.sampled_from(["new", "summary", "message"]), HOSTILE_IDS
        ),
        "delete_originals": st.one_of(st.booleans(), WRONG_TYPES),
    },
)
_READ = st.fixed_dictionaries(
    {"op": st.just("history")},
    optional={
        "limit": LIMITS,
        "before": st.one_of(st.none(), st.integers(1, 12), INTS),
        "max_tokens": st.one_of(st.none(), st.integers(1, 30), INTS),
        "include_compacted": st.one_of(st.booleans(), WRONG_TYPES),
    },
)
_TURN = st.fixed_dictionaries(
    {
        "op": st.just("turn"),
        "tokens": st.integers(0, 6),
        "context": st.integers(1, 6),
        "context_tokens": st.one_of(st.none(), st.integers(1, 30)),
    }
)
_OTHER = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "pop"]), "tokens": st.one_of(st.none(), st.integers(0, 6))}
)
_STEPS = st.lists(st.one_of(_COMPACT, _COMPACT, _READ, _TURN, _OTHER), min_size=1, max_size=5)


@fuzz(200)
@given(seeded=st.integers(0, 5), steps=_STEPS)
async def test_compaction(
    store: SessionStore, conn: asyncpg.Connection, seeded: int, steps: list[dict[str, Any]]
) -> None:
    """``compact`` among appends, pops, reads and turns on one conversation."""
    await check_compaction(store, conn, seeded, steps)


_VALID: dict[str, Any] = {"op": "compact", "conversation": Id("conversation"), "summary": "S"}


@named
@cases(
    {"seeded": 4, "steps": [{**_VALID, "through_seq": 2}]},
    {"steps": [{**_VALID, "through_seq": 5}]},  # past the end
    {"steps": [{**_VALID, "through_seq": 0}]},
    {"steps": [{**_VALID, "through_seq": True}]},
    {"steps": [{**_VALID, "through_seq": 3}, {**_VALID, "through_seq": 2}]},  # covers less
    {"steps": [{**_VALID, "through_seq": 3}, {**_VALID, "through_seq": 3}]},  # a re-summary
    {"steps": [{**_VALID, "through_seq": 2, "message_id": "new"}] * 2},  # a resend
    {"steps": [{**_VALID, "through_seq": 2, "message_id": "message"}]},  # another's id
    {"steps": [{**_VALID, "through_seq": 2, "delete_originals": True}, {"op": "history"}]},
    {"steps": [{**_VALID, "through_seq": 2, "summary": "my private c4n4ry note\x00"}]},
    {"steps": [{**_VALID, "through_seq": 2}, {"op": "history", "include_compacted": True}]},
    {"steps": [{**_VALID, "through_seq": 2}, {"op": "history", "include_compacted": "yes"}]},
    {"steps": [{**_VALID, "through_seq": 4}, {"op": "pop", "tokens": None}, {"op": "history"}]},
    {"steps": [{**_VALID, "through_seq": 2}, {"op": "history", "max_tokens": 8, "before": 5}]},
    {
        "steps": [
            {**_VALID, "through_seq": 1, "tokens": 2},
            {"op": "turn", "tokens": 1, "context": 6, "context_tokens": 10},
        ]
    },
    {"steps": [{**_VALID, "through_seq": 1, "conversation": "my private c4n4ry note"}]},
)
@given(seeded=st.just(4), steps=_STEPS)
async def test_compaction_named(
    store: SessionStore, conn: asyncpg.Connection, seeded: int, steps: list[dict[str, Any]]
) -> None:
    """The refusals and cases the issue names, pinned."""
    await check_compaction(store, conn, seeded, steps)


async def check_compaction(
    store: SessionStore, conn: asyncpg.Connection, seeded: int, steps: list[dict[str, Any]]
) -> None:
    CASES["compaction"] += 1
    world = World(store, conn)
    cont = world.fresh("compacted")
    cid = await world.conversation(cont, messages=seeded)
    summaries: list[UUID] = []
    for step in steps:
        op = step["op"]
        if op == "compact":
            written = await _compact(world, cid, cont, step, summaries)
            if written is not None:
                summaries.append(written.id)
        elif op == "history":
            await _read(world, cid, step)
        elif op == "turn":
            await _turn(world, cid, cont, step)
        elif op == "add":
            await store.messages.add(cid, "user", "later", tokens=step["tokens"])
        else:
            await store.messages.pop(cid)
    await _counters_hold(world, cid)


async def _state(world: World, cid: UUID) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    conv = await world.row("conversations", cid)
    assert conv is not None
    rows = await world.conn.fetch(
        "SELECT * FROM messages WHERE conversation_id = $1 ORDER BY seq", cid
    )
    return conv, rows


async def _counters_hold(world: World, cid: UUID) -> None:
    """``message_count`` is the latest seq (or more, after deletions), ``total_tokens`` the
    stored tokens, ``compacted_through`` the live summary's."""
    conv, rows = await _state(world, cid)
    assert conv["total_tokens"] == sum(r["tokens"] or 0 for r in rows)
    assert conv["message_count"] >= (rows[-1]["seq"] if rows else 0)
    live = [r for r in rows if r["covers_through"] is not None]
    assert conv["compacted_through"] == (live[-1]["covers_through"] if live else None)


async def _compact(
    world: World, cid: UUID, cont: str, step: dict[str, Any], summaries: list[UUID]
) -> Message | None:
    step = real(step)
    value = resolve(step["conversation"], {"conversation": cid}, {"conversation": cont})
    verdict, target = await conversation_arg(world, value)
    expect = Expect().arg("conversation_id", verdict)
    expect_target(expect, target)
    through, summary = step["through_seq"], step["summary"]
    expect.arg("through_seq", int_verdict(through, 1, INT4_MAX))
    expect.arg("summary", text_verdict(summary))
    options: dict[str, object] = {}
    for name in ("tokens", "metadata", "role", "message_id", "delete_originals"):
        if name in step:
            options[name] = step[name]
    if "tokens" in options:
        expect.arg("tokens", int_verdict(options["tokens"], 0, INT4_MAX, optional=True))
    if "metadata" in options:
        expect.arg("metadata", await world.metadata_verdict(options["metadata"]))
    if "role" in options:
        expect.arg("role", role_verdict(options["role"]))
    if "delete_originals" in options:
        expect.arg("delete_originals", OK if type(options["delete_originals"]) is bool else BAD)
    mid = options.get("message_id")
    if mid == "new":
        mid = options["message_id"] = summaries[-1] if summaries else uuid4()
    elif mid == "summary":
        mid = options["message_id"] = summaries[0] if summaries else uuid4()
    elif mid == "message":
        mid = options["message_id"] = (
            await world.conn.fetchval(
                "SELECT id FROM messages WHERE covers_through IS NULL LIMIT 1"
            )
            or uuid4()
        )
    stored = None
    if "message_id" in options and mid is not None:
        id_verdict, parsed = uuid_verdict(mid)
        expect.arg("message_id", id_verdict)
        stored = None if parsed is None else await world.row("messages", parsed)
    conv, rows = await _state(world, cid)
    content = summary if isinstance(summary, str) else None
    role = options.get("role", "system")
    tokens = options.get("tokens")
    metadata = options.get("metadata")
    if target is not None and not expect.bad:
        if stored is not None:
            same = (
                stored["conversation_id"] == target
                and (stored["covers_through"], stored["role"], stored["content"])
                == (through, role, content)
                and stored["tokens"] == tokens
                and same_json({} if metadata is None else metadata, _json(stored["metadata"]))
            )
            if not same:
                expect.require(ConflictError)
        elif through > conv["message_count"] or through < (conv["compacted_through"] or 0):
            expect.arg("through_seq", BAD)  # past the end, or covering less: refused
    out = await world.attempt(
        lambda: world.api.messages.compact(value, through_seq=through, summary=summary, **options),
        expect,
    )
    if not out.ok:
        return None
    written: Message = out.result
    row = await world.row("messages", written.id)
    assert row is not None
    check_message(written, row)
    if stored is not None:
        assert written.id == stored["id"]  # the resend: the stored summary, nothing written
        assert await _state(world, cid) == (conv, rows)
        return None
    assert (written.seq, written.covers_through) == (conv["message_count"] + 1, through)
    assert (written.role.value, written.content, written.tokens) == (role, content, tokens)
    assert same_json({} if metadata is None else metadata, written.metadata)
    after, now = await _state(world, cid)
    assert after["message_count"] == conv["message_count"] + 1
    assert after["compacted_through"] == through
    if options.get("delete_originals") is True:
        gone = [r for r in rows if r["seq"] <= through or r["covers_through"] is not None]
        kept = [r["id"] for r in rows if r not in gone]
        assert [r["id"] for r in now] == [*kept, written.id]
    else:
        assert [r["id"] for r in now] == [*(r["id"] for r in rows), written.id]
    return written


def _json(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


async def _read(world: World, cid: UUID, step: dict[str, Any]) -> None:
    expect = Expect()
    options = {k: v for k, v in step.items() if k != "op"}
    if "limit" in options:
        expect.arg("limit", limit_verdict(options["limit"]))
    if "before" in options:
        expect.arg("before", int_verdict(options["before"], 1, INT4_MAX, optional=True))
    if "max_tokens" in options:
        expect.arg("max_tokens", int_verdict(options["max_tokens"], 1, INT4_MAX, optional=True))
    if "include_compacted" in options:
        ok = type(options["include_compacted"]) is bool
        expect.arg("include_compacted", OK if ok else BAD)
    conv, rows = await _state(world, cid)
    out = await world.attempt(lambda: world.api.messages.history(cid, **options), expect)
    if not out.ok:
        return
    view = compacted_view(
        rows, conv["compacted_through"], everything=options.get("include_compacted") is True
    )
    before = options.get("before")
    expected = latest_of_view(
        view,
        limit=options.get("limit", 50),
        before=INT4_MAX if before is None else before,
        budget=options.get("max_tokens"),
    )
    history: list[Message] = out.result
    assert [m.id for m in history] == [r["id"] for r in expected], "wrong view"
    for m, r in zip(history, expected, strict=True):
        check_message(m, r)


async def _turn(world: World, cid: UUID, cont: str, step: dict[str, Any]) -> None:
    """A turn's context is the view before it, cut to its context and budget."""
    conv, rows = await _state(world, cid)
    turn = await world.store.add_turn(
        cont,
        "user",
        "turn",
        tokens=step["tokens"],
        context=step["context"],
        context_tokens=step["context_tokens"],
    )
    assert turn.context is not None
    budget = step["context_tokens"]
    left = None if budget is None else budget - own_tokens({"tokens": step["tokens"]})
    if step["context"] == 1 or (left is not None and left < 0):
        expected: list[Any] = []
    else:
        view = compacted_view(rows, conv["compacted_through"])
        expected = latest_of_view(view, limit=step["context"] - 1, before=INT4_MAX, budget=left)
    assert [m.id for m in turn.context] == [*(r["id"] for r in expected), turn.message.id]
