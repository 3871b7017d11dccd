"""The fuzzer's shared model of the world: settings, the model of one call
(:class:`Expect`, :class:`Outcome`), the :class:`World` that sets up rows with plain SQL
and checks the property, the checks of returned models, ids as the tests pass them, and
the strategies and verdicts several properties share. The properties are in the
``test_*`` modules beside it, one per part of the public API; see ``__init__.py``.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import asyncpg
from hypothesis import HealthCheck, Phase, example, settings
from hypothesis import strategies as st

from sessionstore import (
    ContinuationId,
    Conversation,
    InvalidInputError,
    Message,
    NotFoundError,
    Page,
    Session,
    SessionStore,
    SessionStoreError,
    UserView,
)

from ..strategies import (
    CANARY,
    HOSTILE_IDS,
    HOSTILE_TEXT,
    INT4_MAX,
    INTS,
    METADATA,
    WRONG_TYPES,
    Deep,
    Forged,
    Verdict,
    identifier_verdict,
    int_verdict,
    metadata_shape,
    same_json,
    text_verdict,
    uuid_verdict,
)

OK, EITHER, BAD = Verdict.OK, Verdict.EITHER, Verdict.BAD

# --- counting cases --------------------------------------------------------------------------

#: Examples run per property (each example is one or more calls).
CASES: Counter[str] = Counter()
#: Every property test (in the ``test_*`` modules), by the name it counts under.
PROPERTIES = (
    "sessions.create",
    "sessions.update",
    "sessions.counters",
    "sessions.lifecycle",
    "sessions.list",
    "sessions.cleanup",
    "purge_user",
    "prune",
    "prune.as_user",
    "states",
    "conversations",
    "conversations.list",
    "forks",
    "messages",
    "compaction",
    "add_turn",
    "write_behind",
    "as_user",
    "foreign_rows",
    "store.lifecycle",
    "replay",
    "connect",
)
MIN_TOTAL_CASES = 2500


def fuzz(examples: int) -> settings:
    """Reproducible settings (derandomized, no example database) for ``examples`` cases."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


#: Explicit examples only (see :func:`cases`): a failing one does not stop the
#: generated examples of the property's main test from running.
named = settings(
    deadline=None,
    database=None,
    print_blob=False,
    phases=[Phase.explicit],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TestFn = TypeVar("TestFn", bound=Callable[..., Any])


def cases(defaults: dict[str, Any], *variants: dict[str, Any]) -> Callable[[TestFn], TestFn]:
    """Explicit examples (run before the generated ones, every time): ``defaults``
    updated with each of ``variants``. They pin the cases the issue names."""

    def apply(test: TestFn) -> TestFn:
        for variant in reversed(variants):
            test = example(**{**defaults, **variant})(test)
        return test

    return apply


#: Metadata the issues name: each must be refused, except the literal ``\u0000``, 100
#: levels and 4,300 digits.
NAMED_METADATA: list[dict[str, Any]] = [
    {"metadata": {"a": {1: "x", "1": "y"}}},
    {"metadata": {"x": 1e300}},
    {"metadata": {"x": "\\u0000"}},
    {"metadata": Deep(1000)},
    {"metadata": Deep(100, "leaf")},  # a scalar inside 100 containers: 100 levels, kept
    {"metadata": Deep(101, "leaf")},
    {"metadata": Deep(101, "list")},
    {"metadata": {"x": 10**4300 - 1}},
    {"metadata": {"x": -(10**4300)}},
    {"metadata": Deep(5000, "list")},
    {"metadata": {"x": 10**4400}},
    {"metadata": {"x": float("nan")}},
    {"metadata": {"x": (1, 2)}},
    {"metadata": {"x": {1, 2}}},
    {"metadata": {"x": "\x00"}},
    {"metadata": {"\ud800": 1}},
    {"metadata": {"x": 1e16}},
    {"metadata": {"x": 0.1, "y": 1e-7, "z": 2**64}},
]
#: Text the issue names.
NAMED_TEXT = ["\ud800", "a\x00b", "\\u0000", "x" * 100_000]


# --- the model of one call -------------------------------------------------------------------


class Omitted:
    """An argument left out of the call (distinct from passing ``None``)."""

    def __repr__(self) -> str:
        return "OMITTED"


OMITTED = Omitted()

#: Domain errors a model may predict.
DomainError = type[SessionStoreError]


@dataclass
class Expect:
    """What one call must do, from the oracles and the model of the world.

    ``verdicts``: per argument (a group of names when a refusal may name any of them).
    ``allowed``: domain errors the model allows; ``required``: refusals the model is sure
    of (success is then wrong).
    """

    verdicts: list[tuple[frozenset[str], Verdict]] = field(default_factory=list)
    allowed: tuple[DomainError, ...] = ()
    required: tuple[DomainError, ...] = ()

    def arg(self, names: str | tuple[str, ...], verdict: Verdict) -> Expect:
        group = frozenset((names,) if isinstance(names, str) else names)
        self.verdicts.append((group, verdict))
        return self

    def allow(self, *errors: DomainError) -> Expect:
        self.allowed += errors
        return self

    def require(self, *errors: DomainError) -> Expect:
        """The call must fail with one of ``errors`` (or refuse a doubtful argument)."""
        self.allowed += errors
        self.required = self.required + errors if self.required else errors
        return self

    @property
    def bad(self) -> list[frozenset[str]]:
        return [names for names, v in self.verdicts if v is BAD]

    @property
    def refusable(self) -> frozenset[str]:
        names: set[str] = set()
        for group, verdict in self.verdicts:
            if verdict is not OK:
                names |= group
        return frozenset(names)


def names_argument(field_name: str, names: frozenset[str]) -> bool:
    """``field_name`` names one of ``names`` (``messages[2].content`` names ``messages``)."""
    return any(field_name == n or field_name.startswith((f"{n}[", f"{n}.")) for n in names)


@dataclass
class Outcome:
    result: Any = None
    error: SessionStoreError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


FINGERPRINT = " UNION ALL ".join(
    f"SELECT '{table}', count(*), md5(coalesce(string_agg(ctid::text || ':' || xmin::text,"
    f" ',' ORDER BY ctid), '')) FROM {table}"
    for table in ("sessions", "conversations", "messages")
)


PERSIST_DUE_EXPIRY = """
UPDATE sessions SET status = 'expired', version = version + 1
WHERE status IN ('active', 'paused') AND expires_at <= now()
"""


@dataclass(frozen=True)
class S:
    """A session to set up: ``state`` is a status, or ``expired`` (active, past its
    ``expires_at``), or ``completed-past`` (completed, past its ``expires_at``)."""

    user_id: str = "fuzz-user"
    state: str = "active"
    created_at: datetime | None = None


@dataclass(frozen=True)
class C:
    """A conversation to set up, bound to ``session`` (an index into the sessions set up
    with it, or an id), with ``messages`` messages."""

    continuation_id: str | None = None
    session: int | UUID | None = None
    messages: int = 0
    created_at: datetime | None = None


BUILD = """
WITH s AS (
    INSERT INTO sessions (id, user_id, title, status, metadata, expires_at, created_at)
    SELECT id, u, 'old', CASE st WHEN 'expired' THEN 'active' WHEN 'completed-past'
                                 THEN 'completed' ELSE st END,
           '{"keep": 1, "x": "old"}',
           now() + CASE WHEN st IN ('expired', 'completed-past') THEN interval '-1 second'
                        ELSE interval '1 day' END,
           coalesce(ca, now())
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) AS t(id, u, st, ca)
),
c AS (
    INSERT INTO conversations (id, continuation_id, session_id, title, metadata,
                               message_count, total_tokens, last_message_at, created_at)
    SELECT id, cont, sid, 'old', '{"c": 1}', k, k * (k + 1) / 2,
           CASE WHEN k > 0 THEN now() END, coalesce(ca, now())
    FROM unnest($5::uuid[], $6::text[], $7::uuid[], $8::int[], $9::timestamptz[])
         AS t(id, cont, sid, k, ca)
)
INSERT INTO messages (conversation_id, seq, role, content, metadata, tokens)
SELECT t.id, g, 'user', 'seed ' || g, jsonb_build_object('g', g), g
FROM unnest($5::uuid[], $8::int[]) AS t(id, k), generate_series(1, t.k) AS g
"""


class World:
    """The store under test, a direct connection to its database, and helpers that set up
    rows with plain SQL (as another client would) and read them back."""

    serial = itertools.count()

    def __init__(self, store: SessionStore | UserView, conn: asyncpg.Connection) -> None:
        self.store = store
        self.api: Any = store  # typed Any: the calls break the signatures on purpose
        self.conn = conn

    @staticmethod
    def fresh(prefix: str) -> str:
        return f"{prefix}-{next(World.serial)}"

    async def fingerprint(self) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.fetch(FINGERPRINT)]

    async def metadata_verdict(self, value: object, *, optional: bool = True) -> Verdict:
        """:func:`metadata_shape`, and for values with floats: what jsonb gives back."""
        verdict, ask = metadata_shape(value, optional=optional)
        if ask:
            try:
                # As the library sends it (ensure_ascii=False): a \u escape above ASCII is
                # refused by a database whose encoding is not UTF8 (CI's container image
                # is SQL_ASCII), where the raw character is stored.
                stored = await self.conn.fetchval(
                    "SELECT $1::jsonb::text", json.dumps(value, ensure_ascii=False)
                )
            except asyncpg.PostgresError:
                return BAD
            if not same_json(value, json.loads(stored)):
                return BAD  # jsonb would change it (1e300 comes back as an integer)
        return verdict

    async def attempt(self, call: Callable[[], object], expect: Expect) -> Outcome:
        """Run ``call`` and check the property; return what it returned or raised."""
        # A refused write persists an expiry that is already due (docs/design.md): that
        # is the store recording what every read already shows, not the call's write.
        # Persisting due expiries first keeps "a refused call writes nothing" exact.
        await self.conn.execute(PERSIST_DUE_EXPIRY)
        before = await self.fingerprint()
        error: Exception | None = None
        try:
            result = call()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            error = exc
        if isinstance(error, InvalidInputError):
            refusable = expect.refusable
            assert refusable, f"refused valid input: field {error.field!r}: {error}"
            assert names_argument(error.field, refusable), (
                f"InvalidInputError names {error.field!r}, not one of {sorted(refusable)}: {error}"
            )
            assert CANARY not in str(error), f"the error echoes the value: {str(error)[:200]!r}"
            assert await self.fingerprint() == before, f"refused ({error.field}) yet wrote"
            return Outcome(error=error)
        if isinstance(error, SessionStoreError):
            assert not expect.bad, (
                f"{type(error).__name__} instead of InvalidInputError for {expect.bad}: {error}"
            )
            assert isinstance(error, expect.allowed), f"unexpected {type(error).__name__}: {error}"
            after = await self.fingerprint()
            assert after == before, f"refused ({type(error).__name__}) yet wrote: {error}"
            return Outcome(error=error)
        if error is not None:
            # Re-raised as it is, so that hypothesis tells distinct escapes apart (by type
            # and place); the note says why it fails the property.
            error.add_note(
                "fuzz property: only InvalidInputError, NotFoundError or the domain error"
                f" the model predicts may escape, not {type(error).__name__}"
            )
            raise error
        assert not expect.bad, f"accepted invalid {[sorted(g) for g in expect.bad]}"
        assert not expect.required, f"succeeded; expected {[e.__name__ for e in expect.required]}"
        return Outcome(result=result)

    # -- rows, set up and read with plain SQL ---------------------------------------------------

    async def build(
        self, sessions: Sequence[S] = (), conversations: Sequence[C] = ()
    ) -> tuple[list[UUID], list[UUID]]:
        """Insert ``sessions`` and ``conversations`` (with their messages, counters kept)
        in one statement, as another client would; return their ids."""
        sids = [uuid4() for _ in sessions]
        cids = [uuid4() for _ in conversations]
        owners = [
            sids[c.session] if isinstance(c.session, int) else c.session for c in conversations
        ]
        await self.conn.execute(
            BUILD,
            sids,
            [s.user_id for s in sessions],
            [s.state for s in sessions],
            [s.created_at for s in sessions],
            cids,
            [c.continuation_id or self.fresh("conv") for c in conversations],
            owners,
            [c.messages for c in conversations],
            [c.created_at for c in conversations],
        )
        return sids, cids

    async def session(
        self,
        user_id: str = "fuzz-user",
        state: str = "active",
        *,
        created_at: datetime | None = None,
    ) -> UUID:
        """A session in ``state`` (see :class:`S`)."""
        (sid,), _ = await self.build([S(user_id, state, created_at)])
        return sid

    async def conversation(
        self,
        continuation_id: str | None = None,
        session_id: UUID | None = None,
        *,
        messages: int = 0,
        created_at: datetime | None = None,
    ) -> UUID:
        """A conversation with ``messages`` messages."""
        _, (cid,) = await self.build([], [C(continuation_id, session_id, messages, created_at)])
        return cid

    async def messages_of(self, cid: UUID) -> int:
        """How many messages the conversation holds, counted."""
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM messages WHERE conversation_id = $1", cid
            )
        )

    async def row(self, table: str, row_id: object) -> asyncpg.Record | None:
        return await self.conn.fetchrow(f"SELECT * FROM {table} WHERE id = $1", row_id)

    async def conversation_by(self, value: object) -> UUID | None:
        """The conversation ``value`` names: by id, else by continuation id."""
        _, parsed = uuid_verdict(value)
        if parsed is not None:
            found = await self.conn.fetchval("SELECT id FROM conversations WHERE id = $1", parsed)
            if found is not None:
                return UUID(str(found))
        if text_verdict(value) is OK:
            found = await self.conn.fetchval(
                "SELECT id FROM conversations WHERE continuation_id = $1", value
            )
            return None if found is None else UUID(str(found))
        return None

    async def session_state(self, sid: UUID | None) -> str:
        """``missing``, ``expired`` (past its time or marked), or the stored status."""
        if sid is None:
            return "missing"
        state = await self.conn.fetchval(
            "SELECT CASE WHEN status IN ('active', 'paused') AND expires_at <= now()"
            " THEN 'expired' ELSE status END FROM sessions WHERE id = $1",
            sid,
        )
        return "missing" if state is None else str(state)


def utc(value: datetime | None) -> bool:
    """A timestamp the library hands out: ``None`` or aware UTC."""
    return value is None or value.utcoffset() == timedelta(0)


def check_session(session: Session, row: asyncpg.Record) -> None:
    """A returned session says what the row holds."""
    assert session.id == row["id"]
    assert session.user_id == row["user_id"]
    assert session.title == row["title"]
    assert same_json(json.loads(row["metadata"]), session.metadata), "session metadata differs"
    assert (session.turn_count, session.total_tokens) == (row["turn_count"], row["total_tokens"])
    assert session.version == row["version"]
    assert (session.created_at, session.updated_at) == (row["created_at"], row["updated_at"])
    assert session.expires_at == row["expires_at"]
    assert all(utc(t) for t in (session.created_at, session.updated_at, session.expires_at))


def check_conversation(conversation: Conversation, row: asyncpg.Record) -> None:
    assert conversation.id == row["id"]
    assert conversation.continuation_id == row["continuation_id"]
    assert conversation.session_id == row["session_id"]
    assert conversation.title == row["title"]
    assert same_json(json.loads(row["metadata"]), conversation.metadata), "metadata differs"
    assert conversation.message_count == row["message_count"]
    assert conversation.total_tokens == row["total_tokens"]
    assert conversation.last_message_at == row["last_message_at"]
    assert (conversation.forked_from, conversation.forked_at_seq) == (
        row["forked_from"],
        row["forked_at_seq"],
    )
    assert conversation.compacted_through == row["compacted_through"]
    assert all(utc(t) for t in (conversation.created_at, conversation.last_message_at))


def check_message(message: Message, row: asyncpg.Record) -> None:
    assert message.id == row["id"]
    assert message.conversation_id == row["conversation_id"]
    assert (message.seq, message.role.value) == (row["seq"], row["role"])
    assert message.content == row["content"], "content differs"
    assert same_json(json.loads(row["metadata"]), message.metadata), "message metadata differs"
    assert message.tokens == row["tokens"]
    assert message.covers_through == row["covers_through"]
    assert utc(message.created_at)


# --- ids as the tests pass them ------------------------------------------------------------


@dataclass(frozen=True)
class Id:
    """A row of the example's world (or ``missing``), passed in one of its spellings."""

    name: str
    form: str = "uuid"

    def spell(self, row_id: UUID | None, continuation_id: str | None = None) -> object:
        target = row_id if row_id is not None else uuid4()
        spellings: dict[str, object] = {
            "uuid": target,
            "str": str(target),
            "upper": str(target).upper(),
            "braced": "{" + str(target) + "}",
            "hex": target.hex,
            "cont": ContinuationId(continuation_id or f"absent-{target}"),
            "plain-cont": continuation_id or f"absent-{target}",
        }
        return spellings[self.form]


FORMS = st.sampled_from(["uuid", "uuid", "str", "upper", "braced", "hex"])


def ids(*names: str, forms: st.SearchStrategy[str] = FORMS) -> st.SearchStrategy[object]:
    """Ids of the named rows (and ``missing``) in any spelling, and hostile raw values."""
    return st.one_of(
        st.builds(Id, st.sampled_from([*names, "missing"]), forms),
        st.builds(Id, st.sampled_from(names), forms),
        HOSTILE_IDS,
    )


def resolve(spec: object, rows: Mapping[str, UUID | None], conts: Mapping[str, str] = {}) -> object:
    """The value to pass for ``spec``."""
    if isinstance(spec, Id):
        return spec.spell(rows.get(spec.name), conts.get(spec.name))
    return spec


async def session_arg(world: World, value: object) -> tuple[Verdict, UUID | None]:
    """The verdict on a session id argument, and the existing session it names."""
    verdict, parsed = uuid_verdict(value)
    if parsed is None:
        return verdict, None
    found = await world.conn.fetchval("SELECT id FROM sessions WHERE id = $1", parsed)
    return verdict, None if found is None else UUID(str(found))


async def conversation_arg(world: World, value: object) -> tuple[Verdict, UUID | None]:
    """The verdict on a conversation argument (its UUID or, per the contract, its
    continuation id, marked as such with ``ContinuationId``), and the conversation it names."""
    if isinstance(value, ContinuationId):
        verdict = identifier_verdict(str(value))
        found = None
        if verdict is not BAD:
            found = await world.conn.fetchval(
                "SELECT id FROM conversations WHERE continuation_id = $1", str(value)
            )
        return verdict, None if found is None else UUID(str(found))
    verdict, parsed = uuid_verdict(value)
    target = await world.conversation_by(value)
    if parsed is None and text_verdict(value) is OK:
        # Not a UUID: a plain string may be refused as malformed, or read as a
        # continuation id (then it must name the right conversation, or none).
        return EITHER, target
    return verdict, target


def expect_target(expect: Expect, target: UUID | None) -> None:
    """A well-formed id that names nothing: ``NotFoundError``."""
    if target is None:
        expect.require(NotFoundError)


# --- strategies and verdicts several properties share --------------------------------------

#: Session titles (``sessions.create``, ``conversations``).
TITLES = st.one_of(st.none(), HOSTILE_TEXT, WRONG_TYPES)

#: Session states to set up (``add_turn``, ``write_behind``, ...).
STATES = st.sampled_from(["active", "active", "paused", "completed", "expired"])


async def walk(
    first: Page[Any], next_page: Callable[[str], Awaitable[Page[Any]]], limit: int, most: int
) -> list[UUID]:
    """Every id of a listing, following ``next_cursor`` from ``first``; at most ``most``
    pages (a listing that never ends fails)."""
    seen: list[UUID] = []
    page = first
    for _ in range(most):
        assert len(page.items) <= limit, "a page longer than its limit"
        seen.extend(item.id for item in page.items)
        if page.next_cursor is None:
            return seen
        assert isinstance(page.next_cursor, str)
        page = await next_page(page.next_cursor)
    raise AssertionError(f"the listing did not end within {most} pages")


CREATED = st.lists(st.sampled_from([0, 0, 1, 2, 3]), max_size=6)
LIMITS = st.one_of(st.integers(1, 4), INTS)


def own_tokens(row: Any) -> int:
    """What a message row counts in a token budget: its tokens, else ⌈UTF-8 bytes / 4⌉."""
    tokens = row["tokens"]
    return int(tokens) if tokens is not None else math.ceil(len(row["content"].encode("utf-8")) / 4)


def within_tokens(newest_first: Sequence[Any], budget: object) -> list[Any]:
    """The oracle of a token budget over message rows (newest first): the newest of
    them whose tokens — ⌈UTF-8 bytes / 4⌉ for a row stored without a count — sum to at
    most ``budget``, cut at the first that would overflow it. ``None``: all."""
    if budget is None:
        return list(newest_first)
    assert isinstance(budget, int)
    kept, spent = [], 0
    for row in newest_first:
        spent += own_tokens(row)
        if spent > budget:
            break
        kept.append(row)
    return kept


def compacted_view(
    rows: Sequence[Any], compacted_through: int | None, *, everything: bool = False
) -> list[tuple[int, Any]]:
    """The oracle of the view a read shows of a conversation's message rows (in ``seq``
    order), with their positions: after a compaction (``compacted_through`` set) the
    live summary — the latest row with ``covers_through`` — at the position of the last
    ``seq`` it covers, then every row without ``covers_through`` after that ``seq``;
    otherwise, or with ``everything``, every row at its ``seq``."""
    summaries = [r for r in rows if r["covers_through"] is not None]
    if everything or compacted_through is None or not summaries:
        return [(r["seq"], r) for r in rows]
    live = summaries[-1]
    through = live["covers_through"]
    later = [(r["seq"], r) for r in rows if r["covers_through"] is None and r["seq"] > through]
    return [(through, live), *later]


def latest_of_view(
    view: Sequence[tuple[int, Any]], *, limit: int, before: int, budget: object
) -> list[Any]:
    """The rows a read of ``view`` returns, oldest first: those placed before ``before``,
    the latest ``limit`` of them, then cut to ``budget`` (see :func:`within_tokens`)."""
    placed = [row for pos, row in view if pos < before][-limit:]
    return within_tokens(placed[::-1], budget)[::-1]


def limit_verdict(value: object, maximum: int = 1000) -> Verdict:
    """A page or batch size: 1 up to a maximum the contract leaves to the library
    (``maximum`` must be accepted; beyond it may be refused)."""
    if type(value) is not int or value < 1:
        return BAD
    return OK if value <= maximum else EITHER


def cursor_value(cursor: object) -> object:
    return cursor.cursor if isinstance(cursor, Forged) else cursor


CALLBACKS = st.one_of(
    st.just(OMITTED), st.none(), st.just("record"), st.sampled_from([42, "print", b"f"])
)


def callback_verdict(value: object) -> Verdict:
    return OK if value in (OMITTED, None, "record") else BAD


CONVERSATION_FORMS = st.sampled_from(
    ["uuid", "str", "upper", "braced", "cont", "cont", "plain-cont"]
)


def conversation_ids(*names: str) -> st.SearchStrategy[object]:
    """Conversation arguments: ids or ``ContinuationId``s of the named rows, hostile
    values, and hostile ``ContinuationId``s."""
    return st.one_of(ids(*names, forms=CONVERSATION_FORMS), st.builds(ContinuationId, HOSTILE_TEXT))


#: Keyword options of an append: the real ones, hostile values, and names that are not options.
UNKNOWN_OPTIONS = st.sampled_from(["token", "session_id", "message_id", "context", "Metadata"])


def options_strategy(*names: str) -> st.SearchStrategy[dict[str, object]]:
    """Keyword options: each of ``names`` left out or given a hostile value, maybe plus an
    option the method does not take."""
    values: dict[str, st.SearchStrategy[object]] = {
        "metadata": METADATA,
        "tokens": st.one_of(st.none(), st.integers(0, 100), INTS),
    }
    return st.builds(
        lambda given, extra: {**given, **extra},
        st.fixed_dictionaries({}, optional={n: values[n] for n in names}),
        st.one_of(
            st.just({}),
            st.just({}),
            st.dictionaries(UNKNOWN_OPTIONS, st.integers(0, 3), max_size=1),
        ),
    )


async def message_verdicts(
    world: World, expect: Expect, options: Mapping[str, object], allowed: frozenset[str]
) -> None:
    for name, value in options.items():
        if name == "metadata":
            expect.arg("metadata", await world.metadata_verdict(value))
        elif name == "tokens":
            expect.arg("tokens", int_verdict(value, 0, INT4_MAX, optional=True))
        elif name == "context" and name in allowed:
            expect.arg("context", OK if value is None else limit_verdict(value))
        elif name == "context_tokens" and name in allowed:
            expect.arg(name, int_verdict(value, 1, INT4_MAX, optional=True))
        else:
            expect.arg(name, BAD)  # not an option of this method
