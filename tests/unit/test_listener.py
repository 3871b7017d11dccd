"""The cache's listener reconnects with backoff and logs an outage once (pure; a fake
connection, no database)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

import sessionstore.cache
from sessionstore.cache import SessionCache
from sessionstore.config import StoreConfig
from sessionstore.errors import StoreUnavailableError
from sessionstore.retry import Backoff

from ..helpers import eventually


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


class StaysUp(DroppedAtOnce):
    """A connection that listens until it is terminated."""

    async def add_listener(self, channel: str, callback: object) -> None:
        pass


async def test_an_outage_is_one_warning_with_a_reason_and_one_recovery(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sessionstore")
    monkeypatch.setattr(
        sessionstore.cache, "LISTENER", Backoff(first=0.001, cap=0.005, attempts=None)
    )
    failures = 5

    async def connect(config: StoreConfig, **_: object) -> StaysUp:
        nonlocal failures
        if failures:
            failures -= 1
            raise StoreUnavailableError("")  # no text: the reason must still say something
        return StaysUp()

    monkeypatch.setattr(sessionstore.cache, "connect_direct", connect)
    cache = SessionCache(size=10, ttl=1.0, invalidation="notify")
    cache.start_listening(StoreConfig(dsn="postgresql://u@h/db"))
    try:
        await eventually(lambda: cache.usable, what="the listener is up", within=5)
    finally:
        await cache.stop_listening()
    loud = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert len(loud) == 2, loud
    (down_level, down), (back_level, back) = loud
    assert down_level == "WARNING"
    assert "listener down (StoreUnavailableError)" in down
    assert back_level == "INFO"
    assert "listener back after" in back
