"""The request mix: which request each send uses, prebuilt as bytes.

A scenario (``scenario.py``) can give several weighted requests; the CLI gives one. Either way the
runners only see :class:`PreparedRequest` objects (wire bytes built once) and draw them from a
:class:`MixCycle`, so choosing a request costs one list index per send.

The cycle is deterministic, not random: smooth weighted round-robin (nginx's algorithm) laid out
once over :data:`CYCLE_LEN` slots. Over any window the share of each request is within one slot of
its weight, which keeps short runs and per-second timelines free of sampling noise (with random
draws, a 2 % entry would sometimes be absent from a whole second at 50 req/s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from loadgen.client import build_request
from loadgen.config import Target

CYCLE_LEN = 1000


class RequestLike(Protocol):
    """What a mix entry must have: ``scenario.RequestSpec`` and :class:`Request` both qualify.

    Read-only members (properties), so frozen dataclasses satisfy it."""

    @property
    def weight(self) -> float: ...
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def body_size(self) -> int: ...


@dataclass(frozen=True)
class Request:
    """The CLI's single-request mix (``--method``, ``--header``, ``--body-size``, the URL's path)."""

    weight: float = 1.0
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    body_size: int = 0


@dataclass(frozen=True)
class PreparedRequest:
    label: str  # "GET /path", for reports
    wire: bytes  # the whole request, written as is
    head: bool  # a HEAD response has no body even when it announces one
    index: int = 0  # position in the mix: which entry the report files this request under


def labels(specs: Sequence[RequestLike]) -> list[str]:
    """Report keys of the mix entries: ``"POST /echo"``, made unique with ``#2``, ``#3`` suffixes.

    Two entries may share method and path (different bodies or headers); their results must not
    be summed under one key, so the later ones are numbered in mix order.
    """
    out: list[str] = []
    seen: dict[str, int] = {}
    for spec in specs:
        base = f"{spec.method} {spec.path or '/'}"
        n = seen[base] = seen.get(base, 0) + 1
        out.append(base if n == 1 else f"{base} #{n}")
    return out


def prepare(spec: RequestLike, target: Target, index: int = 0, label: str | None = None) -> PreparedRequest:
    """Build the wire bytes: a body of ``body_size`` bytes of ``x`` with its Content-Length."""
    body = b"x" * spec.body_size
    headers = list(spec.headers)
    if spec.body_size and not any(n.lower() == "content-length" for n, _ in headers):
        headers.append(("Content-Length", str(spec.body_size)))
    path = spec.path or "/"
    wire_target = Target(target.host, target.port, target.host_header, path)
    wire = build_request(spec.method, wire_target, headers) + body
    return PreparedRequest(label or f"{spec.method} {path}", wire, spec.method == "HEAD", index)


def weighted_cycle(weights: Sequence[float], length: int = CYCLE_LEN) -> list[int]:
    """Indices into ``weights`` in smooth weighted round-robin order (nginx's upstream algorithm)."""
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    if len(weights) == 1:
        return [0]
    total = float(sum(weights))
    current = [0.0] * len(weights)
    out: list[int] = []
    for _ in range(length):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= total
        out.append(best)
    return out


class MixCycle:
    """Hands out the mix's requests in weighted order; one index bump per call."""

    __slots__ = ("_i", "_order", "requests", "single")

    def __init__(self, specs: Sequence[RequestLike], target: Target, *, phase: int = 0) -> None:
        if not specs:
            raise ValueError("the request mix is empty")
        self.requests = [
            prepare(s, target, i, label)
            for i, (s, label) in enumerate(zip(specs, labels(specs), strict=True))
        ]
        order = weighted_cycle([s.weight for s in specs])
        self._order = [self.requests[i] for i in order]
        self._i = phase % len(self._order)
        #: The only request when the mix has one entry (runners skip the cycle then).
        self.single: PreparedRequest | None = self.requests[0] if len(self.requests) == 1 else None

    def next(self) -> PreparedRequest:
        order = self._order
        i = self._i
        self._i = i + 1 if i + 1 < len(order) else 0
        return order[i]
