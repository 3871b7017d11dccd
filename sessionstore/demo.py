"""A scripted run of the library as an MCP server would use it, with a summary.

First one support conversation, call by call (:class:`Step`): a session, turns with
``add_turn(..., context=10)`` whose context is read back in the same round trip, the
assistant's replies through ``enqueue_turn``, the history and the session's counters.
Then the load: concurrent sessions each hold a few conversations and take turns through
``add_turn``; in each session's last conversation the assistant's replies go through the
write-behind queue (``enqueue_turn``) and are flushed before the summary. One session is paused, one
completed, and one expires: it gets a tiny TTL, the demo waits until that has surely
passed, and a turn on it is refused as on any expired session.

Every run works under user ids of its own (``demo-<run>-user-<k>``), reads back only
those users' rows, and deletes them afterwards (``purge_user``), so its numbers describe
this run alone on a database that holds other data or earlier runs. Returns the numbers
so the CLI can print them (the library itself never prints).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import statistics
import time
from dataclasses import dataclass, field, fields
from datetime import timedelta
from uuid import UUID

from .errors import SessionExpiredError
from .models import ContinuationId, Message, MessageRole, PurgeCounts, SessionStatus
from .store import SessionStore

__all__ = [
    "EXPIRING_TTL",
    "SHOWCASE",
    "DemoPlan",
    "DemoReport",
    "Step",
    "describe_changes",
    "run_demo",
    "users_label",
]

logger = logging.getLogger("sessionstore")

#: The expiring session's lifetime: long enough to be created live, short enough that
#: waiting it out costs nothing noticeable.
EXPIRING_TTL = timedelta(milliseconds=100)
#: Sessions are spread over at most this many users, as a server's would be.
_USERS = 5
#: The conversation shown call by call: (role, text, tokens). The user's turns are
#: ``add_turn`` with a context, the assistant's ``enqueue_turn`` (the chat loop).
SHOWCASE: tuple[tuple[MessageRole, str, int], ...] = (
    (MessageRole.USER, "Hi! My order 1042 has not arrived yet.", 11),
    (MessageRole.ASSISTANT, "Sorry about that. It left the warehouse on Monday.", 13),
    (MessageRole.USER, "Can it go to my office instead?", 9),
    (MessageRole.ASSISTANT, "Yes: send me the address and I will change it.", 12),
)


@dataclass(frozen=True)
class DemoPlan:
    """The shape of a demo run: what it writes, so it can be said before it is done.

    The run's users are ``demo-<run_id>-user-<k>``: ids no other run or application uses.
    """

    clients: int = 20
    conversations: int = 3
    turns: int = 5
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def user_ids(self) -> list[str]:
        """The run's users, whose rows are all the run reads, counts and deletes."""
        return [f"demo-{self.run_id}-user-{k}" for k in range(self.users)]

    @property
    def sessions(self) -> int:
        """Sessions written: one per client, plus the conversation shown and the
        expiring, paused and completed ones."""
        return self.clients + 4

    @property
    def users(self) -> int:
        """Distinct demo users the sessions belong to."""
        return min(self.clients, _USERS)

    @property
    def client_messages(self) -> int:
        """Messages the clients write: a question and an answer per turn."""
        return self.clients * self.conversations * self.turns * 2

    @property
    def messages(self) -> int:
        """Every message written: the clients', the conversation shown and the completed
        session's one. Each is one turn of its session."""
        return self.client_messages + len(SHOWCASE) + 1

    @property
    def written_behind(self) -> int:
        """Messages that go through the write-behind queue: the assistant's replies in
        each client's last conversation and in the conversation shown."""
        return self.clients * self.turns + sum(r is MessageRole.ASSISTANT for r, _, _ in SHOWCASE)


@dataclass(frozen=True)
class Step:
    """One call of the conversation shown: its code, what it returned in words, and the
    messages it read back (``turn.context``, ``history``), if any."""

    code: str
    result: str
    messages: list[Message] = field(default_factory=list)


@dataclass
class DemoReport:
    """What the demo did and how fast; every count is of this run's own rows."""

    run_id: str
    sessions_by_status: dict[str, int]
    #: Turns on this run's sessions (their counters: one per message): the clients', the
    #: conversation shown's and the completed session's one.
    turns: int
    tokens: int
    #: Messages stored in this run's conversations (their counters), read back.
    messages: int
    #: Messages accepted through the write-behind queue (``enqueue_turn``), all written.
    written_behind: int
    #: Turns the clients made durable inside the timed window (direct and write-behind).
    timed_turns: int
    seconds: float
    #: Turns refused because their session had expired (the demo tries one).
    refused_expired: int
    latencies_ms: list[float] = field(repr=False)
    #: What was deleted afterwards; ``None`` when the rows were kept.
    removed: PurgeCounts | None = None
    users: list[str] = field(default_factory=list)
    #: The conversation shown, call by call.
    showcase: list[Step] = field(default_factory=list)

    @property
    def turns_per_second(self) -> float:
        """The clients' durable turns per second of the timed window (from the first turn
        to the write-behind queue flushed)."""
        return self.timed_turns / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0–100) of ``add_turn`` latency, in milliseconds."""
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else 0.0
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]


async def _client(
    store: SessionStore, user: str, n: int, plan: DemoPlan, latencies: list[float]
) -> None:
    session = await store.sessions.create(user, title=f"demo session {n}")
    for c in range(plan.conversations):
        continuation = f"demo-{session.id}-{c}"
        behind = c == plan.conversations - 1  # this conversation's replies go write-behind
        for t in range(plan.turns):
            for role, text in (
                (MessageRole.USER, f"question {t}"),
                (MessageRole.ASSISTANT, f"answer {t}"),
            ):
                if behind and role is MessageRole.ASSISTANT:
                    await store.enqueue_turn(
                        continuation, role, text, session_id=session.id, tokens=10 + t
                    )
                    continue
                started = time.perf_counter()
                await store.add_turn(continuation, role, text, session_id=session.id, tokens=10 + t)
                latencies.append((time.perf_counter() - started) * 1000)
        conversation = await store.conversations.get_by_continuation_id(continuation)
        await store.messages.history(conversation.id, limit=20)


async def _showcase(store: SessionStore, user: str, chat: str) -> list[Step]:
    """One support conversation, call by call: what a chat server's code does."""
    session = await store.sessions.create(user, title="support chat")
    steps = [
        Step(
            f'session = await store.sessions.create("{user}", title="support chat")',
            f"session {session.id}: {session.status.value}, turn_count {session.turn_count}",
        ),
        Step(f'chat = "{chat}"', "the conversation's continuation id, chosen by the client"),
    ]
    for role, text, tokens in SHOWCASE:
        args = f'\n    chat, "{role.value}", "{text}",\n    session_id=session.id, tokens={tokens}'
        if role is MessageRole.USER:
            turn = await store.add_turn(
                chat, role, text, session_id=session.id, tokens=tokens, context=10
            )
            steps.append(
                Step(
                    f"turn = await store.add_turn({args}, context=10,\n)",
                    f"stored as message {turn.message.seq}; turn.context, read back in the"
                    " same round trip:",
                    turn.context or [],
                )
            )
        else:
            await store.enqueue_turn(chat, role, text, session_id=session.id, tokens=tokens)
            steps.append(
                Step(
                    f"await store.enqueue_turn({args},\n)",
                    "queued (write-behind): the next add_turn to this chat writes it first",
                )
            )
    await store.flush()
    history = await store.messages.history(ContinuationId(chat), limit=20)
    steps.append(
        Step(
            "history = await store.messages.history(ContinuationId(chat), limit=20)",
            f"{len(history)} messages, oldest first:",
            history,
        )
    )
    session = await store.sessions.get(session.id)
    steps.append(
        Step(
            "session = await store.sessions.get(session.id)",
            f"turn_count {session.turn_count}, total_tokens {session.total_tokens}",
        )
    )
    return steps


async def _messages_of(store: SessionStore, session_id: UUID) -> int:
    """Messages stored in the session's conversations, from their counters."""
    total = 0
    cursor: str | None = None
    while True:
        page = await store.conversations.list_for_session(session_id, limit=100, cursor=cursor)
        total += sum(c.message_count for c in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return total


async def _play(store: SessionStore, plan: DemoPlan, users: list[str]) -> DemoReport:
    shown_before = store.stats().written
    showcase = await _showcase(store, users[0], f"demo-{plan.run_id}-support")
    latencies: list[float] = []
    written_before = store.stats().written
    expiring = await store.sessions.create(users[0], title="expiring", ttl=EXPIRING_TTL)
    # The server set expires_at = now() + TTL before this returned: once the TTL has
    # passed here, it has passed for the server too (whatever its clock reads).
    expires = time.monotonic() + EXPIRING_TTL.total_seconds()
    started = time.perf_counter()
    await asyncio.gather(
        *(_client(store, users[n % len(users)], n, plan, latencies) for n in range(plan.clients))
    )
    await store.flush()
    seconds = time.perf_counter() - started
    behind = store.stats().written - written_before

    paused = await store.sessions.create(users[0], title="paused")
    await store.sessions.pause(paused.id)
    done = await store.sessions.create(users[0], title="completed")
    await store.add_turn(f"demo-{done.id}", MessageRole.USER, "bye", session_id=done.id, tokens=1)
    await store.sessions.complete(done.id)

    # A bounded wait (at most the TTL, usually nothing: the clients took longer).
    await asyncio.sleep(max(0.0, expires - time.monotonic()))
    refused = 0
    try:
        await store.add_turn(
            f"demo-{expiring.id}", MessageRole.USER, "still there?", session_id=expiring.id
        )
    except SessionExpiredError:
        refused = 1  # and the session is now stored as expired, as the library does
    else:
        logger.error("demo: a turn on session %s was taken after its TTL", expiring.id)

    by_status: dict[str, int] = {s.value: 0 for s in SessionStatus}
    turns = tokens = messages = 0
    for user in users:
        cursor: str | None = None
        while True:
            page = await store.sessions.list(user_id=user, limit=100, cursor=cursor)
            for s in page.items:
                by_status[s.status.value] += 1
                turns += s.turn_count
                tokens += s.total_tokens
                messages += await _messages_of(store, s.id)
            cursor = page.next_cursor
            if cursor is None:
                break
    return DemoReport(
        run_id=plan.run_id,
        sessions_by_status=by_status,
        turns=turns,
        tokens=tokens,
        messages=messages,
        written_behind=store.stats().written - shown_before,
        timed_turns=len(latencies) + behind,
        seconds=seconds,
        refused_expired=refused,
        latencies_ms=latencies,
        users=users,
        showcase=showcase,
    )


async def _remove(store: SessionStore, users: list[str]) -> PurgeCounts:
    """Delete everything of the run's users; the summed counts."""
    total = PurgeCounts()
    for user in users:
        counts = await store.purge_user(user)
        total = PurgeCounts(
            **{
                f.name: getattr(total, f.name) + getattr(counts, f.name)
                for f in fields(PurgeCounts)
            }
        )
    return total


def users_label(users: list[str]) -> str:
    """The run's users in short: ``demo-<run>-user-0 to -4``."""
    if len(users) < 2:
        return "".join(users)
    return f"{users[0]} to -{users[-1].rsplit('-', 1)[1]}"


def describe_changes(
    plan: DemoPlan, *, current_revision: str | None, pending: list[str], keep: bool
) -> str:
    """What a run of ``plan`` changes in a database at ``current_revision`` with
    ``pending`` migrations: a clause to follow "this will" (the CLI asks with it)."""
    if not pending:
        schema = "use the sessionstore tables (up to date: nothing to migrate)"
    elif current_revision is None:
        schema = (
            "create the sessionstore tables where missing (sessionstore migrate:"
            f" {len(pending)} revisions, up to {pending[-1]})"
        )
    else:
        schema = (
            f"upgrade the sessionstore tables from {current_revision} to {pending[-1]}"
            f" (sessionstore migrate: {len(pending)} revisions)"
        )
    users = users_label(plan.user_ids)
    rows = f"write {plan.sessions} demo sessions with {plan.messages} messages (users {users})"
    after = "and keep them (--keep)" if keep else "then delete them"
    return f"{schema}, and {rows} {after}"


async def run_demo(
    store: SessionStore, plan: DemoPlan | None = None, *, keep: bool = False
) -> DemoReport:
    """Simulate ``plan.clients`` concurrent sessions and summarise what this run wrote.

    Only the plan's users' rows are read and counted; they are deleted afterwards unless
    ``keep`` (also when the run fails, as far as the database lets).
    """
    plan = plan or DemoPlan()
    users = plan.user_ids
    try:
        report = await _play(store, plan, users)
    except BaseException:
        if not keep:
            try:
                await _remove(store, users)
            except Exception:
                # The run's own failure is the one to report; say what may be left.
                logger.warning(
                    "demo: could not delete the rows of users %s", ", ".join(users), exc_info=True
                )
        raise
    if not keep:
        report.removed = await _remove(store, users)
    return report
