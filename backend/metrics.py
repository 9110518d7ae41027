"""Prometheus metrics of one backend replica: requests and latency by route, served at /metrics.

A pure ASGI middleware (outermost, so it sees every response, faults and 404s included) that
counts each HTTP request under its route *template* (``/delay/{ms}``, not ``/delay/20``: one
series per route, whatever the traffic) and answers ``GET /metrics`` itself, before the app, so
the exposition is the same under all five servers and never counted as traffic. Requests that
match no route count as ``route="<unmatched>"``.

Processes. With one server process (the default, ``BACKEND_WORKERS=1``) the metrics live in
that process. With several (``--workers N`` under any server) each process counts its own, and
a scrape would reach one of them at random: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory before the server starts and prometheus_client's multiprocess mode sums every
worker's files at scrape time (``python -m backend`` does this for you when workers > 1).

Families: ``asgilab_backend_requests_total{route,method,code}``,
``asgilab_backend_request_duration_seconds{route}`` (first request byte to the end of the
response body, the app's own time), ``asgilab_backend_in_flight``, plus the process collector
(CPU seconds, resident memory) in single-process mode.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "<unmatched>"
# Buckets (seconds) for an app whose answers range from ~0.2 ms (GET /) to seconds (/delay).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class BackendMetrics:
    """The families of one app instance, in a registry of their own (tests build several)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "asgilab_backend_requests",
            "HTTP requests this replica answered, by route template, method and status code.",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "asgilab_backend_request_duration_seconds",
            "Time from the request reaching the app to the last response byte, by route template.",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "asgilab_backend_in_flight",
            "HTTP requests being answered now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        if not self.multiprocess:
            ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


def route_of(scope: Scope) -> str:
    """The route template Starlette matched (it records it in the scope), or UNMATCHED."""
    route: object = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Counts every HTTP request by route and serves ``GET /metrics``."""

    def __init__(self, app: ASGIApp, metrics: BackendMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics or BackendMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            await self._expose(scope, send)
            return
        m = self.metrics
        status = 500  # if the app raises before answering, the server sends a 500
        t0 = time.perf_counter()

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_counted)
        finally:
            m.in_flight.dec()
            route = route_of(scope)
            m.requests.labels(route, scope["method"], str(status)).inc()
            m.duration.labels(route).observe(time.perf_counter() - t0)

    async def _expose(self, scope: Scope, send: Send) -> None:
        body = self.metrics.render()
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
