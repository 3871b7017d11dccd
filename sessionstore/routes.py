"""Where a conversation lives on the distributed layout (:mod:`sessionstore.distribution`):
its session, found from its continuation id (or its id) before a statement is sent, so
that the statement names the session and Citus routes it to one shard.

``continuations`` holds one route per continuation id: the session and the conversation
id it names. A new conversation claims its route in the transaction that creates it
(two shards, once per conversation); a process remembers the routes it has used, so a
turn of a known conversation is one statement on one shard. A route outlives a deleted
session (its conversations go with the session's shard, the route sits on another): the
next claim by another session finds its conversation gone and takes the route over.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple
from uuid import UUID, uuid4

from .errors import ConflictError, InvalidInputError, SessionStoreError
from .models import Connection, ContinuationId

__all__ = ["LOCK_ROUTE", "RELEASE", "Placement", "Routes"]

# Locks the route (the no-op update), so a concurrent delete or take-over waits for this
# transaction; the route inserted here carries the conversation id $3, so ``claimed``
# says whether it is new.
CLAIM = """
INSERT INTO continuations AS r (continuation_id, session_id, conversation_id)
VALUES ($1, $2, $3)
ON CONFLICT (continuation_id) DO UPDATE SET continuation_id = r.continuation_id
RETURNING session_id, conversation_id, conversation_id = $3 AS claimed
"""
FIND = "SELECT session_id, conversation_id FROM continuations WHERE continuation_id = $1"
# By conversation id: every shard is asked (a continuation id is what routes).
FIND_BY_ID = "SELECT session_id, continuation_id FROM conversations WHERE id = $1"
HELD = "SELECT EXISTS (SELECT 1 FROM conversations WHERE session_id = $1 AND id = $2)"
TAKE_OVER = """
UPDATE continuations SET session_id = $2, conversation_id = $3 WHERE continuation_id = $1
"""
LOCK_ROUTE = "SELECT 1 FROM continuations WHERE continuation_id = $1 FOR UPDATE"
# A deleted conversation's route (only if it still names it).
RELEASE = "DELETE FROM continuations WHERE continuation_id = $1 AND conversation_id = $2"

#: Routes a process remembers (least recently used go first).
_REMEMBERED = 10_000


class Placement(NamedTuple):
    """A conversation's place: its session (the shard) and ids."""

    session_id: UUID
    conversation_id: UUID
    continuation_id: str


class Routes:
    """The routes of one store: claimed, found and remembered."""

    def __init__(self) -> None:
        self._known: OrderedDict[str, Placement] = OrderedDict()
        self._by_id: dict[UUID, str] = {}

    def cached(self, conversation: UUID | str) -> Placement | None:
        """The remembered place of ``conversation`` (a continuation id or an id)."""
        cont = self._by_id.get(conversation) if isinstance(conversation, UUID) else conversation
        place = None if cont is None else self._known.get(cont)
        if place is not None:
            self._known.move_to_end(place.continuation_id)
        return place

    def remember(self, place: Placement) -> None:
        """Remember ``place`` (after a statement found the conversation there)."""
        self.forget(place.continuation_id)
        self._known[place.continuation_id] = place
        self._by_id[place.conversation_id] = place.continuation_id
        while len(self._known) > _REMEMBERED:
            _, old = self._known.popitem(last=False)
            self._by_id.pop(old.conversation_id, None)

    def forget(self, continuation_id: str) -> None:
        """Forget the place of ``continuation_id`` (gone, or found stale)."""
        place = self._known.pop(continuation_id, None)
        if place is not None:
            self._by_id.pop(place.conversation_id, None)

    async def find(
        self, conn: Connection, conversation: UUID | str, *, fresh: bool = False
    ) -> Placement | None:
        """The place of an existing conversation, remembered or (``fresh``: always)
        asked (``None``: none). A remembered place may be stale: a statement that finds
        nothing there should :meth:`forget` it and ask again."""
        place = None if fresh else self.cached(conversation)
        if place is not None:
            return place
        if isinstance(conversation, UUID):
            row = await conn.fetchrow(FIND_BY_ID, conversation)
            if row is None:
                return None
            return Placement(row["session_id"], conversation, row["continuation_id"])
        row = await conn.fetchrow(FIND, conversation)
        if row is None:
            return None
        return Placement(row["session_id"], row["conversation_id"], conversation)

    async def claim(
        self, conn: Connection, continuation_id: str, session_id: UUID | None
    ) -> tuple[Placement, bool]:
        """The place of ``continuation_id`` for a write by ``session_id``, and whether
        the write must create the conversation (then it must do so in this transaction,
        which holds the route).

        ``ConflictError`` when the conversation is another session's.
        ``InvalidInputError`` (naming ``session_id``) when there is none and no session
        is named: a conversation is placed by its session.
        """
        if session_id is None:
            place = await self.find(conn, ContinuationId(continuation_id))
            if place is None or not await conn.fetchval(
                HELD, place.session_id, place.conversation_id
            ):
                raise InvalidInputError(
                    "session_id",
                    "on the distributed layout a conversation is placed by its session:"
                    f" give the session of new conversation {continuation_id!r}",
                )
            return place, False
        new = uuid4()
        row = await conn.fetchrow(CLAIM, continuation_id, session_id, new)
        if row is None:
            raise SessionStoreError("claiming a continuation id returned no row")
        place = Placement(row["session_id"], row["conversation_id"], continuation_id)
        if row["claimed"]:
            return place, True
        if place.session_id == session_id:
            return place, True  # ours: created again if a delete took it meanwhile
        if await conn.fetchval(HELD, place.session_id, place.conversation_id):
            raise ConflictError(
                f"conversation {continuation_id!r} belongs to another session; a turn of"
                f" session {session_id} cannot be added to it (nothing was written)"
            )
        # The route's conversation went with its session: the route is free. This
        # transaction holds its lock (CLAIM), so no other claim takes it meanwhile.
        await conn.execute(TAKE_OVER, continuation_id, session_id, new)
        return Placement(session_id, new, continuation_id), True
