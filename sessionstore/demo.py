"""A scripted run of the library as an MCP server would use it, with a summary.

Concurrent sessions each hold a few conversations and take turns through ``add_turn``;
in each session's last conversation the assistant's replies go through the write-behind
queue (``enqueue_turn``) and are flushed before the summary. One session is paused, one
completed, one left to expire. Returns the numbers so the
CLI can print them (the library itself never prints).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from datetime import timedelta

from .models import MessageRole, SessionStatus
from .store import SessionStore

__all__ = ["DemoReport", "run_demo"]


@dataclass
class DemoReport:
    """What the demo did and how fast."""

    sessions_by_status: dict[str, int]
    turns: int
    tokens: int
    messages: int
    written_behind: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)

    @property
    def turns_per_second(self) -> float:
        """``add_turn`` calls per second of wall time."""
        return self.turns / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0–100) of ``add_turn`` latency, in milliseconds."""
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else 0.0
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]


async def _client(
    store: SessionStore, n: int, conversations: int, turns: int, latencies: list[float]
) -> None:
    session = await store.sessions.create(f"demo-user-{n % 5}", title=f"demo session {n}")
    for c in range(conversations):
        continuation = f"demo-{session.id}-{c}"
        behind = c == conversations - 1  # this conversation's replies go write-behind
        for t in range(turns):
            for role, text in (
                (MessageRole.USER, f"question {t}"),
                (MessageRole.ASSISTANT, f"answer {t}"),
            ):
                if behind and role is MessageRole.ASSISTANT:
                    await store.enqueue_turn(
                        continuation, role, text, session_id=session.id, tokens=10 + t
                    )
                    continue
                started = time.perf_counter()
                await store.add_turn(continuation, role, text, session_id=session.id, tokens=10 + t)
                latencies.append((time.perf_counter() - started) * 1000)
        conversation = await store.conversations.get_by_continuation_id(continuation)
        await store.messages.history(conversation.id, limit=20)


async def run_demo(
    store: SessionStore, *, clients: int = 20, conversations: int = 3, turns: int = 5
) -> DemoReport:
    """Simulate ``clients`` concurrent sessions and summarise what is in the database."""
    latencies: list[float] = []
    # Created first so that it has expired by the time the summary is read.
    await store.sessions.create("demo-user-0", title="expiring", ttl=timedelta(milliseconds=200))
    started = time.perf_counter()
    await asyncio.gather(
        *(_client(store, n, conversations, turns, latencies) for n in range(clients))
    )
    await store.flush()
    seconds = time.perf_counter() - started

    paused = await store.sessions.create("demo-user-0", title="paused")
    await store.sessions.pause(paused.id)
    done = await store.sessions.create("demo-user-0", title="completed")
    await store.add_turn(f"demo-{done.id}", MessageRole.USER, "bye", session_id=done.id, tokens=1)
    await store.sessions.complete(done.id)

    by_status: dict[str, int] = {s.value: 0 for s in SessionStatus}
    totals = [0, 0]
    for user in range(5):
        cursor: str | None = None
        while True:
            page = await store.sessions.list(user_id=f"demo-user-{user}", limit=100, cursor=cursor)
            for s in page.items:
                by_status[s.status.value] += 1
                totals[0] += s.turn_count
                totals[1] += s.total_tokens
            cursor = page.next_cursor
            if cursor is None:
                break
    behind = store.stats().written
    return DemoReport(
        sessions_by_status=by_status,
        turns=totals[0],
        tokens=totals[1],
        messages=len(latencies) + behind + 1,
        written_behind=behind,
        seconds=seconds,
        latencies_ms=latencies,
    )
