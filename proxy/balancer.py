"""Load-balancing policies behind one tiny interface.

Policies only *choose*; they never own the endpoint list. The list is the
current live set handed in on every call, so discovery can swap it at any time
without telling the policy. Endpoints carry cheap counters (``in_flight``,
``requests``, the peak-EWMA latency fed by ``Endpoint.observe``) that
load-aware policies read without extra bookkeeping here.

``pick`` runs once per request (tens of thousands of times a second), so the
common path of every policy allocates nothing: no filtered copies of the list
unless ``exclude`` (endpoints already tried, or cooling after a failed connect)
is non-empty, which only happens on retries and after failures.

The policies, in the order an operator usually reaches for them:

- ``round_robin``: each endpoint in turn. Even by request count, blind to load.
- ``random``: uniform choice. Same shape, no shared cursor.
- ``least_request``: fewest requests in flight (ties taken in round-robin
  order, so an idle proxy still spreads evenly), scanning every endpoint.
- ``p2c``: two random endpoints, the one with fewer in flight wins (Mitzenmacher's
  "power of two choices"; Envoy's LEAST_REQUEST does this). O(1) per pick and
  close to ``least_request`` without herding onto one "least loaded" endpoint.
- ``peak_ewma``: P2C over cost = peak-EWMA latency x (in flight + 1), as
  Finagle's and Linkerd's (tower's) balancers do. Sees a slow replica even when
  it holds no more requests than the others.
- ``consistent_hash``: a hash ring keyed by a header, a cookie or the client
  address, with bounded load so a hot key spills over instead of melting one
  replica. Requests without the key fall back to round robin.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import re
import time
import zlib
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.pool import Endpoint

_crc32 = zlib.crc32


# -- the interface -----------------------------------------------------------------------------


class Balancer(Protocol):
    """Pick one endpoint (or None when there is nothing usable) for the next request.

    ``needs_key`` tells the client side whether to compute ``key_for`` per request at all: only
    hashing policies do, so the others cost nothing extra.
    """

    @property
    def name(self) -> str: ...

    @property
    def needs_key(self) -> bool: ...

    def pick(
        self, endpoints: Sequence[Endpoint], exclude: Collection[Endpoint] = (), key: bytes | None = None
    ) -> Endpoint | None: ...

    def key_for(self, headers: Sequence[tuple[bytes, bytes]], client_ip: bytes) -> bytes | None: ...


class _Policy:
    """Defaults shared by the policies that do not hash."""

    __slots__ = ()
    name: ClassVar[str] = ""
    needs_key: ClassVar[bool] = False

    def key_for(self, headers: Sequence[tuple[bytes, bytes]], client_ip: bytes) -> bytes | None:
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class RoundRobin(_Policy):
    """A single ever-increasing cursor taken modulo the *current* set size.

    Keeping no per-endpoint position means a set that grows or shrinks between
    calls still gets an even spread: every window of ``len(endpoints)``
    consecutive picks over an unchanged set visits each endpoint exactly once.
    """

    name: ClassVar[str] = "round_robin"
    __slots__ = ("_cursor",)

    def __init__(self, config: Config | None = None) -> None:
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
        # Cursor over the allowed endpoints only: handing an excluded endpoint's turn to its
        # neighbour would give that neighbour a double share (2:1 with one of three ejected).
        allowed = [ep for ep in endpoints if ep not in exclude]
        return allowed[start % len(allowed)] if allowed else None


class Random(_Policy):
    """Uniform choice: round robin's shape without a shared cursor (Envoy's RANDOM)."""

    name: ClassVar[str] = "random"
    __slots__ = ("_random",)

    def __init__(self, config: Config | None = None, seed: int | None = None) -> None:
        self._random = random.Random(seed).random

    def pick(
        self, endpoints: Sequence[Endpoint], exclude: Collection[Endpoint] = (), key: bytes | None = None
    ) -> Endpoint | None:
        if exclude:  # the slow path (retries, cooling endpoints) pays for a filtered copy
            endpoints = [ep for ep in endpoints if ep not in exclude]
        n = len(endpoints)
        if n == 0:
            return None
        return endpoints[int(self._random() * n)]


class LeastRequest(_Policy):
    """Fewest requests in flight, by a full scan (nginx's ``least_conn``).

    The scan starts one further along on every pick, so ties (an idle or evenly loaded set)
    go round robin instead of always to the first endpoint.
    """

    name: ClassVar[str] = "least_request"
    __slots__ = ("_cursor",)

    def __init__(self, config: Config | None = None) -> None:
        self._cursor = 0

    def pick(
        self, endpoints: Sequence[Endpoint], exclude: Collection[Endpoint] = (), key: bytes | None = None
    ) -> Endpoint | None:
        n = len(endpoints)
        if n == 0:
            return None
        start = self._cursor
        self._cursor = start + 1
        best: Endpoint | None = None
        best_load = 0
        for i in range(n):
            ep = endpoints[(start + i) % n]
            if (best is None or ep.load.in_flight < best_load) and not (exclude and ep in exclude):
                best, best_load = ep, ep.load.in_flight
                if best_load == 0:
                    break
        return best


class PowerOfTwo(_Policy):
    """Two distinct random endpoints; the one with fewer requests in flight wins (ties: the first)."""

    name: ClassVar[str] = "p2c"
    __slots__ = ("_random",)

    def __init__(self, config: Config | None = None, seed: int | None = None) -> None:
        self._random = random.Random(seed).random

    def pick(
        self, endpoints: Sequence[Endpoint], exclude: Collection[Endpoint] = (), key: bytes | None = None
    ) -> Endpoint | None:
        if exclude:
            endpoints = [ep for ep in endpoints if ep not in exclude]
        n = len(endpoints)
        if n < 2:
            return endpoints[0] if n else None
        rnd = self._random
        i = int(rnd() * n)
        j = int(rnd() * (n - 1))
        a = endpoints[i]
        b = endpoints[j + 1 if j >= i else j]
        return b if self._cheaper(b, a) else a

    def _cheaper(self, b: Endpoint, a: Endpoint) -> bool:
        """Whether the second choice ``b`` beats the first ``a`` (a tie goes to ``a``)."""
        return b.load.in_flight < a.load.in_flight


class PeakEwma(PowerOfTwo):
    """P2C over peak-EWMA latency x (in flight + 1) (Finagle's and Linkerd's default balancer).

    In-flight counts alone miss a replica that is slow but not yet backed up (at low
    concurrency every endpoint holds 0 or 1 requests); latency alone would herd everything onto
    the fastest one. Their product estimates how long a new request would wait. The estimate is
    kept on each endpoint by ``Endpoint.observe`` whatever the policy, so switching to this
    policy at runtime starts from warm numbers.
    """

    name: ClassVar[str] = "peak_ewma"
    __slots__ = ("_clock",)

    def __init__(
        self,
        config: Config | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, seed)
        self._clock = clock

    def _cheaper(self, b: Endpoint, a: Endpoint) -> bool:
        now = self._clock()
        return b.load.cost(now) < a.load.cost(now)


# -- consistent hashing ------------------------------------------------------------------------

VIRTUAL_NODES = 160  # ring points per endpoint (ketama uses 160): ~5 % spread of ring share
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header/cookie name


def parse_hash_on(value: str) -> tuple[str, bytes]:
    """``header:NAME``, ``cookie:NAME`` or ``client`` -> (kind, lower-cased name); ValueError if bad."""
    value = value.strip()
    if value == "client":
        return "client", b""
    kind, sep, name = value.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if not sep or kind not in ("header", "cookie") or not _TOKEN.match(name):
        raise ValueError(f"expected header:NAME, cookie:NAME or client, got {value!r}")
    # Header names are case-insensitive; cookie names are not (RFC 6265), so only headers fold.
    return kind, (name.lower() if kind == "header" else name).encode()


def _point(data: bytes) -> int:
    """A virtual node's ring position: a well-mixed hash, computed only when the set changes.

    (CRC-32 here would place a replica's 160 similar labels in clusters: with 10 endpoints one
    got 2.4x its share in a trial.)
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "big")


def _key_hash(key: bytes) -> int:
    """A request key's ring position: CRC-32, ~10x cheaper per request than blake2b and, against
    well-mixed points, as even (unit tests check the shares). Unlike ``hash()`` it is stable
    across processes and restarts, so every proxy instance maps a key to the same endpoint."""
    return _crc32(key)


def load_bound(factor: float, in_flight_total: int, n: int) -> int:
    """Requests an endpoint may hold before consistent hashing skips it: ``ceil(factor x
    (in_flight_total + 1) / n)`` over the ``n`` live endpoints, the ``+ 1`` being the request
    being placed (the paper's ``ceil(c x (m + 1) / n)``). At least 1 for any factor >= 1."""
    return math.ceil(factor * (in_flight_total + 1) / n)


class ConsistentHash(_Policy):
    """A hash ring with virtual nodes and bounded loads (Mirrokni, Thorup, Zadimoghaddam 2016).

    Each endpoint owns ``VIRTUAL_NODES`` points on a 32-bit ring, placed by hashing its
    address, so adding or removing one endpoint moves only the keys it gains or loses
    (about 1/N of them). A key goes to the first point clockwise from its hash whose endpoint
    is not excluded and holds fewer requests than ``load_bound`` (``ceil(factor x (in_flight_total
    + 1) / N)``);
    a hot key therefore overflows to the next endpoints on the ring instead of piling up on
    one. ``factor`` 0 switches the bound off. Requests without a key go round robin, like
    HAProxy's ``balance hdr()`` does when the header is missing.
    """

    name: ClassVar[str] = "consistent_hash"
    needs_key: ClassVar[bool] = True
    __slots__ = ("_factor", "_fallback", "_kind", "_name", "_owners", "_points", "_ring_of")

    def __init__(self, config: Config) -> None:
        self._kind, self._name = parse_hash_on(config.hash_on)
        self._factor = config.hash_balance_factor
        self._fallback = RoundRobin()
        self._ring_of: Sequence[Endpoint] | None = None
        self._points: list[int] = []
        self._owners: list[Endpoint] = []

    def key_for(self, headers: Sequence[tuple[bytes, bytes]], client_ip: bytes) -> bytes | None:
        kind = self._kind
        if kind == "client":
            return client_ip
        want = self._name
        if kind == "header":
            for name, value in headers:
                if len(name) == len(want) and name.lower() == want:
                    return value or None
            return None
        for name, value in headers:
            if name.lower() == b"cookie":
                for pair in value.split(b";"):
                    k, sep, v = pair.strip().partition(b"=")
                    if sep and k == want:
                        return v.strip(b'"') or None
        return None

    def _ring(self, endpoints: Sequence[Endpoint]) -> None:
        """(Re)build the ring when the live list object changes (the group replaces it on change)."""
        points: list[tuple[int, str, Endpoint]] = []
        for ep in endpoints:
            label = ep.label
            points.extend((_point(b"%s-%d" % (label.encode(), i)), label, ep) for i in range(VIRTUAL_NODES))
        points.sort(key=lambda p: (p[0], p[1]))
        self._points = [p[0] for p in points]
        self._owners = [p[2] for p in points]
        self._ring_of = endpoints

    def pick(
        self, endpoints: Sequence[Endpoint], exclude: Collection[Endpoint] = (), key: bytes | None = None
    ) -> Endpoint | None:
        if key is None:
            return self._fallback.pick(endpoints, exclude)
        n = len(endpoints)
        if n == 0:
            return None
        if endpoints is not self._ring_of:
            self._ring(endpoints)
        points, owners = self._points, self._owners
        size = len(points)
        start = bisect.bisect_left(points, _key_hash(key))
        first = owners[start % size]
        factor = self._factor
        if first.load.in_flight == 0 or not factor:  # the bound is >= 1: an idle endpoint is always under it
            limit = 0
        else:
            limit = load_bound(factor, sum(ep.load.in_flight for ep in endpoints), n)
        if (not limit or first.load.in_flight < limit) and not (exclude and first in exclude):
            return first
        if not limit and factor:  # computed lazily above; needed for the walk
            limit = load_bound(factor, sum(ep.load.in_flight for ep in endpoints), n)
        # Slow path: walk clockwise over distinct endpoints; if every allowed one is at the bound
        # (only possible with exclusions), the first allowed one on the ring still gets it.
        checked: set[Endpoint] = set()
        fallback: Endpoint | None = None
        for i in range(start, start + size):
            ep = owners[i % size]
            if ep in checked:
                continue
            checked.add(ep)
            if not (exclude and ep in exclude):
                if not limit or ep.load.in_flight < limit:
                    return ep
                if fallback is None:
                    fallback = ep
            if len(checked) == n:
                break
        return fallback


# Registry used by config validation, the server and the admin policy switch.
POLICIES: dict[str, Callable[[Config], Balancer]] = {
    cls.name: cls for cls in (RoundRobin, Random, LeastRequest, PowerOfTwo, PeakEwma, ConsistentHash)
}


def make_balancer(name: str, config: Config) -> Balancer:
    """A fresh policy ``name``; ``config`` supplies its options (``--hash-on``, ``--hash-balance-factor``)."""
    return POLICIES[name](config)
