"""Repositories: the SQL for each table and the mapping of its rows to models."""

from .conversations import ConversationsRepository
from .messages import MessagesRepository
from .sessions import SessionsRepository
from .states import StatesRepository

__all__ = [
    "ConversationsRepository",
    "MessagesRepository",
    "SessionsRepository",
    "StatesRepository",
]
