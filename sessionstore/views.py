"""What the store and its user views share (``_Scope``: sessions, conversations,
``add_turn``, ``purge_user``, ``prune``), and ``UserView``, the store's repositories
under row-level security as one user."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Unpack

from . import telemetry
from .cache import SessionCache
from .db import Database
from .models import AddTurnOptions, AfterTurn, PruneCounts, PurgeCounts, Role, Turn
from .prune import count_prunable, prune
from .purge import purge_user
from .repositories import ConversationsRepository, MessagesRepository, SessionsRepository
from .repositories.checkpoints import CheckpointsRepository
from .repositories.states import StatesRepository
from .turns import add_turn
from .writebehind.engine import Writer

__all__ = ["UserView"]


class _Scope:
    """What the store and its user views both offer: sessions, conversations and
    ``add_turn`` over one database handle (the service's, or a user's under RLS)."""

    sessions: SessionsRepository
    """The sessions: create, read, list, update, lifecycle, delete."""
    conversations: ConversationsRepository
    """The conversations, found by id or by continuation id."""
    states: StatesRepository
    """The framework adapters' state (Google ADK's app, user and session scopes)."""

    def __init__(self, db: Database, cache: SessionCache | None = None) -> None:
        self._db = db
        self._cache = cache
        self.sessions = SessionsRepository(db, cache)
        self.conversations = ConversationsRepository(db)
        self.states = StatesRepository(db)
        # LangGraph's threads and checkpoints, for the checkpointer in
        # sessionstore.integrations.langgraph, which checks every argument first.
        self._checkpoints = CheckpointsRepository(db)
        self._writer: Writer | None = None  # write-behind: the service store's only

    async def add_turn(
        self,
        continuation_id: str,
        role: Role,
        content: str,
        *,
        after: AfterTurn | None = None,
        **options: Unpack[AddTurnOptions],
    ) -> Turn:
        """Get-or-create the conversation ``continuation_id``, append the message and, with
        ``session_id``, count the turn on the session — in one round trip and one
        transaction.

        ``continuation_id`` is the conversation's key, chosen by the client (a plain
        ``str`` here; the methods that take a conversation by either id want it wrapped:
        ``ContinuationId(continuation_id)``). ``role`` is a :class:`~sessionstore.MessageRole`
        or its value. The keyword options (:class:`~sessionstore.AddTurnOptions`):
        ``session_id`` (the session the turn counts on), ``metadata``, ``tokens``,
        ``message_id`` (a resend with the same id returns the stored turn) and
        ``context`` (the conversation's latest messages, returned as ``Turn.context`` in
        the same round trip) and ``context_tokens`` (only the latest that fit that many
        tokens, this message always included); ``after`` is below.

        The session must exist, be active and not expired (``NotFoundError``,
        ``InvalidStateError``, ``SessionExpiredError``), and a conversation bound to another
        session refuses the turn (``ConflictError``; when both refuse, the session's error
        is raised); otherwise nothing is written. With sliding expiry configured, the
        session's ``expires_at`` moves forward. Under row-level security (``as_user``) the
        turn takes two statements in one transaction.

        ``after`` is the hook the framework adapters use to write what belongs to a turn
        (the ADK adapter: an event's state delta, through
        :func:`sessionstore.repositories.states.write_states`). It is awaited as
        ``after(conn, turn, written)`` on the turn's connection, inside the turn's
        transaction, once the turn is written — or found stored: a resend of the same
        ``message_id`` gives ``written=False``, so that nothing is applied twice. What
        it writes commits with the turn or not at all; an exception it raises rolls the
        turn back and propagates (a database error translated like any other). With
        ``after`` the call is one transaction of two or more statements; a resend racing
        its original is sent again in a new transaction, where it finds the turn stored
        (``written=False``). ``after`` is
        trusted application code with the raw connection: it must not end the
        transaction or change its role (under ``as_user`` that would leave row-level
        security); anything not callable is refused before anything is sent.

        On the service store, messages this process queued for the same conversation
        (``enqueue_turn`` by continuation id, ``messages.enqueue`` by ``ContinuationId``)
        and not yet written are written first, in order, in the same statement: the chat
        loop ``add_turn(user, context=N)`` … ``enqueue_turn(reply)`` stores every turn in
        order and the next context holds the reply, at one blocking round trip per turn.
        """
        return await self._turn(continuation_id, role, content, after, options)

    @telemetry.traced(operation="add_turn")  # every add_turn, with or without a hook, runs here
    async def _turn(
        self,
        continuation_id: str,
        role: Role,
        content: str,
        after: AfterTurn | None,
        options: AddTurnOptions,
    ) -> Turn:
        """``add_turn``, with ``after`` run in the turn's transaction (the framework
        adapters write what belongs to the turn there: it commits with it or not at all)."""
        turn = await add_turn(
            self._db, continuation_id, role, content, after=after, queue=self._writer, **options
        )
        if self._cache is not None and turn.session is not None:
            self._cache.put(turn.session)
        return turn

    @telemetry.traced()
    async def purge_user(
        self,
        user_id: str,
        *,
        batch_size: int = 1000,
        on_progress: Callable[[PurgeCounts], None] | None = None,
    ) -> PurgeCounts:
        """Delete every session of ``user_id`` with its conversations and messages, in
        batches of at most ``batch_size`` rows (short transactions: other users' writes
        keep going); return the counts. ``on_progress`` gets the running counts.

        Under ``as_user`` the policies apply: a user can purge only their own data.

        First of all the user's data key (encryption at rest) is destroyed: their
        encrypted messages are unreadable from then on, in copies of the data too (a
        backup of the key table itself aside: see ``docs/security.md``).
        """
        counts = await purge_user(
            self._db,
            user_id,
            batch_size=batch_size,
            on_progress=on_progress,
            destroy_key=self._may_destroy_key(user_id),
        )
        if counts.sessions and self._cache is not None:
            self._cache.clear()
        return counts

    def _may_destroy_key(self, user_id: str) -> bool:
        """Whether a purge of ``user_id`` from here may destroy their data key."""
        return True

    @telemetry.traced()
    async def prune(
        self,
        *,
        keep_last: int | None = None,
        older_than: timedelta | None = None,
        batch_size: int = 1000,
        on_progress: Callable[[PruneCounts], None] | None = None,
    ) -> PruneCounts:
        """Retention: delete every conversation's oldest messages — all but its latest
        ``keep_last`` and, with ``older_than``, only those created longer ago than that
        — and return the counts. At least one of the two is required (``keep_last=0``
        alone deletes every message); ``keep_last`` is an ``int`` >= 0, ``older_than``
        a positive ``timedelta`` of at most 365,000 days, ``batch_size`` 1 to 10,000
        (``InvalidInputError`` naming the argument, before anything is sent).

        A message goes only with every message before it: with ``older_than`` a
        conversation keeps everything from its first message that is not old enough,
        even older ones after it (times need not rise with ``seq``). What stays of a
        conversation is thus its latest messages, ``seq`` without gaps.

        In batches of at most ``batch_size`` messages, each its own short transaction,
        beside live traffic: a conversation being written to (an append, ``pop``,
        ``clear`` or delete holding it) is passed over rather than waited for, visited
        again at the end, then once more waiting at most 500 ms for it (one at a time);
        one held longer is left for the next run (``PruneCounts.skipped``). An append
        meeting a batch waits for it, then takes the next ``seq``; nothing written
        concurrently is lost. ``on_progress`` gets the running counts after each batch.

        After a prune ``message_count`` is unchanged: it is the ``seq`` of the latest
        message appended, and the next append takes the one after it; ``messages.count``
        then exceeds the rows stored (by the messages pruned), and ``history`` reads only
        what is stored. ``total_tokens`` drops by the tokens of the messages deleted (it
        counts what is stored, as after ``pop``); ``last_message_at`` stays the time of
        the latest append, even when that message is pruned. The sessions' counters are
        not lowered. A resend of a turn whose message was pruned (same ``message_id``) is
        written again, as a new message.

        Under ``as_user`` only that user's conversations are pruned (row-level security);
        on the service store every conversation, unbound ones included.
        """
        return await prune(
            self._db,
            keep_last=keep_last,
            older_than=older_than,
            batch_size=batch_size,
            on_progress=on_progress,
        )

    @telemetry.traced()
    async def count_prunable(
        self, *, keep_last: int | None = None, older_than: timedelta | None = None
    ) -> int:
        """How many messages :meth:`prune` with these arguments would delete now (under
        ``as_user``, of that user's conversations); the arguments are checked as
        ``prune`` checks them. ``sessionstore prune --dry-run`` prints it. Read-only,
        counted 2,000 conversations per statement (no statement grows with the table),
        so the total is the sum of several moments, not one snapshot."""
        return await count_prunable(self._db, keep_last=keep_last, older_than=older_than)


class UserView(_Scope):
    """The store's repositories run under row-level security as one Supabase user.

    Every operation is its own transaction that sets ``request.jwt.claims`` and the
    ``authenticated`` role locally, so the database's policies decide what is visible:
    other users' rows read as absent (``NotFoundError``, empty pages) and writes the
    policies refuse raise ``PermissionDeniedError``. There is no write-behind here:
    ``messages`` has the durable methods only.
    """

    messages: MessagesRepository
    """The messages, durable methods only."""
    user_id: str
    """The Supabase user every operation runs as."""

    def __init__(self, db: Database, user_id: str) -> None:
        super().__init__(db)
        self.messages = MessagesRepository(db)
        self.user_id = user_id

    def _may_destroy_key(self, user_id: str) -> bool:
        # The key is deleted on the service path: a user may erase only their own.
        return user_id == self.user_id
