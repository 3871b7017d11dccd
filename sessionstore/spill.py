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
from uuid import UUID

from .writes import PendingWrite

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


def _optional_uuid(value: str | None) -> UUID | None:
    return None if value is None else UUID(value)


def _item(line: str) -> PendingWrite:
    d = json.loads(line)
    return PendingWrite(
        id=UUID(d["id"]),
        kind=d["kind"],
        conversation_id=_optional_uuid(d["conversation_id"]),
        continuation_id=d["continuation_id"],
        session_id=_optional_uuid(d["session_id"]),
        role=d["role"],
        content=d["content"],
        metadata=None if d["metadata"] is None else json.dumps(d["metadata"]),
        tokens=d["tokens"],
        enqueued_at=datetime.fromisoformat(d["enqueued_at"]),
    )


def append_spill(path: Path, items: Iterable[PendingWrite]) -> None:
    """Append ``items`` to the spill file at ``path``."""
    with path.open("a", encoding="utf-8") as out:
        for item in items:
            out.write(_line(item) + "\n")


def read_spill(path: Path) -> list[PendingWrite]:
    """The messages spilled to ``path``."""
    with path.open(encoding="utf-8") as lines:
        return [_item(line) for line in lines if line.strip()]
