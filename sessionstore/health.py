"""Health of a sessionstore database, for ``sessionstore status``: what is there, what is
missing, and whether anything needs attention."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import StoreConfig
from .db import connect_direct
from .distribution import KEYED_LAYOUT
from .errors import translate_errors
from .migrations import head_revision, pending_revisions

__all__ = ["API_ROLES", "EXPECTED_POLICIES", "TABLES", "Status", "check"]

#: Every table sessionstore creates, Alembic's version table included.
TABLES = (
    "sessions",
    "conversations",
    "messages",
    "adk_session_states",
    "adk_app_states",
    "adk_user_states",
    "langgraph_threads",
    "langgraph_checkpoints",
    "langgraph_blobs",
    "langgraph_writes",
    "alembic_version",
)
#: The roles Supabase's API switches to for the anon and user keys.
API_ROLES = ("anon", "authenticated")
#: The roles that must never reach the data keys (service_role bypasses row-level security).
KEY_ROLES = ["anon", "authenticated", "service_role"]
EXPECTED_POLICIES = {
    "sessions": {
        "sessions_select_own",
        "sessions_insert_own",
        "sessions_update_own",
        "sessions_delete_own",
        "sessions_service_role_all",
    },
    "conversations": {"conversations_own", "conversations_service_role_all"},
    "messages": {"messages_own", "messages_service_role_all"},
    "adk_session_states": {"adk_session_states_own", "adk_session_states_service_role_all"},
    "adk_app_states": {"adk_app_states_read", "adk_app_states_service_role_all"},
    "adk_user_states": {"adk_user_states_own", "adk_user_states_service_role_all"},
    "langgraph_threads": {"langgraph_threads_own", "langgraph_threads_service_role_all"},
    "langgraph_checkpoints": {
        "langgraph_checkpoints_own",
        "langgraph_checkpoints_service_role_all",
    },
    "langgraph_blobs": {"langgraph_blobs_own", "langgraph_blobs_service_role_all"},
    "langgraph_writes": {"langgraph_writes_own", "langgraph_writes_service_role_all"},
    "alembic_version": set(),  # row-level security with no policy: no API role sees a row
}

# The data keys (encryption at rest): which API roles could reach them, by a grant on
# their schema or on the table (revision 0012 leaves none).
KEYS_REACHED_BY = """
SELECT r.rolname FROM pg_roles r
WHERE r.rolname = ANY($1::text[]) AND to_regclass('sessionstore_private.keys') IS NOT NULL
  AND (has_schema_privilege(r.oid, 'sessionstore_private', 'USAGE')
       OR has_table_privilege(r.oid, 'sessionstore_private.keys',
                              'SELECT,INSERT,UPDATE,DELETE,TRUNCATE'))
ORDER BY 1
"""
SERVER_VERSION = "SHOW server_version"
HAS_VERSIONS = "SELECT to_regclass('alembic_version') IS NOT NULL"
VERSION_NUM = "SELECT version_num FROM alembic_version"
TABLE_STATE = """
SELECT c.relname, c.relrowsecurity,
       coalesce(array_agg(p.policyname) FILTER (WHERE p.policyname IS NOT NULL), '{}') AS policies,
       ARRAY(SELECT r.rolname FROM pg_roles r
             WHERE r.rolname = ANY($2::text[])
               AND has_table_privilege(r.oid, c.oid, 'SELECT,INSERT,UPDATE,DELETE')
             ORDER BY r.rolname) AS api_roles
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
LEFT JOIN pg_policies p ON p.tablename = c.relname AND p.schemaname = n.nspname
WHERE c.relname = ANY($1::text[]) AND c.relkind = 'r'
GROUP BY c.relname, c.relrowsecurity, c.oid
"""


@dataclass
class Status:
    """What ``check`` found. ``problems`` lists what needs attention, one sentence each."""

    server_version: str
    pooler: str
    current_revision: str | None
    head_revision: str
    pending: list[str]
    rls: dict[str, bool]
    missing_policies: dict[str, list[str]]
    exposed: list[str]
    pool: str
    problems: list[str] = field(default_factory=list)
    #: Whether the database has the distributed (Citus) layout: no policies there, by
    #: design (``as_user`` is refused on it).
    distributed: bool = False


async def check(config: StoreConfig) -> Status:
    """Inspect the database ``config`` points at (one direct connection, read-only)."""
    conn = await connect_direct(config, application_name="sessionstore-status")
    with translate_errors():
        try:
            version = str(await conn.fetchval(SERVER_VERSION))
            has_versions = await conn.fetchval(HAS_VERSIONS)
            current = await conn.fetchval(VERSION_NUM) if has_versions else None
            rows = await conn.fetch(TABLE_STATE, list(TABLES), list(API_ROLES))
            keys_reached = [r["rolname"] for r in await conn.fetch(KEYS_REACHED_BY, KEY_ROLES)]
            distributed = bool(await conn.fetchval(KEYED_LAYOUT))
        finally:
            await conn.close()
    head = head_revision()
    status = Status(
        server_version=version,
        pooler=config.effective_pooler,
        current_revision=current,
        head_revision=head,
        pending=pending_revisions(current),
        rls={r["relname"]: r["relrowsecurity"] for r in rows},
        missing_policies={
            r["relname"]: []
            if distributed
            else sorted(EXPECTED_POLICIES[r["relname"]] - set(r["policies"]))
            for r in rows
        },
        exposed=sorted(
            f"{role}: {r['relname']}"
            for r in rows
            if not r["relrowsecurity"]
            for role in r["api_roles"]
        ),
        pool=f"min_size={config.min_size} max_size={config.max_size} "
        f"statement cache {'off' if config.effective_pooler == 'transaction' else 'on'}",
        distributed=distributed,
    )
    if status.pending:
        status.problems.append(
            f"{len(status.pending)} migration(s) pending: run `sessionstore migrate`"
        )
    for table in TABLES:
        if table not in status.rls:
            continue
        if not status.rls[table]:
            status.problems.append(f"row-level security is off on {table}")
        if status.missing_policies[table] and current == head:
            missing = ", ".join(status.missing_policies[table])
            status.problems.append(f"{table} is missing policies: {missing}")
    for role in keys_reached:
        status.problems.append(
            f"{role} can reach the data keys (sessionstore_private.keys): revoke its grants"
            " on that schema and table"
        )
    for entry in status.exposed:
        role, table = entry.split(": ")
        status.problems.append(
            f"{role} can read or change {table} (it has privileges and no row-level security)"
        )
    return status
