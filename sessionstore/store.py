"""``SessionStore``: owns the pool and the repositories; ``connect()`` makes one."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from uuid import UUID

from pydantic import ValidationError

from . import validation as v
from .cache import Invalidation, SessionCache
from .config import StoreConfig
from .db import ConfigureCallback, Database, UserScopedDatabase
from .errors import InvalidInputError
from .models import MessageRole
from .repositories import ConversationsRepository, MessagesRepository, SessionsRepository
from .turns import Turn, add_turn
from .writer import (
    FailedWrite,
    OnWriteError,
    PendingWrite,
    Writer,
    WriterStats,
    read_spill,
)

__all__ = ["SessionStore", "StoreStats", "UserView", "connect"]

logger = logging.getLogger("sessionstore")


@dataclasses.dataclass(frozen=True, slots=True)
class StoreStats(WriterStats):
    """:class:`WriterStats` plus the session cache.

    ``cache_invalidation`` is ``notify`` (LISTEN/NOTIFY from other processes), ``ttl``
    (behind a transaction pooler or with notifications off: entries live ``cache_ttl``)
    or ``off``; ``cache_listening`` says whether the listener is connected right now.
    """

    cache_entries: int
    cache_hits: int
    cache_misses: int
    cache_invalidation: Invalidation
    cache_listening: bool


class _Repositories:
    """The repositories and ``add_turn`` over one database handle."""

    def __init__(
        self, db: Database, writer: Writer | None = None, cache: SessionCache | None = None
    ) -> None:
        self._db = db
        self._cache = cache
        self.sessions = SessionsRepository(db, db.config, cache)
        self.conversations = ConversationsRepository(db)
        self.messages = MessagesRepository(db, writer)

    async def add_turn(
        self,
        continuation_id: str,
        role: MessageRole | str,
        content: str,
        *,
        session_id: UUID | str | None = None,
        metadata: dict[str, Any] | None = None,
        tokens: int | None = None,
    ) -> Turn:
        """Get-or-create the conversation, append the message and bump the session's
        counters, in one round trip and one transaction. See :func:`sessionstore.turns.add_turn`.
        """
        turn = await add_turn(
            self._db,
            continuation_id,
            role,
            content,
            session_id=session_id,
            metadata=metadata,
            tokens=tokens,
            slide=self.sessions.sliding_interval,
        )
        if self._cache is not None and turn.session is not None:
            self._cache.put(turn.session)
        return turn


class UserView(_Repositories):
    """The store's repositories run under row-level security as one Supabase user.

    Every operation is its own transaction that sets ``request.jwt.claims`` and the
    ``authenticated`` role locally, so the database's policies decide what is visible:
    other users' rows read as absent (``NotFoundError``, empty pages) and writes the
    policies refuse raise ``PermissionDeniedError``.
    """

    def __init__(self, db: UserScopedDatabase, user_id: str) -> None:
        super().__init__(db)
        self.user_id = user_id


class SessionStore(_Repositories):
    """Session state in PostgreSQL. Open it with ``async with`` or ``await``; close it once.

    ``sessions``, ``conversations`` and ``messages`` are the repositories; every method is
    safe to call from many tasks at once. This is the service path (the connecting role's
    own rights); :meth:`as_user` gives the same API under row-level security.
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        configure: ConfigureCallback | None = None,
        on_write_error: OnWriteError | None = None,
    ) -> None:
        db = Database(config, configure=configure)
        invalidation: Invalidation = (
            "notify" if config.notifications and db.pooler != "transaction" else "ttl"
        )
        self._session_cache = SessionCache(
            size=config.cache_size, ttl=config.cache_ttl, invalidation=invalidation
        )
        self._writer = Writer(
            db,
            batch_size=config.batch_size,
            max_delay=config.max_delay,
            max_pending=config.max_pending,
            write_deadline=config.write_deadline,
            spill_path=config.spill_path,
            on_write_error=on_write_error,
            on_sessions_changed=self._forget_sessions,
        )
        super().__init__(db, self._writer, self._session_cache)
        self.config = config

    @property
    def pooler(self) -> str:
        """The pooler mode in force: ``none``, ``session`` or ``transaction``."""
        return self._db.pooler

    def _forget_sessions(self, session_ids: set[UUID]) -> None:
        for session_id in session_ids:
            self._session_cache.discard(session_id)

    async def open(self) -> Self:
        """Open the pool (and the cache's listener connection, where one is used). Idempotent."""
        await self._db.open()
        assert self.config.dsn is not None
        self._session_cache.start_listening(self._db.connect_kwargs(), self.config.dsn)
        return self

    async def close(self) -> None:
        """Stop accepting write-behind messages, drain them, then close the pool. Idempotent.

        If the database stays unreachable for ``write_deadline`` while draining, the
        unwritten messages are spilled to ``spill_path`` (when set) and
        :class:`~sessionstore.writer.WriteBehindError` says how many and where; the pool
        is closed either way.
        """
        try:
            await self._writer.close()
        finally:
            await self._session_cache.stop_listening()
            await self._db.close()

    async def flush(self) -> None:
        """Return when every message enqueued before this call is durable (or set aside).

        :class:`~sessionstore.writer.WriteBehindError` if the database has been
        unreachable for ``write_deadline``; the messages stay queued and keep being retried.
        """
        await self._writer.flush()

    def stats(self) -> StoreStats:
        """The write-behind queue (queued, in flight, written, retried, set aside, oldest
        age) and the session cache (entries, hits, misses, how it is invalidated)."""
        cache = self._session_cache
        return StoreStats(
            **dataclasses.asdict(self._writer.stats()),
            cache_entries=len(cache),
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            cache_invalidation=cache.invalidation,
            cache_listening=cache.usable and cache.invalidation == "notify",
        )

    def failed_writes(self) -> list[FailedWrite]:
        """The most recent write-behind messages that could never be written, with reasons."""
        return self._writer.set_aside()

    async def enqueue_turn(
        self,
        continuation_id: str,
        role: MessageRole | str,
        content: str,
        *,
        session_id: UUID | str | None = None,
        metadata: dict[str, Any] | None = None,
        tokens: int | None = None,
    ) -> UUID:
        """The write-behind form of :meth:`add_turn`: accept now, write in a later batch.

        Returns the message's id. A turn whose session turns out missing, expired or not
        active at write time is set aside (nothing of it is written).
        """
        item = PendingWrite.accept(
            "turn",
            role,
            content,
            metadata,
            tokens,
            continuation_id=v.identifier(continuation_id, "continuation_id"),
            session_id=None if session_id is None else v.uuid(session_id, "session_id"),
        )
        await self._writer.put(item)
        return item.id

    async def replay(self, path: Path | str) -> int:
        """Write the messages a failed ``close()`` spilled to ``path``; return how many.

        Idempotent: ids are kept, so messages already stored are skipped.
        """
        items = read_spill(Path(path))
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
        extra = dict(claims or {})
        for key, fixed in (("sub", uid), ("role", "authenticated")):
            if extra.setdefault(key, fixed) != fixed:
                raise InvalidInputError(
                    "claims", f"{key!r} is set by as_user and must be {fixed!r}"
                )
        claims_json = v.metadata_json(extra, "claims")
        assert claims_json is not None
        return UserView(UserScopedDatabase(self._db, claims_json), uid)


def connect(
    dsn: str | None = None,
    *,
    config: StoreConfig | None = None,
    configure: ConfigureCallback | None = None,
    on_write_error: OnWriteError | None = None,
    **overrides: Any,
) -> SessionStore:
    """A :class:`SessionStore` for ``dsn``; ``await`` it or use it with ``async with``.

    Settings come from ``config`` (default: a :class:`StoreConfig` read from the
    environment), then ``dsn`` and keyword ``overrides`` of its fields.
    ``configure`` is awaited with every new connection after sessionstore's own setup;
    ``on_write_error`` is called with each write-behind message that can never be written.
    ``InvalidInputError`` names a bad or unknown setting.
    """
    base = config if config is not None else StoreConfig()
    if dsn is not None:
        overrides["dsn"] = dsn
    try:
        merged = (
            StoreConfig.model_validate({**base.model_dump(), **overrides}) if overrides else base
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        raise InvalidInputError(field, first["msg"]) from None
    return SessionStore(merged, configure=configure, on_write_error=on_write_error)
