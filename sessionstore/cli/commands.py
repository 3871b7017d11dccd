"""The ``sessionstore`` command's typer app: migrate, downgrade, alembic, status, cleanup,
prune, encrypt, replay, demo, and ``main``.

Every failure is one sentence on the console (the traceback only with ``--debug``); what
is shown, and how a failure reads, is :mod:`sessionstore.cli.render`'s.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stderr
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import migrations
from .._version import installed_version
from ..adopt_encryption import MAX_BATCH_SIZE as MAX_ENCRYPT_BATCH
from ..config import MISSING_DSN, StoreConfig, redact_dsn
from ..demo import DemoPlan, DemoReport, describe_changes, run_demo
from ..dsn import hide_secrets
from ..embedded import embedded_server
from ..errors import InvalidInputError, StoreTimeoutError, StoreUnavailableError
from ..health import check
from ..models import PruneCounts
from ..prune import MAX_BATCH_SIZE
from ..store import connect
from .alembic_line import WRITES_FILES, alembic_line, hide_urls, x_dsn
from .durations import parse_duration
from .help import Command
from .render import console, err_console, explain, fail, print_report, print_status

__all__ = ["app", "main"]

app = typer.Typer(
    help="Session state for chat and agent servers, in PostgreSQL.",
    no_args_is_help=True,
    # click's plain help: paragraphs rewrapped once, no <bool> beside flags (see .help)
    rich_markup_mode=None,
    # An unexpected error's traceback would otherwise list local variables: DSNs among them.
    pretty_exceptions_show_locals=False,
)

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        metavar="URL",
        help="postgresql:// URL (default: SESSIONSTORE_DATABASE_URL, else DATABASE_URL "
        "if that is a postgresql:// URL).",
    ),
]


class _State:
    debug = False


def _show_version(value: bool) -> None:
    if value:
        console.print(f"sessionstore {installed_version()}")
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
        fail(explain(exc, dsn))


def _settings(dsn: str | None) -> StoreConfig:
    """The settings, with ``--dsn`` over the environment (whose URLs are then not read)."""
    try:
        return StoreConfig.load(dsn=dsn or None)
    except InvalidInputError as exc:
        fail(hide_secrets(str(exc), dsn))


def _config(dsn: str | None) -> StoreConfig:
    config = _settings(dsn)
    if not config.dsn:
        fail(MISSING_DSN)
    return config


@app.command(cls=Command)
def migrate(
    dsn: DsnOption = None,
    revision: Annotated[str, typer.Option(metavar="REVISION", help="Target revision.")] = "head",
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it.")
    ] = False,
) -> None:
    """Upgrade the schema (to head by default).

    Adopts databases made by the original SQL. Serialised across processes by an
    advisory lock. Needs a direct or session-mode connection, not a transaction pooler.
    """
    if sql:
        # Offline: the SQL does not depend on the database, so no URL is needed or read.
        with _readable_errors(dsn):
            migrations.upgrade(dsn or "", revision, sql=True)
        return
    config = _config(dsn)
    assert config.dsn is not None
    with _readable_errors(config.dsn):
        applied = migrations.upgrade(config.dsn, revision)
    where = escape(redact_dsn(config.dsn) or "")
    if applied:
        count = f"{len(applied)} revision{'s' if len(applied) > 1 else ''}"
        console.print(f"migrated {where} to {escape(revision)} ({count})")
    else:
        console.print(f"{where} already at {escape(revision)}: nothing to do")


@app.command(cls=Command)
def downgrade(
    revision: Annotated[
        str,
        typer.Argument(metavar="REVISION", help="Target revision, or `base` to remove everything."),
    ],
    dsn: DsnOption = None,
) -> None:
    """Downgrade the schema to REVISION."""
    config = _config(dsn)
    with _readable_errors(config.dsn):
        migrations.downgrade(config.dsn or "", revision)
    console.print(f"downgraded {escape(redact_dsn(config.dsn) or '')} to {escape(revision)}")


@app.command(
    "alembic",
    cls=Command,
    # --help and every other argument are Alembic's own.
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def alembic_command(ctx: typer.Context, dsn: DsnOption = None) -> None:
    """Alembic on the packaged revisions, with no alembic.ini.

    For example `sessionstore alembic current`. The arguments are Alembic's (`current`,
    `history`, `stamp REV`, `upgrade head --sql`, `--help`), without the commands that
    write revision files. The URL is found as for `migrate`: --dsn, else `-x dsn=...`,
    else the environment.
    """
    line = alembic_line()
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
        err_console.print(escape(hide_urls(said.getvalue(), ctx.args).rstrip()))
        raise typer.Exit(2) from None
    name = options.cmd[0].__name__
    if name in WRITES_FILES:
        fail(
            f"`alembic {name}` would write into the installed sessionstore package: keep "
            "your own migrations in an Alembic environment of your own."
        )
    settings = _settings(dsn or x_dsn(options))
    config = migrations.alembic_config(settings.dsn or "", cmd_opts=options)
    # Alembic's errors as one sentence like every other command's, not "FAILED:" and 255.
    options.raiseerr = True
    # Its progress lines ("Running upgrade ..."), as the `alembic` command shows them.
    logging.getLogger("alembic").setLevel(logging.INFO)
    with _readable_errors(settings.dsn):
        line.run_cmd(config, options)


@app.command(cls=Command)
def status(dsn: DsnOption = None) -> None:
    """Check the database: revisions, RLS, API-role access, pool.

    Reachable, revisions applied and pending, row-level security and its policies, what
    the anon role can read, the pool. Exits non-zero when something needs attention.
    """
    config = _config(dsn)
    with _readable_errors(config.dsn):
        result = asyncio.run(check(config))
    print_status(config, result)
    if result.problems:
        raise typer.Exit(1)


def _deleting() -> Progress:
    """The progress bar of a delete in batches."""
    columns = (TextColumn("deleting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console)


@app.command(cls=Command)
def cleanup(
    dsn: DsnOption = None,
    batch_size: Annotated[
        int, typer.Option(min=1, metavar="N", help="Sessions deleted per transaction.")
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
    """Delete expired sessions (not completed ones).

    In short batches, with a progress bar.
    """
    config = _config(dsn)

    async def go() -> int:
        async with connect(config=config) as store:
            due = await store.sessions.count_expired()
            if dry_run or due == 0:
                return due
            with _deleting() as bar:
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


@app.command(cls=Command)
def prune(
    dsn: DsnOption = None,
    keep_last: Annotated[
        int | None,
        typer.Option(
            min=0, max=2**31 - 1, metavar="N", help="Keep each conversation's latest N messages."
        ),
    ] = None,
    older_than: Annotated[
        timedelta | None,
        typer.Option(
            parser=parse_duration,
            metavar="AGE",
            help="Delete only messages older than AGE: an integer and s, m, h, d or w (90d).",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_BATCH_SIZE, help="Messages deleted per transaction.")
    ] = 1000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would go.")] = False,
) -> None:
    """Delete each conversation's oldest messages in short batches, with a progress bar.

    A message goes when it is not among its conversation's latest --keep-last N and (with
    --older-than) it and every message before it are older than AGE; numbering goes on
    after it. Conversations being written to are passed over: run again for them.
    """
    if keep_last is None and older_than is None:
        fail("give --keep-last N, --older-than AGE or both")
    config = _config(dsn)

    async def go() -> PruneCounts:
        async with connect(config=config) as store:
            if dry_run:
                due = await store.count_prunable(keep_last=keep_last, older_than=older_than)
                return PruneCounts(messages=due)
            # No count first: it is one statement over every message, which on a large
            # store outlasts command_timeout; the batches are short whatever the size.
            with _deleting() as bar:
                task = bar.add_task("prune", total=None)
                return await store.prune(
                    keep_last=keep_last,
                    older_than=older_than,
                    batch_size=batch_size,
                    on_progress=lambda counts: bar.update(task, completed=counts.messages),
                )

    with _readable_errors(config.dsn):
        counts = asyncio.run(go())
    if dry_run:
        console.print(f"would delete {counts.messages} messages")
        return
    console.print(f"deleted {counts.messages} messages of {counts.conversations} conversations")
    if counts.skipped:
        console.print(f"{counts.skipped} conversations were being written to: run again for them")


# Clear messages, counted before sealing them: the progress bar's total.
NO_KEY = (
    "set SESSIONSTORE_ENCRYPTION_KEY to the master key (base64 of 32 bytes) that the"
    " application opens its store with: encrypt seals messages with its users' data keys"
)


def _encrypting() -> Progress:
    """The progress bar of sealing in batches."""
    columns = (TextColumn("encrypting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console)


@app.command(cls=Command)
def encrypt(
    dsn: DsnOption = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, max=MAX_ENCRYPT_BATCH, metavar="N", help="Messages encrypted per transaction."
        ),
    ] = 1000,
) -> None:
    """Encrypt in place the messages stored in clear, in short batches, with a progress bar.

    For messages written before encryption at rest was on: each is sealed with its
    user's data key, under the master key in SESSIONSTORE_ENCRYPTION_KEY. Safe beside
    live traffic and safe to run again: messages being written to are passed over, and a
    later run seals only what is still in clear.
    """
    config = _config(dsn)
    if config.encryption_key is None:
        fail(NO_KEY)

    async def go() -> int:
        async with connect(config=config) as store:
            try:
                due: int | None = await store.count_unencrypted()
            except StoreTimeoutError:
                # One statement over every message may outlast command_timeout on a
                # large store; the batches are short whatever the size: no total then.
                due = None
            if due == 0:
                return 0
            with _encrypting() as bar:
                task = bar.add_task("encrypt", total=due)
                return await store.encrypt_stored(
                    batch_size=batch_size,
                    on_progress=lambda n: bar.update(task, completed=n),
                )

    with _readable_errors(config.dsn):
        count = asyncio.run(go())
    console.print(f"encrypted {count} messages stored in clear")


@app.command(cls=Command)
def replay(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, metavar="FILE", help="A spill file (JSON lines)."
        ),
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


@app.command(cls=Command)
def demo(
    dsn: DsnOption = None,
    clients: Annotated[int, typer.Option(min=1, metavar="N", help="Concurrent sessions.")] = 20,
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
    """Simulate an MCP server (on an embedded PostgreSQL with no DSN).

    The embedded server is removed after. On a DSN, the demo migrates the schema if it
    is missing or behind (as `sessionstore migrate`), writes its sessions under user ids
    of its own run, counts only those, and deletes them afterwards (unless --keep). It
    says all that and asks first.
    """
    settings = _settings(dsn)
    plan = DemoPlan(clients=clients)
    with ExitStack() as stack:
        embedded = settings.dsn is None
        if settings.dsn is None:
            try:
                # A passing status line, not a printed one: without the extra the one
                # line shown is the error saying what to install.
                with console.status("no DSN set: starting an embedded PostgreSQL"):
                    url = stack.enter_context(embedded_server(keep=keep))
            except StoreUnavailableError as exc:
                # Its own sentence (what to install), not "could not reach the database".
                fail(str(exc))
            console.print("no DSN set: using an embedded PostgreSQL, removed afterwards")
        else:
            url = settings.dsn
        config = StoreConfig.load(settings, dsn=url)
        with _readable_errors(url):
            found = asyncio.run(check(config))
        if found.pending:
            try:
                migrations.check_connection(config)  # before asking, not after
            except InvalidInputError as refused:
                fail(
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
    print_report(report, plan)
    console.print("next:")
    console.print("  export SESSIONSTORE_DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DB")
    console.print("  sessionstore migrate        # the schema, on your database")
    console.print("  sessionstore status         # revisions, RLS, API-role access")
    console.print("  python3 dev.py test         # in a clone of the repository: the test suite")


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
