"""Property-based tests (hypothesis) over every public method, one module per part of the
API (``test_sessions``, ``test_conversations``, ``test_messages``, ``test_turns``,
``test_write_behind``, ``test_user_views``, ``test_foreign_rows``, ``test_store``) around
one model of the world (``world.py``); ``test_coverage`` fails when a public name has no
property.

The property, for every call with hostile arguments (text with NUL and lone surrogates,
metadata with non-string keys, unrepresentable numbers and 20,000 levels of nesting,
ids that are not ids, times beyond every range, wrong types):

* it succeeds, and what is read back equals exactly what was written; or
* it raises ``InvalidInputError`` whose ``field`` is the argument's name, and whose
  message does not echo the value; or
* it raises ``NotFoundError`` (or the domain error the model of the world predicts:
  ``ConflictError``, ``InvalidStateError``, ``SessionExpiredError``);

nothing else; and a refused call writes nothing (every table's row versions, compared
over a direct connection before and after). The oracles that say which arguments must be
accepted and which refused are in ``tests/strategies.py``.

The tests run on pytest-asyncio's session loop: pytest-asyncio runs each example of an
async ``@given`` test on it, and the function-scoped ``store``/``conn`` fixtures live
for the whole test (one database per test; the model reads the current state of the
world before each call, so examples need not be independent). Generation is
derandomized and uses no example database, so every run draws the same cases.

The cases the issue names (``{"x": 1e300}``, ``ttl=timedelta(days=3_000_000)``, a
forged cursor dated 9999-12-31, a 5,000-deep jsonb written with SQL, ...) are pinned as
explicit examples in ``*_named`` twins of the main tests, so that a failing pinned case
does not stop the generated ones from running.

Every example adds one to ``CASES`` (in ``world.py``) under its property's name;
``test_zz_case_count`` (in the module that sorts last) checks that the package ran at
least ``MIN_TOTAL_CASES`` and the terminal summary prints the total and the count per
property.
"""
