"""Outlier ejection and active health checks against real replicas.

The stack is its own Compose project (base file + ``compose/failing-replica.yml``): two ``backend``
replicas and a ``backend-failing`` replica that answers every request 500 while its ``/health``
stays green, all behind the DNS name ``backend``. The proxy checks ``/health`` every 0.5 s
(2 failures = unhealthy, 2 passes = healthy again) and ejects after 5 consecutive 5xx for 60 s.
Figures (time to ejection, time to unhealthy) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from .conftest import Lab, own_lab
from .traffic import Trickle

CONSECUTIVE_5XX = 5
INTERVAL, TIMEOUT, UNHEALTHY, HEALTHY = 0.5, 0.5, 2, 2


@pytest.fixture(scope="module")
def faulty_lab(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    env = {
        "PROXY_ACCESS_LOG": "false",
        "PROXY_OUTLIER_CONSECUTIVE_5XX": str(CONSECUTIVE_5XX),
        "PROXY_OUTLIER_BASE_EJECTION": "60",
        "PROXY_OUTLIER_MAX_EJECTION": "60",
        "PROXY_HEALTH_INTERVAL": str(INTERVAL),
        "PROXY_HEALTH_TIMEOUT": str(TIMEOUT),
        "PROXY_UNHEALTHY_THRESHOLD": str(UNHEALTHY),
        "PROXY_HEALTHY_THRESHOLD": str(HEALTHY),
    }
    with own_lab(
        tmp_path_factory,
        "health",
        env=env,
        compose_files=["compose/failing-replica.yml"],
        up=("--scale", "backend=2", "proxy", "backend", "backend-failing"),
    ) as lab:
        yield lab


def endpoint(lab: Lab, address: str) -> dict:
    (view,) = [e for e in lab.endpoints() if e["address"] == address]
    return view


def wait_health(lab: Lab, address: str, health: str, timeout: float = 10) -> float:
    """Seconds until the proxy shows ``health`` for ``address`` (polled every 50 ms)."""
    start = time.monotonic()
    while (seen := endpoint(lab, address)["health"]) != health:
        assert time.monotonic() - start < timeout, f"{address} is still {seen} after {timeout:g}s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_failing_replica_is_ejected_after_consecutive_5xx_and_gets_nothing_more(faulty_lab: Lab) -> None:
    lab = faulty_lab
    (faulty,) = lab.containers("backend-failing")
    faulty_id = faulty.attrs["Config"]["Hostname"]
    with Trickle(f"{lab.base_url}/") as trickle:
        started = time.monotonic()
        time.sleep(3)
    by_backend = Counter(o.backend for o in trickle.outcomes)
    failures = trickle.failures()
    assert len(trickle.outcomes) > 100
    assert {o.backend for o in failures} == {faulty_id}, f"only the faulty replica fails: {failures[:5]}"
    assert all(o.status == 500 for o in failures)
    # Every request it got failed, and it got exactly the ones that crossed the threshold.
    assert by_backend[faulty_id] == CONSECUTIVE_5XX, by_backend
    ejected_after = max(o.at for o in failures) - started
    print(f"\nejected after {ejected_after:.2f}s of traffic ({len(trickle.outcomes)} requests: {by_backend})")
    view = endpoint(lab, lab.address(faulty))
    assert view["ejected"] is True and view["ejections"] == 1, view
    assert 50 < view["ejected_for"] <= 60, view


def test_paused_replica_is_marked_unhealthy_and_skipped_then_comes_back(faulty_lab: Lab) -> None:
    lab = faulty_lab
    (faulty,) = lab.containers("backend-failing")
    faulty_id = faulty.attrs["Config"]["Hostname"]
    target = lab.containers("backend")[0]
    target_id, address = target.attrs["Config"]["Hostname"], lab.address(target)
    assert endpoint(lab, address)["health"] == "healthy"
    target.pause()  # its /health stops answering: checks time out
    try:
        took = wait_health(lab, address, "unhealthy")
        print(f"\npaused replica marked unhealthy after {took:.2f}s")
        # interval x threshold + timeout is the design figure; slack for a shared 2-core machine.
        assert took <= INTERVAL * UNHEALTHY + TIMEOUT + INTERVAL + 1.5, took
        with httpx.Client(base_url=lab.base_url, timeout=5) as client:
            replies = [client.get("/") for _ in range(30)]
        seen = Counter(r.headers.get("x-backend-id") for r in replies)
        assert target_id not in seen, f"the paused replica was picked: {seen}"
        ok = [r for r in replies if r.headers.get("x-backend-id") != faulty_id]
        assert ok and all(r.status_code == 200 for r in ok)
    finally:
        target.unpause()
    back = wait_health(lab, address, "healthy")
    print(f"healthy again {back:.2f}s after unpause")
    assert back <= INTERVAL * (HEALTHY + 1) + 1.5, back
    with httpx.Client(base_url=lab.base_url, timeout=5) as client:
        seen = Counter(client.get("/").headers.get("x-backend-id") for _ in range(20))
    assert seen[target_id] > 0, f"traffic does not reach it again: {seen}"
