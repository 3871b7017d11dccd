"""rls by owner: conversations and messages follow their session's user

- Row-level security on ``conversations`` and ``messages``. A user sees and writes a
  conversation only through a session whose ``user_id`` is the caller's JWT subject,
  and a message only through such a conversation. Conversations without a session are
  visible to the service path only (service_role, or a role that bypasses RLS such as
  the table owner). Each table also gets a ``*_service_role_all`` policy.
- Rows belong to the ``sub`` of a JWT whose ``role`` is ``authenticated``; a token
  with role ``anon`` owns nothing even if it carries a subject.
- Every policy reads the claims inside ``(SELECT ...)``: PostgreSQL then evaluates the
  lookup once per statement (an InitPlan) instead of once per row. The session
  policies from 0002 are recreated in that form.

Like 0002, the policies read ``request.jwt.claims`` directly (what Supabase's
``auth.uid()`` and ``auth.role()`` read), so they apply on vanilla PostgreSQL. No
``TO authenticated`` clause either, for the same reason: that role exists only on
Supabase; without claims the expressions are NULL and match nothing.

On an adopted database the downgrade restores the session policies exactly as adoption
recorded them (``sessionstore.adoption.record_original``), the original ``auth.uid()``
text included.

Revision ID: 0004_rls_by_owner
Revises: 0003_counters_and_order
Create Date: 2026-11-24
"""

from __future__ import annotations

import json
from typing import Any

from alembic import context, op

revision = "0004_rls_by_owner"
down_revision = "0003_counters_and_order"
branch_labels = None
depends_on = None

_CLAIMS = "nullif(current_setting('request.jwt.claims', true), '')::jsonb"
# The owner is the subject of an *authenticated* JWT: a token with role anon never owns
# rows, even if it carries a subject.
SUB = (
    f"(SELECT j.c ->> 'sub' FROM (SELECT {_CLAIMS} AS c) j WHERE j.c ->> 'role' = 'authenticated')"
)
IS_SERVICE = f"((SELECT {_CLAIMS} ->> 'role') = 'service_role')"

OWN_SESSION = f"user_id = {SUB}"
OWN_CONVERSATION = f"session_id IN (SELECT id FROM sessions WHERE user_id = {SUB})"
OWN_MESSAGE = (
    "conversation_id IN (SELECT c.id FROM conversations c"
    f" JOIN sessions s ON s.id = c.session_id WHERE s.user_id = {SUB})"
)

SESSION_POLICIES = (
    f"CREATE POLICY sessions_select_own ON sessions FOR SELECT USING ({OWN_SESSION})",
    f"CREATE POLICY sessions_insert_own ON sessions FOR INSERT WITH CHECK ({OWN_SESSION})",
    f"CREATE POLICY sessions_update_own ON sessions FOR UPDATE"
    f" USING ({OWN_SESSION}) WITH CHECK ({OWN_SESSION})",
    f"CREATE POLICY sessions_delete_own ON sessions FOR DELETE USING ({OWN_SESSION})",
    f"CREATE POLICY sessions_service_role_all ON sessions FOR ALL"
    f" USING {IS_SERVICE} WITH CHECK {IS_SERVICE}",
)
NEW_POLICIES = (
    (
        "conversations_own",
        "conversations",
        f"FOR ALL USING ({OWN_CONVERSATION}) WITH CHECK ({OWN_CONVERSATION})",
    ),
    (
        "conversations_service_role_all",
        "conversations",
        f"FOR ALL USING {IS_SERVICE} WITH CHECK {IS_SERVICE}",
    ),
    ("messages_own", "messages", f"FOR ALL USING ({OWN_MESSAGE}) WITH CHECK ({OWN_MESSAGE})"),
    (
        "messages_service_role_all",
        "messages",
        f"FOR ALL USING {IS_SERVICE} WITH CHECK {IS_SERVICE}",
    ),
)
SESSION_POLICY_NAMES = (
    "sessions_select_own",
    "sessions_insert_own",
    "sessions_update_own",
    "sessions_delete_own",
    "sessions_service_role_all",
)

# 0002's per-row form, restored on downgrade (revisions never import each other).
_ROW_SUB = f"({_CLAIMS} ->> 'sub')"
_ROW_ROLE = f"({_CLAIMS} ->> 'role')"
PER_ROW_SESSION_POLICIES = (
    f"CREATE POLICY sessions_select_own ON sessions FOR SELECT USING (user_id = {_ROW_SUB})",
    f"CREATE POLICY sessions_insert_own ON sessions FOR INSERT WITH CHECK (user_id = {_ROW_SUB})",
    f"CREATE POLICY sessions_update_own ON sessions FOR UPDATE"
    f" USING (user_id = {_ROW_SUB}) WITH CHECK (user_id = {_ROW_SUB})",
    f"CREATE POLICY sessions_delete_own ON sessions FOR DELETE USING (user_id = {_ROW_SUB})",
    f"CREATE POLICY sessions_service_role_all ON sessions FOR ALL"
    f" USING ({_ROW_ROLE} = 'service_role') WITH CHECK ({_ROW_ROLE} = 'service_role')",
)


def _drop_session_policies() -> None:
    for name in SESSION_POLICY_NAMES:
        # IF EXISTS: adopted databases may carry the original (auth.uid()) versions or fewer.
        op.execute(f"DROP POLICY IF EXISTS {name} ON sessions")


def _recorded() -> dict[str, Any] | None:
    """What adoption recorded of the original database (see sessionstore.adoption), or
    None: not adopted, or SQL-only (offline) mode."""
    if context.is_offline_mode():
        return None
    comment = (
        op.get_bind()
        .exec_driver_sql("SELECT obj_description('alembic_version'::regclass, 'pg_class')")
        .scalar()
    )
    if not isinstance(comment, str):
        return None
    try:
        record = json.loads(comment)["sessionstore_adopted"]
    except (TypeError, ValueError, KeyError):
        return None
    return record if isinstance(record, dict) else None


def _quoted(name: str) -> str:
    return "PUBLIC" if name == "public" else '"' + name.replace('"', '""') + '"'


def _policy(p: dict[str, Any]) -> str:
    """CREATE POLICY for a policy as pg_policies described it."""
    roles = ", ".join(_quoted(r) for r in p["roles"])
    sql = (
        f"CREATE POLICY {_quoted(p['name'])} ON {_quoted(p['table'])}"
        f" AS {p['permissive']} FOR {p['cmd']} TO {roles}"
    )
    if p["qual"] is not None:
        sql += f" USING ({p['qual']})"
    if p["with_check"] is not None:
        sql += f" WITH CHECK ({p['with_check']})"
    return sql


def upgrade() -> None:
    _drop_session_policies()
    for policy in SESSION_POLICIES:
        op.execute(policy)
    for table in ("conversations", "messages"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    for name, table, body in NEW_POLICIES:
        op.execute(f"CREATE POLICY {name} ON {table} {body}")


def downgrade() -> None:
    for name, table, _ in NEW_POLICIES:
        op.execute(f"DROP POLICY {name} ON {table}")
    for table in ("conversations", "messages"):
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    _drop_session_policies()
    recorded = _recorded()
    if recorded is None:
        for policy in PER_ROW_SESSION_POLICIES:
            op.execute(policy)
        return
    for p in recorded["policies"]:  # an adopted database: its own policies, exactly
        if p["table"] == "sessions" and p["name"] in SESSION_POLICY_NAMES:
            op.execute(_policy(p))
