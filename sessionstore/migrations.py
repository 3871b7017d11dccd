"""Programmatic Alembic: upgrade, downgrade and status for the CLI and tests.

These functions are synchronous (Alembic's env runs its own event loop); from async
code call them with ``asyncio.to_thread``. Run migrations over a direct or session-mode
connection: DDL and Alembic's version bookkeeping must stay on one server session.
"""

from __future__ import annotations

import sys
from argparse import Namespace

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from .config import StoreConfig
from .errors import InvalidInputError

__all__ = [
    "SCRIPT_LOCATION",
    "alembic_config",
    "check_connection",
    "downgrade",
    "head_revision",
    "pending_revisions",
    "upgrade",
]

#: Where the Alembic environment and revisions are, in Alembic's package-resource form:
#: the directory ``alembic`` inside the installed ``sessionstore`` package (no
#: ``__init__.py``, so it never stands in for the ``alembic`` library). The root
#: ``alembic.ini`` and a user's own ini name the same place.
SCRIPT_LOCATION = "sessionstore:alembic"


def check_connection(config: StoreConfig) -> None:
    """Refuse a transaction pooler (``InvalidInputError`` naming ``dsn``) before a migration
    connects: DDL and Alembic's bookkeeping must stay on one server session, and the
    migration lock is a session-level advisory lock — through such a pooler it stays held
    by a server connection the pooler hands to others, and the next migration waits for
    it for ever. Every online run of the environment (``migrate``, ``downgrade``,
    ``sessionstore alembic``, ``alembic``) calls this.
    """
    if config.effective_pooler == "transaction":
        raise InvalidInputError(
            "dsn",
            "migrations need a direct or session-mode connection, not a transaction pooler "
            "(Supabase port 6543): use the direct or session connection string (port 5432)",
        )


def alembic_config(dsn: str, cmd_opts: Namespace | None = None) -> Config:
    """An Alembic ``Config`` for ``dsn`` that needs no ``alembic.ini``.

    ``dsn`` may be empty: then ``alembic -x dsn=...`` (in ``cmd_opts``, Alembic's parsed
    command line) or the environment's URL is used, as with the ``alembic`` command.
    """
    # Alembic's default stdout is the one at its import; what is printed (`current`,
    # `history`, --sql) goes where sys.stdout points now.
    cfg = Config(cmd_opts=cmd_opts, stdout=sys.stdout)
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["dsn"] = dsn
    cfg.attributes["skip_logging_config"] = True
    return cfg


def upgrade(dsn: str, revision: str = "head", *, sql: bool = False) -> list[str]:
    """Upgrade the database at ``dsn`` to ``revision`` (``sql=True`` prints SQL instead).

    Returns the revisions applied, oldest first: none when the database was at
    ``revision`` already (with ``sql=True``: those whose SQL was printed).
    """
    config = alembic_config(dsn)
    command.upgrade(config, revision, sql=sql)
    return list(config.attributes.get("applied", []))


def downgrade(dsn: str, revision: str) -> None:
    """Downgrade the database at ``dsn`` to ``revision`` (``"base"`` removes everything)."""
    command.downgrade(alembic_config(dsn), revision)


def head_revision() -> str:
    """The newest revision id."""
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


def pending_revisions(current: str | None) -> list[str]:
    """Revisions after ``current`` up to head, oldest first (all of them for ``None``)."""
    script = ScriptDirectory.from_config(alembic_config(""))
    upper = script.get_current_head()
    assert upper is not None
    revisions = list(script.iterate_revisions(upper, current or "base"))
    return [r.revision for r in reversed(revisions) if r.revision != current]
