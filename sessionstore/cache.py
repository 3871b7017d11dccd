"""The session cache: a bounded LRU with a short TTL, kept coherent across processes.

Reads go through it; the process's own writes put the new row in at once. Other
processes' writes arrive through LISTEN/NOTIFY (one dedicated connection per store,
reconnected when dropped) where a session-level connection exists; behind a transaction
pooler, entries simply expire after ``cache_ttl``. While the listener is down the cache
is bypassed, and it is emptied when the listener comes back (notifications may have
been missed). Between the listener's connection dying and the client noticing (when the
socket closes, normally milliseconds) a stale entry can still be served; ``cache_ttl``
bounds that too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg

from .models import Session, SessionStatus

__all__ = ["CHANNEL", "SessionCache"]

logger = logging.getLogger("sessionstore")

CHANNEL = "sessionstore_sessions"
_LIVE = (SessionStatus.ACTIVE, SessionStatus.PAUSED)
_MAX_RECONNECT_DELAY = 5.0

Invalidation = Literal["notify", "ttl", "off"]


class SessionCache:
    """Sessions by id. ``get`` returns ``None`` on a miss; hits re-evaluate expiry locally."""

    def __init__(self, *, size: int, ttl: float, invalidation: Invalidation) -> None:
        self._size = size
        self._ttl = ttl
        self.invalidation: Invalidation = "off" if size == 0 or ttl == 0 else invalidation
        self._entries: OrderedDict[UUID, tuple[Session, float]] = OrderedDict()
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self.hits = 0
        self.misses = 0
        self.invalidations = 0

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
        due = session.expires_at is not None and session.expires_at <= datetime.now(UTC)
        if due and session.status in _LIVE:
            return session.model_copy(update={"status": SessionStatus.EXPIRED})
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
        if self._entries.pop(session_id, None) is not None:
            self.invalidations += 1

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # -- LISTEN/NOTIFY ----------------------------------------------------------------

    def start_listening(self, connect_kwargs: dict[str, Any], dsn: str) -> None:
        """Run the listener connection in the background (reconnecting as needed)."""
        if self.invalidation == "notify" and self._task is None:
            self._task = asyncio.create_task(
                self._listen(dsn, connect_kwargs), name="sessionstore-listener"
            )

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

    async def _listen(self, dsn: str, connect_kwargs: dict[str, Any]) -> None:
        attempt = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(dsn, **connect_kwargs)
                lost = asyncio.Event()

                def on_lost(_conn: Any, event: asyncio.Event = lost) -> None:
                    event.set()

                conn.add_termination_listener(on_lost)
                await conn.add_listener(CHANNEL, self._on_notify)
                self.clear()  # anything cached before may have missed notifications
                self._listening = True
                attempt = 0
                logger.info("session cache listening on %s", CHANNEL)
                await lost.wait()
                logger.warning("session cache listener connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                logger.warning("session cache listener could not connect: %s", exc)
            finally:
                self._listening = False
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            attempt += 1
            await asyncio.sleep(
                min(_MAX_RECONNECT_DELAY, 0.1 * 2**attempt) * (0.5 + random.random())
            )
