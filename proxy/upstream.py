"""Backend-side protocol: one persistent connection to one endpoint.

The connection outlives requests (it is pooled between them) so it knows nothing about
clients. While leased it reports to the current try (``proxy.attempt.Attempt``, through
``AttemptEvents``: the response head, failures, deadlines) and streams the response body into
a ``ResponseSink`` (the client-facing ``Exchange``, or the attempt itself while it discards a
retriable error's body). The body goes to the sink directly, not through the attempt, because
it is the hot path: one call per parser event, no relay. Idle, the connection only watches for
the backend closing it, which is what lets the pool refuse stale connections instead of
failing a request.

Two deadlines share one lazily re-armed timer (a request costs a clock read, not a
TimerHandle allocated, started and cancelled): the response head's (``expect_head``, the
attempt's ``--upstream-timeout`` / ``--attempt-timeout``) and, once the head is in, the idle
time between two reads of the body (``--upstream-read-timeout``, nginx's
``proxy_read_timeout``). They never run at once: the body's starts when the head arrived.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import httptools

from proxy.flow import CLIENT_BUSY, ReadGate

if TYPE_CHECKING:
    from proxy.pool import Endpoint


class AttemptEvents(Protocol):
    """What a leased connection tells the try it serves (``proxy.attempt.Attempt``)."""

    @property
    def over(self) -> bool:
        """The try ended (answered, failed or abandoned): later events are not its business."""

    def on_response_head(
        self, conn: UpstreamConnection, status: int, headers: list[tuple[bytes, bytes]], http11: bool
    ) -> None: ...

    def accept_upgrade(self, conn: UpstreamConnection, headers: list[tuple[bytes, bytes]]) -> bool:
        """A 101 arrived: True if the request asked to switch to that protocol (else it is invalid)."""

    def on_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """A 1xx other than 100 and 101 (103 Early Hints...): a proxy forwards it (RFC 9110 15.2)."""

    def upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        """After an accepted 101: ``rest`` is the first tunnel bytes; the connection is the tunnel's."""

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None: ...

    def upstream_failed(self, conn: UpstreamConnection, reason: str) -> None:
        """Unparsable response bytes; the connection is already aborted."""

    def head_timed_out(self) -> None:
        """No response head by the deadline ``expect_head`` set."""

    def read_timed_out(self) -> None:
        """The body stalled: nothing read for ``read_timeout`` seconds (not while paused for the client)."""

    def upstream_write_paused(self) -> None: ...

    def upstream_write_resumed(self) -> None: ...


class ResponseSink(Protocol):
    """Where a response's body goes, parser event by parser event."""

    def on_response_body(self, chunk: bytes) -> None: ...

    def flush(self) -> None:
        """One upstream read was parsed: write out what it produced."""

    def on_response_end(self, conn: UpstreamConnection) -> None:
        """The response is complete; the connection was detached from its try already."""


class UpstreamConnection(asyncio.Protocol):
    """Parses responses with httptools; callbacks do nothing but hand data on."""

    __slots__ = (
        "armed",
        "attempt",
        "closed",
        "deadline",
        "endpoint",
        "eof",
        "gate",
        "head_only",
        "headers",
        "idle_since",
        "interim",
        "parser",
        "read_timeout",
        "reading",
        "received",
        "sink",
        "timer",
        "transport",
    )

    def __init__(self, endpoint: Endpoint, read_timeout: float) -> None:
        self.endpoint = endpoint
        self.read_timeout = read_timeout  # --upstream-read-timeout (0 = off)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.gate: ReadGate = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.attempt: AttemptEvents | None = None
        self.sink: ResponseSink | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.closed = False
        self.eof = False
        self.received = False  # any byte of the current response seen (decides retry safety)
        self.head_only = False
        self.interim = False
        self.reading = False  # the head is in, the body is not complete: the read deadline runs
        self.idle_since = 0.0
        # The pending deadline (loop time; 0.0 = none): the head's, or the next body read's.
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.armed = 0.0  # the loop time the timer fires at (when it is armed)

    # -- lifecycle -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate = ReadGate(self.transport)
        self.endpoint.stats.connects += 1  # upstream_connections_opened_total in /metrics

    def reusable(self) -> bool:
        return not (self.closed or self.eof or self.transport.is_closing())

    def attach(self, attempt: AttemptEvents, sink: ResponseSink, head_only: bool) -> None:
        self.attempt = attempt
        self.sink = sink
        self.received = False
        self.head_only = head_only

    def expect_head(self, timeout: float) -> None:
        """The request is written: the attempt's ``head_timed_out`` runs if no head arrives in time."""
        # _due, inlined (per request): the timer is usually armed already, for an earlier deadline.
        self.deadline = deadline = self.endpoint.group.loop.time() + timeout
        if self.timer is None or deadline < self.armed:
            self._due(deadline)

    def _due(self, deadline: float) -> None:
        """Set the pending deadline. The timer is only moved when it would fire too late (a
        shorter deadline than the one it was armed for); a later one is found when it fires."""
        self.deadline = deadline
        if self.timer is None or deadline < self.armed:
            if self.timer is not None:
                self.timer.cancel()
            self.armed = deadline
            self.timer = self.endpoint.group.loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self.timer = None
        att = self.attempt
        if att is None or not self.deadline:
            return  # answered (or idle): the next deadline arms a new timer
        now = self.endpoint.group.loop.time()
        if now < self.deadline:
            self._due(self.deadline)
            return
        if not self.reading:
            self.deadline = 0.0
            att.head_timed_out()
        elif self.gate.reasons & CLIENT_BUSY:
            # Not reading because the client is slow: that stall is the client send timeout's.
            self._due(now + self.read_timeout)
        else:
            self.deadline = 0.0
            att.read_timed_out()

    def _stop_timer(self) -> None:
        self.deadline = 0.0
        self.reading = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def detach(self) -> None:
        self.attempt = None
        self.sink = None
        self.deadline = 0.0
        self.reading = False
        if self.gate.reasons:
            self.gate.resume(CLIENT_BUSY)  # an idle connection must keep reading to notice EOF

    def close(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        self.eof = True
        return False  # let the transport close; connection_lost does the bookkeeping

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        att = self.attempt
        if att is not None:
            self.attempt = None
            att.upstream_lost(self, exc)
        else:
            self.endpoint.forget(self)

    def pause_writing(self) -> None:
        if self.attempt is not None:
            self.attempt.upstream_write_paused()

    def resume_writing(self) -> None:
        if self.attempt is not None:
            self.attempt.upstream_write_resumed()

    # -- data ----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.received = True
        att = self.attempt
        if att is None:
            # Bytes while idle mean the backend broke framing: the connection cannot be trusted.
            self.abort()
            self.endpoint.forget(self)
            return
        sink = self.sink
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Only raised after a 101 the attempt accepted: what follows belongs to the tunnel.
            self.attempt = self.sink = None
            att.upgraded(self, data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            self.attempt = self.sink = None
            self.abort()
            if not att.over:
                # Raised in one of our callbacks (an unexpected 101, a head headers.py refuses):
                # httptools wraps it as "User callback error"; the original says what was wrong.
                why = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
                att.upstream_failed(self, f"invalid response from {self.endpoint.label}: {why or exc}")
            return
        if sink is not None:
            sink.flush()
        if self.reading and self.read_timeout:
            # The body is not complete after this read: the next one is due within the timeout.
            self._due(self.endpoint.group.loop.time() + self.read_timeout)

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            if status < 100:  # llhttp takes any three digits: "000" is no response at all
                raise httptools.HttpParserError(f"invalid status {status:03d}")
            # A 100 is swallowed (the proxy answers Expect itself); other 1xx are forwarded.
            # 101 is only valid as the answer to an Upgrade request (WebSocket, see tunnel.py).
            att = self.attempt
            if status == 101:
                if att is None or not att.accept_upgrade(self, self.headers):
                    raise httptools.HttpParserError("unexpected 101 Switching Protocols")
                self.deadline = 0.0
            elif status != 100 and att is not None:
                att.on_interim(status, self.headers)
            self.interim = True
            return
        self.deadline = 0.0
        att = self.attempt
        if att is None:
            return
        if self.head_only:
            att.on_response_head(self, status, self.headers, self.parser.get_http_version() == "1.1")
            # llhttp does not know the request was HEAD and would wait for a body that never
            # comes; finish the message here and give the connection a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            sink = self.sink
            if self.attempt is not None and sink is not None:
                self.attempt = self.sink = None
                sink.on_response_end(self)
            return
        self.reading = True
        att.on_response_head(self, status, self.headers, self.parser.get_http_version() == "1.1")

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None and not self.interim:
            sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.reading = False
        sink = self.sink
        if sink is not None:
            self.attempt = self.sink = None
            sink.on_response_end(self)
