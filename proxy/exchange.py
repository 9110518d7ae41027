"""One proxied request: endpoint choice, upstream attach/retry, streaming, errors, access log.

Everything is driven by callbacks from the two protocols (no Task per request
except while a brand-new upstream connection is being opened), so a request on
a pooled connection costs a handful of method calls.

Retry policy, in two parts, as nginx's ``proxy_next_upstream error``:
- A failed connect means the request never left the proxy (its body, if any, is
  still held here), so any request moves on to the next endpoint it has not tried
  yet, until every live endpoint was tried. The failed endpoint also gets no new
  requests for ``--fail-timeout`` (see ``UpstreamGroup.mark_failed``).
- An upstream connection that fails after the request was written but before any
  response byte may or may not have reached the application: only an idempotent
  request without a body (GET/HEAD/OPTIONS) is tried again, once, on a fresh
  connection (another endpoint if available, else the same one). Requests with a
  body are never retried then, because their body was already streamed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from proxy.flow import CLIENT_BUSY, UPSTREAM_BUSY, WAITING_UPSTREAM
from proxy.headers import CHUNKED, LENGTH, NO_BODY, UpstreamRequest, rewrite_response, simple_response
from proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from proxy.context import ProxyState
    from proxy.downstream import DownstreamProtocol
    from proxy.pool import Endpoint

log = logging.getLogger("proxy.exchange")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

# How the response body is framed towards the client.
R_NONE, R_LENGTH, R_CHUNKED, R_CLOSE = 0, 1, 2, 3


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "connection closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class Exchange:
    """State of one request from parsed headers to the last response byte."""

    __slots__ = (
        "body",
        "body_done",
        "client_close",
        "client_http11",
        "client_keep_alive",
        "close_delimited",
        "conn",
        "connect_timer",
        "connecting",
        "down",
        "endpoint",
        "finished",
        "has_body",
        "hash_key",
        "head_request",
        "head_sent",
        "method",
        "nbytes",
        "out",
        "req",
        "resp_mode",
        "retries_left",
        "started",
        "state",
        "status",
        "t0",
        "t_attempt",
        "t_upstream",
        "target",
        "timer",
        "tried",
        "upstream_close",
        "upstream_label",
    )

    def __init__(
        self,
        down: DownstreamProtocol,
        state: ProxyState,
        method: bytes,
        target: bytes,
        req: UpstreamRequest,
        client_http11: bool,
        client_keep_alive: bool,
        t0: float,
    ) -> None:
        self.down = down
        self.state = state
        self.method = method
        self.target = target
        self.req = req
        self.client_http11 = client_http11
        self.client_keep_alive = client_keep_alive
        self.t0 = t0
        self.body: list[bytes] | None = []  # buffered until an upstream connection is attached
        self.body_done = False
        self.head_request = method == b"HEAD"
        self.has_body = not (req.framing == NO_BODY or (req.framing == LENGTH and req.content_length == 0))
        self.retries_left = 1 if (not self.has_body and method in IDEMPOTENT) else 0
        self.endpoint: Endpoint | None = None
        self.tried: list[Endpoint] = []
        self.conn: UpstreamConnection | None = None
        self.connecting: asyncio.Future | None = None
        self.connect_timer: asyncio.TimerHandle | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.upstream_label: str | None = None
        self.started = False
        self.finished = False
        self.head_sent = False
        self.status = 0
        self.nbytes = 0
        self.out: list[bytes] = []  # response bytes parsed from the current upstream read
        self.resp_mode = R_NONE
        self.upstream_close = False
        self.close_delimited = False
        self.client_close = False
        self.t_upstream: float | None = None
        self.t_attempt = t0
        # Request key for hashing policies (header, cookie or client address); set by the balancer's
        # ``key_for`` when the policy needs one, else None.
        self.hash_key: bytes | None = None

    # -- choosing and attaching an upstream ------------------------------------------------------
    def start(self) -> None:
        self.started = True
        group = self.state.group
        ep = self.state.balancer.pick(group.live, group.unavailable(), self.hash_key)
        if ep is None:
            self.fail(502, self.state.no_endpoints)
            return
        self._use(ep, pooled=True)

    def _use(self, ep: Endpoint, pooled: bool) -> None:
        self.endpoint = ep
        self.upstream_label = ep.label
        self.tried.append(ep)
        self.t_attempt = self.state.loop.time()
        ep.in_flight += 1
        ep.requests += 1
        if pooled:
            conn = ep.take_idle()
            if conn is not None:
                self._attach(conn)
                return
        self._connect(ep)

    def _connect(self, ep: Endpoint) -> None:
        if not self.body_done and self.has_body:
            # Hold the body in the kernel while connecting; a body-less request keeps reading so a
            # client that hangs up is noticed.
            self.down.gate.pause(WAITING_UPSTREAM)
        loop = self.state.loop
        fut = asyncio.ensure_future(
            loop.create_connection(lambda: UpstreamConnection(ep), ep.host, ep.port), loop=loop
        )
        self.connecting = fut
        self.connect_timer = loop.call_later(self.state.config.connect_timeout, fut.cancel)
        fut.add_done_callback(self._connected)

    def _connected(self, fut: asyncio.Future) -> None:
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        self.connecting = None
        if self.finished:  # client went away while we were connecting
            if not fut.cancelled() and fut.exception() is None:
                fut.result()[0].close()
            return
        ep = self.endpoint
        assert ep is not None
        if fut.cancelled():
            reason = f"connect to {ep.label} timed out after {self.state.config.connect_timeout:g}s"
        elif (exc := fut.exception()) is not None:
            reason = f"connect to {ep.label} failed: {_reason(exc)}"
        else:
            self._attach(fut.result()[1])
            return
        log.warning("%s (request %s)", reason, self.req.request_id.decode("latin-1"))
        self._observe(ep, 0, "connect")
        self.state.group.mark_failed(ep)
        self._retry_or_fail(ep, pooled=True, reason=reason, sent=False)

    def _retry_or_fail(self, ep: Endpoint, pooled: bool, reason: str, sent: bool) -> None:
        """Try another endpoint if the retry policy (module docstring) allows, else answer 502."""
        ep.release()
        self.endpoint = None
        if not sent or self.retries_left:
            if sent:
                self.retries_left -= 1
            group = self.state.group
            nxt = self.state.balancer.pick(group.live, {*self.tried, *group.unavailable()}, self.hash_key)
            if nxt is None and sent and ep.live:
                nxt = ep  # a stale pooled connection is retried on a fresh one to the same endpoint
            if nxt is not None:
                self._use(nxt, pooled)
                return
        self.fail(502, f"502 Bad Gateway: {reason}\n".encode())

    def _observe(self, ep: Endpoint, status: int, failure: str | None) -> None:
        """Report one attempt's outcome to the endpoint (the seam for EWMA, outlier detection, metrics)."""
        ep.observe(status, self.state.loop.time() - self.t_attempt, failure)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.attach(self, self.head_request)
        if self.down.write_paused:
            conn.gate.pause(CLIENT_BUSY)
        transport = conn.transport
        body = self.body
        self.body = None
        if body:
            transport.write(self.req.head)
            self._write_body(transport, body)
        else:
            transport.write(self.req.head)
        self.down.gate.resume(WAITING_UPSTREAM)
        if self.body_done:
            if self.req.framing == CHUNKED:
                transport.write(LAST_CHUNK)
        else:
            if self.req.expect_continue and self.client_http11:
                self.down.write(CONTINUE_100)
        self.timer = self.state.loop.call_later(self.state.config.upstream_timeout, self._timed_out)

    def _write_body(self, transport: asyncio.Transport, chunks: list[bytes]) -> None:
        if self.req.framing == CHUNKED:
            for chunk in chunks:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.writelines(chunks)

    # -- request body from the client ------------------------------------------------------------
    def on_body(self, chunk: bytes) -> None:
        if self.finished or not chunk:
            return
        if self.body is not None:
            self.body.append(chunk)
            if self.started:
                self.down.gate.pause(WAITING_UPSTREAM)
            return
        conn = self.conn
        if conn is None:
            return  # between a failed attempt and the error response: the body is dropped
        if self.req.framing == CHUNKED:
            conn.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            conn.transport.write(chunk)

    def on_body_end(self) -> None:
        self.body_done = True
        if self.finished:
            return
        if self.body is None and self.conn is not None and self.req.framing == CHUNKED:
            self.conn.transport.write(LAST_CHUNK)

    # -- flow control ----------------------------------------------------------------------------
    def upstream_write_paused(self) -> None:
        self.down.gate.pause(UPSTREAM_BUSY)

    def upstream_write_resumed(self) -> None:
        self.down.gate.resume(UPSTREAM_BUSY)

    def client_write_paused(self) -> None:
        if self.conn is not None:
            self.conn.gate.pause(CLIENT_BUSY)

    def client_write_resumed(self) -> None:
        if self.conn is not None:
            self.conn.gate.resume(CLIENT_BUSY)

    # -- response from the upstream --------------------------------------------------------------
    def on_response_head(
        self, conn: UpstreamConnection, status: int, headers: list[tuple[bytes, bytes]], http11: bool
    ) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.endpoint is not None:
            self._observe(self.endpoint, status, None)
        resp = rewrite_response(status, headers, self.req.request_id, http11)
        self.status = status
        self.upstream_close = resp.close
        keep = self.client_keep_alive and self.body_done and not self.state.draining
        parts = resp.parts
        if self.head_request or status == 204 or status == 304:
            self.resp_mode = R_NONE
        elif resp.content_length >= 0:
            self.resp_mode = R_LENGTH
        else:
            if not resp.chunked:
                # Close-delimited upstream body: the upstream connection ends with it.
                self.upstream_close = True
                self.close_delimited = True
            # Either way the length is unknown: chunk it for HTTP/1.1, end it by closing for 1.0.
            if self.client_http11:
                self.resp_mode = R_CHUNKED
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.resp_mode = R_CLOSE
                keep = False
        if not keep:
            parts.append(b"Connection: close\r\n\r\n")
        elif not self.client_http11:
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        self.client_close = not keep
        self.head_sent = True
        self.out.append(b"".join(parts))

    def on_response_body(self, chunk: bytes) -> None:
        if self.resp_mode == R_CHUNKED:
            self.out += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
        elif self.resp_mode == R_NONE:
            return
        else:
            self.out.append(chunk)
        self.nbytes += len(chunk)

    def flush(self) -> None:
        """Write everything parsed from one upstream read with one call.

        Head, body and terminator usually arrive in a single read; one
        ``writelines`` means one send() instead of three on the hot path.
        """
        out = self.out
        if out:
            if len(out) == 1:
                self.down.write(out[0])
            else:
                self.down.writelines(out)
            out.clear()

    def on_response_end(self, conn: UpstreamConnection) -> None:
        """Upstream response complete: parser said so, HEAD headers arrived, or close-delimited EOF."""
        if self.resp_mode == R_CHUNKED:
            self.out.append(LAST_CHUNK)
        self.flush()
        self.t_upstream = self.state.loop.time()
        self.conn = None
        conn.detach()
        ep = self.endpoint
        if ep is not None and not self.upstream_close and self.body_done and conn.reusable():
            ep.put_idle(conn)
        else:
            conn.close()
        self._finish()

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        """The upstream connection closed while this exchange owned it."""
        if self.finished:
            return
        self.conn = None
        if self.head_sent:
            if self.close_delimited and exc is None:
                self.on_response_end(conn)  # EOF is how a close-delimited body ends
                return
            self._abort_midstream(f"upstream {conn.endpoint.label} closed mid-response: {_reason(exc)}")
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        reason = f"upstream {conn.endpoint.label} closed the connection before responding ({_reason(exc)})"
        self._observe(conn.endpoint, 0, "reset")
        if not conn.received and self.retries_left and self.endpoint is not None:
            log.info("%s; retrying request %s", reason, self.req.request_id.decode("latin-1"))
            self._retry_or_fail(self.endpoint, pooled=False, reason=reason, sent=True)
            return
        log.warning("%s (request %s)", reason, self.req.request_id.decode("latin-1"))
        self.fail(502, f"502 Bad Gateway: {reason}\n".encode())

    def upstream_failed(self, conn: UpstreamConnection, reason: str) -> None:
        """The upstream sent something unparsable; the connection is already aborted."""
        if self.finished:
            return
        self.conn = None
        log.warning("%s (request %s)", reason, self.req.request_id.decode("latin-1"))
        if not self.head_sent:
            self._observe(conn.endpoint, 0, "protocol")
        if self.head_sent:
            self._abort_midstream(reason)
        else:
            self.fail(502, f"502 Bad Gateway: {reason}\n".encode())

    def _timed_out(self) -> None:
        self.timer = None
        if self.finished or self.head_sent:
            return
        label = self.upstream_label
        if self.endpoint is not None:
            self._observe(self.endpoint, 0, "timeout")
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.exchange = None
            conn.abort()
        limit = self.state.config.upstream_timeout
        msg = f"504 Gateway Timeout: upstream {label} sent no response within {limit:g}s\n"
        log.warning("%s (request %s)", msg.strip(), self.req.request_id.decode("latin-1"))
        self.fail(504, msg.encode())

    def _abort_midstream(self, reason: str) -> None:
        # The status line is already out: the only honest signal left is closing the client.
        self.flush()
        log.warning("%s (request %s)", reason, self.req.request_id.decode("latin-1"))
        self.client_close = True
        self._finish()

    # -- endings ---------------------------------------------------------------------------------
    def fail(self, status: int, body: bytes) -> None:
        """Answer with a proxy-generated error (only before any response byte went to the client)."""
        if self.finished:
            return
        self._drop_upstream()
        close = not (self.body_done and self.client_keep_alive) or self.state.draining
        self.status = status
        self.client_close = close
        self.down.write(simple_response(status, body, self.req.request_id, close))
        self.nbytes = len(body)
        self._finish()

    def abort(self) -> None:
        """The client connection is gone."""
        if self.finished:
            return
        if not self.head_sent:
            self.status = 499  # nginx's "client closed request"
        self._drop_upstream()
        self.client_close = True
        self._finish(notify=False)

    def _drop_upstream(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connecting is not None:
            self.connecting.cancel()  # _connected sees finished and closes any late connection
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.exchange = None
            conn.abort()

    def _finish(self, notify: bool = True) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.exchange = None
            conn.abort()
        if self.endpoint is not None:
            self.endpoint.release()
            self.endpoint = None
        down = self.down
        down.gate.resume(UPSTREAM_BUSY | WAITING_UPSTREAM)
        state = self.state
        if state.access_log is not None:
            now = state.loop.time()
            state.access_log.log(
                self.req.request_id,
                self.method,
                self.target,
                self.status,
                self.nbytes,
                self.upstream_label,
                None if self.t_upstream is None else self.t_upstream - self.t0,
                now - self.t0,
            )
        if notify:
            down.exchange_finished(self)
