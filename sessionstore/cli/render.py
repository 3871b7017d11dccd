"""What the ``sessionstore`` command shows a person: its consoles, the ``status`` table
and the demo's report, and every failure explained as one sentence.

Nothing shown holds the database password: URLs go through ``redact_dsn`` and every
error text through ``hide_secrets`` before it is printed.
"""

from __future__ import annotations

from typing import NoReturn

import sqlalchemy.exc
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from ..config import StoreConfig, redact_dsn
from ..demo import SHOWCASE, DemoPlan, DemoReport, users_label
from ..dsn import hide_secrets
from ..errors import (
    AdoptionError,
    AuthenticationError,
    InvalidInputError,
    StoreTimeoutError,
    StoreUnavailableError,
    translate_wrapped,
)
from ..health import Status
from ..models import Message

__all__ = ["console", "err_console", "explain", "fail", "print_report", "print_status"]

console = Console()
# Errors and warnings go to stderr, so that a script reading a command's output sees
# only its result.
err_console = Console(stderr=True)


# -- errors as sentences --------------------------------------------------------------------


def explain(exc: BaseException, dsn: str | None) -> str:
    """One sentence for a person: what went wrong and what to do about it.

    It never holds ``dsn``'s password, even where another library's message quotes it.
    """
    return hide_secrets(_explain(exc, dsn), dsn)


def _explain(exc: BaseException, dsn: str | None) -> str:
    where = redact_dsn(dsn) or "the database"
    error = translate_wrapped(exc)
    if isinstance(error, InvalidInputError) and error.field == "dsn":
        return str(error)  # says which URL and what to change; no need to show it
    if isinstance(error, AuthenticationError) and error.sqlstate == "28000":
        return f"Login refused for {where}: {error}"
    if isinstance(error, AuthenticationError):
        return (
            f"Authentication failed for {where}: check the user name and password in "
            "the URL (--dsn or SESSIONSTORE_DATABASE_URL)."
        )
    # No SQLSTATE, or a connection-class one: the server never answered the request. (A
    # connection attempt that hangs is a StoreUnavailableError too.)
    silent = error is not None and (error.sqlstate or "08").startswith("08")
    if isinstance(error, StoreUnavailableError) and silent:
        return (
            f"Could not reach {where}: is the server running, and are host, port and "
            f"database in the URL right? ({error})"
        )
    if isinstance(error, StoreTimeoutError):
        # Connected, then a statement outlasted command_timeout (or the server's
        # statement_timeout): the server is up, perhaps busy or the work large.
        return f"{where} was reached but did not answer in time: {error}"
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


def fail(message: str) -> NoReturn:
    """Print ``message`` as the command's error (on stderr) and exit with status 1."""
    # Messages quote hosts and server text: brackets in them are not Rich markup.
    err_console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


# -- reports ----------------------------------------------------------------------------


def print_status(config: StoreConfig, s: Status) -> None:
    """``sessionstore status``'s table, then each problem found as an attention line."""
    title = f"sessionstore status: {escape(redact_dsn(config.dsn) or '')}"
    table = Table(title=title, show_header=False)
    table.add_row("reachable", f"yes, PostgreSQL {s.server_version}")
    table.add_row("pooler mode", s.pooler)
    table.add_row("revision", f"{s.current_revision or 'none'} (head {s.head_revision})")
    table.add_row("pending", ", ".join(s.pending) or "none")
    if s.distributed:
        table.add_row("layout", "distributed (Citus): no policies, as_user refused")
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


def print_report(report: DemoReport, plan: DemoPlan) -> None:
    """The demo's conversation call by call, then its numbers (each saying what it
    counts), and what became of its rows."""
    console.rule(f"sessionstore demo, run {escape(report.run_id)}: one conversation, call by call")
    for step in report.showcase:
        console.print(Syntax(step.code, "python", theme="ansi_dark", word_wrap=True))
        console.print(f"  [dim]→ {escape(step.result)}[/dim]")
        if step.messages:
            console.print(_messages(step.messages))
    console.rule(f"under load: {plan.clients} concurrent clients")
    direct = len(report.latencies_ms)
    load = Table(
        title=f"each: 1 session, {plan.conversations} conversations of {plan.turns} exchanges",
        show_header=False,
    )
    load.add_column("measure")
    load.add_column("value", justify="right")
    load.add_row(
        f"turns by the clients (add_turn {direct:,}, enqueue_turn {report.timed_turns - direct:,})",
        f"{report.timed_turns:,}",
    )
    load.add_row("seconds until all of them were durable (flush)", f"{report.seconds:.2f}")
    load.add_row("turns / s, durable", f"{report.turns_per_second:,.0f}")
    load.add_row("add_turn latency p50, ms", f"{report.percentile(50):.2f}")
    load.add_row("add_turn latency p99, ms", f"{report.percentile(99):.2f}")
    console.print(load)
    stored = Table(title="what the run stored, read back", show_header=False)
    stored.add_column("measure")
    stored.add_column("value", justify="right")
    for name, count in report.sessions_by_status.items():
        stored.add_row(f"sessions {name}", str(count))
    stored.add_row("messages", f"{report.messages:,}")
    stored.add_row("  of which write-behind (enqueue_turn)", f"{report.written_behind:,}")
    stored.add_row("turns counted on the sessions", f"{report.turns:,}")
    stored.add_row("tokens counted on the sessions", f"{report.tokens:,}")
    stored.add_row("turns refused: session expired", str(report.refused_expired))
    console.print(stored)
    console.print(
        f"[dim]{report.turns:,} turns = {report.timed_turns:,} by the clients + {len(SHOWCASE)}"
        " in the conversation above + 1 on the completed session: each message is a turn"
        " of its session[/dim]"
    )
    users = escape(users_label(report.users))
    if report.removed is None:
        console.print(f"kept: the rows of users {users} (--keep)")
    else:
        gone = report.removed
        console.print(
            f"deleted afterwards: {gone.sessions} sessions, {gone.conversations} conversations"
            f" and {gone.messages} messages of users {users}"
        )


def _messages(messages: list[Message]) -> Table:
    table = Table(box=box.SIMPLE, padding=(0, 1), pad_edge=False)
    table.add_column("seq", justify="right")
    table.add_column("role")
    table.add_column("content")
    table.add_column("tokens", justify="right")
    for m in messages:
        table.add_row(str(m.seq), m.role.value, escape(m.content), str(m.tokens or ""))
    return table
