"""examples/web_app.py: the store opened and closed in a Starlette app's lifespan, driven
through Starlette's own test client (issue 14, item 5)."""

from __future__ import annotations

import os

import asyncpg
import pytest

pytest.importorskip("starlette", reason="Starlette comes with the mcp extra")

from starlette.testclient import TestClient

from examples import web_app
from sessionstore import ContinuationId, SessionStore, SessionStoreError


async def test_the_lifespan_opens_and_closes_the_store(
    dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", dsn)
    monkeypatch.setenv("SESSIONSTORE_POOLER", os.environ.get("SESSIONSTORE_TEST_POOLER", "auto"))
    with TestClient(web_app.app) as client:
        first = client.post("/conversations/c1/messages", json={"role": "user", "content": "hi"})
        second = client.post(
            "/conversations/c1/messages", json={"role": "assistant", "content": "yo"}
        )
        bad = client.post("/conversations/c1/messages", json={"role": "robot", "content": "x"})
        not_json = client.post("/conversations/c1/messages", content=b"{oops")
        not_object = client.post("/conversations/c1/messages", json=["user", "x"])
        key = {"Idempotency-Key": "0190a5c4-0000-7000-8000-0000000000aa"}
        once = client.post(
            "/conversations/c1/messages", json={"role": "user", "content": "r"}, headers=key
        )
        again = client.post(
            "/conversations/c1/messages", json={"role": "user", "content": "r"}, headers=key
        )
        history = client.get("/conversations/c1/messages")
        missing = client.get("/conversations/none/messages")
        store: SessionStore = client.app_state["store"]
    assert first.status_code == 201
    assert second.json() == {
        "seq": 2,
        "context": [
            {"seq": 1, "role": "user", "content": "hi"},
            {"seq": 2, "role": "assistant", "content": "yo"},
        ],
    }
    assert bad.status_code == 422
    assert bad.json()["error"].startswith("role: ")
    assert (not_json.status_code, not_object.status_code) == (422, 422)
    assert once.json()["seq"] == again.json()["seq"] == 3  # the resend wrote nothing
    assert [m["content"] for m in history.json()["messages"]] == ["hi", "yo", "r"]
    assert missing.status_code == 404
    with pytest.raises(SessionStoreError, match="not open"):  # the lifespan closed it
        await store.messages.count(ContinuationId("c1"))
    assert await conn.fetchval("SELECT count(*) FROM messages") == 3
