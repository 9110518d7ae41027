"""A three-node swarm simulated on this machine: the lab across nodes, a whole node stopped under load.

Opt-in (several minutes, a few GB of vfs layers): ``LAB_MULTINODE=1 ./lab test
tests/integration/test_multinode.py``. scripts/multinode starts three node containers with their
own dockerd (node1 manager, zones a/b/c), loads the lab's images into each, and deploys the stack
from node1; the proxy runs on node1, one backend per node (placement preference spread over
zone), and the load generator on node3 reaches the proxy over the stack's overlay network
(VXLAN between the nodes). Under load node2 is stopped: its backend leaves the proxy's set, Swarm
marks the node down and starts the task again on another node, and the proxy routes to it. The
figures are printed (``-s``) and quoted in docs/swarm.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .swarm import REPO, docker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("LAB_MULTINODE", "").lower() not in ("1", "true", "yes"),
        reason="opt-in: LAB_MULTINODE=1 ./lab test tests/integration/test_multinode.py",
    ),
]

STACK = "lab"
RATE, DURATION, STOP_AT = 200, 45, 10  # req/s from node3, seconds, when node2 is stopped


class Sim:
    def __init__(self, name: str) -> None:
        self.name = name
        self.env = {**os.environ, "MULTINODE_NAME": name, "SWARM_STACK": STACK}
        self.nodes: dict[str, str] = {}
        self.loadgen_image = ""

    def script(self, *args: str, timeout: float = 900) -> str:
        result = subprocess.run(
            ["scripts/multinode", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"scripts/multinode {args}: {result.stdout}\n{result.stderr}"
        return result.stdout

    def on(self, node: str, *args: str, timeout: float = 120, check: bool = True) -> str:
        env = {"DOCKER_HOST": f"tcp://{self.nodes[node]}:2375"}
        return docker(*args, timeout=timeout, check=check, env=env)

    def tasks(self) -> list[tuple[str, str]]:
        """(node hostname, task id) of the backend tasks Swarm wants running and that run."""
        out = self.on("node1", "service", "ps", "--filter", "desired-state=running", "--format",
                      "{{.Node}} {{.ID}} {{.CurrentState}}", f"{STACK}_backend")  # fmt: skip
        return [
            (n, t) for n, t, state, *_ in (line.split() for line in out.splitlines()) if state == "Running"
        ]


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    sim = Sim(f"it{os.getpid()}{uuid.uuid4().hex[:4]}")
    config = json.loads(docker("compose", "config", "--format", "json"))
    images = [config["services"][s]["image"] for s in ("backend", "proxy", "loadgen")]
    sim.env["MULTINODE_IMAGES"] = " ".join(images)
    sim.loadgen_image = images[2]
    try:
        docker("compose", "build", "backend", "proxy", "loadgen", timeout=900)
        sim.script("up")
        for line in sim.script("env").splitlines():
            key, _, value = line.partition("=")
            if key.startswith("NODE"):
                sim.nodes[f"node{key[4:]}"] = value
        sim.script("deploy")
        yield sim
    finally:
        sim.script("down", timeout=300)


def test_three_nodes_one_backend_each_and_the_proxy_on_node1_reaches_all(sim: Sim) -> None:
    placed = sorted(node for node, _ in sim.tasks())
    assert placed == ["node1", "node2", "node3"], f"spread over zones a/b/c: {placed}"
    base = f"http://{sim.nodes['node1']}:8000"
    ids = {httpx.get(f"{base}/", timeout=10).headers["x-backend-id"] for _ in range(9)}
    assert len(ids) == 3, f"backends on three nodes answer through the overlay network: {ids}"


def test_stopping_a_whole_node_under_load_moves_its_task_and_the_proxy_routes_around_it(
    sim: Sim, tmp_path: Path
) -> None:
    lg = f"lg-{uuid.uuid4().hex[:6]}"
    sim.on("node3", "run", "-d", "--name", lg, "--network", f"{STACK}_lab", sim.loadgen_image,
           "http://proxy:8000/", "--rate", str(RATE), "--duration", str(DURATION), "--no-live",
           "--json", "/tmp/report.json")  # fmt: skip
    started = time.monotonic()
    time.sleep(STOP_AT)
    node2_ids = {t for n, t in sim.tasks() if n == "node2"}
    stop = time.monotonic()
    docker("stop", "-t", "10", f"asgilab-mn-{sim.name}-node2")
    stopped = time.monotonic()
    down_at = moved_at = None
    while time.monotonic() - stop < 90 and moved_at is None:
        nodes = sim.on("node1", "node", "ls", "--format", "{{.Hostname}} {{.Status}}")
        if down_at is None and "node2 Down" in nodes:
            down_at = time.monotonic()
        running = sim.tasks()
        if len(running) == 3 and all(n != "node2" for n, _ in running):
            moved_at = time.monotonic()
        time.sleep(0.5)
    assert moved_at is not None, f"Swarm did not move node2's task: {sim.tasks()}"
    sim.on("node3", "wait", lg, timeout=DURATION + 120)
    tar = subprocess.run(
        ["docker", "cp", f"{lg}:/tmp/report.json", "-"],
        env={**os.environ, "DOCKER_HOST": f"tcp://{sim.nodes['node3']}:2375"},
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    sim.on("node3", "rm", lg, check=False)
    (tmp_path / "report.tar").write_bytes(tar)
    subprocess.run(["tar", "-xf", "report.tar"], cwd=tmp_path, check=True)
    report = json.loads((tmp_path / "report.json").read_text())

    # The backend ids in traffic before the stop, and the per-second picture around it.
    timeline = report["timeline"]
    stop_s = int(stop - started)
    before = set(timeline[max(stop_s - 2, 0)]["backends"])
    after_move = int(moved_at - started) + 2
    late = [row for row in timeline if row["second"] >= after_move]
    worst = max(timeline, key=lambda row: row["p99_ms"] or 0)
    print(
        f"\nmultinode: {report['requests']} GETs at {RATE}/s from node3, failed {report['failed']}, "
        f"errors {report['errors']}, status {report['status']}; p50 {report['latency_ms']['p50']} ms, "
        f"p99 {report['latency_ms']['p99']} ms, max {report['latency_ms']['max']} ms; worst second "
        f"{worst['second']} (p99 {worst['p99_ms']} ms); docker stop of node2 took {stopped - stop:.1f}s; "
        f"node2 Down after {(down_at or stop) - stop:.1f}s; its task running elsewhere after "
        f"{moved_at - stop:.1f}s; backends per second: "
        + " ".join(f"{row['second']}:{len(row['backends'])}" for row in timeline)
    )
    assert report["failed"] == 0, f"GETs failed while a node stopped: {report['errors']} {report['status']}"
    assert len(before) == 3
    gone = before - {bid for row in timeline[stop_s + 5 :] for bid in row["backends"]}
    assert len(gone) == 1, f"exactly node2's backend left the traffic: {gone}"
    assert late and all(len(row["backends"]) == 3 for row in late), "the moved task serves again"
    assert node2_ids, "node2 had a backend task before it stopped"
