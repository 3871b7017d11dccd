"""A TCP proxy between the stores under test and PostgreSQL, to make the network fail.

It runs its own event loop in a thread of the test process, so that its work (accepting,
copying, opening upstream connections) does not add to the latency the tests measure in
theirs. :meth:`Proxy.pause` stops forwarding bytes in both directions while every
connection stays open — a hung network, or a server that stopped answering (SIGSTOP),
looks exactly like this to the client. :attr:`Proxy.new_connections` decides what
happens to connections opened from then on: ``forward`` them, ``hang`` them (accepted,
nothing forwarded, nothing answered: a connect that never completes) or ``refuse`` them
(closed at once). The upstream may be a TCP address or, for the embedded server, a Unix
socket (``?host=/dir`` in the DSN).

``pause``, ``resume`` and ``drop_all`` have taken effect when they return.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["Proxy", "Upstream", "upstream_of"]

NewConnections = Literal["forward", "hang", "refuse"]
T = TypeVar("T")
_CHUNK = 65536
_BOUND = 5.0  # seconds: the longest any call into the proxy's thread may take


@dataclass(frozen=True)
class Upstream:
    """Where the proxy connects: ``host``/``port``, or the Unix socket ``path``."""

    host: str | None
    port: int
    path: str | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to the upstream."""
        if self.path is not None:
            return await asyncio.open_unix_connection(self.path)
        return await asyncio.open_connection(self.host, self.port)


def upstream_of(dsn: str) -> Upstream | None:
    """The server a ``postgresql://`` DSN names; ``None`` when there is more than one
    host (the proxy stands in for one)."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "localhost"
    if "," in parts.netloc or "," in host or "," in query.get("port", ""):
        return None
    port = int(query.get("port") or parts.port or 5432)
    if host.startswith("/"):
        return Upstream(None, port, f"{host}/.s.PGSQL.{port}")
    return Upstream(host, port)


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``. Use ``async with``."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        #: Read by the proxy's thread when a connection arrives.
        self.new_connections: NewConnections = "forward"
        #: Connections accepted so far, whatever became of them.
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-proxy")
        self._flowing = asyncio.Event()  # bound to the proxy's loop on first use there
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._port = 0

    async def __aenter__(self) -> Proxy:
        self._thread.start()
        await self._in_proxy(self._start())
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        assert self._port, "use `async with Proxy(...)`"
        return self._port

    def dsn(self, dsn: str) -> str:
        """``dsn`` pointed at the proxy (user, database and options kept)."""
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    def pause(self) -> None:
        """Stop forwarding bytes, both ways, on every connection; keep them all open."""
        self._apply(self._flowing.clear)

    def resume(self) -> None:
        """Forward again, starting with whatever was held back."""
        self._apply(self._flowing.set)

    def drop_all(self) -> None:
        """Abort every connection now (both sides see it closed)."""
        self._apply(self._drop_all)

    async def close(self) -> None:
        """Stop listening and drop every connection (nothing held back is delivered)."""
        if not self._thread.is_alive():
            return
        try:
            await self._in_proxy(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, _BOUND)
            if not self._thread.is_alive():
                self._loop.close()

    # -- in the proxy's thread -----------------------------------------------------------

    def _apply(self, change: Callable[[], None]) -> None:
        """Run ``change`` in the proxy's loop and wait until it has run (briefly blocking
        the caller's loop: it must have taken effect before the test goes on)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                change()
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)
            else:
                done.set_result(None)

        self._loop.call_soon_threadsafe(run)
        done.result(timeout=_BOUND)

    async def _in_proxy(self, work: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        async with asyncio.timeout(_BOUND):
            return await asyncio.wrap_future(future)

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self._port = self._server.sockets[0].getsockname()[1]

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def _close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        self._drop_all()
        self._flowing.set()  # wakes the pumps, which see _closed and stop
        # Not cancelled: asyncio's stream server logs a cancelled handler as an error. A
        # connection accepted just before the server closed starts its handler later.
        while self._tasks:
            await asyncio.wait(list(self._tasks))
            await asyncio.sleep(0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.accepted += 1
        self._writers.add(writer)
        try:
            mode = self.new_connections
            if mode == "refuse" or self._closed:
                return
            if mode == "hang":
                await _drain_until_eof(reader)
                return
            try:
                up_reader, up_writer = await self.upstream.open()
            except OSError:
                return
            self._writers.add(up_writer)
            try:
                if self._closed:
                    return
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy ``source`` to ``sink`` while flowing; hold each chunk while paused."""
        with contextlib.suppress(OSError):
            while True:
                chunk = await source.read(_CHUNK)
                await self._flowing.wait()
                if not chunk or self._closed:
                    break
                sink.write(chunk)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()  # the other direction ends when the peer closes too


async def _drain_until_eof(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        while await reader.read(_CHUNK):
            pass
