"""SQL and row mapping for ``conversations``."""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

from .. import validation as v
from ..db import Connection, Database
from ..errors import ConflictError, NotFoundError, PermissionDeniedError, translate_errors
from ..models import ContinuationId, Conversation, ConversationRef, Page
from ..pagination import decode_cursor, make_page
from ..rows import Columns, Row, keyset_before
from ..telemetry import traced

__all__ = [
    "CONVERSATION",
    "KEY",
    "ConversationsRepository",
    "Keyed",
    "conversation_missing",
    "conversation_named",
    "fetch_conversation",
]

#: Stands for the column that finds a conversation (``id`` or ``continuation_id``) in a
#: statement written once for both; see :class:`Keyed`.
KEY = "@conversation_key@"


class Keyed(NamedTuple):
    """A statement finding its conversation (``$1``) by ``id``, and the same by
    ``continuation_id``: two texts rather than one with an ``OR``, so each keeps its
    index and its plan."""

    by_id: str
    by_continuation: str

    @classmethod
    def of(cls, template: str) -> Keyed:
        """Both forms of ``template``, whose :data:`KEY` names the finding column."""
        return cls(template.replace(KEY, "id"), template.replace(KEY, "continuation_id"))

    def for_(self, conversation: UUID | ContinuationId) -> str:
        """The statement for a checked conversation reference."""
        return self.by_continuation if isinstance(conversation, ContinuationId) else self.by_id


CONVERSATION = Columns(Conversation)
_COLUMNS = CONVERSATION.select()

# ON CONFLICT DO NOTHING never waits forever and writes no dead tuple for the common
# "already there" case; the UNION arm returns the existing row. An inserted row had its
# session checked by the foreign key; for an existing one, session_found asks (in the same
# round trip) whether $2 names a session, so a missing session is refused either way.
GET_OR_CREATE = f"""
WITH ins AS (
    INSERT INTO conversations (continuation_id, session_id, title, metadata)
    VALUES ($1, $2, $3, coalesce($4::jsonb, '{{}}'::jsonb))
    ON CONFLICT (continuation_id) DO NOTHING
    RETURNING {_COLUMNS}
)
SELECT {_COLUMNS}, true AS session_found FROM ins
UNION ALL
SELECT {_COLUMNS},
       $2::uuid IS NULL OR session_id = $2 OR EXISTS (SELECT 1 FROM sessions WHERE id = $2)
FROM conversations
WHERE continuation_id = $1 AND NOT EXISTS (SELECT 1 FROM ins)
"""
GET = Keyed.of(f"SELECT {_COLUMNS} FROM conversations WHERE {KEY} = $1")
DELETE_CONVERSATION = Keyed.of(f"DELETE FROM conversations WHERE {KEY} = $1 RETURNING id")
GET_BY_CONTINUATION = f"SELECT {_COLUMNS} FROM conversations WHERE continuation_id = $1"
# One row per conversation, or one all-null row when the session has none: zero rows
# means the session itself does not exist.
_AFTER_CURSOR = keyset_before("conversations.created_at", "conversations.id", "$2", "$3::uuid")
LIST_FOR_SESSION = f"""
SELECT c.* FROM sessions s
LEFT JOIN LATERAL (
    SELECT {_COLUMNS} FROM conversations
    WHERE session_id = s.id
      AND ($2::timestamptz IS NULL OR {_AFTER_CURSOR})
    -- qualified: a bare name would sort by the select list's (clamped) created_at
    ORDER BY conversations.created_at DESC, conversations.id DESC
    LIMIT $4
) c ON true
WHERE s.id = $1
ORDER BY c.created_at DESC, c.id DESC
"""

# A concurrent creator can commit between our snapshot and our insert; the next
# attempt then sees its row. Two attempts always suffice; the third is slack.
_GET_OR_CREATE_ATTEMPTS = 3


def conversation_named(conversation: UUID | ContinuationId) -> str:
    """How errors name a conversation reference (by id, or by continuation id)."""
    if isinstance(conversation, ContinuationId):
        return f"conversation with continuation_id {str(conversation)!r}"
    return f"conversation {conversation}"


def conversation_missing(conversation: UUID | ContinuationId) -> NotFoundError:
    """The error for a conversation that does not exist (or is not visible under RLS)."""
    return NotFoundError(f"{conversation_named(conversation)} not found")


async def fetch_conversation(
    db: Database, query: Keyed, conversation: object, *, retry: bool = True
) -> Row:
    """The row ``query`` (``$1``: the conversation) returns for the conversation;
    ``InvalidInputError`` for a malformed reference, ``NotFoundError`` when there is no
    row. ``retry`` as for ``Database.run`` (off for writes)."""
    ref = v.conversation(conversation)
    row = await db.fetchrow(query.for_(ref), ref, retry=retry)
    if row is None:
        raise conversation_missing(ref)
    return row


class ConversationsRepository:
    """Conversations, found by id or by their unique ``continuation_id``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @traced("conversations")
    async def get_or_create(
        self,
        continuation_id: str,
        *,
        session_id: UUID | str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Conversation:
        """The conversation with ``continuation_id``, created if absent.

        Race-free: concurrent calls for one id make exactly one row. An existing
        conversation is returned as it is (``session_id``, ``title`` and ``metadata`` apply
        only on creation), except that one bound to another session than ``session_id``
        raises ``ConflictError``. ``NotFoundError`` if ``session_id`` names no session,
        whether the conversation exists or not (an unbound one too; this is checked
        before whose it is). The session's status does not matter here.
        """
        cid = v.identifier(continuation_id, "continuation_id")
        sid = None if session_id is None else v.uuid(session_id, "session_id")
        title_ = v.text(title, "title", optional=True)
        meta = v.metadata_json(metadata)

        async def work(conn: Connection) -> Conversation:
            for _ in range(_GET_OR_CREATE_ATTEMPTS):
                try:
                    with translate_errors():
                        row = await conn.fetchrow(GET_OR_CREATE, cid, sid, title_, meta)
                except NotFoundError as exc:  # the only foreign key here is session_id
                    raise NotFoundError(f"session {sid} not found", sqlstate=exc.sqlstate) from None
                if row is not None:
                    if not row["session_found"]:
                        raise NotFoundError(f"session {sid} not found")
                    found = CONVERSATION.one(row)
                    if sid is not None and found.session_id not in (None, sid):
                        raise ConflictError(
                            f"conversation {cid!r} belongs to another session, not {sid}"
                        )
                    return found
            # The row exists (the insert conflicted) yet stays invisible: RLS hides it.
            raise PermissionDeniedError(
                f"conversation {cid!r} exists but is not visible to this user"
            )

        return await self._db.run(work, retry=True)

    @traced("conversations")
    async def get(self, conversation_id: ConversationRef) -> Conversation:
        """The conversation (by id or :class:`~sessionstore.ContinuationId`);
        ``NotFoundError`` if absent."""
        return CONVERSATION.one(await fetch_conversation(self._db, GET, conversation_id))

    @traced("conversations")
    async def delete(self, conversation_id: ConversationRef) -> None:
        """Delete the conversation (by id or :class:`~sessionstore.ContinuationId`) and
        its messages; ``NotFoundError`` if absent."""
        await fetch_conversation(self._db, DELETE_CONVERSATION, conversation_id, retry=False)

    @traced("conversations")
    async def get_by_continuation_id(self, continuation_id: str) -> Conversation:
        """The conversation with this continuation id; ``NotFoundError`` if absent."""
        cid = v.identifier(continuation_id, "continuation_id")
        row = await self._db.fetchrow(GET_BY_CONTINUATION, cid, retry=True)
        if row is None:
            raise NotFoundError(f"conversation with continuation_id {cid!r} not found")
        return CONVERSATION.one(row)

    @traced("conversations")
    async def list_for_session(
        self, session_id: UUID | str, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Conversation]:
        """The session's conversations, newest first; ``NotFoundError`` if no such session."""
        sid = v.uuid(session_id, "session_id")
        size = v.limit(limit)
        after_at, after_id = decode_cursor(v.text(cursor, "cursor", optional=True))
        rows = await self._db.fetch(LIST_FOR_SESSION, sid, after_at, after_id, size + 1, retry=True)
        if not rows:
            raise NotFoundError(f"session {sid} not found")
        present = [row for row in rows if row["id"] is not None]
        return make_page(CONVERSATION.many(present), size, lambda c: (c.created_at, c.id))
