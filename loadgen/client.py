"""A minimal keep-alive HTTP/1.1 client: one :class:`Connection` per load-generating connection.

Why not httpx/aiohttp: a general client spends most of its time on things a load generator does
not need (URL objects, header dicts, cookie jars, one coroutine and several futures per request)
and tops out around 1,400 req/s per core here, so it would measure itself instead of the proxy.
This client does the least that is still correct HTTP/1.1:

* the request is built once as bytes (:func:`build_request`) and written as is every time;
* responses are parsed by ``httptools.HttpResponseParser`` (llhttp, in C); the only headers we look
  at are ``X-Backend-Id`` (which backend answered) and whether the body is framed at all;
* Content-Length and chunked bodies are delimited by the parser; a response with neither ends at
  EOF (close-delimited), which is success, not a reset; HEAD responses end with their headers;
* it is callback driven, not coroutine driven: :meth:`Connection.send` takes a function that is
  called exactly once with the outcome. No Future, no Task per request, which roughly halves the
  per-request overhead. Scheduling (when to call ``send`` again) lives in ``schedule.py``;
* one request at a time per connection (no pipelining) and reconnects transparently: after an
  error, after ``Connection: close`` or when the server closed an idle connection, the next
  ``send`` dials again;
* the request timeout covers connecting plus the whole response. It uses one lazily re-armed timer
  per connection instead of one timer per request: the timer fires at most once per timeout period
  while requests keep completing, and re-arms itself for the remaining time of the request that is
  in flight then.

Outcome kinds passed to the callback as ``error`` (``None`` on a complete response, whatever its
status): ``"connect"`` (could not establish the TCP connection, including a connect that outlived
the timeout: the server never saw the request), ``"timeout"`` (connected, request sent, no complete
response in time; the connection is aborted because a late response would desynchronise it),
``"reset"`` (connection reset or EOF before a complete response) and ``"other"`` (an unparsable
response or an unexpected local failure).

Timestamps are ``time.perf_counter()`` seconds, not ``loop.time()``: uvloop's clock only has
millisecond resolution, which is coarser than a fast local response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from time import perf_counter

import httptools

from loadgen.config import Target

ERROR_KINDS: tuple[str, ...] = ("connect", "timeout", "reset", "other")

# (sent_at, done_at, status, backend, error): status is 0 and backend None when error is set.
DoneCallback = Callable[[float, float, int, "bytes | None", "str | None"], None]

USER_AGENT = "asgi-lab-loadgen/1"
_BACKEND_HEADER = b"x-backend-id"
_FRAMING_HEADERS = (b"content-length", b"transfer-encoding")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
# Re-arming a timer for less than this would only spin: uvloop timers have ms resolution.
_TIMER_SLACK_S = 0.001


def build_request(method: str, target: Target, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """Build the request bytes once, so sending is a single ``transport.write`` of a constant.

    User headers replace the defaults of the same name (case-insensitively), so ``--header
    'Host: x'`` targets a virtual host. POST/PUT/PATCH get ``Content-Length: 0`` because some
    servers answer 411 to a body-less request without it.
    """
    given = {name.lower() for name, _ in headers}
    lines = [f"{method} {target.path} HTTP/1.1"]
    defaults = [("Host", target.host_header), ("User-Agent", USER_AGENT), ("Accept", "*/*")]
    if method in _BODY_METHODS:
        defaults.append(("Content-Length", "0"))
    lines += [f"{n}: {v}" for n, v in defaults if n.lower() not in given]
    lines += [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Wire(asyncio.Protocol):
    """One TCP connection's asyncio protocol; forwards to its :class:`Connection` while current.

    A separate object per TCP connection (rather than the Connection itself) because after a
    reconnect the old transport's ``connection_lost`` may still arrive, and asyncio does not say
    which transport it is about: the identity check ``conn._wire is self`` does.
    """

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn._wire is self:
            conn._data_received(data)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost then decides EOF vs reset

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        if conn._wire is self:
            conn._connection_lost()


class Connection:
    """One logical keep-alive connection slot that sends one request at a time.

    ``send(on_done)`` starts a request; ``on_done(sent_at, done_at, status, backend, error)`` is
    called exactly once, never from inside ``send`` itself, so a callback that immediately calls
    ``send`` again cannot recurse.
    """

    def __init__(
        self,
        target: Target,
        request: bytes,
        timeout_s: float,
        *,
        head: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._target = target
        self._request = request
        self._timeout = timeout_s
        self._head = head
        self._transport: asyncio.Transport | None = None
        self._wire: _Wire | None = None
        self._connecting: asyncio.Task[tuple[asyncio.Transport, _Wire]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._closed = False
        # State of the request in flight.
        self._on_done: DoneCallback | None = None
        self._sent_at = 0.0
        self._backend: bytes | None = None
        self._framed = False
        self._headers_done = False
        self._complete = False
        self._status = 0
        self._keep_alive = False
        #: TCP connections opened so far; tests use it to prove keep-alive reuse.
        self.connects = 0

    # -- public ---------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a request is in flight (its callback has not been called yet)."""
        return self._on_done is not None

    def send(self, on_done: DoneCallback, request: bytes | None = None, head: bool | None = None) -> None:
        """Start one request now; ``on_done`` gets the outcome (see the module docstring).

        ``request``/``head`` replace the connection's request from now on (a request mix); by
        default the bytes given to the constructor are sent again.
        """
        if self._on_done is not None:
            raise RuntimeError("a request is already in flight on this connection")
        if self._closed:
            raise RuntimeError("connection is closed")
        if request is not None:
            self._request = request
            if head is not None:
                self._head = head
        self._on_done = on_done
        self._sent_at = perf_counter()
        self._backend = None
        self._framed = self._headers_done = self._complete = False
        if self._timer is None:
            self._timer = self._loop.call_later(self._timeout, self._on_timer)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self._head:
                self._parser = httptools.HttpResponseParser(self)
            transport.write(self._request)
        else:
            self._drop(abort=True)
            self._connect()

    def fail_inflight(self, kind: str) -> None:
        """Give up on the request in flight (if any) as ``kind``; used when a drain overruns."""
        if self._on_done is not None:
            self._cancel_connect()
            self._drop(abort=True)
            self._finish_error(kind)

    def close(self) -> None:
        """Release the socket and timer; a request still in flight is reported as ``other``."""
        self._closed = True
        self.fail_inflight("other")
        self._drop(abort=False)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- connecting -----------------------------------------------------------------------------

    def _connect(self) -> None:
        coro = self._loop.create_connection(lambda: _Wire(self), self._target.host, self._target.port)
        task = self._loop.create_task(coro)
        self._connecting = task
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[tuple[asyncio.Transport, _Wire]]) -> None:
        if task is not self._connecting:
            # Superseded (timed out or closed): just don't leak the socket.
            if not task.cancelled() and task.exception() is None:
                task.result()[0].abort()
            return
        self._connecting = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if self._on_done is not None:
                self._finish_error("connect")
            return
        transport, wire = task.result()
        self.connects += 1
        if self._on_done is None:  # nothing to send any more
            transport.abort()
            return
        self._transport = transport
        self._wire = wire
        self._parser = httptools.HttpResponseParser(self)
        transport.write(self._request)

    def _cancel_connect(self) -> None:
        task = self._connecting
        if task is not None:
            self._connecting = None
            task.cancel()

    def _drop(self, abort: bool) -> None:
        transport = self._transport
        self._transport = None
        self._wire = None
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()

    # -- timeout --------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        if self._on_done is None or self._closed:
            return  # idle: the next send arms a fresh timer
        remaining = self._sent_at + self._timeout - perf_counter()
        if remaining > _TIMER_SLACK_S:
            self._timer = self._loop.call_later(remaining, self._on_timer)
            return
        kind = "connect" if self._connecting is not None else "timeout"
        self._cancel_connect()
        self._drop(abort=True)
        self._finish_error(kind)

    # -- receiving (called by _Wire and by the parser) -----------------------------------------

    def _data_received(self, data: bytes) -> None:
        if self._on_done is None:
            # Bytes nobody asked for (e.g. a 408 on an idle connection): the stream can no longer
            # be trusted to line up with our requests, so start over on the next send.
            self._drop(abort=True)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._drop(abort=True)
            self._finish_error("other")
            return
        except httptools.HttpParserError:
            self._drop(abort=True)
            self._finish_error("other")
            return
        if self._complete:
            self._finish_response()

    def _connection_lost(self) -> None:
        self._transport = None
        self._wire = None
        if self._on_done is None or self._complete:
            return
        if self._headers_done and not self._framed and not self._head:
            # Neither Content-Length nor chunked: the body ends at EOF, so this is the end.
            self._status = self._parser.get_status_code()
            self._keep_alive = False
            self._complete = True
            self._finish_response()
        else:
            self._finish_error("reset")

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        if n == 12 and name.lower() == _BACKEND_HEADER:
            self._backend = value
        elif (n == 14 or n == 17) and name.lower() in _FRAMING_HEADERS:
            self._framed = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            # llhttp takes any three digits ("020"); RFC 9110 15 says outside 100..599 is invalid.
            # Raised here, it becomes the parser error _data_received reports as "other".
            raise httptools.HttpParserError(f"invalid status code {status}")
        self._headers_done = True
        if self._head and status >= 200:
            self._status = status
            self._keep_alive = parser.should_keep_alive()
            self._complete = True

    def on_message_complete(self) -> None:
        # Read the parser's verdicts now: llhttp resets its flags once this callback returns.
        parser = self._parser
        status = parser.get_status_code()
        if status < 200 and status >= 100:
            # Interim response (100 Continue, 103 Early Hints): the real one follows.
            self._backend = None
            self._framed = self._headers_done = self._complete = False
            return
        self._status = status
        self._keep_alive = parser.should_keep_alive()
        self._complete = True

    # -- finishing ------------------------------------------------------------------------------

    def _finish_response(self) -> None:
        if not self._keep_alive:
            self._drop(abort=False)
        on_done = self._on_done
        self._on_done = None
        if on_done is not None:
            on_done(self._sent_at, perf_counter(), self._status, self._backend, None)

    def _finish_error(self, kind: str) -> None:
        on_done = self._on_done
        self._on_done = None
        if on_done is not None:
            on_done(self._sent_at, perf_counter(), 0, None, kind)


def close_all(connections: Sequence[Connection]) -> None:
    """Close every connection, continuing past any that fail to close cleanly."""
    for conn in connections:
        with contextlib.suppress(Exception):
            conn.close()
