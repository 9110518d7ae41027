"""Scenarios against a real lab: timed actions on real containers, and the report and plots of a run.

The load generator runs on the host (``python -m loadgen`` against the published proxy port, as a
user of the lab would run it outside Compose), with ``COMPOSE_PROJECT_NAME`` naming this test's own
project so that its actions reach these containers and no one else's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import matplotlib.image
import pytest
import yaml

from loadgen.actions import ActionRunner
from loadgen.scenario import Action

from .conftest import REPO, Lab, own_lab

PLOTS = ("latency.png", "throughput.png", "backends.png", "spectrum.png")
KILL_AT_S = 3


@pytest.fixture(scope="module")
def scen_lab(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    # Its own project: these tests kill, clone and remove replicas and switch the proxy's policy.
    results = tmp_path_factory.mktemp("scen-results")  # the loadgen service's /results, not ./results
    # The policy action is an admin write: it sends this token (read from the proxy's container).
    env = {
        "PROXY_ACCESS_LOG": "false",
        "LOADGEN_RESULTS": str(results),
        "PROXY_ADMIN_TOKEN": "scen-token-123",
    }
    # docker-actions: the socket filter `docker compose run loadgen` sends its actions through.
    up = ("--scale", "backend=3", "proxy", "backend", "docker-actions")
    with own_lab(
        tmp_path_factory, "scen", env=env, up=up, build=("backend", "proxy", "docker-actions")
    ) as lab:
        lab.run("build", "loadgen", timeout=900)  # the container test runs this tree's loadgen
        yield lab


def restore(lab: Lab) -> None:
    lab.scale(3)  # starts a killed replica again, removes extra ones
    lab.wait_for_endpoints(3)


def up_backends(lab: Lab, *overrides: str) -> None:
    """(Re)create the 3 backend replicas with these Compose override files on top (none: as
    docker-compose.yml has them; Compose recreates a replica whose configuration changed)."""
    cmd = lab.compose.docker_compose_command()
    at = max(i for i, arg in enumerate(cmd) if arg == "-f") + 2
    for override in overrides:
        cmd[at:at] = ["-f", override]
    args = ["up", "-d", "--wait", "--no-deps", "--scale", "backend=3", "backend"]
    done = subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lab.wait_for_endpoints(3)


def run_scenario(lab: Lab, scenario: Path, results: Path) -> dict:
    """``python -m loadgen`` on the host against this lab, its actions on this lab's project."""
    env = {**os.environ, "COMPOSE_PROJECT_NAME": lab.project}
    run = subprocess.run(
        [sys.executable, "-m", "loadgen", lab.base_url + "/", "--scenario", str(scenario),
         "--results-dir", str(results), "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    (run_dir,) = results.iterdir()
    return json.loads((run_dir / "report.json").read_text())


def coloured_share(path: Path) -> float:
    rgb = matplotlib.image.imread(path)[..., :3]
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.25).mean())


def test_killing_a_replica_mid_run_lines_up_in_the_report_and_plots(scen_lab: Lab, tmp_path: Path) -> None:
    restore(scen_lab)
    victim = scen_lab.containers("backend")[0]
    number = victim.labels["com.docker.compose.container-number"]
    victim_id = victim.attrs["Config"]["Hostname"]  # what X-Backend-Id says
    scenario = tmp_path / "kill.yaml"
    scenario.write_text(
        "name: kill-short\nmode: rate\n"
        "stages:\n  - {kind: hold, duration: 8, target: 200}\n"
        f'actions:\n  - {{at: {KILL_AT_S}, kind: kill, target: "backend:{number}"}}\n'
    )
    try:
        report = run_scenario(scen_lab, scenario, tmp_path / "results")
        victim.reload()
        assert victim.status == "exited", "the action really killed the container"
    finally:
        restore(scen_lab)

    (run_dir,) = (tmp_path / "results").iterdir()
    (action,) = report["actions"]
    assert (action["kind"], action["target"], action["ok"]) == ("kill", f"backend:{number}", True), action
    assert KILL_AT_S <= action["at_s"] < KILL_AT_S + 0.5, "recorded when it happened, on the run's clock"
    kill_second = int(action["at_s"])

    timeline = {e["second"]: e for e in report["timeline"]}
    assert sorted(timeline) == list(range(8)) and report["responses"] > 1400
    # Errors, if any (the proxy retries a failed GET on another replica, so usually there are
    # none), belong to the second of the kill or the one after: never before, never later.
    failed = {s: e["failed"] for s, e in timeline.items() if e["failed"]}
    assert set(failed) <= {kill_second, kill_second + 1}, f"failures away from the kill: {failed}"
    # What lines up with the action in any case: the victim's share of each second.
    share = {
        s: e["backends"].get(victim_id, 0) / max(1, sum(e["backends"].values())) for s, e in timeline.items()
    }
    assert all(share[s] > 0.2 for s in range(kill_second)), f"the victim served its third before: {share}"
    assert all(share[s] == 0 for s in range(kill_second + 1, 8)), f"the victim served after its kill: {share}"

    for name in PLOTS:
        path = run_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert coloured_share(path) > 0.003, f"{name} has no data drawn"
    assert (run_dir / "summary.md").exists()


def test_scale_action_clones_replicas_that_the_proxy_and_compose_use(scen_lab: Lab) -> None:
    restore(scen_lab)
    runner = ActionRunner(scen_lab.project)
    try:
        result = runner.run(Action(0.0, "scale", "backend", {"replicas": 5}))
        assert result["ok"], result
        assert "created backend:4" in result["detail"] and "created backend:5" in result["detail"]
        scen_lab.wait_for_endpoints(5)  # the clones answer to the DNS name `backend`
        ids = {c.attrs["Config"]["Hostname"] for c in scen_lab.containers("backend")}
        # The clones serve once their app listens and the proxy's health checks pass (seconds).
        seen: set[str] = set()
        deadline = time.monotonic() + 40
        while seen != ids and time.monotonic() < deadline:
            seen.add(httpx.get(scen_lab.base_url + "/", timeout=5).headers["x-backend-id"])
        assert seen == ids and len(ids) == 5, f"every replica, clones included, serves: {seen} vs {ids}"
        listed = scen_lab.run("ps", "--format", "{{.Name}}", "backend").stdout.split()
        assert len(listed) == 5, f"compose sees the clones as its own replicas: {listed}"

        result = runner.run(Action(0.0, "scale", "backend", {"replicas": 2, "timeout": 2}))
        assert result["ok"] and result["detail"].count("removed") == 3, result
        scen_lab.wait_for_endpoints(2)
        assert len(scen_lab.containers("backend", all=True)) == 2
    finally:
        restore(scen_lab)


def test_policy_action_switches_the_proxy_through_its_admin_api(scen_lab: Lab) -> None:
    runner = ActionRunner(scen_lab.project)
    try:
        result = runner.run(Action(0.0, "policy", "proxy", {"policy": "least_request", "admin_port": 8080}))
        assert result["ok"], result
        assert httpx.get(scen_lab.admin_url + "/policy", timeout=5).json()["policy"] == "least_request"
        bad = runner.run(Action(0.0, "policy", "proxy", {"policy": "fastest", "admin_port": 8080}))
        assert not bad["ok"] and "400" in bad["detail"] and "unknown policy" in bad["detail"]
    finally:
        runner.run(Action(0.0, "policy", "proxy", {"policy": "round_robin", "admin_port": 8080}))


def test_the_compose_service_runs_a_scenario_and_acts_on_its_own_project(
    scen_lab: Lab, tmp_path: Path
) -> None:
    """`docker compose run loadgen --scenario ...`: actions through the docker-actions socket
    filter, and the project from the container's own labels.

    Pausing a replica freezes it without closing anything: requests sent to it wait for the
    unpause instead of failing, which the report shows as latency, not errors.
    """
    restore(scen_lab)
    victim = scen_lab.containers("backend")[0]
    number = victim.labels["com.docker.compose.container-number"]
    (tmp_path / "pause.yaml").write_text(
        "name: pause-short\nurl: http://proxy:8000/\nmode: rate\n"
        "stages:\n  - {kind: hold, duration: 6, target: 100}\n"
        f'actions:\n  - {{at: 2, kind: pause, target: "backend:{number}"}}\n'
        f'  - {{at: 4, kind: unpause, target: "backend:{number}"}}\n'
    )
    try:
        run = scen_lab.run(
            "run", "--rm", "--no-deps", "-v", f"{tmp_path}:/out", "loadgen",
            "--scenario", "/out/pause.yaml", "--json", "/out/report.json", "--quiet",
            timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        victim.reload()
        if victim.status == "paused":
            victim.unpause()
        restore(scen_lab)
    report = json.loads((tmp_path / "report.json").read_text())
    pause, unpause = report["actions"]
    assert (pause["kind"], pause["ok"], unpause["kind"], unpause["ok"]) == ("pause", True, "unpause", True), (
        report["actions"]
    )
    assert f"({victim.name})" in pause["detail"], (
        "acted on this project's container, found from its own labels"
    )
    assert 2 <= pause["at_s"] < 2.5 and 4 <= unpause["at_s"] < 4.5
    assert report["failed"] == 0, "a paused replica stalls requests, it does not fail them"
    assert report["latency_ms"]["max"] >= 1500, "requests sent to the paused replica waited for the unpause"


def test_post_heavy_kill_failures_are_posts_only(scen_lab: Lab, tmp_path: Path) -> None:
    """The shipped post-heavy-kill mix, shortened (8 s, kill at 3 s), with every replica 20 ms
    late (compose/delay-all.yml) so that requests are in flight on the victim when it dies.

    A POST that already reached the killed replica may have been applied, so the proxy must not
    replay it: it fails, and the report's ``by_request`` has to say it was a POST. GETs caught the
    same way are retried on another replica, so no GET fails. A run may catch no POST at all (the
    victim may have none in flight); the attribution must still add up.
    """
    shipped = yaml.safe_load((REPO / "loadgen/scenarios/post-heavy-kill.yaml").read_text())
    post, get = (f"{m['method']} {m['path']}" for m in shipped["mix"])
    assert (post, get) == ("POST /echo", "GET /")
    try:
        up_backends(scen_lab, "compose/delay-all.yml")
        victim = scen_lab.containers("backend")[0]
        number = victim.labels["com.docker.compose.container-number"]
        short = {
            **shipped,
            "name": "post-heavy-kill-short",
            "stages": [{"kind": "ramp", "duration": 1, "to": 300}, {"kind": "hold", "duration": 7}],
            "actions": [{"at": KILL_AT_S, "kind": "kill", "target": f"backend:{number}"}],
        }
        scenario = tmp_path / "post-heavy-kill-short.yaml"
        scenario.write_text(yaml.safe_dump(short))
        report = run_scenario(scen_lab, scenario, tmp_path / "results")
    finally:
        up_backends(scen_lab)  # without the delay again, and the victim back

    (action,) = report["actions"]
    assert action["ok"] and KILL_AT_S <= action["at_s"] < KILL_AT_S + 0.5, action
    kill_second = int(action["at_s"])
    by = report["by_request"]
    assert list(by) == [post, get]
    # Attribution adds up: for the run and for every second, the entries are the totals.
    for key in ("requests", "responses", "failed"):
        assert by[post][key] + by[get][key] == report[key], key
    assert by[post]["requests"] > 1200 and by[get]["requests"] > 500, "70 % / 30 % of ~2,250"
    assert abs(by[post]["requests"] / report["requests"] - 0.7) < 0.01, "the weighted order's share"
    for e in report["timeline"]:
        p, g = e["by_request"][post], e["by_request"][get]
        assert (p["requests"] + g["requests"], p["failed"] + g["failed"]) == (e["requests"], e["failed"]), e
    # Which requests failed: POSTs only, and only those in flight at the kill or sent just after
    # (filed under the second they were issued in: one issued 20 ms before the kill is in flight).
    assert by[get]["failed"] == 0, f"a GET failed: the proxy should have retried it: {by[get]}"
    failed_at = {e["second"]: e["by_request"][post]["failed"] for e in report["timeline"]}
    first = int(action["at_s"] - 0.1)
    late = {s: n for s, n in failed_at.items() if n and not first <= s <= kill_second + 2}
    assert not late, f"POST failures away from the kill at {action['at_s']} s: {late}"
    assert by[post]["failed"] == sum(failed_at.values()) == report["failed"]
    five = sum(n for code, n in by[post]["status"].items() if int(code) >= 500)
    assert by[post]["failed"] == five + sum(by[post]["errors"].values())
