"""What the write-behind queue takes and reports: accepting a message (a time-ordered id,
the time), why a message was set aside (in words that never quote its content), and the
opening every batch statement shares.

The types themselves (:class:`~sessionstore.models.PendingWrite`,
:class:`~sessionstore.models.FailedWrite`, :class:`~sessionstore.models.WriterStats`)
are in :mod:`sessionstore.models`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from .. import validation as v
from ..models import Kind, PendingWrite

if sys.version_info >= (3, 14):
    from uuid import uuid7
else:
    from uuid_utils.compat import uuid7

__all__ = [
    "MESSAGE_FIELDS",
    "SEALED_FIELDS",
    "accept",
    "batch_arguments",
    "by_ticket",
    "failure_reason",
    "fresh_rows",
    "uuid7",
]

#: The fields of a pending write that make its message, in the order batch statements
#: take them (after ``id`` and how the conversation is named).
MESSAGE_FIELDS = ("role", "content", "metadata", "tokens", "enqueued_at")
#: The sealed columns a batch statement takes after its fields (encryption at rest; see
#: :func:`sessionstore.keyring.sealed_batch`).
SEALED_FIELDS = ("content_sealed", "metadata_sealed")


def accept(
    kind: Kind,
    fields: v.CheckedMessage,
    *,
    conversation_id: UUID | None = None,
    continuation_id: str | None = None,
    session_id: UUID | None = None,
) -> PendingWrite:
    """A new message of checked ``fields`` with a time-ordered id, accepted now."""
    return PendingWrite(
        id=uuid7(),
        kind=kind,
        conversation_id=conversation_id,
        continuation_id=continuation_id,
        session_id=session_id,
        role=fields.role,
        content=fields.content,
        metadata=fields.metadata,
        tokens=fields.tokens,
        enqueued_at=datetime.now(UTC),
    )


# What the server names in an error, besides its message: identifiers, never values.
_SCHEMA_NAMES = (
    ("table", "table_name"),
    ("column", "column_name"),
    ("constraint", "constraint_name"),
)


def failure_reason(error: BaseException, item: PendingWrite) -> str:
    """Why ``item`` could not be written, in words that quote none of its data.

    Built from the error's class, its SQLSTATE, the table, column and constraint the
    server named (on the driver error it was translated from, ``__cause__``) or the
    field an :class:`~sessionstore.errors.InvalidInputError` names, and the sizes of the
    message's fields — never from an error's text, which can quote the values sent (e.g.
    the driver's ``invalid input for query argument $4: ['…']``). Edge cases: an error
    with no SQLSTATE (detected on the client) names its driver cause's class instead;
    with no names at all, the class and sizes are the whole reason.
    """
    cause = error.__cause__
    sqlstate = getattr(error, "sqlstate", None) or getattr(cause, "sqlstate", None)
    facts = [f"SQLSTATE {sqlstate}"] if sqlstate else []
    if not sqlstate and cause is not None:
        facts.append(f"from {type(cause).__name__}")
    names = [
        f"{label} {value}"
        for label, attribute in _SCHEMA_NAMES
        if isinstance(value := getattr(cause, attribute, None), str) and value
    ]
    field = getattr(error, "field", None)
    if not names and isinstance(field, str) and field:
        names.append(f"field {field}")
    if names:
        facts.append(", ".join(names))
    head = type(error).__name__ + (f" ({'; '.join(facts)})" if facts else "")
    sizes = f"content {len(item.content)} characters"
    if item.metadata is not None:
        sizes += f", metadata {len(item.metadata)} characters"
    if item.tokens is not None:
        sizes += f", tokens {item.tokens}"
    return f"{head}; the message had {sizes}"


# The SQL type of each PendingWrite field a batch statement reads.
_SQL_TYPES = {
    "id": "uuid",
    "conversation_id": "uuid",
    "continuation_id": "text",
    "session_id": "uuid",
    "role": "message_role",
    "content": "text",
    "metadata": "jsonb",
    "tokens": "integer",
    "enqueued_at": "timestamptz",
    "content_sealed": "bytea",
    "metadata_sealed": "bytea",
}


def fresh_rows(fields: Sequence[str]) -> str:
    """The opening of a batch statement: CTE ``fresh`` holds the batch's rows (columns
    ``fields`` plus ``ord``, the position in the batch) whose ids are not stored yet.

    Skipping stored ids is what makes a retried batch (after a lost connection or a
    timeout whose statement did commit) write nothing twice. ``fields`` starts with
    ``id``; the batch is passed as :func:`batch_arguments` of the same ``fields``.
    """
    arrays = ", ".join(f"${n}::{_SQL_TYPES[f]}[]" for n, f in enumerate(fields, start=1))
    return f"""
WITH input AS (
    SELECT * FROM unnest({arrays}) WITH ORDINALITY AS u({", ".join(fields)}, ord)
),
stored AS (  -- probed by primary key: an anti-join would scan all messages per batch
    SELECT id FROM messages WHERE id = ANY($1::uuid[])
),
fresh AS (
    SELECT i.* FROM input i WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.id = i.id)
)"""


def batch_arguments(batch: Sequence[PendingWrite], fields: Sequence[str]) -> list[list[Any]]:
    """One array per field, in batch order, for a statement opened by :func:`fresh_rows`."""
    return [[getattr(item, field) for item in batch] for field in fields]


def by_ticket(item: PendingWrite) -> int:
    """Accept order: the sort key of queued messages."""
    return item.ticket
