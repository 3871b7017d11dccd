"""The ``sessionstore`` command (console entry point ``sessionstore.cli:main``).

:mod:`~sessionstore.cli.commands` holds the typer app and its commands;
:mod:`~sessionstore.cli.render` what they show a person: tables, reports, and every
failure as one sentence (:func:`explain`).
"""

from __future__ import annotations

from .commands import app, main
from .render import explain

__all__ = ["app", "explain", "main"]
