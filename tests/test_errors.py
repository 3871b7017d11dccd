"""The one translation of driver errors (pure; no database)."""

from __future__ import annotations

import asyncpg
import pytest

from sessionstore import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SessionStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from sessionstore.errors import translate_errors

E = asyncpg.exceptions


@pytest.mark.parametrize(
    ("raised", "expected", "sqlstate"),
    [
        (TimeoutError(), StoreTimeoutError, None),
        (ConnectionResetError("reset"), StoreUnavailableError, None),
        (OSError("refused"), StoreUnavailableError, None),
        (E.ConnectionDoesNotExistError("gone"), StoreUnavailableError, "08003"),
        (E.AdminShutdownError("bye"), StoreUnavailableError, "57P01"),
        (E.CannotConnectNowError("starting"), StoreUnavailableError, "57P03"),
        (E.TooManyConnectionsError("full"), StoreUnavailableError, "53300"),
        (E.QueryCanceledError("slow"), StoreTimeoutError, "57014"),
        (E.ForeignKeyViolationError("fk"), NotFoundError, "23503"),
        (E.UniqueViolationError("dup"), ConflictError, "23505"),
        (E.SerializationError("ser"), ConflictError, "40001"),
        (E.DeadlockDetectedError("dl"), ConflictError, "40P01"),
        (E.CheckViolationError("check"), InvalidInputError, "23514"),
        (E.CharacterNotInRepertoireError("nul"), InvalidInputError, "22021"),
        (E.UndefinedTableError("no table"), SessionStoreError, "42P01"),
        (E.InterfaceError("misuse"), SessionStoreError, None),
        (E.InternalClientError("cannot switch to state 12"), StoreUnavailableError, None),
    ],
)
def test_translation(
    raised: Exception, expected: type[SessionStoreError], sqlstate: str | None
) -> None:
    with pytest.raises(expected) as info, translate_errors():
        raise raised
    assert type(info.value) is expected
    assert info.value.sqlstate == sqlstate
    assert info.value.__cause__ is raised


def test_own_errors_pass_through_unchanged() -> None:
    own = NotFoundError("x")
    with pytest.raises(NotFoundError) as info, translate_errors():
        raise own
    assert info.value is own
