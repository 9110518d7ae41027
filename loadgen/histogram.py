"""Latency histograms (HDR), the per-second timeline of a run, and merging runs across workers.

:class:`LatencyHistogram` wraps ``hdrh``'s HdrHistogram with the lab's fixed settings:
microsecond units, 1 us .. 60 s, 3 significant digits. Fixed settings make every histogram
mergeable with every other one (same bucket layout): the run total is the exact sum of the
per-second histograms, and a run with ``--workers N`` is the exact sum of N runs (HDR ``add``), not
an average of percentiles, which would be meaningless.

Two latencies per request in open loop (see ``schedule``): *corrected*, from the request's intended
send time to its response (wrk2's correction for coordinated omission: a stall delays the requests
that should have been sent during it, and their wait is part of what a user would have seen), and
*uncorrected*, from the moment it was actually written. In closed loop there is no intended time and
the two are the same histogram.

Attribution: every request is counted in the second in which it was INTENDED to be sent (open
loop) or SENT (closed loop), not the second in which it completed. A request sent at 2.9 s that
times out at 12.9 s is a failure of second 2. This is the choice that answers "what happened to
traffic issued while X was going on" (after a backend was stopped at t=5 s, did requests issued
from t=6 s on still fail?). The price is that the last seconds are only final once the run has
drained, which is why a bucket is sealed only once nothing issued in it can still be in flight.

The hot path (:meth:`Timeline.record`, :meth:`Timeline.record_open`) avoids
HdrHistogram.record_value (pure Python, ~1 us): it counts exact integer microseconds in a dict,
folded into the bucket's histogram when someone needs percentiles. Local latencies repeat a lot,
so the dict stays small and one record_value call covers many requests. A sealed second keeps only
its compressed HDR encoding (~1 KB instead of ~140 KB), which is also what a worker process hands to
the parent: :func:`merge_exports` decodes and adds them.

Per request kind: with a mix of several requests, each entry has a child :class:`Timeline`
(``Timeline.by_request``) in which the runner records the request as well, so the report can
say which kind failed when. Children are sealed, exported and merged by the same code as the
totals, hence exact across workers too. A single request has no child: its figures are the totals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from hdrh.histogram import HdrHistogram

from loadgen.shapes import SecondExport, TimelineExport

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9, 99.99)
SUMMARY_KEYS: tuple[str, ...] = ("mean", "p50", "p90", "p99", "p99.9", "p99.99", "max")


class LatencyHistogram:
    """An HDR histogram of latencies in microseconds, read out in milliseconds."""

    __slots__ = ("_h",)

    def __init__(self, hdr: HdrHistogram | None = None) -> None:
        self._h = hdr if hdr is not None else HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def record_us(self, us: int, count: int = 1) -> None:
        """Record ``count`` samples of ``us`` microseconds, clamped into the trackable range.

        Clamping instead of dropping keeps the sample count equal to the response count even for
        a response faster than 1 us (impossible in practice) or slower than 60 s.
        """
        if us < LOWEST_US:
            us = LOWEST_US
        elif us > HIGHEST_US:
            us = HIGHEST_US
        self._h.record_value(us, count)

    def record_counts(self, counts: dict[int, int]) -> None:
        record = self.record_us
        for us, n in counts.items():
            record(us, n)

    def record_seconds(self, seconds: float) -> None:
        self.record_us(int(seconds * 1_000_000))

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples into this one (exact: both share the same bucket layout)."""
        if other.count:
            self._h.add(other._h)

    def encode(self) -> str:
        """The standard HdrHistogram V2 compressed encoding, base64 (readable by every HDR port)."""
        return str(self._h.encode().decode("ascii"))

    @classmethod
    def decode(cls, encoded: str | bytes) -> LatencyHistogram:
        if not encoded:
            return cls()
        raw = encoded.encode("ascii") if isinstance(encoded, str) else encoded
        return cls(HdrHistogram.decode(raw))

    def percentile_ms(self, percentile: float) -> float | None:
        """The value at ``percentile`` (0-100) in ms, or None when empty (nothing to report)."""
        if not self.count:
            return None
        return float(self._h.get_value_at_percentile(percentile)) / 1000.0

    def mean_ms(self) -> float | None:
        return self._h.get_mean_value() / 1000.0 if self.count else None

    def max_ms(self) -> float | None:
        return self._h.get_max_value() / 1000.0 if self.count else None

    def summary_ms(self, mean: bool = True) -> dict[str, float | None]:
        """The report's ``latency_ms`` object: mean, p50 .. p99.99, max (all None if empty).

        ``mean=False`` skips the mean (None): hdrh computes it with a pure-Python pass over every
        bucket, which for a run of many seconds would cost more than the percentiles.
        """
        if not self.count:
            return dict.fromkeys(SUMMARY_KEYS)
        values = self._h.get_percentile_to_value_dict(list(PERCENTILES))
        out: dict[str, float | None] = {"mean": _round(self.mean_ms()) if mean else None}
        for p in PERCENTILES:
            out[f"p{p:g}"] = _round(values[p] / 1000.0)
        out["max"] = _round(self.max_ms())
        return out

    def spectrum_ms(self, ticks_per_half_distance: int = 5) -> list[tuple[float, float]]:
        """(percentile, ms) points of the HDR percentile spectrum, for plots and compare."""
        if not self.count:
            return []
        return [
            (item.percentile_level_iterated_to, item.value_iterated_to / 1000.0)
            for item in self._h.get_percentile_iterator(ticks_per_half_distance)
        ]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class SecondBucket:
    """Everything about the requests issued during one whole second of the run."""

    __slots__ = (
        "backends",
        "dropped",
        "enc_c",
        "enc_u",
        "errors",
        "failed",
        "hist_c",
        "hist_u",
        "intended",
        "lag_max",
        "pending_c",
        "pending_u",
        "requests",
        "sealed",
        "second",
        "status",
        "unsent",
        "waited",
    )

    def __init__(self, second: int) -> None:
        self.second = second
        self.intended = 0  # open loop: requests due in this second (sent or not)
        self.unsent = 0  # open loop: due in this second but never sent (the run ended first)
        self.dropped = 0  # open loop: due in this second, shed at once: the backlog was full
        self.waited = 0  # open loop: sent later than due because no connection was free
        self.lag_max = 0.0  # open loop: worst actual-minus-intended send time, seconds
        self.requests = 0  # completed: responses + transport errors
        self.failed = 0  # transport errors + status >= 500
        self.status: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.backends: dict[bytes, int] = {}
        self.pending_c: dict[int, int] = {}  # corrected (or the only) latency us -> count
        self.pending_u: dict[int, int] = {}  # uncorrected latency us -> count (open loop)
        self.hist_c: LatencyHistogram | None = None
        self.hist_u: LatencyHistogram | None = None
        self.enc_c = ""  # HDR encodings once sealed
        self.enc_u = ""
        self.sealed = False

    @property
    def responses(self) -> int:
        return sum(self.status.values())

    def flush(self) -> None:
        """Fold the pending latency counts into the histograms (created on first use)."""
        if self.pending_c:
            if self.hist_c is None:
                self.hist_c = LatencyHistogram()
            self.hist_c.record_counts(self.pending_c)
            self.pending_c.clear()
        if self.pending_u:
            if self.hist_u is None:
                self.hist_u = LatencyHistogram()
            self.hist_u.record_counts(self.pending_u)
            self.pending_u.clear()

    def corrected(self) -> LatencyHistogram:
        """This second's (corrected) histogram so far, whether sealed or not (a fresh object)."""
        if self.sealed:
            h = LatencyHistogram.decode(self.enc_c)
            h.record_counts(self.pending_c)  # responses that arrived after sealing
            return h
        self.flush()
        h = LatencyHistogram()
        if self.hist_c is not None:
            h.merge(self.hist_c)
        return h

    def export(self, open_loop: bool) -> SecondExport:
        """This second as plain data, one entry of :meth:`Timeline.export`'s ``seconds``.

        Sealed or not: a distributed worker (loadgen/worker.py) streams seconds still in progress.
        """
        if self.sealed:
            enc_c, enc_u = self.enc_c, self.enc_u
            if self.pending_c or self.pending_u:  # arrived after sealing: fold them in now
                h = LatencyHistogram.decode(enc_c)
                h.record_counts(self.pending_c)
                enc_c = h.encode()
                h = LatencyHistogram.decode(enc_u)
                h.record_counts(self.pending_u)
                enc_u = h.encode() if h.count else ""
        else:
            self.flush()
            enc_c = self.hist_c.encode() if self.hist_c is not None else ""
            enc_u = self.hist_u.encode() if self.hist_u is not None else ""
        return {
            "second": self.second,
            "intended": self.intended,
            "unsent": self.unsent,
            "dropped": self.dropped,
            "waited": self.waited,
            "lag_max": self.lag_max,
            "requests": self.requests,
            "failed": self.failed,
            "status": dict(self.status),
            "errors": dict(self.errors),
            "backends": {k.decode("utf-8", "replace"): n for k, n in self.backends.items()},
            "hist_c": enc_c,
            "hist_u": enc_u if open_loop else enc_c,
        }

    def uncorrected(self) -> LatencyHistogram:
        """This second's uncorrected (open loop) histogram so far, sealed or not (a fresh object)."""
        if self.sealed:
            h = LatencyHistogram.decode(self.enc_u)
            h.record_counts(self.pending_u)
            return h
        self.flush()
        h = LatencyHistogram()
        if self.hist_u is not None:
            h.merge(self.hist_u)
        return h

    def percentiles_ms(self) -> tuple[float | None, float | None]:
        """(p50, p99) in ms so far (corrected in open loop); final once the run has drained."""
        h = self.corrected()
        return _round(h.percentile_ms(50.0)), _round(h.percentile_ms(99.0))


class Timeline:
    """Per-second buckets keyed by issue time, for one process's share of a run.

    ``start`` is the ``perf_counter()`` value of second 0. ``completed`` and ``errors`` are
    run-wide and cheap, for the live line. ``open_loop`` keeps the uncorrected latency apart.
    """

    def __init__(self, start: float, *, open_loop: bool = False) -> None:
        self.start = start
        self.open_loop = open_loop
        self.buckets: list[SecondBucket] = []
        self.completed = 0
        self.errors = 0
        self.failed = 0  # errors + 5xx responses, by completion (the live page's failures)
        #: Closed loop: the last second of the run. A connection decides to send again just before
        #: the deadline and its clock reads a few microseconds later; that request still belongs
        #: to the run's last second, not to a second of its own after the end.
        self.last_second = 1 << 30
        #: A mix of several requests: one child timeline per entry (report key -> timeline), each
        #: request recorded in it as well as here. Empty for a single request, whose results are
        #: the totals, so the common case pays nothing.
        self.by_request: dict[str, Timeline] = {}

    def split_by_request(self, labels: Sequence[str]) -> list[Timeline]:
        """Give each mix entry its own timeline on this one's clock; returned in mix order.

        A child is a whole :class:`Timeline` (counts, status, error kinds, backends, corrected and
        uncorrected histograms per second) rather than a few counters, so that per-entry results
        are sealed, exported and merged across workers by the very code that does the totals.
        """
        children = [Timeline(self.start, open_loop=self.open_loop) for _ in labels]
        self.by_request = dict(zip(labels, children, strict=True))
        return children

    def begin(self, start: float, last_second: int | None = None) -> None:
        """Set second 0 (a ``perf_counter()`` value) and the last second, for the children too."""
        for tl in (self, *self.by_request.values()):
            tl.start = start
            if last_second is not None:
                tl.last_second = last_second

    def bucket(self, second: int) -> SecondBucket:
        """The bucket for ``second``, creating it and any empty seconds before it."""
        buckets = self.buckets
        if second < 0:
            second = 0
        while len(buckets) <= second:
            buckets.append(SecondBucket(len(buckets)))
        return buckets[second]

    def record(
        self, sent_at: float, done_at: float, status: int, backend: bytes | None, error: str | None
    ) -> None:
        """Account one finished closed-loop request (the client's DoneCallback signature). Hot path."""
        second = int(sent_at - self.start)
        if second > self.last_second:
            second = self.last_second
        try:
            b = self.buckets[second]
        except IndexError:
            b = self.bucket(second)
        b.requests += 1
        self.completed += 1
        if error is None:
            us = int((done_at - sent_at) * 1_000_000)
            pending = b.pending_c
            pending[us] = pending.get(us, 0) + 1
            st = b.status
            st[status] = st.get(status, 0) + 1
            if backend is not None:
                bk = b.backends
                bk[backend] = bk.get(backend, 0) + 1
            if status >= 500:
                b.failed += 1
                self.failed += 1
        else:
            errs = b.errors
            errs[error] = errs.get(error, 0) + 1
            b.failed += 1
            self.errors += 1
            self.failed += 1

    def record_open(
        self,
        intended: float,
        sent_at: float,
        done_at: float,
        status: int,
        backend: bytes | None,
        error: str | None,
    ) -> None:
        """Account one finished open-loop request: two latencies, filed under its intended second."""
        second = int(intended - self.start)
        try:
            b = self.buckets[second]
        except IndexError:
            b = self.bucket(second)
        b.requests += 1
        self.completed += 1
        lag = sent_at - intended
        if lag > b.lag_max:
            b.lag_max = lag
        if error is None:
            us = int((done_at - intended) * 1_000_000)
            pending = b.pending_c
            pending[us] = pending.get(us, 0) + 1
            us = int((done_at - sent_at) * 1_000_000)
            pending = b.pending_u
            pending[us] = pending.get(us, 0) + 1
            st = b.status
            st[status] = st.get(status, 0) + 1
            if backend is not None:
                bk = b.backends
                bk[backend] = bk.get(backend, 0) + 1
            if status >= 500:
                b.failed += 1
                self.failed += 1
        else:
            errs = b.errors
            errs[error] = errs.get(error, 0) + 1
            b.failed += 1
            self.errors += 1
            self.failed += 1

    def seal(self, b: SecondBucket) -> None:
        """Replace a bucket's histograms by their compressed encodings (~140 KB -> ~1 KB each)."""
        if b.sealed:
            return
        b.flush()
        b.enc_c = b.hist_c.encode() if b.hist_c is not None else ""
        b.enc_u = b.hist_u.encode() if b.hist_u is not None else ""
        b.hist_c = b.hist_u = None
        b.sealed = True

    def seal_settled(self, elapsed_s: float, timeout_s: float) -> None:
        """Seal every second whose requests can no longer be in flight at ``elapsed_s``.

        A request issued during second s ends by s + 1 + timeout (+ its wait for a connection in
        open loop, absorbed by the extra seconds); late arrivals are still counted (see export).
        """
        last = math.floor(elapsed_s - timeout_s - 3.0)
        for b in self.buckets[: max(0, last + 1)]:
            if not b.sealed:
                self.seal(b)
        for child in self.by_request.values():
            child.seal_settled(elapsed_s, timeout_s)

    def finish(self) -> None:
        """Seal everything: call once the run has drained."""
        for b in self.buckets:
            self.seal(b)
        for child in self.by_request.values():
            child.finish()

    def export(self) -> TimelineExport:
        """This timeline as plain data (picklable, JSON-able): what a worker sends the parent."""
        self.finish()
        seconds = [b.export(self.open_loop) for b in self.buckets]
        out: TimelineExport = {"open_loop": self.open_loop, "seconds": seconds}
        if self.by_request:
            out["by_request"] = {label: child.export() for label, child in self.by_request.items()}
        return out


@dataclass
class SecondSummary:
    """One merged second: counts plus the latency figures the report's timeline shows."""

    second: int
    intended: int = 0
    unsent: int = 0
    dropped: int = 0
    waited: int = 0
    lag_max_s: float = 0.0
    requests: int = 0
    failed: int = 0
    status: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    backends: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # corrected
    uncorrected_p99_ms: float | None = None


@dataclass
class MergedRun:
    """The whole run's latencies and timeline, summed exactly over every worker's export."""

    open_loop: bool
    seconds: list[SecondSummary]
    corrected: LatencyHistogram
    uncorrected: LatencyHistogram
    #: Per mix entry (report key -> its merged run); empty for a single request (see Timeline).
    by_request: dict[str, MergedRun] = field(default_factory=dict)


K = TypeVar("K")


def _add(into: dict[K, int], items: Iterable[tuple[K, int]]) -> None:
    for k, n in items:
        into[k] = into.get(k, 0) + n


def merge_exports(parts: Sequence[TimelineExport]) -> MergedRun:
    """Sum per-second counters and HDR histograms of several :meth:`Timeline.export` results.

    Exact: the merged histogram holds every sample of every part (HDR ``add`` of identically laid
    out histograms), so percentiles are those of the union, as if one process had recorded all.
    """
    open_loop = any(p["open_loop"] for p in parts)
    n = max((len(p["seconds"]) for p in parts), default=0)
    total_c, total_u = LatencyHistogram(), LatencyHistogram()
    seconds: list[SecondSummary] = []
    for s in range(n):
        out = SecondSummary(second=s)
        hist_c, hist_u = LatencyHistogram(), LatencyHistogram()
        for p in parts:
            if s >= len(p["seconds"]):
                continue
            e = p["seconds"][s]
            out.intended += e["intended"]
            out.unsent += e["unsent"]
            out.dropped += e.get("dropped", 0)  # absent in exports of an older worker
            out.waited += e["waited"]
            out.lag_max_s = max(out.lag_max_s, e["lag_max"])
            out.requests += e["requests"]
            out.failed += e["failed"]
            _add(out.status, ((int(k), v) for k, v in e["status"].items()))
            _add(out.errors, e["errors"].items())
            _add(out.backends, e["backends"].items())
            if e["hist_c"]:
                hist_c.merge(LatencyHistogram.decode(e["hist_c"]))
            if e["hist_u"]:
                hist_u.merge(LatencyHistogram.decode(e["hist_u"]))
        out.latency_ms = hist_c.summary_ms(mean=False)
        out.uncorrected_p99_ms = _round(hist_u.percentile_ms(99.0))
        out.status = dict(sorted(out.status.items()))
        out.backends = dict(sorted(out.backends.items()))
        total_c.merge(hist_c)
        total_u.merge(hist_u)
        seconds.append(out)
    labels = list(dict.fromkeys(label for p in parts for label in p.get("by_request", {})))
    by_request = {
        label: merge_exports([p["by_request"][label] for p in parts if label in p.get("by_request", {})])
        for label in labels
    }
    return MergedRun(open_loop, seconds, total_c, total_u, by_request)
