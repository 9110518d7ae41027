"""The live view's arithmetic (proxy/events.py): merging workers, per-second deltas, percentiles, events.

No sockets: samples are built by hand or read from a real ``ProxyState`` whose endpoints were fed
through ``Endpoint.observe``, the same call the request path makes.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator

import pytest

from proxy.balancer import make_balancer
from proxy.config import Config
from proxy.counters import FINE_LATENCY_BUCKETS, LATENCY_BUCKETS, Histogram
from proxy.events import LiveView, merge, percentile, sample_from_json, worker_sample
from proxy.health import HEALTHY, UNHEALTHY, set_health
from proxy.outlier import eject, uneject
from proxy.state import ProxyState


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


_loops: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(autouse=True)
def _close_loops() -> Iterator[None]:
    yield
    while _loops:
        _loops.pop().close()


def state_with(n: int) -> ProxyState:
    """A proxy's state over ``n`` endpoints (a loop for the group's timers, never run)."""
    loop = asyncio.new_event_loop()
    _loops.append(loop)
    state = ProxyState.from_config(Config(), loop, None)
    state.group.update([(f"10.0.0.{i + 1}", 8001) for i in range(n)])
    return state


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- histograms ---------------------------------------------------------------------------------
def test_fine_histogram_exports_exactly_the_prometheus_buckets() -> None:
    fine = Histogram(FINE_LATENCY_BUCKETS, LATENCY_BUCKETS)
    coarse = Histogram()
    rnd = random.Random(7)
    for _ in range(5000):
        v = rnd.lognormvariate(-6, 1.5)
        fine.observe(v)
        coarse.observe(v)
    for bound in LATENCY_BUCKETS:  # values on a bound land in that bound's bucket in both
        fine.observe(bound)
        coarse.observe(bound)
    assert fine.cumulative() == coarse.cumulative()
    assert len(fine.counts) > 5 * len(coarse.counts)
    with pytest.raises(ValueError):
        Histogram((0.1, 0.2), export=(0.15,))


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_percentile_from_fine_buckets_is_within_a_bucket_width(q: float) -> None:
    rnd = random.Random(3)
    values = [rnd.lognormvariate(-6.5, 0.8) for _ in range(20000)]
    h = Histogram(FINE_LATENCY_BUCKETS, LATENCY_BUCKETS)
    for v in values:
        h.observe(v)
    got = percentile(h.counts, q)
    assert got is not None
    assert got == pytest.approx(exact_quantile(values, q), rel=0.2)


def test_percentile_of_nothing_is_none_and_overflow_reads_the_last_bound() -> None:
    assert percentile([0] * (len(FINE_LATENCY_BUCKETS) + 1), 0.5) is None
    counts = [0] * (len(FINE_LATENCY_BUCKETS) + 1)
    counts[-1] = 3  # above the last bound
    assert percentile(counts, 0.99) == FINE_LATENCY_BUCKETS[-1]


# -- merging workers ----------------------------------------------------------------------------
def test_merge_adds_counts_and_histograms_and_keeps_the_worst_state() -> None:
    a, b = state_with(2), state_with(2)
    for st, latency in ((a, 0.001), (b, 0.004)):
        for ep in st.group.live:
            for _ in range(10):
                ep.observe(200, latency, None)
    b.group.live[0].observe(0, 0.002, "connect")
    set_health(b.group.live[1], UNHEALTHY)
    merged = merge([worker_sample(a, 0), worker_sample(b, 1)])
    first, second = (merged["endpoints"][ep.label] for ep in a.group.live)
    assert first["responses"][2] == 20 and first["responses"][0] == 1
    assert first["failures"] == {"connect": 1}
    assert sum(first["hist"]) == 21
    assert second["state"] == "unhealthy" and second["state_workers"] == 1
    assert first["state"] == "healthy" and first["state_workers"] == 2
    # The merged histogram's median lies between the two workers' latencies: not an average of
    # two medians, but the median of all 40 attempts of the second endpoint (half at 1 ms, half at 4).
    p50 = percentile(second["hist"], 0.5)
    assert p50 is not None and 0.0009 < p50 < 0.0045
    assert merged["workers"] == 2 and merged["policy"] == "round_robin"


# -- ticks: rates, percentiles, events ----------------------------------------------------------
def test_tick_turns_cumulative_counts_into_per_second_rates_and_percentiles() -> None:
    st = state_with(2)
    clock = Clock()
    view = LiveView(lambda: worker_sample(st), clock=clock)
    view.tick([worker_sample(st)])
    fast, slow = st.group.live
    for _ in range(300):
        fast.observe(200, 0.001, None)
    for _ in range(100):
        slow.observe(200, 0.050, None)
    slow.observe(503, 0.050, None)
    st.counters.response(200, 0.001)
    clock.now += 2.0
    snap = view.tick([worker_sample(st)])
    rows = {r["addr"]: r for r in snap["replicas"]}
    assert rows[fast.label]["rps"] == 150.0 and rows[slow.label]["rps"] == 50.5
    assert rows[fast.label]["share"] == pytest.approx(300 / 401, abs=1e-3)
    assert rows[fast.label]["p50_ms"] == pytest.approx(1.0, rel=0.2)
    assert rows[slow.label]["p99_ms"] == pytest.approx(50.0, rel=0.2)
    assert rows[slow.label]["errors"]["5xx"] == 1 and rows[slow.label]["classes"]["5xx"] == 0.5
    assert snap["classes"]["2xx"] == 0.5 and snap["interval"] == 2.0
    # A second with no traffic: rates drop to zero, percentiles are unknown, totals stay.
    clock.now += 1.0
    snap = view.tick([worker_sample(st)])
    rows = {r["addr"]: r for r in snap["replicas"]}
    assert rows[fast.label]["rps"] == 0.0 and rows[fast.label]["p50_ms"] is None
    assert rows[fast.label]["responses"]["2xx"] == 300


def test_tick_reports_state_changes_as_events_with_time_in_state() -> None:
    st = state_with(2)
    clock = Clock()
    view = LiveView(lambda: worker_sample(st), clock=clock)
    first = view.tick([worker_sample(st)])
    assert first["events"] == []  # the endpoints the proxy started with did not "join"
    a, b = st.group.live
    clock.now += 1
    eject(a, 30)
    set_health(b, UNHEALTHY)
    kinds = {(e["kind"], e["addr"]) for e in view.tick([worker_sample(st)])["events"]}
    assert kinds == {("ejected", a.label), ("health_down", b.label)}
    clock.now += 5
    snap = view.tick([worker_sample(st)])
    row = next(r for r in snap["replicas"] if r["addr"] == a.label)
    assert row["state"] == "ejected" and snap["t"] - row["since"] == 5
    clock.now += 1
    uneject(a)
    set_health(b, HEALTHY)
    st.group.set_drain(a.label, True)
    st.group.update([b.address, ("10.0.0.9", 8001)])  # a leaves discovery, a new one joins
    st.balancer = make_balancer("p2c", st.config)
    kinds = {(e["kind"], e["addr"]) for e in view.tick([worker_sample(st)])["events"]}
    assert ("health_up", b.label) in kinds and ("left", a.label) in kinds
    assert ("joined", "10.0.0.9:8001") in kinds and ("policy", None) in kinds


def test_history_is_bounded_and_each_message_is_one_sse_event() -> None:
    st = state_with(1)
    clock = Clock()
    view = LiveView(lambda: worker_sample(st), history_s=5, clock=clock)
    for _ in range(12):
        clock.now += 1
        view.tick([worker_sample(st)])
    assert len(view.ring) == 5
    times = []
    for message in view.ring:
        assert message.startswith(b"data: ") and message.endswith(b"\n\n") and message.count(b"\n") == 2
        times.append(json.loads(message[6:])["t"])
    assert times == sorted(times) and times[-1] == clock.now
    assert view.latest is not None and view.latest["t"] == clock.now


def test_a_sibling_that_misses_a_tick_counts_with_its_last_sample_then_drops_out() -> None:
    st, sib = state_with(1), state_with(1)
    clock = Clock()
    answers: list[list[dict]] = []

    async def siblings() -> list[dict]:
        return answers.pop(0)

    view = LiveView(lambda: worker_sample(st, 0), siblings=siblings, clock=clock)
    sib.group.live[0].observe(200, 0.001, None)
    loop = asyncio.new_event_loop()
    try:
        answers.append([worker_sample(sib, 1)])
        snap = view.tick(loop.run_until_complete(view.collect()))
        assert snap["workers"] == 2 and snap["reporting"] == 2
        assert snap["replicas"][0]["responses"]["2xx"] == 1
        clock.now += 1
        answers.append([])  # no answer: its last sample stands in, no dip to zero
        snap = view.tick(loop.run_until_complete(view.collect()))
        assert snap["workers"] == 2 and snap["reporting"] == 1
        assert snap["replicas"][0]["responses"]["2xx"] == 1
        clock.now += 10
        answers.append([])
        snap = view.tick(loop.run_until_complete(view.collect()))
        assert snap["workers"] == 1
    finally:
        loop.close()


def test_a_sibling_answer_is_used_only_if_it_is_a_sample() -> None:
    """Worker 0 reads its siblings' samples as JSON: a broken answer is skipped, not a failed tick."""
    st = state_with(2)
    st.group.live[0].observe(503, 0.01, None)
    good = json.loads(json.dumps(worker_sample(st, 1)))
    assert sample_from_json(good) == good
    sibling = sample_from_json(good)
    assert sibling is not None
    assert merge([worker_sample(st), sibling])["endpoints"]["10.0.0.1:8001"]["responses"][5] == 2
    no_hist = json.loads(json.dumps(good))
    del no_hist["endpoints"]["10.0.0.2:8001"]["hist"]
    for broken in ([], "ok", {"worker": 1}, {**good, "worker": "1"}, {**good, "endpoints": []}, no_hist):
        assert sample_from_json(broken) is None, broken


def test_docs_live_names_endpoint_attributes_that_exist() -> None:
    """Drift check: every `Endpoint.a.b` that docs/live.md's replica table reads from is real."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "live.md").read_text()
    paths = re.findall(r"`Endpoint\.([\w.]+)`", text)
    assert len(paths) >= 6, paths
    ep = state_with(1).group.live[0]
    for path in paths:
        obj: object = ep
        for name in path.split("."):
            assert hasattr(obj, name), f"docs/live.md names Endpoint.{path}, which does not exist"
            obj = getattr(obj, name)
