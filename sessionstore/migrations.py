"""Programmatic Alembic: upgrade, downgrade and status for the CLI and tests.

These functions are synchronous (Alembic's env runs its own event loop); from async
code call them with ``asyncio.to_thread``. Run migrations over a direct or session-mode
connection: DDL and Alembic's version bookkeeping must stay on one server session.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from alembic import command

__all__ = ["alembic_config", "downgrade", "head_revision", "pending_revisions", "upgrade"]

_PACKAGED = Path(__file__).parent / "_alembic"
_CHECKOUT = Path(__file__).parent.parent / "alembic"


def script_location() -> Path:
    """Where the revisions are: inside an installed wheel, or the source checkout."""
    return _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT


def alembic_config(dsn: str) -> Config:
    """An Alembic ``Config`` for ``dsn`` that needs no ``alembic.ini``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["dsn"] = dsn
    cfg.attributes["skip_logging_config"] = True
    return cfg


def upgrade(dsn: str, revision: str = "head", *, sql: bool = False) -> None:
    """Upgrade the database at ``dsn`` to ``revision`` (``sql=True`` prints SQL instead)."""
    command.upgrade(alembic_config(dsn), revision, sql=sql)


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
