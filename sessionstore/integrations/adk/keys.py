"""An ADK session's keys: their checks, the continuation id of the conversation that
holds its events, the message id of each event slot, and the revision marker a session
object carries."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from urllib.parse import quote

from ... import validation as v
from ...models import ContinuationId, Session

__all__ = [
    "Key",
    "adk_names",
    "checked_key",
    "continuation_id",
    "marker",
    "parse_marker",
    "slot",
]

_CONTINUATION_MAX = v.MAX_IDENTIFIER
# Message ids of event slots: uuid5(_SLOTS, "<sessionstore session id>/<n>").
_SLOTS = uuid.UUID("6d1f6b2e-4f0a-5c1e-9a57-0adc5e55a70e")


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
class Key:
    """An ADK session's keys, checked, and its conversation's continuation id."""

    app_name: str
    user_id: str
    session_id: str
    continuation: str

    @property
    def ref(self) -> ContinuationId:
        return ContinuationId(self.continuation)


def checked_key(
    app_name: object, user_id: object, session_id: object, *, generate: bool = False
) -> Key:
    """The keys checked (``InvalidInputError`` naming the bad one); ``generate``: a new
    random session id when none is given."""
    app = v.identifier(app_name, "app_name")
    user = v.identifier(user_id, "user_id")
    # ADK's own services strip the session id (a padded id names the same session).
    given = session_id.strip() if isinstance(session_id, str) else session_id
    if generate and not given:
        given = str(uuid.uuid4())
    sid = v.identifier(given, "session_id")
    return Key(app, user, sid, continuation_id(app, user, sid))


def adk_names(session: Session) -> tuple[str, str] | None:
    """``(app_name, session_id)`` from a sessionstore session the service made, else None."""
    names = session.metadata.get("adk")
    if not isinstance(names, dict):
        return None
    app, sid = names.get("app_name"), names.get("session_id")
    return (app, sid) if isinstance(app, str) and isinstance(sid, str) else None


def marker(session_id: uuid.UUID, seq: int) -> str:
    """``Session._storage_update_marker``: the sessionstore session and the ``seq`` of
    the latest event the ADK session object has seen."""
    return f"{session_id}:{seq}"


def parse_marker(value: str | None) -> tuple[uuid.UUID, int] | None:
    """What :func:`marker` wrote; ``None`` for no marker or another service's."""
    if not value:
        return None
    sid, _, seq = value.rpartition(":")
    try:
        return uuid.UUID(sid), int(seq)
    except ValueError:  # a marker another service wrote
        return None


def slot(session_id: uuid.UUID, seq: int) -> uuid.UUID:
    """The message id of the ``seq``-th event: writers that saw the same revision race
    for the same id, and sessionstore stores one message per id (see append_event)."""
    return uuid.uuid5(_SLOTS, f"{session_id}/{seq}")
