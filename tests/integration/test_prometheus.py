"""Prometheus in the lab (`--profile observe`): it finds every proxy worker and backend replica by
itself, and the counters it scraped add up to exactly what the load generator counted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Lab, own_lab

WORKERS = 2
REPLICAS = 2


@pytest.fixture(scope="module")
def observed(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    env = {
        "COMPOSE_PROFILES": "observe",
        "PROXY_WORKERS": str(WORKERS),
        "PROXY_ACCESS_LOG": "false",
        "PROMETHEUS_PORT": "0",
    }
    up = ("--scale", f"backend={REPLICAS}", "proxy", "backend", "prometheus")
    with own_lab(
        tmp_path_factory, "prom", env=env, up=up, endpoints=REPLICAS, build=("backend", "proxy", "prometheus")
    ) as lab:
        _, port = lab.compose.get_service_host_and_port("prometheus", 9090)
        yield lab, f"http://127.0.0.1:{port}"


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    doc = r.json()
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def scalar(prom: str, expr: str) -> float | None:
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else None


def wait_for(prom: str, expr: str, expected: float, timeout: float = 40) -> float | None:
    """Poll ``expr`` until it equals ``expected`` (scrapes are 2 s apart); the last value seen."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = scalar(prom, expr)
        if value == expected:
            return value
        time.sleep(1)
    return value


def test_prometheus_scrapes_every_worker_and_replica_and_counts_match_the_load_generator(
    observed: tuple[Lab, str], tmp_path: Path
) -> None:
    lab, prom = observed
    # Discovery: one proxy target per worker (8080 + i), the replicas from DNS, all up.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        targets = {(r["metric"]["job"], r["metric"]["instance"]) for r in query(prom, "up == 1")}
        if (
            len([t for t in targets if t[0] == "proxy"]) == WORKERS
            and len([t for t in targets if t[0] == "backend"]) == REPLICAS
        ):
            break
        time.sleep(1)
    assert sorted(i for j, i in targets if j == "proxy") == [f"proxy:{8080 + i}" for i in range(WORKERS)]
    replicas = {Lab.address(c) for c in lab.containers("backend")}
    assert {i for j, i in targets if j == "backend"} == replicas

    before_proxy = scalar(prom, "sum(asgilab_proxy_requests_total)") or 0.0
    before_backend = scalar(prom, 'sum(asgilab_backend_requests_total{route!="/health"})') or 0.0
    lab.run(
        "run", "--rm", "--no-deps", "-v", f"{tmp_path}:/out", "loadgen", "http://proxy:8000/",
        "--concurrency", "10", "--duration", "5", "--json", "/out/report.json", "--quiet",
        timeout=120,
    )  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    answered = report["responses"]
    assert answered > 100 and report["failed"] == 0

    # Every response the load generator got was counted once by the proxy (all workers summed)
    # and once by the replica that served it (probes excluded): nothing lost, nothing twice.
    proxy_total = wait_for(prom, "sum(asgilab_proxy_requests_total)", before_proxy + answered)
    assert proxy_total == before_proxy + answered
    backend_total = wait_for(
        prom, 'sum(asgilab_backend_requests_total{route!="/health"})', before_backend + answered
    )
    assert backend_total == before_backend + answered
    # Both workers took part (the kernel spreads the load generator's 10 connections).
    per_worker = query(prom, "sum by (instance) (asgilab_proxy_requests_total)")
    assert len(per_worker) == WORKERS

    # The recording rules are loaded and produce a series per replica on both sides.
    rules = httpx.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
    names = {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}
    for name in (
        "instance:asgilab_backend_requests:rate10s",
        "instance:asgilab_backend_errors:ratio_rate10s",
        "instance:asgilab_backend_request_duration_seconds:p99_rate10s",
        "upstream:asgilab_proxy_upstream_requests:rate10s",
        "upstream:asgilab_proxy_upstream_errors:ratio_rate10s",
        "upstream:asgilab_proxy_upstream_duration_seconds:p99_rate10s",
    ):
        assert names.get(name) == "ok", (name, names.get(name))
    assert {
        r["metric"]["instance"] for r in query(prom, "instance:asgilab_backend_requests:rate10s")
    } == replicas
    assert {
        r["metric"]["upstream"] for r in query(prom, "upstream:asgilab_proxy_upstream_requests:rate10s")
    } == replicas
