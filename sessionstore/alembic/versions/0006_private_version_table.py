"""private version table: the API roles cannot reach ``alembic_version``

On Supabase, ``ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon,
authenticated, service_role`` applies to every table created in ``public``, the version
table included, and it has no row-level security: with the public anon key anyone could
read, rewrite or delete it (a rewritten version makes the next migration fail; a deleted
one makes it try to adopt the schema again).

Both locks, because either alone can be undone by a routine grant: the API roles'
privileges on it are revoked, and row-level security is enabled with no policy, so
even after a later ``GRANT ALL ON ALL TABLES IN SCHEMA public TO anon`` those roles see
no row and change none. The table stays where Alembic and existing deployments expect
it; its owner (who runs migrations) bypasses row-level security as owners do.

Downgrade disables row-level security but does not grant anything back: handing the
version table to the API again is never wanted.

Revision ID: 0006_private_version_table
Revises: 0005_session_notify
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0006_private_version_table"
down_revision = "0005_session_notify"
branch_labels = None
depends_on = None

API_ROLES = ("anon", "authenticated", "service_role")


def upgrade() -> None:
    op.execute("ALTER TABLE alembic_version ENABLE ROW LEVEL SECURITY")
    op.execute("REVOKE ALL ON alembic_version FROM PUBLIC")
    roles = ", ".join(f"'{role}'" for role in API_ROLES)
    op.execute(
        f"""
        DO $$
        DECLARE api_role text;
        BEGIN
            FOR api_role IN SELECT rolname FROM pg_roles WHERE rolname IN ({roles}) LOOP
                EXECUTE format('REVOKE ALL ON alembic_version FROM %I', api_role);
            END LOOP;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE alembic_version DISABLE ROW LEVEL SECURITY")
