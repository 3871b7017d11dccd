"""``sessionstore.integrations.langgraph.SessionStoreSaver``: real LangGraph graphs (a
tool-calling agent, a human-in-the-loop interrupt) checkpointed in PostgreSQL — read back
by a graph compiled on another saver of another store, as another process would — and
sessionstore's guarantees on their threads (sessions keep them apart, row-level security,
a thread goes with its session)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
import pytest

pytest.importorskip("langgraph.checkpoint.base")

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Checkpointer, Command, StateSnapshot, interrupt
from pydantic import Field
from typing_extensions import override

import sessionstore
from sessionstore import ConflictError, NotFoundError, SessionStore
from sessionstore.integrations.langgraph import SessionStoreSaver

from ..conftest import store_overrides
from ..servers import TestServer

ALICE = "6f1c1a52-0000-4000-8000-00000000a11c"
BOB = "6f1c1a52-0000-4000-8000-000000000b0b"

GRAPH_TABLES = ("langgraph_threads", "langgraph_checkpoints", "langgraph_blobs", "langgraph_writes")

Graph = CompiledStateGraph[MessagesState, None, MessagesState, MessagesState]

WEATHER = {"Paris": (18.0, "sunny"), "Lisbon": (24.0, "clear")}


@tool(response_format="content_and_artifact")
def get_weather(city: str) -> tuple[str, dict[str, Any]]:
    """The weather in ``city`` now: a sentence for the model, the reading as artifact."""
    celsius, sky = WEATHER[city]
    return f"{celsius:g} °C, {sky}", {"city": city, "celsius": celsius, "sky": sky}


class ScriptedModel(BaseChatModel):
    """A chat model that answers with its script's messages in order (no network) and
    records every prompt it receives and the tools bound to it."""

    script: list[AIMessage]
    prompts: list[list[BaseMessage]] = Field(default_factory=list)
    bound: list[str] = Field(default_factory=list)

    @override
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.prompts.append(list(messages))
        if not self.script:
            raise AssertionError("the model was called more often than scripted")
        return ChatResult(generations=[ChatGeneration(message=self.script.pop(0))])

    @override
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Any | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        self.bound = [t.name for t in tools if isinstance(t, BaseTool)]
        return self

    @property
    def _llm_type(self) -> str:
        return "scripted"


def _call(city: str, n: int) -> AIMessage:
    """The model's request to call ``get_weather`` for ``city``."""
    return AIMessage(
        "",
        id=f"ai-{n}",
        tool_calls=[
            {"name": "get_weather", "args": {"city": city}, "id": f"call-{n}", "type": "tool_call"}
        ],
    )


def _agent(model: ScriptedModel, saver: Checkpointer) -> Graph:
    """A tool-calling agent built by hand: the model, then the tool node while the model
    asks for tools (LangGraph's prebuilt ``ToolNode`` and ``tools_condition``)."""
    bound = model.bind_tools([get_weather])

    async def agent(state: MessagesState) -> dict[str, list[AnyMessage]]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([get_weather]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=saver)


def _echo(saver: SessionStoreSaver) -> Graph:
    """A one-node graph that answers every message with ``echo: <message>``."""

    def reply(state: MessagesState) -> dict[str, list[AnyMessage]]:
        return {"messages": [AIMessage(f"echo: {state['messages'][-1].content}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=saver)


def _config(thread_id: str, session_id: UUID | None = None) -> RunnableConfig:
    configurable: dict[str, Any] = {"thread_id": thread_id}
    if session_id is not None:
        configurable["session_id"] = str(session_id)
    return {"configurable": configurable}


def _say(text: str, n: int) -> MessagesState:
    return {"messages": [HumanMessage(text, id=f"human-{n}")]}


def _texts(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    return [(m.type, str(m.content)) for m in messages]


def _shape(snapshot: StateSnapshot) -> tuple[Any, ...]:
    """What a checkpoint holds, without the ids and timestamps that differ between runs."""
    messages = snapshot.values.get("messages", []) if isinstance(snapshot.values, dict) else []
    return (snapshot.metadata, snapshot.next, _texts(messages))


async def _graph_rows(conn: asyncpg.Connection, thread_id: str | None = None) -> dict[str, int]:
    """How many rows each LangGraph table holds (for ``thread_id`` only, if given)."""
    where = "" if thread_id is None else " WHERE thread_id = $1"
    args = () if thread_id is None else (thread_id,)
    return {
        t: int(await conn.fetchval(f"SELECT count(*) FROM {t}{where}", *args)) for t in GRAPH_TABLES
    }


QUESTIONS = ("Weather in Paris?", "And in Lisbon?", "Thanks!")


def _weather_script() -> list[AIMessage]:
    return [
        _call("Paris", 1),
        AIMessage("It is 18 °C and sunny in Paris.", id="ai-2"),
        _call("Lisbon", 3),
        AIMessage("It is 24 °C and clear in Lisbon.", id="ai-4"),
        AIMessage("You're welcome.", id="ai-5"),
    ]


async def _three_turns(graph: Graph, config: RunnableConfig) -> list[StateSnapshot]:
    for n, question in enumerate(QUESTIONS):
        await graph.ainvoke(_say(question, n), config)
    return [s async for s in graph.aget_state_history(config)]


# -- LangGraph's real loop -------------------------------------------------------------


async def test_a_tool_using_agent_keeps_every_turn_of_its_thread(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """Three invocations of a tool-calling agent on one thread: the state read back holds
    every message in order, the model saw the whole conversation each turn, and the
    state history lists every checkpoint newest first, each the child of the next (and
    pages with ``limit`` and ``before``, filters on metadata) — the same history
    LangGraph's own in-memory saver keeps for the same run."""
    session = await store.sessions.create("u1")
    config = _config("trip", session.id)
    model = ScriptedModel(script=_weather_script())
    graph = _agent(model, SessionStoreSaver(store))
    history = await _three_turns(graph, config)

    state = await graph.aget_state(config)
    assert _texts(state.values["messages"]) == [
        ("human", "Weather in Paris?"),
        ("ai", ""),
        ("tool", "18 °C, sunny"),
        ("ai", "It is 18 °C and sunny in Paris."),
        ("human", "And in Lisbon?"),
        ("ai", ""),
        ("tool", "24 °C, clear"),
        ("ai", "It is 24 °C and clear in Lisbon."),
        ("human", "Thanks!"),
        ("ai", "You're welcome."),
    ]
    assert state.next == ()
    assert model.bound == ["get_weather"]
    # Each prompt is everything before the model's answer to it, read back from the
    # checkpoint for the turns after the first.
    messages = state.values["messages"]
    answered_at = [i for i, m in enumerate(messages) if m.type == "ai"]
    assert model.prompts == [messages[:i] for i in answered_at]

    assert history[0].config == state.config
    assert history[0].values == state.values
    steps = [s.metadata["step"] for s in history if s.metadata is not None]
    assert steps == list(range(11, -2, -1))
    for newer, older in itertools.pairwise(history):
        assert newer.parent_config == older.config
    assert history[-1].parent_config is None
    ids = [s.config["configurable"]["checkpoint_id"] for s in history]
    assert ids == sorted(ids, reverse=True)
    assert [s.config async for s in graph.aget_state_history(config, limit=3)] == [
        s.config for s in history[:3]
    ]
    earlier = graph.aget_state_history(config, before=history[2].config, limit=2)
    assert [s.config async for s in earlier] == [s.config for s in history[3:5]]
    inputs = graph.aget_state_history(config, filter={"source": "input"})
    assert [s.metadata["step"] async for s in inputs if s.metadata is not None] == [9, 4, -1]

    reference = _agent(ScriptedModel(script=_weather_script()), InMemorySaver())
    expected = await _three_turns(reference, config)
    assert [_shape(s) for s in history] == [_shape(s) for s in expected]

    assert await conn.fetchval(
        "SELECT session_id FROM langgraph_threads WHERE thread_id = 'trip'"
    ) == (session.id)
    assert (await _graph_rows(conn, "trip"))["langgraph_checkpoints"] == len(history)


async def test_a_tool_call_round_trip_is_read_back_by_another_process(
    store: SessionStore, dsn: str
) -> None:
    """The AI message with its tool call, the tool's message (content and artifact) and
    the final answer come back exactly as the graph made them, read by a graph compiled
    on a new saver of another store (another process); that graph carries on from them."""
    session = await store.sessions.create("u1")
    config = _config("weather", session.id)
    graph = _agent(
        ScriptedModel(script=[_call("Paris", 1), AIMessage("18 °C, sunny.", id="ai-2")]),
        SessionStoreSaver(store),
    )
    made = (await graph.ainvoke(_say("Weather in Paris?", 0), config))["messages"]

    async with sessionstore.connect(dsn, **store_overrides()) as other:
        model = ScriptedModel(script=[AIMessage("You're welcome.", id="ai-3")])
        later = _agent(model, SessionStoreSaver(other))
        state = await later.aget_state(config)
        read = state.values["messages"]
        assert read == made
        assert [m.type for m in read] == ["human", "ai", "tool", "ai"]
        assert isinstance(read[1], AIMessage)
        assert read[1].tool_calls == _call("Paris", 1).tool_calls
        assert isinstance(read[2], ToolMessage)
        assert (read[2].tool_call_id, read[2].content, read[2].artifact) == (
            "call-1",
            "18 °C, sunny",
            {"city": "Paris", "celsius": 18.0, "sky": "sunny"},
        )
        assert state.next == ()

        thanks = HumanMessage("Thanks!", id="human-1")
        await later.ainvoke({"messages": [thanks]}, config)
        assert model.prompts == [[*made, thanks]]
    assert _texts((await graph.aget_state(config)).values["messages"])[-2:] == [
        ("human", "Thanks!"),
        ("ai", "You're welcome."),
    ]


def _approval(drafted: list[str]) -> StateGraph[MessagesState, None, MessagesState, MessagesState]:
    """Drafts a booking, then asks a human (``interrupt``) before confirming it."""

    def draft(state: MessagesState) -> dict[str, list[AnyMessage]]:
        drafted.append(str(state["messages"][-1].content))
        return {"messages": [AIMessage("I can book the 9:40 train to Porto.", id="draft")]}

    def confirm(state: MessagesState) -> dict[str, list[AnyMessage]]:
        answer = interrupt({"question": "Book the 9:40 train?", "price": 31.5})
        text = "Booked." if answer == "yes" else f"Not booked ({answer})."
        return {"messages": [AIMessage(text, id="outcome")]}

    builder = StateGraph(MessagesState)
    builder.add_node("draft", draft)
    builder.add_node("confirm", confirm)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "confirm")
    builder.add_edge("confirm", END)
    return builder


async def test_an_interrupted_run_is_resumed_by_another_process(
    store: SessionStore, dsn: str
) -> None:
    """A node calls ``interrupt``: the run stops and the stored state shows the pending
    interrupt and the node waiting; a graph on a new saver of another store reads the
    same interrupt and resumes it with ``Command(resume=...)``; the run completes
    without running the nodes before the interrupt again."""
    session = await store.sessions.create("u1")
    config = _config("booking", session.id)
    drafted: list[str] = []
    graph = _approval(drafted).compile(checkpointer=SessionStoreSaver(store))
    stopped = await graph.ainvoke(_say("Book me a train to Porto", 0), config)
    (pending,) = stopped["__interrupt__"]
    assert pending.value == {"question": "Book the 9:40 train?", "price": 31.5}

    state = await graph.aget_state(config)
    assert state.next == ("confirm",)
    assert state.interrupts == (pending,)
    assert [t.interrupts for t in state.tasks] == [(pending,)]
    assert _texts(state.values["messages"]) == [
        ("human", "Book me a train to Porto"),
        ("ai", "I can book the 9:40 train to Porto."),
    ]

    async with sessionstore.connect(dsn, **store_overrides()) as other:
        resumed = _approval(drafted).compile(checkpointer=SessionStoreSaver(other))
        assert (await resumed.aget_state(config)).interrupts == (pending,)
        done = await resumed.ainvoke(Command(resume="yes"), config)
        assert _texts(done["messages"])[-1] == ("ai", "Booked.")
        assert "__interrupt__" not in done
        final = await resumed.aget_state(config)
    assert (final.next, final.interrupts) == ((), ())
    assert _texts(final.values["messages"]) == [
        ("human", "Book me a train to Porto"),
        ("ai", "I can book the 9:40 train to Porto."),
        ("ai", "Booked."),
    ]
    assert drafted == ["Book me a train to Porto"]
    assert (await graph.aget_state(config)).values == final.values


# -- sessionstore's guarantees ---------------------------------------------------------


async def test_threads_of_two_sessions_stay_apart(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """Two threads bound to two sessions each read back only their own messages and
    checkpoints; a thread stays bound to its session: naming it with another session's
    id is refused (``ConflictError``) and changes nothing."""
    one = await store.sessions.create("u1")
    two = await store.sessions.create("u2")
    saver = SessionStoreSaver(store)
    graph = _echo(saver)
    await graph.ainvoke(_say("first of one", 0), _config("one", one.id))
    await graph.ainvoke(_say("first of two", 1), _config("two", two.id))
    await graph.ainvoke(_say("second of one", 2), _config("one", one.id))

    first = (await graph.aget_state(_config("one", one.id))).values["messages"]
    assert _texts(first) == [
        ("human", "first of one"),
        ("ai", "echo: first of one"),
        ("human", "second of one"),
        ("ai", "echo: second of one"),
    ]
    second = (await graph.aget_state(_config("two", two.id))).values["messages"]
    assert _texts(second) == [("human", "first of two"), ("ai", "echo: first of two")]
    listed = [t async for t in saver.alist(_config("two", two.id))]
    assert listed
    assert {t.config["configurable"]["thread_id"] for t in listed} == {"two"}
    bound = await conn.fetch("SELECT thread_id, session_id FROM langgraph_threads ORDER BY 1")
    assert [tuple(r) for r in bound] == [("one", one.id), ("two", two.id)]

    before = await _graph_rows(conn)
    with pytest.raises(ConflictError):
        await graph.ainvoke(_say("hijack", 3), _config("one", two.id))
    assert await _graph_rows(conn) == before
    assert (await graph.aget_state(_config("one", one.id))).values["messages"] == first


async def test_under_rls_a_user_cannot_read_or_write_another_users_thread(
    supabase_store: SessionStore, pg_server: TestServer, supabase_database: str
) -> None:
    """Under ``as_user`` a saver reaches only its user's threads: Bob finds nothing of
    Alice's thread (``aget_tuple`` is None, ``alist`` empty), whichever session he names,
    cannot write to it or delete it, and Alice's checkpoints stay as she left them."""
    alice, bob = supabase_store.as_user(ALICE), supabase_store.as_user(BOB)
    alice_session = await alice.sessions.create(ALICE)
    bob_session = await bob.sessions.create(BOB)
    alices = _echo(SessionStoreSaver(alice))
    mine = _config("alice-plans", alice_session.id)
    await alices.ainvoke(_say("my secret plans", 0), mine)
    kept = await alices.aget_state(mine)

    bob_saver = SessionStoreSaver(bob)
    bobs = _echo(bob_saver)
    await bobs.ainvoke(_say("bob's own", 1), _config("bob-chat", bob_session.id))
    conn = await asyncpg.connect(pg_server.admin_dsn_for(supabase_database))
    try:
        before = await _graph_rows(conn)
        assert before["langgraph_threads"] == 2
        for session_id in (alice_session.id, bob_session.id):
            theirs = _config("alice-plans", session_id)
            assert await bob_saver.aget_tuple(theirs) is None
            assert [t async for t in bob_saver.alist(theirs)] == []
        assert {t.config["configurable"]["thread_id"] async for t in bob_saver.alist(None)} == {
            "bob-chat"
        }
        with pytest.raises(NotFoundError):  # Alice's session is absent to Bob
            await bobs.ainvoke(_say("let me in", 2), _config("alice-plans", alice_session.id))
        with pytest.raises(ConflictError):  # the thread is taken, by a session he cannot see
            await bobs.ainvoke(_say("let me in", 3), _config("alice-plans", bob_session.id))
        await bob_saver.adelete_thread("alice-plans")  # invisible: nothing to delete
        assert await _graph_rows(conn) == before
    finally:
        await conn.close()
    again = await alices.aget_state(mine)
    assert (again.values, again.config) == (kept.values, kept.config)


async def test_deleting_a_session_deletes_its_threads(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """``sessions.delete`` takes the session's threads along with every checkpoint, blob
    and write (``aget_tuple`` is None, no row left); other sessions' threads and a thread
    of no session stay; the deleted session's thread takes no new checkpoint."""
    gone = await store.sessions.create("u1")
    kept = await store.sessions.create("u1")
    saver = SessionStoreSaver(store)
    graph = _echo(saver)
    await graph.ainvoke(_say("to forget", 0), _config("gone", gone.id))
    await graph.ainvoke(_say("to forget too", 1), _config("gone-too", gone.id))
    await graph.ainvoke(_say("to keep", 2), _config("kept", kept.id))
    await graph.ainvoke(_say("no session", 3), _config("free"))
    assert (await _graph_rows(conn, "gone"))["langgraph_checkpoints"] > 0
    kept_rows = await _graph_rows(conn, "kept")
    free_rows = await _graph_rows(conn, "free")

    await store.sessions.delete(gone.id)
    for thread in ("gone", "gone-too"):
        assert await saver.aget_tuple(_config(thread)) is None
        assert await saver.aget_tuple(_config(thread, gone.id)) is None
        assert [t async for t in saver.alist(_config(thread))] == []
        assert await _graph_rows(conn, thread) == dict.fromkeys(GRAPH_TABLES, 0)
    assert await _graph_rows(conn, "kept") == kept_rows
    assert await _graph_rows(conn, "free") == free_rows
    assert _texts((await graph.aget_state(_config("kept", kept.id))).values["messages"]) == [
        ("human", "to keep"),
        ("ai", "echo: to keep"),
    ]
    with pytest.raises(NotFoundError):
        await graph.ainvoke(_say("back again", 4), _config("gone", gone.id))
    assert await _graph_rows(conn, "gone") == dict.fromkeys(GRAPH_TABLES, 0)


async def test_purge_user_deletes_the_threads_of_every_session_of_the_user(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    """``purge_user`` takes the threads of each of the user's sessions along; another
    user's thread stays."""
    saver = SessionStoreSaver(store)
    graph = _echo(saver)
    for n, user in enumerate(("u1", "u1", "u2")):
        session = await store.sessions.create(user)
        await graph.ainvoke(_say(f"from {user}", n), _config(f"{user}-{n}", session.id))
    other = await _graph_rows(conn, "u2-2")

    counts = await store.purge_user("u1")
    assert counts.sessions == 2
    for thread in ("u1-0", "u1-1"):
        assert await saver.aget_tuple(_config(thread)) is None
        assert await _graph_rows(conn, thread) == dict.fromkeys(GRAPH_TABLES, 0)
    assert await _graph_rows(conn, "u2-2") == other
    assert await saver.aget_tuple(_config("u2-2")) is not None
