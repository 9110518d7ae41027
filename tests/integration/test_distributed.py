"""The distributed load generator as Compose services: workers and a coordinator through the proxy.

Two ``loadgen-worker`` replicas (``--scale loadgen-worker=2``, profile ``distributed``) and the
``loadgen-coordinator`` service, run with ``docker compose run --use-aliases`` so the workers find
it by its service name and its report goes to a directory of the test. The backends' own /stats
say what really arrived.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from .conftest import REPO, Lab


def _workers_up(lab: Lab) -> None:
    lab.run(
        "--profile", "distributed", "up", "-d", "--no-deps", "--scale", "loadgen-worker=2", "loadgen-worker"
    )


def _coordinator_cmd(lab: Lab, out: Path, *args: str) -> list[str]:
    return [
        *lab.compose.docker_compose_command(), "--profile", "distributed",
        "run", "--rm", "--no-deps", "--use-aliases", "-T", "-v", f"{out}:/out",
        "-e", "LOADGEN_RESULTS_DIR=", "-e", "LOADGEN_JOIN_TIMEOUT=60",
        "loadgen-coordinator", "--expect-workers", "2", "http://proxy:8000/", *args,
        "--json", "/out/report.json",
    ]  # fmt: skip


def _worker_exits(lab: Lab) -> list[int]:
    codes = []
    for container in lab.containers("loadgen-worker", all=True):
        codes.append(container.wait(timeout=60)["StatusCode"])
        container.remove(force=True)
    return codes


def test_two_workers_merge_to_what_the_backends_counted(lab3: Lab, tmp_path: Path) -> None:
    before = lab3.backend_stats()
    _workers_up(lab3)
    run = subprocess.run(
        _coordinator_cmd(lab3, tmp_path, "-c", "10", "-d", "4"),
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert _worker_exits(lab3) == [0, 0]
    after = lab3.backend_stats()
    report: dict[str, Any] = json.loads((tmp_path / "report.json").read_text())
    workers = report["distributed"]["workers"]
    assert [w["status"] for w in workers] == ["done", "done"]
    assert sorted(w["share"]["connections"] for w in workers) == [5, 5]
    assert all(w["requests"] > 0 for w in workers), "both workers sent their share"
    assert sum(w["requests"] for w in workers) == report["requests"]
    counted = {b: after[b] - before.get(b, 0) for b in after}
    assert report["failed"] == 0
    assert sum(counted.values()) == report["responses"] == report["status"]["200"]
    assert report["backends"] == {b: n for b, n in counted.items() if n}
    assert "## Workers (distributed, protocol 1)" in run.stdout


def test_a_worker_killed_mid_run_shows_in_the_report(lab3: Lab, tmp_path: Path) -> None:
    _workers_up(lab3)
    proc = subprocess.Popen(
        _coordinator_cmd(lab3, tmp_path, "-c", "6", "-d", "6"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if line.startswith("[   2s]") or not line:
                break
        assert seen[-1].startswith("[   2s]"), "".join(seen)
        victim = lab3.containers("loadgen-worker")[0]
        victim.kill()
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(seen) + rest
    assert proc.returncode == 0, output
    codes = sorted(_worker_exits(lab3))
    assert codes[0] == 0 and codes[1] != 0, codes  # the survivor finished, the victim was killed
    report = json.loads((tmp_path / "report.json").read_text())
    (lost,) = [w for w in report["distributed"]["workers"] if w["status"] == "lost"]
    assert report["distributed"]["lost"] == [lost["name"]]
    assert 1.5 < lost["lost_at_s"] < 6 and lost["seconds_missed"][-1] == 5
    marked = [e["second"] for e in report["timeline"] if lost["name"] in e["workers_incomplete"]]
    assert marked and marked[-1] == 5
    assert "LOST 1/2 workers" in output and "**LOST**" in output
