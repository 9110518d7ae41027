"""Admission control: a per-endpoint cap on requests in flight, with a bounded wait queue.

A replica that is already working on ``--max-in-flight-per-upstream`` requests gets no more;
the balancer picks among the endpoints that still have room. When none has room the request
waits in one FIFO queue shared by the whole upstream (HAProxy's ``maxconn`` + backend queue,
Envoy's ``max_requests`` circuit breaker with ``max_pending_requests``) and takes the first
slot any endpoint frees. A full queue, or a wait longer than ``--queue-timeout``, is answered
``503`` with ``Retry-After``: shedding load early is kinder to a saturated backend than letting
work pile up in front of it, and the client learns at once that it may come back.

Only built when the cap is on (``Admission`` is None otherwise), so an uncapped proxy pays
nothing for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Collection
from typing import TYPE_CHECKING

from engine.refusals import RETRY_AFTER_S, overload_response, with_retry_after

if TYPE_CHECKING:
    from proxy.exchange import Exchange
    from proxy.pool import Endpoint, UpstreamGroup

log = logging.getLogger("proxy.admission")

__all__ = ["RETRY_AFTER_S", "Admission", "overload_response", "with_retry_after"]


class Admission:
    """The cap and the queue for one upstream group."""

    __slots__ = ("cap", "queue_size", "queue_timeout", "waiting")

    def __init__(self, cap: int, queue_size: int, queue_timeout: float) -> None:
        self.cap = cap
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.waiting: deque[Exchange] = deque()

    def full(self, group: UpstreamGroup) -> frozenset[Endpoint]:
        cap = self.cap
        return frozenset(ep for ep in group.live if ep.in_flight >= cap)

    def exclude(self, group: UpstreamGroup, also: Collection[Endpoint] = ()) -> Collection[Endpoint]:
        """What a pick must skip: unavailable endpoints, full ones, and ``also`` (already tried).

        Runs per request while the cap is on: with no endpoint full and nothing in ``also`` it
        returns the group's cached set instead of building a new one.
        """
        cap = self.cap
        for ep in group.live:
            if ep.in_flight >= cap:
                break
        else:
            if not also:
                return group.unavailable()
        return {*group.unavailable(), *self.full(group), *also}

    def admit(self, ex: Exchange) -> None:
        """Send ``ex`` to an endpoint with room, or queue it, or refuse it."""
        state = ex.state
        group = state.group
        if not group.live:
            ex.fail(502, state.no_endpoints)
            return
        ep = state.balancer.pick(group.live, self.exclude(group), ex.hash_key)
        if ep is not None and ep.in_flight < self.cap:
            ex.use(ep)
            return
        if len(self.waiting) >= self.queue_size:
            reason = f"every endpoint has {self.cap} requests in flight and the queue is full"
            self.reject(ex, "full", reason)
            return
        self.waiting.append(ex)
        ex.queued = True
        ex.timer = state.loop.call_later(self.queue_timeout, self._expire, ex)

    def _expire(self, ex: Exchange) -> None:
        ex.timer = None
        if not ex.queued:
            return
        self.forget(ex)
        self.reject(ex, "timeout", f"no endpoint slot became free within {self.queue_timeout:g}s")

    def forget(self, ex: Exchange) -> None:
        """``ex`` leaves the queue (client gone, or expired)."""
        if ex.queued:
            ex.queued = False
            with contextlib.suppress(ValueError):
                self.waiting.remove(ex)

    def wake(self, group: UpstreamGroup) -> None:
        """A slot may have been freed: dispatch waiting requests while some endpoint has room."""
        waiting = self.waiting
        while waiting:
            ex = waiting[0]
            state = ex.state
            ep = state.balancer.pick(group.live, self.exclude(group), ex.hash_key)
            if ep is None or ep.in_flight >= self.cap:
                return
            waiting.popleft()
            ex.queued = False
            if ex.timer is not None:
                ex.timer.cancel()
                ex.timer = None
            ex.use(ep)

    def reject(self, ex: Exchange, why: str, reason: str) -> None:
        """Answer ``ex`` 503 with Retry-After because of the cap (``why``: full, timeout, retry)."""
        log.warning("503 for request %s: %s", ex.req.request_id.decode("latin-1"), reason)
        ex.state.counters.inc("rejected", "503")  # a request refused by the proxy, by status
        # refused by the in-flight cap: queue full, queue timeout, or a retry with no endpoint left
        ex.state.counters.inc("queue_overflow", why)
        ex.fail(503, f"503 Service Unavailable: {reason}\n".encode(), retry_after=RETRY_AFTER_S)
