"""OpenTelemetry: a span per public call with the database semantic conventions, the pool,
queue and cache metrics, nothing private in any of it, and nothing of OpenTelemetry
loaded (or needed) when it is not installed.

The spans and metrics are read with the real SDK's in-memory exporter and reader; the
store runs against the real PostgreSQL under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import sessionstore
from sessionstore import MessageRole, SessionStore, telemetry
from sessionstore.telemetry import connection_attributes

from ...conftest import admin_execute, drop_database, store_overrides
from ...servers import TestServer
from .conftest import in_memory_telemetry

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Otel:
    """The SDK's in-memory ends, wired to sessionstore for one test."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def names(self) -> list[str]:
        return [span.name for span in self.finished()]


@pytest.fixture
def otel() -> Iterator[Otel]:
    with in_memory_telemetry() as (spans, reader, tracer_provider):
        yield Otel(spans, reader, tracer_provider)


def expected_connection(dsn: str) -> dict[str, Any]:
    """What every span should say about where it ran, read from ``dsn`` independently."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = parts.hostname or query.get("host", [""])[0]
    port = parts.port or int(query.get("port", ["5432"])[0])
    return {
        "db.system.name": "postgresql",
        "db.namespace": parts.path.lstrip("/"),
        "server.address": host,
        "server.port": port,
    }


def by_name(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


async def test_a_span_per_public_call_named_and_attributed_by_the_conventions(
    store: SessionStore, dsn: str, otel: Otel
) -> None:
    db = expected_connection(dsn)["db.namespace"]
    s = await store.sessions.create("u1", title="t")
    await store.sessions.get(s.id)
    await store.sessions.update(s.id, metadata={"a": 1})
    await store.sessions.record_turn(s.id, tokens=2)
    await store.sessions.pause(s.id)
    await store.sessions.resume(s.id)
    await store.sessions.extend(s.id, timedelta(hours=1))
    await store.sessions.list(user_id="u1")
    c = await store.conversations.get_or_create("cont-1", session_id=s.id)
    await store.conversations.get(c.id)
    await store.conversations.get_by_continuation_id("cont-1")
    await store.conversations.list_for_session(s.id)
    await store.messages.add(c.id, MessageRole.USER, "a")
    await store.messages.add_many(c.id, [(MessageRole.USER, "b"), (MessageRole.ASSISTANT, "c")])
    await store.add_turn("cont-1", "user", "d", session_id=s.id, tokens=1)
    await store.messages.enqueue(c.id, MessageRole.ASSISTANT, "e")
    store.messages.enqueue_nowait(c.id, MessageRole.ASSISTANT, "f")
    await store.enqueue_turn("cont-1", "user", "g", session_id=s.id)
    await store.messages.history(c.id)  # with waiting messages: the queued repository's own
    await store.flush()
    await store.messages.history(c.id)
    await store.messages.count(c.id)
    await store.messages.pop(c.id)
    await store.messages.clear(c.id)
    await store.conversations.fork(c.id, continuation_id="cont-fork", session_id=s.id)
    await store.conversations.delete(c.id)
    await store.sessions.complete(s.id)
    await store.sessions.count_expired()
    await store.sessions.cleanup_expired()
    await store.sessions.delete(s.id)
    await store.purge_user("u1")

    spans = otel.finished()
    names = by_name(spans)
    calls = {
        "create sessions": 1,
        "get sessions": 1,
        "update sessions": 1,
        "record_turn sessions": 1,
        "pause sessions": 1,
        "resume sessions": 1,
        "extend sessions": 1,
        "list sessions": 1,
        "complete sessions": 1,
        "count_expired sessions": 1,
        "cleanup_expired sessions": 1,
        "delete sessions": 1,
        "get_or_create conversations": 1,
        "get conversations": 1,
        "get_by_continuation_id conversations": 1,
        "list_for_session conversations": 1,
        "fork conversations": 1,  # one span, though the queued repository calls the other
        "delete conversations": 1,
        "add messages": 1,
        "add_many messages": 1,
        "enqueue messages": 1,
        "enqueue_nowait messages": 1,
        "history messages": 2,  # one span each, though the queued one may call the other
        "count messages": 1,
        "pop messages": 1,
        "clear messages": 1,
        f"add_turn {db}": 1,
        f"enqueue_turn {db}": 1,
        f"flush {db}": 1,
        f"purge_user {db}": 1,
    }
    for name, count in calls.items():
        assert len(names.get(name, [])) == count, (name, sorted(names))
    writes = names.pop(f"write_behind {db}")
    assert set(names) == set(calls), sorted(set(names) ^ set(calls))

    internal = {"enqueue", "enqueue_nowait", "enqueue_turn", "flush"}
    connection = expected_connection(dsn)
    for span in spans:
        attributes = dict(span.attributes or {})
        operation = attributes["db.operation.name"]
        assert span.name.split(" ")[0] == operation
        assert {k: attributes[k] for k in connection} == connection, span.name
        assert span.kind is (SpanKind.INTERNAL if operation in internal else SpanKind.CLIENT)
        assert span.status.status_code is StatusCode.UNSET, span.name
        assert not span.events, span.name
        table = span.name.split(" ")[1]
        if table in ("sessions", "conversations", "messages"):
            assert attributes["db.collection.name"] == table
        else:
            assert "db.collection.name" not in attributes
        assert set(attributes) <= {
            *connection,
            "db.operation.name",
            "db.collection.name",
            "sessionstore.batch.size",
            "sessionstore.batch.kind",
        }, span.name

    # The writer's batches are spans of their own (one per attempt), in no caller's trace.
    batches = [dict(w.attributes or {}) for w in writes]
    assert sorted(str(b["sessionstore.batch.kind"]) for b in batches) == ["message", "turn"]
    assert sum(int(str(b["sessionstore.batch.size"])) for b in batches) == 3
    assert all(w.parent is None and w.kind is SpanKind.CLIENT for w in writes)


async def test_spans_join_the_callers_trace(store: SessionStore, otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("the-application")
    with tracer.start_as_current_span("handle request") as request:
        s = await store.sessions.create("u")
        await store.add_turn("c", "user", "hi", session_id=s.id)
    context = request.get_span_context()
    ours = [span for span in otel.finished() if span.name != "handle request"]
    assert len(ours) == 2
    for span in ours:
        assert span.parent is not None
        assert span.parent.span_id == context.span_id
        assert span.context is not None
        assert span.context.trace_id == context.trace_id


async def test_a_failed_call_has_error_type_and_status_and_no_message(
    store: SessionStore, otel: Otel
) -> None:
    missing = uuid.uuid4()
    with pytest.raises(sessionstore.NotFoundError):
        await store.sessions.get(missing)
    # Raised by the server (a foreign key), translated: the SQLSTATE is the error type.
    with pytest.raises(sessionstore.NotFoundError):
        await store.conversations.get_or_create("cont-x", session_id=missing)
    with pytest.raises(sessionstore.InvalidInputError):
        await store.messages.add(uuid.uuid4(), "nobody", "x")

    get, get_or_create, add = otel.finished()
    assert get.name == "get sessions"
    assert get.attributes is not None
    assert get.attributes["error.type"] == "sessionstore.errors.NotFoundError"
    assert "db.response.status_code" not in get.attributes
    assert get_or_create.attributes is not None
    assert get_or_create.attributes["error.type"] == "23503"
    assert get_or_create.attributes["db.response.status_code"] == "23503"
    assert add.attributes is not None
    assert add.attributes["error.type"] == "sessionstore.errors.InvalidInputError"
    for span in (get, get_or_create, add):
        assert span.status.status_code is StatusCode.ERROR
        assert not span.status.description  # messages name ids: never recorded
        assert not span.events


# -- nothing private -------------------------------------------------------------------

MARK = f"zq{uuid.uuid4().hex[:8]}"
PASSWORD = f"{MARK}-password/#?@&="


@pytest.fixture
async def password_dsn(pg_server: TestServer, database: str) -> AsyncIterator[str]:
    """The test database, directly, as a login role whose password is a marker."""
    role = f"sstest_otel_{os.getpid()}"
    await admin_execute(
        pg_server,
        f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PASSWORD}'",
    )
    parts = urlsplit(pg_server.admin_dsn_for(database))
    host = parts.netloc.rpartition("@")[2]
    yield urlunsplit(parts._replace(netloc=f"{role}:{quote(PASSWORD, safe='')}@{host}"))
    await drop_database(pg_server, database)  # its connections go first
    await admin_execute(pg_server, f"DROP ROLE IF EXISTS {role}")


def everything_recorded(otel: Otel) -> list[str]:
    """Every text a span or a data point carries: names, attribute keys and values,
    status descriptions, events, links."""
    texts: list[str] = []

    def add(attributes: Any) -> None:
        for key, value in dict(attributes or {}).items():
            texts.extend([str(key), str(value)])

    for span in otel.finished():
        texts += [span.name, str(span.status.description)]
        add(span.attributes)
        for event in span.events:
            texts.append(event.name)
            add(event.attributes)
        for link in span.links:
            add(link.attributes)
    data = otel.metrics.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                texts.append(metric.name)
                for point in metric.data.data_points:
                    add(point.attributes)
    return texts


async def test_no_content_ids_or_password_in_any_span_or_metric(
    password_dsn: str, otel: Otel
) -> None:
    user, cont, content = f"{MARK}-user", f"{MARK}-cont", f"{MARK}-content"
    secrets = [MARK, quote(PASSWORD, safe="")]
    async with sessionstore.connect(
        password_dsn, **{**store_overrides(), "cache_size": 10, "notifications": False}
    ) as store:
        s = await store.sessions.create(user, title=f"{MARK}-title", metadata={"k": f"{MARK}-m"})
        turn = await store.add_turn(cont, "user", content, session_id=s.id, metadata={"k": MARK})
        c = turn.conversation
        await store.sessions.get(s.id)
        await store.sessions.update(s.id, title=f"{MARK}-t2", metadata={MARK: MARK})
        await store.messages.add(c.id, MessageRole.ASSISTANT, content, metadata={MARK: 1})
        await store.messages.enqueue(c.id, MessageRole.USER, content)
        await store.enqueue_turn(cont, "assistant", content, session_id=s.id)
        await store.flush()
        await store.messages.history(c.id)
        await store.sessions.list(user_id=user)
        for failing in (
            store.conversations.get_by_continuation_id(f"{MARK}-missing"),
            store.conversations.get_or_create(cont, session_id=uuid.uuid4()),
            store.sessions.create(user, title=content, ttl=timedelta(0)),
            # Under RLS (a plain database may lack Supabase's role: refused either way).
            store.as_user(f"{MARK}-other").sessions.get(s.id),
        ):
            with pytest.raises(sessionstore.SessionStoreError):
                await failing
        await store.purge_user(user)
        ids = [str(s.id), str(c.id), str(turn.message.id)]
    texts = everything_recorded(otel)
    assert len(otel.finished()) >= 15
    leaks = [text for text in texts if any(secret in text for secret in secrets + ids)]
    assert not leaks


# -- metrics ---------------------------------------------------------------------------


def points(data: MetricsData | None, name: str, pool: str) -> dict[str, float]:
    """The data points of ``name`` for the pool ``pool``, by their other attribute's value
    ('' when there is none)."""
    assert data is not None
    found: dict[str, float] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    if attributes.pop("db.client.connection.pool.name", None) != pool:
                        continue
                    key = str(next(iter(attributes.values()), ""))
                    found[key] = float(getattr(point, "value", 0))
    return found


async def test_metrics_report_the_pool_the_queue_and_the_cache(dsn: str, otel: Otel) -> None:
    settings = {
        **store_overrides(),
        "cache_size": 100,
        "cache_ttl": 60.0,
        "notifications": False,
        "max_delay": 30.0,  # the writer collects for long: the queue stays full
        "batch_size": 1000,
    }
    connection = expected_connection(dsn)
    server = f"{connection['server.address']}:{connection['server.port']}"
    pool = f"{server}/{connection['db.namespace']}"
    async with sessionstore.connect(dsn, **settings) as store:
        s = await store.sessions.create("u")
        await store.sessions.get(s.id)  # a hit: create() put it in the cache
        await store.sessions.get(s.id)
        with pytest.raises(sessionstore.NotFoundError):
            await store.sessions.get(uuid.uuid4())  # a miss
        c = await store.conversations.get_or_create("c", session_id=s.id)
        for n in range(5):
            await store.messages.enqueue(c.id, MessageRole.USER, f"m{n}")

        data = otel.metrics.get_metrics_data()
        stats = store.stats()
        depth = points(data, "sessionstore.write_behind.queue.depth", pool)
        assert set(depth) == {"queued", "in_flight"}
        assert sum(depth.values()) == 5 == stats.queued + stats.in_flight
        assert points(data, "sessionstore.write_behind.queue.oldest_age", pool)[""] > 0
        assert points(data, "sessionstore.cache.requests", pool) == {"hit": 2, "miss": 1}
        assert (stats.cache_hits, stats.cache_misses) == (2, 1)
        assert points(data, "sessionstore.cache.entries", pool) == {"": 1}
        connections = points(data, "db.client.connection.count", pool)
        assert set(connections) == {"used", "idle"}
        assert sum(connections.values()) == stats.pool_size >= 1
        assert points(data, "db.client.connection.max", pool) == {"": 10}
        assert stats.pool_max_size == 10

        await store.flush()
        data = otel.metrics.get_metrics_data()
        assert sum(points(data, "sessionstore.write_behind.queue.depth", pool).values()) == 0
        assert points(data, "sessionstore.write_behind.queue.oldest_age", pool) == {"": 0}
        assert points(data, "sessionstore.write_behind.written", pool) == {"": 5}
        assert points(data, "sessionstore.write_behind.retries", pool) == {"": 0}
        assert points(data, "sessionstore.write_behind.set_aside", pool) == {"": 0}

        # The operations' durations, with the spans' attributes.
        assert data is not None
        histogram = next(
            metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "db.client.operation.duration"
        )
        assert histogram.unit == "s"
        counted = {
            (p.attributes or {}).get("db.operation.name"): getattr(p, "count", 0)
            for p in histogram.data.data_points
            if "error.type" not in (p.attributes or {})
        }
        assert (counted["get"], counted["enqueue"], counted["flush"]) == (2, 5, 1)
        assert any((p.attributes or {}).get("error.type") for p in histogram.data.data_points)

    # Closed: no longer reported.
    data = otel.metrics.get_metrics_data()
    assert points(data, "sessionstore.write_behind.written", pool) == {}


async def test_two_stores_on_one_database_report_apart(dsn: str, otel: Otel) -> None:
    async with (
        sessionstore.connect(dsn, **store_overrides()) as one,
        sessionstore.connect(dsn, **store_overrides()) as two,
    ):
        await one.sessions.create("u")
        await two.sessions.create("u")
        data = otel.metrics.get_metrics_data()
        assert data is not None
        pools = {
            (p.attributes or {})["db.client.connection.pool.name"]
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "db.client.connection.max"
            for p in metric.data.data_points
        }
    assert len(pools) == 2


async def test_uninstrumented_nothing_is_recorded(store: SessionStore, otel: Otel) -> None:
    telemetry.uninstrument()
    await store.sessions.create("u")
    assert otel.finished() == []


# -- units: what the DSN gives -----------------------------------------------------------


def test_connection_attributes_name_the_server_and_database_only() -> None:
    def of(dsn: str) -> dict[str, Any]:
        return dict(connection_attributes(dsn))

    assert of("postgresql://app:s3cret@db.example:6543/chat?sslmode=require") == {
        "db.system.name": "postgresql",
        "db.namespace": "chat",
        "server.address": "db.example",
        "server.port": 6543,
    }
    assert of("postgres://app@h1,h2:5433/x?password=s3cret") == {
        "db.system.name": "postgresql",
        "db.namespace": "x",
        "server.address": "h1",
        "server.port": 5432,
    }
    assert of("postgresql:///chat?host=/run/pg&port=5544&password=s3cret") == {
        "db.system.name": "postgresql",
        "db.namespace": "chat",
        "server.address": "/run/pg",
        "server.port": 5544,
    }
    assert of("postgresql://h/?dbname=other") == {
        "db.system.name": "postgresql",
        "db.namespace": "other",
        "server.address": "h",
        "server.port": 5432,
    }
    # No DSN (a given pool), or one that cannot be read: the system alone.
    assert of("") == {"db.system.name": "postgresql"}
    assert of("postgresql://u:p/a@h/db") == {"db.system.name": "postgresql"}


@given(
    user=st.text(min_size=1, max_size=20),
    password=st.text(min_size=1, max_size=30),
    in_query=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_no_user_or_password_of_any_dsn_reaches_the_attributes(
    user: str, password: str, in_query: bool
) -> None:
    secret = f"{MARK}{password}"  # a marker no host or database name holds
    who = quote(f"{MARK}{user}", safe="")
    dsn = (
        f"postgresql://{who}@db.example:5433/app?password={quote(secret, safe='')}"
        if in_query
        else f"postgresql://{who}:{quote(secret, safe='')}@db.example:5433/app"
    )
    attributes = dict(connection_attributes(dsn))
    assert attributes["server.address"] == "db.example"
    assert attributes["db.namespace"] == "app"
    assert not [v for v in attributes.values() if MARK in str(v)]


def test_with_the_apis_default_providers_nothing_listens() -> None:
    """(Installed global providers are used: see the docs example's test below.)"""
    if isinstance(trace.get_tracer_provider(), TracerProvider) or isinstance(
        metrics.get_meter_provider(), MeterProvider
    ):
        pytest.skip("another test installed a global provider in this process")
    telemetry.instrument()
    try:
        assert telemetry.state._STATE.listeners() == (None, None)
    finally:
        telemetry.uninstrument()


# -- without OpenTelemetry ---------------------------------------------------------------

WITHOUT_OTEL = textwrap.dedent(
    """
    import asyncio, importlib.abc, sys

    class NoOpenTelemetry(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoOpenTelemetry())
    import sessionstore
    from sessionstore import telemetry

    async def main():
        async with sessionstore.connect(sys.argv[1], pooler=sys.argv[2], cache_size=10,
                                        notifications=False) as store:
            s = await store.sessions.create("u")
            await store.sessions.get(s.id)
            turn = await store.add_turn("c", "user", "hi", session_id=s.id)
            await store.messages.enqueue(turn.conversation.id, "assistant", "yo")
            await store.flush()
            history = await store.messages.history(turn.conversation.id)
            assert [m.content for m in history] == ["hi", "yo"], history
            stats = store.stats()
            assert stats.written == 1 and stats.cache_hits == 1, stats
            try:
                telemetry.instrument()
            except ModuleNotFoundError as exc:
                assert "sessionstore[otel]" in str(exc)
            else:
                raise AssertionError("instrument() worked without OpenTelemetry")
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        print("loaded:", loaded)

    asyncio.run(main())
    """
)


def test_without_opentelemetry_the_store_works_and_imports_none_of_it(dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL, dsn, store_overrides()["pooler"]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded: []"


def test_the_docs_example_traces_through_the_global_providers(dsn: str) -> None:
    """docs/observability.md's setup, run as written (global providers: a process of its
    own) against this test's database."""
    page = (ROOT / "docs" / "observability.md").read_text()
    example = page.split("sessionstore then needs no setup:", 1)[1]
    code = example.split("```python\n", 1)[1].split("```", 1)[0]
    assert "postgresql://app:secret@db:5432/app" in code
    code = code.replace('"postgresql://app:secret@db:5432/app"', "sys.argv[1]")
    code = f"import asyncio, sys\n{code}\nasyncio.run(main())\ntracer_provider.force_flush()\n"
    # Behind the CI's PgBouncer a user sets the pooler mode (docs/configuration.md).
    env = {**os.environ, "SESSIONSTORE_POOLER": store_overrides()["pooler"]}
    done = subprocess.run(
        [sys.executable, "-c", code, dsn],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    database = expected_connection(dsn)["db.namespace"]
    assert '"name": "create sessions"' in done.stdout
    assert f'"name": "add_turn {database}"' in done.stdout


async def test_an_opentelemetry_that_cannot_be_used_leaves_the_store_working(
    dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An opentelemetry-api older than the extra's floor (1.22 has no bucket advisory
    and raises TypeError), or a provider setting naming nothing installed: one warning,
    telemetry off, the store opens and works (it raised and left its pool open)."""

    def old_api(self: object, meter: object) -> None:
        raise TypeError("create_histogram() got an unexpected keyword argument")

    monkeypatch.setattr(telemetry.state, "_STATE", telemetry.state._State())
    monkeypatch.setattr(telemetry.metrics._Instruments, "__init__", old_api)
    async with sessionstore.connect(dsn, **store_overrides()) as store:
        session = await store.sessions.create("u")
        assert (await store.sessions.get(session.id)).id == session.id
    assert telemetry.state._STATE.idle
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warnings if "telemetry is off" in w] == [
        "OpenTelemetry cannot be used, sessionstore's telemetry is off: TypeError: "
        "create_histogram() got an unexpected keyword argument "
        "(sessionstore[otel] needs opentelemetry-api>=1.44)"
    ]
