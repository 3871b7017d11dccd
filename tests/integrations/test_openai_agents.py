"""``sessionstore.integrations.openai_agents.SessionStoreSession``: the OpenAI Agents SDK's
``Session`` protocol on sessionstore, driven by the SDK's real agent loop and checked
against its documented behaviour and sessionstore's guarantees, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator
from typing import Any, Literal, cast
from uuid import UUID

import pytest

pytest.importorskip("agents")

import asyncpg
from agents import Agent, ModelResponse, RunConfig, Runner, Usage, function_tool
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from agents.memory import Session, SessionSettings
from agents.model_settings import ModelSettings
from agents.models.interface import Model, ModelTracing
from agents.tool import Tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam

import sessionstore
from sessionstore import (
    ConflictError,
    ContinuationId,
    InvalidInputError,
    InvalidStateError,
    MessageRole,
    NotFoundError,
    PermissionDeniedError,
    SessionExpiredError,
    SessionStore,
)
from sessionstore.integrations.openai_agents import DEFAULT_PREFIX, SessionStoreSession

from ..conftest import as_supabase_postgres, store_overrides
from ..helpers import expire, row_counts
from ..servers import TestServer

# --- a scripted model for the SDK's real agent loop -------------------------------------


class ScriptedModel(Model):
    """Returns the scripted outputs in order and records every input it was given."""

    def __init__(self, script: list[list[TResponseOutputItem]]) -> None:
        self.script = list(script)
        self.inputs: list[list[dict[str, Any]]] = []

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        given = [{"role": "user", "content": input}] if isinstance(input, str) else input
        self.inputs.append(copy.deepcopy(cast(list[dict[str, Any]], given)))
        return ModelResponse(output=self.script.pop(0), usage=Usage(), response_id=None)

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("these tests do not stream")
        yield  # pragma: no cover - makes this an async generator


def _call(call_id: str, a: int, b: int) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        type="function_call",
        id=f"fc_{call_id}",
        call_id=call_id,
        name="add",
        arguments=json.dumps({"a": a, "b": b}),
        status="completed",
    )


def _say(msg_id: str, text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        type="message",
        id=msg_id,
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


added: list[tuple[int, int]] = []


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    added.append((a, b))
    return a + b


NO_TRACING = RunConfig(tracing_disabled=True)


async def test_agent_loop_keeps_history_across_runs(store: SessionStore) -> None:
    """Two ``Runner.run`` calls on one session: the second run's model receives the
    first run's user message, tool call, tool output and answer, in order; everything
    is stored once, readable through the session and through sessionstore."""
    added.clear()
    owner = await store.sessions.create(user_id="u1")
    model = ScriptedModel(
        [[_call("call_1", 2, 3)], [_say("msg_1", "2 + 3 = 5")], [_say("msg_2", "Still 5.")]]
    )
    agent = Agent(name="calc", instructions="Add numbers.", model=model, tools=[add])
    session = SessionStoreSession("chat-1", store, owner=owner.id)

    first = await Runner.run(agent, "What is 2 + 3?", session=session, run_config=NO_TRACING)
    assert first.final_output == "2 + 3 = 5"
    assert added == [(2, 3)]
    # The model's second call (after the tool) saw the tool's output.
    assert [i.get("type", "message") for i in model.inputs[1]] == [
        "message",
        "function_call",
        "function_call_output",
    ]
    assert model.inputs[1][2]["output"] == "5"

    again = SessionStoreSession("chat-1", store, owner=owner.id)  # a new request, same chat
    second = await Runner.run(agent, "Are you sure?", session=again, run_config=NO_TRACING)
    assert second.final_output == "Still 5."
    assert added == [(2, 3)]  # the tool did not run again

    history_seen = model.inputs[2]
    assert len(history_seen) == 5
    assert history_seen[0]["content"] == "What is 2 + 3?"
    assert history_seen[0]["role"] == "user"
    assert history_seen[1]["type"] == "function_call"
    assert history_seen[1]["call_id"] == "call_1"
    assert json.loads(history_seen[1]["arguments"]) == {"a": 2, "b": 3}
    assert history_seen[2] == {"call_id": "call_1", "output": "5", "type": "function_call_output"}
    assert history_seen[3]["role"] == "assistant"
    assert history_seen[3]["content"][0]["text"] == "2 + 3 = 5"
    assert history_seen[4]["content"] == "Are you sure?"

    items = await session.get_items()
    assert len(items) == 6
    assert [i.get("type", "message") for i in items] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
        "message",
    ]
    assert cast(dict[str, Any], items[-1])["content"][0]["text"] == "Still 5."
    assert await again.get_items() == items

    ref = ContinuationId(DEFAULT_PREFIX + "chat-1")
    assert session.continuation_id == ref
    stored = await store.messages.history(ref)
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5, 6]
    assert [m.role for m in stored] == [
        MessageRole.USER,
        MessageRole.ASSISTANT,
        MessageRole.ASSISTANT,
        MessageRole.ASSISTANT,
        MessageRole.USER,
        MessageRole.ASSISTANT,
    ]
    assert [m.metadata["type"] for m in stored] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
        "message",
    ]
    assert all(m.metadata["source"] == "openai-agents" for m in stored)
    assert stored[1].metadata["call_id"] == "call_1"
    assert [json.loads(m.content) for m in stored] == items
    conversation = await store.conversations.get(ref)
    assert conversation.session_id == owner.id
    assert conversation.message_count == 6


@pytest.mark.parametrize(("turns", "counted"), [("per_run", 2), ("per_call", 5)])
async def test_a_turn_per_run_or_per_call(
    store: SessionStore, turns: Literal["per_run", "per_call"], counted: int
) -> None:
    """The SDK's ``Runner`` calls ``add_items`` three times in a run with a tool call (the
    input, the call with its output, the answer) and twice in one without: by default
    each ``Runner.run`` is one turn of the owner, ``turns="per_call"`` counts each call."""
    owner = await store.sessions.create(user_id="u1")
    model = ScriptedModel(
        [[_call("call_1", 2, 3)], [_say("msg_1", "2 + 3 = 5")], [_say("msg_2", "Still 5.")]]
    )
    agent = Agent(name="calc", instructions="Add numbers.", model=model, tools=[add])
    session = SessionStoreSession("runs", store, owner=owner.id, turns=turns)
    await Runner.run(agent, "What is 2 + 3?", session=session, run_config=NO_TRACING)
    await Runner.run(agent, "Are you sure?", session=session, run_config=NO_TRACING)
    assert len(await session.get_items()) == 6
    assert (await store.sessions.get(owner.id)).turn_count == counted
    # Calls of your own (no run context) are a turn each, in either mode.
    await session.add_items([_msg("user", "by hand")])
    await session.add_items([_msg("assistant", "by hand too")])
    assert (await store.sessions.get(owner.id)).turn_count == counted + 2


async def test_concurrent_runs_on_one_object_count_a_turn_each(store: SessionStore) -> None:
    """Two runs interleaving their ``add_items`` calls on one adapter object: each run
    is told apart by its own run context, so each counts one turn."""
    owner = await store.sessions.create(user_id="u1")
    session = SessionStoreSession("busy-runs", store, owner=owner.id)
    both_asked = asyncio.Barrier(2)

    class WaitingModel(ScriptedModel):
        async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
            await both_asked.wait()  # both runs' inputs are stored before either answers
            return await super().get_response(*args, **kwargs)

    agents = [
        Agent(name=f"a{n}", model=WaitingModel([[_say(f"msg_{n}", f"answer {n}")]]))
        for n in range(2)
    ]
    await asyncio.wait_for(
        asyncio.gather(
            *(
                Runner.run(a, f"question {n}", session=session, run_config=NO_TRACING)
                for n, a in enumerate(agents)
            )
        ),
        timeout=30,
    )
    assert len(await session.get_items()) == 4
    assert (await store.sessions.get(owner.id)).turn_count == 2


async def test_a_run_whose_session_ends_meanwhile_is_stored_whole(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """The run's first ``add_items`` is the turn, checked when it is counted: a tool that
    completes the session mid-run does not cut the run's items short; the next run is
    refused and writes nothing."""
    owner = await store.sessions.create(user_id="u1")

    @function_tool
    async def finish() -> str:
        """End the session."""
        await store.sessions.complete(owner.id)
        return "done"

    ends = ResponseFunctionToolCall(
        type="function_call", id="fc_end", call_id="end", name="finish", arguments="{}"
    )
    model = ScriptedModel([[ends], [_say("msg_bye", "Bye.")]])
    agent = Agent(name="closer", model=model, tools=[finish])
    session = SessionStoreSession("closing", store, owner=owner.id)
    result = await Runner.run(agent, "We are done.", session=session, run_config=NO_TRACING)
    assert result.final_output == "Bye."
    stored = await session.get_items()
    assert [i.get("type", "message") for i in stored] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
    before = await row_counts(conn)
    with pytest.raises(InvalidStateError):
        await Runner.run(agent, "One more thing", session=session, run_config=NO_TRACING)
    assert await row_counts(conn) == before
    assert (await store.sessions.get(owner.id)).turn_count == 1


async def test_is_the_sdks_session(store: SessionStore) -> None:
    """It satisfies the SDK's runtime-checkable protocol, with the attributes it names."""
    session = SessionStoreSession("x", store, session_settings={"limit": 3})
    assert isinstance(session, Session)
    assert session.session_id == "x"
    assert session.session_settings == SessionSettings(limit=3)
    assert SessionStoreSession("x", store).session_settings == SessionSettings()
    assert SessionStoreSession("x", store, prefix="").continuation_id == "x"
    assert "x" in repr(session)


# --- the protocol's documented behaviour ---------------------------------------------


def _msg(role: str, text: str) -> TResponseInputItem:
    return cast(TResponseInputItem, {"role": role, "content": text})


def _numbered(n: int, start: int = 0) -> list[TResponseInputItem]:
    return [_msg("user", f"m{i}") for i in range(start, start + n)]


async def test_limit_semantics(store: SessionStore) -> None:
    """``limit``: the latest N items, oldest first; None = all; 0 = none; more than
    stored = all; ``session_settings.limit`` is the default an explicit limit overrides."""
    session = SessionStoreSession("limits", store)
    assert await session.get_items() == []
    assert await session.get_items(5) == []
    items = _numbered(5)
    await session.add_items(items)
    assert await session.get_items() == items
    assert await session.get_items(None) == items
    assert await session.get_items(0) == []
    assert await session.get_items(1) == items[-1:]
    assert await session.get_items(3) == items[-3:]
    assert await session.get_items(50) == items
    for bad in (-1, True, 2.0, "3"):
        with pytest.raises(InvalidInputError) as caught:
            await session.get_items(cast(Any, bad))
        assert caught.value.field == "limit"

    defaulted = SessionStoreSession("limits", store, session_settings=SessionSettings(limit=2))
    assert await defaulted.get_items() == items[-2:]
    assert await defaulted.get_items(4) == items[-4:]


async def test_a_compacted_session_reads_the_summary_then_what_follows(
    store: SessionStore,
) -> None:
    """After ``messages.compact`` of the session's conversation, ``get_items`` counts
    items as before over the compacted view: the summary (plain text, read as an input
    message of its role) then the items after it."""
    session = SessionStoreSession("compacted", store)
    items = _numbered(5)
    await session.add_items(items)
    await store.messages.compact(
        session.continuation_id, through_seq=3, summary="items 1-3, in short"
    )
    summary = {"role": "system", "content": "items 1-3, in short"}
    assert await session.get_items() == [summary, *items[3:]]
    assert await session.get_items(2) == items[3:]
    assert await session.get_items(3) == [summary, *items[3:]]


async def test_get_items_pages_past_one_thousand(store: SessionStore) -> None:
    """More items than one history page (1,000): all of them, in order, without gaps."""
    session = SessionStoreSession("long", store)
    items = _numbered(2_345)
    await session.add_items(items)
    assert await session.get_items() == items
    assert await session.get_items(1_500) == items[-1_500:]
    assert await session.get_items(1_000) == items[-1_000:]


async def test_pop_item(store: SessionStore, conn: asyncpg.Connection) -> None:
    """Pop on nothing is None and creates nothing; pop returns the latest item and
    removes it; the next add continues after the remaining ones."""
    session = SessionStoreSession("pop", store)
    assert await session.pop_item() is None
    assert (await row_counts(conn))["conversations"] == 0
    await session.add_items(_numbered(3))
    assert await session.pop_item() == _msg("user", "m2")
    assert await session.get_items() == _numbered(2)
    await session.add_items([_msg("assistant", "after")])
    assert await session.get_items() == [*_numbered(2), _msg("assistant", "after")]
    stored = await store.messages.history(session.continuation_id)
    assert [m.seq for m in stored] == [1, 2, 3]
    for expected in reversed([*_numbered(2), _msg("assistant", "after")]):
        assert await session.pop_item() == expected
    assert await session.pop_item() is None
    assert await session.get_items() == []


async def test_clear_then_add(store: SessionStore, conn: asyncpg.Connection) -> None:
    """Clear empties the session (a clear of nothing is a no-op); adding afterwards
    starts over in the same conversation."""
    session = SessionStoreSession("clear", store)
    await session.clear_session()
    assert (await row_counts(conn))["conversations"] == 0
    await session.add_items(_numbered(4))
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.add_items([_msg("user", "again")])
    assert await session.get_items() == [_msg("user", "again")]
    stored = await store.messages.history(session.continuation_id)
    assert [(m.seq, m.content) for m in stored] == [(1, '{"role":"user","content":"again"}')]
    assert (await row_counts(conn))["conversations"] == 1


EVERY_KIND: list[dict[str, Any]] = [
    {"role": "user", "content": "héllo wörld ✓ 你好 🙂"},
    {"role": "system", "content": "be brief"},
    {"role": "developer", "content": "use tools\u0000 when needed"},
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": 'look:\n\t"quoted" \\ back'},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
        ],
    },
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": "lone \ud800 surrogate", "annotations": []},
            {"type": "refusal", "refusal": "no"},
        ],
    },
    {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "lookup",
        "arguments": '{"q": "x\\u0000y"}',
        "status": "completed",
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "[1, 2.5, null]"},
    {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "thinking…"}],
        "encrypted_content": None,
    },
    {
        "type": "computer_call",
        "id": "cu_1",
        "call_id": "call_2",
        "action": {"type": "click", "x": 1, "y": -2, "button": "left"},
        "pending_safety_checks": [],
        "status": "completed",
    },
    {"type": "item_reference", "id": "msg_0"},
    {"z": 1, "a": {"nested": [{"deep": [[[]]], "n": 1e-300, "big": 2**70}]}, "m": False},
]


async def test_every_kind_of_item_round_trips(store: SessionStore) -> None:
    """Items of every kind come back equal, keys in the same order; roles follow the
    documented mapping; metadata holds the small facts."""
    session = SessionStoreSession("kinds", store)
    await session.add_items(cast(list[TResponseInputItem], copy.deepcopy(EVERY_KIND)))
    back = await session.get_items()
    assert back == EVERY_KIND
    assert [list(cast(dict[str, Any], i)) for i in back] == [list(i) for i in EVERY_KIND]
    stored = await store.messages.history(session.continuation_id)
    assert [m.role.value for m in stored] == [
        "user",
        "system",
        "system",  # developer
        "user",
        "assistant",
        "assistant",  # function_call
        "assistant",  # function_call_output
        "assistant",  # reasoning
        "assistant",  # computer_call
        "assistant",  # item_reference
        "assistant",  # unknown shape
    ]
    assert stored[2].metadata == {"source": "openai-agents", "type": "message", "role": "developer"}
    assert stored[6].metadata == {
        "source": "openai-agents",
        "type": "function_call_output",
        "call_id": "call_1",
    }
    assert stored[10].metadata == {"source": "openai-agents"}
    assert "你好" in stored[0].content  # readable UTF-8, not \\u escapes
    for expected in reversed(EVERY_KIND):
        assert await session.pop_item() == expected


_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
# Any text, NUL and lone surrogates included (st.text() leaves surrogates out).
_ODD = st.sampled_from(["\x00", "\ud800", "\udfff", "é", "🙂", '"', "\\", "\n"])
_TEXT = st.lists(st.characters() | _ODD, max_size=8).map("".join)
_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_ITEMS = st.lists(st.dictionaries(_TEXT, _JSON, max_size=5), min_size=1, max_size=3)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=_ITEMS)
async def test_json_like_items_round_trip_exactly(
    store: SessionStore, items: list[dict[str, Any]]
) -> None:
    """Any JSON-like dicts (any text: NUL, lone surrogates, any key order) come back
    equal with the same key order, appended after what was there. The one refusal: a
    string holding a high+low surrogate pair as two code points (JSON would read it back
    as one character) raises ``InvalidInputError`` naming the item, and nothing is added."""
    session = SessionStoreSession("prop", store)
    before = await session.get_items()
    paired = [
        i for i, item in enumerate(items) if _PAIR.search(json.dumps(item, ensure_ascii=False))
    ]
    if paired:
        with pytest.raises(InvalidInputError) as caught:
            await session.add_items(cast(list[TResponseInputItem], copy.deepcopy(items)))
        assert caught.value.field == f"items[{paired[0]}]"
        assert await session.get_items() == before
        return
    await session.add_items(cast(list[TResponseInputItem], copy.deepcopy(items)))
    back = cast(list[dict[str, Any]], await session.get_items(len(items)))
    assert back == items
    assert [json.dumps(i) for i in back] == [json.dumps(i) for i in items]  # key order
    assert await session.get_items() == [*before, *items]


async def test_two_objects_share_one_id_and_ids_are_isolated(store: SessionStore) -> None:
    """Two adapters on one id see each other's items; other ids (and other prefixes)
    are separate conversations."""
    a = SessionStoreSession("shared", store)
    b = SessionStoreSession("shared", store)
    other = SessionStoreSession("other", store)
    elsewhere = SessionStoreSession("shared", store, prefix="billing-bot:")
    await a.add_items([_msg("user", "from a")])
    await b.add_items([_msg("assistant", "from b")])
    await other.add_items([_msg("user", "other")])
    await elsewhere.add_items([_msg("user", "billing")])
    assert await a.get_items() == [_msg("user", "from a"), _msg("assistant", "from b")]
    assert await b.get_items() == await a.get_items()
    assert await other.get_items() == [_msg("user", "other")]
    assert await elsewhere.get_items() == [_msg("user", "billing")]
    assert await b.pop_item() == _msg("assistant", "from b")
    assert await a.get_items() == [_msg("user", "from a")]
    await other.clear_session()
    assert await a.get_items() == [_msg("user", "from a")]


async def test_concurrent_add_items_lose_nothing(store: SessionStore) -> None:
    """Twenty concurrent ``add_items`` calls on a new conversation (half on one object,
    half on their own objects): every item stored once, each call's items contiguous."""
    owner = await store.sessions.create(user_id="u1")
    shared = SessionStoreSession("busy", store, owner=owner.id)

    async def call(n: int) -> None:
        target = shared if n % 2 else SessionStoreSession("busy", store, owner=owner.id)
        await target.add_items([_msg("user", f"{n}:{k}") for k in range(3)])

    await asyncio.gather(*(call(n) for n in range(20)))
    items = [cast(dict[str, Any], i)["content"] for i in await shared.get_items()]
    assert sorted(items) == sorted(f"{n}:{k}" for n in range(20) for k in range(3))
    for start in range(0, 60, 3):
        n = items[start].split(":")[0]
        assert items[start : start + 3] == [f"{n}:{k}" for k in range(3)]
    assert (await store.sessions.get(owner.id)).turn_count == 20  # one turn per call


# --- bad input ----------------------------------------------------------------------


class _Opaque:
    pass


async def test_bad_input_names_the_field_and_writes_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    session = SessionStoreSession("bad", store)
    await session.add_items([_msg("user", "kept")])
    before = await row_counts(conn)

    constructions: list[tuple[str, Any]] = [
        ("session_id", lambda: SessionStoreSession(cast(Any, 42), store)),
        ("session_id", lambda: SessionStoreSession("", store)),
        ("session_id", lambda: SessionStoreSession("  ", store)),
        ("session_id", lambda: SessionStoreSession("a\x00b", store)),
        ("session_id", lambda: SessionStoreSession("x" * 250, store)),
        ("prefix", lambda: SessionStoreSession("x", store, prefix=cast(Any, None))),
        ("store", lambda: SessionStoreSession("x", cast(Any, "postgres://"))),
        ("owner", lambda: SessionStoreSession("x", store, owner="not-a-uuid")),
        ("owner", lambda: SessionStoreSession("x", store.as_user("u1"))),
        (
            "write_behind",
            lambda: SessionStoreSession(
                "x", store.as_user("u1"), owner=UUID(int=1), write_behind=True
            ),
        ),
        ("write_behind", lambda: SessionStoreSession("x", store, write_behind=cast(Any, 1))),
        ("session_settings", lambda: SessionStoreSession("x", store, session_settings={"n": 1})),
        ("turns", lambda: SessionStoreSession("x", store, turns=cast(Any, "sometimes"))),
    ]
    for field, make in constructions:
        with pytest.raises(InvalidInputError) as caught:
            make()
        assert caught.value.field == field, field

    cyclic: dict[str, Any] = {"type": "message"}
    cyclic["self"] = cyclic
    additions: list[tuple[str, Any]] = [
        ("items", {"role": "user", "content": "not in a list"}),
        ("items", (_msg("user", "a tuple"),)),
        ("items", None),
        ("items[1]", [_msg("user", "ok"), "just text"]),
        ("items[0]", [{"role": "user", "content": _Opaque()}]),
        ("items[1]", [_msg("user", "ok"), {"x": float("nan")}]),
        ("items[0]", [{"x": float("inf")}]),
        ("items[0]", [{"x": b"bytes"}]),
        ("items[0]", [cyclic]),
    ]
    for field, items in additions:
        with pytest.raises(InvalidInputError) as caught:
            await session.add_items(items)
        assert caught.value.field == field, field
    assert await row_counts(conn) == before
    assert await session.get_items() == [_msg("user", "kept")]
    await session.add_items([])  # nothing to do
    assert await row_counts(conn) == before


# --- guarantees: owner session, RLS, write-behind --------------------------------------


async def test_dead_owner_refuses_and_writes_nothing(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """An expired, completed or paused owner refuses ``add_items`` (the first one of a
    new conversation, and later ones); nothing is written, not even the conversation."""
    expired = await store.sessions.create(user_id="u1")
    await expire(conn, expired.id)
    done = await store.sessions.create(user_id="u1")
    await store.sessions.complete(done.id)
    paused = await store.sessions.create(user_id="u1")
    await store.sessions.pause(paused.id)
    before = await row_counts(conn)
    cases: list[tuple[UUID, type[Exception]]] = [
        (expired.id, SessionExpiredError),
        (done.id, InvalidStateError),
        (paused.id, InvalidStateError),
        (UUID(int=7), NotFoundError),
    ]
    for sid, error in cases:
        fresh = SessionStoreSession(f"new-{sid}", store, owner=sid)
        with pytest.raises(error):
            await fresh.add_items([_msg("user", "hi")])
        assert await fresh.get_items() == []
        with pytest.raises(error):
            await SessionStoreSession(f"new-{sid}", store, owner=sid, write_behind=True).add_items(
                [_msg("user", "hi")]
            )
    assert await row_counts(conn) == before

    # A live conversation whose session then dies: later appends refuse, all or nothing.
    live = await store.sessions.create(user_id="u1")
    session = SessionStoreSession("dies", store, owner=live.id)
    await session.add_items([_msg("user", "one")])
    await store.sessions.complete(live.id)
    with pytest.raises(InvalidStateError):
        await session.add_items([_msg("user", "two"), _msg("assistant", "three")])
    ends = await store.sessions.create(user_id="u1")
    late = SessionStoreSession("expires", store, owner=ends.id)
    await late.add_items([_msg("user", "one")])
    await expire(conn, ends.id)
    with pytest.raises(SessionExpiredError):
        await late.add_items([_msg("user", "two"), _msg("assistant", "three")])
    assert await session.get_items() == [_msg("user", "one")]
    assert await late.get_items() == [_msg("user", "one")]
    # Removing still works on a dead session: pop and clear never add.
    assert await late.pop_item() == _msg("user", "one")
    await session.clear_session()
    assert await session.get_items() == []


async def test_owner_binding_is_enforced(store: SessionStore) -> None:
    """A conversation bound to one session is neither read nor written through an
    adapter naming another owner; without an owner it is plain continuation-id access."""
    mine = await store.sessions.create(user_id="u1")
    theirs = await store.sessions.create(user_id="u2")
    await SessionStoreSession("bound", store, owner=mine.id).add_items([_msg("user", "mine")])
    intruder = SessionStoreSession("bound", store, owner=theirs.id)
    with pytest.raises(ConflictError):
        await intruder.get_items()
    with pytest.raises(ConflictError):
        await intruder.add_items([_msg("user", "theirs")])
    with pytest.raises(ConflictError):
        await intruder.pop_item()
    with pytest.raises(ConflictError):
        await intruder.clear_session()
    assert await SessionStoreSession("bound", store).get_items() == [_msg("user", "mine")]
    # Deleting the owner session deletes the conversation with it (cleanup).
    await store.sessions.delete(mine.id)
    with pytest.raises(NotFoundError):
        await store.conversations.get(ContinuationId(DEFAULT_PREFIX + "bound"))


ALICE = "6f1c1a52-0000-4000-8000-00000000a11c"
BOB = "6f1c1a52-0000-4000-8000-000000000b0b"


async def test_rls_user_cannot_read_or_write_another_users_items(
    pg_server: TestServer, supabase_database: str
) -> None:
    """Under ``as_user``: Bob's adapter works on his own session; Alice's adapter on the
    same SDK session id reads nothing of Bob's and cannot write into it, whether she
    names her own session or Bob's."""
    dsn = as_supabase_postgres(pg_server.dsn_for(supabase_database))
    async with sessionstore.connect(dsn, **store_overrides()) as store:
        alice, bob = store.as_user(ALICE), store.as_user(BOB)
        bob_session = await bob.sessions.create(BOB)
        alice_session = await alice.sessions.create(ALICE)
        bobs = SessionStoreSession("support-chat", bob, owner=bob_session.id)
        await bobs.add_items([_msg("user", "my secret"), _msg("assistant", "noted")])
        assert len(await bobs.get_items()) == 2

        for owner in (alice_session.id, bob_session.id):
            hers = SessionStoreSession("support-chat", alice, owner=owner)
            assert await hers.get_items() == []
            assert await hers.pop_item() is None
            await hers.clear_session()
            with pytest.raises((PermissionDeniedError, NotFoundError)):
                await hers.add_items([_msg("user", "let me in")])
        assert await bobs.get_items() == [_msg("user", "my secret"), _msg("assistant", "noted")]

        # Alice's own conversation works and Bob cannot see it either.
        hers = SessionStoreSession("alice-chat", alice, owner=alice_session.id)
        await hers.add_items([_msg("user", "hello")])
        assert await hers.pop_item() == _msg("user", "hello")
        await hers.add_items([_msg("user", "again")])
        assert await SessionStoreSession("alice-chat", bob, owner=bob_session.id).get_items() == []
        assert await hers.get_items() == [_msg("user", "again")]

        # The SDK's loop under RLS: a run with a tool call is one turn of Bob's session.
        model = ScriptedModel([[_call("call_rls", 1, 2)], [_say("msg_rls", "3")]])
        agent = Agent(name="calc", model=model, tools=[add])
        runs = SessionStoreSession("bob-run", bob, owner=bob_session.id)
        await Runner.run(agent, "1 + 2?", session=runs, run_config=NO_TRACING)
        assert len(await runs.get_items()) == 4
        assert (await bob.sessions.get(bob_session.id)).turn_count == 2  # + "support-chat"


async def test_write_behind_reads_its_writes_and_flush_makes_them_visible(
    store: SessionStore, dsn: str
) -> None:
    """Write-behind: ``get_items`` in this process sees the items before they are
    durable; another store on the database sees them after ``store.flush()``; pop and
    clear act on the queued items too."""
    owner = await store.sessions.create(user_id="u1")
    session = SessionStoreSession("queued", store, owner=owner.id, write_behind=True)
    items = _numbered(5)
    async with sessionstore.connect(dsn, **store_overrides(), max_delay=60.0) as writer:
        queued = SessionStoreSession("queued", writer, owner=owner.id, write_behind=True)
        await queued.add_items(items)
        assert await queued.get_items() == items
        assert await queued.get_items(2) == items[-2:]
        # Not durable yet: another process (here: another store) sees none of them.
        assert await session.get_items() == []
        assert writer.stats().oldest_age is not None
        await writer.flush()
        assert await session.get_items() == items
        await queued.add_items([_msg("assistant", "late")])
        assert await queued.pop_item() == _msg("assistant", "late")  # flushed, then popped
        await queued.add_items([_msg("assistant", "later")])
        await queued.clear_session()
        assert await queued.get_items() == []
    assert await session.get_items() == []
