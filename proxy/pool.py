"""Endpoints and their keep-alive connection pools.

An ``Endpoint`` is one backend address plus its idle connections and the cheap
counters balancers read. The ``UpstreamGroup`` owns the current set: discovery
calls ``update`` with fresh addresses; endpoints that disappear are *drained*
(no new picks, idle connections closed, in-flight requests left alone) rather
than torn down, so scaling a service down never cuts a response in half.

Each other concern of an endpoint keeps its state in a record owned by its module, and only that
module writes it: ``ep.outlier`` (``outlier.OutlierState``: passive ejection), ``ep.health``
(``health.HealthState``: active checks), ``ep.load`` (``ewma.Load``: requests in flight and
the peak-EWMA latency, what load-aware picks read), ``ep.stats`` (``counters.EndpointStats``:
the per-upstream figures /metrics exports). This module owns the pool, the failed-connect
cool-down (``mark_failed``) and the set of endpoints new picks skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Protocol

from proxy.counters import EndpointStats, Histogram
from proxy.ewma import Load
from proxy.failure import Failure
from proxy.health import HEALTHY as HEALTHY
from proxy.health import UNHEALTHY, HealthState
from proxy.health import UNKNOWN as UNKNOWN
from proxy.outlier import OutlierState

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.upstream import UpstreamConnection

log = logging.getLogger("proxy.pool")

Address = tuple[str, int]


class AttemptObserver(Protocol):
    """Told every attempt's outcome by ``Endpoint.observe`` (``outlier.OutlierDetector`` is one)."""

    def observe(self, ep: Endpoint, status: int, failure: Failure | None) -> None: ...


class Endpoint:
    """One backend address: its idle pool, its drain and cool-down, and a record per concern."""

    __slots__ = (
        "address",
        "cool_timer",
        "cooling",
        "drain",
        "group",
        "health",
        "host",
        "idle",
        "label",
        "live",
        "load",
        "outlier",
        "port",
        "stats",
    )

    def __init__(self, address: Address, group: UpstreamGroup) -> None:
        self.address = address
        self.host, self.port = address
        self.label = f"{self.host}:{self.port}"
        self.group = group
        self.idle: deque[UpstreamConnection] = deque()
        self.live = True
        # Drained by an operator (admin POST /upstreams/{addr}/drain): no new picks, in-flight
        # requests finish. Kept by the group per address, so it survives discovery churn.
        self.drain = self.label in group.drains
        # A failed connect keeps new requests away for --fail-timeout (mark_failed).
        self.cooling = False
        self.cool_timer: asyncio.TimerHandle | None = None
        # The records of the other concerns, each written by its own module.
        self.load = Load(group.ewma_decay)
        self.outlier = OutlierState()
        self.health = HealthState()
        self.stats = EndpointStats()  # read by metrics.py and events.py at scrape / tick time

    def __repr__(self) -> str:
        return f"<Endpoint {self.label} live={self.live} in_flight={self.load.in_flight}>"

    @property
    def in_flight(self) -> int:
        """Requests counted against this endpoint now (``acquire`` .. ``release``)."""
        return self.load.in_flight

    @in_flight.setter
    def in_flight(self, n: int) -> None:
        self.load.in_flight = n

    @property
    def requests(self) -> int:
        """Requests ever counted against this endpoint."""
        return self.load.requests

    @requests.setter
    def requests(self, n: int) -> None:
        self.load.requests = n

    # The per-endpoint figures under the names the request path and older tests use (``stats``).
    @property
    def responses(self) -> list[int]:
        return self.stats.responses

    @property
    def failures(self) -> dict[Failure, int]:
        return self.stats.failures

    @property
    def latency(self) -> Histogram:
        return self.stats.latency

    @property
    def connects(self) -> int:
        return self.stats.connects

    @connects.setter
    def connects(self, n: int) -> None:
        self.stats.connects = n

    @property
    def retries(self) -> int:
        return self.stats.retries

    @retries.setter
    def retries(self, n: int) -> None:
        self.stats.retries = n

    @property
    def reused(self) -> int:
        return self.stats.reused

    @property
    def healthy(self) -> bool:
        """False only when active health checks failed it (UNKNOWN counts as healthy)."""
        return self.health.state != UNHEALTHY

    @property
    def ejected(self) -> bool:
        """Out of new picks by passive outlier detection (outlier.py) right now."""
        return self.outlier.ejected

    def take_idle(self) -> UpstreamConnection | None:
        """Most recently used first (LIFO) so surplus connections age out and get closed.

        Connections the backend already closed (EOF / transport closing) are
        discarded here so a request is never written to a dead socket we knew about.
        """
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.reusable():
                self.stats.reused += 1
                return conn
            conn.close()
        return None

    def put_idle(self, conn: UpstreamConnection) -> None:
        if not self.live or len(self.idle) >= self.group.max_idle or not conn.reusable():
            conn.close()
            return
        conn.idle_since = self.group.loop.time()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """An idle connection died on its own (backend closed it)."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().close()

    def observe(self, status: int, latency_s: float, failure: Failure | None) -> None:
        """One attempt against this endpoint ended: a response head arrived, or it failed.

        ``status`` is the upstream's status code (0 when there was none); ``latency_s`` runs from
        picking this endpoint to the response head or the failure; ``failure`` is None or why it
        failed (``proxy.failure``). Called once per attempt, so a retried request reports
        each endpoint it tried. Load-aware balancing (latency EWMA), passive outlier detection
        and per-upstream metrics all hang off this one call.
        """
        # Per-upstream metrics, exported by proxy/metrics.py at scrape time.
        self.stats.attempt(status, latency_s, failure)
        # Peak-EWMA latency for the peak_ewma policy (ewma.py), kept whatever the policy so a
        # runtime switch to it starts warm; a failure without a response counts as a slow sample.
        self.load.observe(latency_s, failure is not None, time.monotonic())
        # Passive outlier detection (consecutive 5xx / gateway failures -> ejection).
        outlier = self.group.outlier
        if outlier is not None:
            outlier.observe(self, status, failure)

    def acquire(self) -> None:
        """A request was given this endpoint: count it (``release`` when it is done with it)."""
        load = self.load
        load.in_flight += 1
        load.requests += 1

    def release(self) -> None:
        """A request that was counted against this endpoint has finished with it."""
        load = self.load
        load.in_flight -= 1
        if not self.live and load.in_flight <= 0:
            self.group.drained(self)


class UpstreamGroup:
    """The changing set of endpoints behind one upstream name.

    Three independent reasons keep new picks away from a live endpoint: a recent failed connect
    (``mark_failed``, nginx's fail_timeout), a passive ejection (``outlier.eject``) and a failing
    active health check (``health.set_health``). ``unavailable()`` is their union, cached as a
    frozenset and rebuilt only after one of them changed (``availability_changed``), because it
    runs per request.
    A fourth, an operator's drain (``set_drain``, admin.py), is stronger: panic mode never
    brings a drained endpoint back.
    """

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        *,
        max_idle: int,
        idle_timeout: float,
        fail_timeout: float,
        ewma_decay: float,
    ) -> None:
        self.name = name
        self.loop = loop
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.fail_timeout = fail_timeout
        self.ewma_decay = ewma_decay  # seconds; peak-EWMA latency time constant
        # Passive outlier detection, fed by Endpoint.observe; None switches it off.
        self.outlier: AttemptObserver | None = None
        # Told about every failed connect: DNS discovery re-resolves early (discovery.py).
        self.on_connect_failure: Callable[[], None] | None = None
        # Told when an endpoint may have become pickable (added by discovery, cooled off, ejection
        # over, healthy again): the in-flight cap's queue (admission.py) dispatches waiting requests
        # now instead of only when a request finishes.
        self.on_capacity: Callable[[], None] | None = None
        # Replaced wholesale on change (never mutated) so a balancer always sees a consistent list.
        self.live: list[Endpoint] = []
        self.endpoints: dict[Address, Endpoint] = {}
        self.drains: set[str] = set()  # labels ("host:port") an operator drained
        self._unavailable: frozenset[Endpoint] = frozenset()
        self._dirty = False
        self.panic = False  # every live endpoint is excluded: picks ignore the exclusions
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = max(0.01, min(1.0, idle_timeout / 4))

    @classmethod
    def from_config(cls, config: Config, loop: asyncio.AbstractEventLoop) -> UpstreamGroup:
        """The group for ``config.upstream`` with the pool's and the estimator's flags."""
        return cls(
            config.upstream,
            loop,
            max_idle=config.pool_max_idle,
            idle_timeout=config.pool_idle_timeout,
            fail_timeout=config.fail_timeout,
            ewma_decay=config.ewma_decay,
        )

    def update(self, addresses: Iterable[Address]) -> bool:
        """Make ``addresses`` the live set; returns whether anything changed."""
        wanted = list(dict.fromkeys(addresses))
        if [ep.address for ep in self.live] == wanted:
            return False
        wanted_set = set(wanted)
        for ep in self.live:
            if ep.address not in wanted_set:
                ep.live = False
                ep.close_idle()
                if ep.in_flight <= 0:
                    self.drained(ep)
        live = []
        for addr in wanted:
            known = self.endpoints.get(addr)
            if known is None:
                known = self.endpoints[addr] = Endpoint(addr, self)
            known.live = True  # an address that comes back while draining is simply revived
            live.append(known)
        old = [ep.label for ep in self.live]
        self.live = live
        self._dirty = True
        log.info("endpoints %s -> %s", self.name, [ep.label for ep in live])
        log.debug("previous endpoints %s", old)
        self._capacity()
        return True

    def _capacity(self) -> None:
        if self.on_capacity is not None:
            self.on_capacity()

    def availability_changed(self, *, back: bool) -> None:
        """A reason to skip an endpoint started or ended (outlier.py, health.py, a cool-down).

        The skip set is rebuilt at the next pick; ``back``: an endpoint may be pickable again,
        so the in-flight cap's queue is told now.
        """
        self._dirty = True
        if back:
            self._capacity()

    def mark_failed(self, ep: Endpoint) -> None:
        """A connect to ``ep`` failed: send it no new requests for ``fail_timeout`` seconds.

        This bridges the gap between a replica dying and discovery dropping it (up to one DNS
        resolve interval), like nginx's ``max_fails=1 fail_timeout=...``. It is deliberately
        separate from outlier ejection (``outlier.eject``): one refused connect is reason enough to look
        elsewhere for a second, but not to count as an incident with a growing penalty.
        """
        if self.on_connect_failure is not None:
            self.on_connect_failure()
        if self.fail_timeout <= 0:
            return
        if ep.cool_timer is not None:
            ep.cool_timer.cancel()
        ep.cool_timer = self.loop.call_later(self.fail_timeout, self._cooled, ep)
        if not ep.cooling:
            ep.cooling = True
            self._dirty = True
            log.info("endpoint %s: connect failed, no new requests for %gs", ep.label, self.fail_timeout)

    def _cooled(self, ep: Endpoint) -> None:
        ep.cool_timer = None
        ep.cooling = False
        self.availability_changed(back=True)

    def set_drain(self, label: str, on: bool) -> Endpoint | None:
        """Drain (``on``) or undrain the endpoint ``label``; returns it, or None if unknown.

        A drained endpoint gets no new requests (also not in panic mode, and not from the
        in-flight cap's queue) but its requests in flight finish and its pool stays. The
        label is remembered, so a replica that leaves and comes back at the same address
        is still drained. Unknown labels are refused so a typo is not silently remembered.
        """
        ep = next((e for e in self.endpoints.values() if e.label == label), None)
        if ep is None:
            return None
        if on:
            self.drains.add(label)
        else:
            self.drains.discard(label)
        if ep.drain != on:
            ep.drain = on
            self._dirty = True
            log.info("endpoint %s: %s by the admin API", label, "drained" if on else "undrained")
            if not on:
                self._capacity()
        return ep

    def unavailable(self) -> Collection[Endpoint]:
        """Endpoints new picks should skip: cooling, ejected or actively unhealthy.

        Empty when that would be every live endpoint: sending traffic to endpoints that may be
        failing beats failing every request for sure (Envoy's panic mode, with the threshold at
        100 %). Called per request, so the set is cached and rebuilt only after a change.
        """
        if self._dirty:
            self._rebuild()
        return self._unavailable

    def _rebuild(self) -> None:
        self._dirty = False
        live = self.live
        drained = frozenset(ep for ep in live if ep.drain)
        out = drained | frozenset(
            ep for ep in live if ep.cooling or ep.outlier.ejected or ep.health.state == UNHEALTHY
        )
        panic = len(live) > len(drained) and len(out) >= len(live)
        if panic != self.panic:
            self.panic = panic
            if panic:
                log.warning("upstream %s: every endpoint is failing; panic mode: using them all", self.name)
            else:
                log.info("upstream %s: panic mode over", self.name)
        self._unavailable = drained if panic else out

    def drained(self, ep: Endpoint) -> None:
        if not ep.live and self.endpoints.get(ep.address) is ep:
            del self.endpoints[ep.address]
            _cancel_timers(ep)

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    def _sweep(self) -> None:
        # One periodic timer for all pools instead of a timer per idle connection.
        deadline = self.loop.time() - self.idle_timeout
        for ep in self.live:
            idle = ep.idle
            while idle and idle[0].idle_since <= deadline:
                idle.popleft().close()
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for ep in self.endpoints.values():
            ep.close_idle()
            _cancel_timers(ep)

    def snapshot(self) -> list[dict[str, object]]:
        """For the admin /upstreams view; draining endpoints are listed until their last request ends."""
        now = self.loop.time()
        mono = time.monotonic()
        rows: list[dict[str, object]] = []
        for ep in [*self.live, *(e for e in self.endpoints.values() if not e.live)]:
            out = ep.outlier
            rows.append(
                {
                    "address": ep.label,
                    "in_flight": ep.in_flight,
                    "idle_connections": len(ep.idle),
                    "requests": ep.requests,
                    "draining": not ep.live,
                    "drained": ep.drain,
                    "failed_recently": ep.cooling,
                    "health": ep.health.state,
                    "ejected": out.ejected,
                    "ejected_for": round(max(0.0, out.ejected_until - now), 3) if out.ejected else 0.0,
                    "ejections": out.ejections,
                    "consecutive_5xx": out.consecutive_5xx,
                    "consecutive_failures": out.consecutive_failures,
                    # peak_ewma's latency estimate now (decayed since the last sample; 0 = none yet)
                    "latency_ewma_ms": round(ep.load.at(mono) * 1000, 3),
                }
            )
        return rows


def _cancel_timers(ep: Endpoint) -> None:
    if ep.cool_timer is not None:
        ep.cool_timer.cancel()
        ep.cool_timer = None
    ep.outlier.cancel()
