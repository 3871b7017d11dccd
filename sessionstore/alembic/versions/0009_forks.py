"""forks: a conversation records the conversation and the message it was forked at

``conversations.fork`` copies a prefix of a conversation into a new one. The new one
records where it came from:

- ``conversations.forked_from uuid NULL``: the source conversation, referencing
  ``conversations (id) ON DELETE SET NULL``. A fork is a conversation of its own: deleting
  or purging its source (``conversations.delete``, ``sessions.delete``, ``purge_user``,
  ``cleanup_expired``) must neither be blocked by it nor take it along, so the reference
  is cleared instead. The referential action runs as the table's owner, outside
  row-level security, so it is never refused whoever deletes the source (and forks stay
  within one owner: under RLS a user forks only conversations they can see, into their
  own sessions). ``forked_from`` null with ``forked_at_seq`` set reads "forked from a
  conversation since deleted".
- ``conversations.forked_at_seq integer NULL``: the ``seq`` of the last message copied
  (0 for a fork of an empty prefix), so the fork's next message takes
  ``forked_at_seq + 1``. Non-negative, and set whenever ``forked_from`` is (a check
  constraint each; it outlives ``forked_from`` when the source is deleted).
- ``idx_conversations_forked_from`` on ``forked_from`` where it is set: every delete of
  a conversation looks up its forks to clear their reference, which without an index is
  a scan of every conversation per deleted row (a purge of a long history would be
  quadratic). Partial: most conversations are no fork, and the lookup's ``=`` implies
  the predicate.

The policies need no change: they are written over ``session_id`` and read no other
column, and the table-level grants cover new columns.

Downgrade drops the index, the constraints and both columns (what the forks record of
their source is lost; the forks themselves stay as plain conversations).

Revision ID: 0009_forks
Revises: 0008_adk_state
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0009_forks"
down_revision = "0008_adk_state"
branch_labels = None
depends_on = None

UPGRADE = (
    "ALTER TABLE conversations"
    " ADD COLUMN forked_from uuid"
    " CONSTRAINT conversations_forked_from_fkey REFERENCES conversations (id) ON DELETE SET NULL,"
    " ADD COLUMN forked_at_seq integer"
    " CONSTRAINT conversations_forked_at_seq_check CHECK (forked_at_seq >= 0),"
    # A fork whose source is deleted keeps its forked_at_seq; a plain conversation has none.
    " ADD CONSTRAINT conversations_fork_check"
    " CHECK (forked_from IS NULL OR forked_at_seq IS NOT NULL)",
    "CREATE INDEX idx_conversations_forked_from ON conversations (forked_from)"
    " WHERE forked_from IS NOT NULL",
)
DOWNGRADE = (
    "DROP INDEX idx_conversations_forked_from",
    "ALTER TABLE conversations DROP COLUMN forked_at_seq, DROP COLUMN forked_from",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
