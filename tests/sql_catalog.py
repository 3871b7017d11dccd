"""Every statement the library sends, as the server receives it: ``python3 dev.py sql``
writes them to ``docs/sql/<module>.<NAME>.sql``, and ``test_sql_catalog`` fails when a
file there is stale, missing or left over.

A statement is a module-level constant of a ``sessionstore`` module: a ``str`` whose
first word is an SQL command, or a ``Keyed`` trio (the same statement finding its
conversation by ``id``, by ``continuation_id`` and, on the distributed layout, by ``id``
in its session: three files, ``.by_id``, ``.by_continuation`` and ``.placed``).
Fragments (``rules.py``'s pieces, select lists) are not statements: they show inside
the statements built from them, which is the point — a change to one rule shows in the
diff of every statement it changes.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import sessionstore
from sessionstore.repositories.conversations import Keyed

SQL_DIR = Path(__file__).resolve().parent.parent / "docs" / "sql"
_COMMAND = re.compile(
    r"\s*(SELECT|WITH|INSERT|UPDATE|DELETE|LOCK|SET|NOTIFY|LISTEN|UNLISTEN|CREATE|DROP|"
    r"ALTER|TRUNCATE|BEGIN|COMMIT|ROLLBACK|SHOW|VALUES)\b",
    re.IGNORECASE,
)
_CONSTANT = re.compile(r"_?[A-Z][A-Z0-9_]*")
# A template's replacement field ({owner}): not sent as it is, the statements made from it are.
_FIELD = re.compile(r"\{[a-z_]+\}")
# Revisions are frozen history: their DDL is read in sessionstore/alembic/versions/.
_SKIP = ("sessionstore.alembic",)


def _modules() -> Iterator[str]:
    for info in pkgutil.walk_packages(sessionstore.__path__, "sessionstore."):
        if not info.name.startswith(_SKIP):
            yield info.name


def statements() -> dict[str, str]:
    """File name → statement text, for every statement constant of the package, listed
    under the module that assigns it (not those that import it)."""
    found: dict[str, str] = {}
    for name in _modules():
        module = importlib.import_module(name)
        source = inspect.getsource(module)
        short = name.removeprefix("sessionstore.")
        for attribute, value in vars(module).items():
            if not _CONSTANT.fullmatch(attribute):
                continue
            if not re.search(rf"^{attribute}\s*(:[^=]*)?=", source, re.MULTILINE):
                continue  # imported from the module that defines it
            if isinstance(value, Keyed):
                found[f"{short}.{attribute}.by_id.sql"] = value.by_id
                found[f"{short}.{attribute}.by_continuation.sql"] = value.by_continuation
                found[f"{short}.{attribute}.placed.sql"] = value.placed
            elif isinstance(value, str) and _COMMAND.match(value) and not _FIELD.search(value):
                found[f"{short}.{attribute}.sql"] = value
    return dict(sorted(found.items()))


def _as_file(text: str) -> str:
    # The text exactly as sent, plus one newline so that the file ends like a text file.
    return text + "\n"


def stale() -> list[str]:
    """What ``docs/sql/`` gets wrong: files missing, differing or left over."""
    wanted = {name: _as_file(text) for name, text in statements().items()}
    present = {p.name: p.read_text(encoding="utf-8") for p in SQL_DIR.glob("*.sql")}
    problems = [f"missing: {n}" for n in sorted(wanted.keys() - present.keys())]
    problems += [f"stale: {n}" for n in sorted(wanted) if n in present and present[n] != wanted[n]]
    problems += [f"left over: {n}" for n in sorted(present.keys() - wanted.keys())]
    return problems


def write() -> int:
    """Write every statement to ``docs/sql/`` and remove files of statements that are
    gone; return how many statements there are."""
    wanted = {name: _as_file(text) for name, text in statements().items()}
    SQL_DIR.mkdir(parents=True, exist_ok=True)
    for old in SQL_DIR.glob("*.sql"):
        if old.name not in wanted:
            old.unlink()
    for name, text in wanted.items():
        path = SQL_DIR / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return len(wanted)


if __name__ == "__main__":
    count = write()
    sys.stdout.write(f"{count} statements in {SQL_DIR}\n")
