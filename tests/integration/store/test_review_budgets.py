"""Review of token budgets under races: a budgeted context is what is stored, whatever
committed between the turn's snapshot and its locks."""

from __future__ import annotations

import asyncio

import asyncpg

from sessionstore import ContinuationId, SessionStore

from ...helpers import wait_for_lock_waiters


async def test_a_budgeted_context_after_queued_messages_keeps_an_append_raced_in_before_them(
    slow_writer: SessionStore, store: SessionStore, admin_dsn: str
) -> None:
    """The turn writes this process's queued reply before its own message. It takes its
    snapshot, then waits for its session while another client appends a message: that
    message lands before the reply. Within the budget it belongs in the context; the
    statement's rows (the reply, then nothing fitting before it in the old snapshot) look
    like a complete run and must not be taken as the context."""
    session = await slow_writer.sessions.create("alice")
    await slow_writer.add_turn("c", "user", "big", session_id=session.id, tokens=100)
    await slow_writer.enqueue_turn("c", "assistant", "reply", session_id=session.id, tokens=2)
    assert slow_writer.stats().written == 0
    holder, watcher = await asyncpg.connect(admin_dsn), await asyncpg.connect(admin_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session.id)
            task = asyncio.create_task(
                slow_writer.add_turn(
                    "c",
                    "user",
                    "new",
                    session_id=session.id,
                    tokens=1,
                    context=10,
                    context_tokens=10,
                )
            )
            await wait_for_lock_waiters(watcher, 1)
            await store.messages.add(ContinuationId("c"), "user", "raced", tokens=3)
        turn = await asyncio.wait_for(task, 10)
    finally:
        await holder.close()
        await watcher.close()
    stored = await store.messages.history(ContinuationId("c"))
    assert [m.content for m in stored] == ["big", "raced", "reply", "new"]
    assert turn.context is not None
    # within 10: new 1 + reply 2 + raced 3 = 6; big would make 106
    assert [m.content for m in turn.context] == ["raced", "reply", "new"]
