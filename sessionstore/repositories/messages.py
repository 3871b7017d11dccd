"""SQL and row mapping for ``messages``.

Appending locks the conversation row while it bumps ``message_count``; that count is
the new message's ``seq``, so concurrent appends to one conversation get consecutive,
distinct sequence numbers and the counters never drift from the rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Unpack
from uuid import UUID, uuid4

from .. import validation as v
from ..cache import SessionCache
from ..db import Connection, Database
from ..errors import ConflictError, InvalidInputError
from ..keyring import Owner, seal_message, seal_rows
from ..lifecycle import TAKES_TURNS, Attempt, raise_session_miss
from ..models import (
    ContinuationId,
    ConversationRef,
    Message,
    MessageOptions,
    NewMessage,
    Role,
)
from ..rows import Row
from ..rules import drop_latest, placed
from ..telemetry import traced
from .compaction import Compaction
from .conversations import (
    KEY,
    Keyed,
    conversation_missing,
    conversation_named,
    fetch_conversation,
    fetch_placed,
    run_placed,
)
from .message_sql import (
    MESSAGE,
    STORED_PLACED,
    append_statement,
    history_statement,
    read_message,
    read_messages,
    stored_history_statement,
)

_COLUMNS = MESSAGE.select()

__all__ = [
    "HISTORY_WITH_WAITING",
    "MESSAGE",
    "NO_UPPER_BOUND",
    "MessagesRepository",
]

# $8-$10: the ids, and (encryption at rest) the sealed contents and metadata.
_MANY_ROWS = (
    "unnest($4::message_role[], $5::text[], $6::jsonb[], $7::integer[], $8::uuid[],"
    " $9::bytea[], $10::bytea[])"
    " WITH ORDINALITY AS u(role, content, metadata, tokens, id, content_sealed,"
    " metadata_sealed, ord)"
)
ADD_MANY = append_statement("$2", "$3", _MANY_ROWS)
# $11 the session, $12 its sliding interval.
ADD_MANY_IN_SESSION = append_statement("$2", "$3", _MANY_ROWS, session="$11")
# One message without arrays (the common call stays cheap); $6-$8 as $8-$10 above.
ADD_MESSAGE = append_statement(
    "1",
    "coalesce($5::integer, 0)",
    "(SELECT $2::message_role AS role, $3::text AS content, $4::jsonb AS metadata,"
    " $5::integer AS tokens, $6::uuid AS id, $7::bytea AS content_sealed,"
    " $8::bytea AS metadata_sealed, 1 AS ord) AS u",
)


# $4 the reading session (NULL: any), $5 the token budget (NULL: none), $6 whether to
# read every stored message (compacted ones and superseded summaries too).
HISTORY = history_statement("$4", "$5", "$6::boolean")
# Every stored message ($4 the reading session, $5 the token budget), and whether the
# conversation is compacted: the read of a conversation not known to be compacted.
STORED_HISTORY = stored_history_statement("$4", "$5")
# For a process with waiting write-behind messages: also whether the session ($5) may
# read it, the conversation's keys and count, and which of the waiting ids ($4) are
# stored by now; $6 the token budget, $7 whether to read every stored message.
HISTORY_WITH_WAITING = history_statement(
    "$5",
    "$6",
    "$7::boolean",
    ", c.id AS conv_id, c.continuation_id AS conv_continuation, c.message_count AS conv_count,"
    " ARRAY(SELECT s.id FROM messages s WHERE s.id = ANY($4::uuid[])"
    f"{STORED_PLACED}) AS stored",
)
COUNT = Keyed.of(f"SELECT message_count FROM conversations WHERE {KEY} = $1")
OWNER_OF = Keyed.of(f"SELECT session_id FROM conversations WHERE {KEY} = $1")
# Removals lock the conversation first, in their own statement: the removing statement's
# snapshot then holds every append that committed before the lock (one snapshot taken
# before it could miss the latest message and still lower the count).
LOCK_CONVERSATION = Keyed.of(
    f"SELECT id, session_id FROM conversations WHERE {KEY} = $1 FOR UPDATE"
)


def _pop(session: str | None) -> str:
    """Delete the latest message of the locked conversation $1 (``session``: the
    distributed layout's placing session, else ``None``)."""
    here, touched = placed("p", session), ", updated_at = now()" if session else ""
    drop = drop_latest(
        seq="gone.seq",
        tokens="gone.tokens",
        # max, not the time of seq - 1: concurrent appends take their times before the
        # lock that orders them, so times need not rise with seq.
        previous_at="(SELECT max(p.created_at) FROM messages p WHERE p.conversation_id = $1"
        f"{here} AND p.seq < gone.seq)",
    )
    return f"""
WITH gone AS (
    DELETE FROM messages WHERE id = (
        SELECT id FROM messages WHERE conversation_id = $1{placed("", session)}
        ORDER BY seq DESC LIMIT 1
    ){placed("", session)}
    RETURNING {_COLUMNS}
),
counted AS (
    UPDATE conversations SET {drop}{touched},
        -- the live summary popped: the one before it is live again (if still stored)
        compacted_through = CASE WHEN gone.covers_through IS NULL THEN compacted_through
            ELSE (SELECT p.covers_through FROM messages p
                  WHERE p.conversation_id = $1{here} AND p.covers_through IS NOT NULL
                    AND p.seq < gone.seq ORDER BY p.seq DESC LIMIT 1) END
    FROM gone WHERE conversations.id = $1{placed("conversations", session)}
)
SELECT * FROM gone
"""


def _clear(session: str | None) -> str:
    """Delete every message of the locked conversation $1 (``session`` as for
    :func:`_pop`)."""
    touched = ", updated_at = now()" if session else ""
    return f"""
WITH gone AS (
    DELETE FROM messages WHERE conversation_id = $1{placed("", session)} RETURNING 1
),
counted AS (
    UPDATE conversations
    SET message_count = 0, total_tokens = 0, last_message_at = NULL,
        compacted_through = NULL{touched}
    WHERE id = $1{placed("", session)}
)
SELECT count(*) FROM gone
"""


POP = _pop(None)
POP_KEYED = _pop("$2::uuid")
CLEAR = _clear(None)
CLEAR_KEYED = _clear("$2::uuid")
_MESSAGE_OPTIONS = MessageOptions.__optional_keys__
#: ``before`` when none is given: above every ``seq`` (an integer column).
NO_UPPER_BOUND = 2**31 - 1
# A turn meeting a conversation created after its snapshot is sent again; once more
# always suffices (the conversation then exists), the third is slack.
_TURN_ATTEMPTS = 3
MAX_BATCH = 10_000


class _KnownCompacted(set[UUID | ContinuationId]):
    """A set of conversation keys that forgets everything once it holds 10,000: memory
    stays bounded, and a forgotten conversation costs one more round trip once."""

    _MOST = 10_000

    def add(self, key: UUID | ContinuationId) -> None:
        if len(self) >= self._MOST:
            self.clear()
        super().add(key)


class MessagesRepository(Compaction):
    """Messages: durable appends, history by sequence number, counts."""

    def __init__(self, db: Database, cache: SessionCache | None = None) -> None:
        self._db = db
        self._cache = cache
        # Conversations met compacted (by the key they were read by): read by the view's
        # statement at once. Never "not compacted": that is checked on every read.
        self._compacted = _KnownCompacted()

    @traced("messages")
    async def add(
        self,
        conversation_id: ConversationRef,
        role: Role,
        content: str,
        **options: Unpack[MessageOptions],
    ) -> Message:
        """Append one message; it is committed when this returns. The conversation is
        named by its id or its :class:`~sessionstore.ContinuationId`. ``options``:
        ``metadata``, ``tokens`` (see :class:`~sessionstore.MessageOptions`).

        ``NotFoundError`` if the conversation does not exist (nothing is written).
        """
        cid = v.conversation(conversation_id)
        fields = v.message(role, content, options, _MESSAGE_OPTIONS)
        mid = uuid4()
        text, meta, sealed, sealed_meta = await seal_message(
            self._db.keys, ("conversation", cid), mid, fields.content, fields.metadata
        )
        arguments = (fields.role, text, meta, fields.tokens, mid, sealed, sealed_meta)
        db = self._db
        rows = await fetch_placed(db, ADD_MESSAGE, cid, *arguments)
        if not rows:
            raise conversation_missing(cid)
        return await read_message(db, rows[0])

    @traced("messages")
    async def add_many(
        self,
        conversation_id: ConversationRef,
        messages: Iterable[NewMessage],
        *,
        session_id: UUID | str | None = None,
    ) -> list[Message]:
        """Append several messages in one round trip, all or nothing, in the order given.

        With ``session_id`` the messages are one turn of that session, under the rules of
        ``add_turn``: the session must exist, be active and not expired (``NotFoundError``,
        ``InvalidStateError``, ``SessionExpiredError``), a conversation bound to another
        session raises ``ConflictError`` (an unbound one is bound to this session), and the
        session counts one turn and the messages' tokens (sliding expiry moves it on).
        The conversation must exist (``conversations.get_or_create`` makes it). In every
        refusal nothing is written.
        """
        cid = v.conversation(conversation_id)
        sid = None if session_id is None else v.uuid(session_id, "session_id")
        if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Iterable):
            raise InvalidInputError(
                "messages", "must be a sequence of (role, content[, metadata[, tokens]]) tuples"
            )
        roles: list[str] = []
        contents: list[str | None] = []
        metas: list[str | None] = []
        counts: list[int | None] = []
        for i, item in enumerate(messages):
            if not isinstance(item, tuple) or not 2 <= len(item) <= 4:
                raise InvalidInputError(
                    f"messages[{i}]", "must be a tuple (role, content[, metadata[, tokens]])"
                )
            roles.append(v.role(item[0], f"messages[{i}].role").value)
            contents.append(v.text(item[1], f"messages[{i}].content"))
            metas.append(
                v.metadata_json(item[2] if len(item) > 2 else None, f"messages[{i}].metadata")
            )
            counts.append(v.tokens(item[3] if len(item) > 3 else None, f"messages[{i}].tokens"))
        if not 1 <= len(roles) <= MAX_BATCH:
            raise InvalidInputError("messages", f"must hold between 1 and {MAX_BATCH} messages")
        total = sum(c for c in counts if c is not None)
        if total > NO_UPPER_BOUND:
            raise InvalidInputError(
                "messages", f"tokens must sum to at most {NO_UPPER_BOUND} in one append"
            )
        ids = [uuid4() for _ in roles]
        owner: Owner = ("conversation", cid) if sid is None else ("session", sid)
        stored, metas, sealed, sealed_metas = await seal_rows(
            self._db.keys,
            [(owner, i, c or "", m) for i, c, m in zip(ids, contents, metas, strict=True)],
        )
        arguments = (
            cid,
            len(roles),
            total,
            roles,
            stored,
            metas,
            counts,
            ids,
            sealed,
            sealed_metas,
        )
        if sid is None:
            db = self._db
            rows = await fetch_placed(db, ADD_MANY, *arguments)
            if not rows:
                raise conversation_missing(cid)
        else:
            rows = await self._db.run(self._turn_of(sid, arguments))
            if self._cache is not None:
                self._cache.discard(sid)
        return sorted(await read_messages(self._db, rows), key=lambda m: m.seq)

    def _turn_of(
        self, sid: UUID, arguments: tuple[Any, ...]
    ) -> Callable[[Connection], Awaitable[list[Row]]]:
        cid = arguments[0]
        slide = self._db.config.sliding_interval
        db = self._db

        async def work(conn: Connection) -> list[Row]:
            for _ in range(_TURN_ATTEMPTS):
                rows = await run_placed(db, conn, ADD_MANY_IN_SESSION, *arguments, sid, slide)
                if rows:
                    return rows
                # Why nothing matched: the conversation, the session, else ownership.
                owners = await run_placed(db, conn, OWNER_OF, cid)
                if not owners:
                    raise conversation_missing(cid)
                found = owners[0]
                if not await conn.fetchval(TAKES_TURNS, sid):
                    await raise_session_miss(conn, Attempt(sid, "add a turn to"))
                if found["session_id"] not in (None, sid):
                    raise ConflictError(
                        f"{conversation_named(cid)} belongs to another session; a turn of"
                        f" session {sid} cannot be added to it (nothing was written)"
                    )
                # Neither: the conversation was created after the statement's snapshot
                # (while it waited for the session's lock). The next attempt sees it.
            raise ConflictError(f"{conversation_named(cid)} kept changing; nothing was written")

        return work

    @traced("messages")
    async def history(
        self,
        conversation_id: ConversationRef,
        *,
        limit: int = 50,
        before: int | None = None,
        session_id: UUID | str | None = None,
        max_tokens: int | None = None,
        include_compacted: bool = False,
    ) -> list[Message]:
        """The latest ``limit`` messages (with ``seq < before`` if given), oldest first.

        A compacted conversation (see :meth:`compact`) reads as its live summary followed
        by every message after the ``seq`` it covers that is no summary, in ``seq`` order
        (appended before or after the compaction): the summary is the oldest message
        returned, so ``limit`` and ``max_tokens`` keep it only when every later message
        is kept and it fits after them, and ``before`` compares it by the last ``seq`` it
        covers (a page starting with the summary is the first page). With
        ``include_compacted=True`` every stored message is read in ``seq`` order:
        the messages a summary covers (unless deleted) and superseded summaries too.

        With ``max_tokens`` (an integer from 1 to 2³¹−1), only the latest of those whose
        tokens sum to at most ``max_tokens``: a run ending at the latest message, cut
        before the first one that would overflow the budget (an older, smaller message
        past the cut is not picked up), so the result may be empty when the latest
        message alone is larger. A message stored without a token count counts
        ⌈UTF-8 bytes / 4⌉ tokens, never none. Chosen in the same statement: only the
        messages returned leave the server, and the server stops reading at the cut.

        The conversation is named by its id or its :class:`~sessionstore.ContinuationId`
        (one round trip either way); ``NotFoundError`` if it does not exist.

        With ``session_id`` the read is that session's: a conversation not bound to it
        (bound to another session, or to none) raises the same ``NotFoundError``, with
        the same text, as one that does not exist, so a caller holding one session learns
        neither the content nor the existence of another's conversation. (Not
        ``ConflictError``: that would confirm the conversation exists. Appends differ:
        ``add_turn`` must say a name is taken, since it would otherwise create it.) The
        session's state is not checked: an expired or completed session still reads its
        own conversations. The check is part of the same statement (no extra round trip),
        and a refused conversation's messages are not read. ``session_id`` must be a UUID
        (``InvalidInputError``, before anything is sent).
        """
        cid = v.conversation(conversation_id)
        size = v.limit(limit)
        upper = NO_UPPER_BOUND if before is None else v.positive_int(before, "before")
        sid = None if session_id is None else v.uuid(session_id, "session_id")
        budget = None if max_tokens is None else v.positive_int(max_tokens, "max_tokens")
        everything = v.flag(include_compacted, "include_compacted")
        return await self._page(cid, size, upper, sid, budget, everything)

    async def _page(
        self,
        cid: UUID | ContinuationId,
        size: int,
        upper: int,
        sid: UUID | None,
        budget: int | None,
        everything: bool = False,
    ) -> list[Message]:
        """:meth:`history` once its arguments are checked (the write-behind repository
        adds the queued messages here).

        A conversation not known to be compacted is read by the plain statement, which
        also says whether it is: if so (then only) the compacted view is read, a second
        round trip the first time this repository meets that conversation."""
        db = self._db
        if everything or cid not in self._compacted:
            rows = await fetch_placed(db, STORED_HISTORY, cid, size, upper, sid, budget, retry=True)
            if not rows:  # missing, or not this session's
                raise conversation_missing(cid)
            if everything or rows[0]["conv_compacted"] is None:
                return [] if rows[0]["id"] is None else await read_messages(self._db, rows)
            self._compacted.add(cid)
        rows = await fetch_placed(db, HISTORY, cid, size, upper, sid, budget, False, retry=True)
        if not rows:
            raise conversation_missing(cid)
        if rows[0]["id"] is None:  # the one all-null row of a conversation without messages
            return []
        return await read_messages(self._db, rows)

    @traced("messages")
    async def count(self, conversation_id: ConversationRef) -> int:
        """How many messages the conversation (by id or
        :class:`~sessionstore.ContinuationId`) holds (kept on the row: no scan)."""
        row = await fetch_conversation(self._db, COUNT, conversation_id)
        return int(row["message_count"])

    @traced("messages")
    async def pop(self, conversation_id: ConversationRef) -> Message | None:
        """Delete the conversation's latest message and return it; ``None`` if it has none.

        The conversation's counters drop with it and the next append takes its ``seq``.
        The session's ``turn_count`` and ``total_tokens`` are not lowered: they count
        turns recorded, not messages kept. ``NotFoundError`` if the conversation (by id or
        :class:`~sessionstore.ContinuationId`) does not exist.
        """
        cid = v.conversation(conversation_id)

        db = self._db

        async def work(conn: Connection) -> Message | None:
            found = await run_placed(db, conn, LOCK_CONVERSATION, cid)
            if not found:
                raise conversation_missing(cid)
            locked = found[0]
            if db.keyed:
                row = await conn.fetchrow(POP_KEYED, locked["id"], locked["session_id"])
            else:
                row = await conn.fetchrow(POP, locked["id"])
            return None if row is None else await read_message(db, row)

        return await self._db.run(work, transaction=True)

    @traced("messages")
    async def clear(self, conversation_id: ConversationRef) -> int:
        """Delete every message of the conversation, keeping the conversation; return how
        many were deleted. Its counters restart: the next append has ``seq`` 1. The
        session's counters are not lowered (see :meth:`pop`). ``NotFoundError`` if the
        conversation (by id or :class:`~sessionstore.ContinuationId`) does not exist.
        """
        cid = v.conversation(conversation_id)

        db = self._db

        async def work(conn: Connection) -> int:
            found = await run_placed(db, conn, LOCK_CONVERSATION, cid)
            if not found:
                raise conversation_missing(cid)
            locked = found[0]
            if db.keyed:
                return int(await conn.fetchval(CLEAR_KEYED, locked["id"], locked["session_id"]))
            return int(await conn.fetchval(CLEAR, locked["id"]))

        return await self._db.run(work, transaction=True)
