"""``SessionStore``: owns the pool and the repositories; ``connect()`` makes one."""

from __future__ import annotations

import logging
from collections.abc import Generator
from types import TracebackType
from typing import Any, Self
from uuid import UUID

from pydantic import ValidationError

from .config import StoreConfig
from .db import ConfigureCallback, Database
from .errors import InvalidInputError
from .models import MessageRole
from .repositories import ConversationsRepository, MessagesRepository, SessionsRepository
from .turns import Turn, add_turn

__all__ = ["SessionStore", "connect"]

logger = logging.getLogger("sessionstore")


class SessionStore:
    """Session state in PostgreSQL. Open it with ``async with`` or ``await``; close it once.

    ``sessions``, ``conversations`` and ``messages`` are the repositories; every method is
    safe to call from many tasks at once.
    """

    def __init__(self, config: StoreConfig, *, configure: ConfigureCallback | None = None) -> None:
        self.config = config
        self._db = Database(config, configure=configure)
        self.sessions = SessionsRepository(self._db, config)
        self.conversations = ConversationsRepository(self._db)
        self.messages = MessagesRepository(self._db)

    @property
    def pooler(self) -> str:
        """The pooler mode in force: ``none``, ``session`` or ``transaction``."""
        return self._db.pooler

    async def open(self) -> Self:
        """Open the pool. Idempotent."""
        await self._db.open()
        return self

    async def close(self) -> None:
        """Close the pool. Idempotent."""
        await self._db.close()

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
        return await add_turn(
            self._db,
            continuation_id,
            role,
            content,
            session_id=session_id,
            metadata=metadata,
            tokens=tokens,
        )


def connect(
    dsn: str | None = None,
    *,
    config: StoreConfig | None = None,
    configure: ConfigureCallback | None = None,
    **overrides: Any,
) -> SessionStore:
    """A :class:`SessionStore` for ``dsn``; ``await`` it or use it with ``async with``.

    Settings come from ``config`` (default: a :class:`StoreConfig` read from the
    environment), then ``dsn`` and keyword ``overrides`` of its fields.
    ``configure`` is awaited with every new connection after sessionstore's own setup.
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
    return SessionStore(merged, configure=configure)
