"""The chat loop through each agent framework's session interface: the framework's own
PostgreSQL store against sessionstore's adapter for it, doing the same work.

Per turn a client appends the user's message, reads what the framework would send the
model (the latest 20 items or events; LangChain's interface reads the whole history, in
both stores), and appends the reply. Registered in ``workload.IMPLS``; run one with

    python bench/workload.py --impl adk-sessionstore --dsn URL --clients 50 --turns 20

Needs the ``bench`` extra (the peers' stores); ``available()`` says which are installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import sessionstore

Turn = Callable[[int, int], Awaitable[None]]
Impl = Callable[[str, int, list[tuple[UUID, str]]], Awaitable[tuple[Turn, Any]]]

APP = "bench"


def _async_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


# --- OpenAI Agents SDK -----------------------------------------------------------------


def _agents_items(t: int) -> tuple[dict[str, Any], dict[str, Any]]:
    question = {"role": "user", "content": f"question {t}"}
    answer = {
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": f"answer {t}", "annotations": []}],
    }
    return question, answer


def _agents_turn(sessions: list[Any]) -> Turn:
    async def turn(c: int, t: int) -> None:
        question, answer = _agents_items(t)
        await sessions[c].add_items([question])
        await sessions[c].get_items(limit=20)
        await sessions[c].add_items([answer])

    return turn


async def agents_builtin(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    """``agents.extensions.memory.SQLAlchemySession`` on postgresql+asyncpg."""
    from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(_async_url(dsn), pool_size=pool, max_overflow=0)
    sessions = [
        SQLAlchemySession(f"bench-{sid}", engine=engine, create_tables=True) for sid, _ in ids
    ]
    await sessions[0].get_items()  # creates the tables once, before the clock starts
    return _agents_turn(sessions), engine.dispose


async def agents_sessionstore(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    """``sessionstore.integrations.openai_agents.SessionStoreSession``, bound to the
    client's session (expiry and per-user RLS available)."""
    from sessionstore.integrations.openai_agents import SessionStoreSession

    store = await sessionstore.connect(dsn, max_size=pool, min_size=pool)
    sessions = [SessionStoreSession(f"agents-{sid}", store, owner=sid) for sid, _ in ids]
    return _agents_turn(sessions), store.close


# --- LangChain -------------------------------------------------------------------------


def _langchain_turn(histories: list[Any]) -> Turn:
    from langchain_core.messages import AIMessage, HumanMessage

    async def turn(c: int, t: int) -> None:
        await histories[c].aadd_messages([HumanMessage(f"question {t}")])
        await histories[c].aget_messages()
        await histories[c].aadd_messages([AIMessage(f"answer {t}")])

    return turn


async def langchain_builtin(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    """langchain-postgres ``PostgresChatMessageHistory`` (psycopg 3, async); one
    connection per client, as its constructor takes one connection (no pool)."""
    import psycopg
    from langchain_postgres import PostgresChatMessageHistory

    table = "lc_chat_history"
    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in ids]
    await PostgresChatMessageHistory.acreate_tables(conns[0], table)
    histories = [
        PostgresChatMessageHistory(table, str(sid), async_connection=conn)
        for (sid, _), conn in zip(ids, conns, strict=True)
    ]

    async def close() -> None:
        for conn in conns:
            await conn.close()

    return _langchain_turn(histories), close


async def langchain_sessionstore(
    dsn: str, pool: int, ids: list[tuple[UUID, str]]
) -> tuple[Turn, Any]:
    """``sessionstore.integrations.langchain.SessionStoreChatMessageHistory``."""
    from sessionstore.integrations.langchain import SessionStoreChatMessageHistory

    store = await sessionstore.connect(dsn, max_size=pool, min_size=pool)
    histories = [
        SessionStoreChatMessageHistory(store, f"lc-{sid}", session_id=sid) for sid, _ in ids
    ]
    return _langchain_turn(histories), store.close


# --- Google ADK ------------------------------------------------------------------------


async def _adk_turn(service: Any, ids: list[tuple[UUID, str]]) -> Turn:
    from google.adk.events import Event
    from google.adk.sessions.base_session_service import GetSessionConfig
    from google.genai import types

    sessions = [
        await service.create_session(app_name=APP, user_id=f"user-{sid}", session_id=f"s-{sid}")
        for sid, _ in ids
    ]
    recent = GetSessionConfig(num_recent_events=20)

    def event(author: str, role: str, text: str) -> Any:
        return Event(
            author=author,
            invocation_id=f"inv-{text}",
            content=types.Content(role=role, parts=[types.Part(text=text)]),
        )

    async def turn(c: int, t: int) -> None:
        session = sessions[c]
        await service.append_event(session, event("user", "user", f"question {t}"))
        fresh = await service.get_session(
            app_name=APP, user_id=session.user_id, session_id=session.id, config=recent
        )
        await service.append_event(fresh, event("assistant", "model", f"answer {t}"))
        sessions[c] = fresh

    return turn


async def adk_builtin(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    """``google.adk.sessions.DatabaseSessionService`` on postgresql+asyncpg."""
    import asyncpg
    from google.adk.sessions import DatabaseSessionService

    # ADK's tables include one named `sessions`: they live in a schema of their own.
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE SCHEMA IF NOT EXISTS adk")
    await conn.close()
    service = DatabaseSessionService(
        _async_url(dsn),
        pool_size=pool,
        max_overflow=0,
        connect_args={"server_settings": {"search_path": "adk"}},
    )
    return await _adk_turn(service, ids), service.close


async def adk_sessionstore(dsn: str, pool: int, ids: list[tuple[UUID, str]]) -> tuple[Turn, Any]:
    """``sessionstore.integrations.adk.SessionStoreSessionService``."""
    from sessionstore.integrations.adk import SessionStoreSessionService

    store = await sessionstore.connect(dsn, max_size=pool, min_size=pool)
    return await _adk_turn(SessionStoreSessionService(store), ids), store.close


#: Each framework: its built-in store, then sessionstore's adapter, and what each needs.
FRAMEWORKS: dict[str, tuple[tuple[str, Impl, str], tuple[str, Impl, str]]] = {
    "OpenAI Agents": (
        ("agents-builtin", agents_builtin, "agents"),
        ("agents-sessionstore", agents_sessionstore, "agents"),
    ),
    "LangChain": (
        ("langchain-builtin", langchain_builtin, "langchain_postgres"),
        ("langchain-sessionstore", langchain_sessionstore, "langchain_core"),
    ),
    "Google ADK": (
        ("adk-builtin", adk_builtin, "google.adk"),
        ("adk-sessionstore", adk_sessionstore, "google.adk"),
    ),
}
IMPLS: dict[str, Impl] = {name: impl for pair in FRAMEWORKS.values() for name, impl, _ in pair}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def available() -> tuple[list[str], list[str]]:
    """The framework impls whose packages are installed, and a note per framework skipped."""
    names, skipped = [], []
    for framework, pair in FRAMEWORKS.items():
        missing = sorted({module for _, _, module in pair if not _installed(module)})
        if missing:
            skipped.append(
                f"{framework}: skipped ({', '.join(missing)} not installed; "
                "`pip install -e .[bench]`)"
            )
        else:
            names.extend(name for name, _, _ in pair)
    return names, skipped
