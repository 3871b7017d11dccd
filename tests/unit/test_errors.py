"""The one translation of driver errors (pure; no database)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import asyncpg
import pytest

import sessionstore
from sessionstore import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SessionStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from sessionstore.errors import (
    AdoptionError,
    QueueFullError,
    WriteBehindError,
    is_transient,
    translate_errors,
    translate_wrapped,
)

E = asyncpg.exceptions


@pytest.mark.parametrize(
    ("raised", "expected", "sqlstate"),
    [
        (TimeoutError(), StoreTimeoutError, None),
        (ConnectionResetError("reset"), StoreUnavailableError, None),
        (OSError("refused"), StoreUnavailableError, None),
        (E.ConnectionDoesNotExistError("gone"), StoreUnavailableError, "08003"),
        # PgBouncer's refusals of a login (SQLSTATE 08P01, not 28xxx)
        (E.ProtocolViolationError("SASL authentication failed"), AuthenticationError, "08P01"),
        (E.ProtocolViolationError("no such user"), AuthenticationError, "08P01"),
        (E.ProtocolViolationError("bad packet"), StoreUnavailableError, "08P01"),
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


def _package_exceptions() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for module_info in pkgutil.walk_packages(sessionstore.__path__, "sessionstore."):
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("sessionstore"):
                found.append(value)
    return found


def test_every_exception_in_the_package_is_a_session_store_error() -> None:
    found = set(_package_exceptions())
    assert {AdoptionError, QueueFullError, WriteBehindError, AuthenticationError} <= found
    assert [e.__name__ for e in found if not issubclass(e, SessionStoreError)] == []


def test_authentication_failure_is_its_own_error() -> None:
    with pytest.raises(AuthenticationError) as info, translate_errors():
        raise E.InvalidPasswordError("password authentication failed for user app")
    assert isinstance(info.value, sessionstore.PermissionDeniedError)
    assert info.value.sqlstate == "28P01"


def test_transient_is_one_rule() -> None:
    assert is_transient(StoreUnavailableError("down"))
    assert is_transient(StoreTimeoutError("slow"))
    assert is_transient(ConflictError("ser", sqlstate="40001"))
    assert not is_transient(ConflictError("dup", sqlstate="23505"))
    assert not is_transient(NotFoundError("gone"))
    assert not is_transient(RuntimeError("not ours"))


def test_own_errors_raised_inside_keep_their_cause() -> None:
    # StoreTimeoutError is also an OSError; it must not be "translated" into itself
    own = StoreTimeoutError("no connection free within acquire_timeout")
    with pytest.raises(StoreTimeoutError) as info, translate_errors():
        raise own from None
    assert info.value is own
    assert info.value.__cause__ is None


class _Wrapper(Exception):
    """Stands in for SQLAlchemy's DBAPIError: the driver's error as ``orig``."""

    def __init__(self, orig: BaseException | None) -> None:
        super().__init__("wrapped")
        self.orig = orig


def test_translate_wrapped_finds_the_driver_error_behind_wrappers() -> None:
    driver = E.InvalidPasswordError("password authentication failed")
    assert isinstance(translate_wrapped(_Wrapper(driver)), AuthenticationError)
    outer = RuntimeError("migration failed")
    outer.__cause__ = _Wrapper(ConnectionRefusedError())
    assert isinstance(translate_wrapped(outer), StoreUnavailableError)
    assert translate_wrapped(RuntimeError("nothing of ours")) is None


def test_translate_wrapped_walks_a_cyclic_chain_once() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert translate_wrapped(first) is None
