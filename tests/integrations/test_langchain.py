"""``sessionstore.integrations.langchain.SessionStoreChatMessageHistory``: LangChain's
chat message history on sessionstore — driven by LangChain's own
``RunnableWithMessageHistory``, checked against the interface's documented behaviour,
and against sessionstore's guarantees (session expiry, RLS, all-or-nothing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import asyncpg
import pytest

pytest.importorskip("langchain_core")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import (
    FakeMessagesListChatModel,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

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
from sessionstore.integrations.langchain import (
    FORMAT,
    SessionStoreChatMessageHistory,
)

from ..conftest import store_overrides
from ..helpers import expire, row_counts
from ..servers import TestServer
from ..strategies import ANY_CHAR

# RunnableWithMessageHistory is deprecated (LangChain 1.3.3, removal in 2.0) yet is the
# loop this adapter exists for.
pytestmark = pytest.mark.filterwarnings(
    "ignore::langchain_core._api.deprecation.LangChainDeprecationWarning"
)

ALICE = "6f1c1a52-0000-4000-8000-00000000a11c"
BOB = "6f1c1a52-0000-4000-8000-000000000b0b"


class PromptRecorder(BaseCallbackHandler):
    """Records every prompt a chat model receives."""

    def __init__(self) -> None:
        self.prompts: list[list[BaseMessage]] = []

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        self.prompts.extend(list(batch) for batch in messages)


def _history_factory(
    store: SessionStore, session_id: UUID, **options: Any
) -> Callable[[str], SessionStoreChatMessageHistory]:
    def get_session_history(continuation_id: str) -> SessionStoreChatMessageHistory:
        return SessionStoreChatMessageHistory(
            store, continuation_id, session_id=session_id, **options
        )

    return get_session_history


def _question_chain(
    store: SessionStore, session_id: UUID, answers: list[str], **options: Any
) -> RunnableWithMessageHistory:
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You answer questions about geography."),
            MessagesPlaceholder("history"),
            ("human", "{question}"),
        ]
    )
    model = FakeMessagesListChatModel(responses=[AIMessage(a) for a in answers])
    return RunnableWithMessageHistory(
        prompt | model,
        _history_factory(store, session_id, **options),
        input_messages_key="question",
        history_messages_key="history",
    )


async def _run_two_questions(
    store: SessionStore, cid: str, session_id: UUID, **options: Any
) -> tuple[PromptRecorder, list[BaseMessage]]:
    chain = _question_chain(store, session_id, ["Paris.", "About 2.1 million."], **options)
    recorder = PromptRecorder()
    config: Any = {"configurable": {"session_id": cid}, "callbacks": [recorder]}
    first = await chain.ainvoke({"question": "Capital of France?"}, config=config)
    second = await chain.ainvoke({"question": "How many people live there?"}, config=config)
    return recorder, [first, second]


# -- LangChain's real loop -------------------------------------------------------------


async def test_runnable_with_message_history_feeds_the_stored_exchange_back(
    store: SessionStore,
) -> None:
    session = await store.sessions.create(user_id="u1")
    recorder, (first, second) = await _run_two_questions(store, "geo-1", session.id)

    assert isinstance(first, AIMessage)
    assert first.content == "Paris."
    # The second prompt held the first exchange, read back from the database.
    assert recorder.prompts[1] == [
        SystemMessage("You answer questions about geography."),
        HumanMessage("Capital of France?"),
        first,
        HumanMessage("How many people live there?"),
    ]
    expected = [
        HumanMessage("Capital of France?"),
        first,
        HumanMessage("How many people live there?"),
        second,
    ]
    history = SessionStoreChatMessageHistory(store, "geo-1", session_id=session.id)
    assert await history.aget_messages() == expected

    stored = await store.messages.history(ContinuationId("geo-1"))
    assert [(m.seq, m.role) for m in stored] == [
        (1, MessageRole.USER),
        (2, MessageRole.ASSISTANT),
        (3, MessageRole.USER),
        (4, MessageRole.ASSISTANT),
    ]
    assert [m.metadata["type"] for m in stored] == ["human", "ai", "human", "ai"]
    assert all(m.metadata["format"] == FORMAT for m in stored)
    assert stored[1].metadata["id"] == first.id
    conversation = await store.conversations.get(ContinuationId("geo-1"))
    assert conversation.session_id == session.id
    # Each ainvoke stored its exchange as one batch: one turn of the session.
    assert (await store.sessions.get(session.id)).turn_count == 2


async def test_a_tool_calling_exchange_is_stored_and_read_back(store: SessionStore) -> None:
    session = await store.sessions.create(user_id="u1")
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1", "type": "tool_call"}
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Use tools."), MessagesPlaceholder("history"), MessagesPlaceholder("input")]
    )
    model = FakeMessagesListChatModel(
        responses=[
            AIMessage(
                "",
                tool_calls=[call],
                usage_metadata={"input_tokens": 20, "output_tokens": 7, "total_tokens": 27},
            ),
            AIMessage("It is 18 °C in Paris."),
        ]
    )
    chain = RunnableWithMessageHistory(
        prompt | model,
        _history_factory(store, session.id),
        input_messages_key="input",
        history_messages_key="history",
    )
    recorder = PromptRecorder()
    config: Any = {"configurable": {"session_id": "tools-1"}, "callbacks": [recorder]}
    ask = HumanMessage("Weather in Paris?")
    called = await chain.ainvoke({"input": [ask]}, config=config)
    assert isinstance(called, AIMessage)
    assert called.tool_calls == [call]
    result = ToolMessage(
        "18", tool_call_id="call_1", artifact={"celsius": 18.0, "raw": [1, 2]}, status="success"
    )
    answer = await chain.ainvoke({"input": [result]}, config=config)

    assert recorder.prompts[1] == [SystemMessage("Use tools."), ask, called, result]
    history = SessionStoreChatMessageHistory(store, "tools-1", session_id=session.id)
    read = await history.aget_messages()
    assert read == [ask, called, result, answer]
    assert isinstance(read[1], AIMessage)
    assert read[1].tool_calls == [call]
    assert read[1].usage_metadata == called.usage_metadata
    assert isinstance(read[2], ToolMessage)
    assert (read[2].artifact, read[2].status) == ({"celsius": 18.0, "raw": [1, 2]}, "success")

    stored = await store.messages.history(ContinuationId("tools-1"))
    assert stored[1].metadata["tool_call_ids"] == ["call_1"]
    assert stored[1].tokens == 27
    assert (stored[2].role, stored[2].metadata["tool_call_id"]) == (MessageRole.ASSISTANT, "call_1")
    assert (await store.sessions.get(session.id)).total_tokens == 27


# -- the interface's documented behaviour ---------------------------------------------


async def test_order_is_kept_and_each_batch_is_one_turn(store: SessionStore) -> None:
    session = await store.sessions.create(user_id="u1")
    history = SessionStoreChatMessageHistory(store, "order", session_id=session.id)
    assert await history.aget_messages() == []
    batch = [SystemMessage("Meow"), AIMessage("woof"), HumanMessage("bark")]
    await history.aadd_messages(batch)
    assert await history.aget_messages() == batch
    await history.aadd_messages(batch)
    assert await history.aget_messages() == batch + batch
    await history.aadd_messages([])  # nothing to do, not an error
    stored = await store.messages.history(ContinuationId("order"))
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5, 6]
    assert [m.role for m in stored[:3]] == [
        MessageRole.SYSTEM,
        MessageRole.ASSISTANT,
        MessageRole.USER,
    ]
    assert (await store.sessions.get(session.id)).turn_count == 2


async def test_aclear_empties_the_history_and_the_next_message_starts_over(
    store: SessionStore,
) -> None:
    history = SessionStoreChatMessageHistory(store, "clear-me")
    await history.aclear()  # no conversation yet: nothing to clear
    await history.aadd_messages([HumanMessage("a"), AIMessage("b")])
    await history.aclear()
    assert await history.aget_messages() == []
    await history.aadd_messages([HumanMessage("c")])
    assert await history.aget_messages() == [HumanMessage("c")]
    assert [m.seq for m in await store.messages.history(ContinuationId("clear-me"))] == [1]


async def test_two_objects_on_one_continuation_id_share_it_and_ids_are_isolated(
    store: SessionStore,
) -> None:
    one = SessionStoreChatMessageHistory(store, "shared")
    two = SessionStoreChatMessageHistory(store, "shared")
    other = SessionStoreChatMessageHistory(store, "other")
    await one.aadd_messages([HumanMessage("from one")])
    await two.aadd_messages([AIMessage("from two")])
    await other.aadd_messages([HumanMessage("elsewhere")])
    both = [HumanMessage("from one"), AIMessage("from two")]
    assert await one.aget_messages() == both
    assert await two.aget_messages() == both
    assert await other.aget_messages() == [HumanMessage("elsewhere")]
    await two.aclear()
    assert await one.aget_messages() == []
    assert await other.aget_messages() == [HumanMessage("elsewhere")]


async def test_concurrent_appends_lose_nothing_and_keep_each_batch_together(
    store: SessionStore,
) -> None:
    session = await store.sessions.create(user_id="u1")
    shared = SessionStoreChatMessageHistory(store, "busy", session_id=session.id)

    async def exchange(i: int) -> None:
        # Half through one object, half through fresh ones racing to create the
        # conversation.
        history = (
            shared
            if i % 2
            else SessionStoreChatMessageHistory(store, "busy", session_id=session.id)
        )
        await history.aadd_messages([HumanMessage(f"q{i}"), AIMessage(f"a{i}")])

    await asyncio.gather(*(exchange(i) for i in range(30)))
    read = await shared.aget_messages()
    assert len(read) == 60
    assert sorted(str(m.content) for m in read) == sorted(
        [f"q{i}" for i in range(30)] + [f"a{i}" for i in range(30)]
    )
    for question, answer in zip(read[::2], read[1::2], strict=True):
        assert (question.type, answer.type) == ("human", "ai")
        assert str(answer.content) == "a" + str(question.content)[1:]
    assert (await store.sessions.get(session.id)).turn_count == 30
    assert (await store.conversations.get(ContinuationId("busy"))).message_count == 60


async def test_sync_methods_work_from_a_thread_without_a_running_loop(
    store: SessionStore,
) -> None:
    session = await store.sessions.create(user_id="u1")
    history = SessionStoreChatMessageHistory(store, "sync", session_id=session.id)

    def work() -> list[list[BaseMessage]]:
        assert history.messages == []
        history.add_messages([HumanMessage("a"), AIMessage("b")])
        history.add_user_message("c")
        history.add_ai_message(AIMessage("d", id="ai-d"))
        seen = [history.messages]
        history.clear()
        seen.append(history.messages)
        history.messages = [SystemMessage("replaced")]
        seen.append(history.messages)
        return seen

    full, cleared, replaced = await asyncio.to_thread(work)
    assert full == [HumanMessage("a"), AIMessage("b"), HumanMessage("c"), AIMessage("d", id="ai-d")]
    assert cleared == []
    assert replaced == [SystemMessage("replaced")]
    assert await history.aget_messages() == [SystemMessage("replaced")]


async def test_langchains_sync_loop_works_from_a_worker_thread(store: SessionStore) -> None:
    # get_session_history runs in the worker thread, where no loop runs: the factory
    # passes the store's loop.
    session = await store.sessions.create(user_id="u1")
    loop = asyncio.get_running_loop()
    chain = _question_chain(store, session.id, ["Paris.", "About 2.1 million."], loop=loop)
    recorder = PromptRecorder()
    config: Any = {"configurable": {"session_id": "geo-sync"}, "callbacks": [recorder]}
    first = await asyncio.to_thread(chain.invoke, {"question": "Capital of France?"}, config)
    second = await asyncio.to_thread(chain.invoke, {"question": "And its size?"}, config)
    assert recorder.prompts[1][1:] == [
        HumanMessage("Capital of France?"),
        first,
        HumanMessage("And its size?"),
    ]
    history = SessionStoreChatMessageHistory(store, "geo-sync", session_id=session.id)
    assert await history.aget_messages() == [
        HumanMessage("Capital of France?"),
        first,
        HumanMessage("And its size?"),
        second,
    ]


@pytest.mark.parametrize(
    ("call", "async_name"),
    [
        (lambda h: h.messages, "aget_messages"),
        (lambda h: h.add_messages([HumanMessage("x")]), "aadd_messages"),
        (lambda h: h.add_user_message("x"), "aadd_messages"),
        (lambda h: h.clear(), "aclear"),
        (lambda h: str(h), "aget_messages"),
    ],
    ids=["messages", "add_messages", "add_user_message", "clear", "str"],
)
async def test_sync_methods_inside_a_running_loop_name_the_async_method(
    store: SessionStore,
    conn: asyncpg.Connection,
    call: Callable[[SessionStoreChatMessageHistory], object],
    async_name: str,
) -> None:
    history = SessionStoreChatMessageHistory(store, "in-loop")
    await history.aadd_messages([HumanMessage("kept")])
    before = await row_counts(conn)
    with pytest.raises(RuntimeError, match=rf"running event loop.*await history\.{async_name}\("):
        call(history)
    assert await row_counts(conn) == before
    assert await history.aget_messages() == [HumanMessage("kept")]


async def test_a_synchronous_program_uses_the_store_on_its_own_loop(dsn: str) -> None:
    def program() -> tuple[list[BaseMessage], list[BaseMessage], str]:
        loop = asyncio.new_event_loop()
        try:
            opened = loop.run_until_complete(sessionstore.connect(dsn, **store_overrides()))
            try:
                history = SessionStoreChatMessageHistory(opened, "plain-sync", loop=loop)
                history.add_messages([HumanMessage("hi"), AIMessage("hello")])
                read = history.messages
                history.clear()
                # Made outside any loop and without loop=: the error says what to do.
                unbound = SessionStoreChatMessageHistory(opened, "plain-sync")
                try:
                    unbound.messages  # noqa: B018
                except RuntimeError as exc:
                    problem = str(exc)
                else:
                    problem = ""
                return read, history.messages, problem
            finally:
                loop.run_until_complete(opened.close())
        finally:
            loop.close()

    read, after_clear, problem = await asyncio.to_thread(program)
    assert read == [HumanMessage("hi"), AIMessage("hello")]
    assert after_clear == []
    assert "pass loop=" in problem


def _every_message_type() -> list[BaseMessage]:
    blocks: list[str | dict[str, Any]] = [
        {"type": "text", "text": "look: "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        "trailing plain string",
    ]
    return [
        SystemMessage("be terse", id="sys-1", additional_kwargs={"cache": {"ttl": 5}}),
        HumanMessage(blocks, name="ann", id="h-1", additional_kwargs={"x": [1, 2.5, None]}),
        AIMessage(
            "calling",
            id="ai-1",
            name="bot",
            tool_calls=[
                {
                    "name": "search",
                    "args": {"q": "ünïcode \x00 nul"},
                    "id": "c1",
                    "type": "tool_call",
                }
            ],
            invalid_tool_calls=[
                {
                    "name": "broken",
                    "args": "{not json",
                    "id": "c2",
                    "error": "bad args",
                    "type": "invalid_tool_call",
                }
            ],
            usage_metadata={
                "input_tokens": 10,
                "output_tokens": 5,
                "total_tokens": 15,
                "input_token_details": {"cache_read": 3},
            },
            response_metadata={"model_name": "fake", "finish_reason": "tool_calls", "f": 1e300},
            additional_kwargs={"refusal": None},
        ),
        ToolMessage(
            [{"type": "text", "text": "found"}],
            tool_call_id="c1",
            artifact={"hits": [{"id": 1, "score": 0.5}]},
            status="error",
            name="search",
            id="t-1",
        ),
        ChatMessage(content="I object", role="critic", id="ch-1"),
        ChatMessage(content="as the user", role="user"),
        FunctionMessage(content="42", name="answer", id="f-1"),
        AIMessageChunk(content="part", id="chunk-1"),
        HumanMessage("\ud800 lone surrogate and \x00 NUL"),
    ]


async def test_every_message_type_round_trips_exactly(store: SessionStore) -> None:
    originals = _every_message_type()
    history = SessionStoreChatMessageHistory(store, "types")
    await history.aadd_messages(originals)
    read = await SessionStoreChatMessageHistory(store, "types").aget_messages()
    assert read == originals
    assert [type(m) for m in read] == [type(m) for m in originals]
    stored = await store.messages.history(ContinuationId("types"))
    assert [(m.role.value, m.metadata["type"]) for m in stored] == [
        ("system", "system"),
        ("user", "human"),
        ("assistant", "ai"),
        ("assistant", "tool"),
        ("assistant", "chat"),
        ("user", "chat"),
        ("assistant", "function"),
        ("assistant", "AIMessageChunk"),
        ("user", "human"),
    ]
    assert stored[4].metadata["role"] == "critic"
    assert stored[2].tokens == 15


# Any code point: NULs and lone surrogates included.
TEXT = st.text(ANY_CHAR, max_size=20)
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
CONTENT = TEXT | st.lists(
    TEXT | st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=3
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    content=CONTENT,
    kwargs=st.dictionaries(TEXT, JSON, max_size=3),
    kind=st.sampled_from([HumanMessage, AIMessage, SystemMessage, ToolMessage]),
)
async def test_any_content_and_additional_kwargs_round_trip(
    store: SessionStore, content: Any, kwargs: dict[str, Any], kind: type[BaseMessage]
) -> None:
    history = SessionStoreChatMessageHistory(store, f"prop-{uuid4()}")
    if kind is ToolMessage:
        message: BaseMessage = ToolMessage(
            content, tool_call_id="c", artifact=kwargs, additional_kwargs=kwargs
        )
    else:
        message = kind(content, additional_kwargs=kwargs)
    await history.aadd_messages([message])
    assert await history.aget_messages() == [message]


async def test_plain_messages_written_by_others_read_as_text(store: SessionStore) -> None:
    turn = await store.add_turn("mixed", "user", "hi from the MCP server")
    history = SessionStoreChatMessageHistory(store, "mixed")
    await history.aadd_messages([AIMessage("hello from LangChain")])
    assert await history.aget_messages() == [
        HumanMessage("hi from the MCP server", id=str(turn.message.id)),
        AIMessage("hello from LangChain"),
    ]


async def test_long_histories_are_read_whole_and_window_reads_the_latest(
    store: SessionStore,
) -> None:
    everything: list[BaseMessage] = [HumanMessage(f"m{i}") for i in range(2_345)]
    await SessionStoreChatMessageHistory(store, "long").aadd_messages(everything)
    assert await SessionStoreChatMessageHistory(store, "long").aget_messages() == everything
    for window in (1, 5, 1_000, 1_500, 5_000):
        windowed = SessionStoreChatMessageHistory(store, "long", window=window)
        assert await windowed.aget_messages() == everything[-window:]


class _Counted(NamedTuple):
    store: SessionStore
    queries: list[str]


@pytest.fixture
async def counted(dsn: str) -> AsyncIterator[_Counted]:
    """A store on one connection whose every query is recorded."""
    queries: list[str] = []

    async def count_queries(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda record: queries.append(record.query))

    overrides = {**store_overrides(), "min_size": 1, "max_size": 1}
    async with sessionstore.connect(dsn, configure=count_queries, **overrides) as opened:
        yield _Counted(opened, queries)


async def test_round_trips_per_call(counted: _Counted) -> None:
    store, queries = counted
    session = await store.sessions.create(user_id="u1")

    async def trips(cid: str) -> list[int]:
        made: list[int] = []

        async def step(call: Callable[[], Awaitable[object]]) -> None:
            queries.clear()
            await call()
            made.append(len(queries))

        first = SessionStoreChatMessageHistory(store, cid, session_id=session.id)
        await step(first.aget_messages)  # no conversation yet
        # A new conversation: the session's status, get-or-create, the append.
        await step(lambda: first.aadd_messages([HumanMessage("a"), AIMessage("b")]))
        later = SessionStoreChatMessageHistory(store, cid, session_id=session.id)
        await step(later.aget_messages)
        await step(lambda: later.aadd_messages([HumanMessage("c"), AIMessage("d")]))
        return made

    await trips("warm-up")  # the driver's one-time type introspection
    # A bound history's read is three queries sent at once (the session — from the
    # session cache where it is on, off here —, the binding, the messages).
    assert await trips("trips") == [3, 3, 3, 1]


# -- input checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ("hello", "messages"),
        (HumanMessage("one, not a list"), "messages"),
        ([HumanMessage("ok"), {"role": "user", "content": "x"}], "messages[1]"),
        ([HumanMessage("ok"), RemoveMessage(id="m1")], "messages[1].type"),
        (
            [HumanMessage("ok"), ToolMessage("x", tool_call_id="c", artifact=object())],
            "messages[1]",
        ),
        ([AIMessage("x", additional_kwargs={"when": {1, 2}})], "messages[0]"),
    ],
    ids=["str", "bare-message", "dict", "remove", "artifact", "set"],
)
async def test_bad_messages_are_refused_and_nothing_is_written(
    store: SessionStore, conn: asyncpg.Connection, messages: Any, field: str
) -> None:
    session = await store.sessions.create(user_id="u1")
    history = SessionStoreChatMessageHistory(store, "bad", session_id=session.id)
    before = await row_counts(conn)
    with pytest.raises(InvalidInputError) as caught:
        await history.aadd_messages(messages)
    assert caught.value.field == field
    with pytest.raises(InvalidInputError) as caught_sync:
        await asyncio.to_thread(history.add_messages, messages)
    assert caught_sync.value.field == field
    assert await row_counts(conn) == before


async def test_bad_arguments_are_refused(store: SessionStore) -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: SessionStoreChatMessageHistory(object(), "c"), "store"),  # type: ignore[arg-type]
        (lambda: SessionStoreChatMessageHistory(store, ""), "continuation_id"),
        (lambda: SessionStoreChatMessageHistory(store, "x" * 256), "continuation_id"),
        (lambda: SessionStoreChatMessageHistory(store, "c", session_id="nope"), "session_id"),
        (lambda: SessionStoreChatMessageHistory(store, "c", window=0), "window"),
        (lambda: SessionStoreChatMessageHistory(store, "c", write_behind="yes"), "write_behind"),  # type: ignore[arg-type]
        (lambda: SessionStoreChatMessageHistory(store.as_user(ALICE), "c"), "session_id"),
        (
            lambda: SessionStoreChatMessageHistory(
                store.as_user(ALICE), "c", session_id=uuid4(), write_behind=True
            ),
            "write_behind",
        ),
        (lambda: SessionStoreChatMessageHistory(store, "c", loop="main"), "loop"),  # type: ignore[arg-type]
    ]
    for make, field in cases:
        with pytest.raises(InvalidInputError) as caught:
            make()
        assert caught.value.field == field


# -- sessionstore's guarantees ---------------------------------------------------------


@pytest.mark.parametrize("existing", [False, True], ids=["new-conversation", "existing"])
async def test_a_dead_session_refuses_writes_and_nothing_is_written(
    store: SessionStore, conn: asyncpg.Connection, existing: bool
) -> None:
    expired = await store.sessions.create(user_id="u1")
    completed = await store.sessions.create(user_id="u1")
    paused = await store.sessions.create(user_id="u1")
    for session, cid in ((expired, "exp"), (completed, "done"), (paused, "held")):
        if existing:
            await SessionStoreChatMessageHistory(store, cid, session_id=session.id).aadd_messages(
                [HumanMessage("before")]
            )
    await expire(conn, expired.id)
    await store.sessions.complete(completed.id)
    await store.sessions.pause(paused.id)
    before = await row_counts(conn)
    refusals: list[tuple[UUID, str, type[Exception]]] = [
        (expired.id, "exp", SessionExpiredError),
        (completed.id, "done", InvalidStateError),
        (paused.id, "held", InvalidStateError),
        (uuid4(), "ghost", NotFoundError),
    ]
    for session_id, cid, error in refusals:
        history = SessionStoreChatMessageHistory(store, cid, session_id=session_id)
        with pytest.raises(error):  # the read, before the model, already refuses
            await history.aget_messages()
        with pytest.raises(error):
            await history.aadd_messages([HumanMessage("after"), AIMessage("no")])
        fresh = SessionStoreChatMessageHistory(store, cid, session_id=session_id)
        with pytest.raises(error):
            await fresh.aadd_messages([HumanMessage("after")])
    assert await row_counts(conn) == before


async def test_a_conversation_of_another_session_refuses_writes(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    mine = await store.sessions.create(user_id="u1")
    theirs = await store.sessions.create(user_id="u2")
    await SessionStoreChatMessageHistory(store, "owned", session_id=theirs.id).aadd_messages(
        [HumanMessage("theirs")]
    )
    before = await row_counts(conn)
    with pytest.raises(ConflictError):
        await SessionStoreChatMessageHistory(store, "owned", session_id=mine.id).aadd_messages(
            [HumanMessage("mine")]
        )
    assert await row_counts(conn) == before


async def test_under_rls_a_user_cannot_read_or_write_another_users_history(
    supabase_store: SessionStore, pg_server: TestServer, supabase_database: str
) -> None:
    alice, bob = supabase_store.as_user(ALICE), supabase_store.as_user(BOB)
    alice_session = await alice.sessions.create(ALICE)
    bob_session = await bob.sessions.create(BOB)
    bobs = SessionStoreChatMessageHistory(bob, "bob-chat", session_id=bob_session.id)
    secret = [HumanMessage("my secret"), AIMessage("kept")]
    await bobs.aadd_messages(secret)
    assert await bobs.aget_messages() == secret

    conn = await asyncpg.connect(pg_server.admin_dsn_for(supabase_database))
    try:
        before = await row_counts(conn)
        # Alice naming Bob's conversation, through Bob's session or her own.
        through_bobs = SessionStoreChatMessageHistory(alice, "bob-chat", session_id=bob_session.id)
        with pytest.raises(NotFoundError):  # Bob's session is absent to her
            await through_bobs.aget_messages()
        with pytest.raises(NotFoundError):
            await through_bobs.aadd_messages([HumanMessage("let me in")])
        through_hers = SessionStoreChatMessageHistory(
            alice, "bob-chat", session_id=alice_session.id
        )
        assert await through_hers.aget_messages() == []
        with pytest.raises(PermissionDeniedError):
            await through_hers.aadd_messages([HumanMessage("let me in")])
        await through_hers.aclear()  # invisible: nothing to clear
        assert await row_counts(conn) == before
    finally:
        await conn.close()
    assert await bobs.aget_messages() == secret
    # Alice's own conversation works under her policies.
    hers = SessionStoreChatMessageHistory(alice, "alice-chat", session_id=alice_session.id)
    await hers.aadd_messages([HumanMessage("mine")])
    assert await hers.aget_messages() == [HumanMessage("mine")]


# -- write-behind ---------------------------------------------------------------------


async def test_write_behind_reads_its_own_writes_and_is_durable_after_flush(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    session = await store.sessions.create(user_id="u1")
    recorder, (first, second) = await _run_two_questions(
        store, "queued", session.id, write_behind=True
    )
    assert recorder.prompts[1][1:3] == [HumanMessage("Capital of France?"), first]
    await store.flush()
    stored = await conn.fetch(
        "SELECT m.seq, m.role::text FROM messages m JOIN conversations c"
        " ON c.id = m.conversation_id WHERE c.continuation_id = 'queued' ORDER BY m.seq"
    )
    assert [(r["seq"], r["role"]) for r in stored] == [
        (1, "user"),
        (2, "assistant"),
        (3, "user"),
        (4, "assistant"),
    ]
    history = SessionStoreChatMessageHistory(store, "queued", session_id=session.id)
    assert (await history.aget_messages())[3] == second
    # The queue writes each message as a turn of its own.
    assert (await store.sessions.get(session.id)).turn_count == 4


async def test_write_behind_reports_a_dead_session_at_write_time(
    store: SessionStore, conn: asyncpg.Connection
) -> None:
    session = await store.sessions.create(user_id="u1")
    await expire(conn, session.id)
    history = SessionStoreChatMessageHistory(
        store, "queued-late", session_id=session.id, write_behind=True
    )
    await history.aadd_messages([HumanMessage("lost")])  # accepted: checked at write time
    await store.flush()
    assert len(store.failed_writes()) == 1
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_a_history_bound_to_one_session_never_reads_or_clears_anothers(
    store: SessionStore,
) -> None:
    """Reads and clears check the binding as appends do: a history bound to Alice's
    session named Bob's conversation (a continuation id taken from the caller's config)
    read Bob's messages and cleared them, on the service path."""
    alice = await store.sessions.create(user_id="alice")
    bob = await store.sessions.create(user_id="bob")
    bobs = SessionStoreChatMessageHistory(store, "bob-chat", session_id=bob.id)
    await bobs.aadd_messages([HumanMessage("bob's secret")])
    intruder = SessionStoreChatMessageHistory(store, "bob-chat", session_id=alice.id)
    with pytest.raises(ConflictError):
        await intruder.aget_messages()
    with pytest.raises(ConflictError):
        await SessionStoreChatMessageHistory(store, "bob-chat", session_id=alice.id).aclear()
    assert await bobs.aget_messages() == [HumanMessage("bob's secret")]


async def test_a_new_history_on_an_existing_conversation_appends_in_one_round_trip(
    counted: _Counted,
) -> None:
    """A fresh object (RunnableWithMessageHistory makes one per call) that appends
    without reading first sends one statement; it took get, get_or_create and the append."""
    store, queries = counted
    session = await store.sessions.create(user_id="u1")
    await SessionStoreChatMessageHistory(store, "c", session_id=session.id).aadd_messages(
        [HumanMessage("a")]
    )
    queries.clear()
    await SessionStoreChatMessageHistory(store, "c", session_id=session.id).aadd_messages(
        [HumanMessage("b")]
    )
    assert len(queries) == 1
