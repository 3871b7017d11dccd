"""Deleting everything of one user — sessions, their conversations and messages, and the
user-scoped state agent frameworks keep (``adk_user_states``) — in
bounded batches, so that a user with a long history never holds locks for long and
everyone else's writes keep going."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from . import validation as v
from .db import Database
from .deletes import delete_in_batches
from .models import PurgeCounts

__all__ = ["purge_user"]

# Messages first, then conversations, then sessions: each step deletes rows whose
# children are already gone, so no batch cascades into an unbounded delete. A message
# appended to the user's conversation meanwhile goes with it (ON DELETE CASCADE).
PURGE_MESSAGES = """
DELETE FROM messages WHERE id IN (
    SELECT m.id FROM sessions s
    JOIN conversations c ON c.session_id = s.id
    JOIN messages m ON m.conversation_id = c.id
    WHERE s.user_id = $1
    LIMIT $2
)
"""
PURGE_CONVERSATIONS = """
DELETE FROM conversations WHERE id IN (
    SELECT c.id FROM sessions s JOIN conversations c ON c.session_id = s.id
    WHERE s.user_id = $1
    LIMIT $2
)
"""
PURGE_SESSIONS = """
DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE user_id = $1 LIMIT $2)
"""
# Session-scoped state goes with its session (ON DELETE CASCADE); user-scoped state is
# keyed by the user alone.
PURGE_USER_STATES = """
DELETE FROM adk_user_states WHERE (app_name, user_id) IN (
    SELECT app_name, user_id FROM adk_user_states WHERE user_id = $1 LIMIT $2
)
"""


async def purge_user(
    db: Database,
    user_id: str,
    *,
    batch_size: int = 1000,
    on_progress: Callable[[PurgeCounts], None] | None = None,
) -> PurgeCounts:
    """Delete every session of ``user_id`` with its conversations and messages (and the
    user's framework state), at most
    ``batch_size`` rows per statement; ``on_progress`` gets the running counts."""
    uid = v.identifier(user_id, "user_id")
    size = v.limit(batch_size, "batch_size", maximum=100_000)
    on_progress = v.callback(on_progress, "on_progress")
    counts = PurgeCounts()

    def progress(field: str) -> Callable[[int], None]:
        def report(total: int) -> None:
            if on_progress is not None:
                on_progress(dataclasses.replace(counts, **{field: total}))

        return report

    for field, query in (
        ("messages", PURGE_MESSAGES),
        ("conversations", PURGE_CONVERSATIONS),
        ("sessions", PURGE_SESSIONS),
        ("user_states", PURGE_USER_STATES),
    ):
        deleted = await delete_in_batches(db, query, uid, size=size, on_progress=progress(field))
        counts = dataclasses.replace(counts, **{field: deleted})
    return counts
