"""Google ADK's session service on sessionstore (``sessionstore.integrations.adk``):
ADK's real agent loop, the interface's documented behaviour, and the guarantees
(expiry, row-level security, the migration)."""

from __future__ import annotations

import pytest

pytest.importorskip("google.adk")

import asyncio
import json
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
from google.adk.agents import LlmAgent
from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions, EventCompaction
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions.base_session_service import GetSessionConfig
from google.adk.sessions.session import Session as AdkSession
from google.adk.tools.tool_context import ToolContext
from google.genai import types
from pydantic import Field
from typing_extensions import override

import sessionstore
from sessionstore import (
    ContinuationId,
    InvalidInputError,
    PermissionDeniedError,
    SessionExpiredError,
    SessionStore,
)
from sessionstore.db import Connection
from sessionstore.integrations.adk import SessionStoreSessionService, continuation_id
from sessionstore.migrations import downgrade, head_revision, upgrade
from sessionstore.repositories.states import StateDeltas, write_states

from ..conftest import store_overrides
from ..helpers import expire

APP = "travel-desk"
ALICE = "6f1c1a52-0000-4000-8000-00000000a11c"
BOB = "6f1c1a52-0000-4000-8000-000000000b0b"


@pytest.fixture
def service(store: SessionStore) -> SessionStoreSessionService:
    return SessionStoreSessionService(store)


def _text(content: types.Content) -> str:
    return "".join(p.text or "" for p in content.parts or [])


def _event(
    author: str = "user",
    *,
    text: str | None = None,
    state: dict[str, Any] | None = None,
    timestamp: float | None = None,
    **fields: Any,
) -> Event:
    if text is not None:
        role = "user" if author == "user" else "model"
        fields["content"] = types.Content(role=role, parts=[types.Part(text=text)])
    if state is not None:
        fields["actions"] = EventActions(state_delta=state)
    if timestamp is not None:
        fields["timestamp"] = timestamp
    return Event(invocation_id="inv-1", author=author, **fields)


async def _conversation_of(store: SessionStore, user_id: str, session_id: str) -> Any:
    return await store.conversations.get(ContinuationId(continuation_id(APP, user_id, session_id)))


# -- 1. ADK's real agent loop -----------------------------------------------------------


class ScriptedModel(BaseLlm):
    """A model that asks for the ``remember`` tool, then, once the tool has answered,
    says what it noted. Every request's contents are kept."""

    model: str = "scripted"
    requests: list[list[types.Content]] = Field(default_factory=list)

    @override
    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        self.requests.append([c.model_copy(deep=True) for c in llm_request.contents])
        last = llm_request.contents[-1]
        answers = [p.function_response for p in last.parts or [] if p.function_response]
        if answers and answers[0].response is not None:
            topic = answers[0].response["topic"]
            yield LlmResponse(
                content=types.Content(role="model", parts=[types.Part(text=f"Noted: {topic}")]),
                usage_metadata=types.GenerateContentResponseUsageMetadata(
                    prompt_token_count=30, candidates_token_count=4, total_token_count=34
                ),
            )
            return
        call = types.FunctionCall(name="remember", args={"topic": _text(last)})
        yield LlmResponse(
            content=types.Content(role="model", parts=[types.Part(function_call=call)])
        )


def remember(topic: str, tool_context: ToolContext) -> dict[str, Any]:
    """Remember what the conversation is about."""
    count = tool_context.state.get("topics_seen", 0) + 1
    tool_context.state["topics_seen"] = count
    tool_context.state["user:last_topic"] = topic
    tool_context.state["app:topics_total"] = tool_context.state.get("app:topics_total", 0) + 1
    tool_context.state["temp:scratch"] = "only for this invocation"
    return {"topic": topic, "count": count}


async def _run(runner: Runner, user_id: str, session_id: str, text: str) -> list[Event]:
    message = types.Content(role="user", parts=[types.Part(text=text)])
    return [
        event
        async for event in runner.run_async(
            user_id=user_id, session_id=session_id, new_message=message
        )
    ]


async def test_adk_runner_keeps_history_and_state_across_runs(
    store: SessionStore, service: SessionStoreSessionService
) -> None:
    model = ScriptedModel()
    agent = LlmAgent(name="desk", model=model, tools=[remember])
    runner = Runner(app_name=APP, agent=agent, session_service=service)
    sid = "trip 1/α"  # a separator and non-ASCII in the id
    await service.create_session(app_name=APP, user_id=ALICE, session_id=sid)

    first = await _run(runner, ALICE, sid, "Lisbon in May")
    second = await _run(runner, ALICE, sid, "Porto in June")

    # The second run's first model call saw the whole first run, read back from storage.
    history = model.requests[2]
    assert [c.role for c in history] == ["user", "model", "user", "model", "user"]
    assert _text(history[0]) == "Lisbon in May"
    assert history[1].parts is not None
    assert history[1].parts[0].function_call is not None
    assert history[1].parts[0].function_call.args == {"topic": "Lisbon in May"}
    assert history[2].parts is not None
    assert history[2].parts[0].function_response is not None
    assert _text(history[3]) == "Noted: Lisbon in May"
    assert _text(history[4]) == "Porto in June"
    assert second[-1].content is not None
    assert _text(second[-1].content) == "Noted: Porto in June"

    got = await service.get_session(app_name=APP, user_id=ALICE, session_id=sid)
    assert got is not None
    # Every event the runner yielded is stored exactly, with the user's messages between.
    yielded = [e.model_dump() for e in first + second]
    stored = [e.model_dump() for e in got.events if e.author != "user"]
    assert stored == yielded
    assert [e.author for e in got.events] == ["user", "desk", "desk", "desk"] * 2
    # Session state carried over (the tool counted 2), user: and app: state landed in
    # their scopes, temp: nowhere.
    assert got.state == {
        "topics_seen": 2,
        "user:last_topic": "Porto in June",
        "app:topics_total": 2,
    }
    assert all("temp:scratch" not in e.actions.state_delta for e in got.events)
    assert await service.get_user_state(app_name=APP, user_id=ALICE) == {
        "last_topic": "Porto in June"
    }

    # The same, read through sessionstore: one message per event, one turn per event.
    conv = await _conversation_of(store, ALICE, sid)
    messages = await store.messages.history(ContinuationId(conv.continuation_id))
    assert [m.role.value for m in messages] == ["user", "assistant", "assistant", "assistant"] * 2
    assert [json.loads(m.content) for m in messages] == [
        json.loads(e.model_dump_json(exclude_none=True)) for e in got.events
    ]
    assert [m.metadata["event_id"] for m in messages] == [e.id for e in got.events]
    assert {m.metadata["invocation_id"] for m in messages[:4]} == {first[0].invocation_id}
    assert "temp:scratch" not in "".join(m.content for m in messages)
    session = await store.sessions.get(conv.session_id)
    assert session.user_id == ALICE
    assert session.turn_count == 8
    assert session.total_tokens == 68  # the two final answers' usage
    assert session.metadata == {"adk": {"app_name": APP, "session_id": sid}}

    # user: state reaches the user's other sessions, app: state every user's, and
    # neither another app.
    other = await service.create_session(app_name=APP, user_id=ALICE)
    assert other.state == {"user:last_topic": "Porto in June", "app:topics_total": 2}
    bobs = await service.create_session(app_name=APP, user_id=BOB)
    assert bobs.state == {"app:topics_total": 2}
    elsewhere = await service.create_session(app_name="other-app", user_id=ALICE)
    assert elsewhere.state == {}


# -- 2. The interface's documented behaviour -----------------------------------------------


async def test_create_get_list_delete(service: SessionStoreSessionService) -> None:
    created = await service.create_session(
        app_name=APP,
        user_id=ALICE,
        session_id="s1",
        state={"city": "Lisbon", "user:lang": "pt", "app:season": "spring", "temp:x": 1},
    )
    assert created.id == "s1"
    assert created.state == {"city": "Lisbon", "user:lang": "pt", "app:season": "spring"}
    assert created.events == []
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id="s1")
    assert got == created
    # A padded id names the same session (ADK's in-memory and sqlite services strip it).
    assert await service.get_session(app_name=APP, user_id=ALICE, session_id=" s1 ") == created
    generated = await service.create_session(app_name=APP, user_id=ALICE)
    assert str(UUID(generated.id)) == generated.id

    with pytest.raises(AlreadyExistsError):
        await service.create_session(app_name=APP, user_id=ALICE, session_id="s1")
    assert await service.get_session(app_name=APP, user_id=ALICE, session_id="s1") == created

    listed = (await service.list_sessions(app_name=APP, user_id=ALICE)).sessions
    assert [s.id for s in listed] == ["s1", generated.id]  # oldest first
    assert all(s.events == [] for s in listed)
    assert listed[0].state == created.state

    assert await service.get_session(app_name=APP, user_id=ALICE, session_id="nope") is None
    await service.delete_session(app_name=APP, user_id=ALICE, session_id="s1")
    assert await service.get_session(app_name=APP, user_id=ALICE, session_id="s1") is None
    await service.delete_session(app_name=APP, user_id=ALICE, session_id="s1")  # no-op
    assert [s.id for s in (await service.list_sessions(app_name=APP)).sessions] == [generated.id]
    # App and user state outlive the session, as in ADK.
    assert await service.get_user_state(app_name=APP, user_id=ALICE) == {"lang": "pt"}
    # The id is free again.
    again = await service.create_session(app_name=APP, user_id=ALICE, session_id="s1")
    assert again.state == {"user:lang": "pt", "app:season": "spring"}


async def test_a_deleted_session_is_gone_from_sessionstore_too(
    store: SessionStore, service: SessionStoreSessionService, conn: asyncpg.Connection
) -> None:
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="gone")
    await service.append_event(session, _event(text="hello"))
    await service.append_event(session, _event(state={"user:kept": 1, "dropped": 1}))
    conv = await _conversation_of(store, ALICE, "gone")
    assert await conn.fetchval("SELECT count(*) FROM adk_session_states") == 1
    await service.delete_session(app_name=APP, user_id=ALICE, session_id="gone")
    assert (await store.sessions.list(user_id=ALICE)).items == []
    assert await conn.fetchval("SELECT count(*) FROM adk_session_states") == 0
    assert await service.get_user_state(app_name=APP, user_id=ALICE) == {"kept": 1}
    with pytest.raises(sessionstore.NotFoundError):
        await store.conversations.get(conv.id)
    with pytest.raises(SessionNotFoundError):
        await service.append_event(session, _event(text="still there?"))


async def test_get_session_config(service: SessionStoreSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="cfg")
    base = 1_800_000_000.0
    for i in range(6):
        await service.append_event(session, _event(text=f"m{i}", timestamp=base + i))

    async def texts(**config: Any) -> list[str]:
        got = await service.get_session(
            app_name=APP,
            user_id=ALICE,
            session_id="cfg",
            config=GetSessionConfig(**config),
        )
        assert got is not None
        assert got.last_update_time == base + 5  # the last event's, whatever is returned
        return [_text(e.content) for e in got.events if e.content]

    assert await texts() == [f"m{i}" for i in range(6)]
    assert await texts(num_recent_events=2) == ["m4", "m5"]
    assert await texts(num_recent_events=0) == []
    assert await texts(num_recent_events=50) == [f"m{i}" for i in range(6)]
    assert await texts(after_timestamp=base + 3) == ["m3", "m4", "m5"]
    assert await texts(after_timestamp=base + 3.5) == ["m4", "m5"]
    assert await texts(after_timestamp=base + 99) == []
    assert await texts(num_recent_events=2, after_timestamp=base + 1) == ["m4", "m5"]
    assert await texts(num_recent_events=4, after_timestamp=base + 3) == ["m3", "m4", "m5"]
    with pytest.raises(ValueError, match="num_recent_events"):
        GetSessionConfig(num_recent_events=-1)


async def test_events_come_back_in_timestamp_then_id_order(
    service: SessionStoreSessionService,
) -> None:
    """As ADK's database service returns them: by timestamp, ties by event id, whatever
    order they were appended in; num_recent_events cuts that order, and a tie reaching
    back past the first page read is followed to its end."""
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="ord")
    base = 1_800_000_000.0
    tied = [f"t{n:02}" for n in range(30)]
    for event_id in reversed(tied):  # appended in descending id order, all at base + 1
        await service.append_event(session, _event(id=event_id, timestamp=base + 1))
    await service.append_event(session, _event(id="early", timestamp=base))  # appended last

    async def ids(**config: Any) -> list[str]:
        got = await service.get_session(
            app_name=APP,
            user_id=ALICE,
            session_id="ord",
            config=GetSessionConfig(**config) if config else None,
        )
        assert got is not None
        return [e.id for e in got.events]

    assert await ids() == ["early", *tied]
    assert await ids(num_recent_events=2) == tied[-2:]
    assert await ids(num_recent_events=1) == tied[-1:]
    assert await ids(after_timestamp=base + 0.5) == tied
    assert await ids(after_timestamp=base + 0.5, num_recent_events=3) == tied[-3:]


async def test_long_sessions_are_read_in_pages(service: SessionStoreSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="long")
    base = 1_800_000_000.0
    for i in range(1_105):
        await service.append_event(session, _event(text=f"m{i}", timestamp=base + i))
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id="long")
    assert got is not None
    assert [_text(e.content) for e in got.events if e.content] == [f"m{i}" for i in range(1_105)]
    assert got == session
    # after_timestamp reaching past the first (small) page, and num_recent past 1,000
    since = await service.get_session(
        app_name=APP,
        user_id=ALICE,
        session_id="long",
        config=GetSessionConfig(after_timestamp=base + 900),
    )
    assert since is not None
    assert [e.timestamp for e in since.events] == [base + i for i in range(900, 1_105)]
    recent = await service.get_session(
        app_name=APP,
        user_id=ALICE,
        session_id="long",
        config=GetSessionConfig(num_recent_events=1_050),
    )
    assert recent is not None
    assert [e.timestamp for e in recent.events] == [base + i for i in range(55, 1_105)]


async def test_state_scopes_across_sessions_and_apps(service: SessionStoreSessionService) -> None:
    s1 = await service.create_session(app_name=APP, user_id=ALICE, session_id="a")
    await service.append_event(
        s1,
        _event(
            "desk",
            state={"mood": "curious", "user:plan": "gold", "app:open": True, "temp:t": 1},
        ),
    )
    # In memory: every scope, temp: included (for the rest of the invocation).
    assert s1.state == {"mood": "curious", "user:plan": "gold", "app:open": True, "temp:t": 1}
    assert s1.events[-1].actions.state_delta == {
        "mood": "curious",
        "user:plan": "gold",
        "app:open": True,
    }
    s2 = await service.create_session(app_name=APP, user_id=ALICE, session_id="b")
    assert s2.state == {"user:plan": "gold", "app:open": True}
    bob = await service.create_session(app_name=APP, user_id=BOB, session_id="a")
    assert bob.state == {"app:open": True}
    other_app = await service.create_session(app_name="other", user_id=ALICE, session_id="a")
    assert other_app.state == {}
    # A later change of user: state shows in every session of the user, on read.
    await service.append_event(s2, _event("desk", state={"user:plan": "platinum", "k": None}))
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id="a")
    assert got is not None
    assert got.state == {"mood": "curious", "user:plan": "platinum", "app:open": True}
    got2 = await service.get_session(app_name=APP, user_id=ALICE, session_id="b")
    assert got2 is not None
    assert got2.state == {"user:plan": "platinum", "app:open": True, "k": None}
    assert await service.get_user_state(app_name=APP, user_id=BOB) == {}
    everyone = (await service.list_sessions(app_name=APP)).sessions
    assert {(s.user_id, s.id): s.state for s in everyone} == {
        (ALICE, "a"): got.state,
        (ALICE, "b"): got2.state,
        (BOB, "a"): {"app:open": True},
    }


async def test_apps_and_users_are_isolated(service: SessionStoreSessionService) -> None:
    """One session id in two apps, and for two users: four sessions."""
    for app in (APP, "other"):
        for user in (ALICE, BOB):
            session = await service.create_session(
                app_name=app, user_id=user, session_id="same", state={"owner": f"{app}/{user}"}
            )
            await service.append_event(session, _event(text=f"{app}/{user}"))
    for app in (APP, "other"):
        for user in (ALICE, BOB):
            got = await service.get_session(app_name=app, user_id=user, session_id="same")
            assert got is not None
            assert got.state == {"owner": f"{app}/{user}"}
            assert [_text(e.content) for e in got.events if e.content] == [f"{app}/{user}"]
        listed = (await service.list_sessions(app_name=app, user_id=ALICE)).sessions
        assert [(s.user_id, s.state["owner"]) for s in listed] == [(ALICE, f"{app}/{ALICE}")]
    await service.delete_session(app_name="other", user_id=BOB, session_id="same")
    assert await service.get_session(app_name=APP, user_id=BOB, session_id="same") is not None
    assert await service.get_session(app_name="other", user_id=BOB, session_id="same") is None


async def test_another_process_sees_state_at_once_despite_its_session_cache(
    store: SessionStore, dsn: str
) -> None:
    """Two workers; the reader's session cache expires only by TTL (as behind a
    transaction pooler). State is read uncached, so the reader never mixes the newest
    events with older state."""
    writer = SessionStoreSessionService(store)
    overrides = {**store_overrides(), "cache_size": 100, "cache_ttl": 60.0, "notifications": False}
    async with sessionstore.connect(dsn, **overrides) as other:
        reader = SessionStoreSessionService(other)
        session = await writer.create_session(app_name=APP, user_id=ALICE, session_id="w")
        assert await reader.get_session(app_name=APP, user_id=ALICE, session_id="w") == session
        for i in range(3):
            await writer.append_event(session, _event("desk", state={"step": i, "user:u": i}))
            seen = await reader.get_session(app_name=APP, user_id=ALICE, session_id="w")
            assert seen is not None
            assert seen.state == {"step": i, "user:u": i}
            assert len(seen.events) == i + 1
            assert seen == session
        assert other.stats().cache_hits > 0  # the session row itself did come from the cache


async def test_partial_events_are_not_stored(
    store: SessionStore, service: SessionStoreSessionService
) -> None:
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="p")
    chunk = _event("desk", text="Hel", partial=True, state={"k": 1})
    assert await service.append_event(session, chunk) is chunk
    assert session.events == []
    assert session.state == {}
    await service.append_event(session, _event("desk", text="Hello"))
    conv = await _conversation_of(store, ALICE, "p")
    assert conv.message_count == 1
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id="p")
    assert got is not None
    assert [_text(e.content) for e in got.events if e.content] == ["Hello"]
    assert got.state == {}


async def test_events_round_trip_exactly(service: SessionStoreSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="rt")
    call = types.FunctionCall(id="call-1", name="book", args={"city": "Lisbon", "nights": 3})
    events = [
        Event(
            invocation_id="inv-9",
            author="desk",
            content=types.Content(
                role="model",
                parts=[
                    types.Part(text="Let me check\x00 — ünïcödé ✈"),
                    types.Part(function_call=call),
                    types.Part.from_bytes(data=b"\x00\xffbinary", mime_type="image/png"),
                ],
            ),
            long_running_tool_ids={"call-1", "call-0"},
            grounding_metadata=types.GroundingMetadata(web_search_queries=["lisbon"]),
            usage_metadata=types.GenerateContentResponseUsageMetadata(
                prompt_token_count=10, candidates_token_count=5, total_token_count=15
            ),
            custom_metadata={"trace": {"depth": [1, 2, {"x": None}]}},
            branch="desk.helper",
            timestamp=1_800_000_000.123456,
        ),
        Event(
            invocation_id="inv-9",
            author="desk",
            content=types.Content(
                role="user",
                parts=[
                    types.Part(
                        function_response=types.FunctionResponse(
                            id="call-1", name="book", response={"ok": True, "ref": None}
                        )
                    )
                ],
            ),
            actions=EventActions(
                state_delta={"booking": {"ref": "X1", "extras": [None, 1.5]}, "gone": None},
                artifact_delta={"ticket.pdf": 2},
                transfer_to_agent="billing",
                escalate=True,
                skip_summarization=True,
            ),
            error_code="E1",
            error_message="partial failure",
            turn_complete=True,
            interrupted=False,
            # After the first: events read back in timestamp order.
            timestamp=1_800_000_000.5,
        ),
    ]
    originals = [e.model_copy(deep=True) for e in events]
    for event in events:
        await service.append_event(session, event)
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id="rt")
    assert got is not None
    assert [e.model_dump() for e in got.events] == [e.model_dump() for e in originals]
    assert got.events == originals
    assert got == session
    assert got.state == {"booking": {"ref": "X1", "extras": [None, 1.5]}, "gone": None}
    assert got.last_update_time == events[-1].timestamp


async def test_concurrent_appends_on_one_session_lose_nothing(
    store: SessionStore, service: SessionStoreSessionService
) -> None:
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="c")
    events = [_event("desk", text=f"e{i}", state={f"k{i}": i}) for i in range(25)]
    await asyncio.gather(*(service.append_event(session, e) for e in events))
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id="c")
    assert got is not None
    assert sorted(e.id for e in got.events) == sorted(e.id for e in events)
    assert got.state == {f"k{i}": i for i in range(25)}
    assert got == session
    conv = await _conversation_of(store, ALICE, "c")
    messages = await store.messages.history(conv.id)
    assert [m.seq for m in messages] == list(range(1, 26))
    assert (await store.sessions.get(conv.session_id)).turn_count == 25


async def test_an_equal_event_appended_twice_is_stored_once(
    store: SessionStore, service: SessionStoreSessionService
) -> None:
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="twice")
    event = _event("desk", text="once", state={"n": 1})
    await service.append_event(session, event)
    await service.append_event(session, event)
    assert len(session.events) == 1
    assert (await _conversation_of(store, ALICE, "twice")).message_count == 1


@pytest.mark.parametrize("processes", [1, 2], ids=["one service", "two services"])
async def test_a_stale_session_object_is_refused(
    store: SessionStore, service: SessionStoreSessionService, processes: int
) -> None:
    """Two copies of one session race: one append wins, the other raises
    StaleSessionError and writes nothing — in one process (one service) and across
    processes (two services, no shared lock)."""
    services = [service, SessionStoreSessionService(store)][:processes]
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="race")
    for i in range(6):
        latest = await service.get_session(app_name=APP, user_id=ALICE, session_id="race")
        assert latest is not None
        copies = [latest.model_copy(deep=True), latest.model_copy(deep=True)]
        results = await asyncio.gather(
            *(
                services[n % processes].append_event(copy, _event(state={f"k{i}-{n}": n}))
                for n, copy in enumerate(copies)
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], StaleSessionError)
        assert "modified in storage" in str(errors[0])
    final = await service.get_session(app_name=APP, user_id=ALICE, session_id="race")
    assert final is not None
    assert len(final.events) == 6
    for i in range(6):
        assert len([k for k in final.state if k.startswith(f"k{i}-")]) == 1
    # The first object is stale too: it never saw the six events.
    with pytest.raises(StaleSessionError):
        await service.append_event(session, _event(text="late"))
    assert (await _conversation_of(store, ALICE, "race")).message_count == 6


async def test_sessions_not_returned_by_the_service(service: SessionStoreSessionService) -> None:
    """A listed session (no events) or one built by hand carries no revision: the
    database service's rule decides whether it is current."""
    await service.create_session(app_name=APP, user_id=ALICE, session_id="h")
    listed = (await service.list_sessions(app_name=APP, user_id=ALICE)).sessions[0]
    await service.append_event(listed, _event(text="one", timestamp=listed.last_update_time + 1))
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id="h")
    assert got is not None
    by_hand = AdkSession(id="h", app_name=APP, user_id=ALICE, events=list(got.events))
    await service.append_event(by_hand, _event(text="two", timestamp=listed.last_update_time + 2))
    behind = AdkSession(id="h", app_name=APP, user_id=ALICE, events=list(got.events))
    with pytest.raises(StaleSessionError):
        await service.append_event(behind, _event(text="three"))
    missing = AdkSession(id="none", app_name=APP, user_id=ALICE)
    with pytest.raises(SessionNotFoundError):
        await service.append_event(missing, _event(text="four"))
    final = await service.get_session(app_name=APP, user_id=ALICE, session_id="h")
    assert final is not None
    assert [_text(e.content) for e in final.events if e.content] == ["one", "two"]


async def test_bad_input_is_refused_before_anything_is_written(
    store: SessionStore, service: SessionStoreSessionService
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await service.create_session(app_name="", user_id=ALICE)
    assert info.value.field == "app_name"
    with pytest.raises(InvalidInputError) as info:
        await service.create_session(app_name=APP, user_id=ALICE, state={"x": float("nan")})
    assert info.value.field.startswith("state")
    with pytest.raises(InvalidInputError) as info:
        await service.create_session(app_name=APP, user_id=ALICE, state={"user:x": 1e300})
    assert info.value.field == "state[user:]"
    assert (await store.sessions.list(user_id=ALICE)).items == []
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="ok")
    with pytest.raises(InvalidInputError) as info:
        await service.append_event(session, _event(state={"app:x": 1e300}))
    assert info.value.field == "event.actions.state_delta[app:]"
    with pytest.raises(InvalidInputError) as info:
        await service.append_event(session, _event(text="lone \ud800 surrogate"))
    assert info.value.field == "event"
    assert (await _conversation_of(store, ALICE, "ok")).message_count == 0
    with pytest.raises(InvalidInputError) as info:
        SessionStoreSessionService(store, ttl=timedelta(0))
    assert info.value.field == "ttl"
    with pytest.raises(InvalidInputError) as info:
        SessionStoreSessionService(store.as_user(ALICE), as_user=True)
    assert info.value.field == "as_user"


def test_continuation_ids_are_unambiguous() -> None:
    assert continuation_id("a", "b", "c") == "adk/a/b/c"
    # Separators inside a part are escaped, so the parts cannot shift.
    assert continuation_id("a/b", "c", "d") != continuation_id("a", "b/c", "d")
    assert continuation_id("a/b", "c", "d") == "adk/a%2Fb/c/d"
    assert continuation_id("a%2Fb", "c", "d") == "adk/a%252Fb/c/d"
    long = continuation_id("app", "user", "s" * 300)
    assert long.startswith("adk#")
    assert len(long) == 4 + 64
    assert long != continuation_id("app", "user", "s" * 301)


async def test_long_ids_work_end_to_end(service: SessionStoreSessionService) -> None:
    sid = "session-" + "x" * 240
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id=sid)
    await service.append_event(session, _event(text="hi"))
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id=sid)
    assert got == session


# -- 3. Guarantees: expiry, row-level security, the migration --------------------------------


async def test_an_expired_session_refuses_events_and_reads_as_absent(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    service = SessionStoreSessionService(store, ttl=timedelta(hours=1))
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="e")
    await service.append_event(session, _event(text="before"))
    conv = await _conversation_of(store, ALICE, "e")
    stored = await store.sessions.get(conv.session_id)
    assert stored.expires_at is not None
    assert timedelta(minutes=59) < stored.expires_at - stored.created_at <= timedelta(hours=1)

    await expire(conn, conv.session_id)
    with pytest.raises(SessionExpiredError):
        await service.append_event(session, _event(text="after", state={"k": 1}))
    assert (await _conversation_of(store, ALICE, "e")).message_count == 1
    assert await service.get_session(app_name=APP, user_id=ALICE, session_id="e") is None
    assert (await service.list_sessions(app_name=APP, user_id=ALICE)).sessions == []
    # The id of an expired session may be taken again: a new, empty session.
    again = await service.create_session(app_name=APP, user_id=ALICE, session_id="e")
    assert again.events == []
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id="e")
    assert got == again
    with pytest.raises(sessionstore.NotFoundError):
        await store.sessions.get(conv.session_id)


async def _adk_rows(conn: asyncpg.Connection) -> list[Any]:
    return [
        await conn.fetch("SELECT * FROM sessions ORDER BY id"),
        await conn.fetch("SELECT * FROM messages ORDER BY id"),
        await conn.fetch("SELECT * FROM adk_session_states ORDER BY session_id"),
        await conn.fetch("SELECT * FROM adk_app_states ORDER BY app_name"),
        await conn.fetch("SELECT * FROM adk_user_states ORDER BY app_name, user_id"),
    ]


async def test_under_rls_a_user_reaches_only_their_own_sessions_and_state(
    supabase: tuple[SessionStore, asyncpg.Connection],
) -> None:
    store, conn = supabase
    # The service path sets app state; each user then works as themselves.
    await SessionStoreSessionService(store).create_session(
        app_name=APP, user_id=BOB, session_id="seed", state={"app:motd": "welcome"}
    )
    per_user = SessionStoreSessionService(store, as_user=True)  # the ADK user is the RLS user
    alice_session = await per_user.create_session(
        app_name=APP, user_id=ALICE, session_id="s1", state={"user:lang": "pt", "city": "Porto"}
    )
    assert alice_session.state == {"user:lang": "pt", "city": "Porto", "app:motd": "welcome"}
    await per_user.append_event(alice_session, _event(text="secret plans", state={"k": 1}))
    await per_user.create_session(
        app_name=APP, user_id=BOB, session_id="s1", state={"user:lang": "en"}
    )

    bob = SessionStoreSessionService(store.as_user(BOB))  # pinned to Bob
    before = await _adk_rows(conn)
    assert await bob.get_session(app_name=APP, user_id=ALICE, session_id="s1") is None
    assert (await bob.list_sessions(app_name=APP, user_id=ALICE)).sessions == []
    assert {(s.user_id, s.id) for s in (await bob.list_sessions(app_name=APP)).sessions} == {
        (BOB, "seed"),
        (BOB, "s1"),
    }
    assert await bob.get_user_state(app_name=APP, user_id=ALICE) == {}
    assert await bob.get_user_state(app_name=APP, user_id=BOB) == {"lang": "en"}
    await bob.delete_session(app_name=APP, user_id=ALICE, session_id="s1")
    with pytest.raises(SessionNotFoundError):
        await bob.append_event(alice_session, _event(text="injected"))
    with pytest.raises(PermissionDeniedError):
        await bob.create_session(app_name=APP, user_id=ALICE, session_id="s2")
    assert await _adk_rows(conn) == before

    # Alice reads app state but may not change it: refused before anything is written.
    got = await per_user.get_session(app_name=APP, user_id=ALICE, session_id="s1")
    assert got is not None
    assert got.state == {"user:lang": "pt", "city": "Porto", "k": 1, "app:motd": "welcome"}
    with pytest.raises(PermissionDeniedError):
        await per_user.append_event(got, _event(state={"app:motd": "hacked", "k": 2}))
    assert await _adk_rows(conn) == before
    with pytest.raises(InvalidInputError) as info:
        await per_user.list_sessions(app_name=APP)
    assert info.value.field == "user_id"


async def test_the_adk_state_tables_lock_out_other_users_and_anon(
    supabase: tuple[SessionStore, asyncpg.Connection],
) -> None:
    store, conn = supabase
    service = SessionStoreSessionService(store)
    for user in (ALICE, BOB):
        await service.create_session(
            app_name=APP, user_id=user, state={"user:name": user, "app:v": 1, "mine": user}
        )
    tables = ("adk_session_states", "adk_app_states", "adk_user_states")
    queries = [f"SELECT count(*) FROM {table}" for table in tables]
    for role, claims, seen in [
        ("anon", None, (0, 0, 0)),
        ("anon", '{"role": "anon"}', (0, 0, 0)),
        ("authenticated", f'{{"sub": "{ALICE}", "role": "anon"}}', (0, 0, 0)),
        ("authenticated", f'{{"sub": "{ALICE}", "role": "authenticated"}}', (1, 1, 1)),
        ("authenticated", '{"role": "service_role"}', (2, 1, 2)),
    ]:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            if claims:
                await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", claims)
            assert tuple([await conn.fetchval(q) for q in queries]) == seen, (role, claims)
            if role == "authenticated" and claims and '"authenticated"' in claims:
                who = await conn.fetchval("SELECT user_id FROM adk_user_states")
                assert who == ALICE
                assert await conn.fetchval("SELECT state FROM adk_session_states") == (
                    f'{{"mine": "{ALICE}"}}'
                )
                for table in tables:
                    plan = "\n".join(
                        r[0] for r in await conn.fetch(f"EXPLAIN SELECT * FROM {table}")
                    )
                    assert "InitPlan" in plan, plan  # the subject is read once per statement
                # App state is read-only to users: no row to change, none to add.
                assert await conn.execute("UPDATE adk_app_states SET state = '{}'") == "UPDATE 0"
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with conn.transaction():
                        await conn.execute("INSERT INTO adk_app_states (app_name) VALUES ('x')")


async def test_the_migration_goes_down_and_up(
    store: SessionStore, service: SessionStoreSessionService, admin_dsn: str
) -> None:
    await service.create_session(
        app_name=APP, user_id=ALICE, session_id="m", state={"user:a": 1, "app:b": 2, "c": 3}
    )
    await asyncio.to_thread(downgrade, admin_dsn, "0007_original_writers")
    conn = await asyncpg.connect(admin_dsn)
    try:
        tables = {
            r[0]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert not tables & {"adk_app_states", "adk_user_states"}
        # The sessions and conversations stay; only app/user state goes with the tables.
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 1
        await asyncio.to_thread(upgrade, admin_dsn)
        assert await conn.fetchval("SELECT count(*) FROM adk_user_states") == 0
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
    finally:
        await conn.close()


async def test_an_event_and_its_state_commit_together(
    service: SessionStoreSessionService, store: SessionStore, conn: asyncpg.Connection
) -> None:
    """The event and its state delta are one transaction: when the state cannot be
    written, the event is not stored either (it was, before: a reader then saw the event
    without its state, and a resend re-applied an old delta over a newer one)."""
    session = await service.create_session(app_name=APP, user_id=ALICE, state={"x": "start"})
    await conn.execute("""
        CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.state ->> 'x' = 'boom' THEN RAISE EXCEPTION 'refused by the test'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON adk_session_states
            FOR EACH ROW EXECUTE FUNCTION refuse_boom();
    """)
    cont = ContinuationId(continuation_id(APP, ALICE, session.id))
    with pytest.raises(sessionstore.SessionStoreError):
        await service.append_event(session, _event("model", state={"x": "boom"}))
    assert await store.messages.count(cont) == 0
    stored = await service.get_session(app_name=APP, user_id=ALICE, session_id=session.id)
    assert stored is not None
    assert (stored.events, stored.state) == ([], {"x": "start"})
    await service.append_event(session, _event("model", state={"x": "fine"}))
    stored = await service.get_session(app_name=APP, user_id=ALICE, session_id=session.id)
    assert stored is not None
    assert (len(stored.events), stored.state) == (1, {"x": "fine"})


async def test_a_session_deleted_and_made_again_elsewhere_reads_as_the_new_one(
    dsn: str,
) -> None:
    """Another worker deletes the session and creates one with the same ADK id; behind a
    transaction pooler (no notifications) the session cache still holds the old one for
    a moment. The read checks the conversation's binding uncached and finds the new one
    (it returned the new events with the old, empty state, and a session object whose
    next append failed as not found)."""
    options = {**store_overrides(), "notifications": False, "cache_size": 100, "cache_ttl": 60.0}
    async with (
        sessionstore.connect(dsn, **options) as first,
        sessionstore.connect(dsn, **options) as second,
    ):
        a, b = SessionStoreSessionService(first), SessionStoreSessionService(second)
        old = await a.create_session(app_name=APP, user_id=ALICE, session_id="x", state={"v": 1})
        await a.append_event(old, _event(text="old"))
        assert await a.get_session(app_name=APP, user_id=ALICE, session_id="x") is not None
        await b.delete_session(app_name=APP, user_id=ALICE, session_id="x")
        new = await b.create_session(app_name=APP, user_id=ALICE, session_id="x", state={"v": 2})
        await b.append_event(new, _event(text="new"))
        seen = await a.get_session(app_name=APP, user_id=ALICE, session_id="x")
        assert seen is not None
        assert [_text(e.content) for e in seen.events if e.content] == ["new"]
        assert seen.state == {"v": 2}
        await a.append_event(seen, _event(text="from a"))


async def test_the_states_repository_merges_three_scopes_in_one_statement(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """``store.states`` (the repository the adapter's state SQL lives in): a write merges
    top-level keys per scope and returns the three states; a read finds them, every
    user's with ``user_id=None``; a write that cannot be done changes no scope."""
    one = await store.sessions.create(ALICE)
    two = await store.sessions.create(BOB)
    written = await store.states.write(
        APP, ALICE, one.id, StateDeltas.of({"a": 1}, {"u": [1]}, {"s": {"k": "v"}, "t": 0})
    )
    assert (written.app, written.user, written.session) == (
        {"a": 1},
        {"u": [1]},
        {"s": {"k": "v"}, "t": 0},
    )
    written = await store.states.write(APP, BOB, str(two.id), StateDeltas.of(session={"t": 2}))
    assert (written.app, written.user, written.session) == ({"a": 1}, {}, {"t": 2})
    written = await store.states.write(APP, ALICE, one.id, StateDeltas.of(app={"b": 2}))
    assert (written.app, written.user, written.session) == (
        {"a": 1, "b": 2},
        {"u": [1]},
        {"s": {"k": "v"}, "t": 0},
    )
    states = await store.states.read(APP, None, [one.id, str(two.id)])
    assert states.app == {"a": 1, "b": 2}
    assert states.users == {ALICE: {"u": [1]}}
    assert states.sessions == {one.id: {"s": {"k": "v"}, "t": 0}, two.id: {"t": 2}}
    assert (await store.states.read("other-app", ALICE, [])).app == {}
    # A session state for a session that does not exist: refused, and the app and user
    # deltas of the same statement are not applied either.
    with pytest.raises(sessionstore.NotFoundError):
        await store.states.write(
            APP, ALICE, UUID(int=1), StateDeltas.of({"a": "lost"}, {"u": "lost"}, {"x": 1})
        )
    states = await store.states.read(APP, ALICE, [])
    assert (states.app["a"], states.users[ALICE]) == (1, {"u": [1]})
    # Nothing to merge: no statement changes a row, and none is created.
    await store.states.write(APP, "nobody", one.id, StateDeltas.of())
    assert await conn.fetchval("SELECT count(*) FROM adk_user_states WHERE user_id = 'nobody'") == 0


async def test_the_states_repository_checks_its_arguments_before_sending(
    store: SessionStore,
) -> None:
    api: Any = store.states  # typed Any: these calls break the signatures on purpose
    deltas: Any = StateDeltas
    sid = (await store.sessions.create(ALICE)).id
    bad: list[tuple[str, Any]] = [
        ("app_name", lambda: api.read("", ALICE, [])),
        ("user_id", lambda: api.read(APP, 7, [])),
        ("session_ids", lambda: api.read(APP, ALICE, "not a list")),
        ("session_ids", lambda: api.read(APP, ALICE, ["not-a-uuid"])),
        ("session_id", lambda: api.write(APP, ALICE, "nope", StateDeltas.of())),
        ("user_id", lambda: api.write(APP, None, sid, StateDeltas.of())),
        ("deltas", lambda: api.write(APP, ALICE, sid, {"x": 1})),
        # Unchecked jsonb text would store a state that is no object (it did: '[1, 2]').
        ("deltas", lambda: deltas(session="[1, 2]")),
        ("deltas", lambda: deltas()),
        ("app", lambda: deltas.of(app={"x": float("nan")})),
        ("session", lambda: deltas.of(session=[1])),
        ("state[user:]", lambda: deltas.of(user={1: 2}, fields=("a", "state[user:]", "s"))),
    ]

    async def outcome(call: Any) -> None:
        result = call()
        if asyncio.iscoroutine(result):
            await result

    for field, call in bad:
        with pytest.raises(InvalidInputError) as info:
            await outcome(call)
        assert info.value.field.startswith(field), (field, info.value.field)
    assert (await store.states.read(APP, ALICE, [sid])).sessions == {}


async def test_add_turn_runs_its_after_hook_in_the_turn_transaction(store: SessionStore) -> None:
    """The hook the adapters use: ``after`` runs on the turn's connection in its
    transaction; its failure takes the turn back; a resend of the same ``message_id``
    finds the turn stored and says so (``written=False``)."""
    sid = (await store.sessions.create(ALICE)).id
    seen: list[bool] = []

    async def apply(conn: Connection, turn: sessionstore.Turn, written: bool) -> None:
        seen.append(written)
        if written:
            await write_states(
                conn, APP, ALICE, sid, StateDeltas.of(session={"n": turn.message.seq})
            )

    async def fail(conn: Connection, turn: sessionstore.Turn, written: bool) -> None:
        await write_states(conn, APP, ALICE, sid, StateDeltas.of(session={"n": "lost"}))
        raise RuntimeError("the hook failed")

    with pytest.raises(RuntimeError):
        await store.add_turn("hooked", "user", "lost", session_id=sid, after=fail)
    assert (await store.states.read(APP, ALICE, [sid])).sessions == {}
    assert (await store.sessions.get(sid)).turn_count == 0
    mid = UUID(int=42)
    turn = await store.add_turn("hooked", "user", "hi", session_id=sid, message_id=mid, after=apply)
    again = await store.add_turn(
        "hooked", "user", "hi", session_id=sid, message_id=mid, after=apply
    )
    assert again.message.id == turn.message.id == mid
    assert seen == [True, False]
    assert (await store.states.read(APP, ALICE, [sid])).sessions == {sid: {"n": 1}}
    view = store.as_user(ALICE)
    assert isinstance(view.states, type(store.states))


async def test_add_turn_refuses_an_after_that_is_not_callable_before_sending(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    sid = (await store.sessions.create(ALICE)).id
    api: Any = store  # typed Any: the call breaks the signature on purpose
    with pytest.raises(InvalidInputError) as info:
        await api.add_turn("hooked", "user", "hi", session_id=sid, after="nope")
    assert info.value.field == "after"
    assert await conn.fetchval("SELECT count(*) FROM conversations") == 0
    assert (await store.sessions.get(sid)).turn_count == 0


async def test_the_service_hooks_into_the_turn_only_for_a_state_delta(
    store: SessionStore, service: SessionStoreSessionService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event without a state delta is a plain ``add_turn`` (one round trip, no
    transaction); one with a delta passes the write as ``after``."""
    hooks: list[bool] = []
    add_turn = store.add_turn

    async def spy(*args: Any, **kwargs: Any) -> sessionstore.Turn:
        hooks.append(kwargs.get("after") is not None)
        return await add_turn(*args, **kwargs)

    monkeypatch.setattr(store, "add_turn", spy)
    session = await service.create_session(app_name=APP, user_id=ALICE)
    await service.append_event(session, _event(text="no state"))
    await service.append_event(session, _event("model", state={"k": 1, "user:u": 2}))
    assert hooks == [False, True]
    stored = await service.get_session(app_name=APP, user_id=ALICE, session_id=session.id)
    assert stored is not None
    assert stored.state == {"k": 1, "user:u": 2}


async def test_compaction_events_round_trip(service: SessionStoreSessionService) -> None:
    """ADK's own compaction (``EventsCompactionConfig``) appends an event whose
    ``actions.compaction`` holds the summary of a time range; ADK applies it when it
    builds the next request, so the event must come back exactly as appended."""
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="compact")
    base = 1_800_000_000.0
    for i in range(3):
        await service.append_event(session, _event(text=f"m{i}", timestamp=base + i))
    summary = types.Content(role="model", parts=[types.Part(text="m0 to m2, in short")])
    compaction = _event(
        "summariser",
        timestamp=base + 3,
        actions=EventActions(
            compaction=EventCompaction(
                start_timestamp=base, end_timestamp=base + 2, compacted_content=summary
            )
        ),
    )
    await service.append_event(session, compaction)
    await service.append_event(session, _event(text="m3", timestamp=base + 4))
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id="compact")
    assert got is not None
    assert got.events == session.events
    stored = next(e for e in got.events if e.actions.compaction is not None)
    assert stored.actions.compaction == compaction.actions.compaction
    assert stored.id == compaction.id


async def test_a_sessionstore_compaction_hides_no_adk_event(
    service: SessionStoreSessionService, store: SessionStore
) -> None:
    """ADK compacts with events of its own: a sessionstore compaction of the session's
    conversation (not ADK's concept) leaves every event readable, and the summary, which
    is no event, is not one."""
    session = await service.create_session(app_name=APP, user_id=ALICE, session_id="hidden")
    base = 1_800_000_000.0
    for i in range(4):
        await service.append_event(session, _event(text=f"m{i}", timestamp=base + i))
    conv = ContinuationId(continuation_id(APP, ALICE, "hidden"))
    await store.messages.compact(conv, through_seq=3, summary="m0 to m2")
    got = await service.get_session(app_name=APP, user_id=ALICE, session_id="hidden")
    assert got is not None
    assert [_text(e.content) for e in got.events if e.content] == ["m0", "m1", "m2", "m3"]
    recent = await service.get_session(
        app_name=APP,
        user_id=ALICE,
        session_id="hidden",
        config=GetSessionConfig(num_recent_events=2),
    )
    assert recent is not None
    assert [_text(e.content) for e in recent.events if e.content] == ["m2", "m3"]
