"""``conversations.fork``: a new conversation holding copies of a prefix of another, its
refusals (each writes nothing), resends, and what deleting the source leaves."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    ConflictError,
    ContinuationId,
    Conversation,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    SessionExpiredError,
    SessionStore,
)

from ...conftest import store_overrides
from ...helpers import expire

# Every message of a conversation, as the tests compare them (ids and the conversation
# aside: a copy gets new ones).
MESSAGES = """
SELECT seq, role::text, content, metadata, tokens, created_at FROM messages
WHERE conversation_id = $1 ORDER BY seq
"""
# The counters agree with the rows: message_count is the last seq (as after appends).
CONSISTENT = """
SELECT c.message_count = coalesce(max(m.seq), 0)
       AND c.total_tokens = coalesce(sum(m.tokens), 0)
       AND c.last_message_at IS NOT DISTINCT FROM max(m.created_at)
FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
WHERE c.id = $1
GROUP BY c.id
"""
IDS = "SELECT id FROM messages WHERE conversation_id = $1"
# $2 messages of one token each in conversation $1, written as another client would.
FILL = """
WITH m AS (
    INSERT INTO messages (conversation_id, seq, role, content, tokens)
    SELECT $1, g, 'user', 'm' || g, 1 FROM generate_series(1, $2::integer) g
)
UPDATE conversations SET message_count = $2::integer, total_tokens = $2::integer WHERE id = $1
"""
CANARY = "canary-7f3e"
SRC = ContinuationId("src")


async def _everything(conn: asyncpg.Connection) -> list[Any]:
    """Every row of the three tables, to show a refused call wrote nothing."""
    return [
        await conn.fetch(f"SELECT * FROM {table} ORDER BY id")
        for table in ("sessions", "conversations", "messages")
    ]


async def _source(store: SessionStore, session: UUID | None, n: int = 5) -> Conversation:
    """Conversation ``src`` with ``n`` messages (tokens 1..n, metadata naming each)."""
    conversation = await store.conversations.get_or_create("src", session_id=session)
    for i in range(1, n + 1):
        role = "user" if i % 2 else "assistant"
        meta = {"i": i, "nested": {"k": [i]}}
        await store.add_turn("src", role, f"m{i}", session_id=session, tokens=i, metadata=meta)
    return conversation


async def test_a_fork_copies_the_prefix_and_continues_after_it(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("u1")
    await store.conversations.get_or_create("src", session_id=s.id, title="T", metadata={"a": 1})
    src = await _source(store, s.id)
    source_before = await conn.fetch(MESSAGES, src.id)
    source_row = await conn.fetchrow("SELECT * FROM conversations WHERE id = $1", src.id)
    session_before = await store.sessions.get(s.id)

    fork = await store.conversations.fork(
        ContinuationId("src"), continuation_id="edit-1", session_id=s.id, through_seq=3
    )
    assert (fork.continuation_id, fork.session_id) == ("edit-1", s.id)
    assert (fork.forked_from, fork.forked_at_seq) == (src.id, 3)
    assert (fork.title, fork.metadata) == ("T", {"a": 1})
    assert (fork.message_count, fork.total_tokens) == (3, 1 + 2 + 3)
    assert fork.last_message_at == source_before[2]["created_at"]
    assert await conn.fetch(MESSAGES, fork.id) == source_before[:3]
    assert await conn.fetchval(CONSISTENT, fork.id)
    copies, originals = [{r["id"] for r in await conn.fetch(IDS, c)} for c in (fork.id, src.id)]
    assert len(copies) == 3
    assert not copies & originals
    assert await store.conversations.get(fork.id) == fork

    # the source and the session are untouched
    assert await conn.fetch(MESSAGES, src.id) == source_before
    assert await conn.fetchrow("SELECT * FROM conversations WHERE id = $1", src.id) == source_row
    assert await store.sessions.get(s.id) == session_before

    # appending continues after the prefix, in the fork only
    turn = await store.add_turn("edit-1", "user", "edited", session_id=s.id, tokens=7)
    assert (turn.message.seq, turn.conversation.total_tokens) == (4, 13)
    history = await store.messages.history(fork.id)
    assert [m.content for m in history] == ["m1", "m2", "m3", "edited"]
    assert history[0].metadata == {"i": 1, "nested": {"k": [1]}}
    assert (await store.conversations.get(src.id)).message_count == 5


async def test_the_default_forks_everything_and_zero_forks_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    src = await _source(store, None, 4)
    everything = await store.conversations.fork(src.id, continuation_id="all")
    assert (everything.forked_at_seq, everything.message_count, everything.total_tokens) == (
        4,
        4,
        10,
    )
    assert everything.session_id is None
    assert await conn.fetch(MESSAGES, everything.id) == await conn.fetch(MESSAGES, src.id)

    empty = await store.conversations.fork(str(src.id), continuation_id="none", through_seq=0)
    assert (empty.forked_at_seq, empty.message_count, empty.total_tokens) == (0, 0, 0)
    assert empty.last_message_at is None
    assert await store.messages.history(empty.id) == []
    assert (await store.messages.add(empty.id, "user", "first")).seq == 1

    blank = await store.conversations.get_or_create("blank")
    fork = await store.conversations.fork(blank.id, continuation_id="blank-fork")
    assert (fork.forked_at_seq, fork.message_count) == (0, 0)


async def test_a_fork_of_a_fork(store: SessionStore, conn: asyncpg.Connection) -> None:
    src = await _source(store, None, 5)
    first = await store.conversations.fork(src.id, continuation_id="f1", through_seq=4)
    await store.messages.add(first.id, "user", "only in f1", tokens=100)
    second = await store.conversations.fork(ContinuationId("f1"), continuation_id="f2")
    assert (second.forked_from, second.forked_at_seq, second.total_tokens) == (first.id, 5, 110)
    assert [m.content for m in await store.messages.history(second.id)] == [
        "m1",
        "m2",
        "m3",
        "m4",
        "only in f1",
    ]


async def test_a_prefix_with_gaps_keeps_its_numbers(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """Messages deleted below the last (as retention may) leave gaps: the fork copies what
    is there and still continues after ``through_seq``."""
    src = await _source(store, None, 5)
    await conn.execute("DELETE FROM messages WHERE conversation_id = $1 AND seq IN (1, 3)", src.id)
    fork = await store.conversations.fork(src.id, continuation_id="gaps", through_seq=4)
    assert [m.seq for m in await store.messages.history(fork.id)] == [2, 4]
    assert (fork.message_count, fork.total_tokens) == (4, 2 + 4)
    assert (await store.messages.add(fork.id, "user", "next")).seq == 5


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("value", [-1, 1.0, "3", True, [1], 2**31])
async def test_a_malformed_through_seq_is_refused_before_anything_is_sent(
    store: SessionStore, conn: asyncpg.Connection, value: object
) -> None:
    src = await _source(store, None, 2)
    before = await _everything(conn)
    with pytest.raises(InvalidInputError) as info:
        await store.conversations.fork(src.id, continuation_id="x", through_seq=value)  # type: ignore[arg-type]
    assert info.value.field == "through_seq"
    assert await _everything(conn) == before


async def test_through_seq_past_the_last_message_is_refused(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    src = await _source(store, None, 3)
    before = await _everything(conn)
    with pytest.raises(InvalidInputError) as info:
        await store.conversations.fork(src.id, continuation_id="x", through_seq=4)
    assert info.value.field == "through_seq"
    assert "4" not in str(info.value)
    assert await _everything(conn) == before
    fork = await store.conversations.fork(src.id, continuation_id="x", through_seq=3)
    assert fork.message_count == 3


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"conversation_id": f"{CANARY}-not-a-uuid"}, "conversation_id"),
        ({"conversation_id": ContinuationId(CANARY + "\x00")}, "conversation_id"),
        ({"continuation_id": CANARY + "\x00"}, "continuation_id"),
        ({"continuation_id": ""}, "continuation_id"),
        ({"continuation_id": 42}, "continuation_id"),
        ({"session_id": CANARY}, "session_id"),
        ({"through_seq": CANARY}, "through_seq"),
    ],
)
async def test_malformed_arguments_are_named_not_echoed(
    store: SessionStore, conn: asyncpg.Connection, arguments: dict[str, Any], field: str
) -> None:
    src = await _source(store, None, 1)
    call: dict[str, Any] = {"conversation_id": src.id, "continuation_id": "x", **arguments}
    before = await _everything(conn)
    with pytest.raises(InvalidInputError) as info:
        await store.conversations.fork(call.pop("conversation_id"), **call)
    assert info.value.field == field
    assert CANARY not in str(info.value)
    assert await _everything(conn) == before


async def test_a_missing_source_is_not_found(store: SessionStore, conn: asyncpg.Connection) -> None:
    s = await store.sessions.create("u1")
    before = await _everything(conn)
    for ref in (uuid4(), ContinuationId("nowhere")):
        for session in (None, s.id):
            with pytest.raises(NotFoundError):
                await store.conversations.fork(ref, continuation_id="x", session_id=session)
    assert await _everything(conn) == before


async def test_a_source_the_session_may_not_read_is_refused_like_a_missing_one(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    mine = await store.sessions.create("u1")
    other = await store.sessions.create("u1")
    await store.add_turn("theirs", "user", "secret", session_id=other.id)
    await store.add_turn("loose", "user", "unbound")
    before = await _everything(conn)
    for source in ("theirs", "loose"):
        with pytest.raises(NotFoundError) as refused:
            await store.conversations.fork(
                ContinuationId(source), continuation_id="x", session_id=mine.id
            )
        with pytest.raises(NotFoundError) as missing:
            await store.conversations.fork(
                ContinuationId("absent"), continuation_id="x", session_id=mine.id
            )
        assert str(refused.value) == str(missing.value).replace("absent", source)
    assert await _everything(conn) == before


@pytest.mark.parametrize(
    ("prepare", "error"),
    [
        ("missing", NotFoundError),
        ("pause", InvalidStateError),
        ("complete", InvalidStateError),
        ("expire", SessionExpiredError),
    ],
)
async def test_a_session_that_takes_no_turns_refuses_the_fork_as_add_turn_does(
    store: SessionStore, conn: asyncpg.Connection, prepare: str, error: type[Exception]
) -> None:
    s = await store.sessions.create("u1")
    await _source(store, s.id, 2)
    target = s.id
    if prepare == "missing":
        target = uuid4()
    elif prepare == "expire":
        await expire(conn, s.id)
    else:
        await getattr(store.sessions, prepare)(s.id)
    with pytest.raises(error) as turn:  # (it persists an expiry that was due)
        await store.add_turn("src", "user", "x", session_id=target)
    before = await _everything(conn)
    with pytest.raises(error) as fork:
        await store.conversations.fork(
            ContinuationId("src"), continuation_id="x", session_id=target
        )
    assert str(fork.value).replace("fork a conversation into", "add a turn to") == str(turn.value)
    assert await _everything(conn) == before


async def test_a_taken_continuation_id_conflicts(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    src = await _source(store, None, 2)
    await store.conversations.get_or_create("taken")
    before = await _everything(conn)
    for continuation in ("taken", "src"):  # another conversation's, and the source's own
        with pytest.raises(ConflictError, match="already taken"):
            await store.conversations.fork(src.id, continuation_id=continuation)
    assert await _everything(conn) == before


# ---------------------------------------------------------------- resends


async def test_a_resend_returns_the_stored_fork(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    fork = store.conversations.fork
    s = await store.sessions.create("u1")
    src = (await _source(store, s.id, 3)).id
    made = await fork(src, continuation_id="f", session_id=s.id)
    await store.add_turn("src", "user", "later", session_id=s.id)  # the source grows
    other = await store.sessions.create("u1")
    loose = (await store.add_turn("loose", "user", "x")).conversation.id
    before = await _everything(conn)
    # the same call (the default, everything, matches the fork made at 3), by either id
    assert await fork(src, continuation_id="f", session_id=s.id) == made
    assert await fork(SRC, continuation_id="f", session_id=s.id, through_seq=3) == made
    assert await fork(src, continuation_id="f", through_seq=3) == made
    # a different call reusing the continuation id
    with pytest.raises(ConflictError):
        await fork(src, continuation_id="f", through_seq=2)
    with pytest.raises(ConflictError):  # another source
        await fork(loose, continuation_id="f")
    with pytest.raises(NotFoundError):  # the source is not the other session's
        await fork(src, continuation_id="f", session_id=other.id)
    assert await _everything(conn) == before
    # the session may have stopped taking turns since the first send
    await store.sessions.complete(s.id)
    assert await fork(src, continuation_id="f", session_id=s.id) == made


async def test_a_resend_after_the_fork_grew_returns_it_as_it_is(store: SessionStore) -> None:
    src = await _source(store, None, 2)
    fork = await store.conversations.fork(src.id, continuation_id="f", through_seq=2)
    await store.messages.add(fork.id, "user", "more")
    again = await store.conversations.fork(src.id, continuation_id="f", through_seq=2)
    assert (again.id, again.message_count) == (fork.id, 3)


# ---------------------------------------------------------------- deleting the source


async def test_deleting_the_source_leaves_the_fork(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("u1")
    src = await _source(store, s.id, 3)
    fork = await store.conversations.fork(src.id, continuation_id="f", session_id=s.id)
    copied = await conn.fetch(MESSAGES, fork.id)
    await store.conversations.delete(src.id)
    kept = await store.conversations.get(fork.id)
    assert (kept.forked_from, kept.forked_at_seq, kept.message_count) == (None, 3, 3)
    assert await conn.fetch(MESSAGES, fork.id) == copied
    # a resend now finds no source
    with pytest.raises(NotFoundError):
        await store.conversations.fork(src.id, continuation_id="f", session_id=s.id)


async def test_deleting_or_purging_the_source_s_session_is_not_blocked_by_a_fork(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """An unbound fork (the service path's) outlives its source's session and user; a
    bound one goes with its session, as every conversation of it does."""
    for how in ("delete", "purge"):
        s = await store.sessions.create(f"user-{how}")
        await store.add_turn(f"src-{how}", "user", "m", session_id=s.id)
        bound = await store.conversations.fork(
            ContinuationId(f"src-{how}"), continuation_id=f"bound-{how}", session_id=s.id
        )
        loose = await store.conversations.fork(
            ContinuationId(f"src-{how}"), continuation_id=f"loose-{how}"
        )
        if how == "delete":
            await store.sessions.delete(s.id)
        else:
            counts = await store.purge_user(f"user-{how}")
            assert (counts.conversations, counts.messages) == (2, 2)
        with pytest.raises(NotFoundError):
            await store.conversations.get(bound.id)
        kept = await store.conversations.get(loose.id)
        assert (kept.forked_from, kept.forked_at_seq, kept.message_count) == (None, 1, 1)


# ---------------------------------------------------------------- write-behind and round trips


async def test_a_fork_holds_the_messages_queued_before_it(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    s = await store.sessions.create("u1")
    await store.add_turn("src", "user", "stored", session_id=s.id)
    await store.enqueue_turn("src", "assistant", "queued reply", session_id=s.id)
    await store.messages.enqueue(ContinuationId("src"), "user", "queued by continuation id")
    seen = [m.content for m in await store.messages.history(ContinuationId("src"))]
    assert seen == ["stored", "queued reply", "queued by continuation id"]
    fork = await store.conversations.fork(
        ContinuationId("src"), continuation_id="f", session_id=s.id
    )
    assert [m.content for m in await store.messages.history(fork.id)] == seen
    assert fork.forked_at_seq == 3
    # a through_seq read from history (queued messages shown with their coming seq)
    second = await store.messages.history(ContinuationId("src"))
    await store.messages.enqueue(ContinuationId("src"), "assistant", "queued again")
    upto = (await store.messages.history(ContinuationId("src")))[-1].seq
    assert upto == second[-1].seq + 1
    f2 = await store.conversations.fork(
        ContinuationId("src"), continuation_id="f2", through_seq=upto
    )
    assert (await store.messages.history(f2.id))[-1].content == "queued again"


async def test_copying_is_one_statement_however_many_messages(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """The statements a fork sends do not depend on how many messages it copies."""
    queries: list[str] = []

    async def configure(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda record: queries.append(record.query))

    async with sessionstore.connect(dsn, configure=configure, **store_overrides()) as store:
        sent: list[list[str]] = []
        for n in (10, 10_000):
            c = await store.conversations.get_or_create(f"src-{n}")
            await conn.execute(FILL, c.id, n)
            await store.conversations.fork(c.id, continuation_id=f"warm-{n}", through_seq=1)
            queries.clear()
            fork = await store.conversations.fork(c.id, continuation_id=f"fork-{n}")
            sent.append(list(queries))
            assert (fork.message_count, fork.total_tokens) == (n, n)
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM messages WHERE conversation_id = $1", fork.id
                )
                == n
            )
        assert sent[0] == sent[1]
        assert sum("INSERT INTO messages" in q for q in sent[1]) == 1
        assert len(sent[1]) <= 4  # BEGIN, lock, create and copy, COMMIT


async def test_metadata_and_content_are_copied_byte_for_byte(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    content = "é\u2028\U0001f600 \\u0000 " + "x" * 10_000
    metadata = {"deep": [[[{"n": 1.5, "big": 10**30}]]], "ü": None}
    t = await store.add_turn("src", "system", content, metadata=metadata, tokens=0)
    fork = await store.conversations.fork(t.conversation.id, continuation_id="f")
    (copy,) = await store.messages.history(fork.id)
    assert (copy.role, copy.content, copy.metadata, copy.tokens) == (
        t.message.role,
        content,
        metadata,
        0,
    )
    assert copy.created_at == t.message.created_at
    stored = await conn.fetchval("SELECT metadata FROM messages WHERE id = $1", copy.id)
    assert json.loads(stored) == metadata
