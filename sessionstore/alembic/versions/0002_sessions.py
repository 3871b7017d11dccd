"""sessions: the original sessions migration, ported

Table, its five indexes, ``conversations.session_id`` (FK, ON DELETE SET NULL) with its
index, the ``updated_at`` trigger, row-level security with the five policies, and
``cleanup_expired_sessions()``.

Policies. The original compares ``user_id`` with Supabase's ``auth.uid()::text`` and the
service policy checks ``auth.role() = 'service_role'``. Those functions exist only on
Supabase, so a migration that calls them fails on vanilla PostgreSQL. Both functions
just read the request's JWT claims from the ``request.jwt.claims`` setting (``sub`` and
``role``); the policies below read the same setting directly, so they mean the same on
Supabase and apply anywhere. ``nullif(..., '')`` covers a setting that was set and then
reset, which reads back as an empty string rather than NULL.

Revision ID: 0002_sessions
Revises: 0001_baseline
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0002_sessions"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

JWT_SUB = "(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')"
JWT_ROLE = "(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')"

POLICIES = (
    f"CREATE POLICY sessions_select_own ON sessions FOR SELECT USING (user_id = {JWT_SUB})",
    f"CREATE POLICY sessions_insert_own ON sessions FOR INSERT WITH CHECK (user_id = {JWT_SUB})",
    f"CREATE POLICY sessions_update_own ON sessions FOR UPDATE"
    f" USING (user_id = {JWT_SUB}) WITH CHECK (user_id = {JWT_SUB})",
    f"CREATE POLICY sessions_delete_own ON sessions FOR DELETE USING (user_id = {JWT_SUB})",
    f"CREATE POLICY sessions_service_role_all ON sessions FOR ALL"
    f" USING ({JWT_ROLE} = 'service_role') WITH CHECK ({JWT_ROLE} = 'service_role')",
)
POLICY_NAMES = (
    "sessions_select_own",
    "sessions_insert_own",
    "sessions_update_own",
    "sessions_delete_own",
    "sessions_service_role_all",
)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE sessions (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            user_id text NOT NULL,
            title text,
            status text NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'paused', 'completed', 'expired')),
            created_at timestamptz DEFAULT now(),
            updated_at timestamptz DEFAULT now(),
            expires_at timestamptz,
            turn_count integer DEFAULT 0,
            total_tokens integer DEFAULT 0,
            metadata jsonb DEFAULT '{}'::jsonb
        )
        """
    )
    op.execute("CREATE INDEX idx_sessions_user_id ON sessions (user_id)")
    op.execute("CREATE INDEX idx_sessions_status ON sessions (status)")
    op.execute("CREATE INDEX idx_sessions_created_at ON sessions (created_at DESC)")
    op.execute(
        "CREATE INDEX idx_sessions_expires_at ON sessions (expires_at) WHERE expires_at IS NOT NULL"
    )
    op.execute("CREATE INDEX idx_sessions_user_status ON sessions (user_id, status)")
    op.execute(
        "ALTER TABLE conversations"
        " ADD COLUMN session_id uuid REFERENCES sessions(id) ON DELETE SET NULL"
    )
    op.execute("CREATE INDEX idx_conversations_session_id ON conversations (session_id)")
    op.execute(
        """
        CREATE FUNCTION update_sessions_updated_at() RETURNS trigger
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
        CREATE TRIGGER trigger_sessions_updated_at
        BEFORE UPDATE ON sessions
        FOR EACH ROW EXECUTE FUNCTION update_sessions_updated_at()
        """
    )
    op.execute("ALTER TABLE sessions ENABLE ROW LEVEL SECURITY")
    for policy in POLICIES:
        op.execute(policy)
    op.execute(
        """
        CREATE FUNCTION cleanup_expired_sessions() RETURNS integer
        LANGUAGE plpgsql AS $$
        DECLARE
            deleted integer;
        BEGIN
            DELETE FROM sessions
            WHERE expires_at IS NOT NULL AND expires_at < now() AND status <> 'completed';
            GET DIAGNOSTICS deleted = ROW_COUNT;
            RETURN deleted;
        END;
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION cleanup_expired_sessions()")
    for name in POLICY_NAMES:
        op.execute(f"DROP POLICY {name} ON sessions")
    op.execute("DROP INDEX idx_conversations_session_id")
    op.execute("ALTER TABLE conversations DROP COLUMN session_id")
    op.execute("DROP TABLE sessions")
    op.execute("DROP FUNCTION update_sessions_updated_at()")
