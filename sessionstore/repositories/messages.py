"""SQL and row mapping for ``messages``.

Appending locks the conversation row while it bumps ``message_count``; that count is
the new message's ``seq``, so concurrent appends to one conversation get consecutive,
distinct sequence numbers and the counters never drift from the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from .. import validation as v
from ..db import Database, Row
from ..errors import InvalidInputError, NotFoundError, SessionStoreError
from ..models import Message, MessageRole, from_trusted
from ..writer import PendingWrite, Writer

__all__ = ["MESSAGE_COLUMNS", "MessagesRepository", "NewMessage", "message_from_values"]

MESSAGE_COLUMNS = "id, conversation_id, seq, role, content, metadata, tokens, created_at"

ADD_MESSAGE = f"""
WITH conv AS (
    UPDATE conversations
    SET message_count = message_count + 1,
        last_message_at = now(),
        total_tokens = total_tokens + coalesce($5::integer, 0)
    WHERE id = $1
    RETURNING id, message_count
)
INSERT INTO messages (conversation_id, seq, role, content, metadata, tokens)
SELECT conv.id, conv.message_count, $2::message_role, $3, coalesce($4::jsonb, '{{}}'::jsonb), $5
FROM conv
RETURNING {MESSAGE_COLUMNS}
"""
ADD_MANY = f"""
WITH conv AS (
    UPDATE conversations
    SET message_count = message_count + $2,
        last_message_at = now(),
        total_tokens = total_tokens + $3
    WHERE id = $1
    RETURNING id, message_count
)
INSERT INTO messages (conversation_id, seq, role, content, metadata, tokens)
SELECT conv.id, conv.message_count - $2 + u.ord, u.role, u.content,
       coalesce(u.metadata, '{{}}'::jsonb), u.tokens
FROM conv,
     unnest($4::message_role[], $5::text[], $6::jsonb[], $7::integer[])
         WITH ORDINALITY AS u(role, content, metadata, tokens, ord)
RETURNING {MESSAGE_COLUMNS}
"""
# Zero rows: no such conversation. One all-null row: a conversation without messages.
HISTORY = f"""
SELECT m.* FROM conversations c
LEFT JOIN LATERAL (
    SELECT {MESSAGE_COLUMNS} FROM messages
    WHERE conversation_id = c.id AND seq < $3
    ORDER BY seq DESC
    LIMIT $2
) m ON true
WHERE c.id = $1
ORDER BY m.seq
"""
COUNT = "SELECT message_count FROM conversations WHERE id = $1"

_NO_UPPER_BOUND = 2**31 - 1
_ROLES = {role.value: role for role in MessageRole}
MAX_BATCH = 10_000

#: ``(role, content)``, optionally followed by ``metadata`` and ``tokens``.
NewMessage = (
    tuple[MessageRole | str, str]
    | tuple[MessageRole | str, str, Mapping[str, Any] | None]
    | tuple[MessageRole | str, str, Mapping[str, Any] | None, int | None]
)


def message_from_values(values: Row) -> Message:
    """Build a :class:`Message` from values in ``MESSAGE_COLUMNS`` order."""
    return from_trusted(
        Message,
        {
            "id": values[0],
            "conversation_id": values[1],
            "seq": values[2],
            "role": _ROLES[values[3]],
            "content": values[4],
            "metadata": values[5],
            "tokens": values[6],
            "created_at": values[7],
        },
    )


class MessagesRepository:
    """Messages: durable appends, write-behind appends, history by sequence number, counts."""

    def __init__(self, db: Database, writer: Writer | None = None) -> None:
        self._db = db
        self._writer = writer

    def _pending(
        self,
        conversation_id: UUID | str,
        role: MessageRole | str,
        content: str,
        metadata: dict[str, Any] | None,
        tokens: int | None,
    ) -> tuple[Writer, PendingWrite]:
        if self._writer is None:
            raise SessionStoreError(
                "write-behind runs on the service path only, not under as_user: use add()"
            )
        item = PendingWrite.accept(
            "message",
            role,
            content,
            metadata,
            tokens,
            conversation_id=v.uuid(conversation_id, "conversation_id"),
        )
        return self._writer, item

    async def enqueue(
        self,
        conversation_id: UUID | str,
        role: MessageRole | str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        tokens: int | None = None,
    ) -> UUID:
        """Accept a message for write-behind and return its id at once.

        It is durable after ``store.flush()`` or ``store.close()``; if the queue is full
        this waits for room (nothing is dropped). Input is checked here, before
        acceptance; a conversation that does not exist is found at write time and the
        message set aside (see ``store.stats()`` and ``on_write_error``).
        """
        writer, item = self._pending(conversation_id, role, content, metadata, tokens)
        await writer.put(item)
        return item.id

    def enqueue_nowait(
        self,
        conversation_id: UUID | str,
        role: MessageRole | str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        tokens: int | None = None,
    ) -> UUID:
        """Like :meth:`enqueue`, but raise ``QueueFullError`` instead of waiting."""
        writer, item = self._pending(conversation_id, role, content, metadata, tokens)
        writer.put_nowait(item)
        return item.id

    async def add(
        self,
        conversation_id: UUID | str,
        role: MessageRole | str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        tokens: int | None = None,
    ) -> Message:
        """Append one message; it is committed when this returns.

        ``NotFoundError`` if the conversation does not exist (nothing is written).
        """
        cid = v.uuid(conversation_id, "conversation_id")
        role_ = v.role(role)
        text = v.text(content, "content")
        meta = v.metadata_json(metadata)
        count = v.tokens(tokens)
        row = await self._db.fetchrow(ADD_MESSAGE, cid, role_.value, text, meta, count)
        if row is None:
            raise NotFoundError(f"conversation {cid} not found")
        return message_from_values(row)

    async def add_many(
        self, conversation_id: UUID | str, messages: Iterable[NewMessage]
    ) -> list[Message]:
        """Append several messages in one round trip, all or nothing, in the order given."""
        cid = v.uuid(conversation_id, "conversation_id")
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
        if total > _NO_UPPER_BOUND:
            raise InvalidInputError("messages", "total tokens exceed the integer range")
        rows = await self._db.fetch(
            ADD_MANY, cid, len(roles), total, roles, contents, metas, counts
        )
        if not rows:
            raise NotFoundError(f"conversation {cid} not found")
        return sorted((message_from_values(row) for row in rows), key=lambda m: m.seq)

    async def history(
        self, conversation_id: UUID | str, *, limit: int = 50, before: int | None = None
    ) -> list[Message]:
        """The latest ``limit`` messages (with ``seq < before`` if given), oldest first."""
        cid = v.uuid(conversation_id, "conversation_id")
        size = v.limit(limit)
        upper = _NO_UPPER_BOUND if before is None else v.positive_int(before, "before")
        rows = await self._db.fetch(HISTORY, cid, size, upper, retry=True)
        if not rows:
            raise NotFoundError(f"conversation {cid} not found")
        return [message_from_values(row) for row in rows if row[0] is not None]

    async def count(self, conversation_id: UUID | str) -> int:
        """How many messages the conversation holds (kept on the row: no scan)."""
        cid = v.uuid(conversation_id, "conversation_id")
        count = await self._db.fetchval(COUNT, cid, retry=True)
        if count is None:
            raise NotFoundError(f"conversation {cid} not found")
        return int(count)
