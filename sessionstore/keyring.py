"""The data keys of encryption at rest: one per user, wrapped by the master key, in
``sessionstore_private.keys`` (revision 0012), and the sealing of messages with them.

Which key seals a message: that of the user owning the session the write names, else the
session the conversation is bound to; a conversation bound to no session is no user's,
and its messages are sealed with the key of no user (``user_id`` NULL). The key a value
was sealed with is named in the value itself, so reading never asks who owns what.

Keys are read and created on the service path (the connecting role), even for a store
under ``as_user``: no API role can read ``sessionstore_private.keys``. Unwrapped keys stay in
this process for ``key_cache_ttl`` seconds; ``purge_user`` destroys a user's key and
forgets it at once here, other processes within that time.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from . import jsonb
from .crypto import ChainedProvider, DataKey, KeyProvider
from .errors import EncryptionError
from .models import Connection, ContinuationId, PendingWrite
from .routes import FIND, FIND_BY_ID
from .rows import Patch, Row
from .writebehind.items import batch_arguments

if TYPE_CHECKING:
    from .db import Database

__all__ = [
    "KeyRing",
    "Owner",
    "Sealed",
    "owner_of",
    "seal_message",
    "seal_rows",
    "seal_values",
    "sealed_batch",
]

#: Who a write belongs to: a session (by id), a conversation (by id or continuation id,
#: its session's user then), or nobody.
Owner = tuple[str, UUID | str] | None
#: What a message is stored as: clear content and metadata, or "" and None with sealed
#: copies of both.
Sealed = tuple[str, str | None, bytes | None, bytes | None]

_KEY = "k.key_id, k.wrapped, k.master_key_id"
# The user's key, or (when the user is NULL) the key of no user; each arm keeps its index.
_KEY_OF = f"""LEFT JOIN LATERAL (
    SELECT {_KEY} FROM sessionstore_private.keys k WHERE k.user_id = o.user_id
    UNION ALL
    SELECT {_KEY} FROM sessionstore_private.keys k WHERE k.user_id IS NULL AND o.user_id IS NULL
) k ON true"""
KEY_OF_SESSION = f"""
SELECT o.user_id, k.* FROM (SELECT user_id FROM sessions WHERE id = $1) o {_KEY_OF}
"""
KEY_OF_CONVERSATION = f"""
SELECT o.user_id, k.* FROM (
    SELECT s.user_id FROM conversations c LEFT JOIN sessions s ON s.id = c.session_id
    WHERE c.@conversation_key@ = $1
) o {_KEY_OF}
"""
KEY_OF_USER = f"SELECT $1::text AS user_id, k.* FROM (SELECT $1::text AS user_id) o {_KEY_OF}"
# A user's key is created only while the user has a session, one of which it locks (KEY
# SHARE) until it commits: a purge deleting that session waits for it, and its final
# destroy then sees the key (a key made after the purge passed would outlive it).
CREATE_KEY = """
INSERT INTO sessionstore_private.keys (key_id, user_id, wrapped, master_key_id)
SELECT $1, $2, $3, $4
WHERE $2::text IS NULL
   OR EXISTS (SELECT 1 FROM sessions WHERE user_id = $2 LIMIT 1 FOR KEY SHARE)
ON CONFLICT DO NOTHING
"""
# The same on the distributed layout, where a session cannot be locked by its user (every
# shard would be asked): one of the user's sessions, found first, is locked by its id
# (one shard), and the key inserted after it in the same transaction.
SESSION_OF_USER = "SELECT id FROM sessions WHERE user_id = $1 LIMIT 1"
LOCK_SESSION_OF_USER = "SELECT id FROM sessions WHERE id = $1 AND user_id = $2 FOR KEY SHARE"
INSERT_KEY = """
INSERT INTO sessionstore_private.keys (key_id, user_id, wrapped, master_key_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
"""
KEYS_BY_ID = (
    "SELECT key_id, wrapped, master_key_id FROM sessionstore_private.keys WHERE key_id = ANY($1)"
)
# Rotation: keys still wrapped by another master key, a batch at a time after a cursor.
# No row is locked while a KMS is called: the UPDATE re-wraps a key only if its wrapped
# value is still the one read (a concurrent rotation that got there first wins).
TO_REWRAP = """
SELECT key_id, wrapped, master_key_id FROM sessionstore_private.keys
WHERE master_key_id <> $1 AND key_id > $2 ORDER BY key_id LIMIT $3
"""
REWRAP = """
UPDATE sessionstore_private.keys k SET wrapped = u.new_wrapped, master_key_id = $1
FROM unnest($2::uuid[], $3::bytea[], $4::bytea[]) AS u(key_id, old_wrapped, new_wrapped)
WHERE k.key_id = u.key_id AND k.wrapped = u.old_wrapped
"""
_FIRST_KEY = UUID(int=0)

_MOST = 10_000


class _Expiring(OrderedDict[Any, tuple[Any, float]]):
    """A bounded map whose entries lapse: the oldest go first past :data:`_MOST`."""

    def get_live(self, key: Any) -> Any:
        found = self.get(key)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def put(self, key: Any, value: Any, ttl: float) -> None:
        self[key] = (value, time.monotonic() + ttl)
        self.move_to_end(key)
        while len(self) > _MOST:
            self.popitem(last=False)


class KeyRing:
    """The data keys of one store: finds, creates, caches, seals and opens with them."""

    def __init__(self, db: Database, provider: KeyProvider, *, ttl: float) -> None:
        self._db = db
        self._provider = provider
        self._ttl = ttl
        self._keys = _Expiring()  # key id bytes -> DataKey
        self._owners = _Expiring()  # owner (a session, or none) -> key id
        # Lookups under way, shared by whoever asks meanwhile.
        self._finding: dict[Owner, asyncio.Future[DataKey]] = {}
        self._unwrapping: dict[UUID, asyncio.Future[DataKey]] = {}

    @property
    def provider(self) -> KeyProvider:
        """The master key in use."""
        return self._provider

    def __repr__(self) -> str:
        return f"KeyRing(master_key_id={self._provider.key_id!r})"

    async def _unwrap(self, key_id: UUID, wrapped: bytes, master_key_id: str) -> DataKey:
        """The data key ``key_id``, unwrapped once however many ask at once."""
        pending = self._unwrapping.get(key_id)
        if pending is None:
            pending = asyncio.ensure_future(self._unwrap_once(key_id, wrapped, master_key_id))
            self._unwrapping[key_id] = pending
            pending.add_done_callback(lambda _: self._unwrapping.pop(key_id, None))
        return await asyncio.shield(pending)

    async def _unwrap_once(self, key_id: UUID, wrapped: bytes, master_key_id: str) -> DataKey:
        cached = self._keys.get_live(key_id.bytes)
        if cached is not None:
            assert isinstance(cached, DataKey)
            return cached
        raw = await _provided(
            self._provider.unwrap(bytes(wrapped), master_key_id),
            f"unwrap data key {key_id} (wrapped by master key {master_key_id!r})",
        )
        key = DataKey(key_id, raw)
        self._keys.put(key_id.bytes, key, self._ttl)
        return key

    async def key_for(self, owner: Owner) -> DataKey:
        """The data key new values of ``owner`` are sealed with (created if the user has
        none yet). Concurrent calls for one owner share one lookup (and one call of the
        provider).

        Only a session's key is remembered (a session's user never changes, and its id
        is never reused) and the key of no user (never destroyed): a conversation can be
        bound later, or deleted and its continuation id reused by another user, and a
        user can be purged by another process; those are looked up every time."""
        cacheable = owner is None or owner[0] == "session"
        if cacheable:
            key_id = self._owners.get_live(owner)
            if key_id is not None:
                key = self._keys.get_live(key_id.bytes)
                if key is not None:
                    assert isinstance(key, DataKey)
                    return key
        pending = self._finding.get(owner)
        if pending is None:
            pending = asyncio.ensure_future(self._find(owner, cacheable))
            self._finding[owner] = pending
            pending.add_done_callback(lambda _: self._finding.pop(owner, None))
        return await asyncio.shield(pending)

    async def _find(self, owner: Owner, cacheable: bool) -> DataKey:
        for _ in range(3):
            row = await self._owner_row(owner)
            user = None if row is None else row["user_id"]
            if row is not None and row["key_id"] is not None:
                key = await self._unwrap(row["key_id"], row["wrapped"], row["master_key_id"])
                if cacheable:
                    self._owners.put(owner, key.key_id, self._ttl)
                return key
            raw = DataKey.generate()
            wrapped = await _provided(self._provider.wrap(raw), "wrap a new data key")
            if await self._db.is_keyed():
                await self._db.run(
                    functools.partial(_create_placed_key, user, wrapped, self._provider.key_id),
                    transaction=True,
                )
            else:
                await self._db.execute(CREATE_KEY, uuid4(), user, wrapped, self._provider.key_id)
        raise EncryptionError("could not create a data key: its user's sessions kept going")

    async def _owner_row(self, owner: Owner) -> Row | None:
        if owner is None:
            return await self._db.fetchrow(KEY_OF_USER, None, retry=True)
        kind, ref = owner
        if kind == "session":
            row = await self._db.fetchrow(KEY_OF_SESSION, ref, retry=True)
        elif kind == "user":
            row = await self._db.fetchrow(KEY_OF_USER, ref, retry=True)
        elif await self._db.is_keyed():  # the conversation's session first (one shard)
            find = FIND if isinstance(ref, ContinuationId) else FIND_BY_ID
            place = await self._db.fetchrow(find, ref, retry=True)
            row = (
                None
                if place is None
                else await self._db.fetchrow(KEY_OF_SESSION, place["session_id"], retry=True)
            )
        else:
            column = "continuation_id" if isinstance(ref, ContinuationId) else "id"
            query = KEY_OF_CONVERSATION.replace("@conversation_key@", column)
            row = await self._db.fetchrow(query, ref, retry=True)
        # No such session or conversation: the write will be refused; any key will do.
        return row if row is not None else await self._db.fetchrow(KEY_OF_USER, None, retry=True)

    async def seal(
        self, owner: Owner, message_id: UUID, content: str, metadata: str | None
    ) -> tuple[bytes, bytes | None]:
        """``content`` and ``metadata`` (JSON text; ``None``: ``{}``) sealed for the
        message ``message_id`` of ``owner``."""
        key = await self.key_for(owner)
        return seal_values(key, message_id, content, metadata)

    async def seal_many(
        self, items: Sequence[tuple[Owner, UUID, str, str | None]]
    ) -> tuple[list[bytes], list[bytes | None]]:
        """:meth:`seal` for each item: the sealed contents, then the sealed metadata.
        Each owner's key is looked up once per call (a batch of a thousand messages to
        one conversation makes one lookup, not a thousand)."""
        contents: list[bytes] = []
        metas: list[bytes | None] = []
        found: dict[Owner, DataKey] = {}
        for owner, message_id, content, metadata in items:
            key = found.get(owner)
            if key is None:
                key = found[owner] = await self.key_for(owner)
            c, m = seal_values(key, message_id, content, metadata)
            contents.append(c)
            metas.append(m)
        return contents, metas

    async def _keys_of(self, sealed: Iterable[bytes]) -> dict[bytes, DataKey]:
        """The data keys of ``sealed`` values, by their 16 id bytes (a set of ids per
        read, not a UUID per value: this runs for every message read)."""
        wanted = {s[1:17] for s in sealed}
        found: dict[bytes, DataKey] = {}
        for raw in wanted:
            key = self._keys.get_live(raw)
            if key is not None:
                found[raw] = key
        missing = wanted - found.keys()
        if missing:
            if any(len(raw) != 16 for raw in missing):
                raise EncryptionError("an encrypted value is malformed (unknown format)")
            ids = [UUID(bytes=raw) for raw in missing]
            for row in await self._db.fetch(KEYS_BY_ID, ids, retry=True):
                key = await self._unwrap(row["key_id"], row["wrapped"], row["master_key_id"])
                found[key.key_id.bytes] = key
        gone = missing - found.keys()
        if gone:
            raise EncryptionError(
                f"{len(gone)} data key(s) no longer exist (destroyed by purge_user):"
                " what they sealed cannot be read"
            )
        return found

    async def opener(self, rows: Sequence[Row], prefix: str = "") -> Patch:
        """A :data:`~sessionstore.rows.Patch` that opens the sealed content and metadata
        of the message rows ``rows`` (columns named with ``prefix``), their keys at hand."""
        content, metadata = prefix + "content_sealed", prefix + "metadata_sealed"
        keys = await self._keys_of(
            s for r in rows for s in (r[content], r[metadata]) if s is not None
        )
        find = keys.__getitem__

        def patch(fields: dict[str, Any], hidden: tuple[Any, ...]) -> None:
            # once per message read: kept flat (the keys are all in ``keys`` by now). The
            # metadata is opened by the content's key: sealed by another, it fails.
            sealed_content, sealed_metadata = hidden[0], hidden[1]
            if sealed_content is None:
                return
            content, meta = find(sealed_content[1:17]).open_message(
                sealed_content, sealed_metadata, fields["id"].bytes
            )
            fields["content"] = content.decode("utf-8")
            if meta is not None:
                fields["metadata"] = jsonb.decode(meta.decode("utf-8"))

        return patch

    async def reseal(
        self, copies: Sequence[Row], owner: Owner
    ) -> tuple[list[UUID], list[bytes], list[bytes | None]]:
        """Copies of sealed messages (``fork_id``, ``source_id``, ``content_sealed``,
        ``metadata_sealed``) sealed again for their own ids with ``owner``'s key: the
        ids, the contents and the metadata, for an UPDATE."""
        keys = await self._keys_of(
            s for r in copies for s in (r["content_sealed"], r["metadata_sealed"]) if s
        )
        key = await self.key_for(owner)
        ids, contents, metas = [], [], []
        for r in copies:
            sealed, meta = r["content_sealed"], r["metadata_sealed"]
            text, plain_meta = keys[sealed[1:17]].open_message(sealed, meta, r["source_id"].bytes)
            sealed, meta = key.seal_message(text, plain_meta, r["fork_id"].bytes)
            ids.append(r["fork_id"])
            contents.append(sealed)
            metas.append(meta)
        return ids, contents, metas

    def forget(self, key_ids: set[UUID]) -> None:
        """Drop ``key_ids`` from this process's caches."""
        for key_id in key_ids:
            self._keys.pop(key_id.bytes, None)
        for owner in [o for o, (k, _) in self._owners.items() if k in key_ids]:
            del self._owners[owner]

    async def rotate(
        self,
        new: KeyProvider,
        *,
        batch_size: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Re-wrap every data key with ``new``, ``batch_size`` keys per statement;
        messages are not touched. From the start, new data keys are wrapped with ``new``,
        and keys wrapped by any master key this ring held open. Returns how many keys
        were re-wrapped. No row lock is held while the providers are called."""
        # The new key must open what it wraps before any data key depends on it (a KMS
        # policy may grant Encrypt and not Decrypt).
        probe = DataKey.generate()
        back = await _provided(
            new.unwrap(
                await _provided(new.wrap(probe), "wrap with the new master key"), new.key_id
            ),
            "unwrap with the new master key",
        )
        if back != probe:
            raise EncryptionError("the new master key does not give back what it wraps")
        old_provider = self._provider
        if new.key_id != old_provider.key_id:
            self._provider = ChainedProvider(new, old_provider)
        try:
            return await self._rewrap(new, batch_size, on_progress)
        except BaseException:
            # Half done: keep wrapping new keys with the old master key, open both.
            if new.key_id != old_provider.key_id:
                self._provider = ChainedProvider(old_provider, new)
            raise

    async def _rewrap(
        self, new: KeyProvider, batch_size: int, on_progress: Callable[[int], None] | None
    ) -> int:
        done, cursor = 0, _FIRST_KEY
        while rows := await self._db.fetch(TO_REWRAP, new.key_id, cursor, batch_size, retry=True):
            ids, old, wrapped = [], [], []
            for row in rows:
                key_id, was = row["key_id"], bytes(row["wrapped"])
                raw = await _provided(
                    self._provider.unwrap(was, row["master_key_id"]),
                    f"unwrap data key {key_id} (wrapped by master key {row['master_key_id']!r})",
                )
                ids.append(key_id)
                old.append(was)
                wrapped.append(await _provided(new.wrap(raw), f"wrap data key {key_id}"))
            status = await self._db.execute(REWRAP, new.key_id, ids, old, wrapped)
            done += int(status.split()[-1])
            cursor = rows[-1]["key_id"]
            if on_progress is not None:
                on_progress(done)
        return done


async def _provided(call: Awaitable[bytes], what: str) -> bytes:
    """What a master key provider returns; its failure as one ``EncryptionError`` naming
    ``what``. A KMS client's own error may quote anything (a credential, a key): it is
    neither the error's text nor its cause, nor its context (raised outside the
    ``except`` block, so nothing chains it)."""
    try:
        return await call
    except EncryptionError as exc:  # MasterKey's own: permanent (no such key, or wrong)
        failure, transient = str(exc), exc.transient
    except Exception as exc:
        failure = f"the master key provider could not {what} ({type(exc).__name__})"
        transient = True
    raise EncryptionError(failure, transient=transient)


def owner_of(item: PendingWrite) -> Owner:
    """Who a queued message belongs to: its session, else its conversation."""
    if item.session_id is not None:
        return ("session", item.session_id)
    if item.conversation_id is not None:
        return ("conversation", item.conversation_id)
    assert item.continuation_id is not None
    return ("conversation", ContinuationId(item.continuation_id))


async def seal_message(
    keys: KeyRing | None,
    owner: Owner,
    message_id: UUID | None,
    content: str,
    metadata: str | None,
) -> Sealed:
    """How a message is stored: in clear without ``keys``, else sealed for ``owner`` and
    the message ``message_id`` (which sealing needs before the message is sent)."""
    if keys is None:
        return content, metadata, None, None
    assert message_id is not None, "a sealed message needs its id before it is sent"
    sealed_content, sealed_metadata = await keys.seal(owner, message_id, content, metadata)
    return "", None, sealed_content, sealed_metadata


async def seal_rows(
    keys: KeyRing | None, items: Sequence[tuple[Owner, UUID, str, str | None]]
) -> tuple[list[str], list[str | None], list[bytes | None], list[bytes | None]]:
    """:func:`seal_message` for many messages (owner, id, content, metadata), as four
    columns: the contents, the metadata, the sealed contents, the sealed metadata."""
    if keys is None:
        none: list[bytes | None] = [None] * len(items)
        return [i[2] for i in items], [i[3] for i in items], none, list(none)
    contents, metas = await keys.seal_many(items)
    return [""] * len(items), [None] * len(items), list(contents), metas


async def sealed_batch(
    keys: KeyRing | None, batch: Sequence[PendingWrite], fields: Sequence[str]
) -> list[list[Any]]:
    """:func:`~sessionstore.writebehind.items.batch_arguments` of ``fields`` (which hold
    ``content`` and ``metadata``), then the sealed content and metadata arrays. Sealed,
    the clear fields are sent as "" and NULL: no clear text leaves the process."""
    arrays = batch_arguments(batch, fields)
    texts, metas, sealed, sealed_metas = await seal_rows(
        keys, [(owner_of(i), i.id, i.content, i.metadata) for i in batch]
    )
    arrays[fields.index("content")] = texts
    arrays[fields.index("metadata")] = metas
    return [*arrays, sealed, sealed_metas]


def seal_values(
    key: DataKey, message_id: UUID, content: str, metadata: str | None
) -> tuple[bytes, bytes | None]:
    """The sealed content and metadata (JSON text; ``None`` when empty) of the message
    ``message_id``: the one sealing every write path and ``sessionstore encrypt`` use."""
    # Empty metadata stays unsealed ({} in clear): its sealed length would say as much,
    # and every read is spared a decryption.
    meta = None if metadata is None or metadata == "{}" else metadata.encode("utf-8")
    return key.seal_message(content.encode("utf-8"), meta, message_id.bytes)


async def _create_placed_key(
    user: str | None, wrapped: bytes, master_key_id: str, conn: Connection
) -> None:
    """CREATE_KEY on the distributed layout: a user's key only while one of their
    sessions is locked (KEY SHARE), found first; the no-user key at once."""
    if user is not None:
        session = await conn.fetchval(SESSION_OF_USER, user)
        if session is None or await conn.fetchval(LOCK_SESSION_OF_USER, session, user) is None:
            return  # no session: the write it is for will be refused
    await conn.execute(INSERT_KEY, uuid4(), user, wrapped, master_key_id)
