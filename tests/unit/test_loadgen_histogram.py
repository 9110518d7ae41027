"""HDR histogram maths and per-second timeline attribution (pure, no I/O)."""

from __future__ import annotations

import random

from loadgen.histogram import HIGHEST_US, LatencyHistogram, Timeline, merge_exports


def within_hdr(actual: float | None, expected: float) -> bool:
    """3 significant digits: any reported value is within 0.1 % of the true one (plus the
    report's rounding to 0.001 ms)."""
    assert actual is not None
    return abs(actual - expected) <= expected * 0.001 + 0.0005 + 1e-9


def exact_percentile_ms(values_us: list[int], percentile: float) -> float:
    """The true percentile of the samples, by hand: the value of rank round(p/100 x n) (at least
    1) in sorted order, HdrHistogram's definition; independent of the code under test."""
    ordered = sorted(values_us)
    rank = max(1, int(percentile / 100 * len(ordered) + 0.5))
    return ordered[rank - 1] / 1000


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
    assert list(summary) == ["mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"]
    assert within_hdr(summary["p99.9"], 9.99) and within_hdr(summary["p99.99"], 9.999)


def test_empty_histogram_reports_none() -> None:
    h = LatencyHistogram()
    assert h.percentile_ms(50) is None
    assert h.summary_ms() == dict.fromkeys(["mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"])
    assert LatencyHistogram.decode(h.encode()).count == 0


def test_encoding_round_trips_exactly() -> None:
    rng = random.Random(3)
    h = LatencyHistogram()
    for _ in range(5000):
        h.record_us(int(rng.expovariate(1 / 800)) + 1)
    encoded = h.encode()
    assert isinstance(encoded, str) and len(encoded) < 20_000  # compressed, JSON-safe base64
    back = LatencyHistogram.decode(encoded)
    assert back.count == h.count and back.summary_ms() == h.summary_ms()
    assert back.spectrum_ms() == h.spectrum_ms() and back.spectrum_ms()[-1][0] == 100.0


def test_out_of_range_values_are_clamped_not_dropped() -> None:
    h = LatencyHistogram()
    h.record_us(0)
    h.record_us(HIGHEST_US * 10)
    h.record_seconds(0.25)
    assert h.count == 3
    assert within_hdr(h.max_ms(), HIGHEST_US / 1000)


def test_merged_histograms_give_the_true_percentiles_of_all_samples() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(7, 1.5)) + 1 for _ in range(20_000)]
    left, right = LatencyHistogram(), LatencyHistogram()
    for i, us in enumerate(values):
        (left if i % 3 else right).record_us(us)
    left.merge(right)
    assert left.count == len(values)
    for p in (1, 25, 50, 75, 90, 99, 99.9, 99.99, 100):
        assert within_hdr(left.percentile_ms(p), exact_percentile_ms(values, p)), p
    assert within_hdr(left.max_ms(), max(values) / 1000)
    assert within_hdr(left.mean_ms(), sum(values) / len(values) / 1000)


def test_percentiles_of_a_small_known_set_by_hand() -> None:
    # 10 samples: 1..9 ms and one of 100 ms. Rank round(p/100 x 10): p50 -> 5th = 5 ms,
    # p90 -> 9th = 9 ms, p99 -> 10th (9.9 rounds to 10) = 100 ms; mean = (45 + 100) / 10 = 14.5 ms.
    h = LatencyHistogram()
    for ms in (3, 1, 4, 100, 5, 9, 2, 6, 8, 7):
        h.record_us(ms * 1000)
    summary = h.summary_ms()
    for key, expected in (("p50", 5.0), ("p90", 9.0), ("p99", 100.0), ("max", 100.0), ("mean", 14.5)):
        assert within_hdr(summary[key], expected), (key, summary[key])


def test_requests_are_attributed_to_the_second_they_were_sent() -> None:
    t = Timeline(start=100.0)
    # sent in second 0, completes in second 3: still second 0
    t.record(100.9, 103.5, 200, b"a", None)
    t.record(100.1, 100.2, 503, b"b", None)
    # sent in second 2 (second 1 stays empty but present)
    t.record(102.0, 102.001, 200, b"a", None)
    t.record(102.5, 112.5, 0, None, "timeout")
    merged = merge_exports([t.export()])
    assert [s.second for s in merged.seconds] == [0, 1, 2]
    s0, s1, s2 = merged.seconds
    assert (s0.requests, s0.failed, s0.status, s0.backends) == (2, 1, {200: 1, 503: 1}, {"a": 1, "b": 1})
    assert (s1.requests, s1.failed, s1.status, s1.errors) == (0, 0, {}, {})
    assert (s2.requests, s2.failed, s2.errors, s2.status) == (2, 1, {"timeout": 1}, {200: 1})
    assert within_hdr(s0.latency_ms["p99"], 2600.0)
    assert within_hdr(s2.latency_ms["p50"], 1.0)
    assert s1.latency_ms["p50"] is None
    assert merged.corrected.count == 3  # responses only, errors have no latency
    assert (t.completed, t.errors) == (4, 1)


def test_open_loop_files_by_intended_second_with_two_latencies() -> None:
    t = Timeline(start=0.0, open_loop=True)
    # due at 0.9 s, sent at 1.4 s (waited for a connection), answered at 1.41 s
    t.record_open(0.9, 1.4, 1.41, 200, b"a", None)
    t.record_open(1.2, 1.2, 1.202, 200, b"a", None)
    merged = merge_exports([t.export()])
    s0, s1 = merged.seconds
    assert s0.requests == 1 and s1.requests == 1
    assert within_hdr(s0.latency_ms["p50"], 510.0)  # corrected: from 0.9 s
    assert within_hdr(s0.uncorrected_p99_ms, 10.0)  # uncorrected: from 1.4 s
    assert within_hdr(s0.lag_max_s * 1000, 500.0)
    assert within_hdr(merged.corrected.max_ms(), 510.0) and within_hdr(merged.uncorrected.max_ms(), 10.0)


def test_sealing_compresses_and_late_records_still_count() -> None:
    t = Timeline(start=0.0)
    for i in range(100):
        t.record(0.5, 0.5 + (i + 1) / 1000, 200, None, None)  # 1..100 ms in second 0
    t.record(4.2, 4.21, 200, None, None)
    t.seal_settled(elapsed_s=5.0, timeout_s=1.0)  # second 0 settled at 4 s
    b0 = t.buckets[0]
    assert b0.sealed and b0.hist_c is None and b0.enc_c
    assert not t.buckets[4].sealed
    p50, p99 = b0.percentiles_ms()
    assert within_hdr(p50, 50.0) and within_hdr(p99, 99.0)
    t.record(0.9, 9.0, 200, None, None)  # very late: still counted, latency included
    assert b0.requests == 101
    merged = merge_exports([t.export()])
    assert merged.corrected.count == 102
    assert within_hdr(merged.seconds[0].latency_ms["max"], 8100.0)


def test_live_percentiles_before_sealing() -> None:
    t = Timeline(start=0.0)
    for ms in (1, 2, 3, 4):
        t.record(0.1, 0.1 + ms / 1000, 200, None, None)
    p50, p99 = t.buckets[0].percentiles_ms()
    assert within_hdr(p50, 2.0) and within_hdr(p99, 4.0)
    t.record(0.2, 0.21, 200, None, None)  # more after a peek still lands
    assert merge_exports([t.export()]).corrected.count == 5


def test_merging_workers_gives_the_true_figures_of_the_union() -> None:
    """--workers: per-second and whole-run figures of the merge are those of all samples,
    computed here by hand from the samples (not by recording them once more)."""
    rng = random.Random(11)
    # Intended times on a 1/1024 s grid and whole microseconds (+0.5 us): exact in binary, so
    # the recorder's microsecond is the sample's, with no float rounding in the expectation.
    samples = []
    for i in range(30_000):
        due = rng.randrange(3 * 1024) / 1024
        corrected_us = int(rng.lognormvariate(7, 1.2)) + 1
        waited_us = rng.randrange(corrected_us)  # sent this much after it was due
        samples.append((due, waited_us, corrected_us, b"ab"[i % 2 : i % 2 + 1], 503 if i % 97 == 0 else 200))
    workers = [Timeline(start=0.0, open_loop=True) for _ in range(3)]
    for i, (due, waited_us, corrected_us, backend, status) in enumerate(samples):
        sent, done = due + waited_us / 1e6, due + (corrected_us + 0.5) / 1e6
        workers[i % 3].record_open(due, sent, done, status, backend, None)
    merged = merge_exports([w.export() for w in workers])

    corrected = [c for _, _, c, _, _ in samples]
    uncorrected = [int((c + 0.5) - w) for _, w, c, _, _ in samples]  # from the actual send
    assert merged.corrected.count == merged.uncorrected.count == len(samples)
    for p in (1, 25, 50, 75, 90, 99, 99.9, 99.99, 100):
        assert within_hdr(merged.corrected.percentile_ms(p), exact_percentile_ms(corrected, p)), p
    for p in (50, 99):
        assert abs(merged.uncorrected.percentile_ms(p) - exact_percentile_ms(uncorrected, p)) <= (
            exact_percentile_ms(uncorrected, p) * 0.001 + 0.0011  # +-1 us: when it was sent
        ), p
    assert [s.second for s in merged.seconds] == [0, 1, 2]
    for s in merged.seconds:
        mine = [x for x in samples if int(x[0]) == s.second]
        assert s.requests == len(mine)
        assert s.failed == sum(1 for x in mine if x[4] >= 500)
        assert s.status == {
            200: sum(1 for x in mine if x[4] == 200),
            503: sum(1 for x in mine if x[4] == 503),
        }
        assert s.backends == {
            "a": sum(1 for x in mine if x[3] == b"a"),
            "b": sum(1 for x in mine if x[3] == b"b"),
        }
        lat = [x[2] for x in mine]
        for key, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
            assert within_hdr(s.latency_ms[key], exact_percentile_ms(lat, p)), (s.second, key)
