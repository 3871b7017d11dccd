"""A session's lifecycle: which transitions are allowed, and why a write was refused.

Writes to a session are conditional UPDATEs that match no row when the session may not
take them; :func:`raise_session_miss` then asks the database which rule refused it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NoReturn
from uuid import UUID

from .db import Connection
from .errors import ConflictError, InvalidStateError, NotFoundError, SessionExpiredError
from .models import Session, SessionStatus
from .rules import accepts_turns, read_status

__all__ = ["TAKES_TURNS", "TRANSITIONS", "Action", "Attempt", "raise_session_miss", "require_live"]

#: Each transition: the target status and the statuses it may start from.
TRANSITIONS: dict[str, tuple[SessionStatus, tuple[SessionStatus, ...]]] = {
    "pause": (SessionStatus.PAUSED, (SessionStatus.ACTIVE,)),
    "resume": (SessionStatus.ACTIVE, (SessionStatus.PAUSED,)),
    "complete": (SessionStatus.COMPLETED, (SessionStatus.ACTIVE, SessionStatus.PAUSED)),
}

#: Whether session ``$1`` takes turns now: the first question when a write matched nothing.
TAKES_TURNS = f"SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND {accepts_turns()})"
# Explains why a conditional write matched nothing; persists 'expired' once it is due.
EXPLAIN_MISS = f"""
WITH cur AS (SELECT id, status, expires_at, version FROM sessions WHERE id = $1),
mark AS (
    UPDATE sessions s SET status = 'expired', version = s.version + 1
    FROM cur
    WHERE s.id = cur.id AND {read_status("cur")} = 'expired' AND cur.status <> 'expired'
    RETURNING s.id
)
SELECT {read_status("cur")} AS status, version FROM cur
"""

Action = Literal[
    "update",
    "record a turn on",
    "pause",
    "resume",
    "complete",
    "add a turn to",
    "extend",
    "fork a conversation into",
]


@dataclass(frozen=True, slots=True)
class Attempt:
    """A conditional write to a session, described for the error that explains a refusal:
    the ``action`` tried and, where they apply, the version and status it expected."""

    session_id: UUID
    action: Action
    expected_version: int | None = None
    target: SessionStatus | None = None


async def raise_session_miss(conn: Connection, attempt: Attempt) -> NoReturn:
    """Raise the error that explains why ``attempt`` matched no row.

    A session found past its expiry is persisted as ``expired`` on the way.
    """
    session_id, action = attempt.session_id, attempt.action
    row = await conn.fetchrow(EXPLAIN_MISS, session_id)
    if row is None:
        raise NotFoundError(f"session {session_id} not found")
    status = SessionStatus(row["status"])
    if status is SessionStatus.EXPIRED:
        raise SessionExpiredError(f"cannot {action} session {session_id}: it has expired")
    expected = attempt.expected_version
    if expected is not None and row["version"] != expected:
        raise ConflictError(
            f"session {session_id} is at version {row['version']}, expected {expected}"
        )
    if attempt.target is not None:
        raise InvalidStateError(
            f"cannot {action} session {session_id}: {status.value} → {attempt.target.value}"
            " is not an allowed transition"
        )
    raise InvalidStateError(f"cannot {action} session {session_id}: it is {status.value}")


def require_live(session: Session, action: str) -> None:
    """Raise what a turn of ``session`` (as read) would meet: ``SessionExpiredError`` past
    its expiry, ``InvalidStateError`` when it is not active. For callers that must not
    write anything else (an empty conversation) for a session that takes no turns."""
    if session.status is SessionStatus.EXPIRED:
        raise SessionExpiredError(f"cannot {action} session {session.id}: it has expired")
    if session.status is not SessionStatus.ACTIVE:
        raise InvalidStateError(
            f"cannot {action} session {session.id}: it is {session.status.value}"
        )
