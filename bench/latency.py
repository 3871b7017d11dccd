"""A TCP proxy that adds network latency: every byte is forwarded ``one_way`` seconds after
it arrived, in each direction, in order. The kernel's netem is not available on the
machines this project runs on, so the delay is made here, in user space.

    python bench/latency.py --upstream 127.0.0.1:5432 --rtt-ms 5    # prints the port

It runs as a process of its own (``LatencyProxy`` starts one), so its CPU never counts as
the benchmarked client's. Each connection gets one thread per direction that reads and
stamps chunks and one that sends each chunk when it is due: blocking sockets and
``time.sleep`` keep the delay to tens of microseconds, where an event loop's timers
round up to whole milliseconds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

_CHUNK = 65536


def _pipe(src: socket.socket, dst: socket.socket, one_way: float) -> None:
    """Forward ``src`` to ``dst``, each chunk ``one_way`` seconds after it arrived."""
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


def _serve(connection: socket.socket, upstream: tuple[str, int], one_way: float) -> None:
    try:
        server = socket.create_connection(upstream)
    except OSError:
        connection.close()
        return
    for sock in (connection, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up = threading.Thread(target=_pipe, args=(connection, server, one_way), daemon=True)
    up.start()
    _pipe(server, connection, one_way)
    up.join()
    connection.close()
    server.close()


def serve(upstream: tuple[str, int], one_way: float, port: int = 0) -> None:
    """Accept on 127.0.0.1 (``port``, or any free one), print the port, forward forever."""
    listener = socket.create_server(("127.0.0.1", port), backlog=512)
    print(listener.getsockname()[1], flush=True)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_serve, args=(connection, upstream, one_way), daemon=True).start()


class LatencyProxy:
    """``with LatencyProxy(host, port, rtt_ms=5) as port:`` — a proxy process forwarding
    to ``host:port`` with ``rtt_ms / 2`` added each way, stopped on exit."""

    def __init__(self, host: str, port: int, *, rtt_ms: float) -> None:
        self._args = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--upstream",
            f"{host}:{port}",
            "--rtt-ms",
            str(rtt_ms),
        ]
        self._process: subprocess.Popen[str] | None = None

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
        self._process.terminate()
        self._process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="host:port of PostgreSQL")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip to add, ms")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    serve((host, int(port)), args.rtt_ms / 2000, args.port)


if __name__ == "__main__":
    main()
