"""``SessionStore``: owns the pool and the repositories; ``connect()`` makes one."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, Unpack
from uuid import UUID

import asyncpg

from . import telemetry
from . import validation as v
from .adopt_encryption import COUNT_CLEAR, encrypt_stored
from .cache import SessionCache
from .config import StoreConfig
from .crypto import KeyProvider, master_key
from .db import Database, Pool
from .errors import EncryptionError, InvalidInputError
from .keyring import KeyRing
from .models import (
    ConfigureCallback,
    FailedWrite,
    Invalidation,
    OnWriteError,
    PendingWrite,
    Role,
    StoreStats,
    TurnOptions,
)
from .repositories.message_batch import write_messages
from .routes import Routes
from .turns import accept_turn, write_turns
from .views import UserView, _Scope
from .writebehind.engine import Writer
from .writebehind.repository import QueuedConversationsRepository, QueuedMessagesRepository
from .writebehind.spill import read_spill

__all__ = ["SessionStore", "UserView", "connect"]  # UserView: its home is views.py

logger = logging.getLogger("sessionstore")
# Connections of the data keys' own pool (opened when first needed).
_KEY_CONNECTIONS = 2


class SessionStore(_Scope):
    """Session state in PostgreSQL. Open it with ``async with`` or ``await``; close it once.

    ``sessions``, ``conversations`` and ``messages`` are the repositories; every method is
    safe to call from many tasks at once. This is the service path (the connecting role's
    own rights); :meth:`as_user` gives the same API under row-level security. ``states``
    is the repository of the framework adapters' state (Google ADK's three scopes).
    """

    _writer: Writer
    messages: QueuedMessagesRepository
    """The messages: durable methods, and the write-behind ones (``enqueue``)."""
    config: StoreConfig
    """The settings the store was opened with."""

    def __init__(
        self,
        config: StoreConfig,
        *,
        configure: ConfigureCallback | None = None,
        on_write_error: OnWriteError | None = None,
        pool: asyncpg.Pool | None = None,
        key_provider: KeyProvider | None = None,
    ) -> None:
        self._pool = Pool(config, configure=configure, pool=pool)
        # The listener opens a connection of its own: it needs a DSN (a given pool may
        # come without one) and a server session that keeps its LISTEN.
        invalidation: Invalidation = (
            "notify"
            if config.notifications and config.effective_pooler != "transaction" and config.dsn
            else "ttl"
        )
        cache = SessionCache(
            size=config.cache_size, ttl=config.cache_ttl, invalidation=invalidation
        )
        super().__init__(Database(self._pool, routes=Routes()), cache)
        if key_provider is not None and config.encryption_key is not None:
            raise InvalidInputError("key_provider", "give encryption_key or key_provider, not both")
        if config.encryption_key is not None:
            key_provider = master_key(config.encryption_key.get_secret_value())
        self._keys_pool: Pool | None = None
        if key_provider is not None:
            key_provider = master_key(key_provider, "key_provider")
            # The keys come over connections of their own: a read that meets a key not
            # yet cached may hold its pooled connection (a transaction, a turn's
            # context), and must not wait for a second one from the same pool. Without
            # a DSN (a given pool alone) they share the given pool.
            keys_db = self._db
            if config.dsn:
                small = config.model_copy(update={"min_size": 0, "max_size": _KEY_CONNECTIONS})
                self._keys_pool = Pool(small, configure=configure)
                keys_db = Database(self._keys_pool)
            self._db.keys = KeyRing(keys_db, key_provider, ttl=config.key_cache_ttl)
        self._session_cache = cache
        self._writer = Writer(
            self._write_batch,
            batch_size=config.batch_size,
            max_delay=config.max_delay,
            max_pending=config.max_pending,
            write_deadline=config.write_deadline,
            spill_path=config.spill_path,
            on_write_error=on_write_error,
            on_written=self._forget_sessions,
        )
        self.messages = QueuedMessagesRepository(self._db, self._writer, cache)
        self.conversations = QueuedConversationsRepository(self._db, self._writer)
        self.config = config

    @property
    def pooler(self) -> str:
        """The pooler mode in force: ``none``, ``session`` or ``transaction``."""
        return self.config.effective_pooler

    @telemetry.traced(operation="write_behind")  # one span per attempt at one batch
    async def _write_batch(self, batch: Sequence[PendingWrite]) -> Mapping[UUID, str]:
        telemetry.set_attributes(
            {"sessionstore.batch.size": len(batch), "sessionstore.batch.kind": batch[0].kind}
        )
        if batch[0].kind == "turn":
            return await write_turns(self._db, batch)
        return await write_messages(self._db, batch)

    def _forget_sessions(self, batch: Sequence[PendingWrite]) -> None:
        for item in batch:
            if item.session_id is not None:
                self._session_cache.discard(item.session_id)

    async def open(self) -> Self:
        """Open the pool (and the cache's listener connection, where one is used). Idempotent."""
        await self._pool.open()
        try:
            if self._keys_pool is not None:
                await self._keys_pool.open()
            self._writer.open()
            self._session_cache.start_listening(self.config)
            telemetry.register(self)
        except BaseException:
            await self.close()  # nothing half-open left behind: pool, writer, listener
            raise
        return self

    async def close(self) -> None:
        """Stop accepting write-behind messages, drain them, then close the pool. Idempotent.

        If the database stays unreachable for ``write_deadline`` while draining, the
        unwritten messages are spilled to ``spill_path`` (when set) and
        :class:`~sessionstore.errors.WriteBehindError` says how many and where; the pool
        is closed either way.
        """
        try:
            await self._writer.close()
        finally:
            telemetry.unregister(self)
            await self._session_cache.stop_listening()
            if self._keys_pool is not None:
                await self._keys_pool.close()
            await self._pool.close()

    @telemetry.traced(kind="internal")
    async def flush(self) -> None:
        """Return when every message enqueued before this call is durable (or set aside).

        :class:`~sessionstore.errors.WriteBehindError` if the database has been
        unreachable for ``write_deadline``; the messages stay queued and keep being retried.
        """
        await self._writer.flush()

    def stats(self) -> StoreStats:
        """The write-behind queue (queued, in flight, written, retried, set aside, oldest
        age), the session cache (entries, hits, misses, how it is invalidated) and the
        pool (connections open, in use, most allowed). Cheap: no I/O."""
        cache = self._session_cache
        pool_size, pool_in_use, pool_max_size = self._pool.usage()
        return StoreStats(
            **dataclasses.asdict(self._writer.stats()),
            cache_entries=len(cache),
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            cache_invalidation=cache.invalidation,
            cache_listening=cache.usable and cache.invalidation == "notify",
            pool_size=pool_size,
            pool_in_use=pool_in_use,
            pool_max_size=pool_max_size,
        )

    def failed_writes(self) -> list[FailedWrite]:
        """The most recent write-behind messages that could never be written, with reasons."""
        return self._writer.set_aside()

    @telemetry.traced(kind="internal")
    async def enqueue_turn(
        self, continuation_id: str, role: Role, content: str, **options: Unpack[TurnOptions]
    ) -> UUID:
        """The write-behind form of :meth:`add_turn`: accept now, write in a later batch.

        The keyword options (:class:`~sessionstore.TurnOptions`): ``session_id``,
        ``metadata``, ``tokens``. Returns the message's id. Input is checked here; a turn
        whose session turns out missing, expired or not active at write time is set aside
        (nothing of it is written). The turn has the same effect on its session as :meth:`add_turn`.

        The chat loop's reply: a later :meth:`add_turn` to the same continuation id writes
        it first, in the same statement, if no batch has yet.
        """
        item = accept_turn(continuation_id, role, content, options)
        await self._writer.put(item)
        return item.id

    @telemetry.traced(kind="internal")
    async def rotate_master_key(
        self,
        new: str | bytes | KeyProvider,
        *,
        batch_size: int = 1000,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Re-wrap every user's data key with the master key ``new`` (32 bytes, base64
        of them, or a :class:`~sessionstore.KeyProvider`), ``batch_size`` keys per
        transaction; return how many were re-wrapped. Messages are not touched.

        From the call on this store wraps new data keys with ``new`` and opens keys
        wrapped by either. Other processes must be able to open both while it runs
        (``MasterKey(new, old)``, or ``previous`` keys in your provider); once every
        process holds ``new``, run it again (it re-wraps what others wrapped meanwhile,
        and only that), then retire the old key. ``EncryptionError`` if this store was
        opened without a key.
        """
        provider = master_key(new, "new")
        size = v.limit(batch_size, "batch_size", maximum=100_000)
        on_progress = v.progress(on_progress)
        if self._db.keys is None:
            raise EncryptionError(
                "this store has no encryption key: open it with the current one to rotate"
            )
        return await self._db.keys.rotate(provider, batch_size=size, on_progress=on_progress)

    @telemetry.traced(kind="internal")
    async def encrypt_stored(
        self, *, batch_size: int = 1000, on_progress: Callable[[int], None] | None = None
    ) -> int:
        """Seal in place the messages stored in clear (written before encryption was on,
        or by a process without a key), ``batch_size`` per transaction, each with its
        user's data key; return how many. Beside live traffic: rows being written to are
        passed over (``SKIP LOCKED``) and left for a later run, which seals only what is
        still in clear. ``on_progress`` gets the running count. ``EncryptionError`` if
        this store was opened without a key. (``sessionstore encrypt`` runs this.)
        """
        return await encrypt_stored(self._db, batch_size=batch_size, on_progress=on_progress)

    @telemetry.traced(kind="internal")
    async def count_unencrypted(self) -> int:
        """How many messages are stored in clear (what :meth:`encrypt_stored` would
        seal now). One scan of ``messages``: on a large store it may outlast
        ``command_timeout`` (``StoreTimeoutError``)."""
        return int(await self._db.fetchval(COUNT_CLEAR, retry=True))

    @telemetry.traced(kind="internal")
    async def replay(self, path: Path | str) -> int:
        """Write the messages a failed ``close()`` spilled to ``path``; return how many.

        Idempotent: ids are kept, so messages already stored are skipped.
        """
        items = read_spill(path)
        for item in items:
            await self._writer.put(item)
        await self._writer.flush()
        return len(items)

    def __await__(self) -> Generator[Any, None, Self]:
        return self.open().__await__()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def as_user(self, user_id: str, *, claims: dict[str, Any] | None = None) -> UserView:
        """The same repositories, run as the Supabase user ``user_id`` under RLS.

        The JWT claims are ``{"sub": user_id, "role": "authenticated"}`` plus ``claims``
        (which may not change ``sub`` or ``role``). Nothing is set on the connection
        beyond each operation's transaction.
        """
        uid = v.identifier(user_id, "user_id")
        extra = v.claims(claims)
        for key, fixed, named in (("sub", uid, "user_id"), ("role", "authenticated", None)):
            if extra.setdefault(key, fixed) != fixed:
                must = "equal user_id" if named else f"be {fixed!r}"
                raise InvalidInputError("claims", f"{key!r} is set by as_user and must {must}")
        claims_json = v.metadata_json(extra, "claims")
        assert claims_json is not None
        return UserView(self._db.as_user(claims_json), uid)


def connect(
    dsn: str | None = None,
    *,
    config: StoreConfig | None = None,
    configure: ConfigureCallback | None = None,
    on_write_error: OnWriteError | None = None,
    pool: asyncpg.Pool | None = None,
    key_provider: KeyProvider | None = None,
    **overrides: Any,
) -> SessionStore:
    """A :class:`SessionStore` for ``dsn``; ``await`` it or use it with ``async with``.

    Settings come from ``config`` (default: a :class:`StoreConfig` read from the
    environment), then ``dsn`` and keyword ``overrides`` of its fields.
    ``configure`` is awaited with every new connection after sessionstore's own setup;
    ``on_write_error`` is called with each write-behind message that can never be written.
    ``InvalidInputError`` names a bad or unknown setting.

    ``pool``: an open asyncpg pool the application already owns, used instead of one of
    sessionstore's; closing the store leaves it open. Its connections need sessionstore's
    json/jsonb codec — create it with ``init=sessionstore.init_connection`` (opening the
    store checks this and raises ``InvalidInputError`` naming ``pool``). The pool's own
    settings then apply: its size, its ``command_timeout`` and, behind a transaction
    pooler, ``statement_cache_size=0`` (say ``pooler="transaction"`` here too); sessionstore's
    ``acquire_timeout`` still bounds each wait for one of its connections. A DSN is then
    optional: with one, the session cache's listener connects with it; without, cache
    entries live ``cache_ttl``; the environment's database URLs are not read then.
    ``configure`` cannot be combined with ``pool``.

    Encryption at rest: ``encryption_key`` (a setting: 32 bytes or base64 of them;
    ``SESSIONSTORE_ENCRYPTION_KEY``) or ``key_provider`` (a
    :class:`~sessionstore.KeyProvider`, e.g. backed by a KMS) seals every message's
    content and metadata written from then on with its user's data key (see
    ``docs/security.md``). Messages stored in clear keep reading.
    """
    if dsn is not None:
        overrides["dsn"] = dsn
    if pool is not None and config is None and "dsn" not in overrides:
        # Beside a given pool only a DSN given here counts: one from the environment may
        # name another database than the pool's, and must not even be checked. A DSN in
        # the settings keeps the environment's URL variables unread; it is then dropped.
        merged = StoreConfig.load(dsn="postgresql://", **overrides)
        merged = merged.model_copy(update={"dsn": None})
    else:
        merged = StoreConfig.load(config, **overrides)
    return SessionStore(
        merged,
        configure=configure,
        on_write_error=on_write_error,
        pool=pool,
        key_provider=key_provider,
    )
