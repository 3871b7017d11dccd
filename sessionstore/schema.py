"""The head schema as SQLAlchemy Core tables: the single description Alembic compares
the migrated database against (``tests/integration/schema/test_migrations.py``). Runtime
queries are plain SQL in the repositories and do not go through SQLAlchemy.

Triggers, functions, row-level security and policies are not expressible here; the
migrations own them and the tests check them directly.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Constraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ENUM, JSONB, UUID

__all__ = [
    "adk_app_states",
    "adk_session_states",
    "adk_user_states",
    "conversations",
    "langgraph_blobs",
    "langgraph_checkpoints",
    "langgraph_threads",
    "langgraph_writes",
    "message_role",
    "messages",
    "metadata",
    "sessions",
    "sessionstore_keys",
]

metadata = MetaData()

message_role = ENUM("user", "assistant", "system", name="message_role", create_type=False)


def _tz() -> DateTime:
    return DateTime(timezone=True)


def _uuid_pk() -> Column[object]:
    return Column(
        "id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )


def _now(name: str) -> Column[object]:
    return Column(name, _tz(), nullable=False, server_default=text("now()"))


def _state() -> tuple[Column[object], Column[object]]:
    """A framework state table's state object and the time it last changed."""
    return (
        Column("state", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        _now("updated_at"),
    )


def _counter(name: str, kind: type[Integer] = Integer) -> Column[object]:
    return Column(name, kind, nullable=False, server_default=text("0"))


def _reference(name: str, target: str, ondelete: str, constraint: str) -> Column[object]:
    return Column(name, UUID(as_uuid=True), ForeignKey(target, ondelete=ondelete, name=constraint))


def _listing_index(name: str, table: Table, owner: str) -> Index:
    """What a keyset listing of one owner's rows, newest first, reads."""
    return Index(name, table.c[owner], table.c.created_at.desc(), table.c.id.desc())


def _jsonb_object() -> Column[object]:
    return Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb"))


def _entity(name: str, *columns: Column[object] | Constraint) -> Table:
    """A table of something a user names and changes (sessions, conversations): a uuid
    key, an optional title, a metadata object, creation and update times, then ``columns``.
    """
    return Table(
        name,
        metadata,
        _uuid_pk(),
        Column("title", Text),
        _jsonb_object(),
        _now("created_at"),
        _now("updated_at"),
        *columns,
    )


sessions = _entity(
    "sessions",
    Column("user_id", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'active'::text")),
    Column("expires_at", _tz()),
    _counter("turn_count"),
    _counter("total_tokens", BigInteger),
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
_listing_index("idx_sessions_user_created", sessions, "user_id")

conversations = _entity(
    "conversations",
    Column("continuation_id", Text, nullable=False),
    _reference("session_id", "sessions.id", "SET NULL", "conversations_session_id_fkey"),
    _counter("message_count"),
    Column("last_message_at", _tz()),
    _counter("total_tokens", BigInteger),
    # A fork's source and the seq it was forked at (revision 0009).
    _reference("forked_from", "conversations.id", "SET NULL", "conversations_forked_from_fkey"),
    Column("forked_at_seq", Integer),
    # The live summary's covers_through (revision 0010).
    Column("compacted_through", Integer),
    UniqueConstraint("continuation_id", name="conversations_continuation_id_key"),
    CheckConstraint("forked_at_seq >= 0", name="conversations_forked_at_seq_check"),
    CheckConstraint(
        "forked_from IS NULL OR forked_at_seq IS NOT NULL", name="conversations_fork_check"
    ),
    CheckConstraint("compacted_through >= 1", name="conversations_compacted_through_check"),
)
Index("idx_conversations_continuation_id", conversations.c.continuation_id)
Index("idx_conversations_created_at", conversations.c.created_at.desc())
Index("idx_conversations_session_id", conversations.c.session_id)
_listing_index("idx_conversations_session_created", conversations, "session_id")
Index(
    "idx_conversations_forked_from",
    conversations.c.forked_from,
    postgresql_where=conversations.c.forked_from.isnot(None),
)

messages = Table(
    "messages",
    metadata,
    _uuid_pk(),
    _reference("conversation_id", "conversations.id", "CASCADE", "messages_conversation_id_fkey"),
    Column("role", message_role, nullable=False),
    Column("content", Text, nullable=False),
    _jsonb_object(),
    _now("created_at"),
    Column("seq", Integer, nullable=False),
    Column("tokens", Integer),
    # Set on a summary: the last seq it stands for (revision 0010).
    Column("covers_through", Integer),
    # Encryption at rest: the sealed content and metadata (revision 0012).
    Column("content_sealed", LargeBinary),
    Column("metadata_sealed", LargeBinary),
    CheckConstraint("tokens >= 0", name="messages_tokens_check"),
    CheckConstraint(
        "covers_through >= 1 AND covers_through < seq", name="messages_covers_through_check"
    ),
    UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
)
Index("idx_messages_created_at", messages.c.created_at)
Index(
    "idx_messages_summaries",
    messages.c.conversation_id,
    messages.c.seq,
    postgresql_where=messages.c.covers_through.isnot(None),
)

# Encryption at rest: each user's data key, wrapped by the master key, in a schema the
# API roles cannot use (revision 0012).
sessionstore_keys = Table(
    "keys",
    metadata,
    Column("key_id", UUID(as_uuid=True), primary_key=True),
    Column("user_id", Text),
    Column("wrapped", LargeBinary, nullable=False),
    Column("master_key_id", Text, nullable=False),
    _now("created_at"),
    UniqueConstraint("user_id", name="keys_user_id_key", postgresql_nulls_not_distinct=True),
    schema="sessionstore_private",
)

# Google ADK's state in its three scopes (sessionstore.integrations.adk; revision 0008).
adk_session_states = Table(
    "adk_session_states",
    metadata,
    Column(
        "session_id",
        UUID(as_uuid=True),
        ForeignKey("sessions.id", ondelete="CASCADE", name="adk_session_states_session_id_fkey"),
        primary_key=True,
    ),
    *_state(),
)
adk_app_states = Table(
    "adk_app_states",
    metadata,
    Column("app_name", Text, primary_key=True),
    *_state(),
)
adk_user_states = Table(
    "adk_user_states",
    metadata,
    Column("app_name", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    *_state(),
    PrimaryKeyConstraint("app_name", "user_id", name="adk_user_states_pkey"),
)

# The LangGraph checkpointer's tables (sessionstore.integrations.langgraph; revision 0011).
langgraph_threads = Table(
    "langgraph_threads",
    metadata,
    Column("thread_id", Text, primary_key=True),
    Column(
        "session_id",
        UUID(as_uuid=True),
        ForeignKey("sessions.id", ondelete="CASCADE", name="langgraph_threads_session_id_fkey"),
    ),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)
Index("idx_langgraph_threads_session_id", langgraph_threads.c.session_id)


def _thread(table: str) -> list[Column[str]]:
    return [
        Column(
            "thread_id",
            Text,
            ForeignKey(
                "langgraph_threads.thread_id",
                ondelete="CASCADE",
                name=f"{table}_thread_id_fkey",
            ),
            nullable=False,
        ),
        Column("checkpoint_ns", Text, nullable=False, server_default=text("''")),
    ]


langgraph_checkpoints = Table(
    "langgraph_checkpoints",
    metadata,
    *_thread("langgraph_checkpoints"),
    Column("checkpoint_id", Text, nullable=False),
    Column("parent_checkpoint_id", Text),
    Column("type", Text, nullable=False),
    Column("checkpoint", LargeBinary, nullable=False),
    Column("channel_versions", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("delta", Boolean, nullable=False, server_default=text("false")),
    PrimaryKeyConstraint(
        "thread_id", "checkpoint_ns", "checkpoint_id", name="langgraph_checkpoints_pkey"
    ),
)
Index(
    "idx_langgraph_checkpoints_run_id",
    langgraph_checkpoints.c.metadata["run_id"].astext,
)
langgraph_blobs = Table(
    "langgraph_blobs",
    metadata,
    *_thread("langgraph_blobs"),
    Column("channel", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("blob", LargeBinary),
    PrimaryKeyConstraint(
        "thread_id", "checkpoint_ns", "channel", "version", name="langgraph_blobs_pkey"
    ),
)
langgraph_writes = Table(
    "langgraph_writes",
    metadata,
    *_thread("langgraph_writes"),
    Column("checkpoint_id", Text, nullable=False),
    Column("task_id", Text, nullable=False),
    Column("task_path", Text, nullable=False, server_default=text("''")),
    Column("idx", Integer, nullable=False),
    Column("channel", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("blob", LargeBinary, nullable=False),
    PrimaryKeyConstraint(
        "thread_id",
        "checkpoint_ns",
        "checkpoint_id",
        "task_id",
        "idx",
        name="langgraph_writes_pkey",
    ),
)
