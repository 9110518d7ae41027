"""Load-balancing policies behind one tiny interface.

Policies only *choose*; they never own the endpoint list. The list is the
current live set handed in on every call, so discovery can swap it at any time
without telling the policy. Endpoints carry cheap counters (``in_flight``,
``requests``) that load-aware policies (least_request, p2c, peak_ewma) can read
without extra bookkeeping here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.pool import Endpoint


class Balancer(Protocol):
    """Pick one endpoint (or None when there is nothing usable) for the next request."""

    name: str

    def pick(
        self, endpoints: Sequence[Endpoint], exclude: Collection[Endpoint] = (), key: bytes | None = None
    ) -> Endpoint | None: ...


class RoundRobin:
    """A single ever-increasing cursor taken modulo the *current* set size.

    Keeping no per-endpoint position means a set that grows or shrinks between
    calls still gets an even spread: every window of ``len(endpoints)``
    consecutive picks over an unchanged set visits each endpoint exactly once.
    """

    name = "round_robin"
    __slots__ = ("_cursor",)

    def __init__(self) -> None:
        self._cursor = 0

    def pick(
        self, endpoints: Sequence[Endpoint], exclude: Collection[Endpoint] = (), key: bytes | None = None
    ) -> Endpoint | None:
        n = len(endpoints)
        if n == 0:
            return None
        start = self._cursor
        self._cursor = start + 1
        if not exclude:
            return endpoints[start % n]
        for i in range(n):
            ep = endpoints[(start + i) % n]
            if ep not in exclude:
                return ep
        return None


# Registry used by config validation and the server; later policies register here.
POLICIES: dict[str, type[Balancer]] = {"round_robin": RoundRobin}


def make_balancer(name: str) -> Balancer:
    return POLICIES[name]()
