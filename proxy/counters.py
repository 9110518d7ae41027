"""Event counts and latency histograms for /metrics, bumped where things happen, read at scrape time.

The request path must not pay for a metrics library on every request (the proxy serves tens of
thousands of requests a second on one core), so everything here is a plain integer or float
increment; ``proxy/metrics.py`` turns the current values into Prometheus families only when
``/metrics`` is scraped. Rare events (retries, ejections, rejections, tunnels) go through ``inc``
with a name and an optional label; per-request figures live on the objects that own them
(``EndpointStats``, an endpoint's ``ep.stats``, for per-upstream counts; ``responses`` and
``latency`` of ``Counters`` for what clients got).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.failure import Failure

# Upper bounds (seconds) of the latency buckets, Prometheus ``le`` style (a value equal to a bound
# counts in that bucket). Finer than prometheus_client's defaults at the low end because a proxied
# request on a pooled connection takes well under a millisecond.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


# Fine bounds for the per-endpoint attempt latency (``EndpointStats.latency``): four buckets per
# power of two from 2^-15 s (31 us) to 2^5 s (32 s), each bucket ~19 % wide, so a percentile
# interpolated inside a bucket is within ~10 % of the true value. The dashboard's per-replica p50
# and p99 come from the difference of two snapshots of these counts (proxy/events.py). The
# Prometheus buckets are a subset of the bounds, so /metrics still exposes exactly LATENCY_BUCKETS
# (``cumulative`` sums the fine counts up to each exported bound). Observing costs one bisect over
# ~96 floats instead of 16: about 7 comparisons instead of 4 (benchmarks/hotpath.py, docs/live.md).
FINE_LATENCY_BUCKETS: tuple[float, ...] = tuple(
    sorted({*(2.0 ** (k / 4) for k in range(-60, 21)), *LATENCY_BUCKETS})
)


class Histogram:
    """Fixed-bucket histogram: one ``bisect`` and two additions per observation, no locks.

    ``counts`` are per bucket (not cumulative), with one extra slot for values above the last
    bound (+Inf); the exporter accumulates them at scrape time. ``export`` (a subset of
    ``bounds``) is what ``cumulative`` reports, so a histogram can keep finer buckets than the
    ones /metrics exposes.
    """

    __slots__ = ("bounds", "counts", "export", "sum")

    def __init__(
        self, bounds: tuple[float, ...] = LATENCY_BUCKETS, export: tuple[float, ...] | None = None
    ) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        if export is not None and not set(export) <= set(bounds):
            raise ValueError("export bounds must be a subset of the histogram's bounds")
        self.export = bounds if export is None else export

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs ending with +Inf, as Prometheus histograms are exposed."""
        out = []
        total = 0
        export = self.export
        if export is self.bounds:
            for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
                total += n
                out.append(("+Inf" if bound == float("inf") else repr(bound), total))
            return out
        counts = self.counts
        i = 0
        for bound in export:
            j = self.bounds.index(bound)
            total += sum(counts[i : j + 1])
            i = j + 1
            out.append((repr(bound), total))
        out.append(("+Inf", total + sum(counts[i:])))
        return out


class EndpointStats:
    """One endpoint's figures for /metrics, /upstreams and the dashboard (``ep.stats``).

    Plain increments on the request path, read at scrape time: attempts by status class (index
    0 = no response head), failures by name (``proxy.failure``), attempt latency (fine buckets),
    attempts retried elsewhere, upstream connections opened and requests sent on a pooled one.
    """

    __slots__ = ("connects", "failures", "latency", "responses", "retries", "reused")

    def __init__(self) -> None:
        self.responses = [0, 0, 0, 0, 0, 0]
        self.failures: dict[Failure, int] = {}
        self.latency = Histogram(FINE_LATENCY_BUCKETS, LATENCY_BUCKETS)
        self.retries = 0  # attempts on this endpoint that were retried elsewhere (the request path)
        self.connects = 0  # upstream connections opened (upstream.py)
        self.reused = 0  # requests sent on a pooled connection (Endpoint.take_idle)

    def attempt(self, status: int, latency_s: float, failure: Failure | None) -> None:
        """One attempt ended (``Endpoint.observe``): its status class, its failure, its latency."""
        self.responses[status // 100 if status < 600 else 0] += 1
        if failure is not None:
            self.failures[failure] = self.failures.get(failure, 0) + 1
        self.latency.observe(latency_s)


class Counters:
    """Monotonic counts for one proxy process."""

    __slots__ = ("events", "latency", "responses")

    def __init__(self) -> None:
        # (event name, label) -> count; e.g. ("retries", "connect"), ("rejected", "431").
        # Exported generically as asgilab_proxy_<name>_total{reason="<label>"} (see proxy/metrics.py).
        self.events: Counter[tuple[str, str]] = Counter()
        # Responses sent to clients by status class: index 1-5 for 1xx-5xx (499 = client went away
        # before the response head, as nginx logs it), 0 for a status the proxy never set.
        self.responses = [0, 0, 0, 0, 0, 0]
        # Client-facing latency: from the request head parsed to the exchange finished.
        self.latency = Histogram()

    def inc(self, name: str, label: str = "", n: int = 1) -> None:
        self.events[name, label] += n

    def response(self, status: int, seconds: float) -> None:
        """One client exchange ended with ``status`` after ``seconds`` (called once per request)."""
        self.responses[status // 100 if status < 600 else 0] += 1
        self.latency.observe(seconds)

    def count(self, name: str, label: str | None = None) -> int:
        """Total for ``name`` (all labels) or for one label; for tests and the admin views."""
        if label is not None:
            return self.events[name, label]
        return sum(v for (n, _), v in self.events.items() if n == name)
