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

On an adopted database the downgrade restores the id defaults and the index definition
that adoption recorded (``sessionstore.adoption.record_original``).

Adoption changes no existing value: the backfills run with the tables' user triggers
disabled (the original ``update_conversations_updated_at`` and
``trigger_sessions_updated_at`` would stamp every backfilled row with a new
``updated_at``), and ``messages.tokens`` is taken from the original metadata where it
holds a count (see ``tokens_from_metadata``), so conversation totals start right.

Expand before contract: in the same transaction that makes ``seq`` NOT NULL, a trigger
gives a message inserted the original way (no ``seq``) its ``seq``, ``tokens`` from its
metadata, and its conversation's counters, so a server still writing the original way
keeps working during and after the upgrade (revision 0007 adds it to databases that
passed this revision before it existed).

Revision ID: 0003_counters_and_order
Revises: 0002_sessions
Create Date: 2026-11-24
"""

from __future__ import annotations

import json
from typing import Any

from alembic import context, op

revision = "0003_counters_and_order"
down_revision = "0002_sessions"
branch_labels = None
depends_on = None


# The original stored token counts in messages.metadata under no fixed key; these are the
# keys it and its clients used. Only a non-negative integer that fits is taken.
def tokens_from_metadata(doc: str) -> str:
    """The token count held in the jsonb ``doc``, or NULL."""
    return f"""
CASE WHEN jsonb_typeof({doc}) = 'object' THEN (
    SELECT (k.v #>> '{{}}')::integer FROM (VALUES
        (1, {doc} -> 'tokens'), (2, {doc} -> 'total_tokens'), (3, {doc} -> 'token_count'),
        (4, {doc} -> 'usage' -> 'total_tokens')
    ) AS k(pos, v)
    WHERE jsonb_typeof(k.v) = 'number' AND (k.v #>> '{{}}') ~ '^[0-9]{{1,9}}$'
    ORDER BY k.pos LIMIT 1
) END
"""


# Appends a message inserted without seq the way sessionstore appends: lock the
# conversation, bump its counters, take the new count as seq.
ORIGINAL_WRITER_FUNCTION = f"""
CREATE OR REPLACE FUNCTION sessionstore_append_original() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.tokens IS NULL THEN
        NEW.tokens := ({tokens_from_metadata("NEW.metadata")});
    END IF;
    UPDATE conversations
    SET message_count = message_count + 1,
        total_tokens = total_tokens + coalesce(NEW.tokens, 0),
        last_message_at = greatest(last_message_at, coalesce(NEW.created_at, now()))
    WHERE id = NEW.conversation_id
    RETURNING message_count INTO NEW.seq;
    RETURN NEW;
END
$$
"""
ORIGINAL_WRITER_TRIGGER = (
    "CREATE TRIGGER sessionstore_append_original BEFORE INSERT ON messages"
    " FOR EACH ROW WHEN (NEW.seq IS NULL) EXECUTE FUNCTION sessionstore_append_original()"
)


def _recorded() -> dict[str, Any] | None:
    """What adoption recorded of the original database (see sessionstore.adoption), or
    None: not adopted, or SQL-only (offline) mode."""
    if context.is_offline_mode():
        return None
    comment = (
        op.get_bind()
        .exec_driver_sql("SELECT obj_description('alembic_version'::regclass, 'pg_class')")
        .scalar()
    )
    if not isinstance(comment, str):
        return None
    try:
        record = json.loads(comment)["sessionstore_adopted"]
    except (TypeError, ValueError, KeyError):
        return None
    return record if isinstance(record, dict) else None


def upgrade() -> None:
    for table in ("sessions", "conversations", "messages"):
        op.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
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
        "UPDATE messages SET tokens = t.tokens FROM (SELECT id, "
        + tokens_from_metadata("metadata")
        + " AS tokens FROM messages) t WHERE messages.id = t.id AND t.tokens IS NOT NULL"
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
        SET message_count = agg.n, last_message_at = agg.last_at, total_tokens = agg.tokens
        FROM (
            SELECT conversation_id, max(seq) AS n, max(created_at) AS last_at,
                   coalesce(sum(tokens), 0) AS tokens
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
    for table in ("sessions", "conversations", "messages"):
        op.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    op.execute(ORIGINAL_WRITER_FUNCTION)
    op.execute(ORIGINAL_WRITER_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS sessionstore_append_original ON messages")
    op.execute("DROP FUNCTION IF EXISTS sessionstore_append_original()")
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
    recorded = _recorded()
    if recorded is None:
        op.execute("CREATE INDEX idx_messages_conversation_id ON messages (conversation_id)")
    else:  # an adopted database: its own definitions, exactly
        index = recorded["indexes"].get("idx_messages_conversation_id")
        if index is not None:
            op.execute(index)
        for table, default in recorded["id_defaults"].items():
            op.execute(f'ALTER TABLE "{table}" ALTER COLUMN id SET DEFAULT {default}')
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
