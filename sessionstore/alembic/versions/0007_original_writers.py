"""original writers: messages inserted the original way get their seq

Revision 0003 now installs, in the same transaction that makes ``messages.seq`` NOT
NULL, a trigger that appends a message inserted without ``seq`` (the original server's
``save_message``) the way sessionstore does: conversation counters bumped, ``seq`` the
new count, ``tokens`` from the metadata. Databases that passed 0003 before it did get
the trigger here; on the others this re-creates it unchanged.

Downgrade leaves the trigger in place when 0003 installed it, so it removes nothing:
the trigger acts only on inserts without ``seq`` and 0003's downgrade drops it.

Revision ID: 0007_original_writers
Revises: 0006_private_version_table
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0007_original_writers"
down_revision = "0006_private_version_table"
branch_labels = None
depends_on = None


# A copy of 0003's: revisions are frozen and never import each other.
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


def upgrade() -> None:
    op.execute(ORIGINAL_WRITER_FUNCTION)
    op.execute("DROP TRIGGER IF EXISTS sessionstore_append_original ON messages")
    op.execute(ORIGINAL_WRITER_TRIGGER)


def downgrade() -> None:
    pass
