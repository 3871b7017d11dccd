"""Alembic environment: async, over asyncpg, reading the DSN the way the library does.

The DSN comes from (first found): ``config.attributes["dsn"]`` (set by
``sessionstore.migrations``), ``alembic -x dsn=...``, then ``StoreConfig`` (the
``SESSIONSTORE_DATABASE_URL`` / ``DATABASE_URL`` environment variables).

It ships inside the package, so an ini needs only ``script_location = sessionstore:alembic``
(Alembic's package-resource form) to find it from an installed wheel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from logging.config import fileConfig
from typing import Any

import asyncpg
from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from sessionstore.adoption import original_revision, record_original
from sessionstore.config import StoreConfig
from sessionstore.db import connect_direct
from sessionstore.distribution import KEYED_LAYOUT, distribute, has_citus
from sessionstore.errors import InvalidInputError
from sessionstore.migrations import check_connection
from sessionstore.schema import metadata

config = context.config
logger = logging.getLogger("sessionstore")
_LOGGING_SECTIONS = ("loggers", "handlers", "formatters")


def _configure_logging() -> None:
    """Logging as the ini says, if it says anything about it.

    A two-line ini (``[alembic]`` and ``script_location``) has no logging sections, and
    ``fileConfig`` fails on it with ``KeyError: 'formatters'``; then Alembic's progress
    lines go to stderr as the root ``alembic.ini`` sends them, unless the process has set
    up logging already. Callers that own logging (``sessionstore.migrations``, the
    ``sessionstore alembic`` command) set ``skip_logging_config``.
    """
    if config.attributes.get("skip_logging_config"):
        return
    ini = config.config_file_name
    if ini is not None and all(config.file_config.has_section(s) for s in _LOGGING_SECTIONS):
        fileConfig(ini, disable_existing_loggers=False)
    elif not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)-5.5s [%(name)s] %(message)s")
        logging.getLogger("alembic").setLevel(logging.INFO)


_configure_logging()


def _store_config() -> StoreConfig:
    """The library's settings, with the DSN this run was given (then the environment's
    URLs are not read, so a foreign ``DATABASE_URL`` cannot get in the way)."""
    dsn = config.attributes.get("dsn") or context.get_x_argument(as_dictionary=True).get("dsn")
    try:
        settings = StoreConfig.load(dsn=str(dsn) if dsn else None)
    except InvalidInputError as exc:
        if config.attributes.get("dsn"):
            raise  # called from sessionstore.migrations: the caller explains it
        raise SystemExit(f"error: {exc}") from None  # the alembic command: one sentence
    if not settings.dsn:
        # Not config.MISSING_DSN: that names --dsn, which the alembic command lacks.
        raise SystemExit(
            "error: no database URL: set SESSIONSTORE_DATABASE_URL (or DATABASE_URL), "
            "or pass -x dsn=..."
        )
    return settings


def _applied(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    """Note each revision moved to in ``config.attributes["applied"]``: how
    ``sessionstore.migrations.upgrade`` tells "migrated" from "already there"."""
    if step.is_migration and step.up_revision_id is not None:
        config.attributes.setdefault("applied", []).append(step.up_revision_id)


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=metadata,
        transaction_per_migration=True,
        on_version_apply=_applied,
        **kwargs,
    )


def run_offline() -> None:
    _configure(url="postgresql://", literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


# Serialises migrations across processes (both `alembic` and `sessionstore migrate`):
# a session-level advisory lock, held by this connection until it closes.
MIGRATION_LOCK = 7_201_864_355_130_912


def _destination() -> str | None:
    """The revision this run moves to (None: a command that moves nothing, `current`)."""
    try:
        destination = context.get_revision_argument()
    except KeyError:
        return None
    return None if destination is None else str(destination)


def _run_sync(connection: Connection) -> None:
    connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
    connection.commit()
    _configure(connection=connection)
    head = ScriptDirectory.from_config(config).get_current_head()
    if (
        _destination() not in (None, "head", head)
        and connection.exec_driver_sql(KEYED_LAYOUT).scalar()
    ):
        raise InvalidInputError(
            "revision",
            "this database has the distributed (Citus) layout, which has no earlier"
            " revision: it cannot be downgraded (restore a backup taken before instead)",
        )
    adopted = original_revision(connection)
    if adopted is not None:
        # Tables from the original Supabase SQL: record what they match, then upgrade.
        logger.warning("adopting the existing original schema as revision %s", adopted)
        with context.begin_transaction():
            context.get_context().stamp(ScriptDirectory.from_config(config), adopted)
            record_original(connection, adopted)
    with context.begin_transaction():
        context.run_migrations()
    config.attributes["at_head"] = context.get_context().get_current_revision() == head


async def run_online() -> None:
    settings = _store_config()
    try:
        check_connection(settings)
    except InvalidInputError as exc:
        if config.attributes.get("dsn"):
            raise  # called from sessionstore.migrations: the caller explains it
        raise SystemExit(f"error: {exc}") from None  # the alembic command: one sentence

    async def creator() -> asyncpg.Connection:
        # The library's own connection settings, without its per-statement timeouts (a
        # migration waits for locks); no statement cache, so it survives a session pooler.
        return await connect_direct(
            settings, application_name="sessionstore-migrate", migrations=True
        )

    engine = create_async_engine("postgresql+asyncpg://", async_creator=creator, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            if config.attributes.get("at_head"):
                # On Citus the head schema is the distributed layout (still under the
                # migration lock, which this connection holds).
                conn = await creator()
                try:
                    if await has_citus(conn):
                        await distribute(conn, citus=True)
                finally:
                    await conn.close()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
