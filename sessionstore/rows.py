"""Select lists built from column names, and rows read back into models by those names.

A statement that returns several tables' rows at once (``add_turn`` returns the message,
its conversation and its session) gives each table's columns a prefix; the mapping reads
each field by its (prefixed) name, so a computed column or a reordered list can never
shift the fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from operator import itemgetter
from typing import Any, Generic, TypeVar, get_args

import asyncpg
from pydantic import BaseModel

from .models import from_trusted
from .validation import EARLIEST, LATEST

__all__ = ["Columns", "Patch", "Row", "keyset_before", "members"]

#: A result row as asyncpg returns it.
Row = asyncpg.Record
#: Changes a row's fields, given the values of its hidden columns, before the model is
#: built from them (the opening of sealed messages).
Patch = Callable[[dict[str, Any], tuple[Any, ...]], None]
M = TypeVar("M", bound=BaseModel)
E = TypeVar("E", bound=StrEnum)


# Python's datetime ends at year 9999 and starts at year 1; PostgreSQL's timestamptz goes
# far beyond both and has ±infinity. A row another client wrote outside Python's range
# must still read (asyncpg would raise OverflowError, and decodes infinity as a naive
# datetime): such times are read as the nearest end of Python's range, less the one
# microsecond at each end that asyncpg reserves for ±infinity when it encodes (a cursor
# holding datetime.max would be sent as infinity and page the same row forever). NULL
# stays NULL.
_EARLIEST = f"'{EARLIEST.isoformat(sep=' ')}'::timestamptz"
_LATEST = f"'{LATEST.isoformat(sep=' ')}'::timestamptz"


def _readable_time(expr: str) -> str:
    return (
        f"CASE WHEN {expr} > {_LATEST} THEN {_LATEST} "
        f"WHEN {expr} < {_EARLIEST} THEN {_EARLIEST} ELSE {expr} END"
    )


def keyset_before(created_at: str, row_id: str, at: str, after_id: str) -> str:
    """The keyset condition of a listing newest first: rows after the cursor
    ``(at, after_id)``. Keeps ``(created_at, id) < (at, after_id)`` as the index condition.

    A cursor at the earliest readable time stands for a row written earlier than Python
    can read (clamped, see above); every such row satisfies the plain condition, so the
    same page would come back forever. There the ids decide, so paging always moves on.
    """
    return (
        f"({created_at}, {row_id}) < ({at}, {after_id}) AND NOT ({at} = {_EARLIEST} "
        f"AND {created_at} < {_EARLIEST} AND {row_id} >= {after_id})"
    )


def _is_time(annotation: Any) -> bool:
    return annotation is datetime or datetime in get_args(annotation)


def members(kind: type[E]) -> Callable[[str], E]:
    """A ``convert`` function from a string enum's value to its member (a dict lookup:
    cheaper than calling the enum, once per row and field)."""
    return {member.value: member for member in kind}.__getitem__


class Columns(Generic[M]):
    """The columns ``model`` is built from: one per field, named like the field, in the
    fields' order (or ``names``, when given), then the ``hidden`` columns: selected, and
    read by the caller from the row, not into the model.

    ``computed`` maps a name to a function of the table alias that returns the SQL
    expression producing it; ``convert`` maps a name to a function applied to its value
    (e.g. :func:`members` of an enum). Times outside Python's ``datetime`` range (years
    1 to 9999 in UTC, and ±infinity) are read as the nearest end of that range.
    """

    def __init__(
        self,
        model: type[M],
        *names: str,
        computed: Mapping[str, Callable[[str], str]] | None = None,
        convert: Mapping[str, Callable[[Any], Any]] | None = None,
        hidden: Sequence[str] = (),
    ) -> None:
        self.model = model
        self._mapped = names or tuple(model.model_fields)
        self.names = (*self._mapped, *hidden)
        self._computed = dict(computed or {})
        fields = model.model_fields
        self._times = frozenset(
            name for name in self.names if name in fields and _is_time(fields[name].annotation)
        )
        self._convert_items = tuple((convert or {}).items())
        self._getters: dict[str, Callable[[Any], tuple[Any, ...]]] = {}

    def select(self, *, prefix: str = "", alias: str = "") -> str:
        """``expr AS name, …`` for a SELECT or RETURNING list (names get ``prefix``)."""
        parts = []
        for name in self.names:
            if name in self._computed:
                expr = self._computed[name](alias)
            else:
                expr = f"{alias}.{name}" if alias else name
            if name in self._times:
                expr = _readable_time(expr)
            parts.append(f"{expr} AS {prefix}{name}")
        return ", ".join(parts)

    def _build(
        self,
        values: tuple[Any, ...] | Any,
        patch: Patch | None = None,
        hidden: tuple[Any, ...] = (),
    ) -> M:
        # once per row: kept to C-level builtins (strict=False: one() and many() have
        # already matched the values to the names)
        fields = dict(zip(self._mapped, values, strict=False))
        for name, convert in self._convert_items:
            fields[name] = convert(fields[name])
        if patch is not None:
            patch(fields, hidden)
        return from_trusted(self.model, fields)

    def one(self, row: Row | Mapping[str, Any], prefix: str = "", patch: Patch | None = None) -> M:
        """The model from one row, each field read by its column name (with ``prefix``).
        ``patch`` gets the fields and the hidden columns' values, and may change the
        fields before the model is built."""
        getter = self._getters.get(prefix)
        if getter is None:
            getter = itemgetter(*(prefix + name for name in self.names))
            self._getters[prefix] = getter
        values = getter(row)
        return self._build(values, patch, values[len(self._mapped) :])

    def many(self, rows: Sequence[Row], patch: Patch | None = None) -> list[M]:
        """Models from rows of one result holding these columns (no prefix), perhaps
        followed by others; ``patch`` as in :meth:`one`.

        The names are checked once per result; when the row starts with these columns in
        this order (as :meth:`select` lists them), each row's values are taken in order,
        which is several times cheaper than a lookup by name per field.
        """
        if not rows:
            return []
        if tuple(rows[0].keys())[: len(self.names)] != self.names:
            return [self.one(row, patch=patch) for row in rows]
        if patch is None:
            return [self._build(row.values()) for row in rows]
        at = range(len(self._mapped), len(self.names))
        hidden = itemgetter(*at) if len(at) > 1 else lambda row: tuple(row[i] for i in at)
        return [self._build(row.values(), patch, hidden(row)) for row in rows]
