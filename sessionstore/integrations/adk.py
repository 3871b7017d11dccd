"""Google ADK's session service on sessionstore: :class:`SessionStoreSessionService`.

::

    from sessionstore.integrations.adk import SessionStoreSessionService

    runner = Runner(app_name="app", agent=agent, session_service=SessionStoreSessionService(store))

The mapping (docs/integrations/adk.md has the whole of it):

- an ADK session, keyed by ``(app_name, user_id, session_id)``, is a sessionstore session
  of ``user_id`` plus one conversation bound to it, whose continuation id
  (:func:`continuation_id`) encodes the three keys;
- each event is one message of that conversation (and one turn of the session): its
  content is the event's JSON as ADK writes it, its metadata a few facts about it;
- state lives in the ``adk_session_states``, ``adk_app_states`` and ``adk_user_states``
  tables (revision 0008), read and written for all three scopes in one statement.

Needs the ``adk`` extra (``google-adk``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple
from urllib.parse import quote

from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.sessions.base_session_service import (
    BaseSessionService,
    GetSessionConfig,
    ListSessionsResponse,
)
from google.adk.sessions.session import Session as AdkSession
from google.adk.sessions.state import State
from pydantic_core import PydanticSerializationError, to_jsonable_python
from typing_extensions import override

from .. import validation as v
from ..db import Connection
from ..errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    SessionStoreError,
)
from ..models import ContinuationId, Message, MessageRole, Session, SessionStatus, Turn
from ..store import SessionStore, UserView
from ._common import Scope, latest

__all__ = ["SessionStoreSessionService", "continuation_id"]

logger = logging.getLogger("sessionstore")


#: ``Message.metadata["kind"]`` of a message that holds an ADK event.
EVENT_KIND = "adk_event"

_CONTINUATION_MAX = v.MAX_IDENTIFIER
_PAGE = v.MAX_LIMIT
# A read filtered by after_timestamp usually wants the last few events: start small.
_FIRST_FILTERED_PAGE = 100
_KNOWN_SESSIONS = 10_000
_BIND_ATTEMPTS = 3
# Message ids of event slots: uuid5(_SLOTS, "<sessionstore session id>/<n>").
_SLOTS = uuid.UUID("6d1f6b2e-4f0a-5c1e-9a57-0adc5e55a70e")
_STALE = (
    "The session has been modified in storage since it was loaded. "
    "Please reload the session before appending more events."
)

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


def continuation_id(app_name: str, user_id: str, session_id: str) -> str:
    """The continuation id of the conversation that holds an ADK session's events.

    ``adk/<app_name>/<user_id>/<session_id>``, each part percent-encoded (``/`` and
    ``%`` included, so the parts never run into each other). Where that is longer than
    a continuation id may be (255 characters), ``adk#`` and the SHA-256 of the three
    parts instead; the two forms cannot meet, as an encoded part holds no ``#``. Read
    the events through sessionstore with
    ``store.messages.history(ContinuationId(continuation_id(app, user, session)))``.
    """
    parts = (app_name, user_id, session_id)
    readable = "adk/" + "/".join(quote(part, safe="") for part in parts)
    if len(readable) <= _CONTINUATION_MAX:
        return readable
    return "adk#" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Key:
    """An ADK session's keys, checked, and its conversation's continuation id."""

    app_name: str
    user_id: str
    session_id: str
    continuation: str

    @property
    def ref(self) -> ContinuationId:
        return ContinuationId(self.continuation)


def _key(app_name: object, user_id: object, session_id: object, *, generate: bool = False) -> _Key:
    app = v.identifier(app_name, "app_name")
    user = v.identifier(user_id, "user_id")
    # ADK's own services strip the session id (a padded id names the same session).
    given = session_id.strip() if isinstance(session_id, str) else session_id
    if generate and not given:
        given = str(uuid.uuid4())
    sid = v.identifier(given, "session_id")
    return _Key(app, user, sid, continuation_id(app, user, sid))


class _Split(NamedTuple):
    """A state mapping split by scope, JSON-safe; app and user keys without prefix."""

    app: dict[str, Any]
    user: dict[str, Any]
    session: dict[str, Any]


def _split(state: Mapping[str, Any]) -> _Split:
    """ADK's routing of state keys: ``app:`` and ``user:`` to their scopes, ``temp:``
    nowhere (never persisted), everything else to the session."""
    split = _Split({}, {}, {})
    for key, value in state.items():
        if key.startswith(State.APP_PREFIX):
            split.app[key.removeprefix(State.APP_PREFIX)] = value
        elif key.startswith(State.USER_PREFIX):
            split.user[key.removeprefix(State.USER_PREFIX)] = value
        elif not key.startswith(State.TEMP_PREFIX):
            split.session[key] = value
    return split


def _json_state(state: object, field: str) -> dict[str, Any]:
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


def _checked_json(state: Mapping[str, Any], field: str) -> str | None:
    """The jsonb text of a non-empty state delta (sessionstore's rules: what reads back
    exactly), or ``None`` for an empty one. Checked before anything is sent."""
    return v.metadata_json(state, field) if state else None


def _merged(
    session_state: Mapping[str, Any], app_state: Mapping[str, Any], user_state: Mapping[str, Any]
) -> dict[str, Any]:
    merged = dict(session_state)
    merged.update({State.APP_PREFIX + k: value for k, value in app_state.items()})
    merged.update({State.USER_PREFIX + k: value for k, value in user_state.items()})
    return merged


def _adk_names(session: Session) -> tuple[str, str] | None:
    """``(app_name, session_id)`` from a sessionstore session the service made, else None."""
    names = session.metadata.get("adk")
    if not isinstance(names, dict):
        return None
    app, sid = names.get("app_name"), names.get("session_id")
    return (app, sid) if isinstance(app, str) and isinstance(sid, str) else None


def _stamp(message: Message) -> float | None:
    """The event timestamp of a message holding an ADK event, else None."""
    meta = message.metadata
    stamp = meta.get("timestamp")
    if meta.get("kind") != EVENT_KIND or not isinstance(stamp, int | float):
        return None
    return float(stamp)


def _marker(session_id: uuid.UUID, seq: int) -> str:
    """``Session._storage_update_marker``: the sessionstore session and the ``seq`` of
    the latest event the ADK session object has seen."""
    return f"{session_id}:{seq}"


def _parse_marker(marker: str | None) -> tuple[uuid.UUID, int] | None:
    if not marker:
        return None
    sid, _, seq = marker.rpartition(":")
    try:
        return uuid.UUID(sid), int(seq)
    except ValueError:  # a marker another service wrote
        return None


def _slot(session_id: uuid.UUID, seq: int) -> uuid.UUID:
    """The message id of the ``seq``-th event: writers that saw the same revision race
    for the same id, and sessionstore stores one message per id (see append_event)."""
    return uuid.uuid5(_SLOTS, f"{session_id}/{seq}")


class _States(NamedTuple):
    """What READ_STATES found: app state, user states by user, session states by id."""

    app: dict[str, Any]
    users: dict[str, dict[str, Any]]
    sessions: dict[uuid.UUID, dict[str, Any]]

    def merged(self, user_id: str, session_id: uuid.UUID) -> dict[str, Any]:
        return _merged(self.sessions.get(session_id, {}), self.app, self.users.get(user_id, {}))


class _EventWrite(NamedTuple):
    """An event as it is written: the message, and its state deltas as jsonb text
    (``None``: no change in that scope)."""

    role: MessageRole
    content: str
    metadata: dict[str, Any]
    tokens: int | None
    app_delta: str | None
    user_delta: str | None
    session_delta: str | None

    @property
    def changes_state(self) -> bool:
        return bool(self.app_delta or self.user_delta or self.session_delta)

    @classmethod
    def of(cls, event: Event) -> _EventWrite:
        try:
            # As ADK's own stores write it; exclude_none keeps None inside dicts.
            content = event.model_dump_json(exclude_none=True)
        except PydanticSerializationError:
            raise InvalidInputError(
                "event", "cannot be serialised to JSON (e.g. text with a lone surrogate)"
            ) from None
        delta: dict[str, Any] = {}
        if event.actions.state_delta:
            # The delta exactly as the event's JSON holds it (ADK's fallback included).
            delta = event.actions.model_dump(mode="json", include={"state_delta"})["state_delta"]
        split = _split(delta)
        usage = event.usage_metadata
        tokens = None if usage is None else usage.total_token_count
        return cls(
            role=MessageRole.USER if event.author == "user" else MessageRole.ASSISTANT,
            content=content,
            metadata={
                "kind": EVENT_KIND,
                "event_id": event.id,
                "invocation_id": event.invocation_id,
                "author": event.author,
                "timestamp": event.timestamp,
            },
            tokens=tokens if tokens is not None and tokens >= 0 else None,
            app_delta=_checked_json(split.app, "event.actions.state_delta[app:]"),
            user_delta=_checked_json(split.user, "event.actions.state_delta[user:]"),
            session_delta=_checked_json(split.session, "event.actions.state_delta"),
        )


async def _all(*calls: Awaitable[Any]) -> list[Any]:
    """Run ``calls`` at once and let every one finish (none is left running unseen);
    then raise the first error, if any."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class SessionStoreSessionService(BaseSessionService):
    """ADK's ``BaseSessionService`` on sessionstore: sessions, events and the three
    scopes of state in PostgreSQL.

    ``store``: a :class:`~sessionstore.SessionStore` (the service path), or a
    :class:`~sessionstore.UserView` from ``store.as_user(user)``: then every call runs
    under row-level security as that user, and other users' sessions read as absent.
    ``as_user=True`` (with a ``SessionStore``) runs each call under row-level security
    as the call's ADK ``user_id`` instead: the ADK user *is* the Supabase user, so pass
    only the authenticated user's id. ``ttl``: how long each new session lives
    (``None``: the store's ``default_ttl``). The service does not own the store and
    does not close it.

    Behaviour, as ADK's own database service unless said otherwise:

    - ``create_session``: a given ``session_id`` is stripped; one already in use by this
      user in this app raises ``AlreadyExistsError``, unless that session has expired
      (then it is replaced). ``app:`` and ``user:`` keys of ``state`` go to their scopes,
      ``temp:`` keys nowhere.
    - ``get_session``: ``None`` when absent, deleted or expired. ``state`` is the
      session's state with ``app:`` and ``user:`` state merged in under their prefixes.
    - ``list_sessions``: without events, oldest first by ``last_update_time`` (there: the
      time of the session's last write, on the database's clock); expired sessions are
      left out.
    - ``append_event``: partial events are not stored; ``temp:`` keys stay in memory
      only; an event already in ``session.events`` is not stored twice. A session object
      that another writer has overtaken raises ``StaleSessionError``; a deleted session
      ``SessionNotFoundError``; an expired one ``SessionExpiredError`` (a paused or
      completed one ``InvalidStateError``). Under row-level security a change of
      ``app:`` state raises ``PermissionDeniedError`` before anything is written: app
      state is shared by every user of the app, and no one user may change it.

    Bad keys or state raise ``InvalidInputError`` (field named) before anything is sent.
    """

    def __init__(
        self,
        store: SessionStore | UserView,
        *,
        ttl: timedelta | None = None,
        as_user: bool = False,
    ) -> None:
        if not isinstance(store, SessionStore | UserView):
            raise InvalidInputError("store", "must be a SessionStore or a UserView")
        if not isinstance(as_user, bool):
            raise InvalidInputError("as_user", "must be a bool")
        if as_user and not isinstance(store, SessionStore):
            raise InvalidInputError("as_user", "needs a SessionStore (a UserView has its user)")
        self._store = store
        # The store whose as_user views the calls run in, with as_user=True.
        self._per_user = store if as_user and isinstance(store, SessionStore) else None
        self._ttl = None if ttl is None else v.ttl(ttl)
        self._rls = as_user or isinstance(store, UserView)
        # continuation id -> sessionstore session id: a conversation stays bound to one
        # session until both are deleted, so a hit saves the lookup (and is checked).
        self._known: OrderedDict[str, uuid.UUID] = OrderedDict()
        # One append at a time per ADK session in this process: parallel branches of an
        # invocation share one session object and must not race for the same slot.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # -- plumbing --------------------------------------------------------------------

    def _scope(self, user_id: str | None) -> Scope:
        if self._per_user is None:
            return self._store
        if user_id is None:
            raise InvalidInputError(
                "user_id", "is required when the service runs as the ADK user (as_user=True)"
            )
        return self._per_user.as_user(user_id)

    def _remember(self, continuation: str, session_id: uuid.UUID) -> None:
        self._known[continuation] = session_id
        self._known.move_to_end(continuation)
        if len(self._known) > _KNOWN_SESSIONS:
            self._known.popitem(last=False)

    def _forget(self, continuation: str) -> None:
        self._known.pop(continuation, None)

    def _lock(self, continuation: str) -> asyncio.Lock:
        lock = self._locks.get(continuation)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[continuation] = lock
        return lock

    def _refuse_app_writes(self, app_state: Mapping[str, Any] | str | None) -> None:
        if app_state and self._rls:
            raise PermissionDeniedError(
                "app: state is shared by every user of the app; under row-level security "
                "no single user may change it (write it on the service path); nothing was "
                "written"
            )

    async def _read_states(
        self,
        scope: Scope,
        app_name: str,
        user_id: str | None,
        session_ids: Sequence[uuid.UUID],
    ) -> _States:
        """The app's state, the user state of ``user_id`` (``None``: of every user) and
        the state of each session in ``session_ids``; one round trip."""
        rows = await scope._db.fetch(READ_STATES, app_name, user_id, list(session_ids), retry=True)
        states = _States({}, {}, {})
        for row in rows:
            if row["scope"] == "app":
                states.app.update(row["state"])
            elif row["scope"] == "user":
                states.users[row["owner"]] = row["state"]
            else:
                states.sessions[uuid.UUID(row["owner"])] = row["state"]
        return states

    async def _write_states(
        self,
        scope: Scope,
        key: _Key,
        session_id: uuid.UUID,
        app_delta: str | None,
        user_delta: str | None,
        session_delta: str | None,
    ) -> dict[str, Any]:
        """Merge the deltas (jsonb text) in one statement; the session's merged state
        (app and user state under their prefixes) after it."""
        row = await scope._db.run(
            lambda conn: conn.fetchrow(
                WRITE_STATES,
                key.app_name,
                key.user_id,
                session_id,
                app_delta,
                user_delta,
                session_delta,
            )
        )
        assert row is not None  # the statement always returns one row
        return _merged(row["session_state"] or {}, row["app_state"] or {}, row["user_state"] or {})

    # -- create ----------------------------------------------------------------------

    @override
    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> AdkSession:
        """Create the session (three round trips: session, conversation, app/user state).

        ``AlreadyExistsError`` if ``session_id`` is in use by a live session of this user
        in this app (nothing is written then); an expired one is replaced.
        """
        key = _key(app_name, user_id, session_id, generate=True)
        split = _split(_json_state({} if state is None else state, "state"))
        self._refuse_app_writes(split.app)
        session_delta = _checked_json(split.session, "state")
        app_delta = _checked_json(split.app, "state[app:]")
        user_delta = _checked_json(split.user, "state[user:]")
        metadata = {"adk": {"app_name": key.app_name, "session_id": key.session_id}}
        scope = self._scope(key.user_id)
        options: dict[str, Any] = {} if self._ttl is None else {"ttl": self._ttl}
        created = await scope.sessions.create(key.user_id, metadata=metadata, **options)
        try:
            await self._bind(scope, key, created.id)
            # After the bind: a refused create changes no shared state.
            state = await self._write_states(
                scope, key, created.id, app_delta, user_delta, session_delta
            )
        except Exception:
            await self._discard(scope, created.id)
            raise
        self._remember(key.continuation, created.id)
        return self._adk_session(
            key,
            state,
            events=[],
            last_update_time=created.created_at.timestamp(),
            marker=_marker(created.id, 0),
        )

    async def _bind(self, scope: Scope, key: _Key, session_id: uuid.UUID) -> None:
        """Create the session's conversation; the continuation id is the arbiter of
        which session owns the ADK key (race-free)."""
        names = {
            "adk": {
                "app_name": key.app_name,
                "user_id": key.user_id,
                "session_id": key.session_id,
            }
        }
        for _ in range(_BIND_ATTEMPTS):
            try:
                conv = await scope.conversations.get_or_create(
                    key.continuation, session_id=session_id, metadata=names
                )
            except ConflictError:  # bound to another session
                if await self._clear_expired(scope, key):
                    continue
                raise AlreadyExistsError(
                    f"Session with id {key.session_id} already exists."
                ) from None
            if conv.session_id == session_id:
                return
            # Left without a session (its session was deleted keeping conversations, or
            # cleaned up): a dead session's events, not this one's.
            await self._delete_conversation(scope, conv.id)
        raise AlreadyExistsError(f"Session with id {key.session_id} already exists.")

    async def _clear_expired(self, scope: Scope, key: _Key) -> bool:
        """Delete what holds the ADK key if it is dead (expired, or its conversation
        orphaned); whether the key may be taken now."""
        try:
            conv = await scope.conversations.get(key.ref)
        except NotFoundError:
            return True  # deleted meanwhile
        if conv.session_id is None:
            await self._delete_conversation(scope, conv.id)
            return True
        try:
            holder = await scope.sessions.get(conv.session_id)
        except NotFoundError:
            return True
        if holder.status != SessionStatus.EXPIRED:
            return False
        with contextlib.suppress(NotFoundError):
            await scope.sessions.delete(holder.id)
        return True

    @staticmethod
    async def _delete_conversation(scope: Scope, conversation_id: uuid.UUID) -> None:
        with contextlib.suppress(NotFoundError):
            await scope.conversations.delete(conversation_id)

    @staticmethod
    async def _discard(scope: Scope, session_id: uuid.UUID) -> None:
        """Remove a session whose creation failed half-way (best effort: a leftover has
        no conversation, so ADK never sees it, and it expires like any session)."""
        try:
            await scope.sessions.delete(session_id)
        except SessionStoreError as exc:
            logger.warning("could not remove a half-created ADK session %s: %s", session_id, exc)

    # -- read ------------------------------------------------------------------------

    @override
    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> AdkSession | None:
        """The session with its events and merged state; ``None`` if there is none, it
        was deleted, or it has expired.

        ``config.num_recent_events``: only the latest n events (0: none);
        ``config.after_timestamp``: only the events after the last one older than it
        (ADK's in-memory rule; the same as the database service's when timestamps grow).
        Round trips: one step of three concurrent reads (the session, the events, the
        app/user state) when this service has seen the session before, else one lookup
        first; plus one per further 1,000 events.
        """
        key = _key(app_name, user_id, session_id)
        if config is not None and not isinstance(config, GetSessionConfig):
            raise InvalidInputError("config", "must be a GetSessionConfig")
        scope = self._scope(key.user_id)
        known = self._known.get(key.continuation)
        if known is not None:
            found = await self._load(scope, key, known, config)
            if found is not None:
                return found
            self._forget(key.continuation)
        try:
            conv = await scope.conversations.get(key.ref)
        except NotFoundError:
            return None
        if conv.session_id is None:
            return None
        found = await self._load(scope, key, conv.session_id, config)
        if found is not None:
            self._remember(key.continuation, conv.session_id)
        return found

    async def _load(
        self, scope: Scope, key: _Key, session_id: uuid.UUID, config: GetSessionConfig | None
    ) -> AdkSession | None:
        try:
            conversation, stored, (messages, newest), states = await _all(
                scope.conversations.get(key.ref),
                scope.sessions.get(session_id),
                self._history(scope, key, config),
                self._read_states(scope, key.app_name, key.user_id, [session_id]),
            )
        except NotFoundError:
            return None
        if (
            # Uncached: another worker may have deleted the session and made a new one
            # with the same ADK id, which the session cache can hide for a moment.
            conversation.session_id != session_id
            or stored.user_id != key.user_id
            or _adk_names(stored) != (key.app_name, key.session_id)
            or stored.status == SessionStatus.EXPIRED
        ):
            return None
        events = _select(messages, config)
        # The last event's own timestamp, as ADK's stores report it; none yet: creation.
        last = stored.created_at.timestamp()
        if newest is not None:
            stamp = _stamp(newest)
            last = newest.created_at.timestamp() if stamp is None else stamp
        return self._adk_session(
            key,
            states.merged(key.user_id, session_id),
            events=[Event.model_validate_json(m.content) for m in events],
            last_update_time=last,
            marker=_marker(session_id, 0 if newest is None else newest.seq),
        )

    @staticmethod
    async def _history(
        scope: Scope, key: _Key, config: GetSessionConfig | None
    ) -> tuple[list[Message], Message | None]:
        """The messages the config may need, oldest first, and the newest message of the
        conversation (the revision the session object will carry), in pages read
        backwards. ``NotFoundError`` if the conversation is gone."""
        recent = None if config is None else config.num_recent_events
        after = None if config is None else config.after_timestamp
        if recent == 0:
            last = await scope.messages.history(key.ref, limit=1)
            return [], last[-1] if last else None

        def reaches_back(page: list[Message]) -> bool:
            oldest = _stamp(page[0]) if page else None
            return after is not None and oldest is not None and oldest < after

        first = _FIRST_FILTERED_PAGE if after is not None and recent is None else None
        messages = await latest(scope, key.ref, recent, first_page=first, enough=reaches_back)
        return messages, messages[-1] if messages else None

    @override
    async def list_sessions(
        self, *, app_name: str, user_id: str | None = None
    ) -> ListSessionsResponse:
        """The app's sessions (of ``user_id``, or of every user the store may see),
        without events, with merged state, oldest first by ``last_update_time``.

        Reads the user's sessionstore sessions a page of 1,000 at a time (every user's
        with ``user_id=None``), then the state of those found in one round trip. Under
        ``as_user=True`` ``user_id`` is required.
        """
        app = v.identifier(app_name, "app_name")
        uid = None if user_id is None else v.identifier(user_id, "user_id")
        scope = self._scope(uid)
        found: list[tuple[Session, str]] = []
        for session in await self._all_sessions(scope, uid):
            names = _adk_names(session)
            if names is not None and names[0] == app and session.status != SessionStatus.EXPIRED:
                found.append((session, names[1]))
        states = await self._read_states(scope, app, uid, [s.id for s, _ in found])
        sessions = []
        for session, adk_id in found:
            sessions.append(
                self._adk_session(
                    _Key(app, session.user_id, adk_id, ""),
                    states.merged(session.user_id, session.id),
                    events=[],
                    last_update_time=session.updated_at.timestamp(),
                    marker=None,
                )
            )
        sessions.sort(key=lambda s: (s.last_update_time, s.user_id, s.id))
        return ListSessionsResponse(sessions=sessions)

    @staticmethod
    async def _all_sessions(scope: Scope, user_id: str | None) -> list[Session]:
        found: list[Session] = []
        cursor: str | None = None
        while True:
            page = await scope.sessions.list(user_id=user_id, limit=_PAGE, cursor=cursor)
            found.extend(page.items)
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    @override
    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """The user-scoped state of ``(app_name, user_id)``, keys without ``user:``;
        ``{}`` if none. One round trip."""
        app = v.identifier(app_name, "app_name")
        uid = v.identifier(user_id, "user_id")
        states = await self._read_states(self._scope(uid), app, uid, [])
        return states.users.get(uid, {})

    # -- delete ----------------------------------------------------------------------

    @override
    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Delete the session with its events (its sessionstore session, conversation and
        messages); nothing if there is none. App and user state stay. One round trip
        when this service has seen the session, else two."""
        key = _key(app_name, user_id, session_id)
        scope = self._scope(key.user_id)
        known = self._known.pop(key.continuation, None)
        if known is not None:
            try:
                await scope.sessions.delete(known)
                return
            except NotFoundError:
                pass
        try:
            conv = await scope.conversations.get(key.ref)
        except NotFoundError:
            return
        if conv.session_id is None:
            await self._delete_conversation(scope, conv.id)
            return
        with contextlib.suppress(NotFoundError):
            await scope.sessions.delete(conv.session_id)

    # -- append ----------------------------------------------------------------------

    @override
    async def append_event(self, session: AdkSession, event: Event) -> Event:
        """Store the event and apply its state delta; return it.

        One round trip (``add_turn``: the message, the session's turn, the expiry and
        ownership checks, and the staleness check, in one statement) for an event
        without state changes; with a state delta, its statement (all three scopes at
        once) follows in the same transaction: the event and its state commit together
        or not at all. Appending the same event object again (after a timeout) finds the
        stored event and applies nothing twice.
        """
        if event.partial:
            return event
        if any(e.id == event.id and e == event for e in session.events):
            return event  # an equal re-delivery: stored already
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        key = _key(session.app_name, session.user_id, session.id)
        write = _EventWrite.of(event)
        self._refuse_app_writes(write.app_delta)
        scope = self._scope(key.user_id)
        async with self._lock(key.continuation):
            session_id, seen = await self._revision(scope, key, session)

            async def apply_state(conn: Connection, turn: Turn, written: bool) -> None:
                if written and write.changes_state:
                    await conn.execute(
                        WRITE_STATES,
                        key.app_name,
                        key.user_id,
                        session_id,
                        write.app_delta,
                        write.user_delta,
                        write.session_delta,
                    )

            try:
                turn = await scope._turn(
                    key.continuation,
                    write.role,
                    write.content,
                    apply_state if write.changes_state else None,
                    {
                        "session_id": session_id,
                        "metadata": write.metadata,
                        "tokens": write.tokens,
                        "message_id": _slot(session_id, seen + 1),
                    },
                )
            except ConflictError as exc:
                # Another writer stored the event after the revision this object saw.
                raise StaleSessionError(_STALE) from exc
            except NotFoundError as exc:
                self._forget(key.continuation)
                raise SessionNotFoundError(f"Session {key.session_id} not found.") from exc
            self._remember(key.continuation, session_id)
            if turn.message.seq != seen + 1:
                logger.warning(
                    "ADK session %s: its conversation holds messages not written by the "
                    "session service; staleness checks rely on the service writing alone",
                    session_id,
                )
            session._storage_update_marker = _marker(session_id, turn.message.seq)
            session.last_update_time = event.timestamp
        return self._commit_event_to_session(session, event)

    async def _revision(
        self, scope: Scope, key: _Key, session: AdkSession
    ) -> tuple[uuid.UUID, int]:
        """The sessionstore session and the revision (latest event ``seq``) the session
        object stands for; for an object this service did not return (no marker), ADK's
        database-service rule: it is current if its last event is the stored last one
        (or, holding no events, if nothing newer than its ``last_update_time`` is stored).
        """
        parsed = _parse_marker(session._storage_update_marker)
        if parsed is not None:
            return parsed
        try:
            conv, latest = await _all(
                scope.conversations.get(key.ref), scope.messages.history(key.ref, limit=1)
            )
        except NotFoundError:
            raise SessionNotFoundError(f"Session {key.session_id} not found.") from None
        if conv.session_id is None:
            raise SessionNotFoundError(f"Session {key.session_id} not found.")
        newest: Message | None = latest[-1] if latest else None
        if newest is not None:
            if session.events:
                current = newest.metadata.get("event_id") == session.events[-1].id
            else:
                stamp = _stamp(newest)
                current = stamp is None or stamp <= session.last_update_time
            if not current:
                raise StaleSessionError(_STALE)
        return conv.session_id, 0 if newest is None else newest.seq

    # -- building ADK sessions ---------------------------------------------------------

    @staticmethod
    def _adk_session(
        key: _Key,
        state: dict[str, Any],
        *,
        events: list[Event],
        last_update_time: float,
        marker: str | None,
    ) -> AdkSession:
        session = AdkSession(
            id=key.session_id,
            app_name=key.app_name,
            user_id=key.user_id,
            state=state,
            events=events,
            last_update_time=last_update_time,
        )
        session._storage_update_marker = marker
        return session


def _select(messages: Sequence[Message], config: GetSessionConfig | None) -> list[Message]:
    """The event messages ``config`` asks for, by ADK's in-memory rules: the latest
    ``num_recent_events``, then those after the last one older than ``after_timestamp``."""
    events = [m for m in messages if _stamp(m) is not None]
    if config is None:
        return events
    if config.num_recent_events is not None:
        events = events[-config.num_recent_events :] if config.num_recent_events else []
    if config.after_timestamp is not None:
        cut = len(events)
        while cut > 0 and (_stamp(events[cut - 1]) or 0.0) >= config.after_timestamp:
            cut -= 1
        events = events[cut:]
    return events
