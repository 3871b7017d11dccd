"""The spans: the decorators that trace (and time) each public call, and
:func:`set_attributes` for the call running now."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from . import state
from .attributes import Kind, Setup, error_type, setup

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram
    from opentelemetry.trace import Span, Tracer

    from .state import _State

__all__ = ["set_attributes", "traced", "traced_sync"]

P = ParamSpec("P")
R = TypeVar("R")

#: The span of the traced call running in this context (or ``_UNTRACED`` when only
#: metrics listen); a traced call made inside it adds no span of its own.
_CURRENT: ContextVar[object | None] = ContextVar("sessionstore_telemetry", default=None)
_UNTRACED = object()


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
            now = state._STATE
            if now.idle or _CURRENT.get() is not None:
                return await fn(*args, **kwargs)
            tracer, duration = now.listeners()
            if tracer is None and duration is None:
                return await fn(*args, **kwargs)
            with _Measured(now, tracer, duration, setup(op, collection, kind, _dsn_of(args[0]))):
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
            now = state._STATE
            if now.idle or _CURRENT.get() is not None:
                return fn(*args, **kwargs)
            tracer, duration = now.listeners()
            if tracer is None and duration is None:
                return fn(*args, **kwargs)
            with _Measured(now, tracer, duration, setup(op, collection, kind, _dsn_of(args[0]))):
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
        self, now: _State, tracer: Tracer | None, duration: Histogram | None, call: Setup
    ) -> None:
        self._state = now
        self._tracer = tracer
        self._duration = duration
        self._setup = call
        self._span: Span | None = None

    def __enter__(self) -> None:
        self._started = time.perf_counter()
        if self._tracer is not None:
            self._span, self._otel_token = self._state.start(self._tracer, self._setup)
        self._token = _CURRENT.set(_UNTRACED if self._span is None else self._span)

    def __exit__(self, exc_type: object, error: BaseException | None, tb: object) -> None:
        elapsed = time.perf_counter() - self._started
        _CURRENT.reset(self._token)
        failure = None if error is None else error_type(error)
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
