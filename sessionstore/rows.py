"""Select lists built from column names, and rows read back by those names.

A statement that returns several tables' rows at once (``add_turn`` returns the message,
its conversation and its session) gives each table's columns a prefix; the mapping reads
each field by its (prefixed) name, so a computed column or a reordered list can never
shift the fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

__all__ = ["Columns", "Row"]

#: A result row as asyncpg returns it.
Row = asyncpg.Record


class Columns:
    """The columns a model is built from. ``computed`` maps a name to a function of the
    table alias that returns the SQL expression producing it."""

    def __init__(
        self, *names: str, computed: Mapping[str, Callable[[str], str]] | None = None
    ) -> None:
        self.names = names
        self._computed = dict(computed or {})
        self._keys: dict[str, tuple[str, ...]] = {}

    def select(self, *, prefix: str = "", alias: str = "") -> str:
        """``expr AS name, …`` for a SELECT or RETURNING list (names get ``prefix``)."""
        parts = []
        for name in self.names:
            if name in self._computed:
                expr = self._computed[name](alias)
            else:
                expr = f"{alias}.{name}" if alias else name
            parts.append(f"{expr} AS {prefix}{name}")
        return ", ".join(parts)

    def read(self, row: Row | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """The row's values by column name (without ``prefix``)."""
        keys = self._keys.get(prefix)
        if keys is None:
            keys = self._keys[prefix] = tuple(prefix + name for name in self.names)
        return {name: row[key] for name, key in zip(self.names, keys, strict=True)}
