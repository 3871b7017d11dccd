"""A chat endpoint in a web server (Starlette, ASGI) with the store opened in its lifespan.

    pip install -e '.[mcp]' uvicorn   # in a clone of sessionstore; mcp brings Starlette
    SESSIONSTORE_DATABASE_URL=postgresql://... uvicorn examples.web_app:app

POST /conversations/{continuation_id}/messages with {"role", "content"} (and an
``Idempotency-Key`` header holding a UUID, so that a retry after a 503 writes nothing
twice) appends the message and answers with the latest 20 messages (one round trip); GET
on the same path returns the history. The store is closed, write-behind flushed, when
the server stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import sessionstore
from sessionstore import (
    ConflictError,
    ContinuationId,
    InvalidInputError,
    InvalidStateError,
    Message,
    NotFoundError,
    SessionExpiredError,
    SessionStore,
    SessionStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    async with sessionstore.connect() as store:  # SESSIONSTORE_DATABASE_URL and SESSIONSTORE_*
        yield {"store": store}  # each request's request.state.store


def _message(m: Message) -> dict[str, Any]:
    return {"seq": m.seq, "role": m.role.value, "content": m.content}


# sessionstore's errors as HTTP statuses; its message is one sentence with no secret
# and no message content, so it can go to the client as it is.
STATUS: list[tuple[type[SessionStoreError], int]] = [
    (InvalidInputError, 422),
    (NotFoundError, 404),
    (ConflictError | InvalidStateError | SessionExpiredError, 409),  # type: ignore[list-item]
    (StoreUnavailableError | StoreTimeoutError, 503),  # type: ignore[list-item]
]


def _error(exc: SessionStoreError) -> JSONResponse:
    status = next((code for kind, code in STATUS if isinstance(exc, kind)), 500)
    return JSONResponse({"error": str(exc)}, status_code=status)


async def append(request: Request) -> JSONResponse:
    store: SessionStore = request.state.store
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": "the body must be JSON"}, status_code=422)
    if not isinstance(body, dict):
        return JSONResponse({"error": "the body must be a JSON object"}, status_code=422)
    role: Any = body.get("role")  # checked by add_turn, which names what is wrong
    content: Any = body.get("content")
    try:
        turn = await store.add_turn(
            request.path_params["continuation_id"],
            role,
            content,
            session_id=body.get("session_id"),
            # A client that got a 503 resends with the same id: the turn is written once.
            message_id=request.headers.get("Idempotency-Key"),
            context=20,
        )
    except SessionStoreError as exc:
        return _error(exc)
    context = [_message(m) for m in turn.context or []]
    return JSONResponse({"seq": turn.message.seq, "context": context}, status_code=201)


async def history(request: Request) -> JSONResponse:
    store: SessionStore = request.state.store
    cont = ContinuationId(request.path_params["continuation_id"])
    try:
        messages = await store.messages.history(cont, limit=50)
    except SessionStoreError as exc:
        return _error(exc)
    return JSONResponse({"messages": [_message(m) for m in messages]})


app = Starlette(
    routes=[
        Route("/conversations/{continuation_id}/messages", append, methods=["POST"]),
        Route("/conversations/{continuation_id}/messages", history, methods=["GET"]),
    ],
    lifespan=lifespan,
)
