"""Connections: the arguments every connection is opened with (:mod:`.connection`), the
pool (:mod:`.pool`), the ``Database`` that runs work on it (:mod:`.database`) — as the
service or, under row-level security, as a user (:mod:`.scope`).

Errors are translated by :func:`sessionstore.errors.translate_errors`.
"""

from .connection import (
    ConfigureCallback,
    Connection,
    connect_arguments,
    connect_direct,
    init_connection,
)
from .database import Database
from .pool import Pool

__all__ = [
    "ConfigureCallback",
    "Connection",
    "Database",
    "Pool",
    "connect_arguments",
    "connect_direct",
    "init_connection",
]
