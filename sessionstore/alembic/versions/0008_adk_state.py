"""adk state: the state of Google ADK sessions, in its three scopes

Google ADK (``sessionstore.integrations.adk``) keeps state in three scopes: the
session's own, ``app:`` keys shared by every session of an app, and ``user:`` keys
shared by every session of one user in one app. Each gets a table:

- ``adk_session_states``: one row per sessionstore session that has ADK state,
  deleted with its session (``ON DELETE CASCADE``: ``sessions.delete``,
  ``cleanup_expired`` and ``purge_user`` take it along);
- ``adk_app_states``: one row per ``app_name``;
- ``adk_user_states``: one row per ``(app_name, user_id)``.

(Session state is not kept in ``sessions.metadata``: reads of a session go through the
session cache, which another process's write invalidates only after a moment, and ADK
reads state right after another worker may have written it. These rows are read
uncached, in the same statement as the other two scopes.)

Row-level security as on the other tables (revision 0004's rules): the owner is the
subject of an *authenticated* JWT, read inside ``(SELECT ...)`` so it is evaluated once
per statement; a token with role ``anon`` owns nothing; each table has a
``*_service_role_all`` policy. A user reaches the session state of their own sessions
only (as for conversations) and their own user-state rows. App state is shared by all
users of an app, so under row-level security any authenticated user may read it but
only the service path (the table owner, or a ``service_role`` JWT) may change it: one
user must not rewrite what every other user's agent reads. The policies read
``request.jwt.claims`` directly, so they apply on vanilla PostgreSQL too (no ``TO
authenticated`` clause, a role only Supabase has).

Downgrade drops the three tables (their policies go with them).

Revision ID: 0008_adk_state
Revises: 0007_original_writers
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0008_adk_state"
down_revision = "0007_original_writers"
branch_labels = None
depends_on = None

# A copy of 0004's: revisions are frozen and never import each other.
_CLAIMS = "nullif(current_setting('request.jwt.claims', true), '')::jsonb"
SUB = (
    f"(SELECT j.c ->> 'sub' FROM (SELECT {_CLAIMS} AS c) j WHERE j.c ->> 'role' = 'authenticated')"
)
IS_SERVICE = f"((SELECT {_CLAIMS} ->> 'role') = 'service_role')"

TABLES = (
    """
    CREATE TABLE adk_session_states (
        session_id uuid PRIMARY KEY
            CONSTRAINT adk_session_states_session_id_fkey
            REFERENCES sessions (id) ON DELETE CASCADE,
        state jsonb NOT NULL DEFAULT '{}'::jsonb,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE adk_app_states (
        app_name text PRIMARY KEY,
        state jsonb NOT NULL DEFAULT '{}'::jsonb,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE adk_user_states (
        app_name text NOT NULL,
        user_id text NOT NULL,
        state jsonb NOT NULL DEFAULT '{}'::jsonb,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (app_name, user_id)
    )
    """,
)
STATE_TABLES = ("adk_session_states", "adk_app_states", "adk_user_states")
OWN_USER_STATE = f"user_id = {SUB}"
OWN_SESSION_STATE = f"session_id IN (SELECT id FROM sessions WHERE user_id = {SUB})"
POLICIES = (
    (
        "adk_session_states_own",
        "adk_session_states",
        f"FOR ALL USING ({OWN_SESSION_STATE}) WITH CHECK ({OWN_SESSION_STATE})",
    ),
    (
        "adk_session_states_service_role_all",
        "adk_session_states",
        f"FOR ALL USING {IS_SERVICE} WITH CHECK {IS_SERVICE}",
    ),
    ("adk_app_states_read", "adk_app_states", f"FOR SELECT USING ({SUB} IS NOT NULL)"),
    (
        "adk_app_states_service_role_all",
        "adk_app_states",
        f"FOR ALL USING {IS_SERVICE} WITH CHECK {IS_SERVICE}",
    ),
    (
        "adk_user_states_own",
        "adk_user_states",
        f"FOR ALL USING ({OWN_USER_STATE}) WITH CHECK ({OWN_USER_STATE})",
    ),
    (
        "adk_user_states_service_role_all",
        "adk_user_states",
        f"FOR ALL USING {IS_SERVICE} WITH CHECK {IS_SERVICE}",
    ),
)


def upgrade() -> None:
    for table in TABLES:
        op.execute(table)
    for table in STATE_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    for name, table, body in POLICIES:
        op.execute(f"CREATE POLICY {name} ON {table} {body}")


def downgrade() -> None:
    for table in reversed(STATE_TABLES):
        op.execute(f"DROP TABLE {table}")
