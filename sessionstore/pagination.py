"""Opaque keyset cursors for listings ordered by ``(created_at DESC, id DESC)``."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID

from .errors import InvalidInputError
from .models import Page

__all__ = ["decode_cursor", "encode_cursor", "make_page"]

T = TypeVar("T")


def encode_cursor(created_at: datetime, row_id: UUID) -> str:
    """The cursor that resumes a listing just after the row ``(created_at, row_id)``."""
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime | None, UUID | None]:
    """Parse a cursor from :func:`encode_cursor`; ``None`` means the first page."""
    if cursor is None:
        return None, None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, _, row_id = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
        # Python's and PostgreSQL's ranges differ: only an aware time that stays in
        # Python's range in UTC is a time this listing could have produced.
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at.astimezone(UTC), UUID(row_id)
    except (ValueError, UnicodeDecodeError, TypeError, OverflowError):
        raise InvalidInputError("cursor", "is not a cursor returned by this listing") from None


def make_page(items: Sequence[T], size: int, key: Callable[[T], tuple[datetime, UUID]]) -> Page[T]:
    """A page of ``size`` of ``items``, which were fetched with one extra to detect a next page."""
    page = list(items[:size])
    next_cursor = encode_cursor(*key(page[-1])) if len(items) > size else None
    return Page[T].model_construct(items=page, next_cursor=next_cursor)
