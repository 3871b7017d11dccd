"""A session's lifecycle: which transitions are allowed, and why a write was refused.

Writes to a session are conditional UPDATEs that match no row when the session may not
take them; :func:`raise_session_miss` then asks the database which rule refused it.
"""

from __future__ import annotations

from typing import Literal, NoReturn
from uuid import UUID

from .db import Connection
from .errors import ConflictError, InvalidStateError, NotFoundError, SessionExpiredError
from .models import SessionStatus
from .rules import read_status

__all__ = ["TRANSITIONS", "Action", "raise_session_miss"]

#: Each transition: the target status and the statuses it may start from.
TRANSITIONS: dict[str, tuple[SessionStatus, tuple[SessionStatus, ...]]] = {
    "pause": (SessionStatus.PAUSED, (SessionStatus.ACTIVE,)),
    "resume": (SessionStatus.ACTIVE, (SessionStatus.PAUSED,)),
    "complete": (SessionStatus.COMPLETED, (SessionStatus.ACTIVE, SessionStatus.PAUSED)),
}

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
    "update", "record a turn on", "pause", "resume", "complete", "add a turn to", "extend"
]


async def raise_session_miss(
    conn: Connection,
    session_id: UUID,
    action: Action,
    *,
    expected_version: int | None = None,
    target: SessionStatus | None = None,
) -> NoReturn:
    """Raise the error that explains why a conditional write to ``session_id`` matched no row.

    A session found past its expiry is persisted as ``expired`` on the way.
    """
    row = await conn.fetchrow(EXPLAIN_MISS, session_id)
    if row is None:
        raise NotFoundError(f"session {session_id} not found")
    status = SessionStatus(row["status"])
    if status is SessionStatus.EXPIRED:
        raise SessionExpiredError(f"cannot {action} session {session_id}: it has expired")
    if expected_version is not None and row["version"] != expected_version:
        raise ConflictError(
            f"session {session_id} is at version {row['version']}, expected {expected_version}"
        )
    if target is not None:
        raise InvalidStateError(
            f"cannot {action} session {session_id}: {status.value} → {target.value}"
            " is not an allowed transition"
        )
    raise InvalidStateError(f"cannot {action} session {session_id}: it is {status.value}")
