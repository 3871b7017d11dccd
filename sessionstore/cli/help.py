"""How the ``sessionstore`` command's help reads: plain text, wrapped once.

Typer's Rich help keeps a docstring's own line breaks and then wraps again (a line cut
at "(as `sessionstore" with "migrate`)" alone below it), and labels every flag
``<bool>``; so the app uses click's plain formatter, which rewraps paragraphs, and
names values by their metavar (URL, N, REVISION). :class:`Command` also keeps Typer
from writing a required argument as ``{revision}`` in the usage line and from adding
``<str>`` after its name.

:func:`trim_alembic_help` makes ``sessionstore alembic --help`` list only what that
command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from typer.core import TyperCommand

__all__ = ["Command", "trim_alembic_help"]


class Command(TyperCommand):
    """A Typer command whose help names each argument by its metavar alone."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """The usage line's pieces: ``REVISION``, not Typer's ``{REVISION}``."""
        pieces: list[str] = super().collect_usage_pieces(ctx)
        return [piece.removeprefix("{").removesuffix("}") for piece in pieces]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """The Arguments and Options sections, an argument without a type after it."""
        arguments: list[tuple[str, str]] = []
        options: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((param.metavar or str(param.name).upper(), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def trim_alembic_help(
    parser: argparse.ArgumentParser,
    *,
    hidden_commands: Iterable[str],
    hidden_options: Iterable[str],
) -> None:
    """Leave ``hidden_commands`` (still parsed: refusing them is the caller's) and the
    options ``hidden_options`` (by their flags) out of ``parser``'s usage and help."""
    hide, flags = set(hidden_commands), set(hidden_options)
    # argparse has no public way to edit a parser after the fact: its actions are read
    # as Alembic (every version) builds them.
    for action in parser._actions:
        if flags.intersection(action.option_strings):
            action.help = argparse.SUPPRESS
        listed = getattr(action, "_choices_actions", None)
        if isinstance(action, argparse._SubParsersAction) and listed is not None:
            shown = [choice for choice in listed if choice.dest not in hide]
            action._choices_actions = shown
            action.metavar = "{" + ",".join(choice.dest for choice in shown) + "}"
