"""HDR histogram maths and per-second timeline attribution (pure, no I/O)."""

from __future__ import annotations

import random

import pytest

from loadgen.histogram import HIGHEST_US, LatencyHistogram, Timeline


def within_hdr(actual: float | None, expected: float) -> bool:
    """3 significant digits: any reported value is within 0.1 % of the true one."""
    assert actual is not None
    return abs(actual - expected) <= expected * 0.001 + 1e-9


def test_known_values_give_known_percentiles() -> None:
    h = LatencyHistogram()
    for us in range(1, 10_001):  # 1 us .. 10 ms, uniform
        h.record_us(us)
    assert h.count == 10_000
    assert within_hdr(h.percentile_ms(50), 5.0)
    assert within_hdr(h.percentile_ms(90), 9.0)
    assert within_hdr(h.percentile_ms(99), 9.9)
    assert within_hdr(h.percentile_ms(99.9), 9.99)
    assert within_hdr(h.max_ms(), 10.0)
    assert within_hdr(h.mean_ms(), 5.0005)
    summary = h.summary_ms()
    assert list(summary) == ["mean", "p50", "p90", "p99", "p99.9", "max"]
    assert within_hdr(summary["p99.9"], 9.99)


def test_empty_histogram_reports_none() -> None:
    h = LatencyHistogram()
    assert h.percentile_ms(50) is None
    assert h.summary_ms() == dict.fromkeys(["mean", "p50", "p90", "p99", "p99.9", "max"])


def test_out_of_range_values_are_clamped_not_dropped() -> None:
    h = LatencyHistogram()
    h.record_us(0)
    h.record_us(HIGHEST_US * 10)
    h.record_seconds(0.25)
    assert h.count == 3
    assert within_hdr(h.max_ms(), HIGHEST_US / 1000)


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(7, 1.5)) + 1 for _ in range(20_000)]
    left, right, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i, us in enumerate(values):
        (left if i % 3 else right).record_us(us)
        both.record_us(us)
    left.merge(right)
    assert left.count == both.count == len(values)
    assert left.summary_ms() == both.summary_ms()
    for p in (1, 25, 50, 75, 90, 99, 99.9, 99.99, 100):
        assert left.percentile_ms(p) == both.percentile_ms(p)


def test_requests_are_attributed_to_the_second_they_were_sent() -> None:
    t = Timeline(start=100.0)
    # sent in second 0, completes in second 3: still second 0
    t.record(100.9, 103.5, 200, b"a", None)
    t.record(100.1, 100.2, 503, b"b", None)
    # sent in second 2 (second 1 stays empty but present)
    t.record(102.0, 102.001, 200, b"a", None)
    t.record(102.5, 112.5, 0, None, "timeout")
    t.finish()
    assert [b.second for b in t.buckets] == [0, 1, 2]
    b0, b1, b2 = t.buckets
    assert (b0.requests, b0.failed, b0.status, b0.backends) == (2, 1, {200: 1, 503: 1}, {b"a": 1, b"b": 1})
    assert (b1.requests, b1.failed, b1.status, b1.errors) == (0, 0, {}, {})
    assert (b2.requests, b2.failed, b2.errors, b2.status) == (2, 1, {"timeout": 1}, {200: 1})
    assert within_hdr(b0.p99_ms, 2600.0)
    assert within_hdr(b2.p50_ms, 1.0)
    assert b1.p50_ms is None
    assert t.total.count == 3  # responses only, errors have no latency
    assert (t.completed, t.errors) == (4, 1)


def test_sealing_keeps_percentiles_and_late_records_still_count() -> None:
    t = Timeline(start=0.0)
    for i in range(100):
        t.record(0.5, 0.5 + (i + 1) / 1000, 200, None, None)  # 1..100 ms in second 0
    t.record(4.2, 4.21, 200, None, None)
    t.seal_settled(elapsed_s=4.0, timeout_s=1.0)  # second 0 settled at 3 s
    b0 = t.buckets[0]
    assert b0.sealed and b0.hist is None
    assert within_hdr(b0.p50_ms, 50.0) and within_hdr(b0.p99_ms, 99.0)
    assert not t.buckets[4].sealed
    t.record(0.9, 9.0, 200, None, None)  # very late: counted, p50/p99 of second 0 frozen
    assert b0.requests == 101
    t.finish()
    assert t.total.count == 102
    assert b0.p50_ms == pytest.approx(50.0, rel=1e-3)


def test_live_percentiles_before_sealing() -> None:
    t = Timeline(start=0.0)
    for ms in (1, 2, 3, 4):
        t.record(0.1, 0.1 + ms / 1000, 200, None, None)
    p50, p99 = t.buckets[0].percentiles_ms()
    assert within_hdr(p50, 2.0) and within_hdr(p99, 4.0)
    t.record(0.2, 0.21, 200, None, None)  # more after a peek still lands
    t.finish()
    assert t.total.count == 5
