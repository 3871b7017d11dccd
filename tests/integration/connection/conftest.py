"""Fixtures for the connection tests: a TCP proxy in front of the test's database, to
make the network fail (see :mod:`tests.proxy`), and OpenTelemetry's in-memory ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sessionstore import telemetry

from ...proxy import Proxy, upstream_of
from ...servers import TestServer


@contextmanager
def in_memory_telemetry() -> Iterator[
    tuple[InMemorySpanExporter, InMemoryMetricReader, TracerProvider]
]:
    """sessionstore instrumented with the SDK's in-memory span exporter and metric
    reader (and uninstrumented after): the spans, the reader, the tracer provider."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield spans, reader, tracer_provider
    finally:
        telemetry.uninstrument()
        tracer_provider.shutdown()
        meter_provider.shutdown()


async def proxy_for(dsn: str) -> Proxy:
    """An open proxy in front of the server ``dsn`` names (skips the test when it names
    several hosts). Close it with ``await proxy.close()``."""
    upstream = upstream_of(dsn)
    if upstream is None:
        pytest.skip("the server under test has several hosts; the proxy stands for one")
    return await Proxy(upstream).__aenter__()


@pytest.fixture
async def proxy(pg_server: TestServer, database: str) -> AsyncIterator[Proxy]:
    """A proxy in front of this test's database (its DSN: ``proxy.dsn(dsn)``)."""
    opened = await proxy_for(pg_server.dsn_for(database))
    try:
        yield opened
    finally:
        await opened.close()
