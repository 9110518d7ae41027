"""Round-robin over a changing endpoint set, and the pool/group bookkeeping it relies on."""

from __future__ import annotations

import asyncio
from collections import Counter

from proxy.balancer import POLICIES, RoundRobin, make_balancer
from proxy.pool import Endpoint, UpstreamGroup


def group(n: int) -> UpstreamGroup:
    g = UpstreamGroup("svc:80", asyncio.new_event_loop())
    g.update([(f"10.0.0.{i}", 80) for i in range(1, n + 1)])
    return g


def test_even_spread() -> None:
    g = group(3)
    rr = RoundRobin()
    counts = Counter(rr.pick(g.live).label for _ in range(300))  # type: ignore[union-attr]
    assert set(counts.values()) == {100}


def test_spread_stays_even_when_set_changes() -> None:
    g = group(2)
    rr = RoundRobin()
    for _ in range(5):
        rr.pick(g.live)
    g.update([("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)])
    counts = Counter(rr.pick(g.live).label for _ in range(400))  # type: ignore[union-attr]
    assert set(counts.values()) == {100} and len(counts) == 4
    g.update([("10.0.0.4", 80)])
    assert {rr.pick(g.live).label for _ in range(10)} == {"10.0.0.4:80"}  # type: ignore[union-attr]
    g.update([])
    assert rr.pick(g.live) is None


def test_exclude() -> None:
    g = group(3)
    rr = RoundRobin()
    first = g.live[0]
    picks = [rr.pick(g.live, (first,)) for _ in range(6)]
    assert first not in picks and None not in picks
    assert rr.pick(g.live[:1], (first,)) is None


def test_registry() -> None:
    assert make_balancer("round_robin").name == "round_robin" and "round_robin" in POLICIES


def test_group_update_drains_removed_endpoints() -> None:
    g = group(2)
    a, b = g.live
    a.in_flight = 1
    assert g.update([("10.0.0.2", 80), ("10.0.0.3", 80)])
    assert not a.live and [e.label for e in g.live] == ["10.0.0.2:80", "10.0.0.3:80"]
    assert ("10.0.0.1", 80) in g.endpoints, "kept while a request is still in flight"
    assert [s["draining"] for s in g.snapshot()] == [False, False, True]
    a.release()
    assert ("10.0.0.1", 80) not in g.endpoints
    assert not g.update([("10.0.0.2", 80), ("10.0.0.3", 80)]), "same set is not a change"
    assert g.live[0] is b


def test_endpoint_revived_when_it_comes_back() -> None:
    g = group(1)
    (a,) = g.live
    a.in_flight = 1
    g.update([])
    g.update([("10.0.0.1", 80)])
    assert g.live[0] is a and a.live
    assert isinstance(a, Endpoint)
