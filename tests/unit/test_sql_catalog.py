"""docs/sql/ holds every statement the library sends, exactly as sent (see sql_catalog)."""

from __future__ import annotations

from ..sql_catalog import stale, statements


def test_every_statement_is_in_docs_sql_as_sent() -> None:
    problems = stale()
    assert not problems, f"docs/sql/ is out of date (run `python3 dev.py sql`): {problems}"


def test_the_catalog_finds_the_statements_of_every_layer() -> None:
    names = statements()
    assert len(names) >= 20
    # A statement from each kind of module: a turn, a repository by either key, the
    # write-behind batches, the user scope, the health check.
    for expected in (
        "turns.ADD_TURN.sql",
        "turns.TURN_BATCH.sql",
        "repositories.messages.HISTORY.by_id.sql",
        "repositories.messages.HISTORY.by_continuation.sql",
        "repositories.message_batch.MESSAGE_BATCH.sql",
        "db.scope.SET_USER_SCOPE.sql",
        "health.TABLE_STATE.sql",
    ):
        assert expected in names
    # Templates and fragments are not statements; nothing is listed under an importer.
    assert not any(name.endswith("._LIST.sql") for name in names)
    assert sum(name.endswith(".ADD_TURN.sql") for name in names) == 1
