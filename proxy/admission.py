"""Admission control: a per-endpoint cap on requests in flight, with a bounded wait queue.

A replica that is already working on ``--max-in-flight-per-upstream`` requests gets no more;
the balancer picks among the endpoints that still have room. When none has room the request
waits in one FIFO queue shared by the whole upstream (HAProxy's ``maxconn`` + backend queue,
Envoy's ``max_requests`` circuit breaker with ``max_pending_requests``) and takes the first
slot any endpoint frees. A full queue, or a wait longer than ``--queue-timeout``, is answered
``503`` with ``Retry-After``: shedding load early is kinder to a saturated backend than letting
work pile up in front of it, and the client learns at once that it may come back.

The request path sees three calls: ``acquire`` (a slot now, a place in the queue, or a 503),
``retry_slot`` (a retry passes the cap too, but is never queued) and ``release`` (done with an
endpoint: the queue is served). The queue and its one timer are this module's alone: every
waiter has the same timeout and the queue is FIFO, so the oldest waiter always expires first and
one timer, armed for it, serves the whole queue.

Only built when the cap is on (``Admission`` is None otherwise), so an uncapped proxy pays
nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

from engine.refusals import RETRY_AFTER_S, overload_response, with_retry_after

if TYPE_CHECKING:
    from proxy.balancer import Balancer
    from proxy.config import Config
    from proxy.counters import Counters
    from proxy.pool import Endpoint, UpstreamGroup

log = logging.getLogger("proxy.admission")

__all__ = ["RETRY_AFTER_S", "Admission", "Waiter", "overload_response", "with_retry_after"]


class Waiter(Protocol):
    """A request asking for a slot (``proxy.exchange.Exchange``)."""

    @property
    def hash_key(self) -> bytes | None: ...

    @property
    def request_id(self) -> bytes: ...

    def admitted(self, ep: Endpoint) -> None:
        """A slot on ``ep`` is this request's: send it there (the caller counts it in flight)."""

    def fail(self, status: int, body: bytes, retry_after: int = 0) -> None:
        """Answer the client with a proxy-generated error."""


class Admission:
    """The cap and the queue for one upstream group."""

    __slots__ = (
        "balancer",
        "cap",
        "counters",
        "group",
        "loop",
        "queue_size",
        "queue_timeout",
        "timer",
        "waiting",
    )

    def __init__(
        self,
        cap: int,
        queue_size: int,
        queue_timeout: float,
        group: UpstreamGroup,
        balancer: Callable[[], Balancer],
        counters: Counters,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.cap = cap
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.group = group
        # The policy in use, asked at each pick: PUT /policy replaces the balancer object at runtime.
        self.balancer = balancer
        self.counters = counters
        self.loop = loop
        # The queue, oldest first: waiter -> loop time its wait ends. A dict so a client leaving
        # the queue is removed at once, not searched for.
        self.waiting: dict[Waiter, float] = {}
        self.timer: asyncio.TimerHandle | None = None  # armed for the oldest waiter's deadline

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        group: UpstreamGroup,
        balancer: Callable[[], Balancer],
        counters: Counters,
        loop: asyncio.AbstractEventLoop,
    ) -> Admission | None:
        """The group's admission control, or None when ``--max-in-flight-per-upstream`` is off."""
        if not cfg.max_in_flight_per_upstream:
            return None
        return cls(
            cfg.max_in_flight_per_upstream, cfg.queue_size, cfg.queue_timeout, group, balancer, counters, loop
        )

    def full(self) -> frozenset[Endpoint]:
        cap = self.cap
        return frozenset(ep for ep in self.group.live if ep.load.in_flight >= cap)

    def exclude(self, also: Collection[Endpoint] = ()) -> Collection[Endpoint]:
        """What a pick must skip: unavailable endpoints, full ones, and ``also`` (already tried).

        Runs per request while the cap is on: with no endpoint full and nothing in ``also`` it
        returns the group's cached set instead of building a new one.
        """
        group = self.group
        cap = self.cap
        for ep in group.live:
            if ep.load.in_flight >= cap:
                break
        else:
            if not also:
                return group.unavailable()
        return {*group.unavailable(), *self.full(), *also}

    def _pick(self, waiter: Waiter, also: Collection[Endpoint] = ()) -> Endpoint | None:
        group = self.group
        ep = self.balancer().pick(group.live, self.exclude(also), waiter.hash_key)
        return ep if ep is not None and ep.load.in_flight < self.cap else None

    # -- the three calls -----------------------------------------------------------------------
    def acquire(self, waiter: Waiter, no_endpoints: bytes) -> None:
        """Send ``waiter`` to an endpoint with room (``admitted``), or queue it, or refuse it."""
        if not self.group.live:
            waiter.fail(502, no_endpoints)
            return
        ep = self._pick(waiter)
        if ep is not None:
            waiter.admitted(ep)
            return
        if len(self.waiting) >= self.queue_size:
            self.reject(
                waiter, "full", f"every endpoint has {self.cap} requests in flight and the queue is full"
            )
            return
        self.waiting[waiter] = self.loop.time() + self.queue_timeout
        if self.timer is None:
            self.timer = self.loop.call_later(self.queue_timeout, self._expire)

    def retry_slot(self, preferred: Endpoint, tried: Collection[Endpoint], waiter: Waiter) -> Endpoint | None:
        """The endpoint a retry may take now: ``preferred`` if it still has room, else another
        untried one with room, else None (the caller refuses it with ``overflow``).

        A retry passes the cap like a first attempt, but is not queued: behind fresh requests it
        would wait out most of the queue timeout, and at the head of the queue it would block
        requests that could take a slot on the replica it already tried (Envoy's retry overflow).
        """
        if preferred.load.in_flight < self.cap and preferred.live:
            return preferred
        return self._pick(waiter, tried)

    def release(self, ep: Endpoint) -> None:
        """A request is done with ``ep``: its slot is free, so the queue may move."""
        ep.release()
        if self.waiting:
            self.wake()

    def cancel(self, waiter: Waiter) -> None:
        """``waiter`` leaves the queue (its client went away); a no-op if it is not queued."""
        self.waiting.pop(waiter, None)

    # -- the queue -----------------------------------------------------------------------------
    def wake(self, group: UpstreamGroup | None = None) -> None:
        """A slot may have been freed: dispatch waiting requests while some endpoint has room.

        (Also ``UpstreamGroup.on_capacity``: an endpoint was added, cooled off, or came back.)
        """
        waiting = self.waiting
        while waiting:
            waiter = next(iter(waiting))
            ep = self._pick(waiter)
            if ep is None:
                return
            del waiting[waiter]
            waiter.admitted(ep)

    def _expire(self) -> None:
        """The oldest waiter's deadline: refuse every waiter whose wait is over, re-arm for the next."""
        self.timer = None
        waiting = self.waiting
        now = self.loop.time()
        while waiting:
            waiter, deadline = next(iter(waiting.items()))
            if deadline > now:
                self.timer = self.loop.call_at(deadline, self._expire)
                return
            del waiting[waiter]
            self.reject(waiter, "timeout", f"no endpoint slot became free within {self.queue_timeout:g}s")

    def overflow(self, waiter: Waiter) -> None:
        """A retry found no endpoint under the cap (``retry_slot`` gave None): 503, not queued."""
        self.reject(waiter, "retry", f"every other endpoint has {self.cap} requests in flight")

    def reject(self, waiter: Waiter, why: str, reason: str) -> None:
        """Answer ``waiter`` 503 with Retry-After because of the cap (``why``: full, timeout, retry)."""
        log.warning("503 for request %s: %s", waiter.request_id.decode("latin-1"), reason)
        self.counters.inc("rejected", "503")  # a request refused by the proxy, by status
        # refused by the in-flight cap: queue full, queue timeout, or a retry with no endpoint left
        self.counters.inc("queue_overflow", why)
        waiter.fail(503, f"503 Service Unavailable: {reason}\n".encode(), retry_after=RETRY_AFTER_S)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
