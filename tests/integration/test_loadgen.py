"""The load generator's container against the lab: its reports agree with what the backends saw."""

from __future__ import annotations

import json
import math
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from .conftest import REPO, Lab


def test_default_experiment_report_matches_backend_counts(lab3: Lab) -> None:
    """`docker compose up` runs loadgen once: it exits 0, the stack stays up, totals add up."""
    before = lab3.backend_stats()
    lab3.run("up", "-d", "--no-deps", "loadgen")
    (container,) = lab3.containers("loadgen", all=True)
    exit_status = container.wait(timeout=120)
    logs = container.logs().decode()
    assert exit_status["StatusCode"] == 0, logs
    after = lab3.backend_stats()

    (run_dir,) = [p for p in lab3.results_dir.iterdir() if p.is_dir()]
    report = json.loads((run_dir / "report.json").read_text())
    summary = (run_dir / "summary.md").read_text()
    assert report["url"] == "http://proxy:8000/"
    assert report["failed"] == 0 and report["responses"] > 100
    counted = {backend: after[backend] - before.get(backend, 0) for backend in after}
    assert sum(counted.values()) == report["responses"] == report["status"]["200"]
    assert report["backends"] == counted
    assert str(report["responses"]) in summary and "p99" in summary
    assert "p99" in logs, "the summary table is printed to the container's output"
    # Proxy and backends keep running after the one-shot experiment.
    assert all(c.status == "running" for c in lab3.containers("proxy") + lab3.containers("backend"))
    container.remove()


def test_stopping_a_backend_under_load_fails_no_get_after_the_first_second(lab3: Lab, tmp_path: Path) -> None:
    cmd = [
        *lab3.compose.docker_compose_command(),
        "run", "--rm", "--no-deps", "-v", f"{tmp_path}:/out", "loadgen",
        "http://proxy:8000/", "--concurrency", "10", "--duration", "6",
        "--json", "/out/report.json", "--quiet",
    ]  # fmt: skip
    run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        report_path = tmp_path / "report.json"
        deadline = time.monotonic() + 60
        victim = lab3.containers("backend")[0]
        victim_id = victim.attrs["Config"]["Hostname"]
        # Let the run get going (the container takes a moment to start), then stop a replica.
        while time.monotonic() < deadline and not _running(lab3):
            time.sleep(0.2)
        time.sleep(2.5)
        stopped_at = datetime.now(UTC)
        victim.stop(timeout=5)
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output
    report = json.loads(report_path.read_text())
    started = datetime.fromisoformat(report["started_at"])
    stop_second = math.floor((stopped_at - started).total_seconds())
    assert 0 <= stop_second < 6, f"the stop fell outside the run: {stop_second}"
    late_failures = {
        entry["second"]: entry["failed"]
        for entry in report["timeline"]
        if entry["failed"] and entry["second"] not in (stop_second, stop_second + 1)
    }
    assert late_failures == {}, f"failed GETs outside the first second after the stop: {late_failures}"
    assert report["responses"] > 500
    before = [e for e in report["timeline"] if e["second"] < stop_second]
    after = [e for e in report["timeline"] if e["second"] >= stop_second + 2]
    assert any(victim_id in e["backends"] for e in before), "the victim served traffic before the stop"
    assert after and not any(victim_id in e["backends"] for e in after), "a stopped replica got traffic"


def _running(lab: Lab) -> bool:
    return any(c.status == "running" for c in lab.containers("loadgen"))
