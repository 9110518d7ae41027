"""Latency histograms (HDR) and the per-second timeline of a run.

:class:`LatencyHistogram` wraps ``hdrh``'s HdrHistogram with the lab's fixed settings:
microsecond units, 1 us .. 60 s, 3 significant digits. Fixed settings make every histogram
mergeable with every other one (same bucket layout), which is how the run total is made: the sum
of the per-second histograms, not a second recording of every request.

Attribution: every request is counted in the second in which it was SENT, not the second in which
it completed. A request sent at 2.9 s that times out at 12.9 s is a failure of second 2. This is
the choice that answers "what happened to traffic issued while X was going on" (e.g. after a
backend was stopped at t=5 s, did requests sent from t=6 s on still fail?). Attributing by
completion would smear slow failures into later, healthy seconds. The price is that the last few
seconds of the timeline are only final once the run has drained, which is why a bucket is sealed
only once nothing sent in it can still be in flight.

The hot path, :meth:`Timeline.record`, avoids HdrHistogram.record_value (pure Python, ~1 us): it
counts exact integer microseconds in a dict, and the dict is folded into the bucket's histogram
when someone needs percentiles (the live line, sealing, the report). Local latencies repeat a lot,
so the dict stays small and one record_value call covers many requests.
"""

from __future__ import annotations

import math

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


class LatencyHistogram:
    """An HDR histogram of latencies in microseconds, read out in milliseconds."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    @property
    def count(self) -> int:
        return self._h.get_total_count()

    def record_us(self, us: int, count: int = 1) -> None:
        """Record ``count`` samples of ``us`` microseconds, clamped into the trackable range.

        Clamping instead of dropping keeps the sample count equal to the response count even for
        a response faster than 1 us (impossible in practice) or slower than 60 s (longer than any
        sane --timeout).
        """
        if us < LOWEST_US:
            us = LOWEST_US
        elif us > HIGHEST_US:
            us = HIGHEST_US
        self._h.record_value(us, count)

    def record_seconds(self, seconds: float) -> None:
        self.record_us(int(seconds * 1_000_000))

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples into this one (exact: both share the same bucket layout)."""
        if other.count:
            self._h.add(other._h)

    def percentile_ms(self, percentile: float) -> float | None:
        """The value at ``percentile`` (0-100) in ms, or None when empty (nothing to report)."""
        if not self.count:
            return None
        return self._h.get_value_at_percentile(percentile) / 1000.0

    def mean_ms(self) -> float | None:
        return self._h.get_mean_value() / 1000.0 if self.count else None

    def max_ms(self) -> float | None:
        return self._h.get_max_value() / 1000.0 if self.count else None

    def summary_ms(self) -> dict[str, float | None]:
        """The report's ``latency_ms`` object: mean, p50, p90, p99, p99.9, max (None if empty)."""
        out: dict[str, float | None] = {"mean": _round(self.mean_ms())}
        for p in PERCENTILES:
            out[f"p{p:g}"] = _round(self.percentile_ms(p))
        out["max"] = _round(self.max_ms())
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class SecondBucket:
    """Everything about the requests sent during one whole second of the run."""

    __slots__ = (
        "backends",
        "errors",
        "failed",
        "hist",
        "p50_ms",
        "p99_ms",
        "pending",
        "requests",
        "sealed",
        "second",
        "status",
    )

    def __init__(self, second: int) -> None:
        self.second = second
        self.requests = 0  # completed: responses + transport errors
        self.failed = 0  # transport errors + status >= 500
        self.status: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.backends: dict[bytes, int] = {}
        self.pending: dict[int, int] = {}  # latency us -> count, not yet in hist
        self.hist: LatencyHistogram | None = LatencyHistogram()
        self.sealed = False
        self.p50_ms: float | None = None
        self.p99_ms: float | None = None

    @property
    def responses(self) -> int:
        return sum(self.status.values())

    def flush(self) -> None:
        """Fold the pending latency counts into the histogram."""
        if self.pending and self.hist is not None:
            record = self.hist.record_us
            for us, n in self.pending.items():
                record(us, n)
            self.pending.clear()

    def percentiles_ms(self) -> tuple[float | None, float | None]:
        """(p50, p99) in ms so far; final once sealed."""
        if self.sealed:
            return self.p50_ms, self.p99_ms
        self.flush()
        assert self.hist is not None
        return _round(self.hist.percentile_ms(50.0)), _round(self.hist.percentile_ms(99.0))


class Timeline:
    """Per-second buckets keyed by send time, plus the run's total latency histogram.

    ``start`` is the ``perf_counter()`` value of second 0. Counters ``completed`` and ``errors``
    are run-wide and cheap, for the live line.
    """

    def __init__(self, start: float) -> None:
        self.start = start
        self.buckets: list[SecondBucket] = []
        self.total = LatencyHistogram()
        self.completed = 0
        self.errors = 0

    def bucket(self, second: int) -> SecondBucket:
        """The bucket for ``second``, creating it and any empty seconds before it."""
        buckets = self.buckets
        while len(buckets) <= second:
            buckets.append(SecondBucket(len(buckets)))
        return buckets[second]

    def record(
        self, sent_at: float, done_at: float, status: int, backend: bytes | None, error: str | None
    ) -> None:
        """Account one finished request (the client's DoneCallback signature). Hot path."""
        second = int(sent_at - self.start)
        if second < 0:
            second = 0
        try:
            b = self.buckets[second]
        except IndexError:
            b = self.bucket(second)
        b.requests += 1
        self.completed += 1
        if error is None:
            us = int((done_at - sent_at) * 1_000_000)
            pending = b.pending
            pending[us] = pending.get(us, 0) + 1
            st = b.status
            st[status] = st.get(status, 0) + 1
            if backend is not None:
                bk = b.backends
                bk[backend] = bk.get(backend, 0) + 1
            if status >= 500:
                b.failed += 1
            if b.sealed:
                self._late(b)
        else:
            errs = b.errors
            errs[error] = errs.get(error, 0) + 1
            b.failed += 1
            self.errors += 1

    def _late(self, b: SecondBucket) -> None:
        # A response for an already sealed second (a timer that fired very late): still counted in
        # the totals; only that second's p50/p99 can no longer change.
        for us, n in b.pending.items():
            self.total.record_us(us, n)
        b.pending.clear()

    def seal(self, b: SecondBucket) -> None:
        """Freeze a bucket's percentiles, fold it into the total and free its histogram.

        A histogram is ~140 KB, so keeping one per second of a long run would cost hundreds of MB.
        """
        if b.sealed:
            return
        b.flush()
        hist = b.hist
        assert hist is not None
        b.p50_ms = _round(hist.percentile_ms(50.0))
        b.p99_ms = _round(hist.percentile_ms(99.0))
        self.total.merge(hist)
        b.hist = None
        b.sealed = True

    def seal_settled(self, elapsed_s: float, timeout_s: float) -> None:
        """Seal every second whose requests can no longer be in flight at ``elapsed_s``.

        A request sent during second s ends by s + 1 + timeout; one extra second absorbs timer lag.
        """
        last = math.floor(elapsed_s - timeout_s - 2.0)
        for b in self.buckets[: max(0, last + 1)]:
            if not b.sealed:
                self.seal(b)

    def finish(self) -> None:
        """Seal everything: call once the run has drained."""
        for b in self.buckets:
            self.seal(b)
