"""``--dashboard [HOST:]PORT``: a live page of the run, fed by Server-Sent Events.

The page (``GET /``) draws the same charts and tables as ``report.html`` (``loadgen/report_html.py``
builds both from one template and one script, ``loadgen/static/loadgen.js``), from one event stream,
``GET /events``:

======== ====================================================================================
event    data (JSON)
======== ====================================================================================
meta     what the run is: url, mode, scenario, mix, tags, stages, planned actions (first event)
second   one :class:`~loadgen.record.SecondRecord` (``to_json``), once a second
action   a scenario action's result, when it ran (``{"at_s", "kind", "target", "ok", ...}``)
end      the finished run: the final records of report.json's timeline and the report's tables;
         the page swaps its live figures for these (the same as report.html) and closes the stream
======== ====================================================================================

Every event is kept, and a viewer who connects late gets the whole history replayed first (as k6's
dashboard does), so opening the page at second 30 shows seconds 0 to 30. The history is small:
one record is about 1 KB, an hour's run about 4 MB.

Why a thread and the standard library's HTTP server rather than the run's event loop: with
``--workers N`` the parent runs no event loop at all, and in-process the loop is the one sending
the load; a separate thread that wakes once a second per viewer costs the load nothing measurable
(``benchmarks/loadgen.py --dashboard`` measures it). The run never waits for a viewer: publishing
appends to a list and notifies; a slow viewer only delays its own socket. When the run ends,
:meth:`Dashboard.close` sends ``end``, gives viewers a moment to read it, and stops the server, so a
run with the page open exits on its own.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loadgen.record import SecondRecord
from loadgen.report_html import STATIC_FILES, live_page, report_doc
from loadgen.shapes import ActionResult, Report

#: A comment line this often keeps proxies and browsers from timing an idle stream out.
KEEPALIVE_S = 15.0
#: How long close() waits for viewers to have read the ``end`` event.
CLOSE_GRACE_S = 2.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a viewer's thread never keeps the process alive
    allow_reuse_address = True
    dashboard: Dashboard

    def server_bind(self) -> None:
        if ":" in self.server_address[0]:
            self.address_family = socket.AF_INET6
            self.socket = socket.socket(self.address_family, self.socket_type)
        super().server_bind()


class Dashboard:
    """The live page's server and event history; thread-safe ``publish``/``action``/``close``."""

    def __init__(self, host: str, port: int, meta: dict[str, Any]) -> None:
        self._cond = threading.Condition()
        self._events: list[bytes] = [_event("meta", meta)]
        self._closed = False
        self._viewers = 0
        self._page = live_page(meta).encode("utf-8")
        self._server = _Server((host, port), _Handler, bind_and_activate=False)
        self._server.dashboard = self
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Bind and serve in a daemon thread; returns the page's URL. Raises OSError (port in use)."""
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError:
            self._server.server_close()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard", daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        address = self._server.server_address
        host = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
        port = int(address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def wait_for_viewers(self, count: int, timeout: float) -> bool:
        """True once ``count`` viewers are connected, False after ``timeout`` seconds: tests order
        "a viewer is watching" before "the next second is published" by this, not by sleeping."""
        with self._cond:
            return self._cond.wait_for(lambda: self._viewers >= count, timeout)

    def publish(self, record: SecondRecord) -> None:
        self._append(_event("second", record.to_json()))

    def action(self, entry: ActionResult) -> None:
        self._append(_event("action", entry))

    def finish(self, report: Report) -> None:
        """The run is over: hand viewers the final figures (what report.html shows)."""
        self._append(_event("end", report_doc(report)))

    def close(self) -> None:
        """Stop the stream (viewers get what was published first) and the server."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            deadline = time.monotonic() + CLOSE_GRACE_S
            while self._viewers and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(CLOSE_GRACE_S)
        self._server.server_close()

    def _append(self, event: bytes) -> None:
        with self._cond:
            if not self._closed:
                self._events.append(event)
                self._cond.notify_all()

    # -- called from the viewers' threads -------------------------------------------------------

    def stream(self, write: Callable[[bytes], None]) -> None:
        """Write the history, then each new event, until the run is over (or the viewer leaves)."""
        sent = 0
        with self._cond:
            self._viewers += 1
            self._cond.notify_all()
        try:
            while True:
                with self._cond:
                    if sent == len(self._events) and not self._closed:
                        self._cond.wait(KEEPALIVE_S)
                    batch = self._events[sent:]
                    done = self._closed
                sent += len(batch)
                write(b"".join(batch) if batch else b": keep-alive\n\n")
                if done and not batch:
                    return
        finally:
            with self._cond:
                self._viewers -= 1
                self._cond.notify_all()

    def page(self) -> bytes:
        return self._page


def _event(name: str, data: object) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        dash = self.server.dashboard
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", dash.page())
        elif path == "/events":
            self._events(dash)
        elif path.startswith("/static/") and path[len("/static/") :] in STATIC_FILES:
            name = path[len("/static/") :]
            ctype, body = STATIC_FILES[name]
            self._send(200, ctype, body(), cache=True)
        elif path == "/favicon.ico":
            self._send(204, "image/x-icon", b"")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, status: int, ctype: str, body: bytes, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _events(self, dash: Dashboard) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def write(data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()

        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the viewer closed the tab
            dash.stream(write)

    def log_message(self, format: str, *args: object) -> None:  # no access log on the run's stderr
        pass
