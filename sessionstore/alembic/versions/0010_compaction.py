"""compaction: a summary message stands for the messages up to a seq

``messages.compact`` appends a summary that stands for every message up to
``through_seq``; reads then show the latest summary followed by the later messages.

- ``messages.covers_through integer NULL``: set on a summary, the last ``seq`` it stands
  for (at least 1, and below the summary's own ``seq``: a summary is appended after what
  it covers; a check constraint). Null on every other message.
- ``conversations.compacted_through integer NULL``: the live summary's
  ``covers_through`` (at least 1), null for a conversation never compacted; the reads
  take their plain path on null, so a conversation never compacted costs what it did.
- ``idx_messages_summaries`` on ``messages (conversation_id, seq)`` where
  ``covers_through`` is set: the live summary is the conversation's latest summary, found
  by one probe of this index (a turn's context takes the latest one before the turn).
  Partial: summaries are few, and the probe's predicate implies the index's.

No pointer from the conversation to its summary message: a foreign key to ``messages``
would run a trigger for each deleted message (pruning, clearing) and lock the summary
row ``FOR KEY SHARE`` whenever it is set, which marks the row as touched for the turns'
snapshot check; and every remover would have to keep the pointer right. The latest
summary by ``seq`` is the live one by construction (compactions are serialised by the
conversation's row lock, append, and never cover less than the previous one).

The policies need no change: they are written over ``session_id`` (and the message's
conversation) and read no other column, and the table-level grants cover new columns.

Downgrade drops the index and both columns: summaries stay as plain messages.

Revision ID: 0010_compaction
Revises: 0009_forks
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0010_compaction"
down_revision = "0009_forks"
branch_labels = None
depends_on = None

UPGRADE = (
    "ALTER TABLE messages ADD COLUMN covers_through integer"
    " CONSTRAINT messages_covers_through_check"
    " CHECK (covers_through >= 1 AND covers_through < seq)",
    "ALTER TABLE conversations ADD COLUMN compacted_through integer"
    " CONSTRAINT conversations_compacted_through_check CHECK (compacted_through >= 1)",
    "CREATE INDEX idx_messages_summaries ON messages (conversation_id, seq)"
    " WHERE covers_through IS NOT NULL",
)
DOWNGRADE = (
    "DROP INDEX idx_messages_summaries",
    "ALTER TABLE conversations DROP COLUMN compacted_through",
    "ALTER TABLE messages DROP COLUMN covers_through",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
