"""Property-based tests (hypothesis) over every public method.

The property, for every call with hostile arguments (text with NUL and lone surrogates,
metadata with non-string keys, unrepresentable numbers and 20,000 levels of nesting,
ids that are not ids, times beyond every range, wrong types):

* it succeeds, and what is read back equals exactly what was written; or
* it raises ``InvalidInputError`` whose ``field`` is the argument's name, and whose
  message does not echo the value; or
* it raises ``NotFoundError`` (or the domain error the model of the world predicts:
  ``ConflictError``, ``InvalidStateError``, ``SessionExpiredError``);

nothing else; and a refused call writes nothing (every table's row versions, compared
over a direct connection before and after). The oracles that say which arguments must be
accepted and which refused are in ``strategies.py``.

The tests run on pytest-asyncio's session loop: pytest-asyncio runs each example of an
async ``@given`` test on it, and the function-scoped ``store``/``conn`` fixtures live
for the whole test (one database per test; the model reads the current state of the
world before each call, so examples need not be independent). Generation is
derandomized and uses no example database, so every run draws the same cases.

The cases the issue names (``{"x": 1e300}``, ``ttl=timedelta(days=3_000_000)``, a
forged cursor dated 9999-12-31, a 5,000-deep jsonb written with SQL, ...) are pinned as
explicit examples in ``*_named`` twins of the main tests, so that a failing pinned case
does not stop the generated ones from running.

Every example adds one to ``CASES`` under its property's name; ``test_zz_case_count``
(last in the file) checks that the module ran at least ``MIN_TOTAL_CASES`` and the
terminal summary prints the total and the count per property.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import sessionstore
from sessionstore import (
    AddTurnOptions,
    ConflictError,
    ContinuationId,
    Conversation,
    InvalidInputError,
    InvalidStateError,
    Message,
    MessageOptions,
    NotFoundError,
    Page,
    PurgeCounts,
    Session,
    SessionExpiredError,
    SessionStore,
    SessionStoreError,
    StoreStats,
    Turn,
    TurnOptions,
    UserView,
)
from sessionstore.repositories import (
    ConversationsRepository,
    MessagesRepository,
    QueuedMessagesRepository,
    SessionsRepository,
    StatesRepository,
)
from sessionstore.repositories.states import StateDeltas, States, WrittenStates

from .conftest import as_supabase_postgres, store_overrides
from .servers import TestServer
from .strategies import (
    CANARY,
    CURSORS,
    EXPIRES_AT,
    HOSTILE_IDS,
    HOSTILE_TEXT,
    IDENTIFIERS,
    INT4_MAX,
    INTS,
    METADATA,
    ROLES,
    TTLS,
    WRONG_TYPES,
    Deep,
    Forged,
    Verdict,
    cursor_verdict,
    expires_at_verdict,
    identifier_verdict,
    int_verdict,
    metadata_shape,
    real,
    role_verdict,
    same_json,
    text_verdict,
    ttl_verdict,
    uuid_verdict,
    worst,
)

logger = logging.getLogger(__name__)

OK, EITHER, BAD = Verdict.OK, Verdict.EITHER, Verdict.BAD

# --- counting cases --------------------------------------------------------------------------

#: Examples run per property (each example is one or more calls).
CASES: Counter[str] = Counter()
#: Every property test below, by the name it counts under.
PROPERTIES = (
    "sessions.create",
    "sessions.update",
    "sessions.counters",
    "sessions.lifecycle",
    "sessions.list",
    "sessions.cleanup",
    "purge_user",
    "states",
    "conversations",
    "conversations.list",
    "messages",
    "add_turn",
    "write_behind",
    "as_user",
    "foreign_rows",
    "store.lifecycle",
    "replay",
    "connect",
)
MIN_TOTAL_CASES = 2500


class _CaseReport:
    """A plugin registered by this module: reports the number of cases in the summary."""

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if CASES:
            detail = ", ".join(f"{name} {n}" for name, n in sorted(CASES.items()))
            terminalreporter.write_line(
                f"test_fuzz: {sum(CASES.values())} hypothesis cases ({detail})"
            )


@pytest.fixture(autouse=True, scope="module")
def _report_cases(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("sessionstore-fuzz-cases"):
        manager.register(_CaseReport(), "sessionstore-fuzz-cases")


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


_NEG14 = timezone(timedelta(hours=-14))
#: Metadata the issue names: each must be refused, except the literal ``\u0000``.
NAMED_METADATA: list[dict[str, Any]] = [
    {"metadata": {"a": {1: "x", "1": "y"}}},
    {"metadata": {"x": 1e300}},
    {"metadata": {"x": "\\u0000"}},
    {"metadata": Deep(1000)},
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
    assert all(utc(t) for t in (conversation.created_at, conversation.last_message_at))


def check_message(message: Message, row: asyncpg.Record) -> None:
    assert message.id == row["id"]
    assert message.conversation_id == row["conversation_id"]
    assert (message.seq, message.role.value) == (row["seq"], row["role"])
    assert message.content == row["content"], "content differs"
    assert same_json(json.loads(row["metadata"]), message.metadata), "message metadata differs"
    assert message.tokens == row["tokens"]
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


# --- sessions ----------------------------------------------------------------------------------

TITLES = st.one_of(st.none(), HOSTILE_TEXT, WRONG_TYPES)


# What both the generated and the pinned test of this property draw.
_SESSIONS_CREATE_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    user_id=IDENTIFIERS,
    title=TITLES,
    metadata=METADATA,
    ttl=st.one_of(st.just(OMITTED), st.none(), TTLS),
    expires_at=st.one_of(st.just(OMITTED), st.just(OMITTED), EXPIRES_AT),
)


@fuzz(300)
@given(**_SESSIONS_CREATE_DRAWN)
async def test_sessions_create(
    store: SessionStore,
    conn: asyncpg.Connection,
    user_id: object,
    title: object,
    metadata: object,
    ttl: object,
    expires_at: object,
) -> None:
    await check_sessions_create(store, conn, user_id, title, metadata, ttl, expires_at)


@named
@cases(
    {"user_id": "u", "title": None, "metadata": None, "ttl": OMITTED, "expires_at": OMITTED},
    *NAMED_METADATA,
    *({"title": t} for t in NAMED_TEXT),
    {"user_id": "x" * 256},
    {"user_id": " \t"},
    {"ttl": timedelta(days=3_000_000)},
    {"ttl": timedelta.max},
    {"ttl": timedelta.min},
    {"ttl": timedelta(days=36_500)},
    {"expires_at": datetime.max.replace(tzinfo=_NEG14)},
    {"expires_at": datetime(9999, 12, 31, 12, tzinfo=_NEG14)},
    {"expires_at": datetime.min.replace(tzinfo=timezone(timedelta(hours=14)))},
    {"expires_at": datetime(2999, 1, 1)},
    {"expires_at": datetime(2999, 1, 1, tzinfo=UTC), "ttl": None},
)
@given(**_SESSIONS_CREATE_DRAWN)
async def test_sessions_create_named(
    store: SessionStore,
    conn: asyncpg.Connection,
    user_id: object,
    title: object,
    metadata: object,
    ttl: object,
    expires_at: object,
) -> None:
    """The cases the issue names, pinned (reported apart from the generated ones)."""
    await check_sessions_create(store, conn, user_id, title, metadata, ttl, expires_at)


async def check_sessions_create(
    store: SessionStore,
    conn: asyncpg.Connection,
    user_id: object,
    title: object,
    metadata: object,
    ttl: object,
    expires_at: object,
) -> None:
    CASES["sessions.create"] += 1
    metadata = real(metadata)
    world = World(store, conn)
    now = datetime.now(UTC)
    expect = (
        Expect()
        .arg("user_id", identifier_verdict(user_id))
        .arg("title", text_verdict(title, optional=True))
        .arg("metadata", await world.metadata_verdict(metadata))
    )
    options: dict[str, object] = {"title": title, "metadata": metadata}
    if ttl is not OMITTED:
        options["ttl"] = ttl
    if expires_at is not OMITTED:
        options["expires_at"] = expires_at
        if ttl is not OMITTED:
            expect.arg(("ttl", "expires_at"), BAD)  # both: contradictory
        elif expires_at is not None:
            expect.arg("expires_at", expires_at_verdict(expires_at, now))
    elif ttl is not OMITTED and ttl is not None:
        expect.arg("ttl", ttl_verdict(ttl, now))

    out = await world.attempt(lambda: world.api.sessions.create(user_id, **options), expect)
    if not out.ok:
        return
    session: Session = out.result
    row = await world.row("sessions", session.id)
    assert row is not None
    check_session(session, row)
    assert session.user_id == str(user_id)
    assert session.title == title
    assert same_json({} if metadata is None else metadata, session.metadata), "metadata"
    assert (session.turn_count, session.total_tokens) == (0, 0)
    if isinstance(expires_at, datetime):
        assert session.expires_at == expires_at
    elif ttl is None:
        assert session.expires_at is None
    else:
        span = store.config.default_ttl if ttl is OMITTED else ttl
        assert session.expires_at is not None
        assert session.expires_at - session.created_at == span, "expires_at != created + ttl"
    again = await store.sessions.get(session.id)
    assert again.model_dump(exclude={"status"}) == session.model_dump(exclude={"status"})


STATES = st.sampled_from(["active", "active", "paused", "completed", "expired"])


@fuzz(180)
@given(
    target=ids("target"),
    state=STATES,
    title=st.one_of(st.just(OMITTED), TITLES),
    metadata=METADATA,
    version=st.one_of(st.none(), st.sampled_from(["current", "stale"]), INTS),
)
async def test_sessions_update(
    store: SessionStore,
    conn: asyncpg.Connection,
    target: object,
    state: str,
    title: object,
    metadata: object,
    version: object,
) -> None:
    CASES["sessions.update"] += 1
    metadata = real(metadata)
    world = World(store, conn)
    sid = await world.session(state=state)
    value = resolve(target, {"target": sid})
    verdict, found = await session_arg(world, value)
    before = await world.row("sessions", found) if found else None
    current = 0 if before is None else int(before["version"])
    expected_version = {"current": current, "stale": current + 1}.get(str(version), version)
    expect = (
        Expect().arg("session_id", verdict).arg("metadata", await world.metadata_verdict(metadata))
    )
    expect.arg("expected_version", int_verdict(expected_version, 1, INT4_MAX, optional=True))
    options: dict[str, object] = {"metadata": metadata, "expected_version": expected_version}
    if title is not OMITTED:
        options["title"] = title
        expect.arg("title", text_verdict(title, optional=True))
    situation = await world.session_state(found)
    if situation == "missing":
        expect.require(NotFoundError)
    elif situation == "expired":
        expect.require(SessionExpiredError, InvalidStateError)
        expect.allow(ConflictError)
    elif expected_version is not None and expected_version != current:
        expect.require(ConflictError)
    elif situation == "completed":
        expect.allow(InvalidStateError)  # completed is terminal: updating it may be refused

    out = await world.attempt(lambda: world.api.sessions.update(value, **options), expect)
    if not out.ok:
        return
    assert before is not None
    session: Session = out.result
    row = await world.row("sessions", session.id)
    assert row is not None
    check_session(session, row)
    assert session.title == (before["title"] if title is OMITTED else title)
    merged = json.loads(before["metadata"])
    if metadata is not None:
        assert isinstance(metadata, Mapping)
        merged.update(metadata)
    assert same_json(merged, session.metadata), "metadata did not merge exactly"
    assert session.version in (current, current + 1)
    assert (await store.sessions.get(sid)).model_dump(exclude={"status"}) == session.model_dump(
        exclude={"status"}
    )


@fuzz(160)
@given(
    target=ids("target"),
    state=STATES,
    op=st.sampled_from(["record_turn", "record_turn", "extend"]),
    tokens=st.one_of(st.just(OMITTED), INTS),
    ttl=TTLS,
)
async def test_sessions_counters(
    store: SessionStore,
    conn: asyncpg.Connection,
    target: object,
    state: str,
    op: str,
    tokens: object,
    ttl: object,
) -> None:
    """``record_turn`` and ``extend``."""
    CASES["sessions.counters"] += 1
    world = World(store, conn)
    sid = await world.session(state=state)
    value = resolve(target, {"target": sid})
    verdict, found = await session_arg(world, value)
    before = await world.row("sessions", found) if found else None
    situation = await world.session_state(found)
    expect = Expect().arg("session_id", verdict)
    if situation == "missing":
        expect.require(NotFoundError)
    elif situation == "expired":
        expect.require(SessionExpiredError, InvalidStateError)

    if op == "record_turn":
        options = {} if tokens is OMITTED else {"tokens": tokens}
        if tokens is not OMITTED:
            expect.arg("tokens", int_verdict(tokens, 0, INT4_MAX))
        if situation in ("paused", "completed"):
            expect.require(InvalidStateError)
        out = await world.attempt(lambda: world.api.sessions.record_turn(value, **options), expect)
    else:
        expect.arg("ttl", ttl_verdict(ttl, datetime.now(UTC)))
        if situation == "completed":
            expect.require(InvalidStateError)
        out = await world.attempt(lambda: world.api.sessions.extend(value, ttl), expect)
    if not out.ok:
        return
    assert before is not None
    session: Session = out.result
    row = await world.row("sessions", session.id)
    assert row is not None
    check_session(session, row)
    if op == "record_turn":
        added = 0 if tokens is OMITTED else tokens
        assert session.turn_count == before["turn_count"] + 1
        assert session.total_tokens == before["total_tokens"] + added
    else:
        assert session.expires_at is not None
        assert session.expires_at - session.updated_at == ttl, "expires_at != now + ttl"


@fuzz(180)
@given(
    target=ids("target"),
    state=STATES,
    op=st.sampled_from(["get", "pause", "resume", "complete", "delete"]),
    keep=st.one_of(st.just(OMITTED), st.booleans(), WRONG_TYPES, st.sampled_from(["false", 1])),
)
async def test_sessions_lifecycle(
    store: SessionStore,
    conn: asyncpg.Connection,
    target: object,
    state: str,
    op: str,
    keep: object,
) -> None:
    """``get``, ``pause``, ``resume``, ``complete``, ``delete``."""
    CASES["sessions.lifecycle"] += 1
    world = World(store, conn)
    (sid,), (cid,) = await world.build([S(state=state)], [C(session=0, messages=2)])
    value = resolve(target, {"target": sid})
    verdict, found = await session_arg(world, value)
    situation = await world.session_state(found)
    expect = Expect().arg("session_id", verdict)
    if situation == "missing":
        expect.require(NotFoundError)
    # Which states each transition starts from; the same state again may be a no-op.
    sources = {"pause": ("active",), "resume": ("paused",), "complete": ("active", "paused")}
    targets = {"pause": "paused", "resume": "active", "complete": "completed"}
    if op in sources and situation != "missing" and situation not in sources[op]:
        if situation == "expired":
            expect.require(SessionExpiredError, InvalidStateError)
        elif situation == targets[op]:
            expect.allow(InvalidStateError)
        else:
            expect.require(InvalidStateError)
    options: dict[str, object] = {}
    if op == "delete" and keep is not OMITTED:
        options["keep_conversations"] = keep
        expect.arg("keep_conversations", OK if isinstance(keep, bool) else BAD)

    method = getattr(world.api.sessions, op)
    out = await world.attempt(lambda: method(value, **options), expect)
    if not out.ok:
        return
    assert found is not None
    row = await world.row("sessions", found)
    if op == "delete":
        assert out.result is None
        assert row is None, "deleted session still there"
        conversation = await world.row("conversations", cid)
        if found == sid and keep is True:
            assert conversation is not None
            assert conversation["session_id"] is None
            assert await world.messages_of(cid) == 2
        elif found == sid:
            assert conversation is None, "the session's conversation survived its delete"
        return
    assert row is not None
    session: Session = out.result
    check_session(session, row)
    if op == "get":
        assert session.status.value == situation
    else:
        assert session.status.value == targets[op]


# --- listings and cursors ----------------------------------------------------------------------

SESSION_STATUS_SQL = (
    "CASE WHEN status IN ('active', 'paused') AND expires_at <= now()"
    " THEN 'expired' ELSE status END"
)
LIST_SESSIONS_SQL = f"""
SELECT id FROM sessions
WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR {SESSION_STATUS_SQL} = $2)
ORDER BY created_at DESC, id DESC
"""
LIST_CONVERSATIONS_SQL = """
SELECT id FROM conversations WHERE session_id = $1 ORDER BY created_at DESC, id DESC
"""


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
STATUSES_ARG = st.one_of(
    st.none(),
    st.sampled_from(["active", "paused", "completed", "expired"]),
    st.sampled_from(["ACTIVE", "sleeping", "", "active\x00"]),
    WRONG_TYPES,
)
LIMITS = st.one_of(st.integers(1, 4), INTS)


def limit_verdict(value: object, maximum: int = 1000) -> Verdict:
    """A page or batch size: 1 up to a maximum the contract leaves to the library
    (``maximum`` must be accepted; beyond it may be refused)."""
    if type(value) is not int or value < 1:
        return BAD
    return OK if value <= maximum else EITHER


def status_verdict(value: object) -> Verdict:
    ok = isinstance(value, str) and value in ("active", "paused", "completed", "expired")
    return OK if value is None or ok else BAD


def cursor_value(cursor: object) -> object:
    return cursor.cursor if isinstance(cursor, Forged) else cursor


# What both the generated and the pinned test of this property draw.
_SESSIONS_LIST_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    created=CREATED,
    user=st.one_of(st.just("owner"), st.just("owner"), st.none(), IDENTIFIERS),
    status=STATUSES_ARG,
    limit=LIMITS,
    cursor=st.one_of(st.none(), st.just("real"), st.just("real"), CURSORS),
)


@fuzz(160)
@given(**_SESSIONS_LIST_DRAWN)
async def test_sessions_list(
    store: SessionStore,
    conn: asyncpg.Connection,
    created: list[int],
    user: object,
    status: object,
    limit: object,
    cursor: object,
) -> None:
    """``sessions.list``: pages, keyset cursors (real and forged)."""
    await check_sessions_list(store, conn, created, user, status, limit, cursor)


@named
@cases(
    {"created": [0, 1], "user": "owner", "status": None, "limit": 1, "cursor": None},
    {"cursor": Forged("9999-12-31T23:59:59.999999-14:00", str(UUID(int=1)))},
    {"cursor": Forged("9999-12-31T23:59:59+00:00", str(UUID(int=1)))},
    {"cursor": Forged("0001-01-01T00:00:00+14:00", str(UUID(int=1)))},
    {"cursor": "real", "limit": 1001},
    {"limit": 0},
)
@given(**_SESSIONS_LIST_DRAWN)
async def test_sessions_list_named(
    store: SessionStore,
    conn: asyncpg.Connection,
    created: list[int],
    user: object,
    status: object,
    limit: object,
    cursor: object,
) -> None:
    """The cases the issue names, pinned (reported apart from the generated ones)."""
    await check_sessions_list(store, conn, created, user, status, limit, cursor)


async def check_sessions_list(
    store: SessionStore,
    conn: asyncpg.Connection,
    created: list[int],
    user: object,
    status: object,
    limit: object,
    cursor: object,
) -> None:
    CASES["sessions.list"] += 1
    world = World(store, conn)
    owner = world.fresh("lister")
    base = datetime(2024, 1, 1, tzinfo=UTC)
    states = ("active", "paused", "completed", "expired")
    await world.build(
        [
            S(owner, states[i % len(states)], base + timedelta(seconds=offset))
            for i, offset in enumerate(created)
        ]
    )
    user_id = owner if user == "owner" else user
    expect = Expect().arg("status", status_verdict(status)).arg("limit", limit_verdict(limit))
    if user_id is not None:
        expect.arg("user_id", identifier_verdict(user_id))
    value: object = cursor_value(cursor)
    filters = (
        user_id if text_verdict(user_id) is OK else None,
        status if status_verdict(status) is OK else None,
    )
    expected = [r["id"] for r in await conn.fetch(LIST_SESSIONS_SQL, *filters)]
    after = 0
    if cursor == "real":
        value = None
        if user_id == owner and status_verdict(status) is OK and len(expected) > 1:
            first = await world.api.sessions.list(user_id=owner, status=status, limit=1)
            value, after = first.next_cursor, 1
    else:
        expect.arg("cursor", cursor_verdict(cursor))

    out = await world.attempt(
        lambda: world.api.sessions.list(user_id=user_id, status=status, limit=limit, cursor=value),
        expect,
    )
    if not out.ok:
        return
    page: Page[Session] = out.result
    assert isinstance(limit, int)
    got = [s.id for s in page.items]
    if isinstance(cursor, Forged) or (cursor is not None and cursor != "real"):
        assert set(got) <= set(expected), "a forged cursor listed rows outside the filter"
        return
    assert got == expected[after : after + limit], "the page is not the listing's next rows"
    for s in page.items:
        row = await world.row("sessions", s.id)
        assert row is not None
        check_session(s, row)
    if user_id == owner and after == 0:

        async def following(c: str) -> Page[Any]:
            got: Page[Any] = await world.api.sessions.list(
                user_id=owner, status=status, limit=limit, cursor=c
            )
            return got

        assert await walk(page, following, limit, len(expected) + 2) == expected


# --- cleanup and purge ---------------------------------------------------------------------------

CALLBACKS = st.one_of(
    st.just(OMITTED), st.none(), st.just("record"), st.sampled_from([42, "print", b"f"])
)
DUE_SQL = (
    "SELECT id FROM sessions"
    " WHERE expires_at IS NOT NULL AND expires_at < now() AND status <> 'completed'"
)


def callback_verdict(value: object) -> Verdict:
    return OK if value in (OMITTED, None, "record") else BAD


@fuzz(80)
@given(
    due=st.integers(0, 4),
    op=st.sampled_from(["cleanup_expired", "cleanup_expired", "count_expired"]),
    batch_size=st.one_of(st.just(OMITTED), st.integers(1, 3), INTS),
    on_progress=CALLBACKS,
    delete_conversations=st.one_of(st.just(OMITTED), st.booleans(), WRONG_TYPES),
)
async def test_sessions_cleanup(
    store: SessionStore,
    conn: asyncpg.Connection,
    due: int,
    op: str,
    batch_size: object,
    on_progress: object,
    delete_conversations: object,
) -> None:
    """``cleanup_expired`` and ``count_expired``."""
    CASES["sessions.cleanup"] += 1
    world = World(store, conn)
    sids, conversations = await world.build(
        [S(state="completed-past"), *(S(state="expired") for _ in range(due))],
        [C(session=i + 1, messages=1) for i in range(due)],
    )
    kept, doomed = sids[0], sids[1:]
    due_before = {r["id"] for r in await conn.fetch(DUE_SQL)}
    assert set(doomed) <= due_before
    if op == "count_expired":
        out = await world.attempt(lambda: world.api.sessions.count_expired(), Expect())
        assert out.result == len(due_before)
        return
    expect = Expect()
    options: dict[str, object] = {}
    progress: list[int] = []
    if batch_size is not OMITTED:
        options["batch_size"] = batch_size
        expect.arg("batch_size", limit_verdict(batch_size, 1000))
    if on_progress is not OMITTED:
        options["on_progress"] = progress.append if on_progress == "record" else on_progress
        expect.arg("on_progress", callback_verdict(on_progress))
    if delete_conversations is not OMITTED:
        options["delete_conversations"] = delete_conversations
        expect.arg("delete_conversations", OK if isinstance(delete_conversations, bool) else BAD)

    out = await world.attempt(lambda: world.api.sessions.cleanup_expired(**options), expect)
    if not out.ok:
        return
    assert out.result == len(due_before), "cleanup_expired did not count what was due"
    assert not await conn.fetch(DUE_SQL), "expired sessions left after cleanup"
    assert await world.row("sessions", kept) is not None, "a completed session was deleted"
    for cid in conversations:
        row = await world.row("conversations", cid)
        if delete_conversations is True:
            assert row is None
        else:
            assert row is not None
            assert row["session_id"] is None
            assert await world.messages_of(cid) == 1
    assert progress == sorted(progress)
    assert all(n <= out.result for n in progress)
    if on_progress == "record" and out.result:
        assert progress, "on_progress was never called"
        assert progress[-1] == out.result, "on_progress missed the final total"


@fuzz(80)
@given(
    sessions=st.integers(0, 3),
    user=st.one_of(st.just("victim"), st.just("victim"), IDENTIFIERS),
    batch_size=st.one_of(st.just(OMITTED), st.integers(1, 3), INTS),
    on_progress=CALLBACKS,
)
async def test_purge_user(
    store: SessionStore,
    conn: asyncpg.Connection,
    sessions: int,
    user: object,
    batch_size: object,
    on_progress: object,
) -> None:
    CASES["purge_user"] += 1
    world = World(store, conn)
    victim = world.fresh("victim")
    sids, _ = await world.build(
        [S(world.fresh("bystander")), *(S(victim) for _ in range(sessions))],
        [C(session=0, messages=1), *(C(session=i + 1, messages=2) for i in range(sessions))],
    )
    bystander = sids[0]
    user_id = victim if user == "victim" else user
    expect = Expect().arg("user_id", identifier_verdict(user_id))
    options: dict[str, object] = {}
    progress: list[PurgeCounts] = []
    if batch_size is not OMITTED:
        options["batch_size"] = batch_size
        expect.arg("batch_size", limit_verdict(batch_size, 1000))
    if on_progress is not OMITTED:
        options["on_progress"] = progress.append if on_progress == "record" else on_progress
        expect.arg("on_progress", callback_verdict(on_progress))
    owned = await conn.fetchrow(
        "SELECT count(DISTINCT s.id) AS s, count(DISTINCT c.id) AS c, count(m.id) AS m"
        " FROM sessions s LEFT JOIN conversations c ON c.session_id = s.id"
        " LEFT JOIN messages m ON m.conversation_id = c.id WHERE s.user_id = $1",
        user_id if text_verdict(user_id) is OK else "",
    )

    out = await world.attempt(lambda: world.api.purge_user(user_id, **options), expect)
    if not out.ok:
        return
    counts: PurgeCounts = out.result
    assert owned is not None
    assert (counts.sessions, counts.conversations, counts.messages) == tuple(owned)
    assert not await conn.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", user_id)
    assert await world.row("sessions", bystander) is not None, "purge deleted another user's row"
    assert all(isinstance(p, PurgeCounts) for p in progress)


# --- framework state (store.states) -------------------------------------------------------------

# The ADK state tables, for "a refused call writes nothing" (FINGERPRINT has the core three).
STATES_FINGERPRINT = " UNION ALL ".join(
    f"SELECT '{table}', count(*), md5(coalesce(string_agg(ctid::text || ':' || xmin::text,"
    f" ',' ORDER BY ctid), '')) FROM {table}"
    for table in ("adk_app_states", "adk_user_states", "adk_session_states")
)


@fuzz(120)
@given(
    op=st.sampled_from(["read", "write", "write"]),
    app_name=st.one_of(st.just("app"), IDENTIFIERS),
    user_id=st.one_of(st.just("user"), IDENTIFIERS),
    session=ids("session"),
    delta=METADATA,
)
async def test_states(
    store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    app_name: object,
    user_id: object,
    session: object,
    delta: object,
) -> None:
    """``states.read`` and ``states.write`` (with deltas from ``StateDeltas.of``): hostile
    keys, session ids and deltas are refused naming the argument and write nothing; what
    is written reads back exactly."""
    CASES["states"] += 1
    delta = real(delta)
    world = World(store, conn)
    sid = await world.session()
    session_id = resolve(session, {"session": sid})
    id_verdict, target = await session_arg(world, session_id)
    user_verdict = OK if op == "read" and user_id is None else identifier_verdict(user_id)
    expect = Expect().arg("app_name", identifier_verdict(app_name)).arg("user_id", user_verdict)
    before = [tuple(r) for r in await conn.fetch(STATES_FINGERPRINT)]
    if op == "read":
        expect.arg("session_ids", id_verdict)
        out = await world.attempt(
            lambda: world.api.states.read(app_name, user_id, [session_id]), expect
        )
        assert [tuple(r) for r in await conn.fetch(STATES_FINGERPRINT)] == before, "read wrote"
        if out.ok:
            assert isinstance(out.result, States)
        return
    changes = isinstance(delta, dict) and bool(delta)
    expect.arg("session_id", id_verdict).arg("session", await world.metadata_verdict(delta))
    if target is None and changes:
        expect.require(NotFoundError)  # session state of a session that does not exist

    deltas_of: Any = StateDeltas.of  # typed Any: the delta breaks the signature on purpose

    def write() -> Awaitable[WrittenStates]:
        written: Awaitable[WrittenStates] = world.api.states.write(
            app_name, user_id, session_id, deltas_of(session=delta)
        )
        return written

    out = await world.attempt(write, expect)
    if not out.ok:
        after = [tuple(r) for r in await conn.fetch(STATES_FINGERPRINT)]
        assert after == before, f"refused ({type(out.error).__name__}) yet wrote"
        return
    stored = await conn.fetchval("SELECT state FROM adk_session_states WHERE session_id = $1", sid)
    if changes and target == sid:
        assert same_json(delta, json.loads(stored)), "session state"
        assert same_json(delta, out.result.session), "returned session state"
    else:
        assert stored is None, "a write without a delta created a row"


# --- conversations -------------------------------------------------------------------------------

CONTINUATIONS = st.one_of(st.sampled_from(["mine", "loose", "theirs", "new", "new"]), IDENTIFIERS)
CONVERSATION_FORMS = st.sampled_from(
    ["uuid", "str", "upper", "braced", "cont", "cont", "plain-cont"]
)


def conversation_ids(*names: str) -> st.SearchStrategy[object]:
    """Conversation arguments: ids or ``ContinuationId``s of the named rows, hostile
    values, and hostile ``ContinuationId``s."""
    return st.one_of(ids(*names, forms=CONVERSATION_FORMS), st.builds(ContinuationId, HOSTILE_TEXT))


@fuzz(260)
@given(
    op=st.sampled_from(
        ["get_or_create", "get_or_create", "get", "get_by_continuation_id", "delete"]
    ),
    continuation=CONTINUATIONS,
    conversation=conversation_ids("mine", "loose"),
    session=st.one_of(st.none(), ids("session", "other")),
    title=TITLES,
    metadata=METADATA,
)
async def test_conversations(
    store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    continuation: object,
    conversation: object,
    session: object,
    title: object,
    metadata: object,
) -> None:
    """``get_or_create``, ``get``, ``get_by_continuation_id``, ``delete``."""
    CASES["conversations"] += 1
    metadata = real(metadata)
    world = World(store, conn)
    conts = {name: world.fresh(name) for name in ("mine", "loose", "theirs", "new")}
    (sid, other), (mine, loose, theirs) = await world.build(
        [S(), S()],
        [C(conts["mine"], 0, 2), C(conts["loose"], None, 1), C(conts["theirs"], 1, 0)],
    )
    rows: dict[str, UUID | None] = {"session": sid, "other": other}
    rows.update(mine=mine, loose=loose, theirs=theirs)

    if op in ("get_or_create", "get_by_continuation_id"):
        cont = (
            conts.get(continuation, continuation) if isinstance(continuation, str) else continuation
        )
        verdict = identifier_verdict(cont)
        existing = (
            await conn.fetchrow("SELECT * FROM conversations WHERE continuation_id = $1", cont)
            if verdict is not BAD and isinstance(cont, str)
            else None
        )
        expect = Expect().arg("continuation_id", verdict)
        if op == "get_by_continuation_id":
            expect_target(expect, None if existing is None else existing["id"])
            out = await world.attempt(
                lambda: world.api.conversations.get_by_continuation_id(cont), expect
            )
            if out.ok:
                assert existing is not None
                check_conversation(out.result, existing)
            return
        session_value = resolve(session, rows)
        session_verdict, named = (
            (OK, None) if session_value is None else await session_arg(world, session_value)
        )
        expect.arg("session_id", session_verdict)
        expect.arg("title", text_verdict(title, optional=True))
        expect.arg("metadata", await world.metadata_verdict(metadata))
        session_missing = session_value is not None and named is None
        if existing is None and session_missing:
            expect.require(NotFoundError)
        elif existing is not None:
            if session_missing:
                expect.allow(NotFoundError, ConflictError)
            elif named is not None and existing["session_id"] not in (None, named):
                expect.require(ConflictError)
        out = await world.attempt(
            lambda: world.api.conversations.get_or_create(
                cont, session_id=session_value, title=title, metadata=metadata
            ),
            expect,
        )
        if not out.ok:
            return
        made: Conversation = out.result
        row = await world.row("conversations", made.id)
        assert row is not None
        check_conversation(made, row)
        if existing is None:
            assert (made.continuation_id, made.session_id) == (cont, named)
            assert made.title == title
            assert same_json({} if metadata is None else metadata, made.metadata), "metadata"
            assert (made.message_count, made.total_tokens, made.last_message_at) == (0, 0, None)
        else:
            assert made.id == existing["id"], "get_or_create made a second conversation"
            assert (made.title, made.metadata) == (
                existing["title"],
                json.loads(existing["metadata"]),
            ), "get_or_create changed an existing conversation"
            assert made.session_id in (existing["session_id"], named)
        return

    value = resolve(conversation, rows, conts)
    verdict, target = await conversation_arg(world, value)
    expect = Expect().arg("conversation_id", verdict)
    expect_target(expect, target)
    before = await world.row("conversations", target) if target else None
    method = getattr(world.api.conversations, op)
    out = await world.attempt(lambda: method(value), expect)
    if not out.ok:
        return
    assert target is not None
    assert before is not None
    if op == "delete":
        assert out.result is None
        assert await world.row("conversations", target) is None, "deleted conversation remains"
        assert await world.messages_of(target) == 0, "its messages remain"
        return
    check_conversation(out.result, before)


@fuzz(100)
@given(
    created=CREATED,
    target=ids("session"),
    limit=LIMITS,
    cursor=st.one_of(st.none(), st.just("real"), st.just("real"), CURSORS),
)
async def test_conversations_list(
    store: SessionStore,
    conn: asyncpg.Connection,
    created: list[int],
    target: object,
    limit: object,
    cursor: object,
) -> None:
    """``conversations.list_for_session``: pages and cursors."""
    CASES["conversations.list"] += 1
    world = World(store, conn)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    (sid,), _ = await world.build(
        [S()], [C(session=0, created_at=base + timedelta(seconds=offset)) for offset in created]
    )
    value = resolve(target, {"session": sid})
    verdict, found = await session_arg(world, value)
    expect = Expect().arg("session_id", verdict).arg("limit", limit_verdict(limit))
    expect_target(expect, found)
    expected = [r["id"] for r in await conn.fetch(LIST_CONVERSATIONS_SQL, found)] if found else []
    cursor_arg = cursor_value(cursor)
    after = 0
    if cursor == "real":
        cursor_arg = None
        if len(expected) > 1:
            first = await store.conversations.list_for_session(sid, limit=1)
            cursor_arg, after = first.next_cursor, 1
    else:
        expect.arg("cursor", cursor_verdict(cursor))

    out = await world.attempt(
        lambda: world.api.conversations.list_for_session(value, limit=limit, cursor=cursor_arg),
        expect,
    )
    if not out.ok:
        return
    page: Page[Conversation] = out.result
    assert isinstance(limit, int)
    got = [c.id for c in page.items]
    if cursor != "real" and cursor is not None:
        assert set(got) <= set(expected), "a forged cursor listed another session's rows"
        return
    assert got == expected[after : after + limit], "the page is not the listing's next rows"
    for c in page.items:
        row = await world.row("conversations", c.id)
        assert row is not None
        check_conversation(c, row)
    if after == 0:

        async def following(c: str) -> Page[Any]:
            got: Page[Any] = await world.api.conversations.list_for_session(
                value, limit=limit, cursor=c
            )
            return got

        assert await walk(page, following, limit, len(expected) + 2) == expected


# --- messages ------------------------------------------------------------------------------------

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
        else:
            expect.arg(name, BAD)  # not an option of this method


NEW_MESSAGES = st.one_of(
    st.lists(
        st.one_of(
            st.tuples(ROLES, HOSTILE_TEXT),
            st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=20)),
            st.tuples(ROLES, HOSTILE_TEXT, METADATA),
            st.tuples(ROLES, HOSTILE_TEXT, METADATA, INTS),
            st.sampled_from([(), ("user",), ("user", "a", None, None, "extra"), ["user", "a"]]),
            WRONG_TYPES,
        ),
        max_size=4,
    ),
    st.sampled_from([[], 42, "user", None]),
)


async def new_messages_verdict(world: World, items: object) -> tuple[Verdict, int]:
    """The verdict on ``add_many``'s ``messages`` and how many there are."""
    if not isinstance(items, list):
        return BAD, 0
    verdicts = [] if items else [BAD]
    for item in items:
        if type(item) is list and len(item) in (2, 3, 4):
            verdicts.append(EITHER)  # a list for a tuple: may be refused
            item = tuple(item)
        if not isinstance(item, tuple) or not 2 <= len(item) <= 4:
            verdicts.append(BAD)
            continue
        verdicts.append(role_verdict(item[0]))
        verdicts.append(text_verdict(item[1]))
        if len(item) > 2:
            verdicts.append(await world.metadata_verdict(item[2]))
        if len(item) > 3:
            verdicts.append(int_verdict(item[3], 0, INT4_MAX, optional=True))
    return worst(*verdicts), len(items)


# What both the generated and the pinned test of this property draw.
#: ``add_many``'s ``session_id``: a session set up in a state (``S``), one that owns the
#: conversation already (``"S:owner"``), or a hostile value; drawn with whether the
#: conversation is bound to a session beforehand.
_TURN_SESSIONS = st.one_of(
    st.just(OMITTED),
    st.sampled_from(["S:active", "S:expired", "S:paused", "S:completed", "S:owner"]),
    HOSTILE_IDS,
)
_MESSAGES_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    op=st.sampled_from(["add", "add", "add_many", "history", "count", "pop", "clear"]),
    seeded=st.integers(0, 4),
    conversation=conversation_ids("conversation"),
    role=ROLES,
    content=HOSTILE_TEXT,
    options=options_strategy("metadata", "tokens"),
    new=NEW_MESSAGES,
    limit=st.one_of(st.just(OMITTED), LIMITS),
    before=st.one_of(st.just(OMITTED), st.none(), st.integers(1, 6), INTS),
    turn=st.tuples(_TURN_SESSIONS, st.booleans()),
)


@fuzz(300)
@given(**_MESSAGES_DRAWN)
async def test_messages(
    store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    seeded: int,
    conversation: object,
    role: object,
    content: object,
    options: dict[str, object],
    new: object,
    limit: object,
    before: object,
    turn: tuple[object, bool],
) -> None:
    """``add``, ``add_many`` (with and without ``session_id``), ``history``, ``count``,
    ``pop``, ``clear``."""
    await check_messages(
        store, conn, op, seeded, conversation, role, content, options, new, limit, before, turn
    )


@named
@cases(
    {
        "op": "add",
        "seeded": 1,
        "conversation": Id("conversation"),
        "role": "user",
        "content": "hi",
        "options": {},
        "new": [("user", "a")],
        "limit": OMITTED,
        "before": OMITTED,
        "turn": (OMITTED, False),
    },
    *({"options": m} for m in NAMED_METADATA),
    *({"content": t} for t in NAMED_TEXT),
    {"conversation": Id("conversation", "cont")},
    {"op": "add_many", "new": [("user", "a"), ("assistant", "b", {"x": 1e300})]},
    {"op": "history", "before": 0},
    {"op": "history", "before": 2**31},
    {"op": "add_many", "turn": ("S:expired", False)},
    {"op": "add_many", "turn": ("S:active", True)},
    {"op": "add_many", "turn": ("S:owner", True)},
    {"op": "pop", "seeded": 0},
    {"op": "clear", "seeded": 3},
)
@given(**_MESSAGES_DRAWN)
async def test_messages_named(
    store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    seeded: int,
    conversation: object,
    role: object,
    content: object,
    options: dict[str, object],
    new: object,
    limit: object,
    before: object,
    turn: tuple[object, bool],
) -> None:
    """The cases the issue names, pinned (reported apart from the generated ones)."""
    await check_messages(
        store, conn, op, seeded, conversation, role, content, options, new, limit, before, turn
    )


async def check_messages(
    store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    seeded: int,
    conversation: object,
    role: object,
    content: object,
    options: dict[str, object],
    new: object,
    limit: object,
    before: object,
    turn: tuple[object, bool],
) -> None:
    CASES["messages"] += 1
    options, new = real(options), real(new)
    session, bound = turn
    world = World(store, conn)
    cont = world.fresh("talk")
    owner = await world.session() if bound else None
    cid = await world.conversation(cont, owner, messages=seeded)
    value = resolve(conversation, {"conversation": cid}, {"conversation": cont})
    verdict, target = await conversation_arg(world, value)
    expect = Expect().arg("conversation_id", verdict)
    expect_target(expect, target)
    before_row = await world.row("conversations", target) if target else None
    count = 0 if before_row is None else int(before_row["message_count"])

    if op == "add":
        expect.arg("role", role_verdict(role)).arg("content", text_verdict(content))
        await message_verdicts(world, expect, options, frozenset())
        out = await world.attempt(
            lambda: world.api.messages.add(value, role, content, **options), expect
        )
        if not out.ok:
            return
        message: Message = out.result
        row = await world.row("messages", message.id)
        assert row is not None
        assert before_row is not None
        check_message(message, row)
        assert (message.conversation_id, message.seq) == (target, count + 1)
        assert (message.role.value, message.content) == (role, content), "content differs"
        meta = options.get("metadata")
        assert same_json({} if meta is None else meta, message.metadata), "metadata"
        assert message.tokens == options.get("tokens")
        after = await world.row("conversations", target)
        assert after is not None
        assert after["message_count"] == count + 1
        added = options.get("tokens") or 0
        assert isinstance(added, int)
        assert after["total_tokens"] == before_row["total_tokens"] + added
        assert (await store.messages.history(message.conversation_id, limit=1)) == [message]
    elif op == "add_many":
        new_verdict, n = await new_messages_verdict(world, new)
        expect.arg("messages", new_verdict)
        kwargs: dict[str, object] = {}
        named: UUID | None = None
        if session is not OMITTED:
            sid: object = session
            if session == "S:owner":
                sid = owner or await world.session()
            elif isinstance(session, str) and session.startswith("S:"):
                sid = await world.session(state=session[2:])
            kwargs["session_id"] = sid
            session_verdict, named = await session_arg(world, sid)
            expect.arg("session_id", session_verdict)
            situation = await world.session_state(named)
            bound_to = None if before_row is None else before_row["session_id"]
            if named is None:
                expect.require(NotFoundError)
            elif situation == "expired":
                expect.require(SessionExpiredError, InvalidStateError)
            elif situation in ("paused", "completed"):
                expect.require(InvalidStateError)
            elif bound_to not in (None, named):
                expect.require(ConflictError)
        session_row = None if named is None else await world.row("sessions", named)
        out = await world.attempt(lambda: world.api.messages.add_many(value, new, **kwargs), expect)
        if not out.ok:
            return
        assert isinstance(new, list)
        written: list[Message] = out.result
        assert [m.seq for m in written] == list(range(count + 1, count + n + 1))
        if session_row is not None:
            after_session = await world.row("sessions", named)
            assert after_session is not None
            tokens = sum((item[3] or 0) if len(item) > 3 else 0 for item in new)
            assert after_session["turn_count"] == session_row["turn_count"] + 1
            assert after_session["total_tokens"] == session_row["total_tokens"] + tokens
            after_conv = await world.row("conversations", target)
            assert after_conv is not None
            assert after_conv["session_id"] == named
        for m, item in zip(written, new, strict=True):
            row = await world.row("messages", m.id)
            assert row is not None
            check_message(m, row)
            assert (m.role.value, m.content) == (item[0], item[1]), "content differs"
            meta = item[2] if len(item) > 2 else None
            assert same_json({} if meta is None else meta, m.metadata), "metadata"
            assert m.tokens == (item[3] if len(item) > 3 else None)
    elif op == "history":
        options_: dict[str, object] = {}
        if limit is not OMITTED:
            options_["limit"] = limit
            expect.arg("limit", limit_verdict(limit))
        if before is not OMITTED:
            options_["before"] = before
            expect.arg("before", int_verdict(before, 1, INT4_MAX, optional=True))
        out = await world.attempt(lambda: world.api.messages.history(value, **options_), expect)
        if not out.ok:
            return
        size = 50 if limit is OMITTED else limit
        upper = INT4_MAX if before in (OMITTED, None) else before
        assert isinstance(size, int)
        assert isinstance(upper, int)
        rows = await conn.fetch(
            "SELECT * FROM messages WHERE conversation_id = $1 AND seq < $2"
            " ORDER BY seq DESC LIMIT $3",
            target,
            upper,
            size,
        )
        history: list[Message] = out.result
        assert [m.id for m in history] == [r["id"] for r in reversed(rows)], "wrong history"
        for m, r in zip(history, reversed(rows), strict=True):
            check_message(m, r)
    elif op == "pop":
        latest = await conn.fetchrow(
            "SELECT * FROM messages WHERE conversation_id = $1 ORDER BY seq DESC LIMIT 1", target
        )
        out = await world.attempt(lambda: world.api.messages.pop(value), expect)
        if not out.ok:
            return
        assert target is not None
        if latest is None:
            assert out.result is None
        else:
            check_message(out.result, latest)
            assert await world.row("messages", latest["id"]) is None, "the message is still there"
        after = await world.row("conversations", target)
        assert after is not None
        assert after["message_count"] == max(count - 1, 0) == await world.messages_of(target)
    elif op == "clear":
        out = await world.attempt(lambda: world.api.messages.clear(value), expect)
        if not out.ok:
            return
        assert target is not None
        assert out.result == count
        after = await world.row("conversations", target)
        assert after is not None
        assert (after["message_count"], after["total_tokens"]) == (0, 0)
        assert await world.messages_of(target) == 0
    else:
        out = await world.attempt(lambda: world.api.messages.count(value), expect)
        if out.ok:
            assert target is not None
            assert out.result == count == await world.messages_of(target)


# --- turns ---------------------------------------------------------------------------------------

MESSAGE_IDS = st.one_of(
    st.just(OMITTED),
    st.none(),
    st.sampled_from(["fresh", "fresh", "fresh-str", "taken", "resend"]),
    HOSTILE_IDS,
)


# What both the generated and the pinned test of this property draw.
_ADD_TURN_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    continuation=st.one_of(st.sampled_from(["mine", "loose", "theirs", "new", "new"]), IDENTIFIERS),
    state=STATES,
    session=st.one_of(st.just(OMITTED), st.none(), ids("session", "other")),
    role=ROLES,
    content=HOSTILE_TEXT,
    options=options_strategy("metadata", "tokens"),
    message_id=MESSAGE_IDS,
    context=st.one_of(st.just(OMITTED), st.none(), st.integers(1, 4), INTS),
)


@fuzz(260)
@given(**_ADD_TURN_DRAWN)
async def test_add_turn(
    store: SessionStore,
    conn: asyncpg.Connection,
    continuation: object,
    state: str,
    session: object,
    role: object,
    content: object,
    options: dict[str, object],
    message_id: object,
    context: object,
) -> None:
    """``add_turn`` with every option: ``session_id``, ``metadata``, ``tokens``,
    ``message_id``, ``context``."""
    await check_add_turn(
        store, conn, continuation, state, session, role, content, options, message_id, context
    )


@named
@cases(
    {
        "continuation": "mine",
        "state": "active",
        "session": Id("session"),
        "role": "user",
        "content": "hi",
        "options": {"tokens": 3},
        "message_id": "fresh",
        "context": 2,
    },
    *({"options": m} for m in NAMED_METADATA),
    *({"content": t} for t in NAMED_TEXT),
    {"session": Id("other")},
    {"message_id": "taken"},
    {"continuation": "\ud800"},
)
@given(**_ADD_TURN_DRAWN)
async def test_add_turn_named(
    store: SessionStore,
    conn: asyncpg.Connection,
    continuation: object,
    state: str,
    session: object,
    role: object,
    content: object,
    options: dict[str, object],
    message_id: object,
    context: object,
) -> None:
    """The cases the issue names, pinned (reported apart from the generated ones)."""
    await check_add_turn(
        store, conn, continuation, state, session, role, content, options, message_id, context
    )


async def check_add_turn(
    store: SessionStore,
    conn: asyncpg.Connection,
    continuation: object,
    state: str,
    session: object,
    role: object,
    content: object,
    options: dict[str, object],
    message_id: object,
    context: object,
) -> None:
    CASES["add_turn"] += 1
    options = real(options)
    world = World(store, conn)
    options = {k: v for k, v in options.items() if k not in ("session_id", "message_id")}
    if context is not OMITTED:
        options["context"] = context
    conts = {name: world.fresh(name) for name in ("mine", "loose", "theirs", "new")}
    (sid, other), _ = await world.build(
        [S(state=state), S()],
        [C(conts["mine"], 0, 1), C(conts["loose"], None, 1), C(conts["theirs"], 1, 1)],
    )
    cont = conts.get(continuation, continuation) if isinstance(continuation, str) else continuation
    session_value = (
        None if session is OMITTED else resolve(session, {"session": sid, "other": other})
    )
    kwargs = dict(options)
    if session is not OMITTED:
        kwargs["session_id"] = session_value
    taken = await conn.fetchval("SELECT id FROM messages LIMIT 1")
    mid: object = (
        {
            "fresh": uuid4(),
            "fresh-str": str(uuid4()),
            "taken": taken,
            "resend": uuid4(),
        }.get(message_id, message_id)
        if isinstance(message_id, str)
        else message_id
    )
    if message_id is not OMITTED:
        kwargs["message_id"] = mid

    expect = Expect().arg("continuation_id", identifier_verdict(cont))
    expect.arg("role", role_verdict(role)).arg("content", text_verdict(content))
    await message_verdicts(world, expect, options, frozenset({"context"}))
    named: UUID | None = None
    if session_value is not None:
        session_verdict, named = await session_arg(world, session_value)
        expect.arg("session_id", session_verdict)
    mid_verdict, mid_uuid = (OK, None) if mid in (OMITTED, None) else uuid_verdict(mid)
    expect.arg("message_id", mid_verdict)
    existing = (
        await conn.fetchrow("SELECT * FROM conversations WHERE continuation_id = $1", cont)
        if isinstance(cont, str) and text_verdict(cont) is OK
        else None
    )
    situation = await world.session_state(named) if session_value is not None else "none"
    stored = await world.row("messages", mid_uuid) if mid_uuid is not None else None
    if stored is not None:
        expect.require(ConflictError)  # another message's id (this turn was never sent)
    elif session_value is not None and named is None:
        expect.require(NotFoundError)
    elif situation == "expired":
        expect.require(SessionExpiredError, InvalidStateError)
    elif situation in ("paused", "completed"):
        expect.require(InvalidStateError)
    elif existing is not None and existing["session_id"] not in (None, named):
        if named is None:
            expect.allow(ConflictError)  # a bound conversation, written without its session
        else:
            expect.require(ConflictError)

    call = lambda: world.api.add_turn(cont, role, content, **kwargs)  # noqa: E731
    out = await world.attempt(call, expect)
    if not out.ok:
        return
    turn: Turn = out.result
    m, c = turn.message, turn.conversation
    row = await world.row("messages", m.id)
    assert row is not None
    check_message(m, row)
    assert (m.role.value, m.content) == (role, content), "content differs"
    meta = options.get("metadata")
    assert same_json({} if meta is None else meta, m.metadata), "metadata"
    assert m.tokens == options.get("tokens")
    if mid_uuid is not None:
        assert m.id == mid_uuid, "the message did not get the given message_id"
    old_count = 0 if existing is None else int(existing["message_count"])
    assert m.seq == c.message_count == old_count + 1
    crow = await world.row("conversations", c.id)
    assert crow is not None
    check_conversation(c, crow)
    assert c.continuation_id == cont
    owner = None if existing is None else existing["session_id"]
    assert c.session_id == (named if owner is None else owner), "the conversation's session"
    tokens = options.get("tokens") or 0
    assert isinstance(tokens, int)
    if named is None:
        assert turn.session is None
    else:
        assert turn.session is not None
        srow = await world.row("sessions", named)
        assert srow is not None
        check_session(turn.session, srow)
        assert (turn.session.turn_count, turn.session.total_tokens) == (1, tokens)
    size = options.get("context")
    if size is None:
        assert turn.context is None
    else:
        latest = await conn.fetch(
            "SELECT * FROM messages WHERE conversation_id = $1 ORDER BY seq DESC LIMIT $2",
            c.id,
            size,
        )
        assert turn.context is not None, "context was asked for and not returned"
        assert [x.id for x in turn.context] == [r["id"] for r in reversed(latest)], "context"
        for got, r in zip(turn.context, reversed(latest), strict=True):
            check_message(got, r)
    if mid_uuid is not None:  # a resend returns the stored turn and counts nothing twice
        fingerprint = await world.fingerprint()
        again = await world.attempt(call, Expect())
        assert again.result.message == m, "a resend did not return the stored message"
        assert await world.fingerprint() == fingerprint, "a resend wrote again"


# --- write-behind --------------------------------------------------------------------------------


@pytest.fixture
async def quick_store(dsn: str) -> AsyncIterator[SessionStore]:
    """A store whose write-behind batches leave at once (``flush`` does not wait out
    ``max_delay``), to keep the example count high."""
    async with sessionstore.connect(dsn, **{**store_overrides(), "max_delay": 0.0}) as opened:
        yield opened


@fuzz(160)
@given(
    op=st.sampled_from(["enqueue", "enqueue_nowait", "enqueue_turn", "enqueue_turn"]),
    conversation=conversation_ids("conversation"),
    continuation=st.one_of(st.sampled_from(["mine", "new"]), IDENTIFIERS),
    state=STATES,
    session=st.one_of(st.just(OMITTED), st.none(), ids("session")),
    role=ROLES,
    content=HOSTILE_TEXT,
    options=options_strategy("metadata", "tokens"),
)
async def test_write_behind(
    quick_store: SessionStore,
    conn: asyncpg.Connection,
    op: str,
    conversation: object,
    continuation: object,
    state: str,
    session: object,
    role: object,
    content: object,
    options: dict[str, object],
) -> None:
    """``enqueue``, ``enqueue_nowait``, ``enqueue_turn``, then ``flush``: accepted messages
    land exactly, or are set aside and reported; refused ones are never queued."""
    CASES["write_behind"] += 1
    store = quick_store
    options = real(options)
    world = World(store, conn)
    cont = world.fresh("queued")
    (sid,), (cid,) = await world.build(
        [S(state=state)], [C(cont, 0 if op == "enqueue_turn" else None, 1)]
    )
    expect = Expect().arg("role", role_verdict(role)).arg("content", text_verdict(content))
    kwargs = {k: v for k, v in options.items() if k != "session_id"}
    await message_verdicts(world, expect, kwargs, frozenset())
    target: UUID | None = None
    situation = "none"
    if op == "enqueue_turn":
        name = {"mine": cont, "new": world.fresh("new")}
        turn_cont = (
            name.get(continuation, continuation) if isinstance(continuation, str) else continuation
        )
        expect.arg("continuation_id", identifier_verdict(turn_cont))
        if session is not OMITTED:
            value = resolve(session, {"session": sid})
            kwargs["session_id"] = value
            if value is not None:
                session_verdict, named = await session_arg(world, value)
                expect.arg("session_id", session_verdict)
                situation = await world.session_state(named)
        call = lambda: world.api.enqueue_turn(turn_cont, role, content, **kwargs)  # noqa: E731
    else:
        value = resolve(conversation, {"conversation": cid}, {"conversation": cont})
        verdict, target = await conversation_arg(world, value)
        expect.arg("conversation_id", verdict)
        method = getattr(world.api.messages, op)
        call = lambda: method(value, role, content, **kwargs)  # noqa: E731
    stats = store.stats()
    await world.conn.execute(PERSIST_DUE_EXPIRY)  # as attempt() does
    before = await world.fingerprint()
    set_aside = {f.id for f in store.failed_writes()}
    out = await world.attempt(call, expect)
    if not out.ok:
        after = store.stats()
        assert (after.queued, after.in_flight) == (stats.queued, stats.in_flight)
        await store.flush()
        assert await world.fingerprint() == before, "a refused message was written"
        return
    mid = out.result
    assert isinstance(mid, UUID)
    if op != "enqueue_turn" and target is not None:
        # Read-your-writes: before it is durable, the enqueuing process reads it.
        latest = await store.messages.history(target, limit=1)
        assert [m.id for m in latest] == [mid], "history misses an accepted message"
        assert latest[0].content == content, "content differs"
    await store.flush()
    row = await world.row("messages", mid)
    lost = mid in {f.id for f in store.failed_writes()} - set_aside
    if op == "enqueue_turn":
        refused = situation in ("missing", "expired", "paused", "completed")
        if refused:
            assert row is None, "a turn of a session that takes none was written"
            assert lost, "a refused turn was not reported (failed_writes)"
            return
    elif target is None:
        assert row is None, "a message to no conversation was written"
        assert lost, "a message to no conversation was not set aside"
        return
    assert row is not None, "an accepted message was not written"
    assert not lost
    assert (row["role"], row["content"]) == (role, content), "content differs"
    meta = kwargs.get("metadata")
    assert same_json({} if meta is None else meta, json.loads(row["metadata"])), "metadata"
    assert row["tokens"] == kwargs.get("tokens")
    if op != "enqueue_turn":
        assert (row["conversation_id"], row["seq"]) == (target, 2)


# --- as_user (row-level security on a Supabase-like database) -----------------------------------


@pytest.fixture
async def rls(
    pg_server: TestServer, supabase_database: str
) -> AsyncIterator[tuple[SessionStore, asyncpg.Connection]]:
    """A store on a Supabase-like database (as its ``postgres``) and a direct connection."""
    conn = await asyncpg.connect(pg_server.admin_dsn_for(supabase_database))
    try:
        dsn = as_supabase_postgres(pg_server.dsn_for(supabase_database))
        async with sessionstore.connect(dsn, **store_overrides()) as store:
            yield store, conn
    finally:
        await conn.close()


CLAIMS = st.one_of(
    st.just(OMITTED),
    st.none(),
    st.just({"email": "a@example.com"}),
    st.sampled_from([{"sub": "someone-else"}, {"role": "service_role"}, {"role": "anon"}]),
    METADATA,
)


# What both the generated and the pinned test of this property draw.
_AS_USER_DRAWN: dict[str, st.SearchStrategy[Any]] = dict(
    user=st.one_of(st.just("uuid"), st.just("name"), IDENTIFIERS, st.uuids()),
    claims=CLAIMS,
    op=st.sampled_from(["create", "list", "get_other", "add_turn", "history", "purge_user"]),
)


@fuzz(120)
@given(**_AS_USER_DRAWN)
async def test_as_user(
    rls: tuple[SessionStore, asyncpg.Connection], user: object, claims: object, op: str
) -> None:
    """``as_user`` refuses bad ids and claims up front; a view it returns works on the
    user's own rows and sees nobody else's."""
    await check_as_user(rls, user, claims, op)


@named
@cases(
    {"user": "uuid", "claims": OMITTED, "op": "create"},
    {"user": ""},
    {"user": "\x00"},
    {"user": "\ud800"},
    {"user": "x" * 300},
    {"claims": {"sub": "someone-else"}},
    {"claims": [1, 2]},
    {"claims": 0},
    {"claims": {"k": 1e300}},
)
@given(**_AS_USER_DRAWN)
async def test_as_user_named(
    rls: tuple[SessionStore, asyncpg.Connection], user: object, claims: object, op: str
) -> None:
    """The cases the issue names, pinned (reported apart from the generated ones)."""
    await check_as_user(rls, user, claims, op)


async def check_as_user(
    rls: tuple[SessionStore, asyncpg.Connection], user: object, claims: object, op: str
) -> None:
    CASES["as_user"] += 1
    claims = real(claims)
    store, conn = rls
    world = World(store, conn)
    other = await world.session(world.fresh("other-user"))
    user_id = (
        {"uuid": str(uuid4()), "name": world.fresh("user")}.get(user, user)
        if isinstance(user, str)
        else user
    )
    expect = Expect().arg("user_id", identifier_verdict(user_id))
    kwargs: dict[str, object] = {}
    if claims is not OMITTED:
        kwargs["claims"] = claims
        verdict = await world.metadata_verdict(claims)
        if isinstance(claims, Mapping) and (
            claims.get("sub", user_id) != user_id
            or claims.get("role", "authenticated") != "authenticated"
        ):
            verdict = BAD  # sub and role are as_user's to set
        expect.arg("claims", verdict)
    out = await world.attempt(lambda: store.as_user(user_id, **kwargs), expect)  # type: ignore[arg-type]
    if not out.ok:
        return
    view: UserView = out.result
    uid = str(user_id)
    api: Any = view
    if op == "create":
        made = await world.attempt(lambda: api.sessions.create(uid), Expect())
        row = await world.row("sessions", made.result.id)
        assert row is not None
        assert row["user_id"] == uid
        check_session(made.result, row)
    elif op == "list":
        own = [await world.session(uid) for _ in range(2)]
        page = await world.attempt(lambda: api.sessions.list(user_id=uid), Expect())
        assert {s.id for s in page.result.items} == set(own), "listed rows not the user's own"
        everyone = await world.attempt(lambda: api.sessions.list(user_id=None), Expect())
        assert {s.id for s in everyone.result.items} == set(own), "saw another user's rows"
    elif op == "get_other":
        await world.attempt(lambda: api.sessions.get(other), Expect().require(NotFoundError))
    elif op in ("add_turn", "history"):
        sid = await world.session(uid)
        cont = world.fresh("rls")
        turn = await world.attempt(
            lambda: api.add_turn(cont, "user", "hi", session_id=sid, tokens=3), Expect()
        )
        assert turn.result.session.turn_count == 1
        history = await world.attempt(lambda: api.messages.history(ContinuationId(cont)), Expect())
        assert [m.id for m in history.result] == [turn.result.message.id]
        count = await world.attempt(
            lambda: api.messages.count(turn.result.conversation.id), Expect()
        )
        assert count.result == 1
    else:
        sid = await world.session(uid)
        await world.conversation(session_id=sid, messages=2)
        counts = await world.attempt(lambda: api.purge_user(uid), Expect())
        assert (counts.result.sessions, counts.result.conversations, counts.result.messages) == (
            1,
            1,
            2,
        )
        assert await world.row("sessions", other) is not None


# --- rows written by other clients ---------------------------------------------------------------

#: Times only another client can write: beyond Python's range, or infinite.
FOREIGN_TIMES = [
    "infinity",
    "-infinity",
    "20000-01-01 00:00:00+00",
    "294276-12-31 23:59:59+00",
    "4713-01-01 00:00:00+00 BC",
    "0001-01-01 00:00:00+00",
    "9999-12-31 23:59:59.999999+00",
    "9999-12-31 23:59:59.999999-14",
    "2024-01-01 00:00:00+00",
]
#: jsonb documents only another client can write (as SQL text).
FOREIGN_JSON = [
    "{}",
    '{"x": 1e5000}',
    '{"x": -1e-5000}',
    '{"x": 1.0e309}',
    '{"x": "\\\\u0000"}',
    '{"x": 123456789012345678901234567890}',
]


def nested(levels: int, inner: str = "{}") -> str:
    """The JSON object ``inner`` wrapped to ``levels`` levels, as text."""
    return '{"a":' * (levels - 1) + inner + "}" * (levels - 1)


FOREIGN_OPS = [
    "sessions.get",
    "sessions.list",
    "sessions.update",
    "sessions.record_turn",
    "conversations.get",
    "conversations.get_by_continuation_id",
    "conversations.list_for_session",
    "messages.history",
    "messages.count",
    "add_turn",
    "purge_user",
]


@fuzz(120)
@given(
    depth=st.sampled_from([1, 2, 100, 999, 1000, 1001, 2000, 5000]),
    document=st.sampled_from(FOREIGN_JSON),
    time=st.sampled_from(FOREIGN_TIMES),
    op=st.sampled_from(FOREIGN_OPS),
)
async def test_foreign_rows(
    store: SessionStore, conn: asyncpg.Connection, depth: int, document: str, time: str, op: str
) -> None:
    await check_foreign_rows(store, conn, depth, document, time, op)


@named
@cases(
    {"depth": 5000, "document": "{}", "time": "2024-01-01 00:00:00+00", "op": "sessions.get"},
    {"depth": 5000, "op": "sessions.list"},
    {"depth": 5000, "op": "messages.history"},
    {"depth": 1, "document": '{"x": 1e5000}', "op": "messages.history"},
    *(
        {"depth": 1, "time": time, "op": op}
        for time in ("infinity", "20000-01-01 00:00:00+00")
        for op in ("sessions.get", "sessions.list", "messages.history")
    ),
    {"depth": 1, "time": "20000-01-01 00:00:00+00", "op": "conversations.list_for_session"},
)
@given(
    depth=st.sampled_from([1, 5000]),
    document=st.sampled_from(FOREIGN_JSON),
    time=st.sampled_from(FOREIGN_TIMES),
    op=st.sampled_from(FOREIGN_OPS),
)
async def test_foreign_rows_named(
    store: SessionStore, conn: asyncpg.Connection, depth: int, document: str, time: str, op: str
) -> None:
    """The rows the issue names, pinned."""
    await check_foreign_rows(store, conn, depth, document, time, op)


async def check_foreign_rows(
    store: SessionStore, conn: asyncpg.Connection, depth: int, document: str, time: str, op: str
) -> None:
    """Rows that other clients wrote with plain SQL — metadata thousands of levels deep,
    numbers Python cannot parse, times beyond ``datetime`` (in every time column of the
    session, its conversation and its messages) — are read without ``RecursionError``,
    ``OverflowError`` or ``ValueError``: reads return the row; writes succeed or raise a
    domain error; listings page through them, each row once."""
    CASES["foreign_rows"] += 1
    world = World(store, conn)
    user = world.fresh("foreign")
    cont = world.fresh("foreign")
    (sid, other), (cid, _) = await world.build(
        [S(user), S(user)],  # a second session and conversation for the listings
        [C(cont, 0, 2), C(world.fresh("sibling"), 0)],
    )
    meta = nested(depth, document)
    for statement in (
        "UPDATE sessions SET metadata = $2::text::jsonb WHERE id = $1",
        "UPDATE conversations SET metadata = $2::text::jsonb WHERE session_id = $1",
        "UPDATE messages SET metadata = $2::text::jsonb"
        " WHERE conversation_id IN (SELECT id FROM conversations WHERE session_id = $1)",
    ):
        # Deeper than this server's stack allows: the row keeps its metadata.
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute(statement, sid, meta)
    await conn.execute(
        "UPDATE sessions SET expires_at = $2::text::timestamptz,"
        " created_at = $2::text::timestamptz, updated_at = $2::text::timestamptz WHERE id = $1",
        sid,
        time,
    )
    await conn.execute(
        "UPDATE conversations SET created_at = $2::text::timestamptz,"
        " updated_at = $2::text::timestamptz, last_message_at = $2::text::timestamptz"
        " WHERE id = $1",
        cid,
        time,
    )
    await conn.execute(
        "UPDATE messages SET created_at = $2::text::timestamptz WHERE conversation_id = $1",
        cid,
        time,
    )

    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "sessions.get": lambda: store.sessions.get(sid),
        "sessions.list": lambda: store.sessions.list(user_id=user, limit=1),
        "sessions.update": lambda: store.sessions.update(sid, title="t", metadata={"k": 1}),
        "sessions.record_turn": lambda: store.sessions.record_turn(sid, tokens=1),
        "conversations.get": lambda: store.conversations.get(cid),
        "conversations.get_by_continuation_id": lambda: store.conversations.get_by_continuation_id(
            cont
        ),
        "conversations.list_for_session": lambda: store.conversations.list_for_session(
            sid, limit=1
        ),
        "messages.history": lambda: store.messages.history(cid, limit=1),
        "messages.count": lambda: store.messages.count(cid),
        "add_turn": lambda: store.add_turn(cont, "user", "hi", session_id=sid),
        "purge_user": lambda: store.purge_user(user),
    }
    expect = Expect()
    if op in ("sessions.update", "sessions.record_turn", "add_turn"):
        expect.allow(SessionExpiredError, InvalidStateError)  # e.g. expires_at = -infinity
    out = await world.attempt(calls[op], expect)
    if op == "sessions.list" and out.ok:

        async def following(c: str) -> Page[Any]:
            return await store.sessions.list(user_id=user, limit=1, cursor=c)

        listed = await walk(out.result, following, 1, 4)
        assert sorted(listed) == sorted([sid, other]), "the listing lost or repeated a row"
    if op == "conversations.list_for_session" and out.ok:

        async def following_c(c: str) -> Page[Any]:
            return await store.conversations.list_for_session(sid, limit=1, cursor=c)

        listed = await walk(out.result, following_c, 1, 5)
        assert sorted(listed) == sorted(
            [
                cid,
                *[
                    r["id"]
                    for r in await conn.fetch(
                        "SELECT id FROM conversations WHERE session_id = $1 AND id <> $2", sid, cid
                    )
                ],
            ]
        ), "the listing lost or repeated a row"


# --- the store's own methods ---------------------------------------------------------------------


async def settle(call: Callable[[], object]) -> tuple[object, BaseException | None]:
    """What ``call`` returned (awaited), or what it raised."""
    try:
        result = call()
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        return None, exc
    return result, None


@fuzz(15)
@given(
    ops=st.lists(
        st.sampled_from(
            [
                "open",
                "await",
                "close",
                "flush",
                "stats",
                "failed_writes",
                "enqueue",
                "read",
                "pooler",
            ]
        ),
        max_size=7,
    )
)
async def test_store_lifecycle(dsn: str, conn: asyncpg.Connection, ops: list[str]) -> None:
    await check_store_lifecycle(dsn, conn, ops)


@named
@example(ops=["enqueue"])  # a store never opened: accept and write, or refuse
@example(ops=["open", "close", "enqueue", "open", "read"])
@example(ops=["await", "await", "close", "close", "flush", "stats"])
@given(ops=st.lists(st.sampled_from(["open", "close"])))
async def test_store_lifecycle_named(dsn: str, conn: asyncpg.Connection, ops: list[str]) -> None:
    """The sequences that matter most, pinned."""
    await check_store_lifecycle(dsn, conn, ops)


async def check_store_lifecycle(dsn: str, conn: asyncpg.Connection, ops: list[str]) -> None:
    """``open`` (and ``await store``), ``close``, ``flush``, ``stats``, ``failed_writes``,
    ``pooler``, ``config`` in any order: idempotent, never a driver error, and every
    message accepted while open is durable once ``close`` returns."""
    CASES["store.lifecycle"] += 1
    store = sessionstore.connect(dsn, **store_overrides())
    world = World(store, conn)
    cid = await world.conversation(messages=0)
    assert store.config.dsn is not None
    state = "new"
    accepted: list[UUID] = []
    try:
        for op in ops:
            live = state == "open"
            if op in ("open", "await"):
                result, error = await settle(store.open if op == "open" else lambda: store)
                if state == "closed" and error is not None:
                    assert isinstance(error, SessionStoreError), repr(error)
                    continue
                assert error is None, f"{op} raised {error!r}"
                assert result is store
                state = "open"
            elif op == "close":
                _, error = await settle(store.close)
                assert error is None, f"close raised {error!r}"
                state = "closed"
            elif op == "flush":
                _, error = await settle(store.flush)
                assert error is None, f"flush raised {error!r}"
            elif op == "stats":
                stats = store.stats()
                assert isinstance(stats, StoreStats)
                assert min(stats.queued, stats.in_flight, stats.written, stats.set_aside) >= 0
            elif op == "failed_writes":
                assert store.failed_writes() == []
            elif op == "pooler":
                assert store.pooler in ("none", "session", "transaction")
            elif op == "enqueue":
                result, error = await settle(lambda: store.messages.enqueue(cid, "user", "queued"))
                if live:
                    assert error is None, f"enqueue on an open store raised {error!r}"
                if error is None:
                    assert isinstance(result, UUID)
                    accepted.append(result)
                else:
                    assert isinstance(error, SessionStoreError), f"enqueue raised {error!r}"
            else:
                result, error = await settle(lambda: store.sessions.get(uuid4()))
                assert isinstance(error, SessionStoreError), f"get raised {error!r}"
                if live:
                    assert isinstance(error, NotFoundError), repr(error)
    finally:
        await store.close()
    for mid in accepted:
        assert await world.row("messages", mid) is not None, "accepted, then lost at close"


SPILL_KINDS = st.sampled_from(
    ["valid", "valid", "missing", "directory", "nul", "garbage", "tampered", "empty"]
)


@fuzz(30)
@given(
    kind=SPILL_KINDS, messages=st.lists(HOSTILE_TEXT, min_size=1, max_size=3), as_path=st.booleans()
)
async def test_replay(
    store: SessionStore,
    conn: asyncpg.Connection,
    tmp_path: Path,
    kind: str,
    messages: list[str],
    as_path: bool,
) -> None:
    """``replay``: a spill file's messages land exactly once; a path that is no spill file
    is refused naming ``path`` and writes nothing."""
    from sessionstore.spill import append_spill
    from sessionstore.validation import CheckedMessage
    from sessionstore.writes import PendingWrite

    CASES["replay"] += 1
    world = World(store, conn)
    cid = await world.conversation()
    path = tmp_path / world.fresh("spill")
    valid = [m for m in messages if text_verdict(m) is OK]
    items = [
        PendingWrite.accept("message", CheckedMessage("user", m, None, None), conversation_id=cid)
        for m in valid
    ]
    expect = Expect()
    if kind in ("valid", "tampered", "empty"):
        append_spill(path, items)
        if kind == "tampered":
            with path.open("a", encoding="utf-8") as spill:
                spill.write(
                    json.dumps({"id": str(uuid4()), "kind": "message", "content": 5}) + "\n"
                )
            expect.arg("path", BAD)
    elif kind == "missing":
        expect.arg("path", BAD).allow(NotFoundError)
    elif kind == "directory":
        path.mkdir()
        expect.arg("path", BAD)
    elif kind == "nul":
        path = Path(str(path) + "\x00")
        expect.arg("path", BAD)
    else:
        path.write_bytes(b"\xff\xfe not json\n")
        expect.arg("path", BAD)
    if kind == "empty":
        path.write_text("")
        items = []
    argument = path if as_path else str(path)

    out = await world.attempt(lambda: world.api.replay(argument), expect)
    if not out.ok:
        return
    assert out.result == len(items)
    for item in items:
        row = await world.row("messages", item.id)
        assert row is not None, "a replayed message is missing"
        assert row["content"] == item.content, "replayed content differs"
    fingerprint = await world.fingerprint()
    assert await store.replay(argument) == len(items)
    assert await world.fingerprint() == fingerprint, "a second replay wrote again"


def default_ttl_verdict(value: object) -> Verdict:
    """A ``default_ttl`` setting: what ``ttl=`` takes (numbers are seconds, as pydantic
    reads them); a library may refuse more (strings, very long durations)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            value = timedelta(seconds=value)
        except (OverflowError, ValueError):
            return BAD
    if isinstance(value, timedelta):
        return worst(ttl_verdict(value, datetime.now(UTC)), EITHER)
    return EITHER


@fuzz(60)
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            [
                "default_ttl",
                "batch_size",
                "max_pending",
                "cache_ttl",
                "max_delay",
                "min_size",
                "command_timeout",
                "write_deadline",
                "pooler",
                "nonsense",
            ]
        ),
        st.one_of(
            INTS,
            TTLS,
            st.sampled_from([float("nan"), float("inf"), -1.0, 0.5, "fast", "none", None]),
        ),
        min_size=1,
        max_size=2,
    )
)
async def test_connect(dsn: str, overrides: dict[str, object]) -> None:
    """``connect(dsn, **settings)``: a setting that is unknown or out of range is refused
    naming it; a ``default_ttl`` that is accepted can be used."""
    CASES["connect"] += 1
    expect = Expect()
    for name, value in overrides.items():
        if name == "nonsense":
            expect.arg(name, BAD)
        elif isinstance(value, float) and value != value:
            expect.arg(name, BAD)  # NaN is no setting
        elif name == "default_ttl" and value is not None:
            expect.arg(name, default_ttl_verdict(value))
        elif name == "min_size":
            expect.arg(("min_size", "max_size"), EITHER)  # min_size > max_size: either named
        else:
            expect.arg(name, EITHER)
    settings_ = {**store_overrides(), **overrides}
    _, error = await settle(lambda: sessionstore.connect(dsn, **settings_))
    if error is not None:
        assert isinstance(error, InvalidInputError), f"connect raised {error!r}"
        assert names_argument(error.field, expect.refusable), f"{error.field!r}: {error}"
        return
    assert not expect.bad, f"connect accepted {expect.bad}"
    ttl = overrides.get("default_ttl", OMITTED)
    if isinstance(ttl, timedelta) and ttl > timedelta(days=36_500):
        async with sessionstore.connect(dsn, **settings_) as store:
            made, error = await settle(lambda: store.sessions.create("u"))
            if error is not None:
                assert isinstance(error, InvalidInputError), repr(error)
                assert error.field in ("ttl", "default_ttl"), error.field
            else:
                assert isinstance(made, Session)
                assert made.expires_at is not None
                assert made.expires_at - made.created_at == ttl


# --- every public method is covered -------------------------------------------------------------

#: The public names of each class, and where the fuzz exercises them.
COVERED: dict[str, set[str]] = {
    "SessionStore": {
        "sessions",  # test_sessions_*
        "conversations",  # test_conversations*
        "messages",  # test_messages, test_write_behind
        "add_turn",  # test_add_turn, test_foreign_rows
        "purge_user",  # test_purge_user
        "enqueue_turn",  # test_write_behind
        "flush",  # test_write_behind, test_store_lifecycle
        "open",  # test_store_lifecycle
        "close",  # test_store_lifecycle
        "stats",  # test_store_lifecycle, test_write_behind
        "failed_writes",  # test_store_lifecycle, test_write_behind
        "pooler",  # test_store_lifecycle
        "config",  # test_store_lifecycle, test_connect
        "replay",  # test_replay
        "as_user",  # test_as_user
        "states",  # test_states
    },
    "UserView": {
        "sessions",
        "conversations",
        "messages",
        "add_turn",
        "purge_user",
        "user_id",
        "states",  # test_states runs on the store: the same repository class
    },
    "SessionsRepository": {
        "create",
        "get",
        "update",
        "record_turn",
        "extend",
        "pause",
        "resume",
        "complete",
        "list",
        "delete",
        "cleanup_expired",
        "count_expired",
    },
    "ConversationsRepository": {
        "get_or_create",
        "get",
        "get_by_continuation_id",
        "delete",
        "list_for_session",
    },
    "MessagesRepository": {"add", "add_many", "history", "count", "pop", "clear"},
    "StatesRepository": {"read", "write"},  # test_states
    "QueuedMessagesRepository": {
        "add",
        "add_many",
        "history",
        "count",
        "pop",
        "clear",
        "enqueue",
        "enqueue_nowait",
    },
}


#: The keyword options of the appends (TypedDicts), and the properties that fuzz them.
OPTIONS_COVERED: dict[str, set[str]] = {
    "MessageOptions": {"metadata", "tokens"},  # test_messages, test_write_behind
    "TurnOptions": {"metadata", "tokens", "session_id"},  # test_write_behind (enqueue_turn)
    "AddTurnOptions": {"metadata", "tokens", "session_id", "message_id", "context"},
}


def public_names(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


async def test_every_public_method_is_fuzzed() -> None:
    """A public method added to these classes without a property here fails this test."""
    store = sessionstore.connect("postgresql://fuzz@127.0.0.1:1/fuzz")  # never opened
    instances: dict[str, object] = {
        "SessionStore": store,
        "UserView": store.as_user("fuzz-user"),
        "SessionsRepository": store.sessions,
        "ConversationsRepository": store.conversations,
        "MessagesRepository": store.as_user("fuzz-user").messages,
        "QueuedMessagesRepository": store.messages,
        "StatesRepository": store.states,
    }
    kinds = {
        "SessionStore": SessionStore,
        "UserView": UserView,
        "SessionsRepository": SessionsRepository,
        "ConversationsRepository": ConversationsRepository,
        "MessagesRepository": MessagesRepository,
        "QueuedMessagesRepository": QueuedMessagesRepository,
        "StatesRepository": StatesRepository,
    }
    for name, instance in instances.items():
        assert type(instance) is kinds[name]
        missing = public_names(instance) - COVERED[name]
        assert not missing, f"{name} has public names the fuzz does not cover: {sorted(missing)}"
        gone = COVERED[name] - public_names(instance)
        assert not gone, f"{name} no longer has {sorted(gone)}: update COVERED"
    for kind in (MessageOptions, TurnOptions, AddTurnOptions):
        keys = set(kind.__optional_keys__) | set(kind.__required_keys__)
        assert keys == OPTIONS_COVERED[kind.__name__], f"{kind.__name__} options changed: {keys}"


def test_zz_case_count() -> None:
    """The module ran at least ``MIN_TOTAL_CASES`` examples (run last: pytest keeps file
    order). Skipped when some properties were not selected."""
    absent = [name for name in PROPERTIES if not CASES[name]]
    if absent:
        pytest.skip(f"properties not run: {absent}")
    total = sum(CASES.values())
    logger.info("test_fuzz ran %d cases: %s", total, dict(CASES))
    assert total >= MIN_TOTAL_CASES, f"only {total} cases: {dict(CASES)}"
