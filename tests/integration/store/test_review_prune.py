"""Review of ``store.prune``: hostile arguments are refused before anything is deleted."""

from __future__ import annotations

import asyncpg
import pytest

from sessionstore import InvalidInputError, PruneCounts, SessionStore


async def test_an_async_on_progress_is_refused_not_silently_never_awaited(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """``on_progress`` is called, not awaited: a coroutine function passed there would
    report nothing (each call makes a coroutine nobody awaits). It is refused, naming the
    argument, before anything is deleted."""
    for i in range(3):
        await store.add_turn("c", "user", f"m{i}", tokens=1)
    seen: list[PruneCounts] = []

    async def progress(counts: PruneCounts) -> None:
        seen.append(counts)  # pragma: no cover - never awaited

    for view in (store, store.as_user("someone")):
        with pytest.raises(InvalidInputError) as info:
            await view.prune(keep_last=0, on_progress=progress)  # type: ignore[arg-type]
        assert info.value.field == "on_progress"
    assert await conn.fetchval("SELECT count(*) FROM messages") == 3
