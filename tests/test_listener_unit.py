"""The cache's listener reconnects with backoff (pure; a fake connection, no database)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import sessionstore.cache
from sessionstore.cache import SessionCache
from sessionstore.config import StoreConfig


class DroppedAtOnce:
    """A connection that the server (or a pooler) drops as soon as LISTEN is sent."""

    def __init__(self) -> None:
        self._on_lost: list[Callable[[Any], None]] = []
        self.closed = False

    def add_termination_listener(self, callback: Callable[[Any], None]) -> None:
        self._on_lost.append(callback)

    async def add_listener(self, channel: str, callback: object) -> None:
        self.closed = True
        for lost in self._on_lost:
            lost(self)

    def is_closed(self) -> bool:
        return self.closed

    def terminate(self) -> None:
        self.closed = True


async def test_a_connection_dropped_at_once_meets_the_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connects = 0

    async def connect(config: StoreConfig, **_: object) -> DroppedAtOnce:
        nonlocal connects
        connects += 1
        return DroppedAtOnce()

    monkeypatch.setattr(sessionstore.cache, "connect_direct", connect)
    cache = SessionCache(size=10, ttl=1.0, invalidation="notify")
    cache.start_listening(StoreConfig(dsn="postgresql://u@h/db"))
    try:
        await asyncio.sleep(1.0)  # the span observed, not a wait for a result
    finally:
        await cache.stop_listening()
    # Backoff from 0.1 s doubling: a handful of attempts a second. Without it, a
    # reconnect loop makes thousands.
    assert 2 <= connects <= 20
    assert not cache.usable
