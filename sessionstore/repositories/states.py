"""SQL and row mapping for the framework state tables: Google ADK's three scopes of
state, ``adk_app_states``, ``adk_user_states`` and ``adk_session_states`` (core schema,
revision 0008).

A scope's state is one JSON object. Writes merge a delta into it (top-level keys
replaced, the rest kept), creating the row on first use; the three scopes are read
together and written together, each in one statement. Session state goes with its
session (``ON DELETE CASCADE``); user state goes with ``purge_user``; app state is
shared by every user of the app, so under row-level security no user may write it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID

from .. import validation as v
from ..db import Connection, Database
from ..errors import InvalidInputError

__all__ = [
    "READ_STATES",
    "WRITE_STATES",
    "StateDeltas",
    "States",
    "StatesRepository",
    "WrittenStates",
    "write_states",
]

# The three scopes of state in one round trip: the app's ('app', NULL), its users'
# ('user', user id; $2 NULL: every user's) and sessions' ('session', session id).
READ_STATES = """
SELECT 'app' AS scope, NULL::text AS owner, state FROM adk_app_states WHERE app_name = $1
UNION ALL
SELECT 'user', user_id, state FROM adk_user_states
WHERE app_name = $1 AND ($2::text IS NULL OR user_id = $2)
UNION ALL
SELECT 'session', session_id::text, state FROM adk_session_states
WHERE session_id = ANY($3::uuid[])
"""
# Merge the deltas ($4 app, $5 user, $6 session of $3; NULL: none) into their rows,
# created on first use, and return the three states after the merge: one statement,
# so all scopes change or none. A CTE's writes are invisible to the same statement's
# other reads, hence the coalesce of the written row and the stored one.
WRITE_STATES = """
WITH app AS (
    INSERT INTO adk_app_states AS a (app_name, state)
    SELECT $1, $4::jsonb WHERE $4::jsonb IS NOT NULL
    ON CONFLICT (app_name) DO UPDATE SET state = a.state || EXCLUDED.state, updated_at = now()
    RETURNING a.state
),
usr AS (
    INSERT INTO adk_user_states AS u (app_name, user_id, state)
    SELECT $1, $2, $5::jsonb WHERE $5::jsonb IS NOT NULL
    ON CONFLICT (app_name, user_id) DO UPDATE
    SET state = u.state || EXCLUDED.state, updated_at = now()
    RETURNING u.state
),
sess AS (
    INSERT INTO adk_session_states AS s (session_id, state)
    SELECT $3, $6::jsonb WHERE $6::jsonb IS NOT NULL
    ON CONFLICT (session_id) DO UPDATE SET state = s.state || EXCLUDED.state, updated_at = now()
    RETURNING s.state
)
SELECT coalesce((SELECT state FROM app),
                (SELECT state FROM adk_app_states WHERE app_name = $1)) AS app_state,
       coalesce((SELECT state FROM usr),
                (SELECT state FROM adk_user_states WHERE app_name = $1 AND user_id = $2))
           AS user_state,
       coalesce((SELECT state FROM sess),
                (SELECT state FROM adk_session_states WHERE session_id = $3)) AS session_state
"""


class States(NamedTuple):
    """What :meth:`StatesRepository.read` found: the app's state, user states by user id
    and session states by session id. A scope without a row is ``{}`` (the app) or
    absent (a user, a session)."""

    app: dict[str, Any]
    users: dict[str, dict[str, Any]]
    sessions: dict[UUID, dict[str, Any]]


class WrittenStates(NamedTuple):
    """The three states of one app, user and session after a write; ``{}`` for a scope
    that has no row."""

    app: dict[str, Any]
    user: dict[str, Any]
    session: dict[str, Any]


@dataclass(frozen=True, slots=True, init=False)
class StateDeltas:
    """A write's deltas, one per scope, as checked jsonb text (``None``: that scope is
    left alone). Made only by :meth:`of`, which checks everything before anything is
    sent, so a write that will be refused for its input is refused early (before a
    turn, when the write is a turn's ``after`` work); ``StateDeltas(...)`` itself raises
    ``InvalidInputError``: unchecked text could store a state that is no object."""

    app: str | None
    user: str | None
    session: str | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise InvalidInputError("deltas", "make them with StateDeltas.of, which checks them")

    @classmethod
    def of(
        cls,
        app: Mapping[str, Any] | None = None,
        user: Mapping[str, Any] | None = None,
        session: Mapping[str, Any] | None = None,
        *,
        fields: tuple[str, str, str] = ("app", "user", "session"),
        session_first: bool = False,
    ) -> StateDeltas:
        """The deltas, checked by the rules of a message's metadata (what reads back
        exactly: :attr:`~sessionstore.MessageOptions.metadata`); ``None`` and an empty
        mapping both mean no change. ``fields`` names the three arguments in an
        ``InvalidInputError`` (an adapter names its own inputs); they are checked in
        the order app, user, session, or session first with ``session_first`` (the
        first bad one is named)."""
        app_field, user_field, session_field = fields
        session_text = _delta(session, session_field) if session_first else None
        app_text = _delta(app, app_field)
        user_text = _delta(user, user_field)
        if not session_first:
            session_text = _delta(session, session_field)
        deltas = object.__new__(cls)
        for name, text in (("app", app_text), ("user", user_text), ("session", session_text)):
            object.__setattr__(deltas, name, text)
        return deltas

    @property
    def changes(self) -> bool:
        """Whether any scope changes."""
        return bool(self.app or self.user or self.session)


def _delta(value: object, field: str) -> str | None:
    # Checked even when falsy: 0 or [] is no mapping, and must be refused, not skipped.
    text = v.metadata_json(value, field)
    return None if text == "{}" else text


def _keys(app_name: object, user_id: object, session_id: object) -> tuple[str, str, UUID]:
    return (
        v.identifier(app_name, "app_name"),
        v.identifier(user_id, "user_id"),
        v.uuid(session_id, "session_id"),
    )


def _deltas(deltas: object) -> StateDeltas:
    if not isinstance(deltas, StateDeltas):
        raise InvalidInputError("deltas", "must be a StateDeltas (use StateDeltas.of)")
    return deltas


async def write_states(
    conn: Connection, app_name: str, user_id: str, session_id: UUID | str, deltas: StateDeltas
) -> WrittenStates:
    """Merge ``deltas`` on ``conn`` in one statement and return the three states after it:
    the form for work inside another operation's transaction (a turn's ``after``, see
    :meth:`sessionstore.SessionStore.add_turn`). Arguments are checked as in
    :meth:`StatesRepository.write`; database errors are translated by the operation whose
    connection it is (a session that does not exist: ``NotFoundError``).

    The keys are checked when this runs: inside a turn's ``after`` that is after the
    turn's statement, and a bad key then rolls the turn back. Check them before the
    turn (as the ADK adapter does) to refuse bad input before anything is sent."""
    app, user, sid = _keys(app_name, user_id, session_id)
    deltas = _deltas(deltas)
    row = await conn.fetchrow(WRITE_STATES, app, user, sid, deltas.app, deltas.user, deltas.session)
    assert row is not None  # the statement always returns one row
    return WrittenStates(
        row["app_state"] or {}, row["user_state"] or {}, row["session_state"] or {}
    )


class StatesRepository:
    """Google ADK's state in its three scopes: the app's, a user's within the app, a
    session's. ``store.states`` (and ``store.as_user(user).states``, under row-level
    security); the ADK adapter (:mod:`sessionstore.integrations.adk`) keeps its state
    here. Keys are the adapter's: ``app_name`` and ``user_id`` identifiers (non-empty
    text of at most 255 characters), a sessionstore session id."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def read(
        self, app_name: str, user_id: str | None, session_ids: Sequence[UUID | str]
    ) -> States:
        """The app's state, the user state of ``user_id`` (``None``: of every user of the
        app) and the state of each session in ``session_ids``, in one round trip (retried
        like every read). Under row-level security other users' rows read as absent.
        ``InvalidInputError`` names a bad argument before anything is sent."""
        app = v.identifier(app_name, "app_name")
        user = None if user_id is None else v.identifier(user_id, "user_id")
        if isinstance(session_ids, str | bytes) or not isinstance(session_ids, Sequence):
            raise InvalidInputError("session_ids", "must be a sequence of session ids")
        sids = [v.uuid(sid, "session_ids") for sid in session_ids]
        rows = await self._db.fetch(READ_STATES, app, user, sids, retry=True)
        states = States({}, {}, {})
        for row in rows:
            if row["scope"] == "app":
                states.app.update(row["state"])
            elif row["scope"] == "user":
                states.users[row["owner"]] = row["state"]
            else:
                states.sessions[UUID(row["owner"])] = row["state"]
        return states

    async def write(
        self, app_name: str, user_id: str, session_id: UUID | str, deltas: StateDeltas
    ) -> WrittenStates:
        """Merge ``deltas`` into the app's, the user's and the session's state in one
        statement (all scopes change or none; a scope's row is created on first use) and
        return the three states after it; one round trip, not retried.

        ``NotFoundError`` if the session does not exist (with a session delta);
        ``PermissionDeniedError`` under row-level security for an app delta, or another
        user's rows. ``InvalidInputError`` names a bad argument before anything is sent.
        """
        app, user, sid = _keys(app_name, user_id, session_id)
        checked = _deltas(deltas)
        return await self._db.run(lambda conn: write_states(conn, app, user, sid, checked))
