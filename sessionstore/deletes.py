"""Deleting in bounded batches: each batch is its own short statement and transaction, so
no lock is held for long and writers keep going between batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .db import Database

__all__ = ["delete_in_batches"]


async def delete_in_batches(
    db: Database,
    query: str,
    *args: Any,
    size: int,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Run the DELETE ``query`` (whose last parameter is the batch size) until a batch
    deletes fewer than ``size`` rows; return how many it deleted in all.

    ``on_progress`` is called with the running total after each batch that deleted rows.
    """
    total = 0
    while True:
        status = await db.run(lambda conn: conn.execute(query, *args, size))
        deleted = int(status.rsplit(" ", 1)[-1])
        total += deleted
        if deleted and on_progress is not None:
            on_progress(total)
        if deleted < size:
            return total
