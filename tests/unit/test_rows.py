"""Rows are read back into models by column name (pure; no database)."""

from __future__ import annotations

from typing import Any, cast

from pydantic import BaseModel

from sessionstore.repositories.sessions import SESSION
from sessionstore.rows import Columns, Row


class Thing(BaseModel):
    id: int
    title: str
    n: int


THING = Columns(Thing, "id", "title", "n", convert={"n": int})


def test_select_list_names_every_column_and_computes_some() -> None:
    cols = Columns(Thing, "id", "title", "n", computed={"title": lambda a: f"upper({a or 't'}.s)"})
    assert cols.select() == "id AS id, upper(t.s) AS title, n AS n"
    assert cols.select(prefix="x_", alias="c") == "c.id AS x_id, upper(c.s) AS x_title, c.n AS x_n"


def test_fields_come_by_name_whatever_the_order_or_the_neighbours() -> None:
    # a value with commas and another table's columns around it change nothing
    row = {"m_id": 9, "c_n": "3", "c_title": "coalesce(a, b)", "c_id": 1, "s_id": 2}
    assert THING.one(row, "c_") == Thing(id=1, title="coalesce(a, b)", n=3)


def _rows(*dicts: dict[str, Any]) -> list[Row]:
    return cast(list[Row], list(dicts))  # dicts have the keys()/values() a Record has


def test_many_reads_in_order_only_when_the_names_match() -> None:
    in_order = _rows({"id": 1, "title": "a", "n": 1}, {"id": 2, "title": "b", "n": 2})
    assert THING.many(in_order) == [Thing(id=1, title="a", n=1), Thing(id=2, title="b", n=2)]
    shuffled = _rows({"n": 1, "id": 1, "title": "a"}, {"n": 2, "id": 2, "title": "b"})
    assert THING.many(shuffled) == [Thing(id=1, title="a", n=1), Thing(id=2, title="b", n=2)]
    assert THING.many([]) == []


def test_session_status_is_computed_from_the_expiry_rule() -> None:
    select = SESSION.select(prefix="s_")
    assert "THEN 'expired' ELSE status END AS s_status" in select
    assert "s_version" in select
