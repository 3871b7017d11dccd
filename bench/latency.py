"""A TCP proxy that adds network latency: every byte is forwarded ``one_way`` seconds after
it arrived, in each direction, in order. The kernel's netem is not available on the
machines this project runs on, so the delay is made here, in user space.

    python bench/latency.py --upstream 127.0.0.1:5432 --rtt-ms 5    # prints the port

It runs as a process of its own (``LatencyProxy`` starts one), so its CPU never counts as
the benchmarked client's. It also counts what clients send: statements (``Query`` and
``Execute`` messages) and round trips (``Query`` and ``Sync``), between SIGUSR1 (start)
and SIGUSR2 (stop), and each statement's SQL; on SIGTERM it prints the counts as one
JSON line and exits.

Each connection gets one thread per direction that reads and stamps chunks and one that
sends each chunk when it is due: blocking sockets and ``time.sleep`` keep the delay to
tens of microseconds, where an event loop's timers round up to whole milliseconds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

_CHUNK = 65536
# Untyped messages a client may send before its startup packet.
_SSL, _GSSENC, _CANCEL = 80877103, 80877104, 80877102


class Counts:
    """Statements and round trips clients sent, counted only while ``on``; and how often
    each statement's text was run (``by_statement``, SQL with whitespace collapsed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.on = False
        self.statements = 0
        self.round_trips = 0
        self.by_statement: collections.Counter[str] = collections.Counter()

    def add(self, kind: bytes, sql: str | None = None) -> None:
        if not self.on:
            return
        with self.lock:
            if kind in (b"Q", b"E"):
                self.statements += 1
                self.by_statement[" ".join((sql or "?").split())] += 1
            if kind in (b"Q", b"S"):
                self.round_trips += 1


COUNTS = Counts()


def _cstring(body: bytes, start: int = 0) -> tuple[str, int]:
    """The NUL-terminated string at ``start`` of a message body, and where the next begins."""
    end = body.index(b"\0", start)
    return body[start:end].decode(errors="replace"), end + 1


class _Frontend:
    """Splits one client's byte stream into PostgreSQL protocol messages (by their
    length fields) and counts them; nothing is changed or held back. It follows Parse
    (statement name → SQL) and Bind (portal → statement) so that an Execute is counted
    under its SQL, whether the statement was prepared while counting or before."""

    def __init__(self) -> None:
        self.buffer = b""
        self.started = False
        self.prepared: dict[str, str] = {}
        self.portals: dict[str, str] = {}

    def sql(self, kind: bytes, body: bytes) -> str | None:
        """Follow ``kind``'s message; the SQL it runs, if it runs one."""
        if kind == b"Q":
            return _cstring(body)[0]
        if kind == b"P":
            name, at = _cstring(body)
            self.prepared[name] = _cstring(body, at)[0]
        elif kind == b"B":
            portal, at = _cstring(body)
            self.portals[portal] = _cstring(body, at)[0]
        elif kind == b"E":
            return self.prepared.get(self.portals.get(_cstring(body)[0], ""), "?")
        return None

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return
                length, code = struct.unpack("!ii", self.buffer[:8])
                if len(self.buffer) < length:
                    return
                self.buffer = self.buffer[length:]
                self.started = code not in (_SSL, _GSSENC, _CANCEL)
                continue
            if len(self.buffer) < 5:
                return
            kind, (length,) = self.buffer[:1], struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                return
            body, self.buffer = self.buffer[5 : 1 + length], self.buffer[1 + length :]
            COUNTS.add(kind, self.sql(kind, body))


def _pipe(
    src: socket.socket, dst: socket.socket, one_way: float, frontend: _Frontend | None = None
) -> None:
    """Forward ``src`` to ``dst``, each chunk ``one_way`` seconds after it arrived
    (counting the messages of ``frontend``'s side, if given)."""
    due: collections.deque[tuple[float, bytes]] = collections.deque()
    ready = threading.Condition()
    done = False

    def send() -> None:
        while True:
            with ready:
                while not due and not done:
                    ready.wait()
                if not due:
                    break
                at, data = due.popleft()
            wait = at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        while data := src.recv(_CHUNK):
            if frontend is not None:
                frontend.feed(data)
            with ready:
                due.append((time.monotonic() + one_way, data))
                ready.notify()
    except OSError:
        pass
    finally:
        with ready:
            done = True
            ready.notify()
        sender.join()


def _connect(upstream: str) -> socket.socket:
    """``host:port``, or ``unix:PATH`` (the embedded server listens on a socket file)."""
    if upstream.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(upstream[len("unix:") :])
        return sock
    host, _, port = upstream.rpartition(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _serve(connection: socket.socket, upstream: str, one_way: float) -> None:
    try:
        server = _connect(upstream)
    except OSError:
        connection.close()
        return
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up = threading.Thread(
        target=_pipe, args=(connection, server, one_way, _Frontend()), daemon=True
    )
    up.start()
    _pipe(server, connection, one_way)
    up.join()
    connection.close()
    server.close()


def serve(upstream: str, one_way: float, port: int = 0) -> None:
    """Accept on 127.0.0.1 (``port``, or any free one), print the port, forward forever."""

    def counting(on: bool) -> Any:
        def handle(signum: int, frame: FrameType | None) -> None:
            COUNTS.on = on

        return handle

    def report(signum: int, frame: FrameType | None) -> None:
        with COUNTS.lock:
            line = {
                "statements": COUNTS.statements,
                "round_trips": COUNTS.round_trips,
                "by_statement": dict(COUNTS.by_statement.most_common()),
            }
        print(json.dumps(line), flush=True)
        os._exit(0)  # the forwarding threads are daemons; nothing to clean up

    signal.signal(signal.SIGUSR1, counting(True))
    signal.signal(signal.SIGUSR2, counting(False))
    signal.signal(signal.SIGTERM, report)
    listener = socket.create_server(("127.0.0.1", port), backlog=512)
    print(listener.getsockname()[1], flush=True)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_serve, args=(connection, upstream, one_way), daemon=True).start()


class LatencyProxy:
    """``with LatencyProxy("127.0.0.1:5432", rtt_ms=5) as port:`` — a proxy process
    forwarding to ``upstream`` (``host:port`` or ``unix:PATH``) with ``rtt_ms / 2`` added
    each way, stopped on exit."""

    def __init__(self, upstream: str, *, rtt_ms: float) -> None:
        self._args = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--upstream",
            upstream,
            "--rtt-ms",
            str(rtt_ms),
        ]
        self._process: subprocess.Popen[str] | None = None
        #: After exit: the statements and round trips counted while counting was on, and
        #: ``by_statement``: each statement's SQL and how often it ran.
        self.counts: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        """The proxy's process id (SIGUSR1 starts counting, SIGUSR2 stops it)."""
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> int:
        self._process = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        return int(self._process.stdout.readline())

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        self._process.terminate()
        line = self._process.stdout.readline()
        self._process.wait(timeout=10)
        self.counts = json.loads(line) if line else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="PostgreSQL: host:port or unix:PATH")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip to add, ms")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    serve(args.upstream, args.rtt_ms / 2000, args.port)


if __name__ == "__main__":
    main()
