"""The queued messages repository: :class:`~sessionstore.repositories.MessagesRepository`
plus write-behind appends (``enqueue``) and read-your-writes on ``history``; and the
conversations repository whose ``fork`` sees every message accepted before it."""

from __future__ import annotations

import asyncio
from typing import Unpack
from uuid import UUID

from .. import validation as v
from ..cache import SessionCache
from ..db import Database
from ..errors import NotFoundError, WriteBehindError
from ..models import (
    ContinuationId,
    Conversation,
    ConversationRef,
    Message,
    MessageOptions,
    PendingWrite,
    Role,
)
from ..repositories.conversations import (
    ConversationsRepository,
    conversation_missing,
    fetch_placed,
)
from ..repositories.message_sql import read_messages
from ..repositories.messages import HISTORY_WITH_WAITING, MessagesRepository
from ..telemetry import traced, traced_sync
from .engine import Writer
from .items import accept, by_ticket
from .readyourwrites import as_messages, merged

__all__ = ["QueuedConversationsRepository", "QueuedMessagesRepository"]

_MESSAGE_OPTIONS = MessageOptions.__optional_keys__


class QueuedMessagesRepository(MessagesRepository):
    """:class:`MessagesRepository` plus write-behind appends (the service path only:
    ``as_user`` views have no write-behind queue)."""

    def __init__(self, db: Database, writer: Writer, cache: SessionCache | None = None) -> None:
        super().__init__(db, cache)
        self._writer = writer

    async def _page(
        self,
        ref: UUID | ContinuationId,
        size: int,
        upper: int,
        sid: UUID | None,
        budget: int | None,
        everything: bool = False,
    ) -> list[Message]:
        """:meth:`MessagesRepository.history`, with read-your-writes: messages this process
        accepted for write-behind and has not yet made durable are included, after the
        stored ones, in the order they will be written (see
        :mod:`sessionstore.writebehind.readyourwrites`).

        A conversation that exists only in the queue (``enqueue_turn`` to a new
        continuation id) is read after the writer's next batch has created it. With a
        session, a conversation not bound to it raises ``NotFoundError``, and none of its
        waiting messages is returned either.
        """
        index = self._writer.pending
        if not index:
            return await super()._page(ref, size, upper, sid, budget, everything)
        db = self._db
        given = (size, upper)
        with index.reading() as mark:
            waiting = index.matching(ref)
            ids = [w.id for w in waiting]
            rows = await fetch_placed(
                db, HISTORY_WITH_WAITING, ref, *given, ids, sid, budget, everything, retry=True
            )
            if not rows:
                if not waiting:
                    raise conversation_missing(ref)
                await self._created_by_queue(ref)
                return await super()._page(ref, size, upper, sid, budget, everything)
            if not rows[0]["readable"]:  # not this session's: refused like a missing one
                raise conversation_missing(ref)
            head = rows[0]
            # Named by the conversation's other key (perhaps written, after this read's
            # snapshot, by a batch that has left the index since: hence ``since``), or
            # accepted during the read: judged by a second read, so that every message is
            # judged by the same snapshot as the stored page it is merged into. (A message
            # judged by another snapshot could be written in between and show in neither.)
            known = set(ids)
            more = index.matching(head["conv_id"], head["conv_continuation"], since=mark)
            if any(w.id not in known for w in more):
                waiting = sorted({w.id: w for w in [*waiting, *more]}.values(), key=by_ticket)
                ids = [w.id for w in waiting]
                rows = await fetch_placed(
                    db, HISTORY_WITH_WAITING, ref, *given, ids, sid, budget, everything, retry=True
                )
                if not rows:  # deleted in between (a bound conversation stays this session's)
                    raise conversation_missing(ref)
                head = rows[0]
            stored = set(head["stored"])
            later = [w for w in waiting if w.id not in stored]
        durable = [] if head["id"] is None else await read_messages(self._db, rows)
        return merged(
            durable,
            as_messages(later, head["conv_id"], head["conv_count"]),
            limit=size,
            before=upper,
            budget=budget,
        )

    async def _created_by_queue(self, ref: UUID | ContinuationId) -> None:
        """Wait, at most ``command_timeout``, for the writer to create the conversation
        that so far exists only in the queue (``enqueue_turn`` to a new continuation id)."""
        bound = self._db.config.command_timeout or self._db.config.connect_timeout
        try:
            async with asyncio.timeout(bound):
                await self._writer.flush()
        except (TimeoutError, WriteBehindError):
            raise NotFoundError(
                f"{conversation_missing(ref)}: it exists only in the write-behind queue, "
                f"whose next batch was not written within {bound}s"
            ) from None

    @traced("messages")
    async def pop(self, conversation_id: ConversationRef) -> Message | None:
        """:meth:`MessagesRepository.pop`, after this process's write-behind messages are
        durable (the latest accepted message is the one removed)."""
        await self._settle(conversation_id)
        return await super().pop(conversation_id)

    @traced("messages")
    async def clear(self, conversation_id: ConversationRef) -> int:
        """:meth:`MessagesRepository.clear`, after this process's write-behind messages
        are durable (none of them is left to land after the clear)."""
        await self._settle(conversation_id)
        return await super().clear(conversation_id)

    async def _settle(self, conversation_id: ConversationRef) -> None:
        """Make this process's write-behind messages durable first (``compact``, too)."""
        await _settle(self._writer, conversation_id)

    def _pending(
        self, conversation_id: ConversationRef, role: Role, content: str, options: MessageOptions
    ) -> PendingWrite:
        cid = v.conversation(conversation_id)
        fields = v.message(role, content, options, _MESSAGE_OPTIONS)
        if isinstance(cid, ContinuationId):  # resolved by the batch that writes it
            return accept("message", fields, continuation_id=str(cid))
        return accept("message", fields, conversation_id=cid)

    @traced("messages", kind="internal")
    async def enqueue(
        self,
        conversation_id: ConversationRef,
        role: Role,
        content: str,
        **options: Unpack[MessageOptions],
    ) -> UUID:
        """Accept a message for write-behind and return its id at once. The keyword
        options (:class:`~sessionstore.MessageOptions`): ``metadata``, ``tokens``.

        It is durable after ``store.flush()`` or ``store.close()``; if the queue is full
        this waits for room (nothing is dropped). Input is checked here, before
        acceptance; a conversation that does not exist is found at write time and the
        message set aside (the store's :meth:`~sessionstore.SessionStore.stats` count it,
        and ``connect(on_write_error=...)`` is called with it).
        """
        item = self._pending(conversation_id, role, content, options)
        await self._writer.put(item)
        return item.id

    @traced_sync("messages")
    def enqueue_nowait(
        self,
        conversation_id: ConversationRef,
        role: Role,
        content: str,
        **options: Unpack[MessageOptions],
    ) -> UUID:
        """Like :meth:`enqueue` (keyword options ``metadata``, ``tokens``), but raise
        ``QueueFullError`` instead of waiting."""
        item = self._pending(conversation_id, role, content, options)
        self._writer.put_nowait(item)
        return item.id


async def _settle(writer: Writer, conversation_id: ConversationRef) -> None:
    """Make every message ``writer`` holds durable, before a call that must see them all."""
    v.conversation(conversation_id)  # bad input is refused before waiting
    if writer.pending:
        await writer.flush()


class QueuedConversationsRepository(ConversationsRepository):
    """:class:`ConversationsRepository` on the service path, beside the write-behind
    queue: a fork first makes this process's queued messages durable."""

    def __init__(self, db: Database, writer: Writer) -> None:
        super().__init__(db)
        self._writer = writer

    @traced("conversations")
    async def fork(
        self,
        conversation_id: ConversationRef,
        *,
        continuation_id: str,
        session_id: UUID | str | None = None,
        through_seq: int | None = None,
    ) -> Conversation:
        """:meth:`ConversationsRepository.fork`, after this process's write-behind
        messages are durable (as for ``messages.pop``): a fork holds every message
        accepted before the call, and a ``through_seq`` read from ``history`` (which
        shows queued messages) names a stored message. ``WriteBehindError`` if they
        cannot be written within ``write_deadline`` (nothing is forked then)."""
        await _settle(self._writer, conversation_id)
        return await super().fork(
            conversation_id,
            continuation_id=continuation_id,
            session_id=session_id,
            through_seq=through_seq,
        )
