"""encryption: per-user data keys, and sealed message content and metadata

Encryption at rest (``connect(..., encryption_key=...)``) keeps what people wrote out of
the database's clear text:

- ``sessionstore_private.keys``: one data key per user (``user_id`` NULL: the key of what no
  user owns, a conversation bound to no session), wrapped by the application's master
  key (``master_key_id`` names which). Three locks: a schema of its own on which the
  API roles (``anon``, ``authenticated``, ``service_role``, where they exist) have no
  USAGE, no privilege of theirs on the table, and row-level security with no policy:
  only its owner (the role that migrates) reads it. ``purge_user`` deletes the user's
  row first: whatever that key sealed, in this database or a copy of its rows, is
  unreadable (a backup of this table itself aside: see docs/security.md).
- ``messages.content_sealed`` and ``messages.metadata_sealed``: AES-256-GCM of the
  content and of the metadata's JSON, bound to the message's id; ``content`` is then ""
  and ``metadata`` ``{}``. NULL: the message is stored in clear (written before
  encryption was on; ``sessionstore encrypt`` seals such rows in place).

Both are additions: code of earlier revisions keeps working (it reads sealed rows as
empty), and nothing existing is rewritten. Downgrade drops the columns and the table:
every sealed message then reads as empty, for good.

Revision ID: 0012_encryption
Revises: 0011_langgraph
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0012_encryption"
down_revision = "0011_langgraph"
branch_labels = None
depends_on = None

API_ROLES = ("anon", "authenticated", "service_role")


SCHEMA = "sessionstore_private"


def upgrade() -> None:
    # A schema of its own, where no API role has USAGE: a routine grant on the tables of
    # public (which service_role, bypassing row-level security, would read through)
    # does not reach it, nor does PostgREST.
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.execute(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC")
    op.execute(
        f"""
        CREATE TABLE {SCHEMA}.keys (
            key_id uuid PRIMARY KEY,
            user_id text,
            wrapped bytea NOT NULL,
            master_key_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT keys_user_id_key UNIQUE NULLS NOT DISTINCT (user_id)
        )
        """
    )
    op.execute(f"ALTER TABLE {SCHEMA}.keys ENABLE ROW LEVEL SECURITY")
    # Default privileges that are not per schema may still grant the table to the API
    # roles: take them away too (the schema lock alone could be undone by one grant).
    for role in API_ROLES:
        op.execute(
            f"""
            DO $$ BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                    REVOKE ALL ON SCHEMA {SCHEMA} FROM {role};
                    REVOKE ALL ON {SCHEMA}.keys FROM {role};
                END IF;
            END $$
            """
        )
    op.execute("ALTER TABLE messages ADD COLUMN content_sealed bytea")
    op.execute("ALTER TABLE messages ADD COLUMN metadata_sealed bytea")


def downgrade() -> None:
    op.execute("ALTER TABLE messages DROP COLUMN metadata_sealed")
    op.execute("ALTER TABLE messages DROP COLUMN content_sealed")
    op.execute(f"DROP TABLE {SCHEMA}.keys")
    op.execute(f"DROP SCHEMA {SCHEMA}")
