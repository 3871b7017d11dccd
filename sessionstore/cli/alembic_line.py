"""``sessionstore alembic``'s command line: Alembic's own, on the packaged revisions,
without the commands that would write into the installed package, and with no password
shown in what it prints."""

from __future__ import annotations

from argparse import Namespace

from alembic.config import CommandLine

from ..dsn import hide_secrets
from .help import trim_alembic_help

__all__ = ["WRITES_FILES", "alembic_line", "hide_urls", "x_dsn"]

# Alembic commands that write files into the script directory: here that is the installed
# package, which is not where an application's own migrations belong.
WRITES_FILES = frozenset({"init", "revision", "merge", "edit"})
# Left out of `sessionstore alembic --help`: the refused commands, the templates only
# `init` uses, the ini options this command ignores, and --raiseerr, which it always sets.
_NOT_SHOWN = WRITES_FILES | {"list_templates"}
_NOT_SHOWN_OPTIONS = ("--config", "--name", "--raiseerr")


def hide_urls(text: str, arguments: list[str]) -> str:
    """``text`` without the password of any URL among ``arguments`` (also after ``=``)."""
    for argument in arguments:
        head, _, rest = argument.partition("://")
        if rest:
            # dsn=postgresql://… or --dsn=postgresql://…: the URL starts after the "="
            url = argument.split("=", 1)[1] if "=" in head else argument
            text = hide_secrets(text, url)
    return text


def x_dsn(options: Namespace) -> str | None:
    """The value of ``-x dsn=...`` on Alembic's command line, if given."""
    for argument in options.x or []:
        key, _, value = str(argument).partition("=")
        if key == "dsn":
            return value
    return None


def alembic_line() -> CommandLine:
    """Alembic's command line as ``sessionstore alembic`` offers it."""
    line = CommandLine(prog="sessionstore alembic")
    line.parser.description = (
        "Alembic's command line on the revisions in the installed sessionstore package, "
        "with no ini. The database URL: --dsn URL (before or after the command), else "
        "-x dsn=URL, else SESSIONSTORE_DATABASE_URL (or DATABASE_URL). The commands that "
        "write revision files (init, revision, merge, edit) are not available: keep your "
        "own migrations in an Alembic environment of your own."
    )
    trim_alembic_help(line.parser, hidden_commands=_NOT_SHOWN, hidden_options=_NOT_SHOWN_OPTIONS)
    return line
