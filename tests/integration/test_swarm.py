"""The lab as a Docker Swarm stack on a one-node swarm: deploy, spread, scale, rolling update, a kill.

One stack for the module (its own name and free host ports; removed at the end, and the swarm
left only if these tests made it: tests/integration/swarm.py). The tests run in file order and
each leaves 3 backends behind; the last ones switch the proxy to --discovery docker (the Swarm
tasks API).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .swarm import Stack, docker, lab_stack
from .traffic import Trickle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with lab_stack(tmp_path_factory.mktemp("swarm"), "swarm", backends=3) as lab:
        yield lab


def _spread(stack: Stack, requests: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        for _ in range(requests):
            r = client.get("/")
            assert r.status_code == 200, r.text
            counts[r.headers["x-backend-id"]] = counts.get(r.headers["x-backend-id"], 0) + 1
    return counts


def _until_all_seen(stack: Stack, ids: set[str], limit: float) -> float:
    """GET until every id in ``ids`` has answered; seconds it took (fails after ``limit`` x 3)."""
    start = time.monotonic()
    seen: set[str] = set()
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        while seen != ids and time.monotonic() - start < limit * 3:
            r = client.get("/")
            assert r.status_code == 200, r.text
            seen.add(r.headers["x-backend-id"])
    took = time.monotonic() - start
    assert seen == ids, f"after {took:.1f}s traffic reached {sorted(seen)} of {sorted(ids)}"
    return took


def test_stack_runs_three_dnsrr_backends_and_the_proxy_balances_them_evenly(stack: Stack) -> None:
    tasks = stack.running()
    assert len(tasks) == 3
    assert stack.endpoints() == sorted(f"{t['address']}:8001" for t in tasks), (
        "every task, by its own address"
    )
    spec = docker("service", "inspect", "--format", "{{.Spec.EndpointSpec.Mode}}", stack.service("backend"))
    assert spec.strip() == "dnsrr"
    counts = _spread(stack, 60)
    assert set(counts) == stack.backend_ids()
    assert sorted(counts.values()) == [20, 20, 20], f"round robin over the tasks: {counts}"


def test_scale_3_to_5_to_2_under_load_fails_no_get_and_new_tasks_serve_within_2s(stack: Stack) -> None:
    with Trickle(f"{stack.base_url}/") as trickle:
        stack.scale(5)  # returns once all 5 run (healthy)
        took = _until_all_seen(stack, stack.backend_ids(), limit=2.0)
        stack.scale(2)
        scaled = time.monotonic()
        remaining = stack.backend_ids()
        time.sleep(3)
    print(
        f"\nswarm scale 3->5->2: {len(trickle.outcomes)} GETs, {len(trickle.failures())} failed, "
        f"5 tasks in traffic {took:.2f}s after running"
    )
    assert len(remaining) == 2
    assert trickle.failures() == [], f"clients saw errors while scaling: {trickle.failures()[:5]}"
    assert len(trickle.outcomes) > 100
    assert took <= 2.0, f"new tasks got traffic only {took:.2f}s after Swarm called them running"
    assert trickle.backends_since(scaled + 1.5) == remaining, "removed tasks get nothing after a re-resolve"
    stack.scale(3)
    stack.wait_for_proxy(3)


def test_rolling_update_of_the_backends_fails_no_get(stack: Stack) -> None:
    before = stack.backend_ids()
    with Trickle(f"{stack.base_url}/", pause=0.005) as trickle:
        started = time.monotonic()
        stack.update("--force")  # one task at a time, start-first, each new one healthy first
        updated = time.monotonic()
        after = stack.backend_ids()
        time.sleep(2)
    print(
        f"\nswarm rolling update: {len(trickle.outcomes)} GETs in {updated - started:.1f}s, "
        f"{len(trickle.failures())} failed"
    )
    assert len(after) == 3 and not after & before, f"every task replaced: {before} -> {after}"
    assert trickle.failures() == [], f"clients saw errors during the rolling update: {trickle.failures()[:5]}"
    served = trickle.backends_since(started)
    assert after <= served, "the new tasks served during the run"
    assert len(served) >= 4, f"old and new tasks served while it rolled: {served}"
    assert trickle.backends_since(updated + 1.5) == after
    stack.wait_for_proxy(3)


def test_docker_discovery_follows_the_swarm_tasks_api(stack: Stack) -> None:
    stack.update("--env-add", "PROXY_DISCOVERY=docker", service="proxy")  # stop-first: host ports
    stack.wait_for_proxy(3)
    logs = stack.logs("proxy", since="2m")
    assert f"Swarm tasks of service '{stack.service('backend')}'" in logs
    assert stack.endpoints() == sorted(f"{t['address']}:8001" for t in stack.running())
    stack.scale(4)
    stack.wait_until("the proxy routes to the 4th task", lambda: len(stack.endpoints()) == 4, timeout=10)
    _until_all_seen(stack, stack.backend_ids(), limit=2.0)
    stack.scale(3)
    stack.wait_for_proxy(3)


def test_a_killed_task_is_replaced_by_swarm_and_the_proxy_follows(stack: Stack) -> None:
    """Runs with --discovery docker (the test before switched it): the kill event takes it out."""
    victim = stack.running()[0]
    with Trickle(f"{stack.base_url}/", pause=0.005) as trickle:
        time.sleep(0.5)
        docker("kill", victim["container"])
        killed = time.monotonic()

        def replaced() -> set[str]:
            ids = stack.backend_ids()
            return ids if len(ids) == 3 and victim["container"][:12] not in ids else set()

        ids = stack.wait_until("Swarm replaces the killed task", replaced, timeout=60)
        _until_all_seen(stack, ids, limit=2.0)
        time.sleep(1)
    print(
        f"\nswarm kill: {len(trickle.outcomes)} GETs, {len(trickle.failures())} failed, "
        f"replaced and in traffic after {time.monotonic() - killed - 1:.1f}s"
    )
    assert trickle.failures() == [], f"GETs failed around the kill: {trickle.failures()[:5]}"
    assert victim["container"][:12] not in trickle.backends_since(killed + 1.0)
    assert stack.endpoints() == sorted(f"{t['address']}:8001" for t in stack.running())


def test_stack_files_are_what_swarm_deployed(stack: Stack, tmp_path: Path) -> None:
    """The update policy of swarm/stack.yml reached Swarm (start-first backends, stop-first proxy)."""
    fmt = "{{.Spec.UpdateConfig.Order}} {{.Spec.UpdateConfig.FailureAction}} {{.Spec.RollbackConfig.Order}}"
    assert docker("service", "inspect", "--format", fmt, stack.service("backend")).split() == [
        "start-first",
        "rollback",
        "start-first",
    ]
    assert docker("service", "inspect", "--format", fmt, stack.service("proxy")).split()[0] == "stop-first"
    ports = docker("service", "inspect", "--format", "{{json .Endpoint.Ports}}", stack.service("proxy"))
    assert '"PublishMode":"host"' in ports
