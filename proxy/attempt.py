"""One try of a request on one endpoint: Envoy's per-try upstream request.

An ``Attempt`` is made for each endpoint a request is sent to. It counts itself in flight on
that endpoint, takes a pooled connection or opens one (moving on early from a connect that is
still pending after ``--connect-slow-threshold``), has the request written on it, waits for the
response head (``--upstream-timeout``, and the per-try ``--attempt-timeout``), tells the endpoint
how the try went (``Endpoint.observe``, once), reads and drops the body of a retriable error
before the next try, and lets go of the endpoint when it is over.

It decides nothing about the client and nothing about retries: every outcome goes to its
``Owner`` (the client-facing ``proxy.exchange.Exchange``), which asks ``proxy.retry.RetryState``
where to go next. The connection (``proxy.upstream.UpstreamConnection``) talks to the attempt
through ``AttemptEvents``; the response body, the hot path, streams past it into the owner.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from proxy.failure import CONNECT, PROTOCOL, READ_TIMEOUT, RESET, TIMEOUT, Failure
from proxy.retry import DISCARD_LIMIT, DISCARD_TIMEOUT_S
from proxy.upstream import ResponseSink, UpstreamConnection

if TYPE_CHECKING:
    from proxy.pool import Endpoint
    from proxy.state import ProxyState

log = logging.getLogger("proxy.attempt")


class Owner(ResponseSink, Protocol):
    """What an attempt reports to: the request it is a try of (``proxy.exchange.Exchange``)."""

    @property
    def head_request(self) -> bool: ...

    @property
    def request_id(self) -> bytes: ...

    @property
    def head_sent(self) -> bool:
        """The response's status line went to the client (a failure can no longer be answered)."""

    def connecting(self) -> None:
        """A new connection is being opened for the request (it may hold its body meanwhile)."""

    def send_request(self, conn: UpstreamConnection) -> None:
        """Write the request (head and what there is of its body) on ``conn``."""

    def move_on(self, att: Attempt, failure: Failure, reason: str) -> bool:
        """``att`` is slow (``failure``: ``connect`` or ``timeout``): abandon it for another endpoint
        if the retry rules allow; False = keep waiting on it."""

    def attempt_failed(self, att: Attempt, failure: Failure, reason: str, retriable: bool) -> None:
        """``att`` is over without a response: try again elsewhere or answer the client (502/504)."""

    def on_response_head(
        self,
        att: Attempt,
        conn: UpstreamConnection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        http11: bool,
    ) -> None: ...

    def retry_after_discard(self, att: Attempt, nxt: Endpoint) -> None:
        """A retriable error's body was dropped (``Attempt.discard``): send the request to ``nxt``."""

    def response_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        """The connection closed after the head was forwarded (a close-delimited end, or a cut)."""

    def response_cut(self, reason: str, failure: Failure) -> None:
        """The response cannot be completed (``read-timeout``, ``protocol``): close the client."""

    def accept_upgrade(self, conn: UpstreamConnection, headers: list[tuple[bytes, bytes]]) -> bool: ...

    def on_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def upgraded(self, conn: UpstreamConnection, rest: bytes) -> None: ...

    def upstream_write_paused(self) -> None: ...

    def upstream_write_resumed(self) -> None: ...


# A connect under way (what loop.create_connection gives, as a future).
Connecting = asyncio.Future[tuple[asyncio.Transport, UpstreamConnection]]


def _close_late(fut: Connecting) -> None:
    """An abandoned connect that completed anyway: close the connection nobody will use."""
    if not fut.cancelled() and fut.exception() is None:
        fut.result()[1].close()


def reason_of(exc: BaseException | None) -> str:
    """A failure's words for a log line or an error body."""
    if exc is None:
        return "connection closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# An attempt's phases; each slot that only matters in some phase is set on entering it (``timer``
# is the connect timer while CONNECTING and the discard timer while DISCARDING).
SENDING = 0  # taking a pooled connection, writing the request, waiting for the head
CONNECTING = 1  # a new connection is being opened (``connecting``, ``timer``)
SLOW = 2  # --attempt-timeout passed without a head, and the request may not move on: still waiting
ANSWERED = 3  # a response head arrived and went to the owner: the rest is the owner's
DISCARDING = 4  # a retriable status's body is read and dropped (``retry_to``, ``status``, ``timer``)
OVER = 5  # answered to the end, failed, or abandoned: its endpoint slot is free


class Attempt:
    """One try: an endpoint, its connection (or the connect under way), its deadlines."""

    __slots__ = (
        "conn",
        "connecting",
        "endpoint",
        "owner",
        "phase",
        "retry_to",
        "state",
        "status",
        "t0",
        "timer",
    )

    def __init__(self, owner: Owner, state: ProxyState, ep: Endpoint) -> None:
        # Per request on the hot path: only what every phase reads is set here.
        self.owner = owner
        self.state = state
        self.endpoint = ep
        self.t0 = perf_counter()
        self.conn: UpstreamConnection | None = None
        self.phase = SENDING
        ep.acquire()  # counted in flight until _end (release)

    @property
    def over(self) -> bool:
        return self.phase == OVER

    def start(self, pooled: bool) -> None:
        """Send on an idle pooled connection if there is one (and ``pooled``), else connect."""
        if pooled:
            conn = self.endpoint.take_idle()
            if conn is not None:
                self.attach(conn)
                return
        self._connect()

    # -- connecting ------------------------------------------------------------------------------
    def _connect(self) -> None:
        self.owner.connecting()
        ep = self.endpoint
        state = self.state
        loop = state.loop
        cfg = state.config
        read_timeout = cfg.upstream_read_timeout
        fut = asyncio.ensure_future(
            loop.create_connection(lambda: UpstreamConnection(ep, read_timeout), ep.host, ep.port), loop=loop
        )
        self.connecting: Connecting = fut
        if 0 < cfg.connect_slow_threshold < cfg.connect_timeout:
            # Still one timer per connect: it fires first at the threshold (_connect_slow), which
            # re-arms it for the rest of --connect-timeout if the request keeps waiting.
            self.timer: asyncio.TimerHandle | None = loop.call_later(
                cfg.connect_slow_threshold, self._connect_slow
            )
        else:
            self.timer = loop.call_later(cfg.connect_timeout, fut.cancel)
        self.phase = CONNECTING
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
        self.timer = None
        fut = self.connecting
        if self.phase != CONNECTING or fut.done():
            return  # completed in the same loop iteration: _connected is already scheduled
        state = self.state
        cfg = state.config
        ep = self.endpoint
        state.group.mark_failed(ep)
        reason = f"connect to {ep.label} not done after {cfg.connect_slow_threshold:g}s"
        if self.owner.move_on(self, CONNECT, reason):
            state.counters.inc("connect_slow", "moved")  # slow connect abandoned for another endpoint
            return
        state.counters.inc("connect_slow", "waited")  # slow connect, no other endpoint: kept waiting
        remaining = cfg.connect_timeout - cfg.connect_slow_threshold
        self.timer = state.loop.call_later(remaining, fut.cancel)

    def _connected(self, fut: Connecting) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.phase != CONNECTING:  # abandoned while connecting (the request ended)
            _close_late(fut)
            return
        self.phase = SENDING
        ep = self.endpoint
        if fut.cancelled():
            reason = f"connect to {ep.label} timed out after {self.state.config.connect_timeout:g}s"
        elif (exc := fut.exception()) is not None:
            reason = f"connect to {ep.label} failed: {reason_of(exc)}"
        else:
            self.attach(fut.result()[1])
            return
        log.warning("%s (request %s)", reason, self.owner.request_id.decode("latin-1"))
        self.observe(0, CONNECT)
        self.state.group.mark_failed(ep)
        self._end()
        self.owner.attempt_failed(self, CONNECT, reason, True)

    # -- sending and waiting for the head -----------------------------------------------------------
    def attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        owner = self.owner
        conn.attach(self, owner, owner.head_request)
        owner.send_request(conn)
        cfg = self.state.config
        # The per-try deadline when --attempt-timeout is on (head_timed_out gives the rest of
        # --upstream-timeout to a try that may not move on), else --upstream-timeout.
        conn.expect_head(cfg.attempt_timeout or cfg.upstream_timeout)

    def head_timed_out(self) -> None:
        """No response head by the deadline: move on (``--attempt-timeout``) or answer 504."""
        if self.phase not in (SENDING, SLOW):
            return
        cfg = self.state.config
        ep = self.endpoint
        if cfg.attempt_timeout and self.phase == SENDING:
            self.phase = SLOW
            reason = f"upstream {ep.label} sent no response head within {cfg.attempt_timeout:g}s"
            if self.owner.move_on(self, TIMEOUT, reason):
                return
            if self.conn is not None:  # not retriable: it may still answer within --upstream-timeout
                self.conn.expect_head(cfg.upstream_timeout - cfg.attempt_timeout)
            return
        self.abandon(TIMEOUT)
        reason = f"upstream {ep.label} sent no response within {cfg.upstream_timeout:g}s"
        self.owner.attempt_failed(self, TIMEOUT, reason, False)

    def observe(self, status: int, failure: Failure | None) -> None:
        """Report this try's outcome to its endpoint (the seam for EWMA, outlier detection, metrics)."""
        self.endpoint.observe(status, perf_counter() - self.t0, failure)

    # -- events from the connection (AttemptEvents) --------------------------------------------
    def on_response_head(
        self, conn: UpstreamConnection, status: int, headers: list[tuple[bytes, bytes]], http11: bool
    ) -> None:
        self.endpoint.observe(status, perf_counter() - self.t0, None)  # observe(), inlined: per request
        self.phase = ANSWERED
        self.owner.on_response_head(self, conn, status, headers, http11)

    def response_done(self, conn: UpstreamConnection, reuse: bool) -> None:
        """The response is complete (or given up): pool the connection (``reuse``) or close it; done."""
        self.conn = None
        conn.detach()
        ep = self.endpoint
        if reuse:
            ep.put_idle(conn)  # which closes it instead if it is not reusable
        else:
            conn.close()
        # _end(), inlined: per request
        self.phase = OVER
        adm = self.state.admission
        if adm is None:
            ep.release()
        else:
            adm.release(ep)

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        """The connection closed while this try had it."""
        phase = self.phase
        if phase == OVER:
            return
        self.conn = None
        if phase == DISCARDING:  # the discarded response ended (or broke): retry anyway
            self._discarded(conn, False)
            return
        if phase == ANSWERED:
            self.owner.response_lost(conn, exc)
            return
        self.observe(0, RESET)
        self._end()
        reason = f"upstream {self.endpoint.label} closed the connection before responding ({reason_of(exc)})"
        # Retriable only if not a byte of a response arrived (a partial head is an answer, broken).
        self.owner.attempt_failed(self, RESET, reason, not conn.received)

    def upstream_failed(self, conn: UpstreamConnection, reason: str) -> None:
        """The upstream sent something unparsable; the connection is already aborted."""
        phase = self.phase
        if phase == OVER:
            return
        self.conn = None
        if phase == DISCARDING:
            self._discarded(conn, False)
            return
        if phase == ANSWERED and self.owner.head_sent:
            self.owner.response_cut(reason, PROTOCOL)
            return
        if phase != ANSWERED:  # (a head the owner refused to pass on was reported with its status)
            self.observe(0, PROTOCOL)
        self._end()
        self.owner.attempt_failed(self, PROTOCOL, reason, False)

    def read_timed_out(self) -> None:
        """The response body stalled for --upstream-read-timeout: the client connection is closed."""
        if self.phase == DISCARDING and self.conn is not None:
            self._discarded(self.conn, False)  # the error's body stalled: give up its connection, retry
            return
        if self.phase != ANSWERED:
            return
        limit = self.state.config.upstream_read_timeout
        self.owner.response_cut(
            f"upstream {self.endpoint.label} sent nothing for {limit:g}s mid-response", READ_TIMEOUT
        )

    def accept_upgrade(self, conn: UpstreamConnection, headers: list[tuple[bytes, bytes]]) -> bool:
        if self.phase == OVER or not self.owner.accept_upgrade(conn, headers):
            return False
        self.observe(101, None)
        self.phase = ANSWERED
        return True

    def on_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.phase != OVER:
            self.owner.on_interim(status, headers)

    def upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        """After the 101 the connection is the tunnel's, not the pool's; the try is over."""
        self.conn = None
        self._end()
        self.owner.upgraded(conn, rest)

    def upstream_write_paused(self) -> None:
        self.owner.upstream_write_paused()

    def upstream_write_resumed(self) -> None:
        self.owner.upstream_write_resumed()

    # -- a retriable status: drop its body, then the next try (ResponseSink while discarding) ------
    def discard(
        self, conn: UpstreamConnection, nxt: Endpoint, status: int, content_length: int, keep: bool
    ) -> None:
        """Read and drop this ``status`` response, then have the owner send the request to ``nxt``,
        if its body is small and announced; else give up the connection at once (retry.DISCARD_LIMIT)."""
        self.phase = DISCARDING
        self.retry_to = nxt
        self.status = status
        self.timer = None
        conn.sink = self
        if self.owner.head_request or content_length == 0:
            return  # no body: on_response_end follows at once
        if keep and 0 < content_length <= DISCARD_LIMIT:
            state = self.state
            limit = min(DISCARD_TIMEOUT_S, state.config.upstream_timeout)
            self.timer = state.loop.call_later(limit, self._discard_timed_out)
            return
        self._discarded(conn, False)

    def on_response_body(self, chunk: bytes) -> None:
        pass  # discarded

    def flush(self) -> None:
        pass

    def on_response_end(self, conn: UpstreamConnection) -> None:
        self._discarded(conn, True)

    def _discard_timed_out(self) -> None:
        """The retriable response's body did not arrive in time: drop its connection, retry now."""
        self.timer = None
        conn = self.conn
        if self.phase != DISCARDING or conn is None:
            return
        self._discarded(conn, False)

    def _discarded(self, conn: UpstreamConnection, reuse: bool) -> None:
        """The discarded response is over (or given up): pool or close its connection, retry."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.response_done(conn, reuse)
        self.owner.retry_after_discard(self, self.retry_to)

    # -- the end -------------------------------------------------------------------------------
    def abandon(self, failure: Failure | None = None) -> None:
        """Stop this try now (the request ended, or moves on): cancel its connect or cut its
        connection, and let go of the endpoint; ``failure`` is reported to it first."""
        phase = self.phase
        if phase == OVER:
            return
        if failure is not None:
            self.observe(0, failure)
        if phase in (CONNECTING, DISCARDING) and self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if phase == CONNECTING:
            fut = self.connecting
            fut.remove_done_callback(self._connected)
            fut.add_done_callback(_close_late)
            fut.cancel()
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.attempt = conn.sink = None
            conn.abort()
        self._end()

    def _end(self) -> None:
        """The try is over: its endpoint slot is free (the in-flight cap's queue may move)."""
        self.phase = OVER
        adm = self.state.admission
        if adm is None:
            self.endpoint.release()
        else:
            adm.release(self.endpoint)
