"""Rows are read back by column name (pure; no database)."""

from __future__ import annotations

from sessionstore.repositories.sessions import SESSION
from sessionstore.rows import Columns


def test_select_list_names_every_column_and_computes_some() -> None:
    cols = Columns("id", "state", "n", computed={"state": lambda a: f"upper({a or 't'}.s)"})
    assert cols.select() == "id AS id, upper(t.s) AS state, n AS n"
    assert cols.select(prefix="x_", alias="c") == "c.id AS x_id, upper(c.s) AS x_state, c.n AS x_n"


def test_fields_come_by_name_whatever_the_order_or_the_neighbours() -> None:
    cols = Columns("id", "title", "n")
    # a computed column with commas and another table's columns around it change nothing
    row = {"m_id": 9, "c_n": 3, "c_title": "coalesce(a, b)", "c_id": 1, "s_id": 2}
    assert cols.read(row, "c_") == {"id": 1, "title": "coalesce(a, b)", "n": 3}


def test_session_status_is_computed_from_the_expiry_rule() -> None:
    select = SESSION.select(prefix="s_")
    assert "THEN 'expired' ELSE status END AS s_status" in select
    assert "s_version" in select
