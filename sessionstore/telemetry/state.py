"""Whether anything listens: OpenTelemetry imported once (or found missing), the
providers in use, :func:`instrument` and :func:`uninstrument`, and the stores reported.

OpenTelemetry is first imported here (:meth:`_State.load`, when a store opens or
:func:`instrument` is called); the spans are made in
:mod:`sessionstore.telemetry.tracing`, the instruments in
:mod:`sessionstore.telemetry.metrics`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .._version import installed_version
from ..retry import describe
from .attributes import INSTRUMENTATION_NAME, Setup
from .metrics import MeasuredStore, _Instruments, forget, track

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["instrument", "register", "uninstrument", "unregister"]

logger = logging.getLogger("sessionstore")

#: Seconds between two looks for global providers while none is installed.
_RECHECK = 1.0


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
        version = installed_version()
        trace, metrics = self._trace, self._metrics
        self.tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, version, tracer_provider=tracer_provider
        )
        self.tracing_live = tracer_provider is not None
        # Made once per meter: a second instrument of the same name would be refused.
        if meter_provider is None:
            if self._global is None:
                self._global = _Instruments(metrics.get_meter(INSTRUMENTATION_NAME, version))
            self._report_on(self._global)
        else:
            if self._given is None or self._given[0] is not meter_provider:
                meter = metrics.get_meter(INSTRUMENTATION_NAME, version, meter_provider)
                self._given = (meter_provider, _Instruments(meter))
            self._report_on(self._given[1])
        self.metering_live = meter_provider is not None
        self.enabled = True
        self.idle = False
        self._recheck = 0.0

    def off(self) -> None:
        self.enabled = False
        self.idle = True
        self.tracer = None
        self._report_on(None)

    def _report_on(self, instruments: _Instruments | None) -> None:
        """Make ``instruments`` the current ones: only they report."""
        if self.instruments is not None:
            self.instruments.current = False
        self.instruments = instruments
        if instruments is not None:
            instruments.current = True

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

    def start(self, tracer: Tracer, setup: Setup) -> tuple[Span, object]:
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


# The one state. Read through this module at each call (``state._STATE``), not bound
# elsewhere by ``from .state import _STATE``, so that replacing it here replaces it
# everywhere (the tests start from a fresh one).
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
            "sessionstore telemetry needs opentelemetry-api: install sessionstore[otel]"
            " (in a clone of sessionstore: pip install -e '.[otel]')",
            name="opentelemetry",
        )
    _STATE.use(tracer_provider, meter_provider)


def uninstrument() -> None:
    """No spans and no metrics from sessionstore from now on (until :func:`instrument`)."""
    _STATE.off()


def register(store: MeasuredStore) -> None:
    """Report ``store``'s pool, queue and cache (called when it opens). This is also
    where OpenTelemetry is first looked for."""
    if _STATE.load():
        track(store)


def unregister(store: MeasuredStore) -> None:
    """Stop reporting ``store`` (called when it closes)."""
    forget(store)
