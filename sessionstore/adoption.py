"""Recognise a database created by the original Supabase SQL, so Alembic records the
revisions it already matches instead of failing on "already exists"."""

from __future__ import annotations

import json
import logging

from sqlalchemy import text
from sqlalchemy.engine import Connection

from .errors import AdoptionError

__all__ = ["RECORD_KEY", "AdoptionError", "original_revision", "record_original"]

logger = logging.getLogger("sessionstore")

_TABLES = text(
    "SELECT table_name FROM information_schema.tables"
    " WHERE table_schema = current_schema() AND table_name = ANY(:names)"
)
_COLUMNS = text(
    "SELECT column_name FROM information_schema.columns"
    " WHERE table_schema = current_schema() AND table_name = :table"
)
_VERSIONED = text("SELECT count(*) FROM alembic_version")


def original_revision(connection: Connection) -> str | None:
    """The revision an unversioned original database already matches, else ``None``.

    ``0001_baseline`` when it holds the original conversations and messages;
    ``0002_sessions`` when it also holds the sessions migration. ``None`` for an empty or
    already versioned database. ``AdoptionError`` for tables that carry columns of later
    revisions without a version record.
    """
    names = ["alembic_version", "conversations", "messages", "sessions"]
    tables = {row[0] for row in connection.execute(_TABLES, {"names": names})}
    if "alembic_version" in tables and connection.execute(_VERSIONED).scalar():
        return None
    if not {"conversations", "messages"} <= tables:
        return None

    def columns(table: str) -> set[str]:
        return {row[0] for row in connection.execute(_COLUMNS, {"table": table})}

    if "seq" in columns("messages"):
        raise AdoptionError(
            "messages already has sessionstore's seq column but the database has no "
            "alembic_version record; stamp the right revision with "
            "`sessionstore alembic stamp REVISION`"
        )
    if "sessions" in tables and "session_id" in columns("conversations"):
        return "0002_sessions"
    return "0001_baseline"


#: The key of the record :func:`record_original` keeps in the comment on alembic_version.
RECORD_KEY = "sessionstore_adopted"
_TABLES_SQL = "('sessions', 'conversations', 'messages')"
# What the upgrade changes and an exact downgrade must put back: the id defaults, the
# index definitions and the row-level-security policies, as the database deparses them.
_SNAPSHOT = text(
    f"""
SELECT json_build_object(
    'id_defaults', (
        SELECT coalesce(json_object_agg(c.relname, pg_get_expr(d.adbin, d.adrelid)), '{{}}')
        FROM pg_attrdef d
        JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        JOIN pg_class c ON c.oid = d.adrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relname IN {_TABLES_SQL} AND a.attname = 'id'
    ),
    'indexes', (
        SELECT coalesce(json_object_agg(indexname, indexdef), '{{}}') FROM pg_indexes
        WHERE schemaname = current_schema() AND tablename IN {_TABLES_SQL}
    ),
    'policies', (
        SELECT coalesce(json_agg(json_build_object(
            'name', policyname, 'table', tablename, 'permissive', permissive,
            'roles', roles, 'cmd', cmd, 'qual', qual, 'with_check', with_check
        ) ORDER BY tablename, policyname), '[]')
        FROM pg_policies WHERE schemaname = current_schema() AND tablename IN {_TABLES_SQL}
    )
)::text
"""
)


def record_original(connection: Connection, revision: str) -> None:
    """Keep, in the comment on ``alembic_version``, the definitions the upgrade replaces
    (id defaults, indexes, policies), so a downgrade to ``revision`` restores them exactly.

    Called once, when an original database is adopted; the comment survives dumps.
    """
    snapshot = connection.execute(_SNAPSHOT).scalar_one()
    record = json.dumps({RECORD_KEY: {"revision": revision, **json.loads(snapshot)}})
    literal = connection.execute(text("SELECT quote_literal(:r)"), {"r": record}).scalar_one()
    connection.exec_driver_sql(f"COMMENT ON TABLE alembic_version IS {literal}")
    logger.info("recorded the original definitions for an exact downgrade to %s", revision)
