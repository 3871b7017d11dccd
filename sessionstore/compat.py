"""The old session and conversation managers' call names, on top of :class:`SessionStore`.

For code written against the thread-pool Supabase manager and the in-memory session
manager: switch the import, add ``await`` where a call used to be synchronous, and keep
going. Results are plain dicts in JSON form (string ids, ISO timestamps), as the Supabase
client returned; "not found" is ``None``, as before. New code should use the store.

What changes in behaviour: nothing is dropped (``fire_and_forget`` messages go through
the write-behind queue, durable by ``shutdown()``); expiry is persisted in the database
rather than checked in one process's memory; counters are exact under concurrency.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from .errors import NotFoundError
from .models import ContinuationId, MessageRole, SessionStatus, TurnOptions
from .store import SessionStore, connect

__all__ = ["SessionManager"]

_MOVES = {
    SessionStatus.PAUSED: "pause",
    SessionStatus.ACTIVE: "resume",
    SessionStatus.COMPLETED: "complete",
}


class SessionManager:
    """The old managers' methods, delegating to a :class:`SessionStore`."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    @classmethod
    async def connect(cls, dsn: str | None = None, **overrides: Any) -> SessionManager:
        """Open a store (``sessionstore.connect`` arguments) and wrap it."""
        return cls(await connect(dsn, **overrides))

    # -- the thread-pool Supabase conversation manager ---------------------------------

    async def save_conversation_async(
        self,
        continuation_id: str,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        session_id: UUID | str | None = None,
    ) -> dict[str, Any]:
        """Get or create the conversation (race-free; an existing one is returned as is)."""
        conversation = await self.store.conversations.get_or_create(
            continuation_id, session_id=session_id, title=title, metadata=metadata
        )
        return conversation.model_dump(mode="json")

    async def get_conversation_async(self, continuation_id: str) -> dict[str, Any] | None:
        """The conversation, or ``None``."""
        try:
            conversation = await self.store.conversations.get_by_continuation_id(continuation_id)
        except NotFoundError:
            return None
        return conversation.model_dump(mode="json")

    async def save_message_async(
        self,
        continuation_id: str,
        role: MessageRole | str,
        content: str,
        metadata: dict[str, Any] | None = None,
        fire_and_forget: bool = False,
        session_id: UUID | str | None = None,
        tokens: int | None = None,
    ) -> dict[str, Any] | None:
        """Append a message (creating the conversation if needed).

        ``fire_and_forget=True`` returns ``None`` at once and writes through the
        write-behind queue: durable at ``shutdown()`` (or ``store.flush()``), never dropped.
        """
        options: TurnOptions = {"session_id": session_id, "metadata": metadata, "tokens": tokens}
        if fire_and_forget:
            await self.store.enqueue_turn(continuation_id, role, content, **options)
            return None
        turn = await self.store.add_turn(continuation_id, role, content, **options)
        return turn.message.model_dump(mode="json")

    async def get_conversation_history_async(
        self, continuation_id: str, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The latest ``limit`` messages, oldest first; ``[]`` for an unknown conversation."""
        try:
            # by continuation id: one round trip, and it sees this process's queued
            # (fire-and-forget) messages, new conversations included
            history = await self.store.messages.history(
                ContinuationId(continuation_id), limit=limit
            )
        except NotFoundError:
            return []
        return [m.model_dump(mode="json") for m in history]

    # -- the in-memory session manager --------------------------------------------------

    async def create_session(
        self,
        user_id: str,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        ttl_hours: float | None = 24,
    ) -> dict[str, Any]:
        """A new active session, expiring after ``ttl_hours`` (``None``: never)."""
        ttl = None if ttl_hours is None else timedelta(hours=ttl_hours)
        session = await self.store.sessions.create(user_id, title=title, metadata=metadata, ttl=ttl)
        return session.model_dump(mode="json")

    async def get_session(self, session_id: UUID | str) -> dict[str, Any] | None:
        """The session (status ``expired`` once due), or ``None``."""
        try:
            session = await self.store.sessions.get(session_id)
        except NotFoundError:
            return None
        return session.model_dump(mode="json")

    get_session_async = get_session

    async def update_session(self, session_id: UUID | str, **changes: Any) -> dict[str, Any] | None:
        """Apply ``title``, ``metadata`` (merged) and/or ``status`` changes; ``None`` if absent.

        A status change is a transition (``InvalidStateError`` if not allowed).
        """
        try:
            session = await self.store.sessions.get(session_id)
            fields = {k: changes.pop(k) for k in ("title", "metadata") if k in changes}
            status = changes.pop("status", None)
            if changes:
                raise TypeError(f"update_session() got unknown fields: {sorted(changes)}")
            if fields:
                session = await self.store.sessions.update(session_id, **fields)
            if status is not None and SessionStatus(status) is not session.status:
                move = getattr(self.store.sessions, _MOVES[SessionStatus(status)])
                session = await move(session_id)
        except NotFoundError:
            return None
        return session.model_dump(mode="json")

    async def list_active_sessions(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """Active sessions (of one user, or all), newest first; expired ones excluded."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await self.store.sessions.list(
                user_id=user_id, status=SessionStatus.ACTIVE, limit=1000, cursor=cursor
            )
            out.extend(s.model_dump(mode="json") for s in page.items)
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    async def cleanup_expired_sessions(self) -> int:
        """Delete expired sessions (in the database, in batches); how many went."""
        return await self.store.sessions.cleanup_expired()

    async def shutdown(self) -> None:
        """Write everything queued, then close the store."""
        await self.store.close()
