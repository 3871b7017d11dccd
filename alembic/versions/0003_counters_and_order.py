"""counters and order: message seq and tokens, conversation counters, session version

- ``messages.seq``: a per-conversation position (1, 2, 3, ...) unique with the
  conversation, so history and cursors never depend on timestamps (many messages share
  one ``created_at`` when written in one transaction). Backfilled in ``created_at``
  order (ties by id). The unique index replaces ``idx_messages_conversation_id``,
  which it covers, so appends maintain one index fewer.
- ``messages.tokens`` (nullable, non-negative).
- ``conversations.message_count``, ``last_message_at``, ``total_tokens``: kept in the
  same transaction as each append, so listing and counting never scan messages.
  ``message_count`` is also the allocator of ``seq``. Backfilled from the rows.
- ``sessions.version``: bumped on every change of title, metadata or status, for
  optimistic concurrency. ``total_tokens`` becomes bigint on sessions and conversations.
- ``metadata``, ``created_at``, ``updated_at`` and the session counters become NOT NULL
  (nulls backfilled), and id defaults are aligned on ``gen_random_uuid()``.
- Keyset-pagination indexes for listing a user's sessions and a session's conversations.

Revision ID: 0003_counters_and_order
Revises: 0002_sessions
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0003_counters_and_order"
down_revision = "0002_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("sessions", "conversations", "messages"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT gen_random_uuid()")
        op.execute(f"UPDATE {table} SET metadata = '{{}}'::jsonb WHERE metadata IS NULL")
        op.execute(f"UPDATE {table} SET created_at = now() WHERE created_at IS NULL")
        op.execute(
            f"ALTER TABLE {table} ALTER COLUMN metadata SET NOT NULL,"
            " ALTER COLUMN created_at SET NOT NULL"
        )
    for table in ("sessions", "conversations"):
        op.execute(f"UPDATE {table} SET updated_at = created_at WHERE updated_at IS NULL")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN updated_at SET NOT NULL")

    # messages: seq and tokens
    op.execute("ALTER TABLE messages ADD COLUMN seq integer, ADD COLUMN tokens integer")
    op.execute(
        """
        UPDATE messages m SET seq = ordered.seq
        FROM (
            SELECT id, row_number() OVER (
                PARTITION BY conversation_id ORDER BY created_at, id
            ) AS seq
            FROM messages
        ) ordered
        WHERE m.id = ordered.id
        """
    )
    op.execute(
        "ALTER TABLE messages ALTER COLUMN seq SET NOT NULL,"
        " ADD CONSTRAINT messages_tokens_check CHECK (tokens >= 0),"
        " ADD CONSTRAINT uq_messages_conversation_seq UNIQUE (conversation_id, seq)"
    )
    op.execute("DROP INDEX idx_messages_conversation_id")

    # conversations: counters
    op.execute(
        "ALTER TABLE conversations"
        " ADD COLUMN message_count integer NOT NULL DEFAULT 0,"
        " ADD COLUMN last_message_at timestamptz,"
        " ADD COLUMN total_tokens bigint NOT NULL DEFAULT 0"
    )
    op.execute(
        """
        UPDATE conversations c
        SET message_count = agg.n, last_message_at = agg.last_at
        FROM (
            SELECT conversation_id, max(seq) AS n, max(created_at) AS last_at
            FROM messages WHERE conversation_id IS NOT NULL
            GROUP BY conversation_id
        ) agg
        WHERE c.id = agg.conversation_id
        """
    )
    op.execute(
        "CREATE INDEX idx_conversations_session_created"
        " ON conversations (session_id, created_at DESC, id DESC)"
    )

    # sessions: version, counters
    op.execute("UPDATE sessions SET turn_count = 0 WHERE turn_count IS NULL")
    op.execute("UPDATE sessions SET total_tokens = 0 WHERE total_tokens IS NULL")
    op.execute(
        "ALTER TABLE sessions"
        " ALTER COLUMN turn_count SET NOT NULL,"
        " ALTER COLUMN total_tokens TYPE bigint,"
        " ALTER COLUMN total_tokens SET NOT NULL,"
        " ADD COLUMN version integer NOT NULL DEFAULT 1"
    )
    op.execute(
        "CREATE INDEX idx_sessions_user_created ON sessions (user_id, created_at DESC, id DESC)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX idx_sessions_user_created")
    op.execute(
        "ALTER TABLE sessions"
        " DROP COLUMN version,"
        " ALTER COLUMN total_tokens DROP NOT NULL,"
        " ALTER COLUMN total_tokens TYPE integer,"
        " ALTER COLUMN turn_count DROP NOT NULL"
    )
    op.execute("DROP INDEX idx_conversations_session_created")
    op.execute(
        "ALTER TABLE conversations"
        " DROP COLUMN total_tokens, DROP COLUMN last_message_at, DROP COLUMN message_count"
    )
    op.execute("CREATE INDEX idx_messages_conversation_id ON messages (conversation_id)")
    op.execute(
        "ALTER TABLE messages"
        " DROP CONSTRAINT uq_messages_conversation_seq,"
        " DROP CONSTRAINT messages_tokens_check,"
        " DROP COLUMN tokens, DROP COLUMN seq"
    )
    for table in ("sessions", "conversations"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN updated_at DROP NOT NULL")
    for table in ("sessions", "conversations", "messages"):
        op.execute(
            f"ALTER TABLE {table} ALTER COLUMN metadata DROP NOT NULL,"
            " ALTER COLUMN created_at DROP NOT NULL"
        )
