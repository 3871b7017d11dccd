"""Which sessionstore session owns an ADK key: the conversation of the key's
continuation id, bound to the session on creation (race-free: the continuation id is
unique), and the clean-up of what a dead or half-made session leaves behind."""

from __future__ import annotations

import contextlib
import logging
import uuid

from google.adk.errors.already_exists_error import AlreadyExistsError

from ...errors import ConflictError, NotFoundError, SessionStoreError
from ...models import SessionStatus
from ..common import Scope
from .keys import Key

__all__ = ["bind", "delete_conversation", "discard"]

logger = logging.getLogger("sessionstore")

_BIND_ATTEMPTS = 3


async def bind(scope: Scope, key: Key, session_id: uuid.UUID) -> None:
    """Create the session's conversation; the continuation id is the arbiter of which
    session owns the ADK key. ``AlreadyExistsError`` if a live session holds it; a dead
    holder (expired, or an orphaned conversation) is cleared and the bind tried again."""
    names = {
        "adk": {
            "app_name": key.app_name,
            "user_id": key.user_id,
            "session_id": key.session_id,
        }
    }
    for _ in range(_BIND_ATTEMPTS):
        try:
            conv = await scope.conversations.get_or_create(
                key.continuation, session_id=session_id, metadata=names
            )
        except ConflictError:  # bound to another session
            if await _clear_expired(scope, key):
                continue
            raise AlreadyExistsError(f"Session with id {key.session_id} already exists.") from None
        if conv.session_id == session_id:
            return
        # Left without a session (its session was deleted keeping conversations, or
        # cleaned up): a dead session's events, not this one's.
        await delete_conversation(scope, conv.id)
    raise AlreadyExistsError(f"Session with id {key.session_id} already exists.")


async def _clear_expired(scope: Scope, key: Key) -> bool:
    """Delete what holds the ADK key if it is dead (expired, or its conversation
    orphaned); whether the key may be taken now."""
    try:
        conv = await scope.conversations.get(key.ref)
    except NotFoundError:
        return True  # deleted meanwhile
    if conv.session_id is None:
        await delete_conversation(scope, conv.id)
        return True
    try:
        holder = await scope.sessions.get(conv.session_id)
    except NotFoundError:
        return True
    if holder.status != SessionStatus.EXPIRED:
        return False
    with contextlib.suppress(NotFoundError):
        await scope.sessions.delete(holder.id)
    return True


async def delete_conversation(scope: Scope, conversation_id: uuid.UUID) -> None:
    """Delete the conversation; nothing if it is gone already."""
    with contextlib.suppress(NotFoundError):
        await scope.conversations.delete(conversation_id)


async def discard(scope: Scope, session_id: uuid.UUID) -> None:
    """Remove a session whose creation failed half-way (best effort: a leftover has
    no conversation, so ADK never sees it, and it expires like any session)."""
    try:
        await scope.sessions.delete(session_id)
    except SessionStoreError as exc:
        logger.warning("could not remove a half-created ADK session %s: %s", session_id, exc)
