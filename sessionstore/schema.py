"""The head schema as SQLAlchemy Core tables: the single description Alembic compares
the migrated database against (``tests/test_migrations.py``). Runtime queries are plain
SQL in the repositories and do not go through SQLAlchemy.

Triggers, functions, row-level security and policies are not expressible here; the
migrations own them and the tests check them directly.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ENUM, JSONB, UUID

__all__ = ["conversations", "message_role", "messages", "metadata", "sessions"]

metadata = MetaData()

message_role = ENUM("user", "assistant", "system", name="message_role", create_type=False)


def _tz() -> DateTime:
    return DateTime(timezone=True)


def _uuid_pk() -> Column[object]:
    return Column(
        "id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )


def _jsonb_object() -> Column[object]:
    return Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb"))


sessions = Table(
    "sessions",
    metadata,
    _uuid_pk(),
    Column("user_id", Text, nullable=False),
    Column("title", Text),
    Column("status", Text, nullable=False, server_default=text("'active'::text")),
    Column("created_at", _tz(), nullable=False, server_default=text("now()")),
    Column("updated_at", _tz(), nullable=False, server_default=text("now()")),
    Column("expires_at", _tz()),
    Column("turn_count", Integer, nullable=False, server_default=text("0")),
    Column("total_tokens", BigInteger, nullable=False, server_default=text("0")),
    _jsonb_object(),
    Column("version", Integer, nullable=False, server_default=text("1")),
    CheckConstraint(
        "status = ANY (ARRAY['active'::text, 'paused'::text, 'completed'::text, 'expired'::text])",
        name="sessions_status_check",
    ),
)
Index("idx_sessions_user_id", sessions.c.user_id)
Index("idx_sessions_status", sessions.c.status)
Index("idx_sessions_created_at", sessions.c.created_at.desc())
Index(
    "idx_sessions_expires_at",
    sessions.c.expires_at,
    postgresql_where=sessions.c.expires_at.isnot(None),
)
Index("idx_sessions_user_status", sessions.c.user_id, sessions.c.status)
Index(
    "idx_sessions_user_created",
    sessions.c.user_id,
    sessions.c.created_at.desc(),
    sessions.c.id.desc(),
)

conversations = Table(
    "conversations",
    metadata,
    _uuid_pk(),
    Column("continuation_id", Text, nullable=False),
    Column("title", Text),
    _jsonb_object(),
    Column("created_at", _tz(), nullable=False, server_default=text("now()")),
    Column("updated_at", _tz(), nullable=False, server_default=text("now()")),
    Column(
        "session_id",
        UUID(as_uuid=True),
        ForeignKey("sessions.id", ondelete="SET NULL", name="conversations_session_id_fkey"),
    ),
    Column("message_count", Integer, nullable=False, server_default=text("0")),
    Column("last_message_at", _tz()),
    Column("total_tokens", BigInteger, nullable=False, server_default=text("0")),
    UniqueConstraint("continuation_id", name="conversations_continuation_id_key"),
)
Index("idx_conversations_continuation_id", conversations.c.continuation_id)
Index("idx_conversations_created_at", conversations.c.created_at.desc())
Index("idx_conversations_session_id", conversations.c.session_id)
Index(
    "idx_conversations_session_created",
    conversations.c.session_id,
    conversations.c.created_at.desc(),
    conversations.c.id.desc(),
)

messages = Table(
    "messages",
    metadata,
    _uuid_pk(),
    Column(
        "conversation_id",
        UUID(as_uuid=True),
        ForeignKey("conversations.id", ondelete="CASCADE", name="messages_conversation_id_fkey"),
    ),
    Column("role", message_role, nullable=False),
    Column("content", Text, nullable=False),
    _jsonb_object(),
    Column("created_at", _tz(), nullable=False, server_default=text("now()")),
    Column("seq", Integer, nullable=False),
    Column("tokens", Integer),
    CheckConstraint("tokens >= 0", name="messages_tokens_check"),
    UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
)
Index("idx_messages_created_at", messages.c.created_at)
