"""The API reference documents every keyword option where it is declared and with every
method that takes it (pure; no database, no docs build)."""

from __future__ import annotations

import importlib.util
import inspect
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sessionstore import SessionStore, UserView
from sessionstore.repositories import (
    ConversationsRepository,
    MessagesRepository,
    SessionsRepository,
    StatesRepository,
)
from sessionstore.writebehind.repository import QueuedMessagesRepository

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = [
    SessionStore,
    UserView,
    SessionsRepository,
    ConversationsRepository,
    MessagesRepository,
    QueuedMessagesRepository,
    StatesRepository,
]


def _methods() -> list[tuple[str, Any]]:
    return [
        (f"{cls.__name__}.{name}", member)
        for cls in PUBLIC
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    ]


def _unpacked(function: Any) -> type | None:
    """The TypedDict of ``**options: Unpack[...]``, if ``function`` takes one."""
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            hint = typing.get_type_hints(function)[name]
            if typing.get_origin(hint) is typing.Unpack:
                options: type = typing.get_args(hint)[0]
                return options
    return None


TAKING_OPTIONS = [(name, f) for name, f in _methods() if _unpacked(f) is not None]


def test_the_methods_taking_options_are_found() -> None:
    names = {name for name, _ in TAKING_OPTIONS}
    assert {"SessionStore.add_turn", "UserView.add_turn", "SessionStore.enqueue_turn"} <= names
    assert {"MessagesRepository.add", "QueuedMessagesRepository.enqueue_nowait"} <= names


@pytest.mark.parametrize(("name", "method"), _methods(), ids=[n for n, _ in _methods()])
def test_every_public_method_has_a_docstring(name: str, method: Any) -> None:
    assert (method.__doc__ or "").strip(), name


@pytest.mark.parametrize(("name", "method"), TAKING_OPTIONS, ids=[n for n, _ in TAKING_OPTIONS])
def test_a_method_taking_options_names_each_of_them(name: str, method: Any) -> None:
    """``help(store.add_turn)`` lists ``context`` and every other keyword it takes."""
    options = _unpacked(method)
    assert options is not None
    keys = options.__required_keys__ | options.__optional_keys__  # type: ignore[attr-defined]
    missing = [key for key in sorted(keys) if f"``{key}``" not in method.__doc__]
    assert not missing, f"{name}'s docstring does not name {missing}"


def _extensions() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "griffe_sphinx_roles", ROOT / "docs" / "reference" / "griffe_sphinx_roles.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_option_is_described_and_shown_with_each_method_taking_it() -> None:
    """What the reference renders: each field of the options TypedDicts has its own
    description, and the docs' griffe extension lists every key, described, under each
    method that takes ``**options: Unpack[...]``."""
    griffe = pytest.importorskip("griffe")
    ext = _extensions()
    package = griffe.load(
        "sessionstore",
        search_paths=[str(ROOT)],
        docstring_parser="google",
        extensions=griffe.load_extensions(ext.SphinxRoles, ext.KeywordOptions),
    )
    for name in ("MessageOptions", "TurnOptions", "AddTurnOptions"):
        for field in package[f"models.{name}"].members.values():
            assert field.docstring is not None, field.path
            assert field.docstring.value.strip(), field.path
    shown = 0
    for name, method in TAKING_OPTIONS:
        options = _unpacked(method)
        assert options is not None
        function = package[
            f"{method.__module__.removeprefix('sessionstore.')}.{method.__qualname__}"
        ]
        sections = [s for s in function.docstring.parsed if s.title == "Keyword options:"]
        assert len(sections) == 1, name
        listed = {row.name: row for row in sections[0].value}
        assert set(listed) == options.__optional_keys__, name  # type: ignore[attr-defined]
        assert all(row.description and row.annotation for row in listed.values()), name
        shown += 1
    assert shown == len(TAKING_OPTIONS) >= 5
