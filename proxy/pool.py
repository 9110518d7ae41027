"""Endpoints and their keep-alive connection pools.

An ``Endpoint`` is one backend address plus its idle connections and the cheap
counters balancers read. The ``UpstreamGroup`` owns the current set: discovery
calls ``update`` with fresh addresses; endpoints that disappear are *drained*
(no new picks, idle connections closed, in-flight requests left alone) rather
than torn down, so scaling a service down never cuts a response in half.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.upstream import UpstreamConnection

log = logging.getLogger("proxy.pool")

Address = tuple[str, int]


class Endpoint:
    """One backend address, its idle pool and load counters."""

    __slots__ = (
        "address",
        "failed_until",
        "group",
        "host",
        "idle",
        "in_flight",
        "label",
        "live",
        "port",
        "requests",
    )

    def __init__(self, address: Address, group: UpstreamGroup) -> None:
        self.address = address
        self.host, self.port = address
        self.label = f"{self.host}:{self.port}"
        self.group = group
        self.idle: deque[UpstreamConnection] = deque()
        self.in_flight = 0
        self.requests = 0
        self.live = True
        self.failed_until = 0.0  # loop time until which a failed connect keeps new requests away

    def __repr__(self) -> str:
        return f"<Endpoint {self.label} live={self.live} in_flight={self.in_flight}>"

    def take_idle(self) -> UpstreamConnection | None:
        """Most recently used first (LIFO) so surplus connections age out and get closed.

        Connections the backend already closed (EOF / transport closing) are
        discarded here so a request is never written to a dead socket we knew about.
        """
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.reusable():
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

    def observe(self, status: int, latency_s: float, failure: str | None) -> None:
        """One attempt against this endpoint ended: a response head arrived, or it failed.

        ``status`` is the upstream's status code (0 when there was none); ``latency_s`` runs from
        picking this endpoint to the response head or the failure; ``failure`` is None, "connect",
        "reset", "timeout" or "protocol". Called once per attempt, so a retried request reports
        each endpoint it tried. Load-aware balancing (latency EWMA), passive outlier detection
        and per-upstream metrics all hang off this one call.
        """

    def release(self) -> None:
        """A request that was counted against this endpoint has finished with it."""
        self.in_flight -= 1
        if not self.live and self.in_flight <= 0:
            self.group.drained(self)


class UpstreamGroup:
    """The changing set of endpoints behind one upstream name."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        *,
        max_idle: int = 128,
        idle_timeout: float = 4.0,
        fail_timeout: float = 1.0,
    ) -> None:
        self.name = name
        self.loop = loop
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.fail_timeout = fail_timeout
        # Endpoints whose last connect failed, skipped by new picks until their failed_until passes.
        self.cooling: set[Endpoint] = set()
        # Replaced wholesale on change (never mutated) so a balancer always sees a consistent list.
        self.live: list[Endpoint] = []
        self.endpoints: dict[Address, Endpoint] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = max(0.01, min(1.0, idle_timeout / 4))

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
            ep = self.endpoints.get(addr)
            if ep is None:
                ep = self.endpoints[addr] = Endpoint(addr, self)
            ep.live = True  # an address that comes back while draining is simply revived
            live.append(ep)
        old = [ep.label for ep in self.live]
        self.live = live
        log.info("endpoints %s -> %s", self.name, [ep.label for ep in live])
        log.debug("previous endpoints %s", old)
        return True

    def mark_failed(self, ep: Endpoint) -> None:
        """A connect to ``ep`` failed: send it no new requests for ``fail_timeout`` seconds.

        This bridges the gap between a replica dying and DNS dropping it (up to one resolve
        interval), like nginx's ``max_fails=1 fail_timeout=...``; outlier detection proper
        (consecutive 5xx, growing ejection times) is a separate, later concept.
        """
        if self.fail_timeout <= 0:
            return
        ep.failed_until = self.loop.time() + self.fail_timeout
        if ep not in self.cooling:
            self.cooling.add(ep)
            log.info("endpoint %s: connect failed, no new requests for %gs", ep.label, self.fail_timeout)

    def unavailable(self) -> Collection[Endpoint]:
        """Endpoints new picks should skip; empty when every live endpoint failed (try anyway)."""
        cooling = self.cooling
        if not cooling:
            return ()
        now = self.loop.time()
        for ep in [ep for ep in cooling if ep.failed_until <= now or not ep.live]:
            cooling.discard(ep)
        if len(cooling) >= len(self.live):
            return ()
        return cooling

    def drained(self, ep: Endpoint) -> None:
        if not ep.live and self.endpoints.get(ep.address) is ep:
            del self.endpoints[ep.address]

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

    def snapshot(self) -> list[dict[str, object]]:
        """For the admin /upstreams view; draining endpoints are listed until their last request ends."""
        return [
            {
                "address": ep.label,
                "in_flight": ep.in_flight,
                "idle_connections": len(ep.idle),
                "requests": ep.requests,
                "draining": not ep.live,
                "failed_recently": ep in self.cooling and ep.failed_until > self.loop.time(),
            }
            for ep in [*self.live, *(e for e in self.endpoints.values() if not e.live)]
        ]
