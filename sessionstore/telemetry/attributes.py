"""What a span and a data point say: the names and attributes of the database semantic
conventions, built from a DSN and an operation. Shared by tracing and metrics; imports
no OpenTelemetry."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from ..dsn import check_dsn
from ..errors import InvalidInputError

__all__ = [
    "INSTRUMENTATION_NAME",
    "Attributes",
    "Kind",
    "Setup",
    "connection_attributes",
    "error_type",
    "pool_name",
    "setup",
]

#: The tracer's and the meter's name.
INSTRUMENTATION_NAME = "sessionstore"
_DEFAULT_PORT = 5432

Kind = Literal["client", "internal"]
Attributes = Mapping[str, str | int]


@functools.lru_cache(maxsize=64)
def connection_attributes(dsn: str | None) -> tuple[tuple[str, str | int], ...]:
    """``db.system.name``, ``db.namespace``, ``server.address`` and ``server.port`` for
    ``dsn``: its first host and port (5432 when it names none) and its database. No user
    name, no password, no other parameter."""
    found: dict[str, str | int] = {"db.system.name": "postgresql"}
    if not dsn:
        return tuple(found.items())
    try:
        servers = check_dsn(dsn)
    except InvalidInputError:
        return tuple(found.items())
    parts = urlsplit(dsn)
    database = unquote(parts.path.lstrip("/"))
    if not database and parts.query:
        query = parse_qs(parts.query)
        database = (query.get("dbname") or query.get("database") or [""])[-1]
    if database:
        found["db.namespace"] = database
    if servers.hosts and servers.hosts[0]:
        found["server.address"] = servers.hosts[0]
        found["server.port"] = servers.ports[0] or _DEFAULT_PORT
    return tuple(found.items())


@dataclass(frozen=True, slots=True)
class Setup:
    """A traced operation on one database: its span's name, kind and attributes."""

    name: str
    client: bool
    attributes: Attributes


@functools.lru_cache(maxsize=512)
def setup(operation: str, collection: str | None, kind: Kind, dsn: str | None) -> Setup:
    """The span name, kind and attributes of ``operation`` on ``collection`` (``None``:
    across tables, named after the database) of the database ``dsn`` names."""
    attributes: dict[str, str | int] = dict(connection_attributes(dsn))
    attributes["db.operation.name"] = operation
    if collection is not None:
        attributes["db.collection.name"] = collection
    target = collection or attributes.get("db.namespace")
    if target is None and "server.address" in attributes:
        target = f"{attributes['server.address']}:{attributes['server.port']}"
    name = operation if target is None else f"{operation} {target}"
    return Setup(name, kind == "client", attributes)


def error_type(error: BaseException) -> tuple[str, str | None]:
    """``error.type`` and ``db.response.status_code`` for ``error``: the SQLSTATE the
    server sent, else the exception's qualified class name (never its message)."""
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate, sqlstate
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__, None
    return f"{cls.__module__}.{cls.__qualname__}", None


def pool_name(attributes: Attributes) -> str:
    """``server.address:server.port/db.namespace``, as the conventions suggest."""
    name = ""
    if "server.address" in attributes:
        name = f"{attributes['server.address']}:{attributes['server.port']}"
    if "db.namespace" in attributes:
        name += f"/{attributes['db.namespace']}"
    return name or INSTRUMENTATION_NAME
