"""The sessionstore command, through Typer's runner, against the real server."""

from __future__ import annotations

import asyncio
import itertools
import re

import asyncpg
import pytest
import sqlalchemy.exc
from typer.testing import CliRunner, Result

import sessionstore
from sessionstore import StoreUnavailableError
from sessionstore.cli import app, explain
from sessionstore.migrations import head_revision, pending_revisions

from ...conftest import as_supabase_postgres
from ...servers import TestServer

runner = CliRunner()


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


def text(result: Result) -> str:
    """The output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


COMMANDS = ["migrate", "downgrade", "status", "cleanup", "replay", "demo"]
#: A terminal narrower than the runner's default, so that help wraps more.
HELP_WIDTH = 60


def _wrapped_twice(output: str) -> list[str]:
    """Lines of a paragraph that end although the next line's first word would have fit:
    text wrapped once by its source's line breaks, then again to the terminal."""
    lines = output.splitlines()
    section = ""
    found = []
    for line, following in itertools.pairwise(lines):
        if line and not line[0].isspace():
            section = line  # "Usage: …", "Options:", "Commands:"
        indent = len(following) - len(following.lstrip())
        # Continuations: of a description paragraph (indent 2, before any section), or
        # of an entry's help in a section (indented past the entry's name).
        continues = indent == 2 if section.startswith("Usage") else indent > 2
        if not line.strip() or not following.strip() or not continues:
            continue
        if len(line) + 1 + len(following.split()[0]) <= HELP_WIDTH:
            found.append(f"{line!r} before {following.strip()!r}")
    return found


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
async def test_every_command_has_plain_help_wrapped_once(command: list[str]) -> None:
    result = await asyncio.to_thread(
        runner.invoke,
        app,
        [*command, "--help"],
        terminal_width=HELP_WIDTH,
        prog_name="sessionstore",
    )
    assert result.exit_code == 0
    assert result.output.startswith("Usage: sessionstore")
    usage = result.output.splitlines()[0]
    assert "{" not in usage  # REVISION, not Typer's {revision}
    for label in ("<bool>", "<str>", "<int", "<path>", "<file>", "╭"):
        assert label not in result.output
    assert _wrapped_twice(result.output) == []
    assert max(len(line) for line in result.output.splitlines()) <= HELP_WIDTH


def test_the_wrapped_twice_check_finds_a_paragraph_wrapped_by_its_source() -> None:
    rich_style = "Usage: x\n\n  Needs a direct or session-mode\n  connection, not a pooler.\n"
    assert len(_wrapped_twice(rich_style)) == 1
    assert _wrapped_twice(rich_style.replace("mode\n  connection", "mode connection")) == []


async def test_arguments_are_named_by_their_metavar() -> None:
    result = await cli("downgrade", "--help")
    assert "downgrade [OPTIONS] REVISION Downgrade the schema" in text(result)
    assert "REVISION Target revision, or `base` to remove everything." in text(result)
    assert "--dsn URL" in text(result)


async def test_migrate_says_what_it_did_and_when_there_was_nothing_to_do(
    empty_dsn: str,
) -> None:
    first = await cli("migrate", "--dsn", empty_dsn)
    assert first.exit_code == 0, first.output
    assert f"to head ({len(pending_revisions(None))} revisions)" in text(first)
    again = await cli("migrate", "--dsn", empty_dsn)
    assert again.exit_code == 0, again.output
    assert text(again).endswith("already at head: nothing to do")
    assert "migrated" not in text(again)


async def test_migrate_status_downgrade(empty_dsn: str) -> None:
    assert (await cli("migrate", "--dsn", empty_dsn)).exit_code == 0
    ok = await cli("status", "--dsn", empty_dsn)
    assert ok.exit_code == 0, ok.output
    assert "pending" in text(ok)
    assert "attention" not in text(ok)
    down = await cli("downgrade", "0003_counters_and_order", "--dsn", empty_dsn)
    assert down.exit_code == 0, down.output
    behind = await cli("status", "--dsn", empty_dsn)
    assert behind.exit_code == 1
    pending = len(pending_revisions("0003_counters_and_order"))
    assert f"{pending} migration(s) pending: run `sessionstore migrate`" in text(behind)


async def test_migrate_sql_prints_without_running() -> None:
    result = await cli("migrate", "--sql", "--dsn", "postgresql://nobody@127.0.0.1:1/none")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE sessions" in text(result)


async def test_status_flags_a_missing_policy_and_an_anon_readable_table(
    pg_server: TestServer, supabase_database: str
) -> None:
    dsn = as_supabase_postgres(pg_server.admin_dsn_for(supabase_database))
    assert (await cli("status", "--dsn", dsn)).exit_code == 0
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP POLICY messages_own ON messages")
        await conn.execute("ALTER TABLE conversations DISABLE ROW LEVEL SECURITY")
    finally:
        await conn.close()
    result = await cli("status", "--dsn", dsn)
    assert result.exit_code == 1
    assert "messages is missing policies: messages_own" in text(result)
    assert "row-level security is off on conversations" in text(result)
    assert "anon can read or change conversations" in text(result)
    assert "authenticated can read or change conversations" in text(result)


@pytest.mark.parametrize(
    "command",
    [["migrate"], ["downgrade", "base"], ["alembic", "current"], ["alembic", "stamp", "head"]],
)
async def test_every_migration_command_refuses_a_transaction_pooler(command: list[str]) -> None:
    # Through such a pooler the migration lock outlives the run on a server connection
    # others get, and the next migration waits for ever; downgrade was let through.
    url = "postgresql://u:secret@db.example.com:6543/postgres"
    result = await cli(*command, "--dsn", url)
    assert result.exit_code == 1
    assert "not a transaction pooler" in text(result)
    assert "secret" not in text(result)
    assert "Traceback" not in text(result)


async def test_unreachable_database_is_one_sentence() -> None:
    result = await cli("status", "--dsn", "postgresql://u:secret@127.0.0.1:1/db")
    assert result.exit_code == 1
    assert "Could not reach postgresql://u:***@127.0.0.1:1/db" in text(result)
    assert "Traceback" not in text(result)
    assert "secret" not in text(result)


async def test_missing_migrations_say_what_to_run(empty_dsn: str) -> None:
    result = await cli("cleanup", "--dsn", empty_dsn)
    assert result.exit_code == 1
    assert "the sessionstore schema is missing" in text(result)
    assert "run `sessionstore migrate`" in text(result)


def test_wrong_password_sentence() -> None:
    error = asyncpg.InvalidPasswordError("password authentication failed for user app")
    message = explain(error, "postgresql://app:pw@h:5432/db")
    assert message.startswith("Authentication failed for postgresql://app:***@h:5432/db")


async def test_cleanup_dry_run_then_for_real(admin_dsn: str, conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO sessions (user_id, expires_at) SELECT 'u', now() - interval '1 hour'"
        " FROM generate_series(1, 25)"
    )
    dry = await cli("cleanup", "--dsn", admin_dsn, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would delete 25 expired sessions" in text(dry)
    assert await conn.fetchval("SELECT count(*) FROM sessions") == 25
    real = await cli("cleanup", "--dsn", admin_dsn, "--batch-size", "10")
    assert real.exit_code == 0, real.output
    assert "deleted 25 expired sessions" in text(real)
    assert await conn.fetchval("SELECT count(*) FROM sessions") == 0


async def test_a_missing_database_is_named_not_called_unreachable(pg_server: TestServer) -> None:
    result = await cli("status", "--dsn", pg_server.admin_dsn_for("sstest_no_such_database"))
    assert result.exit_code == 1
    assert 'database "sstest_no_such_database" does not exist' in text(result)
    assert "create the database or fix the URL" in text(result)
    assert "Could not reach" not in text(result)


async def test_migrate_sql_reads_no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", "postgresql+asyncpg://u:secret@h/db")
    result = await cli("migrate", "--sql")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE sessions" in text(result)


async def test_a_refused_url_is_one_sentence_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", "postgresql://u:pa#secret@h/db")
    result = await cli("status")
    assert result.exit_code == 1
    assert text(result).startswith("error: dsn: SESSIONSTORE_DATABASE_URL has an unencoded")
    assert "secret" not in text(result)


async def test_version() -> None:
    result = await cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sessionstore {sessionstore.__version__}"


async def test_errors_go_to_stderr() -> None:
    """A script reading a command's output sees only its result; the error, with its
    bracketed parts (not read as Rich markup), goes to stderr."""
    result = await cli("status", "--dsn", "postgresql://u@127.0.0.1:1/db")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: Could not reach" in result.stderr
    assert "[Errno 111]" in result.stderr


async def test_alembic_help_is_alembics_and_says_where_the_url_comes_from() -> None:
    result = await cli("alembic", "--help")
    assert result.exit_code == 0, result.output
    assert text(result).startswith("usage: sessionstore alembic")
    assert "--dsn URL" in text(result)
    listed = result.output.split("positional arguments:")[1].split("options:")[0]
    shown = {m.group(1) for m in re.finditer(r"^ {4}(\S+)", listed, re.MULTILINE)}
    assert {"current", "history", "stamp", "upgrade", "downgrade", "heads"} <= shown
    # nothing it refuses, nor what only `init` uses, nor the ini options it ignores
    assert not shown & {"revision", "merge", "edit", "init", "list_templates"}
    usage = re.search(r"\{([a-z_,]+)\}", result.output)
    assert usage is not None
    assert set(usage.group(1).split(",")) == shown  # the usage line lists the same
    for word in ("list_templates", "--config", "--name", "--raiseerr"):
        assert word not in result.output


async def test_alembic_runs_on_the_packaged_revisions_without_an_ini(empty_dsn: str) -> None:
    up = await cli("alembic", "--dsn", empty_dsn, "upgrade", "0002_sessions")
    assert up.exit_code == 0, up.output
    current = await cli("alembic", "current", "--dsn", empty_dsn)  # --dsn after it, too
    assert current.exit_code == 0, current.output
    assert current.stdout.split() == ["0002_sessions"]
    # Alembic's own -x dsn=... works as with the `alembic` command
    head = await cli("alembic", "-x", f"dsn={empty_dsn}", "upgrade", "head")
    assert head.exit_code == 0, head.output
    current = await cli("alembic", "--dsn", empty_dsn, "current")
    assert current.stdout.split() == [head_revision(), "(head)"]
    # Alembic's errors are one sentence, like every other command's
    bogus = await cli("alembic", "--dsn", empty_dsn, "stamp", "no_such_revision")
    assert bogus.exit_code == 1
    assert text(bogus).startswith("error: Can't locate revision identified by")
    assert "FAILED" not in text(bogus)


@pytest.mark.parametrize("command", ["revision", "merge", "edit", "init"])
async def test_alembic_will_not_write_into_the_installed_package(command: str) -> None:
    args = {"revision": ["-m", "x"], "merge": ["heads"], "edit": ["head"], "init": ["d"]}
    result = await cli("alembic", command, *args[command])
    assert result.exit_code == 1
    assert f"`alembic {command}` would write into the installed sessionstore package" in text(
        result
    )


async def test_alembic_sql_through_a_transaction_pooler_url_connects_to_nothing() -> None:
    result = await cli(
        "alembic",
        "--dsn",
        "postgresql://u:secret@db.example.com:6543/db",
        "upgrade",
        "head",
        "--sql",
    )
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE sessions" in text(result)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:secret@db.example.com/db",
        "mysql+pymysql://u:secret@db.example.com/db",
        "postgresql+psycopg2://u:secret@db.example.com/db",
        "sqlite:///secret.db",
    ],
)
@pytest.mark.parametrize("command", [["migrate"], ["downgrade", "base"], ["alembic", "current"]])
async def test_a_url_of_another_driver_is_one_sentence(command: list[str], url: str) -> None:
    result = await cli(*command, "--dsn", url)
    assert result.exit_code == 1
    assert text(result).startswith("error: dsn: the database URL is ")
    for noise in ("Background on this error", "sqlalche.me", "Traceback", "secret"):
        assert noise not in text(result)


def test_sqlalchemy_errors_are_shown_without_their_statement_and_link() -> None:
    """SQLAlchemy appends "[SQL: ...]" and a "Background on this error at" link to what it
    wraps; the sentence a person reads has neither (--debug has the traceback)."""
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, RuntimeError("the server left"))
    assert "sqlalche.me" in str(wrapped)
    assert explain(wrapped, None) == "the server left (run with --debug for the traceback)"
    plugin = sqlalchemy.exc.NoSuchModuleError("Can't load plugin: sqlalchemy.dialects:mysql")
    assert explain(plugin, None).startswith("Can't load plugin: sqlalchemy.dialects:mysql (")


@pytest.mark.parametrize(
    "arguments",
    [
        ["current", "-x", "dsn=postgresql://u:S3cretPW@h:5432/db"],  # -x after the command
        ["--dns", "postgresql://u:S3cretPW@h:5432/db", "current"],  # a mistyped option
    ],
)
async def test_alembic_argument_errors_do_not_show_the_password(arguments: list[str]) -> None:
    result = await cli("alembic", *arguments)
    assert result.exit_code == 2
    assert "S3cretPW" not in result.output
    assert "postgresql://u:***@h:5432/db" in text(result)


def test_a_timeout_on_a_live_server_is_not_called_unreachable() -> None:
    """A statement that outlasted command_timeout (the client cancelled it) or the
    server's statement_timeout was explained as "Could not reach ... is the server
    running": the server had answered the connection, so that sent people looking in
    the wrong place."""
    dsn = "postgresql://app:pw@h:5432/db"
    client = explain(TimeoutError(), dsn)
    server = explain(
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"), dsn
    )
    for message in (client, server):
        assert message.startswith("postgresql://app:***@h:5432/db was reached but did not answer")
        assert "Could not reach" not in message
    assert "outcome is unknown" in client
    hung = explain(StoreUnavailableError("could not connect to h: no answer"), dsn)
    assert hung.startswith("Could not reach postgresql://app:***@h:5432/db")
