"""The ``sessionstore`` command."""

from __future__ import annotations

import asyncio
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import migrations
from .config import StoreConfig, redact_dsn
from .demo import DemoReport, run_demo
from .embedded import embedded_server
from .errors import SessionStoreError
from .store import connect

app = typer.Typer(
    help="Session state for chat and agent servers, in PostgreSQL.", no_args_is_help=True
)
console = Console()

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn", help="postgresql:// URL (default: SESSIONSTORE_DATABASE_URL or DATABASE_URL)."
    ),
]


def _dsn(dsn: str | None) -> str | None:
    return dsn or StoreConfig().dsn


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


@app.command()
def migrate(
    dsn: DsnOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it.")
    ] = False,
) -> None:
    """Upgrade the database schema (to head by default)."""
    url = _dsn(dsn)
    if not url and not sql:
        raise _fail("no database URL: pass --dsn or set SESSIONSTORE_DATABASE_URL")
    migrations.upgrade(url or "", revision, sql=sql)
    if not sql:
        console.print(f"migrated {redact_dsn(url)} to {revision}")


@app.command()
def replay(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A spill file (JSON lines).")
    ],
    dsn: DsnOption = None,
) -> None:
    """Write the messages a failed close() spilled to FILE. Safe to run twice."""
    url = _dsn(dsn)
    if not url:
        raise _fail("no database URL: pass --dsn or set SESSIONSTORE_DATABASE_URL")

    async def go() -> tuple[int, int]:
        async with connect(url) as store:
            count = await store.replay(file)
            return count, store.stats().set_aside

    try:
        count, set_aside = asyncio.run(go())
    except SessionStoreError as exc:
        raise _fail(str(exc)) from None
    console.print(f"replayed {count} messages from {file} ({set_aside} could not be written)")
    if set_aside:
        raise typer.Exit(1)


def _print_report(report: DemoReport) -> None:
    table = Table(title="sessionstore demo")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for status, count in report.sessions_by_status.items():
        table.add_row(f"sessions {status}", str(count))
    table.add_row("turns", str(report.turns))
    table.add_row("tokens", str(report.tokens))
    table.add_row("messages written", str(report.messages))
    table.add_row("add_turn / s", f"{report.turns_per_second:,.0f}")
    table.add_row("add_turn p50 ms", f"{report.percentile(50):.2f}")
    table.add_row("add_turn p99 ms", f"{report.percentile(99):.2f}")
    console.print(table)


@app.command()
def demo(
    dsn: DsnOption = None,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent sessions.")] = 20,
    keep: Annotated[bool, typer.Option(help="Keep the embedded server and its data.")] = False,
    yes: Annotated[
        bool, typer.Option("--yes", help="Write demo rows into --dsn without asking.")
    ] = False,
) -> None:
    """Run a simulated MCP server; with no DSN, on an embedded PostgreSQL."""
    url = _dsn(dsn)
    with ExitStack() as stack:
        if url is None:
            console.print("no DSN set: starting an embedded PostgreSQL")
            url = stack.enter_context(embedded_server(keep=keep))
        elif not yes and not typer.confirm(f"write demo sessions into {redact_dsn(url)}?"):
            raise typer.Exit(1)
        migrations.upgrade(url)

        async def go() -> DemoReport:
            async with connect(url) as store:
                return await run_demo(store, clients=clients)

        try:
            report = asyncio.run(go())
        except SessionStoreError as exc:
            raise _fail(str(exc)) from None
    _print_report(report)
    console.print(
        "next: [bold]sessionstore migrate --dsn URL[/bold] on your own database, then see README.md"
    )


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
