"""The reads behind ``get_session`` and ``list_sessions``: calls run side by side, a
conversation's events read backwards in pages, and a user's sessions page by page —
all through the store's public API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from google.adk.sessions.base_session_service import GetSessionConfig

from ... import validation as v
from ...models import Message, Session
from ..common import Scope, latest
from .events import stamp
from .keys import Key

__all__ = ["all_of", "all_sessions", "history"]

_PAGE = v.MAX_LIMIT
# A read filtered by after_timestamp usually wants the last few events: start small.
_FIRST_FILTERED_PAGE = 100


async def all_of(*calls: Awaitable[Any]) -> list[Any]:
    """Run ``calls`` at once and let every one finish (none is left running unseen);
    then raise the first error, if any."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def history(
    scope: Scope, key: Key, config: GetSessionConfig | None
) -> tuple[list[Message], Message | None]:
    """The messages the config may need, oldest first, and the newest message of the
    conversation (the revision the session object will carry), in pages read
    backwards. ``NotFoundError`` if the conversation is gone.

    Events are selected in :func:`~.events.order` (timestamp, then id) but read in the
    order they were appended, so the read stops at the first page whose earliest event
    is older than ``after_timestamp``, or strictly older than the latest
    ``num_recent_events`` read so far (a tie is followed back as far as it goes). That
    is exact unless an event appended earlier has a later timestamp than the earliest
    one read (ADK appends in time order). Without a config every message is read.
    """
    recent = None if config is None else config.num_recent_events
    after = None if config is None else config.after_timestamp
    if recent == 0:
        last = await scope.messages.history(key.ref, limit=1, include_compacted=True)
        return [], last[-1] if last else None
    stamps: list[float] = []

    def enough(page: list[Message]) -> bool:
        page_stamps = [s for s in map(stamp, page) if s is not None]
        stamps.extend(page_stamps)
        if not page_stamps:
            return False
        # The earliest appended event read so far; one appended before it has, by the
        # assumption above, no later timestamp.
        oldest = page_stamps[0]
        if after is not None and oldest < after:
            return True
        # The latest `recent` are settled once that event is strictly older than the
        # last of them: one further back could at most tie with it, not enter them.
        return recent is not None and len(stamps) > recent and oldest < _nth(stamps, recent)

    first = None
    if recent is not None:
        first = min(recent + 1, _PAGE)  # one more than asked: usually settles in one read
    elif after is not None:
        first = _FIRST_FILTERED_PAGE
    # ADK compacts with events of its own (actions.compaction, kept as appended):
    # every stored event is read, whatever a sessionstore compaction would hide.
    messages = await latest(
        scope, key.ref, None, first_page=first, enough=enough, include_compacted=True
    )
    return messages, messages[-1] if messages else None


def _nth(values: list[float], n: int) -> float:
    """The ``n``-th largest of ``values`` (``1 <= n <= len(values)``)."""
    return sorted(values, reverse=True)[n - 1]


async def all_sessions(scope: Scope, user_id: str | None) -> list[Session]:
    """Every sessionstore session of ``user_id`` (``None``: of every user the scope may
    see), a page of 1,000 at a time; separate reads, not one snapshot."""
    found: list[Session] = []
    cursor: str | None = None
    while True:
        page = await scope.sessions.list(user_id=user_id, limit=_PAGE, cursor=cursor)
        found.extend(page.items)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor
