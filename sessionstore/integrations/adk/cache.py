"""What one service keeps in this process: which sessionstore session holds each ADK
session it has seen (a bounded LRU), and one lock per ADK session for its appends."""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections import OrderedDict

__all__ = ["KNOWN_SESSIONS", "KnownSessions"]

#: How many ADK sessions a service remembers (least recently used dropped first).
KNOWN_SESSIONS = 10_000


class KnownSessions:
    """Continuation id -> sessionstore session id, and per-continuation append locks.

    A conversation stays bound to one session until both are deleted, so a hit saves a
    lookup; every read through a hit is checked against storage all the same (another
    worker may have deleted the session and made a new one with the same ADK id), and an
    entry found stale is dropped with :meth:`forget`. Not shared between processes.
    """

    def __init__(self, size: int = KNOWN_SESSIONS) -> None:
        self._size = size
        self._known: OrderedDict[str, uuid.UUID] = OrderedDict()
        # One append at a time per ADK session in this process: parallel branches of an
        # invocation share one session object and must not race for the same slot. Weak:
        # a lock lives while an append holds or awaits it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def get(self, continuation: str) -> uuid.UUID | None:
        """The remembered session of ``continuation``, if any."""
        return self._known.get(continuation)

    def remember(self, continuation: str, session_id: uuid.UUID) -> None:
        """Remember (or refresh) ``continuation``'s session, dropping the oldest entry
        beyond the size."""
        self._known[continuation] = session_id
        self._known.move_to_end(continuation)
        if len(self._known) > self._size:
            self._known.popitem(last=False)

    def forget(self, continuation: str) -> uuid.UUID | None:
        """Drop ``continuation``; the session it held, if any."""
        return self._known.pop(continuation, None)

    def lock(self, continuation: str) -> asyncio.Lock:
        """The append lock of ``continuation`` (the same object while anyone holds it)."""
        lock = self._locks.get(continuation)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[continuation] = lock
        return lock
