"""Opening connections: the arguments every connection is opened with, a connection
outside the pool, and the per-connection setup sessionstore needs.

:func:`connect_arguments` is the one place connection settings are built: the pool, the
cache's listener, ``sessionstore status`` and Alembic all use it. A failed attempt is
described by :func:`sessionstore.errors.connect_error` (:func:`connect_failed`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from .. import jsonb
from ..config import StoreConfig, redact_dsn
from ..errors import InvalidInputError, SessionStoreError, connect_error
from ..models import ConfigureCallback, Connection

__all__ = [
    "CODEC_CHECK",
    "ConfigureCallback",
    "Connection",
    "connect_arguments",
    "connect_direct",
    "connect_failed",
    "init_connection",
    "open_connection",
]


def connect_arguments(
    config: StoreConfig,
    *,
    application_name: str | None = None,
    statement_cache: bool = True,
    migrations: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``asyncpg.connect``/``create_pool`` (the DSN included).

    Behind a transaction pooler there is no server-side statement cache and no startup
    setting (neither survives the pooler); ``statement_cache=False`` turns the cache off
    anyway (one-off connections gain nothing from it). ``migrations=True`` drops
    ``command_timeout`` and ``statement_timeout``: a migration waits for the migration
    lock and for locks held by live traffic, and backfills large tables, for as long as
    that takes (connecting is still bounded by ``connect_timeout``).
    """
    if not config.dsn:
        raise InvalidInputError("dsn", "no database URL: pass one or set SESSIONSTORE_DATABASE_URL")
    settings = {"application_name": application_name or config.application_name}
    kwargs: dict[str, Any] = {
        "dsn": config.dsn,
        "timeout": config.connect_timeout,
        "command_timeout": None if migrations else config.command_timeout,
    }
    if config.effective_pooler == "transaction":
        kwargs["statement_cache_size"] = 0
    else:
        if config.statement_timeout is not None and not migrations:
            settings["statement_timeout"] = str(int(config.statement_timeout * 1000))
        if not statement_cache:
            kwargs["statement_cache_size"] = 0
    try:
        ssl_arg = config.ssl_argument()
    except ValueError as exc:
        raise InvalidInputError("ssl", str(exc)) from None
    if ssl_arg is not None:
        kwargs["ssl"] = ssl_arg
    kwargs["server_settings"] = settings
    return kwargs


async def connect_direct(
    config: StoreConfig, *, application_name: str | None = None, migrations: bool = False
) -> asyncpg.Connection:
    """One connection outside the pool (the listener, ``status``, migrations: see
    :func:`connect_arguments`)."""
    arguments = connect_arguments(
        config, application_name=application_name, statement_cache=False, migrations=migrations
    )
    try:
        return await open_connection(**arguments)
    except Exception as exc:
        raise connect_failed(config, exc) from exc


async def open_connection(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """``asyncpg.connect``, never cancelled half-way: a caller that stops waiting (a
    timeout, ``Pool.close`` stopping asyncpg's floor restore) leaves the attempt to finish
    on its own — it is bounded by its ``timeout`` argument, ``connect_timeout`` — and the
    connection is then dropped.

    Why: cancelling asyncpg while the TCP connection is being set up for the TLS request
    leaves a future failed and never retrieved, which asyncio reports at ERROR ("Future
    exception was never retrieved") — noise in the application's logs.
    """
    attempt = asyncio.ensure_future(asyncpg.connect(*args, **kwargs))
    try:
        return await asyncio.shield(attempt)
    except asyncio.CancelledError:
        attempt.add_done_callback(_drop_unwanted)
        raise


def _drop_unwanted(attempt: asyncio.Future[asyncpg.Connection]) -> None:
    if attempt.cancelled():
        return
    if attempt.exception() is None:  # retrieving it keeps asyncio from reporting it
        attempt.result().terminate()


def connect_failed(config: StoreConfig, exc: Exception) -> SessionStoreError:
    """:func:`sessionstore.errors.connect_error` for a connection opened with ``config``."""
    return connect_error(
        exc, where=redact_dsn(config.dsn), dsn=config.dsn, connect_timeout=config.connect_timeout
    )


async def init_connection(conn: asyncpg.Connection) -> None:
    """Set ``conn`` up as sessionstore needs: its json/jsonb codec.

    sessionstore's own pool runs this on every new connection. A pool handed to
    ``connect(pool=...)`` must do the same: create it with
    ``asyncpg.create_pool(..., init=sessionstore.init_connection)``, or await this from
    your own ``init``. The codec applies to the connection's every jsonb and json value,
    also in your own queries: writes take JSON text or any value ``json.dumps`` takes,
    reads give Python values.
    """
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=jsonb.encode, decoder=jsonb.decode, schema="pg_catalog"
        )


# What a given pool's connections must answer (see ``Pool``): JSON text sent as jsonb
# arrives as an object (not a JSON string), and jsonb comes back as a Python value.
CODEC_CHECK = """SELECT jsonb_typeof($1::jsonb), '{"k": 1}'::jsonb"""
