"""N dashboard viewers: connections to a proxy's /events that read (and drop) every snapshot.

    python -m benchmarks.sse_viewers --port ADMIN_PORT [-n 5]

Used by ``benchmarks.proxy --dashboards N`` to measure what watching costs the proxy: the
viewers read the stream as a browser's EventSource does, in a process of their own (pinned
with the load generator, off the proxy's core). On SIGTERM it prints how many SSE messages each
viewer got, so a run where the stream did not flow is visible.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sse_viewers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", type=int, default=5, help="viewers (default 5)")
    a = p.parse_args(argv)
    sel = selectors.DefaultSelector()
    messages = [0] * a.n
    for i in range(a.n):
        s = socket.create_connection((a.host, a.port), timeout=5)
        s.sendall(f"GET /events HTTP/1.1\r\nHost: {a.host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while not stop and sel.get_map():
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            messages[key.data] += data.count(b"\n\ndata: ") + data.startswith(b"data: ")
    print(f"sse_viewers: messages per viewer {messages}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
