"""Sealing in place the messages stored in clear (written before encryption at rest was
on, or by a process without the key), beside live traffic: ``sessionstore encrypt``.

A batch at a time, each in one short transaction: the next clear messages in id order
are locked (``SKIP LOCKED``: a message a writer holds is passed over, not waited for),
sealed with their user's data key, and written back as sealed rows (``content`` "",
``metadata`` ``{}``). A message stays the same message: same id, same bytes once opened,
same token estimate (a sealed value is exactly ``SEALED_OVERHEAD`` bytes longer).

The data keys are found before each batch's transaction, never inside it: finding one
may create it or call a KMS, on a connection of its own, and that must not happen while
the batch holds its rows (nor need a second pooled connection while holding one).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from . import validation as v
from .crypto import DataKey
from .db import Connection, Database
from .errors import EncryptionError, InvalidStateError
from .keyring import KeyRing, seal_values
from .rows import Row

__all__ = ["COUNT_CLEAR", "MAX_BATCH_SIZE", "encrypt_stored"]

# How many messages are stored in clear (one scan: the progress bar's total).
COUNT_CLEAR = "SELECT count(*) FROM messages WHERE content_sealed IS NULL"

logger = logging.getLogger("sessionstore")

#: The most messages one batch (one transaction) seals.
MAX_BATCH_SIZE = 100_000

# A message's user: that of the session its conversation is bound to; NULL (no session,
# or none any more) is no user's, as for a live write (see sessionstore.keyring).
_OWNER = """
LEFT JOIN conversations c ON c.id = m.conversation_id
LEFT JOIN sessions s ON s.id = c.session_id"""
# Two forms of each query, the first batch's and the next ones' (past the cursor $2):
# no "$2 IS NULL OR", which would keep a generic plan off the primary key's range.
_AFTER = " AND m.id > $2"
# Whose keys the next batch will need, read without locking anything.
_OWNERS_AHEAD = """
SELECT DISTINCT s.user_id FROM (
    SELECT m.conversation_id FROM messages m
    WHERE m.content_sealed IS NULL{after} ORDER BY m.id LIMIT $1
) m {owner}
"""
# The batch: locked, in id order. metadata::text is the jsonb's exact text (what is
# sealed, and what reading decodes again).
_CLEAR_BATCH = """
SELECT m.id, m.content, m.metadata::text AS metadata, s.user_id
FROM messages m {owner}
WHERE m.content_sealed IS NULL{after}
ORDER BY m.id LIMIT $1
FOR UPDATE OF m SKIP LOCKED
"""
OWNERS_FIRST = _OWNERS_AHEAD.format(after="", owner=_OWNER)
OWNERS_NEXT = _OWNERS_AHEAD.format(after=_AFTER, owner=_OWNER)
CLEAR_FIRST = _CLEAR_BATCH.format(after="", owner=_OWNER)
CLEAR_NEXT = _CLEAR_BATCH.format(after=_AFTER, owner=_OWNER)
# The rows are locked by this transaction, so the guard never drops one; it keeps the
# statement harmless if ever run on rows that are not.
SEAL = """
UPDATE messages m
SET content = '', metadata = '{}'::jsonb,
    content_sealed = u.content_sealed, metadata_sealed = u.metadata_sealed
FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS u(id, content_sealed, metadata_sealed)
WHERE m.id = u.id AND m.content_sealed IS NULL
"""

#: A user id, or ``None``: no user's.
_User = str | None


@dataclass(frozen=True)
class _Batch:
    """What one batch's transaction did: how many it sealed, the last id it locked
    (``None``: nothing was left), and the users it found no key at hand for (then it
    sealed nothing, and is run again once their keys are found)."""

    sealed: int
    last: UUID | None
    missing: frozenset[_User] = frozenset()


async def encrypt_stored(
    db: Database,
    *,
    batch_size: int = 1000,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Seal every message stored in clear with its user's data key, ``batch_size``
    messages per transaction; ``on_progress`` gets the running count after each batch
    that sealed any. Returns how many were sealed.

    Runs beside live traffic: a message another transaction holds is passed over (not
    waited for) and left for the next run, which seals only what is still in clear
    (a second run over a sealed store returns 0). Messages written in clear while it
    runs (by a process without the key) may be passed over too. Runs on the service
    path (every user's messages). ``EncryptionError`` if ``db`` has no data keys.
    """
    size = v.limit(batch_size, "batch_size", maximum=MAX_BATCH_SIZE)
    on_progress = v.progress(on_progress)
    keys = db.keys
    if keys is None:
        raise EncryptionError(
            "this store has no encryption key: open the store with encryption_key="
            " (SESSIONSTORE_ENCRYPTION_KEY) or key_provider= to encrypt what it holds"
        )
    if await db.is_keyed():
        raise InvalidStateError(
            "sealing stored messages is not yet available on a distributed (Citus)"
            " database: its batches lock messages across sessions; encrypt before"
            " distributing"
        )
    service = db.service
    cursor: UUID | None = None
    total = 0
    while True:
        ahead = await service.fetch(
            *_with_cursor(OWNERS_FIRST, OWNERS_NEXT, size, cursor), retry=True
        )
        at_hand = await _keys_of(keys, (row["user_id"] for row in ahead))
        while True:
            batch = await service.run(
                _batch_work(at_hand, size, cursor), transaction=True, retry=True
            )
            if not batch.missing:
                break
            # Rows whose user was not read ahead (the batch reached past rows locked
            # since, or a conversation was bound to a session meanwhile): their users'
            # keys, found outside any transaction, and the batch again.
            at_hand |= await _keys_of(keys, batch.missing)
        if batch.last is None:
            break
        cursor = batch.last
        total += batch.sealed
        if batch.sealed and on_progress is not None:
            on_progress(total)
    logger.info("encrypt_stored: sealed %d messages stored in clear", total)
    return total


def _with_cursor(first: str, following: str, size: int, cursor: UUID | None) -> list[Any]:
    """A query and its arguments: ``first`` for the first batch, else ``following``."""
    return [first, size] if cursor is None else [following, size, cursor]


async def _keys_of(keys: KeyRing, users: Iterable[_User]) -> dict[_User, DataKey]:
    """The data key of each of ``users`` (created for a user who has none yet)."""
    found: dict[_User, DataKey] = {}
    for user in set(users):
        found[user] = await keys.key_for(None if user is None else ("user", user))
    return found


def _batch_work(
    at_hand: dict[_User, DataKey], size: int, cursor: UUID | None
) -> Callable[[Connection], Awaitable[_Batch]]:
    """One batch, as work for ``Database.run`` (which may run it again on a lost
    connection: it changes nothing outside its transaction)."""

    async def work(conn: Connection) -> _Batch:
        query, *args = _with_cursor(CLEAR_FIRST, CLEAR_NEXT, size, cursor)
        rows = await conn.fetch(query, *args)
        if not rows:
            return _Batch(sealed=0, last=None)
        missing = frozenset(row["user_id"] for row in rows) - at_hand.keys()
        if missing:
            return _Batch(sealed=0, last=cursor, missing=missing)
        ids, contents, metas = _sealed(at_hand, rows)
        status: str = await conn.execute(SEAL, ids, contents, metas)
        return _Batch(sealed=int(status.rsplit(" ", 1)[-1]), last=rows[-1]["id"])

    return work


def _sealed(
    at_hand: dict[_User, DataKey], rows: Sequence[Row]
) -> tuple[list[UUID], list[bytes], list[bytes | None]]:
    """The ids of ``rows`` and their content and metadata sealed for them: by the
    keyring's own sealing, so that a message sealed here is stored exactly as a live
    write would have stored it (bound to its id; NULL where that leaves metadata
    unsealed)."""
    ids: list[UUID] = []
    contents: list[bytes] = []
    metas: list[bytes | None] = []
    for row in rows:
        message_id: UUID = row["id"]
        content, metadata = seal_values(
            at_hand[row["user_id"]], message_id, row["content"], row["metadata"]
        )
        ids.append(message_id)
        contents.append(content)
        metas.append(metadata)
    return ids, contents, metas
