"""ADK's state keys by scope: a state mapping split into the app's, the user's and the
session's parts (prefixes ``app:``, ``user:``; ``temp:`` never stored), and the three
scopes merged back into the one mapping a session object shows. The SQL is in
:mod:`sessionstore.repositories.states`."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from google.adk.sessions.state import State
from pydantic_core import PydanticSerializationError, to_jsonable_python

from ...errors import InvalidInputError
from ...repositories.states import States

__all__ = ["Split", "json_state", "merged", "session_view", "split"]


class Split(NamedTuple):
    """A state mapping split by scope, JSON-safe; app and user keys without prefix."""

    app: dict[str, Any]
    user: dict[str, Any]
    session: dict[str, Any]


def split(state: Mapping[str, Any]) -> Split:
    """ADK's routing of state keys: ``app:`` and ``user:`` to their scopes, ``temp:``
    nowhere (never persisted), everything else to the session."""
    parts = Split({}, {}, {})
    for key, value in state.items():
        if key.startswith(State.APP_PREFIX):
            parts.app[key.removeprefix(State.APP_PREFIX)] = value
        elif key.startswith(State.USER_PREFIX):
            parts.user[key.removeprefix(State.USER_PREFIX)] = value
        elif not key.startswith(State.TEMP_PREFIX):
            parts.session[key] = value
    return parts


def json_state(state: object, field: str) -> dict[str, Any]:
    """``state`` as the JSON data ADK's database service would store (datetimes as
    ISO text, models as objects); ``InvalidInputError`` for what has none."""
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise InvalidInputError(field, "must be a mapping with string keys")
    try:
        plain = to_jsonable_python(dict(state))
    except PydanticSerializationError:
        raise InvalidInputError(field, "holds a value with no JSON form") from None
    assert isinstance(plain, dict)
    return plain


def merged(
    session_state: Mapping[str, Any], app_state: Mapping[str, Any], user_state: Mapping[str, Any]
) -> dict[str, Any]:
    """One mapping as a session object shows it: the session's keys, then the app's and
    the user's under their prefixes."""
    result = dict(session_state)
    result.update({State.APP_PREFIX + k: value for k, value in app_state.items()})
    result.update({State.USER_PREFIX + k: value for k, value in user_state.items()})
    return result


def session_view(states: States, user_id: str, session_id: uuid.UUID) -> dict[str, Any]:
    """:func:`merged` for one session of what ``states.read`` found (``{}`` for a scope
    without a row)."""
    return merged(states.sessions.get(session_id, {}), states.app, states.users.get(user_id, {}))
