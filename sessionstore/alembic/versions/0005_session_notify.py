"""session notify: tell other processes' caches when a session changes

An AFTER UPDATE OR DELETE trigger sends the session id on channel
``sessionstore_sessions``. Updates notify only when a field other than the counters
changes (status, expiry, title, metadata, version): NOTIFY takes a cluster-wide lock at
commit, and the per-turn counter updates are the hot path. Cached counters in *other*
processes may therefore lag by up to the cache TTL; everything else is invalidated at
once. Notifications reach listeners on direct or session-mode connections only.

Revision ID: 0005_session_notify
Revises: 0004_rls_by_owner
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0005_session_notify"
down_revision = "0004_rls_by_owner"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION sessionstore_notify_session() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('sessionstore_sessions', OLD.id::text);
            RETURN NULL;
        END;
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER sessions_notify_update
        AFTER UPDATE ON sessions
        FOR EACH ROW
        WHEN (OLD.status IS DISTINCT FROM NEW.status
              OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
              OR OLD.title IS DISTINCT FROM NEW.title
              OR OLD.metadata IS DISTINCT FROM NEW.metadata
              OR OLD.version IS DISTINCT FROM NEW.version)
        EXECUTE FUNCTION sessionstore_notify_session()
        """
    )
    op.execute(
        """
        CREATE TRIGGER sessions_notify_delete
        AFTER DELETE ON sessions
        FOR EACH ROW EXECUTE FUNCTION sessionstore_notify_session()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER sessions_notify_delete ON sessions")
    op.execute("DROP TRIGGER sessions_notify_update ON sessions")
    op.execute("DROP FUNCTION sessionstore_notify_session()")
