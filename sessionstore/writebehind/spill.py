"""The spill file: write-behind messages a failed ``close()`` could not write, one JSON
object per line, read back by :func:`read_spill` (``store.replay``, ``sessionstore replay``).

Ids are kept, so replaying a file twice, or a file whose messages partly landed, stores
each message once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import validation as v
from ..errors import InvalidInputError
from ..models import PendingWrite

_OPTIONS = frozenset({"metadata", "tokens"})

__all__ = ["append_spill", "read_spill"]


def _line(item: PendingWrite) -> str:
    record: dict[str, Any] = {
        "id": str(item.id),
        "kind": item.kind,
        "conversation_id": None if item.conversation_id is None else str(item.conversation_id),
        "continuation_id": item.continuation_id,
        "session_id": None if item.session_id is None else str(item.session_id),
        "role": item.role,
        "content": item.content,
        "metadata": None if item.metadata is None else json.loads(item.metadata),
        "tokens": item.tokens,
        "enqueued_at": item.enqueued_at.isoformat(),
    }
    return json.dumps(record, ensure_ascii=False)


def _item(record: object) -> PendingWrite:
    """A spilled message, checked like a new one: the file may have been edited."""
    if not isinstance(record, dict):
        raise InvalidInputError("record", "must be a JSON object")
    d: dict[str, Any] = record
    try:
        kind = d["kind"]
        if kind not in ("message", "turn"):
            raise InvalidInputError("kind", "must be 'message' or 'turn'")
        options = {"metadata": d["metadata"], "tokens": d["tokens"]}
        fields = v.message(d["role"], d["content"], options, _OPTIONS)
        conversation_id = d["conversation_id"]
        continuation_id = d["continuation_id"]
        session_id = d["session_id"]
        stamp = d["enqueued_at"]
    except KeyError as exc:
        raise InvalidInputError(str(exc.args[0]), "is missing") from None
    if not isinstance(stamp, str):
        raise InvalidInputError("enqueued_at", "must be an ISO 8601 time")
    try:
        enqueued_at = v.aware_datetime(datetime.fromisoformat(stamp), "enqueued_at")
    except ValueError:
        raise InvalidInputError("enqueued_at", "must be an ISO 8601 time") from None
    assert enqueued_at is not None
    return PendingWrite(
        id=v.uuid(d.get("id"), "id"),
        kind=kind,
        conversation_id=None
        if conversation_id is None
        else v.uuid(conversation_id, "conversation_id"),
        continuation_id=None
        if continuation_id is None
        else v.identifier(continuation_id, "continuation_id"),
        session_id=None if session_id is None else v.uuid(session_id, "session_id"),
        role=fields.role,
        content=fields.content,
        metadata=fields.metadata,
        tokens=fields.tokens,
        enqueued_at=enqueued_at,
    )


def append_spill(path: Path, items: Iterable[PendingWrite]) -> None:
    """Append ``items`` to the spill file at ``path``."""
    with path.open("a", encoding="utf-8") as out:
        for item in items:
            out.write(_line(item) + "\n")


def read_spill(path: object) -> list[PendingWrite]:
    """The messages spilled to ``path``, each checked as a new message would be.

    ``InvalidInputError`` naming ``path`` (with the line and the field, never the
    content) if there is no such file or anything is wrong with it.
    """
    if not isinstance(path, str | Path):
        raise InvalidInputError("path", f"must be a path, got {type(path).__name__}")
    items: list[PendingWrite] = []
    try:
        with Path(path).open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    items.append(_item(json.loads(line)))
                except ValueError as exc:  # InvalidInputError and JSONDecodeError included
                    what = exc.args[0] if isinstance(exc, InvalidInputError) else "not JSON"
                    raise InvalidInputError("path", f"line {number}: {what}") from None
    except FileNotFoundError:
        raise InvalidInputError("path", "names no file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(
            "path", f"cannot be read as a spill file ({type(exc).__name__})"
        ) from None
    return items
