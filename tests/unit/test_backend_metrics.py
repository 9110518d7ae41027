"""The backend's /metrics (backend/metrics.py): requests and latency by route template."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.app import api
from backend.metrics import UNMATCHED, BackendMetrics, MetricsMiddleware
from benchmarks.host import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]


def scrape_after(requests: list[tuple[str, str]]) -> dict[tuple[str, frozenset], float]:
    """A fresh middleware around the FastAPI app: send ``requests``, then parse GET /metrics."""
    app = MetricsMiddleware(api, BackendMetrics())

    async def go() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
            for method, url in requests:
                await client.request(method, url)
            r = await client.get("/metrics")
            assert r.headers["content-type"].startswith("text/plain")
            return r.text

    text = asyncio.run(go())
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def count(samples: dict, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == "asgilab_backend_requests_total" and want <= lab)


def test_requests_are_counted_by_route_template_method_and_code() -> None:
    samples = scrape_after(
        [
            ("GET", "/"),
            ("GET", "/delay/1"),
            ("GET", "/delay/2"),
            ("GET", "/status/503"),
            ("POST", "/echo"),
            ("GET", "/nope"),
            ("GET", "/delay/oops"),
        ]
    )
    assert count(samples, route="/", method="GET", code="200") == 1
    assert count(samples, route="/delay/{ms}", code="200") == 2  # one series for every delay
    assert count(samples, route="/delay/{ms}", code="422") == 1
    assert count(samples, route="/status/{code}", code="503") == 1
    assert count(samples, route="/echo", method="POST") == 1
    assert count(samples, route=UNMATCHED, code="404") == 1
    assert count(samples) == 7, "GET /metrics itself is not traffic"
    n = samples["asgilab_backend_request_duration_seconds_count", frozenset({("route", "/delay/{ms}")})]
    assert n == 3
    assert samples["asgilab_backend_in_flight", frozenset()] == 0


def test_the_app_module_serves_metrics_in_front_of_everything() -> None:
    from backend.app import app

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
            await client.get("/health")
            return await client.get("/metrics")

    r = asyncio.run(go())
    assert (
        r.status_code == 200
        and 'asgilab_backend_requests_total{code="200",method="GET",route="/health"}' in r.text
    )


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn", "granian", "hypercorn"])
def test_metrics_sum_every_worker_process_under_each_server(server: str, tmp_path: Path) -> None:
    """``--workers 2``: whichever process answers the scrape, it counts both processes' requests."""
    port = free_port()
    cmd = [sys.executable, "-m", "backend", "--server", server, "--workers", "2", "--port", str(port)]
    env = {**os.environ, "BACKEND_HOST": "127.0.0.1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        for _ in range(30):  # a new connection each: the kernel spreads them over the workers
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        for _ in range(4):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            samples = {
                (s.name, frozenset(s.labels.items())): s.value
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
            }
            assert count(samples, route="/", code="200") == 30, text
    finally:
        stop_process(proc)
        log.close()
