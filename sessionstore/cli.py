"""The ``sessionstore`` command: migrate, downgrade, alembic, status, cleanup, replay, demo.

Every failure is one sentence on the console (the traceback only with ``--debug``), and
nothing printed holds the database password: URLs go through ``redact_dsn`` and every
error text through ``hide_secrets`` before it is shown.
"""

from __future__ import annotations

import asyncio
import io
import logging
from argparse import Namespace
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stderr
from pathlib import Path
from typing import Annotated, NoReturn

import sqlalchemy.exc
import typer
from alembic.config import CommandLine
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__, migrations
from .config import MISSING_DSN, StoreConfig, redact_dsn
from .demo import DemoPlan, DemoReport, describe_changes, run_demo, users_label
from .dsn import hide_secrets
from .embedded import embedded_server
from .errors import (
    AdoptionError,
    AuthenticationError,
    InvalidInputError,
    SessionStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    translate,
)
from .health import Status, check
from .store import connect

app = typer.Typer(
    help="Session state for chat and agent servers, in PostgreSQL.",
    no_args_is_help=True,
    # An unexpected error's traceback would otherwise list local variables: DSNs among them.
    pretty_exceptions_show_locals=False,
)
console = Console()
# Errors and warnings go to stderr, so that a script reading a command's output sees
# only its result.
err_console = Console(stderr=True)

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        help="postgresql:// URL (default: SESSIONSTORE_DATABASE_URL, else DATABASE_URL "
        "if that is a postgresql:// URL).",
    ),
]


class _State:
    debug = False


def _show_version(value: bool) -> None:
    if value:
        console.print(f"sessionstore {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    _State.debug = debug


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__


def _as_store_error(exc: BaseException) -> SessionStoreError | None:
    """The sessionstore error behind ``exc`` (Alembic and SQLAlchemy wrap driver errors)."""
    for cause in _causes(exc):
        error = translate(cause)
        if error is not None:
            return error
    return None


def explain(exc: BaseException, dsn: str | None) -> str:
    """One sentence for a person: what went wrong and what to do about it.

    It never holds ``dsn``'s password, even where another library's message quotes it.
    """
    return hide_secrets(_explain(exc, dsn), dsn)


def _explain(exc: BaseException, dsn: str | None) -> str:
    where = redact_dsn(dsn) or "the database"
    error = _as_store_error(exc)
    if isinstance(error, InvalidInputError) and error.field == "dsn":
        return str(error)  # says which URL and what to change; no need to show it
    if isinstance(error, AuthenticationError) and error.sqlstate == "28000":
        return f"Login refused for {where}: {error}"
    if isinstance(error, AuthenticationError):
        return (
            f"Authentication failed for {where}: check the user name and password in "
            "the URL (--dsn or SESSIONSTORE_DATABASE_URL)."
        )
    # No SQLSTATE, or a connection-class one: the server never answered the request.
    silent = error is not None and (error.sqlstate or "08").startswith("08")
    if isinstance(error, StoreUnavailableError | StoreTimeoutError) and silent:
        return (
            f"Could not reach {where}: is the server running, and are host, port and "
            f"database in the URL right? ({error})"
        )
    if isinstance(error, AdoptionError):
        return str(error)
    if error is not None:
        return f"{where}: {error}"
    return f"{_own_text(exc)} (run with --debug for the traceback)"


def _own_text(exc: BaseException) -> str:
    """``exc``'s own message. SQLAlchemy's text adds the statement, its parameters and
    "(Background on this error at: https://sqlalche.me/...)": not one sentence, and
    nothing a person can act on (``--debug`` shows it all)."""
    if isinstance(exc, sqlalchemy.exc.StatementError) and exc.orig is not None:
        return _own_text(exc.orig)
    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        return str(exc.args[0]) if exc.args else type(exc).__name__
    return str(exc) or type(exc).__name__


def _fail(message: str) -> NoReturn:
    # Messages quote hosts and server text: brackets in them are not Rich markup.
    err_console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


@contextmanager
def _readable_errors(dsn: str | None) -> Iterator[None]:
    """Turn any failure into one readable sentence (the traceback with --debug)."""
    try:
        yield
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _State.debug:
            raise
        _fail(explain(exc, dsn))


def _settings(dsn: str | None) -> StoreConfig:
    """The settings, with ``--dsn`` over the environment (whose URLs are then not read)."""
    try:
        return StoreConfig.load(dsn=dsn or None)
    except InvalidInputError as exc:
        _fail(hide_secrets(str(exc), dsn))


def _config(dsn: str | None) -> StoreConfig:
    config = _settings(dsn)
    if not config.dsn:
        _fail(MISSING_DSN)
    return config


@app.command()
def migrate(
    dsn: DsnOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it.")
    ] = False,
) -> None:
    """Upgrade the schema (to head by default); adopts databases made by the original SQL.

    Serialised across processes by an advisory lock. Needs a direct or session-mode
    connection, not a transaction pooler.
    """
    if sql:
        # Offline: the SQL does not depend on the database, so no URL is needed or read.
        with _readable_errors(dsn):
            migrations.upgrade(dsn or "", revision, sql=True)
        return
    config = _config(dsn)
    assert config.dsn is not None
    with _readable_errors(config.dsn):
        migrations.upgrade(config.dsn, revision)
    console.print(f"migrated {escape(redact_dsn(config.dsn) or '')} to {escape(revision)}")


@app.command()
def downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target revision, or `base` to remove everything.")
    ],
    dsn: DsnOption = None,
) -> None:
    """Downgrade the schema to REVISION."""
    config = _config(dsn)
    with _readable_errors(config.dsn):
        migrations.downgrade(config.dsn or "", revision)
    console.print(f"downgraded {escape(redact_dsn(config.dsn) or '')} to {escape(revision)}")


# Alembic commands that write files into the script directory: here that is the installed
# package, which is not where an application's own migrations belong.
_WRITES_FILES = frozenset({"init", "revision", "merge", "edit"})


def _hide_urls(text: str, arguments: list[str]) -> str:
    """``text`` without the password of any URL among ``arguments`` (also after ``=``)."""
    for argument in arguments:
        head, _, rest = argument.partition("://")
        if rest:
            # dsn=postgresql://… or --dsn=postgresql://…: the URL starts after the "="
            url = argument.split("=", 1)[1] if "=" in head else argument
            text = hide_secrets(text, url)
    return text


def _x_dsn(options: Namespace) -> str | None:
    """The value of ``-x dsn=...`` on Alembic's command line, if given."""
    for argument in options.x or []:
        key, _, value = str(argument).partition("=")
        if key == "dsn":
            return value
    return None


@app.command(
    "alembic",
    # --help and every other argument are Alembic's own.
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def alembic_command(ctx: typer.Context, dsn: DsnOption = None) -> None:
    """Alembic on the packaged revisions, with no alembic.ini: `sessionstore alembic current`.

    The arguments are Alembic's (`current`, `history`, `stamp REV`, `upgrade head --sql`,
    `--help`); -c and -n are not used. The URL is found as for `migrate`: --dsn, else
    `-x dsn=...`, else the environment.
    """
    line = CommandLine(prog="sessionstore alembic")
    line.parser.description = (
        "Alembic's command line on the revisions in the installed sessionstore package, "
        "with no ini: -c and -n are not used. The database URL: --dsn URL (before or after "
        "the command), else -x dsn=URL, else SESSIONSTORE_DATABASE_URL (or DATABASE_URL)."
    )
    said = io.StringIO()
    try:
        # argparse's errors quote the arguments (a URL after -x dsn=, a mistyped option's
        # value): its stderr is caught so that no password is shown.
        with redirect_stderr(said):
            options = line.parser.parse_args(ctx.args)  # exits, as `alembic` does, on --help
            if not hasattr(options, "cmd"):
                line.parser.error("too few arguments")
    except SystemExit as exc:
        if not exc.code:
            raise
        err_console.print(escape(_hide_urls(said.getvalue(), ctx.args).rstrip()))
        raise typer.Exit(2) from None
    name = options.cmd[0].__name__
    if name in _WRITES_FILES:
        _fail(
            f"`alembic {name}` would write into the installed sessionstore package: keep "
            "your own migrations in an Alembic environment of your own."
        )
    settings = _settings(dsn or _x_dsn(options))
    config = migrations.alembic_config(settings.dsn or "", cmd_opts=options)
    # Alembic's errors as one sentence like every other command's, not "FAILED:" and 255.
    options.raiseerr = True
    # Its progress lines ("Running upgrade ..."), as the `alembic` command shows them.
    logging.getLogger("alembic").setLevel(logging.INFO)
    with _readable_errors(settings.dsn):
        line.run_cmd(config, options)


def _print_status(config: StoreConfig, s: Status) -> None:
    title = f"sessionstore status: {escape(redact_dsn(config.dsn) or '')}"
    table = Table(title=title, show_header=False)
    table.add_row("reachable", f"yes, PostgreSQL {s.server_version}")
    table.add_row("pooler mode", s.pooler)
    table.add_row("revision", f"{s.current_revision or 'none'} (head {s.head_revision})")
    table.add_row("pending", ", ".join(s.pending) or "none")
    for name, on in s.rls.items():
        missing = s.missing_policies.get(name) or []
        table.add_row(
            f"RLS {name}", ("on" if on else "OFF") + (f", missing {missing}" if missing else "")
        )
    table.add_row("API roles can reach", ", ".join(s.exposed) or "nothing")
    table.add_row("pool", s.pool)
    console.print(table)
    for problem in s.problems:
        err_console.print(f"[yellow]attention:[/yellow] {escape(problem)}")


@app.command()
def status(dsn: DsnOption = None) -> None:
    """Check the database: reachable, revisions, RLS and policies, anon access, pool.

    Exits non-zero when something needs attention.
    """
    config = _config(dsn)
    with _readable_errors(config.dsn):
        result = asyncio.run(check(config))
    _print_status(config, result)
    if result.problems:
        raise typer.Exit(1)


@app.command()
def cleanup(
    dsn: DsnOption = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Sessions deleted per transaction.")
    ] = 1000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would go.")] = False,
    with_conversations: Annotated[
        bool,
        typer.Option(
            "--with-conversations",
            help="Also delete the sessions' conversations and messages"
            " (by default they stay, detached, as the original cleanup left them).",
        ),
    ] = False,
) -> None:
    """Delete expired sessions (not completed ones) in short batches, with a progress bar."""
    config = _config(dsn)

    async def go() -> int:
        async with connect(config=config) as store:
            due = await store.sessions.count_expired()
            if dry_run or due == 0:
                return due
            columns = (
                TextColumn("deleting"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console) as bar:
                task = bar.add_task("cleanup", total=due)
                return await store.sessions.cleanup_expired(
                    batch_size=batch_size,
                    on_progress=lambda n: bar.update(task, completed=n),
                    delete_conversations=with_conversations,
                )

    with _readable_errors(config.dsn):
        count = asyncio.run(go())
    what = "expired sessions" + (" with their conversations" if with_conversations else "")
    console.print(f"{'would delete' if dry_run else 'deleted'} {count} {what}")


@app.command()
def replay(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A spill file (JSON lines).")
    ],
    dsn: DsnOption = None,
) -> None:
    """Write the messages a failed close() spilled to FILE. Safe to run twice."""
    config = _config(dsn)

    async def go() -> tuple[int, int]:
        async with connect(config=config) as store:
            count = await store.replay(file)
            return count, store.stats().set_aside

    with _readable_errors(config.dsn):
        count, set_aside = asyncio.run(go())
    console.print(
        f"replayed {count} messages from {escape(str(file))} ({set_aside} could not be written)"
    )
    if set_aside:
        raise typer.Exit(1)


def _print_report(report: DemoReport) -> None:
    table = Table(title=f"sessionstore demo, run {escape(report.run_id)}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, count in report.sessions_by_status.items():
        table.add_row(f"sessions {name}", str(count))
    table.add_row("turns", f"{report.turns:,}")
    table.add_row("tokens", f"{report.tokens:,}")
    table.add_row("messages written", f"{report.messages:,}")
    table.add_row("  of which write-behind", f"{report.written_behind:,}")
    table.add_row("turns refused: session expired", str(report.refused_expired))
    # Only the clients' turns, over the window they were made durable in.
    table.add_row(
        f"turns / s ({report.timed_turns:,} in {report.seconds:.2f} s, all durable)",
        f"{report.turns_per_second:,.0f}",
    )
    table.add_row("add_turn p50 ms", f"{report.percentile(50):.2f}")
    table.add_row("add_turn p99 ms", f"{report.percentile(99):.2f}")
    console.print(table)
    users = escape(users_label(report.users))
    if report.removed is None:
        console.print(f"kept: the rows of users {users} (--keep)")
    else:
        gone = report.removed
        console.print(
            f"deleted afterwards: {gone.sessions} sessions, {gone.conversations} conversations"
            f" and {gone.messages} messages of users {users}"
        )


@app.command()
def demo(
    dsn: DsnOption = None,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent sessions.")] = 20,
    keep: Annotated[
        bool,
        typer.Option(
            help="Keep the demo's rows (they are deleted after the summary otherwise) and,"
            " with no DSN, the embedded server and its data."
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Migrate --dsn if needed and write demo rows without asking."),
    ] = False,
) -> None:
    """Simulate an MCP server; with no DSN, on an embedded PostgreSQL that is removed after.

    On a DSN, the demo migrates the schema if it is missing or behind (as `sessionstore
    migrate`), writes its sessions under user ids of its own run, counts only those, and
    deletes them afterwards (unless --keep). It says all that and asks first.
    """
    settings = _settings(dsn)
    plan = DemoPlan(clients=clients)
    with ExitStack() as stack:
        embedded = settings.dsn is None
        if settings.dsn is None:
            console.print("no DSN set: starting an embedded PostgreSQL")
            try:
                url = stack.enter_context(embedded_server(keep=keep))
            except StoreUnavailableError as exc:
                # Its own sentence (what to install), not "could not reach the database".
                _fail(str(exc))
        else:
            url = settings.dsn
        config = StoreConfig.load(settings, dsn=url)
        with _readable_errors(url):
            found = asyncio.run(check(config))
        if found.pending:
            try:
                migrations.check_connection(config)  # before asking, not after
            except InvalidInputError as refused:
                _fail(
                    f"the schema needs migrating ({len(found.pending)} revisions pending): "
                    f"{refused}; run `sessionstore migrate` with it, then the demo."
                )
        changes = describe_changes(
            plan, current_revision=found.current_revision, pending=found.pending, keep=keep
        )
        where = "the embedded PostgreSQL" if embedded else redact_dsn(url) or "the database"
        intent = f"On {where} this will {changes}."
        if embedded or yes:
            console.print(escape(intent))
        elif not typer.confirm(f"{intent} Continue?"):
            console.print("nothing done")
            raise typer.Exit(1)

        async def go() -> DemoReport:
            async with connect(config=config) as store:
                return await run_demo(store, plan, keep=keep)

        with _readable_errors(url):
            if found.pending:
                migrations.upgrade(url)
            report = asyncio.run(go())
    _print_report(report)
    console.print("next:")
    console.print("  export SESSIONSTORE_DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DB")
    console.print("  sessionstore migrate        # the schema, on your database")
    console.print("  sessionstore status         # revisions, RLS, API-role access")
    console.print("  python3 dev.py test         # in a clone of the repository: the test suite")


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
