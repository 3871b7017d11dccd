"""The session cache: a bounded LRU with a short TTL, kept coherent across processes.

Reads go through it; the process's own writes put the new row in at once. Other
processes' writes arrive through LISTEN/NOTIFY (one dedicated connection per store,
reconnected when dropped) where a session-level connection exists; behind a transaction
pooler, entries simply expire after ``cache_ttl``. While the listener is down the cache
is bypassed, and it is emptied when the listener comes back (notifications may have
been missed). Between the listener's connection dying and the client noticing (when the
socket closes, normally milliseconds; never, on a network that silently stops delivering)
a stale entry can still be served; ``cache_ttl`` bounds that too.

The listener's outages are logged as one condition: a WARNING when it goes down (with
the reason), an INFO when it is back, and its reconnection attempts at DEBUG between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from .config import StoreConfig
from .db import connect_direct
from .errors import SessionStoreError, StoreUnavailableError, translate_errors
from .models import Invalidation, Session
from .retry import LISTENER, describe, retrying
from .rules import effective_status

__all__ = ["CHANNEL", "SessionCache"]

logger = logging.getLogger("sessionstore")

CHANNEL = "sessionstore_sessions"

#: Seconds a listener connection must stay up before its loss resets the backoff.
_STABLE = 10.0


class SessionCache:
    """Sessions by id. ``get`` returns ``None`` on a miss; hits re-evaluate expiry locally."""

    def __init__(self, *, size: int, ttl: float, invalidation: Invalidation) -> None:
        self._size = size
        self._ttl = ttl
        self.invalidation: Invalidation = "off" if size == 0 or ttl == 0 else invalidation
        self._entries: OrderedDict[UUID, tuple[Session, float]] = OrderedDict()
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        # When the listener went down (None while it is up, or before its first attempt).
        self._down_since: float | None = None
        self.hits = 0
        self.misses = 0

    @property
    def usable(self) -> bool:
        """Whether entries may be served: not while notifications are expected but down."""
        if self.invalidation == "off":
            return False
        return self.invalidation == "ttl" or self._listening

    def get(self, session_id: UUID) -> Session | None:
        """The cached session (status ``EXPIRED`` if due by now), or ``None``."""
        if not self.usable:
            return None
        entry = self._entries.get(session_id)
        if entry is None or time.monotonic() - entry[1] > self._ttl:
            self.misses += 1
            return None
        self._entries.move_to_end(session_id)
        self.hits += 1
        session = entry[0]
        status = effective_status(session.status, session.expires_at, datetime.now(UTC))
        if status is not session.status:
            return session.model_copy(update={"status": status})
        return session

    def put(self, session: Session) -> None:
        """Remember the current state of ``session`` (from a read or our own write)."""
        if self.invalidation == "off":
            return
        self._entries[session.id] = (session, time.monotonic())
        self._entries.move_to_end(session.id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def discard(self, session_id: UUID) -> None:
        """Forget one session."""
        self._entries.pop(session_id, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # -- LISTEN/NOTIFY ----------------------------------------------------------------

    def start_listening(self, config: StoreConfig) -> None:
        """Run the listener connection in the background (reconnecting as needed)."""
        if self.invalidation == "notify" and self._task is None:
            self._task = asyncio.create_task(self._listen(config), name="sessionstore-listener")

    async def stop_listening(self) -> None:
        """Close the listener connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self._listening = False

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        with contextlib.suppress(ValueError):
            self.discard(UUID(str(payload)))

    async def _listen(self, config: StoreConfig) -> None:
        # A connection lost soon after it came up counts as a failure, so a server or
        # pooler that drops LISTEN sessions at once meets the backoff, not a connect storm;
        # one that stayed up a while starts a fresh backoff (reconnect at once).
        while True:
            async for attempt in retrying(
                LISTENER,
                retry_on=lambda error: isinstance(error, SessionStoreError),
                what="session cache listener connection",
                on_retry=lambda state: self._went_down(
                    state.outcome.exception() if state.outcome is not None else None
                ),
            ):
                with attempt:
                    up_for = await self._listen_once(config)
                    if up_for < _STABLE:
                        raise StoreUnavailableError(
                            f"its connection was lost {up_for:.1f}s after it was made"
                        )
            self._went_down(None)

    def _went_down(self, error: BaseException | None) -> None:
        """Log the listener's outage once, when it starts."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        reason = "its connection was lost" if error is None else describe(error)
        logger.warning(
            "session cache listener down (%s): the cache is bypassed until it is back "
            "(reconnecting with backoff; attempts logged at DEBUG)",
            reason,
        )

    async def _listen_once(self, config: StoreConfig) -> float:
        """Connect and listen until the connection is lost; return how long it was up."""
        conn = await connect_direct(config)
        started = time.monotonic()
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            with translate_errors():
                await conn.add_listener(CHANNEL, self._on_notify)
            self.clear()  # anything cached before may have missed notifications
            self._listening = True
            if self._down_since is None:
                logger.info("session cache listening on %s", CHANNEL)
            else:
                logger.info(
                    "session cache listener back after %.1fs: the cache is used again",
                    time.monotonic() - self._down_since,
                )
                self._down_since = None
            await lost.wait()
        finally:
            self._listening = False
            if not conn.is_closed():
                conn.terminate()
        return time.monotonic() - started
