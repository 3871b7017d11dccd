"""Deleting in bounded batches, and deleting sessions so that no concurrent turn is
missed.

Each batch is its own short statement and transaction, so no lock is held for long and
writers keep going between batches.

Deleting sessions locks them first, in a statement of its own, and deletes in the next
statement of the same transaction. Every writer that binds a conversation to a session
locks that session's row first (``FOR UPDATE`` in a turn, ``FOR KEY SHARE`` from the
foreign key of any other insert), so once the lock is ours, the next statement's
snapshot (READ COMMITTED takes one per statement) holds everything written to those
sessions, and a writer that waited for the lock finds the sessions gone and writes
nothing. A single statement would see only what was committed before it *started*: the
conversations a turn created while the delete waited for the lock were left behind,
detached by the foreign key's ``ON DELETE SET NULL``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from .db import Connection, Database

__all__ = ["delete_in_batches", "in_batches", "lock_then_delete"]


async def in_batches(
    db: Database,
    batch: Callable[[Connection], Awaitable[int]],
    *,
    size: int,
    on_progress: Callable[[int], None] | None = None,
    transaction: bool = True,
) -> int:
    """Run ``batch`` (which deletes at most ``size`` rows and says how many), each time
    in its own transaction (``transaction=False``: a batch of one statement, which is
    one anyway), until one deletes fewer than ``size``; return the total.

    ``on_progress`` is called with the running total after each batch that deleted rows.
    """
    total = 0
    while True:
        deleted = await db.run(batch, transaction=transaction)
        total += deleted
        if deleted and on_progress is not None:
            on_progress(total)
        if deleted < size:
            return total


async def delete_in_batches(
    db: Database,
    query: str,
    *args: Any,
    size: int,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """:func:`in_batches` of the DELETE ``query``, whose last parameter is the batch
    size."""

    async def batch(conn: Connection) -> int:
        status: str = await conn.execute(query, *args, size)
        return int(status.rsplit(" ", 1)[-1])

    return await in_batches(db, batch, size=size, on_progress=on_progress, transaction=False)


async def lock_then_delete(
    conn: Connection, lock: str, lock_args: tuple[Any, ...], delete: str, *args: Any
) -> tuple[list[UUID], Any]:
    """Run ``lock`` (a ``SELECT id FROM sessions ... FOR UPDATE``), then — if it locked
    any session — ``delete`` with their ids as ``$1`` (``uuid[]``) and ``args`` after.

    Must run inside a transaction (the lock is what makes the delete total; see the
    module's docstring). Returns the locked ids and ``delete``'s first row (``None``
    when nothing was locked; then ``delete`` is not sent).
    """
    ids: list[UUID] = [row["id"] for row in await conn.fetch(lock, *lock_args)]
    if not ids:
        return ids, None
    return ids, await conn.fetchrow(delete, ids, *args)
