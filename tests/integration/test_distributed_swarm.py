"""The distributed load generator as Swarm jobs: swarm/loadgen.yml deployed with the lab stack.

A one-node swarm (tests/integration/swarm.py), the lab stack with 2 backends plus the coordinator
and 2 worker replicas of swarm/loadgen.yml; the coordinator's report lands in a directory of the
test (a bind mount on this node).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .swarm import Stack, docker, lab_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("swarm-loadgen-results")


@pytest.fixture(scope="module")
def stack(docker_ready: None, tmp_path_factory: pytest.TempPathFactory, results: Path) -> Iterator[Stack]:
    """The lab stack first (2 backends, the proxy routing to both), then swarm/loadgen.yml added to
    it, as a user does: ``./lab swarm up``, then ``./lab swarm up -c swarm/loadgen.yml``."""
    tmp = tmp_path_factory.mktemp("swarm-loadgen")
    with lab_stack(tmp, "loadgen", backends=2, build=("backend", "proxy", "loadgen")) as lab:
        variables = {
            "SWARM_BACKENDS": "2",
            "SWARM_PROXY_PORT": lab.base_url.rsplit(":", 1)[1],
            "SWARM_ADMIN_PORT": lab.admin_url.rsplit(":", 1)[1],
            "LAB_IMAGE_TAG": f"it-{lab.name}",
            "SWARM_LOADGEN_WORKERS": "2",
            "LOADGEN_CONCURRENCY": "6",
            "LOADGEN_DURATION": "4",
            "LOADGEN_RESULTS": str(results),
        }
        files = ["-c", str(tmp / f"{lab.name}.json"), "-c", "swarm/stack.yml", "-c", "swarm/loadgen.yml"]
        docker("stack", "deploy", "--detach=true", *files, lab.name, timeout=300, env=variables)
        try:
            yield lab
        finally:
            remove_jobs(lab)


def remove_jobs(lab: Stack) -> None:
    """Remove the two job services and their tasks' containers: the engine (20.10) keeps the
    exited containers of completed job tasks even after their service is gone."""
    names = [lab.service("loadgen-coordinator"), lab.service("loadgen-worker")]
    docker("service", "rm", *names, check=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [
            c
            for name in names
            for c in docker("ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={name}").split()
        ]
        if not left:
            return
        docker("rm", "-f", *left, check=False)
        time.sleep(1)


def test_coordinator_and_two_worker_replicas_run_once_and_merge(stack: Stack, results: Path) -> None:
    def report_written() -> list[Path]:
        return sorted(results.glob("*/report.json"))

    found = stack.wait_until("the coordinator's report", report_written, timeout=180, every=1)
    report = json.loads(found[0].read_text())
    workers = report["distributed"]["workers"]
    assert [w["status"] for w in workers] == ["done", "done"]
    assert sorted(w["share"]["connections"] for w in workers) == [3, 3]
    assert sum(w["requests"] for w in workers) == report["requests"] > 0
    assert report["failed"] == 0
    assert set(report["backends"]) == stack.backend_ids(), "both backends served the workers"
    # Jobs: every task ran once and completed; none was restarted into a second run.
    for short in ("loadgen-coordinator", "loadgen-worker"):
        deadline = time.monotonic() + 60
        while True:
            states = docker("service", "ps", stack.service(short), "--format", "{{.CurrentState}}").split(
                "\n"
            )
            states = [s for s in states if s]
            if all(s.startswith("Complete") for s in states) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert len(states) == (1 if short == "loadgen-coordinator" else 2), states
        assert all(s.startswith("Complete") for s in states), states
