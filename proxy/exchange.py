"""One proxied request: endpoint choice, upstream attach/retry, streaming, errors, access log.

Everything is driven by callbacks from the two protocols (no Task per request
except while a brand-new upstream connection is being opened), so a request on
a pooled connection costs a handful of method calls.

Retries (what may be retried is ``proxy/retry.py``'s business; this is where it happens):
- A failed connect means the request never left the proxy (its body, if any, is
  still held here), so any request moves on to the next endpoint it has not tried
  yet, until every live endpoint was tried (``connect-failure``; not budgeted). The
  failed endpoint also gets no new requests for ``--fail-timeout``. A connect still pending
  after ``--connect-slow-threshold`` counts as failed the same way, without waiting for
  ``--connect-timeout`` (``_connect_slow``): a vanished replica's address drops SYNs.
- An upstream connection that fails after the request was written but before any
  response byte (``reset``) may or may not have reached the application: only a
  method from ``--retry-methods`` whose body (if any) was kept is sent again, on
  another endpoint if there is one, else on a fresh connection to the same one.
- A retriable status (``503`` by default) is not forwarded when another endpoint can
  be tried: its body is read and discarded, the connection goes back to the pool and
  the request is sent to a different replica. With no other replica it is forwarded.
  Only a short body announced by Content-Length, arriving in time, is read that way; any
  other costs the connection instead (retry.DISCARD_LIMIT). With the in-flight cap on,
  the retry must find a replica under the cap, else the client gets the cap's 503.
Every retry after the request was sent takes one unit from the retry budget and one
from ``--max-retries``; when either is spent the client gets the failure.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING

from proxy.admission import with_retry_after
from proxy.flow import CLIENT_BUSY, UPSTREAM_BUSY, WAITING_UPSTREAM
from proxy.headers import CHUNKED, LENGTH, NO_BODY, UpstreamRequest, rewrite_response, simple_response
from proxy.retry import CONNECT_FAILURE, DISCARD_LIMIT, DISCARD_TIMEOUT_S, KEEP_BODY_LIMIT, RESET
from proxy.tunnel import Tunnel
from proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol
    from proxy.pool import Endpoint
    from proxy.state import ProxyState

log = logging.getLogger("proxy.exchange")

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

# How the response body is framed towards the client.
R_NONE, R_LENGTH, R_CHUNKED, R_CLOSE = 0, 1, 2, 3


def _close_late(fut: asyncio.Future) -> None:
    """An abandoned connect that completed anyway: close the connection nobody will use."""
    if not fut.cancelled() and fut.exception() is None:
        fut.result()[0].close()


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
        "continue_sent",
        "down",
        "endpoint",
        "finished",
        "has_body",
        "hash_key",
        "head_request",
        "head_sent",
        "kept",
        "kept_bytes",
        "method",
        "nbytes",
        "out",
        "queued",
        "req",
        "resp_mode",
        "retries_left",
        "retry_to",
        "started",
        "state",
        "status",
        "t0",
        "t_attempt",
        "t_upstream",
        "target",
        "timer",
        "tried",
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
        self.has_body = not (req.framing == NO_BODY or (req.framing == LENGTH and req.content_length == 0))
        policy = state.retry_policy
        self.retries_left = policy.max_retries if method in policy.methods else 0
        # A copy of the body as sent, so a retriable request can be sent again; None = not kept
        # (not retriable, or larger than KEEP_BODY_LIMIT), which rules out any retry once sent.
        self.kept: list[bytes] | None = (
            []
            if self.has_body
            and self.retries_left
            and (req.framing == CHUNKED or req.content_length <= KEEP_BODY_LIMIT)
            else None
        )
        self.kept_bytes = 0
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
        self.continue_sent = False
        self.queued = False  # waiting in admission.Admission's queue for a free endpoint slot
        self.retry_to: Endpoint | None = None  # set while a retriable status's body is discarded
        self.upgrade: bytes | None = None  # the Upgrade protocol asked for (WebSocket), if any
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
        state = self.state
        state.retry_budget.deposit(state.loop.time())
        if state.admission is not None:
            state.admission.admit(self)
            return
        group = state.group
        ep = state.balancer.pick(group.live, group.unavailable(), self.hash_key)
        if ep is None:
            self.fail(502, state.no_endpoints)
            return
        self._use(ep, pooled=True)

    def use(self, ep: Endpoint) -> None:
        """Send the request to ``ep`` (called by admission.Admission once a slot is free)."""
        if not self.finished:
            self._use(ep, pooled=True)

    def _use(self, ep: Endpoint, pooled: bool) -> None:
        self.endpoint = ep
        self.upstream_label = ep.label
        self.tried.append(ep)
        self.t_attempt = perf_counter()
        ep.in_flight += 1
        ep.requests += 1
        if pooled:
            conn = ep.take_idle()
            if conn is not None:
                self._attach(conn)
                return
        self._connect(ep)

    def _release(self, ep: Endpoint) -> None:
        ep.release()
        adm = self.state.admission
        if adm is not None and adm.waiting:
            adm.wake(self.state.group)

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
        cfg = self.state.config
        if 0 < cfg.connect_slow_threshold < cfg.connect_timeout:
            # Still one timer per connect: it fires first at the threshold (_connect_slow), which
            # re-arms it for the rest of --connect-timeout if the request keeps waiting.
            self.connect_timer = loop.call_later(cfg.connect_slow_threshold, self._connect_slow)
        else:
            self.connect_timer = loop.call_later(cfg.connect_timeout, fut.cancel)
        fut.add_done_callback(self._connected)

    def _connect_slow(self) -> None:
        """The connect is still pending after --connect-slow-threshold: stop sending to that endpoint.

        A LAN connect takes well under a millisecond, so one this slow is almost always to an
        address nobody answers any more (a removed container drops SYNs; nothing refuses them),
        which would otherwise hold this request, and every other one that picks the address
        before the next DNS answer, for the whole --connect-timeout. The endpoint cools off as
        after a failed connect (``mark_failed``, which also asks DNS discovery to re-resolve),
        and the request moves on to an endpoint it has not tried when there is one: nothing was
        sent yet, so any request may. With no other endpoint it keeps waiting for this connect.
        """
        self.connect_timer = None
        fut = self.connecting
        ep = self.endpoint
        if fut is None or fut.done() or ep is None or self.finished:
            return  # completed in the same loop iteration: _connected is already scheduled
        state = self.state
        cfg = state.config
        state.group.mark_failed(ep)
        nxt = self._retry_target(CONNECT_FAILURE, None)
        if nxt is None:
            state.counters.inc("connect_slow", "waited")  # slow connect, no other endpoint: kept waiting
            remaining = cfg.connect_timeout - cfg.connect_slow_threshold
            self.connect_timer = state.loop.call_later(remaining, fut.cancel)
            return
        state.counters.inc("connect_slow", "moved")  # slow connect abandoned for another endpoint
        log.warning(
            "connect to %s not done after %gs; trying request %s on %s",
            ep.label,
            cfg.connect_slow_threshold,
            self.req.request_id.decode("latin-1"),
            nxt.label,
        )
        fut.remove_done_callback(self._connected)
        fut.add_done_callback(_close_late)
        fut.cancel()
        self.connecting = None
        self._observe(ep, 0, "connect")
        self._release(ep)
        self.endpoint = None
        self._use(nxt, pooled=True)

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
        self._retry_or_fail(ep, CONNECT_FAILURE, reason, pooled=True)

    def _retry_or_fail(self, ep: Endpoint, kind: str, reason: str, pooled: bool) -> None:
        """Send the request again if the retry policy and budget allow (module docstring), else 502."""
        self._release(ep)
        self.endpoint = None
        nxt = self._retry_target(kind, ep)
        if nxt is not None:
            if kind != CONNECT_FAILURE:
                log.info(
                    "%s; retrying request %s on %s", reason, self.req.request_id.decode("latin-1"), nxt.label
                )
                self.body = list(self.kept) if self.kept else []
            self._use(nxt, pooled)
            return
        self.fail(502, f"502 Bad Gateway: {reason}\n".encode())

    def _retry_target(self, kind: str, failed: Endpoint | None) -> Endpoint | None:
        """Where to send this request again after a ``kind`` failure, or None (do not retry).

        ``failed`` is the endpoint to fall back to when no other is left (only after a reset:
        a stale pooled connection is retried on a fresh connection to the same endpoint).
        """
        state = self.state
        policy = state.retry_policy
        counters = state.counters
        if kind == CONNECT_FAILURE:
            if not policy.on_connect_failure:
                return None
        else:
            if not (policy.on_reset if kind == RESET else int(kind) in policy.statuses):
                return None
            if self.has_body and self.kept is None:
                return None  # the body was streamed and not kept: it cannot be sent twice
            if self.retries_left <= 0:
                if self.method in policy.methods:
                    counters.inc("retries_exhausted", kind)  # --max-retries reached, by failure
                return None
        group = state.group
        exclude = {*self.tried, *group.unavailable()}
        adm = state.admission
        if adm is not None:
            exclude.update(adm.full(group))
        nxt = state.balancer.pick(group.live, exclude, self.hash_key)
        if nxt is None and kind == RESET and failed is not None and failed.live:
            nxt = failed
        if nxt is None:
            return None
        if kind != CONNECT_FAILURE:
            if not state.retry_budget.try_withdraw(state.loop.time()):
                counters.inc("retry_budget_exhausted", kind)  # a retry refused by the budget, by failure
                log.warning(
                    "retry budget spent: not retrying request %s after %s",
                    self.req.request_id.decode("latin-1"),
                    kind,
                )
                return None
            self.retries_left -= 1
        counters.inc("retries", kind)  # attempts sent again: connect-failure, reset, or the status
        if self.tried:
            self.tried[-1].retries += 1  # per endpoint, for the dashboard: the attempt that was retried
        return nxt

    def _observe(self, ep: Endpoint, status: int, failure: str | None) -> None:
        """Report one attempt's outcome to the endpoint (the seam for EWMA, outlier detection, metrics)."""
        ep.observe(status, perf_counter() - self.t_attempt, failure)

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
        elif self.req.expect_continue and self.client_http11 and not self.continue_sent:
            self.continue_sent = True
            self.down.write(CONTINUE_100)
        conn.expect_head(self.state.config.upstream_timeout)  # calls upstream_timed_out (no TimerHandle)

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
        kept = self.kept
        if kept is not None:
            n = self.kept_bytes + len(chunk)
            if n > KEEP_BODY_LIMIT:
                self.kept = None  # too big to keep: this request can no longer be retried once sent
            else:
                self.kept_bytes = n
                kept.append(chunk)
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
        if status >= 500 and self.body_done and status in self.state.retry_policy.statuses:
            nxt = self._retry_target(str(status), None)
            if nxt is not None:
                # Read and drop this response, then send the request to ``nxt`` (on_response_end),
                # if its body is small and announced; else give up the connection (retry.py).
                self.retry_to = nxt
                self.resp_mode = R_NONE
                n = resp.content_length
                if self.head_request or n == 0:
                    return  # no body: on_response_end follows at once
                if 0 < n <= DISCARD_LIMIT:
                    limit = min(DISCARD_TIMEOUT_S, self.state.config.upstream_timeout)
                    self.timer = self.state.loop.call_later(limit, self._discard_timed_out)
                    return
                self.upstream_close = True
                self._retry_after_status(conn)
                return
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
        if self.retry_to is not None:
            self._retry_after_status(conn)
            return
        if self.resp_mode == R_CHUNKED:
            self.out.append(LAST_CHUNK)
        self.flush()
        self.t_upstream = perf_counter()
        self.conn = None
        conn.detach()
        ep = self.endpoint
        if ep is not None and not self.upstream_close and self.body_done and conn.reusable():
            ep.put_idle(conn)
        else:
            conn.close()
        self._finish()

    def _discard_timed_out(self) -> None:
        """The retriable response's body did not arrive in time: drop its connection, retry now."""
        self.timer = None
        conn = self.conn
        if self.finished or self.retry_to is None or conn is None:
            return
        self.upstream_close = True
        self._retry_after_status(conn)

    def _retry_after_status(self, conn: UpstreamConnection) -> None:
        """The discarded retriable response is over (or given up): pool or close its connection, retry."""
        nxt, self.retry_to = self.retry_to, None
        assert nxt is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conn = None
        conn.detach()
        ep = self.endpoint
        if ep is not None and not self.upstream_close and conn.reusable():
            ep.put_idle(conn)
        else:
            conn.close()
        if ep is not None:
            self._release(ep)
            self.endpoint = None
        state = self.state
        adm = state.admission
        if adm is not None and (nxt.in_flight >= adm.cap or not nxt.live):
            # The slot seen when the status arrived was taken while its body was read: the retry
            # passes the in-flight cap like a first attempt, on another untried endpoint with
            # room; with none, the client gets a 503 rather than a replica going over its cap
            # (Envoy's retry overflow). It is not queued: a retry behind fresh requests, or one
            # blocking the queue's head, would only add to the overload the cap is there to shed.
            group = state.group
            nxt = state.balancer.pick(group.live, adm.exclude(group, self.tried), self.hash_key)
            if nxt is None or nxt.in_flight >= adm.cap:
                adm.reject(self, "retry", f"every other endpoint has {adm.cap} requests in flight")
                return
        log.info(
            "upstream %s answered %d; retrying request %s on %s",
            self.upstream_label,
            self.status,
            self.req.request_id.decode("latin-1"),
            nxt.label,
        )
        self.status = 0
        self.upstream_close = self.close_delimited = False
        self.body = list(self.kept) if self.kept else []
        self._use(nxt, pooled=True)

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        """The upstream connection closed while this exchange owned it."""
        if self.finished:
            return
        self.conn = None
        if self.retry_to is not None:  # the discarded response ended (or broke): retry anyway
            self._retry_after_status(conn)
            return
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
        if not conn.received and self.endpoint is not None:
            self._retry_or_fail(self.endpoint, RESET, reason, pooled=False)
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

    def upstream_timed_out(self) -> None:
        """No response head within --upstream-timeout (the attached connection's deadline fired)."""
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

    # -- Upgrade (WebSocket) ---------------------------------------------------------------------
    def accept_upgrade(self, conn: UpstreamConnection, headers: list[tuple[bytes, bytes]]) -> bool:
        """The upstream answered 101: forward it if this request asked to switch protocols."""
        if self.upgrade is None or self.finished:
            return False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.endpoint is not None:
            self._observe(self.endpoint, 101, None)
        resp = rewrite_response(101, headers, self.req.request_id, True)
        proto = next((v for n, v in headers if n.lower() == b"upgrade"), self.upgrade)
        resp.parts += (b"Connection: Upgrade\r\nUpgrade: ", proto, b"\r\n\r\n")
        self.status = 101
        self.head_sent = True
        self.out.append(b"".join(resp.parts))
        return True

    def upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        """After the 101: hand both connections to a Tunnel; this exchange ends here (logged as 101)."""
        self.flush()
        self.t_upstream = perf_counter()
        self.conn = None
        conn.exchange = None
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
        if self.queued and self.state.admission is not None:
            self.state.admission.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.exchange = None
            conn.abort()
        if self.endpoint is not None:
            ep, self.endpoint = self.endpoint, None
            self._release(ep)
        down = self.down
        down.gate.resume(UPSTREAM_BUSY | WAITING_UPSTREAM)
        state = self.state
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
            )
        if notify:
            down.exchange_finished(self)
