"""OpenTelemetry tracing and metrics, optional: the one place that decides what is traced
and what a span or a data point says.

Nothing here imports OpenTelemetry until a store opens (or :func:`instrument` is called);
without ``opentelemetry-api`` installed (the ``otel`` extra) it never does, and every
traced method is a plain call behind one check.

**Enabled** when ``opentelemetry-api`` is importable and the application has installed
an SDK: the global tracer and meter providers (``trace.set_tracer_provider``,
``metrics.set_meter_provider``, or ``opentelemetry-instrument``), or the providers given
to :func:`instrument`. While the global providers are still the API's no-op defaults, a
call costs one check (whether they have been installed is looked at once a second, so
an SDK installed after a store opened is used within a second);
:func:`uninstrument` turns sessionstore's telemetry off.

**Spans** (the database semantic conventions, span kind ``CLIENT``; ``INTERNAL`` for
the calls that only queue or wait: ``enqueue*``, ``flush``, ``replay``): one per public
call — a call made inside another traced call adds none — named
``{db.operation.name} {target}``, the target being the table of the repository
(``create sessions``, ``history messages``) or, for calls on the store that span
tables, the database (``add_turn mydb``). Attributes: ``db.system.name``
(``postgresql``), ``db.operation.name`` (the method's name), ``db.collection.name``,
``db.namespace`` (the database name in the DSN), ``server.address`` and ``server.port``
(the DSN's first host), and on failure ``error.type`` (the SQLSTATE when the server sent
one, then also ``db.response.status_code``; else the exception's qualified class name)
with status ``ERROR`` and no description. The write-behind writer's batches are spans
of their own, one per attempt and in no caller's trace (``write_behind mydb``, with
``sessionstore.batch.size`` and ``sessionstore.batch.kind``). Never recorded: message
content, metadata, titles, user ids, continuation ids, session or conversation ids, the
DSN's user name or password, exception messages (they can quote ids): no exception
events.

**Metrics** (per open store, told apart by ``db.client.connection.pool.name``):
``db.client.operation.duration`` (histogram, seconds, the span's attributes),
``db.client.connection.count`` (``db.client.connection.state``: ``used``/``idle``),
``db.client.connection.max``, ``sessionstore.write_behind.queue.depth``
(``sessionstore.write_behind.state``: ``queued``/``in_flight``),
``sessionstore.write_behind.queue.oldest_age`` (seconds), ``sessionstore.write_behind.written``,
``sessionstore.write_behind.retries``, ``sessionstore.write_behind.set_aside``,
``sessionstore.cache.requests`` (``sessionstore.cache.result``: ``hit``/``miss``) and
``sessionstore.cache.entries``. The observable ones read :meth:`SessionStore.stats`.
The metrics API cannot unregister callbacks: a closed store is dropped from the set
they report on.

The modules: :mod:`~sessionstore.telemetry.attributes` (what a span or a data point
says), :mod:`~sessionstore.telemetry.state` (whether anything listens; ``instrument``),
:mod:`~sessionstore.telemetry.tracing` (the decorators) and
:mod:`~sessionstore.telemetry.metrics` (the instruments, and
:class:`~sessionstore.telemetry.metrics.MeasuredStore`: what they need of a store).
None imports the store or the package root.
"""

from __future__ import annotations

from .attributes import INSTRUMENTATION_NAME
from .attributes import connection_attributes as connection_attributes
from .state import instrument, uninstrument
from .state import register as register
from .state import unregister as unregister
from .tracing import set_attributes, traced, traced_sync

__all__ = [
    "INSTRUMENTATION_NAME",
    "instrument",
    "set_attributes",
    "traced",
    "traced_sync",
    "uninstrument",
]
