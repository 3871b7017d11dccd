"""The chat-turn workload, implemented several ways (and through each agent framework's
session interface: see frameworks.py). Run one in this process:

    python bench/workload.py --impl sessionstore --dsn URL [--clients 50 --turns 40]

Per turn a client appends the user's message and the assistant's reply (each taking the
next sequence number and bumping the conversation's counters), bumps the session's
counters once, and reads the last 20 messages. Prints one JSON line: throughput,
latency percentiles, client CPU seconds and peak RSS of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import asyncpg
from frameworks import IMPLS as FRAMEWORK_IMPLS  # bench/ is this script's directory

import sessionstore
from sessionstore import ContinuationId

Turn = Callable[[int, int], Awaitable[None]]

# The straightforward step-by-step statements the alternatives run.
GET_CONVERSATION = "SELECT id FROM conversations WHERE continuation_id = $1"
BUMP_CONVERSATION = (
    "UPDATE conversations SET message_count = message_count + 1, last_message_at = now(),"
    " total_tokens = total_tokens + $2 WHERE id = $1 RETURNING message_count"
)
INSERT_MESSAGE = (
    "INSERT INTO messages (conversation_id, seq, role, content, tokens)"
    " VALUES ($1, $2, $3::message_role, $4, $5)"
)
BUMP_SESSION = (
    "UPDATE sessions SET turn_count = turn_count + 1, total_tokens = total_tokens + $2"
    " WHERE id = $1 AND status = 'active'"
)
LAST_20 = (
    "SELECT id, seq, role, content, metadata, tokens, created_at FROM messages"
    " WHERE conversation_id = $1 ORDER BY seq DESC LIMIT 20"
)


async def setup(dsn: str, clients: int) -> list[tuple[UUID, str]]:
    """One session and one conversation per client."""
    async with sessionstore.connect(dsn, cache_size=0) as store:
        out = []
        for c in range(clients):
            s = await store.sessions.create(f"bench-{c}")
            conv = await store.conversations.get_or_create(f"bench-{s.id}", session_id=s.id)
            out.append((s.id, conv.continuation_id))
        return out


async def sessionstore_impl(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    store = await sessionstore.connect(dsn, max_size=pool, min_size=pool)

    async def turn(c: int, t: int) -> None:
        sid, cont = ids[c]
        await store.add_turn(cont, "user", f"question {t}", session_id=sid, tokens=12)
        reply = await store.add_turn(cont, "assistant", f"answer {t}", tokens=30)
        await store.messages.history(reply.conversation.id, limit=20)

    return turn, store.close


async def context_impl(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    """The chat loop as a server runs it: the user's message appended and the context for
    the model read in one round trip (``add_turn(context=20)``), then the reply."""
    store = await sessionstore.connect(dsn, max_size=pool, min_size=pool)

    async def turn(c: int, t: int) -> None:
        sid, cont = ids[c]
        await store.add_turn(cont, "user", f"question {t}", session_id=sid, tokens=12, context=20)
        await store.add_turn(cont, "assistant", f"answer {t}", tokens=30)

    return turn, store.close


async def history_impl(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    """The same chat loop without ``context``: ``add_turn``, ``history``, ``add_turn``."""
    store = await sessionstore.connect(dsn, max_size=pool, min_size=pool)

    async def turn(c: int, t: int) -> None:
        sid, cont = ids[c]
        await store.add_turn(cont, "user", f"question {t}", session_id=sid, tokens=12)
        await store.messages.history(sessionstore.ContinuationId(cont), limit=20)
        await store.add_turn(cont, "assistant", f"answer {t}", tokens=30)

    return turn, store.close


async def writebehind_impl(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    store = await sessionstore.connect(dsn, max_size=pool, min_size=pool)
    convs = [(await store.conversations.get_by_continuation_id(cont)).id for _, cont in ids]

    async def turn(c: int, t: int) -> None:
        sid, cont = ids[c]
        await store.enqueue_turn(cont, "user", f"question {t}", session_id=sid, tokens=12)
        await store.enqueue_turn(cont, "assistant", f"answer {t}", tokens=30)
        await store.messages.history(convs[c], limit=20)

    async def close() -> None:
        await store.flush()
        await store.close()

    return turn, close


async def writebehind_chat_impl(
    dsn: str, pool: int, ids: list[tuple[UUID, str]]
) -> tuple[Turn, Any]:
    """The chat loop on write-behind: the user's message queued, the context read (the
    queued message included: read-your-writes), the reply queued."""
    store = await sessionstore.connect(dsn, max_size=pool, min_size=pool)

    async def turn(c: int, t: int) -> None:
        sid, cont = ids[c]
        await store.enqueue_turn(cont, "user", f"question {t}", session_id=sid, tokens=12)
        await store.messages.history(sessionstore.ContinuationId(cont), limit=20)
        await store.enqueue_turn(cont, "assistant", f"answer {t}", tokens=30)

    async def close() -> None:
        await store.flush()
        await store.close()

    return turn, close


async def chat_loop_impl(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    """The recommended MCP loop on write-behind: ``add_turn(user, context=20)`` before the
    model call (the one blocking round trip; it writes the previous reply, still queued,
    first) and ``enqueue_turn(reply)`` after it. ``close`` checks what was stored: every
    conversation in order (question, answer, question, …) and every context ending with
    the previous answer and the question; it raises if not."""
    store = await sessionstore.connect(dsn, max_size=pool, min_size=pool)
    missed: list[tuple[int, int]] = []
    done: dict[int, int] = {}

    async def turn(c: int, t: int) -> None:
        sid, cont = ids[c]
        asked = await store.add_turn(
            cont, "user", f"question {t}", session_id=sid, tokens=12, context=20
        )
        assert asked.context is not None
        last = [m.content for m in asked.context[-2:]]
        if c in done and last != [f"answer {done[c]}", f"question {t}"]:
            missed.append((c, t))
        await store.enqueue_turn(cont, "assistant", f"answer {t}", session_id=sid, tokens=30)
        done[c] = t

    async def close() -> dict[str, Any]:
        await store.flush()
        out_of_order = 0
        for _, cont in ids:
            stored = await store.messages.history(ContinuationId(cont), limit=1000)
            roles = [m.role.value for m in stored]
            out_of_order += roles != ["user", "assistant"] * (len(roles) // 2)
        await store.close()
        if missed or out_of_order:
            raise AssertionError(
                f"chat loop: {len(missed)} contexts missed the previous answer, "
                f"{out_of_order} conversations stored out of order"
            )
        return {"contexts_missing_reply": len(missed), "conversations_out_of_order": 0}

    return turn, close


async def asyncpg_impl(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    p = await asyncpg.create_pool(dsn, min_size=pool, max_size=pool)

    async def append(conn: Any, conv: UUID, role: str, content: str, tokens: int) -> None:
        async with conn.transaction():
            seq = await conn.fetchval(BUMP_CONVERSATION, conv, tokens)
            await conn.execute(INSERT_MESSAGE, conv, seq, role, content, tokens)

    async def turn(c: int, t: int) -> None:
        sid, cont = ids[c]
        async with p.acquire() as conn:
            conv = await conn.fetchval(GET_CONVERSATION, cont)
            await append(conn, conv, "user", f"question {t}", 12)
            await append(conn, conv, "assistant", f"answer {t}", 30)
            await conn.execute(BUMP_SESSION, sid, 42)
            await conn.fetch(LAST_20, conv)

    return turn, p.close


async def sqlalchemy_impl(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url, pool_size=pool, max_overflow=0)

    def sa(sql: str) -> Any:
        # SQLAlchemy's named parameters for the same statements (":p3::type" does not parse)
        sql = sql.replace("$3::message_role", "CAST($3 AS message_role)")
        for i in range(5, 0, -1):
            sql = sql.replace(f"${i}", f":p{i}")
        return text(sql)

    get_conv, bump_conv, insert = sa(GET_CONVERSATION), sa(BUMP_CONVERSATION), sa(INSERT_MESSAGE)
    bump_session, last_20 = sa(BUMP_SESSION), sa(LAST_20)

    async def turn(c: int, t: int) -> None:
        sid, cont = ids[c]
        async with engine.connect() as conn:
            conv = (await conn.execute(get_conv, {"p1": cont})).scalar_one()
            await conn.commit()
            for role, content, tokens in (
                ("user", f"question {t}", 12),
                ("assistant", f"answer {t}", 30),
            ):
                seq = (await conn.execute(bump_conv, {"p1": conv, "p2": tokens})).scalar_one()
                await conn.execute(
                    insert, {"p1": conv, "p2": seq, "p3": role, "p4": content, "p5": tokens}
                )
                await conn.commit()
            await conn.execute(bump_session, {"p1": sid, "p2": 42})
            await conn.commit()
            (await conn.execute(last_20, {"p1": conv})).all()
            await conn.commit()

    return turn, engine.dispose


async def threadpool_impl(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    """The design sessionstore replaces: a synchronous client behind ThreadPoolExecutor(5),
    one executor call per step (each its own round trips, as the original's client calls)."""
    import threading

    import psycopg

    local = threading.local()

    def conn() -> Any:
        if not hasattr(local, "conn"):
            local.conn = psycopg.connect(dsn, autocommit=True)
        return local.conn

    def ps(sql: str) -> str:
        for i in range(5, 0, -1):
            sql = sql.replace(f"${i}", f"%(p{i})s")
        return sql

    def named(*values: Any) -> dict[str, Any]:
        return {f"p{i}": v for i, v in enumerate(values, 1)}

    get_conv, bump_conv, insert = ps(GET_CONVERSATION), ps(BUMP_CONVERSATION), ps(INSERT_MESSAGE)
    bump_session, last_20 = ps(BUMP_SESSION), ps(LAST_20)

    def get_conversation(cont: str) -> Any:
        return conn().execute(get_conv, named(cont)).fetchone()[0]

    def save_message(conv: Any, role: str, content: str, tokens: int) -> None:
        c = conn()
        with c.transaction():
            seq = c.execute(bump_conv, named(conv, tokens)).fetchone()[0]
            c.execute(insert, named(conv, seq, role, content, tokens))

    def update_session(sid: Any) -> None:
        conn().execute(bump_session, named(sid, 42))

    def history(conv: Any) -> list[Any]:
        return conn().execute(last_20, named(conv)).fetchall()

    executor = ThreadPoolExecutor(max_workers=5)
    loop = asyncio.get_running_loop()

    async def turn(c: int, t: int) -> None:
        sid, cont = ids[c]
        conv = await loop.run_in_executor(executor, get_conversation, cont)
        await loop.run_in_executor(executor, save_message, conv, "user", f"question {t}", 12)
        await loop.run_in_executor(executor, save_message, conv, "assistant", f"answer {t}", 30)
        await loop.run_in_executor(executor, update_session, sid)
        await loop.run_in_executor(executor, history, conv)

    async def close() -> None:
        executor.shutdown(wait=True)

    return turn, close


IMPLS: dict[str, Any] = {
    "sessionstore": sessionstore_impl,
    "sessionstore-writebehind": writebehind_impl,
    "sessionstore-writebehind-chat": writebehind_chat_impl,
    "sessionstore-context": context_impl,
    "sessionstore-history": history_impl,
    "sessionstore-chat-loop": chat_loop_impl,
    "asyncpg": asyncpg_impl,
    "sqlalchemy": sqlalchemy_impl,
    "threadpool": threadpool_impl,
    **FRAMEWORK_IMPLS,  # imported only when one of them runs
}


async def run(
    impl: str,
    dsn: str,
    clients: int,
    turns: int,
    pool: int,
    *,
    setup_dsn: str | None = None,
    proxy_pid: int | None = None,
) -> dict[str, Any]:
    """One implementation's run. ``setup_dsn`` (default ``dsn``) creates the clients'
    sessions; ``proxy_pid`` is a bench/latency.py proxy told (SIGUSR1/SIGUSR2) to count
    what is sent during the measured turns only."""
    ids = await setup(setup_dsn or dsn, clients)
    turn, close = await IMPLS[impl](dsn, pool, ids)
    latencies: list[float] = []

    async def client(c: int) -> None:
        for t in range(turns):
            started = time.perf_counter()
            await turn(c, t)
            latencies.append((time.perf_counter() - started) * 1000)

    # Warm-up: one turn per client at once, so that every pooled connection has opened,
    # prepared its statements and introspected its types before the clock starts.
    await asyncio.gather(*(turn(c, turns) for c in range(clients)))
    if proxy_pid is not None:
        os.kill(proxy_pid, signal.SIGUSR1)
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    checked = await close()  # a workload that checks what it stored reports it here
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if proxy_pid is not None:
        os.kill(proxy_pid, signal.SIGUSR2)
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "impl": impl,
        "turns": len(latencies),
        "turns_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(q[49], 2),
        "p95_ms": round(q[94], 2),
        "p99_ms": round(q[98], 2),
        "client_cpu_s": round(cpu, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **(checked if isinstance(checked, dict) else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=sorted(IMPLS), required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--setup-dsn", help="where the clients' sessions are created")
    parser.add_argument("--proxy-pid", type=int, help="a bench/latency.py proxy to count")
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.impl,
            args.dsn,
            args.clients,
            args.turns,
            args.pool,
            setup_dsn=args.setup_dsn,
            proxy_pid=args.proxy_pid,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
