"""The write-behind batch of ``messages.enqueue``: appends to many conversations, each
named by its id or its continuation id, in one statement, by the rules of a single append
(:mod:`sessionstore.rules`)."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from ..db import Database
from ..keyring import sealed_batch
from ..models import PendingWrite
from ..rules import batch_ordinal, bump_conversation, seq_of
from ..writebehind.items import MESSAGE_FIELDS, SEALED_FIELDS, fresh_rows

__all__ = ["MESSAGE_BATCH", "write_messages"]

# Write-behind: appends to many conversations (named by id or by continuation id) in one
# statement. Ids whose conversation does not exist come back as rejected.
_BATCH_FIELDS = ("id", "conversation_id", "continuation_id", *MESSAGE_FIELDS)
_BATCH_BUMP = bump_conversation("c", messages="p.n", tokens="p.tok", at="p.last_at")
_BATCH_SEQ = seq_of(
    "b.message_count", added="b.n", ordinal=batch_ordinal("f.conversation_id", "f.ord")
)
MESSAGE_BATCH = f"""{fresh_rows((*_BATCH_FIELDS, *SEALED_FIELDS))},
resolved AS (
    SELECT f.id, coalesce(f.conversation_id, c.id) AS conversation_id, f.role, f.content,
           f.metadata, f.tokens, f.enqueued_at, f.content_sealed, f.metadata_sealed, f.ord
    FROM fresh f
    LEFT JOIN conversations c
           ON f.conversation_id IS NULL AND c.continuation_id = f.continuation_id
),
per_conv AS (
    SELECT conversation_id, count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok,
           max(enqueued_at) AS last_at
    FROM resolved WHERE conversation_id IS NOT NULL GROUP BY conversation_id
),
bumped AS (
    UPDATE conversations c SET {_BATCH_BUMP}
    FROM per_conv p
    WHERE c.id = p.conversation_id
    RETURNING c.id, c.message_count, p.n
),
ins AS (
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens, created_at,
                          content_sealed, metadata_sealed)
    SELECT f.id, f.conversation_id, {_BATCH_SEQ}, f.role, f.content,
           coalesce(f.metadata, '{{}}'::jsonb), f.tokens, f.enqueued_at, f.content_sealed,
           f.metadata_sealed
    FROM resolved f JOIN bumped b ON b.id = f.conversation_id
    RETURNING id
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       ARRAY(SELECT f.id FROM resolved f
             WHERE NOT EXISTS (SELECT 1 FROM bumped b WHERE b.id = f.conversation_id)) AS rejected
"""


async def write_messages(db: Database, batch: Sequence[PendingWrite]) -> dict[UUID, str]:
    """Write a write-behind batch of ``messages.enqueue`` messages in one statement;
    return the ids it could not write (their conversation does not exist)."""
    row = await db.fetchrow(MESSAGE_BATCH, *await sealed_batch(db.keys, batch, _BATCH_FIELDS))
    assert row is not None  # the statement always returns one row
    return dict.fromkeys(row["rejected"], "conversation not found")
