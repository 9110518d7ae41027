"""Prometheus exposition of the proxy's counters, computed when /metrics is scraped.

The request path only bumps plain integers (``Endpoint`` per-upstream counters, ``Counters`` for
client responses and rare events); ``ProxyCollector.collect`` reads them and yields metric
families. prometheus_client's ``Counter.labels(...).inc()`` costs a dict lookup, a lock and a few
calls per request, which at 20k+ requests/s on one core is a measurable slice; reading a few dozen
integers per scrape costs nothing that matters. Each ``ProxyState`` gets its own
``CollectorRegistry`` so several proxies in one test process never share series.

Families (all prefixed ``asgilab_proxy_``; docs/proxy.md has the table):
  requests_total{code_class}, request_duration_seconds, in_flight, connections_open,
  upstream_requests_total{upstream,code_class}, upstream_failures_total{upstream,reason},
  upstream_duration_seconds{upstream}, upstream_in_flight{upstream}, pool_idle_connections{upstream},
  upstream_connections_opened_total{upstream}, upstream_requests_reused_total{upstream},
  upstream_connection_reuse_ratio{upstream}, upstream_ejections_total{upstream},
  upstream_health{upstream,state}, endpoints{state}, balancer_info{policy},
  worker_info{worker,workers}, draining, websocket_tunnels_open, queued, and one ``<name>_total``
  per event name in ``Counters.events`` (label ``reason`` unless EVENT_LABEL_NAMES says otherwise).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from proxy.counters import Histogram

if TYPE_CHECKING:
    from proxy.pool import Endpoint
    from proxy.state import ProxyState

log = logging.getLogger("proxy.metrics")

PREFIX = "asgilab_proxy_"
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
HEALTH_STATES = ("healthy", "unhealthy", "ejected", "draining")

# Label name for the label of an event counter (``Counters.inc(name, label)``); "reason" otherwise.
EVENT_LABEL_NAMES = {
    "rejected": "status",
    "websocket_tunnels": "protocol",
    "health_checks": "result",
    "health_changes": "state",
    "policy_switches": "policy",
}

# Names the fixed families use: an event with one of these names would clash, so it is skipped.
_FIXED = frozenset(
    {
        "requests",
        "request_duration_seconds",
        "in_flight",
        "connections_open",
        "upstream_requests",
        "upstream_failures",
        "upstream_duration_seconds",
        "upstream_in_flight",
        "pool_idle_connections",
        "upstream_connections_opened",
        "upstream_requests_reused",
        "upstream_connection_reuse_ratio",
        "upstream_ejections",
        "upstream_health",
        "endpoints",
        "balancer_info",
        "worker_info",
        "draining",
        "websocket_tunnels_open",
        "queued",
    }
)
_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def endpoints_of(state: ProxyState) -> list[Endpoint]:
    """Live endpoints, then draining ones (removed from discovery, requests still running)."""
    group = state.group
    return [*group.live, *(ep for ep in group.endpoints.values() if not ep.live)]


def health_state(ep: Endpoint) -> str:
    """One of HEALTH_STATES for ``ep``: the reason picks skip it, or "healthy".

    Draining wins (discovery removed it, or an operator drained it: admin POST
    /upstreams/{addr}/drain); then ejected (passive outlier detection, or the short
    cooldown after a failed connect, nginx's ``fail_timeout``); then unhealthy (active health
    checks). An endpoint no health check has answered yet gets traffic, so it counts as healthy.
    """
    if not ep.live or ep.drain:
        return "draining"
    if ep.ejected or ep.cooling:
        return "ejected"
    if not ep.healthy:
        return "unhealthy"
    return "healthy"


def reuse_ratio(ep: Endpoint) -> float:
    """Share of requests sent on a pooled connection rather than a freshly opened one."""
    stats = ep.stats
    total = stats.reused + stats.connects
    return stats.reused / total if total else 0.0


def endpoint_counters(ep: Endpoint) -> dict[str, object]:
    """The per-upstream figures /upstreams adds to the pool's own snapshot of an endpoint."""
    stats = ep.stats
    attempts = sum(stats.responses)
    return {
        "state": health_state(ep),
        "responses": {
            **{cls: stats.responses[i + 1] for i, cls in enumerate(CODE_CLASSES)},
            "failed": stats.responses[0],
        },
        "failures": dict(stats.failures),
        "connections_opened": stats.connects,
        "requests_reused": stats.reused,
        "reuse_ratio": round(reuse_ratio(ep), 4),
        "mean_latency_ms": round(stats.latency.sum / attempts * 1000, 3) if attempts else None,
    }


def _histogram(fam: HistogramMetricFamily, labels: list[str], h: Histogram) -> None:
    fam.add_metric(labels, h.cumulative(), h.sum)


def client_in_flight(state: ProxyState) -> int:
    """Client requests parsed and not yet answered (active plus pipelined behind it)."""
    n = 0
    for conn in state.connections:
        if getattr(conn, "active", None) is not None:
            n += 1
        n += len(getattr(conn, "queue", ()))
    return n


def _event_families(events: dict[tuple[str, str], int]) -> Iterator[Metric]:
    by_name: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (name, label), value in events.items():
        by_name[name].append((label, value))
    for name in sorted(by_name):
        metric = _BAD_CHARS.sub("_", name)
        if metric in _FIXED:
            log.warning("event counter %r clashes with a built-in metric; not exported", name)
            continue
        rows = by_name[name]
        doc = f"Events counted as {name!r} (Counters.inc)."
        if all(label == "" for label, _ in rows):
            fam = CounterMetricFamily(PREFIX + metric, doc)
            fam.add_metric([], sum(v for _, v in rows))
        else:
            fam = CounterMetricFamily(PREFIX + metric, doc, labels=[EVENT_LABEL_NAMES.get(name, "reason")])
            for label, value in sorted(rows):
                fam.add_metric([label], value)
        yield fam


class ProxyCollector:
    """A prometheus_client custom collector over one ``ProxyState`` (one worker process)."""

    def __init__(self, state: ProxyState, worker: int = 0) -> None:
        self.state = state
        self.worker = worker

    def collect(self) -> Iterable[Metric]:
        state = self.state
        counters = state.counters
        endpoints = endpoints_of(state)

        requests = CounterMetricFamily(
            PREFIX + "requests",
            "Responses sent to clients by status class (proxy-generated 502/504 included, 499 = "
            "client left first); requests refused while parsing are in rejected_total.",
            labels=["code_class"],
        )
        for i, cls in enumerate(CODE_CLASSES, 1):
            requests.add_metric([cls], counters.responses[i])
        yield requests

        latency = HistogramMetricFamily(
            PREFIX + "request_duration_seconds",
            "Client-facing latency: request head parsed to the last response byte handed to the socket.",
        )
        _histogram(latency, [], counters.latency)
        yield latency

        yield GaugeMetricFamily(
            PREFIX + "in_flight", "Client requests being served now.", value=client_in_flight(state)
        )
        yield GaugeMetricFamily(
            PREFIX + "connections_open", "Client connections open now.", value=len(state.connections)
        )
        yield GaugeMetricFamily(
            PREFIX + "draining", "1 while the proxy drains after SIGTERM.", value=int(state.draining)
        )

        attempts = CounterMetricFamily(
            PREFIX + "upstream_requests",
            "Attempts per upstream by the status class of its response head; 'failed' = no response "
            "(see upstream_failures_total). A retried request counts once per attempt.",
            labels=["upstream", "code_class"],
        )
        failures = CounterMetricFamily(
            PREFIX + "upstream_failures",
            "Attempts that got no response head, by reason: connect, reset, timeout, protocol.",
            labels=["upstream", "reason"],
        )
        duration = HistogramMetricFamily(
            PREFIX + "upstream_duration_seconds",
            "Attempt latency per upstream: endpoint picked to response head (or failure).",
            labels=["upstream"],
        )
        in_flight = GaugeMetricFamily(
            PREFIX + "upstream_in_flight", "Requests assigned to each upstream now.", labels=["upstream"]
        )
        idle = GaugeMetricFamily(
            PREFIX + "pool_idle_connections",
            "Idle keep-alive connections pooled per upstream.",
            labels=["upstream"],
        )
        opened = CounterMetricFamily(
            PREFIX + "upstream_connections_opened",
            "Upstream connections established.",
            labels=["upstream"],
        )
        reused = CounterMetricFamily(
            PREFIX + "upstream_requests_reused",
            "Requests sent on a pooled (already open) upstream connection.",
            labels=["upstream"],
        )
        ratio = GaugeMetricFamily(
            PREFIX + "upstream_connection_reuse_ratio",
            "reused / (reused + opened) since start: 1.0 = every request on a pooled connection.",
            labels=["upstream"],
        )
        ejections = CounterMetricFamily(
            PREFIX + "upstream_ejections",
            "Times outlier detection ejected each upstream (ejections_total has them by reason).",
            labels=["upstream"],
        )
        health = GaugeMetricFamily(
            PREFIX + "upstream_health",
            "1 for the state each upstream is in (healthy, unhealthy, ejected, draining), else 0.",
            labels=["upstream", "state"],
        )
        by_state = dict.fromkeys(HEALTH_STATES, 0)
        for ep in endpoints:
            up = ep.label
            stats = ep.stats
            for i, cls in enumerate(CODE_CLASSES, 1):
                attempts.add_metric([up, cls], stats.responses[i])
            attempts.add_metric([up, "failed"], stats.responses[0])
            for reason, n in sorted(stats.failures.items()):
                failures.add_metric([up, reason], n)
            _histogram(duration, [up], stats.latency)
            in_flight.add_metric([up], ep.load.in_flight)
            idle.add_metric([up], len(ep.idle))
            opened.add_metric([up], stats.connects)
            reused.add_metric([up], stats.reused)
            ratio.add_metric([up], reuse_ratio(ep))
            ejections.add_metric([up], ep.outlier.ejections)
            current = health_state(ep)
            by_state[current] += 1
            for st in HEALTH_STATES:
                health.add_metric([up, st], 1 if st == current else 0)
        yield from (attempts, failures, duration, in_flight, idle, opened, reused, ratio, ejections, health)

        known = GaugeMetricFamily(
            PREFIX + "endpoints", "Endpoints known to the proxy, by health state.", labels=["state"]
        )
        for st, n in by_state.items():
            known.add_metric([st], n)
        yield known

        info = GaugeMetricFamily(
            PREFIX + "worker_info",
            "Always 1: which worker process this is; with --workers N each one has its own admin "
            "port (admin port + worker) and counts only its own traffic.",
            labels=["worker", "workers"],
        )
        info.add_metric([str(self.worker), str(state.config.workers)], 1)
        yield info

        policy = GaugeMetricFamily(
            PREFIX + "balancer_info", "The load-balancing policy in use (value always 1).", labels=["policy"]
        )
        policy.add_metric([state.balancer.name], 1)
        yield policy

        yield GaugeMetricFamily(
            PREFIX + "websocket_tunnels_open",
            "Upgrade (WebSocket) tunnels spliced now.",
            value=state.tunnels_open,
        )
        admission = state.admission
        yield GaugeMetricFamily(
            PREFIX + "queued",
            "Requests waiting for an endpoint below --max-in-flight-per-upstream (0 when uncapped).",
            value=len(admission.waiting) if admission is not None else 0,
        )

        yield from _event_families(counters.events)


class Metrics:
    """The registry of one proxy instance and its text rendering."""

    def __init__(self, state: ProxyState, worker: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ProxyCollector(state, worker))
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds...: read from
        # /proc at scrape time (absent on systems without it), the usual companions of a proxy's own.
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
