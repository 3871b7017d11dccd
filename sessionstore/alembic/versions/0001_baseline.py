"""baseline: the original conversations, messages and message_role enum

This is the schema existing deployments created with the original Supabase SQL.

One deliberate difference: the original defaults ids to ``uuid_generate_v4()`` from the
``uuid-ossp`` extension. We use ``gen_random_uuid()``, built into PostgreSQL 13+, which
yields the same random (version 4) UUIDs without needing an extension that some servers
(embedded builds, restricted hosts) do not ship. Adopted databases keep their default
until revision 0003 aligns it.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TYPE message_role AS ENUM ('user', 'assistant', 'system')")
    op.execute(
        """
        CREATE TABLE conversations (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            continuation_id text UNIQUE NOT NULL,
            title text,
            metadata jsonb DEFAULT '{}'::jsonb,
            created_at timestamptz DEFAULT now(),
            updated_at timestamptz DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE messages (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            conversation_id uuid REFERENCES conversations(id) ON DELETE CASCADE,
            role message_role NOT NULL,
            content text NOT NULL,
            metadata jsonb DEFAULT '{}'::jsonb,
            created_at timestamptz DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX idx_conversations_continuation_id ON conversations (continuation_id)")
    op.execute("CREATE INDEX idx_conversations_created_at ON conversations (created_at DESC)")
    op.execute("CREATE INDEX idx_messages_conversation_id ON messages (conversation_id)")
    op.execute("CREATE INDEX idx_messages_created_at ON messages (created_at)")
    op.execute(
        """
        CREATE FUNCTION update_updated_at_column() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at = now();
            RETURN NEW;
        END;
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER update_conversations_updated_at
        BEFORE UPDATE ON conversations
        FOR EACH ROW EXECUTE FUNCTION update_updated_at_column()
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE messages")
    op.execute("DROP TABLE conversations")
    op.execute("DROP FUNCTION update_updated_at_column()")
    op.execute("DROP TYPE message_role")
