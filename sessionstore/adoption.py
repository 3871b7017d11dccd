"""Recognise a database created by the original Supabase SQL, so Alembic records the
revisions it already matches instead of failing on "already exists"."""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.engine import Connection

from .errors import AdoptionError

__all__ = ["AdoptionError", "original_revision"]

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
            "alembic_version record; stamp the right revision with `alembic stamp`"
        )
    if "sessions" in tables and "session_id" in columns("conversations"):
        return "0002_sessions"
    return "0001_baseline"
