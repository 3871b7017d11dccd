"""The session service: :class:`SessionStoreSessionService`, ADK's ``BaseSessionService``
over the store's public API (the package docstring has the mapping)."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from google.adk.errors import StaleSessionError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.sessions.base_session_service import (
    BaseSessionService,
    GetSessionConfig,
    ListSessionsResponse,
)
from google.adk.sessions.session import Session as AdkSession
from typing_extensions import override

from ... import validation as v
from ...db import Connection
from ...errors import ConflictError, InvalidInputError, NotFoundError, PermissionDeniedError
from ...models import Session, SessionStatus, Turn
from ...repositories.states import StateDeltas, write_states
from ...store import SessionStore, UserView
from ..common import Scope
from .binding import bind, delete_conversation, discard
from .cache import KnownSessions
from .events import EventWrite, select, stamp
from .keys import Key, adk_names, checked_key, marker, parse_marker, slot
from .reads import all_of, all_sessions, history
from .state import json_state, merged, session_view, split

__all__ = ["SessionStoreSessionService"]

logger = logging.getLogger("sessionstore")

_STALE = (
    "The session has been modified in storage since it was loaded. "
    "Please reload the session before appending more events."
)
# The stored event a session object without a revision marker must end with.
_LAST_EVENT = GetSessionConfig(num_recent_events=1)


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
    - ``get_session``: ``None`` when absent, deleted or expired; events by timestamp,
      ties by event id. ``state`` is the session's state with ``app:`` and ``user:``
      state merged in under their prefixes.
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
        # Which session holds each ADK session seen here, and the per-session append locks.
        self._known = KnownSessions()

    # -- plumbing --------------------------------------------------------------------

    def _scope(self, user_id: str | None) -> Scope:
        if self._per_user is None:
            return self._store
        if user_id is None:
            raise InvalidInputError(
                "user_id", "is required when the service runs as the ADK user (as_user=True)"
            )
        return self._per_user.as_user(user_id)

    def _refuse_app_writes(self, app_state: Mapping[str, Any] | str | None) -> None:
        """``PermissionDeniedError`` for an app-state change under row-level security."""
        if app_state and self._rls:
            raise PermissionDeniedError(
                "app: state is shared by every user of the app; under row-level security "
                "no single user may change it (write it on the service path); nothing was "
                "written"
            )

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
        key = checked_key(app_name, user_id, session_id, generate=True)
        parts = split(json_state({} if state is None else state, "state"))
        self._refuse_app_writes(parts.app)
        deltas = StateDeltas.of(
            parts.app,
            parts.user,
            parts.session,
            fields=("state[app:]", "state[user:]", "state"),
            session_first=True,  # create_session names a bad session state first
        )
        metadata = {"adk": {"app_name": key.app_name, "session_id": key.session_id}}
        scope = self._scope(key.user_id)
        options: dict[str, Any] = {} if self._ttl is None else {"ttl": self._ttl}
        created = await scope.sessions.create(key.user_id, metadata=metadata, **options)
        try:
            await bind(scope, key, created.id)
            # After the bind: a refused create changes no shared state.
            written = await scope.states.write(key.app_name, key.user_id, created.id, deltas)
        except Exception:
            await discard(scope, created.id)
            raise
        self._known.remember(key.continuation, created.id)
        return self._adk_session(
            key,
            merged(written.session, written.app, written.user),
            events=[],
            last_update_time=created.created_at.timestamp(),
            marker=marker(created.id, 0),
        )

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

        Events are ordered by timestamp, ties by event id (the database service's
        order, whatever order they were appended in). ``config.after_timestamp``: only
        the events at or after it; ``config.num_recent_events``: only the latest n of
        those (0: none). A filtered read assumes events are appended in time order
        (``docs/integrations/adk.md``, "Event order").
        Round trips: one step of three concurrent reads (the session, the events, the
        app/user state) when this service has seen the session before, else one lookup
        first; plus one per further 1,000 events.
        """
        key = checked_key(app_name, user_id, session_id)
        if config is not None and not isinstance(config, GetSessionConfig):
            raise InvalidInputError("config", "must be a GetSessionConfig")
        scope = self._scope(key.user_id)
        known = self._known.get(key.continuation)
        if known is not None:
            found = await self._load(scope, key, known, config)
            if found is not None:
                return found
            self._known.forget(key.continuation)
        try:
            conv = await scope.conversations.get(key.ref)
        except NotFoundError:
            return None
        if conv.session_id is None:
            return None
        found = await self._load(scope, key, conv.session_id, config)
        if found is not None:
            self._known.remember(key.continuation, conv.session_id)
        return found

    async def _load(
        self, scope: Scope, key: Key, session_id: uuid.UUID, config: GetSessionConfig | None
    ) -> AdkSession | None:
        try:
            conversation, stored, (messages, newest), states = await all_of(
                scope.conversations.get(key.ref),
                scope.sessions.get(session_id),
                history(scope, key, config),
                scope.states.read(key.app_name, key.user_id, [session_id]),
            )
        except NotFoundError:
            return None
        if (
            # Uncached: another worker may have deleted the session and made a new one
            # with the same ADK id, which the session cache can hide for a moment.
            conversation.session_id != session_id
            or stored.user_id != key.user_id
            or adk_names(stored) != (key.app_name, key.session_id)
            or stored.status == SessionStatus.EXPIRED
        ):
            return None
        events = select(messages, config)
        # The last event's own timestamp, as ADK's stores report it; none yet: creation.
        last = stored.created_at.timestamp()
        if newest is not None:
            stamped = stamp(newest)
            last = newest.created_at.timestamp() if stamped is None else stamped
        return self._adk_session(
            key,
            session_view(states, key.user_id, session_id),
            events=[Event.model_validate_json(m.content) for m in events],
            last_update_time=last,
            marker=marker(session_id, 0 if newest is None else newest.seq),
        )

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
        for session in await all_sessions(scope, uid):
            names = adk_names(session)
            if names is not None and names[0] == app and session.status != SessionStatus.EXPIRED:
                found.append((session, names[1]))
        states = await scope.states.read(app, uid, [s.id for s, _ in found])
        sessions = []
        for session, adk_id in found:
            sessions.append(
                self._adk_session(
                    Key(app, session.user_id, adk_id, ""),
                    session_view(states, session.user_id, session.id),
                    events=[],
                    last_update_time=session.updated_at.timestamp(),
                    marker=None,
                )
            )
        sessions.sort(key=lambda s: (s.last_update_time, s.user_id, s.id))
        return ListSessionsResponse(sessions=sessions)

    @override
    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """The user-scoped state of ``(app_name, user_id)``, keys without ``user:``;
        ``{}`` if none. One round trip."""
        app = v.identifier(app_name, "app_name")
        uid = v.identifier(user_id, "user_id")
        states = await self._scope(uid).states.read(app, uid, [])
        return states.users.get(uid, {})

    # -- delete ----------------------------------------------------------------------

    @override
    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Delete the session with its events (its sessionstore session, conversation and
        messages); nothing if there is none. App and user state stay. One round trip
        when this service has seen the session, else two."""
        key = checked_key(app_name, user_id, session_id)
        scope = self._scope(key.user_id)
        known = self._known.forget(key.continuation)
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
            await delete_conversation(scope, conv.id)
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
        key = checked_key(session.app_name, session.user_id, session.id)
        write = EventWrite.of(event)
        self._refuse_app_writes(write.deltas.app)
        scope = self._scope(key.user_id)
        async with self._known.lock(key.continuation):
            session_id, seen = await self._revision(scope, key, session)

            async def apply_state(conn: Connection, turn: Turn, written: bool) -> None:
                # A resend that found its turn stored (written=False) applied it then.
                if written:
                    await write_states(conn, key.app_name, key.user_id, session_id, write.deltas)

            try:
                # add_turn's hook: the delta commits with the event or not at all; without
                # a delta, no hook and no transaction: one round trip.
                turn = await scope.add_turn(
                    key.continuation,
                    write.role,
                    write.content,
                    after=apply_state if write.deltas.changes else None,
                    session_id=session_id,
                    metadata=write.metadata,
                    tokens=write.tokens,
                    message_id=slot(session_id, seen + 1),
                )
            except ConflictError as exc:
                # Another writer stored the event after the revision this object saw.
                raise StaleSessionError(_STALE) from exc
            except NotFoundError as exc:
                self._known.forget(key.continuation)
                raise SessionNotFoundError(f"Session {key.session_id} not found.") from exc
            self._known.remember(key.continuation, session_id)
            if turn.message.seq != seen + 1:
                logger.warning(
                    "ADK session %s: its conversation holds messages not written by the "
                    "session service; staleness checks rely on the service writing alone",
                    session_id,
                )
            session._storage_update_marker = marker(session_id, turn.message.seq)
            session.last_update_time = event.timestamp
        return self._commit_event_to_session(session, event)

    async def _revision(self, scope: Scope, key: Key, session: AdkSession) -> tuple[uuid.UUID, int]:
        """The sessionstore session and the revision (latest event ``seq``) the session
        object stands for; for an object this service did not return (no marker), ADK's
        database-service rule: it is current if its last event is the stored last one in
        :func:`~.events.order` (or, holding no events, if nothing newer than its
        ``last_update_time`` is stored).
        """
        parsed = parse_marker(session._storage_update_marker)
        if parsed is not None:
            return parsed
        try:
            conv, (messages, newest) = await all_of(
                scope.conversations.get(key.ref), history(scope, key, _LAST_EVENT)
            )
        except NotFoundError:
            raise SessionNotFoundError(f"Session {key.session_id} not found.") from None
        if conv.session_id is None:
            raise SessionNotFoundError(f"Session {key.session_id} not found.")
        last = select(messages, _LAST_EVENT)
        if last:
            if session.events:
                current = last[0].metadata.get("event_id") == session.events[-1].id
            else:
                current = (stamp(last[0]) or 0.0) <= session.last_update_time
            if not current:
                raise StaleSessionError(_STALE)
        return conv.session_id, 0 if newest is None else newest.seq

    # -- building ADK sessions ---------------------------------------------------------

    @staticmethod
    def _adk_session(
        key: Key,
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
