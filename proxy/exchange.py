"""One proxied request, client side: the request's body in, the response out, errors, access log.

Envoy's router in small: the ``Exchange`` is what the engine's connection sees
(``engine.handler.RequestHandler``). It picks the first endpoint (or asks admission control,
``proxy/admission.py``, for a slot), makes an ``Attempt`` (``proxy/attempt.py``) per endpoint it
sends the request to, and when a try ends without a usable answer asks its ``RetryState``
(``proxy/retry.py``: every retry rule lives there) where to go next. It holds the request body
until a connection is attached (and keeps a copy for a replay when the request may be sent
again), frames the response towards the client, and writes one access-log line.

Everything is driven by callbacks from the two protocols (no Task per request except while a
brand-new upstream connection is being opened), so a request on a pooled connection costs a
handful of method calls and two small objects (this one and its attempt).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from time import perf_counter
from typing import TYPE_CHECKING

from proxy.admission import with_retry_after
from proxy.attempt import OVER, Attempt, reason_of
from proxy.failure import CONNECT, RESET, TIMEOUT, Failure
from proxy.flow import CLIENT_BUSY, UPSTREAM_BUSY, WAITING_UPSTREAM
from proxy.headers import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UpstreamRequest,
    interim_head,
    rewrite_response,
    simple_response,
)
from proxy.retry import RetryState, Trigger
from proxy.tunnel import Tunnel

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol
    from proxy.pool import Endpoint
    from proxy.state import ProxyState
    from proxy.upstream import UpstreamConnection

log = logging.getLogger("proxy.exchange")

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

# How the response body is framed towards the client.
R_NONE, R_LENGTH, R_CHUNKED, R_CLOSE = 0, 1, 2, 3


class Exchange:
    """State of one request from parsed headers to the last response byte."""

    __slots__ = (
        "attempt",
        "body",
        "body_done",
        "client_close",
        "client_http11",
        "client_keep_alive",
        "close_delimited",
        "continue_sent",
        "down",
        "error",
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
        "retry",
        "started",
        "state",
        "status",
        "t0",
        "t_upstream",
        "target",
        "upgrade",
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
        self.has_body = has_body = not (
            req.framing == NO_BODY or (req.framing == LENGTH and req.content_length == 0)
        )
        # The retry state exists once there is something to remember: here when the body must be
        # kept for a replay, else at the first failed try (a GET answered at once never has one).
        self.retry: RetryState | None = None
        if has_body:
            policy = state.retry_policy
            if RetryState.keeps_body(policy, method, req.framing == CHUNKED, req.content_length):
                self.retry = RetryState(policy, state.retry_budget, state.counters, method, True, True)
        self.attempt: Attempt | None = None  # the current try
        self.upstream_label: str | None = None
        self.started = False
        self.finished = False
        self.head_sent = False
        self.continue_sent = False
        self.upgrade: bytes | None = None  # the Upgrade protocol asked for (WebSocket), if any
        self.status = 0
        self.nbytes = 0
        self.out: list[bytes] = []  # response bytes parsed from the current upstream read
        self.resp_mode = R_NONE
        self.upstream_close = False
        self.close_delimited = False
        self.client_close = False
        self.error: str | None = None  # why the exchange was cut short (the access log's "error")
        self.t_upstream: float | None = None
        # Request key for hashing policies (header, cookie or client address); set by the balancer's
        # ``key_for`` when the policy needs one, else None.
        self.hash_key: bytes | None = None

    @property
    def request_id(self) -> bytes:
        return self.req.request_id

    # -- choosing an endpoint, starting tries ----------------------------------------------------
    def start(self) -> None:
        self.started = True
        state = self.state
        # The budget's clock is perf_counter, as the request's arrival time ``t0``: no clock read here.
        state.retry_budget.deposit(self.t0)
        if state.admission is not None:
            state.admission.acquire(self, state.no_endpoints)
            return
        group = state.group
        ep = state.balancer.pick(group.live, group.unavailable(), self.hash_key)
        if ep is None:
            self.fail(502, state.no_endpoints)
            return
        self._try(ep, True)

    def admitted(self, ep: Endpoint) -> None:
        """Admission control gave this request a slot on ``ep`` (``admission.Waiter``)."""
        if not self.finished:
            self._try(ep, True)

    def _try(self, ep: Endpoint, pooled: bool) -> None:
        self.upstream_label = ep.label
        att = self.attempt = Attempt(self, self.state, ep)
        att.start(pooled)

    def pick_excluding(self, exclude: Collection[Endpoint]) -> Endpoint | None:
        """The balancer's pick among endpoints that can take a request now, minus ``exclude``
        (``retry.Picker``: what a retry may go to)."""
        state = self.state
        group = state.group
        adm = state.admission
        skip = adm.exclude(exclude) if adm is not None else {*group.unavailable(), *exclude}
        return state.balancer.pick(group.live, skip, self.hash_key)

    def _where_next(self, trigger: Trigger, att: Attempt) -> Endpoint | None:
        """Ask the retry rules (``RetryState.next``) where this request goes after ``att``."""
        rs = self.retry
        if rs is None:
            state = self.state
            rs = self.retry = RetryState(
                state.retry_policy, state.retry_budget, state.counters, self.method, self.has_body, False
            )
        return rs.next(trigger, att.endpoint, self, perf_counter(), self.req.request_id, self.body_done)

    def _again(self, nxt: Endpoint, failure: Trigger) -> None:
        """Send the request to ``nxt``: a replay of the kept body, unless nothing was sent yet."""
        if failure != CONNECT:
            rs = self.retry
            self.body = rs.replay() if rs is not None else []
        self._try(nxt, failure != RESET)  # after a reset: a fresh connection, never another pooled one

    # -- what the current try reports (attempt.Owner) ----------------------------------------------
    def connecting(self) -> None:
        if not self.body_done and self.has_body:
            # Hold the body in the kernel while connecting; a body-less request keeps reading so a
            # client that hangs up is noticed.
            self.down.gate.pause(WAITING_UPSTREAM)

    def send_request(self, conn: UpstreamConnection) -> None:
        if self.down.write_paused:
            conn.gate.pause(CLIENT_BUSY)
        transport = conn.transport
        body = self.body
        self.body = None
        transport.write(self.req.head)
        if body:
            self._write_body(transport, body)
        self.down.gate.resume(WAITING_UPSTREAM)
        if self.body_done:
            if self.req.framing == CHUNKED:
                transport.write(LAST_CHUNK)
        elif self.req.expect_continue and self.client_http11 and not self.continue_sent:
            self.continue_sent = True
            self.down.write(CONTINUE_100)

    def move_on(self, att: Attempt, failure: Failure, reason: str) -> bool:
        nxt = self._where_next(failure, att)
        if nxt is None:
            return False
        log.warning("%s; trying request %s on %s", reason, self.req.request_id.decode("latin-1"), nxt.label)
        self.attempt = None
        att.abandon(failure)
        self._again(nxt, failure)
        return True

    def attempt_failed(self, att: Attempt, failure: Failure, reason: str, retriable: bool) -> None:
        self.attempt = None
        if retriable:
            nxt = self._where_next(failure, att)
            if nxt is not None:
                if failure != CONNECT:  # a connect failure was logged as a warning already
                    log.info(
                        "%s; retrying request %s on %s",
                        reason,
                        self.req.request_id.decode("latin-1"),
                        nxt.label,
                    )
                self._again(nxt, failure)
                return
        if failure == TIMEOUT:
            msg = f"504 Gateway Timeout: {reason}\n"
            log.warning("%s (request %s)", msg.strip(), self.req.request_id.decode("latin-1"))
            self.fail(504, msg.encode())
            return
        if failure != CONNECT:
            log.warning("%s (request %s)", reason, self.req.request_id.decode("latin-1"))
        self.fail(502, f"502 Bad Gateway: {reason}\n".encode())

    def retry_after_discard(self, att: Attempt, nxt: Endpoint) -> None:
        self.attempt = None
        adm = self.state.admission
        if adm is not None:
            rs = self.retry
            slot = adm.retry_slot(nxt, rs.tried if rs is not None else (), self)
            if slot is None:
                adm.overflow(self)
                return
            nxt = slot
        log.info(
            "upstream %s answered %d; retrying request %s on %s",
            att.endpoint.label,
            att.status,
            self.req.request_id.decode("latin-1"),
            nxt.label,
        )
        self._again(nxt, att.status)

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
        if self.retry is not None:
            self.retry.keep(chunk)
        if self.body is not None:
            self.body.append(chunk)
            if self.started:
                self.down.gate.pause(WAITING_UPSTREAM)
            return
        att = self.attempt
        conn = att.conn if att is not None else None
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
        att = self.attempt
        if self.body is None and att is not None and att.conn is not None and self.req.framing == CHUNKED:
            att.conn.transport.write(LAST_CHUNK)

    # -- flow control ----------------------------------------------------------------------------
    def upstream_write_paused(self) -> None:
        self.down.gate.pause(UPSTREAM_BUSY)

    def upstream_write_resumed(self) -> None:
        self.down.gate.resume(UPSTREAM_BUSY)

    def client_write_paused(self) -> None:
        att = self.attempt
        if att is not None and att.conn is not None:
            att.conn.gate.pause(CLIENT_BUSY)

    def client_write_resumed(self) -> None:
        att = self.attempt
        if att is not None and att.conn is not None:
            att.conn.gate.resume(CLIENT_BUSY)

    # -- response from the upstream --------------------------------------------------------------
    def on_response_head(
        self,
        att: Attempt,
        conn: UpstreamConnection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        http11: bool,
    ) -> None:
        resp = rewrite_response(status, headers, self.req.request_id, http11)
        if status >= 500 and status in self.state.retry_policy.statuses:
            nxt = self._where_next(status, att)
            if nxt is not None:
                att.discard(conn, nxt, status, resp.content_length, not resp.close)
                return
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
        self.t_upstream = perf_counter()
        att = self.attempt
        if att is not None:
            self.attempt = None
            att.response_done(conn, not self.upstream_close and self.body_done)
        else:
            conn.close()
        self._finish()

    def response_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if self.close_delimited and exc is None:
            self.on_response_end(conn)  # EOF is how a close-delimited body ends
            return
        label = self.upstream_label
        self.response_cut(f"upstream {label} closed mid-response: {reason_of(exc)}", RESET)

    def response_cut(self, reason: str, failure: Failure) -> None:
        # The status line is already out: the only honest signal left is closing the client.
        self.flush()
        log.warning("%s (request %s)", reason, self.req.request_id.decode("latin-1"))
        self.state.counters.inc("responses_cut", failure)  # responses cut after their head, by failure
        self.error = f"upstream {failure}"
        self.client_close = True
        self._finish()

    # -- Upgrade (WebSocket) ---------------------------------------------------------------------
    def accept_upgrade(self, conn: UpstreamConnection, headers: list[tuple[bytes, bytes]]) -> bool:
        """The upstream answered 101: forward it if this request asked to switch to that protocol.

        RFC 9110 7.8: a server MUST NOT switch to a protocol the client did not ask for; a 101
        naming another protocol (or none) is an invalid answer, and the client gets a 502.
        """
        asked = self.upgrade
        if asked is None or self.finished:
            return False
        proto = next((v for n, v in headers if n.lower() == b"upgrade"), b"").strip()
        if proto.lower() != asked.strip().lower():
            return False
        resp = rewrite_response(101, headers, self.req.request_id, True)
        resp.parts += (b"Connection: Upgrade\r\nUpgrade: ", proto, b"\r\n\r\n")
        self.status = 101
        self.head_sent = True
        self.out.append(b"".join(resp.parts))
        return True

    def on_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """A backend's 1xx (103 Early Hints...): forwarded to an HTTP/1.1 client before the response
        (RFC 9110 15.2: a proxy MUST forward 1xx responses it did not ask for; HTTP/1.0 has none)."""
        if self.client_http11 and not self.head_sent and not self.finished:
            self.down.write(interim_head(status, headers))

    def upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        """After the 101: hand both connections to a Tunnel; this exchange ends here (logged as 101)."""
        self.flush()
        self.t_upstream = perf_counter()
        self.attempt = None
        down = self.down
        label = (self.upgrade or b"").decode("latin-1").lower()
        tunnel = Tunnel(self.state, down, down.transport, conn.transport, label)
        self._finish(notify=False)
        down.tunnel_started(self, tunnel, rest)

    # -- endings ---------------------------------------------------------------------------------
    def fail(self, status: int, body: bytes, retry_after: int = 0) -> None:
        """Answer with a proxy-generated error (only before any response byte went to the client)."""
        if self.finished:
            return
        self._drop_upstream()
        close = not (self.body_done and self.client_keep_alive) or self.state.draining
        self.status = status
        self.client_close = close
        response = simple_response(status, body, self.req.request_id, close)
        if retry_after:
            response = with_retry_after(response, status, retry_after)
        if self.head_request:
            # A HEAD response has no body (its Content-Length still says what a GET would get):
            # bytes after the head would be read as the start of the next response.
            response = response[: len(response) - len(body)]
        else:
            self.nbytes = len(body)
        self.down.write(response)
        self._finish()

    def abort(self) -> None:
        """The client connection is gone (or the engine cut it: ``abort_reason`` says why)."""
        if self.finished:
            return
        if not self.head_sent:
            self.status = 499  # nginx's "client closed request"
        self.error = self.down.abort_reason
        self._drop_upstream()
        self.client_close = True
        self._finish(notify=False)

    def _drop_upstream(self) -> None:
        att = self.attempt
        if att is not None:
            self.attempt = None
            att.abandon()

    def _finish(self, notify: bool = True) -> None:
        self.finished = True
        state = self.state
        adm = state.admission
        if adm is not None:
            adm.cancel(self)  # still queued for a slot: leave the queue
        att = self.attempt
        if att is not None:
            self.attempt = None
            if att.phase != OVER:
                att.abandon()
        down = self.down
        down.gate.resume(UPSTREAM_BUSY | WAITING_UPSTREAM)
        now = perf_counter()
        state.counters.response(self.status, now - self.t0)  # /metrics requests_total and duration
        if state.access_log is not None:
            state.access_log.log(
                self.req.request_id,
                self.method,
                self.target,
                self.status,
                self.nbytes,
                self.upstream_label,
                None if self.t_upstream is None else self.t_upstream - self.t0,
                now - self.t0,
                self.error,
            )
        if notify:
            down.exchange_finished(self)
