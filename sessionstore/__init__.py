"""sessionstore: session, conversation and message state for chat and agent servers,
kept in PostgreSQL over asyncpg."""

from . import _version
from .config import StoreConfig
from .db import init_connection
from .errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    PermissionDeniedError,
    QueueFullError,
    SessionExpiredError,
    SessionStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    WriteBehindError,
)
from .models import (
    AddTurnOptions,
    ContinuationId,
    Conversation,
    ConversationRef,
    Message,
    MessageOptions,
    MessageRole,
    Page,
    Session,
    SessionStatus,
    TurnOptions,
)
from .purge import PurgeCounts
from .store import SessionStore, StoreStats, UserView, connect
from .turns import Turn
from .writes import FailedWrite, WriterStats

__all__ = [
    "AddTurnOptions",
    "AuthenticationError",
    "ConflictError",
    "ContinuationId",
    "Conversation",
    "ConversationRef",
    "FailedWrite",
    "InvalidInputError",
    "InvalidStateError",
    "Message",
    "MessageOptions",
    "MessageRole",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "PurgeCounts",
    "QueueFullError",
    "Session",
    "SessionExpiredError",
    "SessionStatus",
    "SessionStore",
    "SessionStoreError",
    "StoreConfig",
    "StoreStats",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "Turn",
    "TurnOptions",
    "UserView",
    "WriteBehindError",
    "WriterStats",
    "connect",
    "init_connection",
]

# Written once, in pyproject.toml; read from the installed metadata.
__version__ = _version.installed_version()
