"""Write-behind message ids: UUIDv7, in the order they were accepted, within a
millisecond too (the primary key index then grows at its right edge)."""

from __future__ import annotations

import itertools
import time
import uuid

from sessionstore import validation as v
from sessionstore.models import PendingWrite
from sessionstore.writebehind.items import accept


def _accept() -> PendingWrite:
    fields = v.CheckedMessage("user", "hi", None, None)
    return accept("message", fields, conversation_id=uuid.UUID(int=1))


def test_ids_are_version_7_and_strictly_increasing_within_a_millisecond() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [_accept().id for _ in range(20_000)]  # many per millisecond
    after_ms = time.time_ns() // 1_000_000
    assert all(a.int < b.int for a, b in itertools.pairwise(ids))
    assert {i.version for i in ids} == {7}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
    stamps = [i.int >> 80 for i in ids]
    assert len(set(stamps)) < len(ids)  # several ids did share a millisecond
    assert before_ms <= stamps[0]
    assert stamps[-1] <= after_ms + 1
