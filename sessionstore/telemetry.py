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
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

from .dsn import check_dsn
from .errors import InvalidInputError
from .retry import describe

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from .models import StoreStats
    from .store import SessionStore

__all__ = [
    "INSTRUMENTATION_NAME",
    "instrument",
    "set_attributes",
    "traced",
    "traced_sync",
    "uninstrument",
]

logger = logging.getLogger("sessionstore")

#: The tracer's and the meter's name.
INSTRUMENTATION_NAME = "sessionstore"
#: The semantic conventions' buckets for ``db.client.operation.duration``.
_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
_DEFAULT_PORT = 5432
#: Seconds between two looks for global providers while none is installed.
_RECHECK = 1.0

P = ParamSpec("P")
R = TypeVar("R")
Kind = Literal["client", "internal"]
Attributes = Mapping[str, str | int]

#: The span of the traced call running in this context (or ``_UNTRACED`` when only
#: metrics listen); a traced call made inside it adds no span of its own.
_CURRENT: ContextVar[object | None] = ContextVar("sessionstore_telemetry", default=None)
_UNTRACED = object()


# -- what a span says -------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def connection_attributes(dsn: str | None) -> tuple[tuple[str, str | int], ...]:
    """``db.system.name``, ``db.namespace``, ``server.address`` and ``server.port`` for
    ``dsn``: its first host and port (5432 when it names none) and its database. No user
    name, no password, no other parameter."""
    found: dict[str, str | int] = {"db.system.name": "postgresql"}
    if not dsn:
        return tuple(found.items())
    try:
        servers = check_dsn(dsn)
    except InvalidInputError:
        return tuple(found.items())
    parts = urlsplit(dsn)
    database = unquote(parts.path.lstrip("/"))
    if not database and parts.query:
        query = parse_qs(parts.query)
        database = (query.get("dbname") or query.get("database") or [""])[-1]
    if database:
        found["db.namespace"] = database
    if servers.hosts and servers.hosts[0]:
        found["server.address"] = servers.hosts[0]
        found["server.port"] = servers.ports[0] or _DEFAULT_PORT
    return tuple(found.items())


@dataclass(frozen=True, slots=True)
class _Setup:
    """A traced operation on one database: its span's name, kind and attributes."""

    name: str
    client: bool
    attributes: Attributes


@functools.lru_cache(maxsize=512)
def _setup(operation: str, collection: str | None, kind: Kind, dsn: str | None) -> _Setup:
    attributes: dict[str, str | int] = dict(connection_attributes(dsn))
    attributes["db.operation.name"] = operation
    if collection is not None:
        attributes["db.collection.name"] = collection
    target = collection or attributes.get("db.namespace")
    if target is None and "server.address" in attributes:
        target = f"{attributes['server.address']}:{attributes['server.port']}"
    name = operation if target is None else f"{operation} {target}"
    return _Setup(name, kind == "client", attributes)


def _error_type(error: BaseException) -> tuple[str, str | None]:
    """``error.type`` and ``db.response.status_code`` for ``error``: the SQLSTATE the
    server sent, else the exception's qualified class name (never its message)."""
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate, sqlstate
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__, None
    return f"{cls.__module__}.{cls.__qualname__}", None


def _pool_name(attributes: Attributes) -> str:
    """``server.address:server.port/db.namespace``, as the conventions suggest."""
    name = ""
    if "server.address" in attributes:
        name = f"{attributes['server.address']}:{attributes['server.port']}"
    if "db.namespace" in attributes:
        name += f"/{attributes['db.namespace']}"
    return name or INSTRUMENTATION_NAME


# -- the state: whether anything listens ------------------------------------------------


class _State:
    """What is switched on, and the OpenTelemetry objects once loaded."""

    def __init__(self) -> None:
        self.loaded: bool | None = None  # None: not tried yet; False: not installed
        self.enabled = True
        # True while nothing can listen: not loaded, not installed, or switched off.
        self.idle = True
        self.tracer: Tracer | None = None
        self.tracing_live = False  # a real tracer provider is known to be in place
        self.metering_live = False
        self._recheck = 0.0  # when to look for global providers again
        self.instruments: _Instruments | None = None
        # Instruments made on the global meter, and on the last meter provider given.
        self._global: _Instruments | None = None
        self._given: tuple[MeterProvider, _Instruments] | None = None
        self._trace: Any = None  # the opentelemetry.trace module
        self._metrics: Any = None
        self._context: Any = None

    def load(self) -> bool:
        """Import OpenTelemetry once; ``False`` if it is not installed."""
        if self.loaded is None:
            try:
                from opentelemetry import context, metrics, trace
            except ImportError:
                self.loaded = False
            else:
                self._trace, self._metrics, self._context = trace, metrics, context
                self.loaded = True
                if self.enabled:
                    try:
                        self.use(None, None)
                    except Exception as exc:
                        self.broken(exc)
        return self.loaded

    def broken(self, error: Exception) -> None:
        """Telemetry off, said once: an ``opentelemetry-api`` older than the ``otel``
        extra's floor (another package may have pinned one), or a provider named in
        ``OTEL_*`` settings that cannot be loaded. The store itself works on."""
        logger.warning(
            "OpenTelemetry cannot be used, sessionstore's telemetry is off: %s "
            "(sessionstore[otel] needs opentelemetry-api>=1.44)",
            describe(error),
        )
        self.off()

    def use(
        self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
    ) -> None:
        from . import __version__

        trace, metrics = self._trace, self._metrics
        self.tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
        )
        self.tracing_live = tracer_provider is not None
        # Made once per meter: a second instrument of the same name would be refused.
        if meter_provider is None:
            if self._global is None:
                self._global = _Instruments(metrics.get_meter(INSTRUMENTATION_NAME, __version__))
            self.instruments = self._global
        else:
            if self._given is None or self._given[0] is not meter_provider:
                meter = metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider)
                self._given = (meter_provider, _Instruments(meter))
            self.instruments = self._given[1]
        self.metering_live = meter_provider is not None
        self.enabled = True
        self.idle = False
        self._recheck = 0.0

    def off(self) -> None:
        self.enabled = False
        self.idle = True
        self.tracer = None
        self.instruments = None

    def listeners(self) -> tuple[Tracer | None, Histogram | None]:
        """The tracer and the duration histogram, each only if something listens."""
        if not (self.tracing_live and self.metering_live) and time.monotonic() >= self._recheck:
            self._look_for_providers()
        tracer = self.tracer if self.tracing_live else None
        instruments = self.instruments if self.metering_live else None
        return tracer, None if instruments is None else instruments.duration

    def _look_for_providers(self) -> None:
        """Whether the application has installed global providers by now. Asking costs
        about a microsecond, so while none is there this is asked once a second, not on
        every call; once set, a global provider stays (the API sets it only once)."""
        self._recheck = time.monotonic() + _RECHECK
        try:
            if not self.tracing_live and not _is_noop(self._trace.get_tracer_provider()):
                self.tracing_live = True
            if not self.metering_live and not _is_noop(self._metrics.get_meter_provider()):
                self.metering_live = True
        except Exception as exc:  # e.g. OTEL_PYTHON_TRACER_PROVIDER names nothing installed
            self.broken(exc)

    def start(self, tracer: Tracer, setup: _Setup) -> tuple[Span, object]:
        """Start ``setup``'s span and make it current; return it and the context token."""
        kind = self._trace.SpanKind.CLIENT if setup.client else self._trace.SpanKind.INTERNAL
        span = tracer.start_span(
            setup.name,
            kind=kind,
            attributes=setup.attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        return span, self._context.attach(self._trace.set_span_in_context(span))

    def end(self, span: Span, token: object, error: tuple[str, str | None] | None) -> None:
        self._context.detach(token)
        if error is not None:
            kind, sqlstate = error
            span.set_attribute("error.type", kind)
            if sqlstate is not None:
                span.set_attribute("db.response.status_code", sqlstate)
            span.set_status(self._trace.StatusCode.ERROR)
        span.end()


def _is_noop(provider: object) -> bool:
    """Whether ``provider`` is one of the API's own (the default proxy or a no-op): an
    SDK's lives in a module of its own."""
    module = type(provider).__module__
    return module.startswith(("opentelemetry.trace", "opentelemetry.metrics"))


_STATE = _State()


def instrument(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> None:
    """Trace and measure with these providers (``None``: the global one) from now on.

    Not needed with the global providers, which are used by default; this is for an
    application (or a test) that keeps its own, or to switch back on after
    :func:`uninstrument`. ``ModuleNotFoundError`` if ``opentelemetry-api`` is missing
    (install ``sessionstore[otel]``).
    """
    if not _STATE.load():
        raise ModuleNotFoundError(
            "sessionstore telemetry needs opentelemetry-api: pip install 'sessionstore[otel]'",
            name="opentelemetry",
        )
    _STATE.use(tracer_provider, meter_provider)


def uninstrument() -> None:
    """No spans and no metrics from sessionstore from now on (until :func:`instrument`)."""
    _STATE.off()


# -- the decorator ----------------------------------------------------------------------


def traced(
    collection: str | None = None, *, operation: str | None = None, kind: Kind = "client"
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """A span and a duration for each call of the decorated method (of an object whose
    ``_db`` is the :class:`~sessionstore.db.Database` it runs on).

    ``operation`` defaults to the method's name; ``collection`` is the table the
    repository stands for (``None`` for calls across tables).
    """

    def decorate(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        op = operation or fn.__name__

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            state = _STATE
            if state.idle or _CURRENT.get() is not None:
                return await fn(*args, **kwargs)
            tracer, duration = state.listeners()
            if tracer is None and duration is None:
                return await fn(*args, **kwargs)
            setup = _setup(op, collection, kind, _dsn_of(args[0]))
            with _Measured(state, tracer, duration, setup):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate


def traced_sync(
    collection: str | None = None, *, operation: str | None = None, kind: Kind = "internal"
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """:func:`traced` for the few synchronous public methods (``enqueue_nowait``)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        op = operation or fn.__name__

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            state = _STATE
            if state.idle or _CURRENT.get() is not None:
                return fn(*args, **kwargs)
            tracer, duration = state.listeners()
            if tracer is None and duration is None:
                return fn(*args, **kwargs)
            with _Measured(state, tracer, duration, _setup(op, collection, kind, _dsn_of(args[0]))):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def _dsn_of(owner: Any) -> str | None:
    dsn: str | None = owner._db.config.dsn
    return dsn


class _Measured:
    """The span (if traced) and the duration (if measured) of one call."""

    __slots__ = (
        "_duration",
        "_otel_token",
        "_setup",
        "_span",
        "_started",
        "_state",
        "_token",
        "_tracer",
    )

    def __init__(
        self, state: _State, tracer: Tracer | None, duration: Histogram | None, setup: _Setup
    ) -> None:
        self._state = state
        self._tracer = tracer
        self._duration = duration
        self._setup = setup
        self._span: Span | None = None

    def __enter__(self) -> None:
        self._started = time.perf_counter()
        if self._tracer is not None:
            self._span, self._otel_token = self._state.start(self._tracer, self._setup)
        self._token = _CURRENT.set(_UNTRACED if self._span is None else self._span)

    def __exit__(self, exc_type: object, error: BaseException | None, tb: object) -> None:
        elapsed = time.perf_counter() - self._started
        _CURRENT.reset(self._token)
        failure = None if error is None else _error_type(error)
        if self._span is not None:
            self._state.end(self._span, self._otel_token, failure)
        if self._duration is not None:
            attributes = self._setup.attributes
            if failure is not None:
                attributes = {**attributes, "error.type": failure[0]}
            self._duration.record(elapsed, attributes)


def set_attributes(attributes: Mapping[str, str | int | bool]) -> None:
    """Add ``attributes`` to the span of the traced call running now, if there is one.
    The caller vouches that they hold no content, ids or secrets."""
    span = _CURRENT.get()
    if span is not None and span is not _UNTRACED:
        cast("Span", span).set_attributes(dict(attributes))


# -- metrics ----------------------------------------------------------------------------

#: Open stores by id: a weak reference and the pool name each reports under. A plain
#: dict, copied (atomically) by the callbacks, which an SDK may run on its own thread.
_STORES: dict[int, tuple[weakref.ref[SessionStore], str]] = {}


def register(store: SessionStore) -> None:
    """Report ``store``'s pool, queue and cache (called when it opens). This is also
    where OpenTelemetry is first looked for."""
    key = id(store)
    if not _STATE.load() or key in _STORES:
        return
    base = _pool_name(dict(connection_attributes(store.config.dsn)))
    taken = {name for _, name in _STORES.values()}
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    # Dropped when the store is collected unclosed (before its id can be reused).
    _STORES[key] = (weakref.ref(store, lambda _: _STORES.pop(key, None)), name)


def unregister(store: SessionStore) -> None:
    """Stop reporting ``store`` (called when it closes)."""
    _STORES.pop(id(store), None)


class _Instruments:
    """sessionstore's instruments on one meter; they report while they are the current ones."""

    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        gauges = (
            ("db.client.connection.count", "{connection}", self._connections,
             "The number of connections that are currently in the state of the state attribute."),
            ("db.client.connection.max", "{connection}", self._max,
             "The maximum number of open connections allowed."),
            ("sessionstore.write_behind.queue.depth", "{message}", self._depth,
             "Accepted write-behind messages not yet durable: queued, or in the batch in flight."),
            ("sessionstore.cache.entries", "{session}", self._entries,
             "Sessions held in the session cache."),
        )  # fmt: skip
        for name, unit, callback, description in gauges:
            meter.create_observable_up_down_counter(
                name, callbacks=[callback], unit=unit, description=description
            )
        meter.create_observable_gauge(
            "sessionstore.write_behind.queue.oldest_age",
            callbacks=[self._oldest_age],
            unit="s",
            description="Seconds since the oldest write-behind message not yet durable was "
            "accepted (0 when there is none).",
        )
        counters = (
            ("sessionstore.write_behind.written", "{message}", self._written,
             "Write-behind messages made durable."),
            ("sessionstore.write_behind.retries", "{attempt}", self._retries,
             "Write-behind batch attempts that failed transiently and were retried."),
            ("sessionstore.write_behind.set_aside", "{message}", self._set_aside,
             "Write-behind messages that can never be written (reported, not retried)."),
            ("sessionstore.cache.requests", "{request}", self._requests,
             "Session cache look-ups, by result (hit or miss)."),
        )  # fmt: skip
        for name, unit, callback, description in counters:
            meter.create_observable_counter(
                name, callbacks=[callback], unit=unit, description=description
            )

    def _stats(self) -> Iterator[tuple[StoreStats, dict[str, str]]]:
        if _STATE.instruments is not self:
            return
        for ref, name in _STORES.copy().values():
            store = ref()
            if store is None:
                continue
            try:
                stats = store.stats()
            except Exception:  # read from another thread mid-change: skip this round
                continue
            yield stats, {"db.client.connection.pool.name": name}

    def _observe(
        self, values: Callable[[StoreStats], Iterable[tuple[float, Mapping[str, str]]]]
    ) -> list[Observation]:
        from opentelemetry.metrics import Observation

        return [
            Observation(value, {**pool, **extra})
            for stats, pool in self._stats()
            for value, extra in values(stats)
        ]

    def _connections(self, _options: CallbackOptions) -> list[Observation]:
        return self._observe(
            lambda s: [
                (s.pool_in_use, {"db.client.connection.state": "used"}),
                (s.pool_size - s.pool_in_use, {"db.client.connection.state": "idle"}),
            ]
        )

    def _max(self, _options: CallbackOptions) -> list[Observation]:
        return self._observe(lambda s: [(s.pool_max_size, {})])

    def _depth(self, _options: CallbackOptions) -> list[Observation]:
        return self._observe(
            lambda s: [
                (s.queued, {"sessionstore.write_behind.state": "queued"}),
                (s.in_flight, {"sessionstore.write_behind.state": "in_flight"}),
            ]
        )

    def _oldest_age(self, _options: CallbackOptions) -> list[Observation]:
        return self._observe(lambda s: [(s.oldest_age or 0.0, {})])

    def _entries(self, _options: CallbackOptions) -> list[Observation]:
        return self._observe(lambda s: [(s.cache_entries, {})])

    def _written(self, _options: CallbackOptions) -> list[Observation]:
        return self._observe(lambda s: [(s.written, {})])

    def _retries(self, _options: CallbackOptions) -> list[Observation]:
        return self._observe(lambda s: [(s.retried, {})])

    def _set_aside(self, _options: CallbackOptions) -> list[Observation]:
        return self._observe(lambda s: [(s.set_aside, {})])

    def _requests(self, _options: CallbackOptions) -> list[Observation]:
        return self._observe(
            lambda s: [
                (s.cache_hits, {"sessionstore.cache.result": "hit"}),
                (s.cache_misses, {"sessionstore.cache.result": "miss"}),
            ]
        )
