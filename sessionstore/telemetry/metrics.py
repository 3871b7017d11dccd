"""The metrics: the duration histogram, and the observable instruments that report each
open store's pool, write-behind queue and session cache from its ``stats()``.

A store is known here only as a :class:`MeasuredStore` (something with a DSN and a
``stats()``), not as the :class:`~sessionstore.SessionStore` class: the store imports
telemetry, so telemetry does not import the store.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from ..models import StoreStats
from .attributes import connection_attributes, pool_name

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation

__all__ = ["MeasuredStore", "forget", "track"]

#: The semantic conventions' buckets for ``db.client.operation.duration``.
_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


class _Settings(Protocol):
    @property
    def dsn(self) -> str | None: ...


class MeasuredStore(Protocol):
    """What the metrics need of a store: its settings' DSN (which names its pool) and a
    cheap, I/O-free ``stats()``. :class:`~sessionstore.SessionStore` is one."""

    @property
    def config(self) -> _Settings: ...
    def stats(self) -> StoreStats: ...


#: Open stores by id: a weak reference and the pool name each reports under. A plain
#: dict, copied (atomically) by the callbacks, which an SDK may run on its own thread.
_STORES: dict[int, tuple[weakref.ref[MeasuredStore], str]] = {}


def track(store: MeasuredStore) -> None:
    """Report ``store`` under a pool name of its own (``host:port/db``, ``#2`` added for
    a second store on the same database)."""
    key = id(store)
    if key in _STORES:
        return
    base = pool_name(dict(connection_attributes(store.config.dsn)))
    taken = {name for _, name in _STORES.values()}
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    # Dropped when the store is collected unclosed (before its id can be reused).
    _STORES[key] = (weakref.ref(store, lambda _: _STORES.pop(key, None)), name)


def forget(store: MeasuredStore) -> None:
    """Stop reporting ``store``."""
    _STORES.pop(id(store), None)


class _Instruments:
    """sessionstore's instruments on one meter; they report while they are the current
    ones (``current``, kept by the telemetry state)."""

    def __init__(self, meter: Meter) -> None:
        # The metrics API cannot unregister callbacks: instruments no longer current
        # stay registered and report nothing.
        self.current = False
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        # Every observable instrument: how it is created, its name, its unit and its
        # callback, whose docstring is the description (the semantic conventions' wording
        # where they define one).
        up_down: Callable[..., object] = meter.create_observable_up_down_counter
        gauge: Callable[..., object] = meter.create_observable_gauge
        counter: Callable[..., object] = meter.create_observable_counter
        observed: tuple[tuple[Callable[..., object], str, str, Callable[..., object]], ...] = (
            (up_down, "db.client.connection.count", "{connection}", self._connections),
            (up_down, "db.client.connection.max", "{connection}", self._max),
            (up_down, "sessionstore.write_behind.queue.depth", "{message}", self._depth),
            (up_down, "sessionstore.cache.entries", "{session}", self._entries),
            (gauge, "sessionstore.write_behind.queue.oldest_age", "s", self._oldest_age),
            (counter, "sessionstore.write_behind.written", "{message}", self._written),
            (counter, "sessionstore.write_behind.retries", "{attempt}", self._retries),
            (counter, "sessionstore.write_behind.set_aside", "{message}", self._set_aside),
            (counter, "sessionstore.cache.requests", "{request}", self._requests),
        )
        for create, name, unit, callback in observed:
            description = " ".join((callback.__doc__ or "").split())
            create(name, callbacks=[callback], unit=unit, description=description)

    def _stats(self) -> Iterator[tuple[StoreStats, dict[str, str]]]:
        if not self.current:
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
        """The number of connections that are currently in the state of the state
        attribute."""
        return self._observe(
            lambda s: [
                (s.pool_in_use, {"db.client.connection.state": "used"}),
                (s.pool_size - s.pool_in_use, {"db.client.connection.state": "idle"}),
            ]
        )

    def _max(self, _options: CallbackOptions) -> list[Observation]:
        """The maximum number of open connections allowed."""
        return self._observe(lambda s: [(s.pool_max_size, {})])

    def _depth(self, _options: CallbackOptions) -> list[Observation]:
        """Accepted write-behind messages not yet durable: queued, or in the batch in
        flight."""
        return self._observe(
            lambda s: [
                (s.queued, {"sessionstore.write_behind.state": "queued"}),
                (s.in_flight, {"sessionstore.write_behind.state": "in_flight"}),
            ]
        )

    def _oldest_age(self, _options: CallbackOptions) -> list[Observation]:
        """Seconds since the oldest write-behind message not yet durable was accepted (0
        when there is none)."""
        return self._observe(lambda s: [(s.oldest_age or 0.0, {})])

    def _entries(self, _options: CallbackOptions) -> list[Observation]:
        """Sessions held in the session cache."""
        return self._observe(lambda s: [(s.cache_entries, {})])

    def _written(self, _options: CallbackOptions) -> list[Observation]:
        """Write-behind messages made durable."""
        return self._observe(lambda s: [(s.written, {})])

    def _retries(self, _options: CallbackOptions) -> list[Observation]:
        """Write-behind batch attempts that failed transiently and were retried."""
        return self._observe(lambda s: [(s.retried, {})])

    def _set_aside(self, _options: CallbackOptions) -> list[Observation]:
        """Write-behind messages that can never be written (reported, not retried)."""
        return self._observe(lambda s: [(s.set_aside, {})])

    def _requests(self, _options: CallbackOptions) -> list[Observation]:
        """Session cache look-ups, by result (hit or miss)."""
        return self._observe(
            lambda s: [
                (s.cache_hits, {"sessionstore.cache.result": "hit"}),
                (s.cache_misses, {"sessionstore.cache.result": "miss"}),
            ]
        )
