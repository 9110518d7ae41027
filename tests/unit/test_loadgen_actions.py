"""Action logic that needs no engine: scale plans, replica selection, project detection, no raising.

What the actions do to real containers is tested against the real lab in
tests/integration/test_scenarios.py; here a few plain objects stand in for the containers a
Docker client lists, so the decisions (which replica, which to remove, what to report) are
checked on their own.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from loadgen.actions import ActionError, ActionRunner, detect_project, plan_scale
from loadgen.scenario import Action

REPO = Path(__file__).resolve().parents[2]


def box(number: int, status: str = "running", service: str = "backend") -> SimpleNamespace:
    c = SimpleNamespace(
        name=f"lab-{service}-{number}",
        status=status,
        labels={
            "com.docker.compose.project": "lab",
            "com.docker.compose.service": service,
            "com.docker.compose.container-number": str(number),
        },
        calls=[],
    )
    for verb in ("stop", "kill", "pause", "unpause", "restart", "start", "remove"):
        setattr(c, verb, lambda *a, _verb=verb, _c=c, **kw: _c.calls.append(_verb))
    return c


class Listing:
    """The part of a DockerClient that ActionRunner's selection uses: containers.list by label."""

    def __init__(self, containers: list[Any], fail: Exception | None = None) -> None:
        self.all = containers
        self.fail = fail
        self.containers = self

    def list(self, all: bool = False, filters: dict | None = None) -> list[Any]:
        if self.fail is not None:
            raise self.fail
        wanted = set((filters or {}).get("label", []))
        out = []
        for c in self.all:
            labels = {f"{k}={v}" for k, v in c.labels.items()}
            if wanted <= labels and (all or c.status == "running"):
                out.append(c)
        return out


def numbers(containers: list[Any]) -> list[int]:
    return [int(c.labels["com.docker.compose.container-number"]) for c in containers]


def test_scale_out_starts_stopped_replicas_before_creating_new_numbers() -> None:
    cs = [box(1, "exited"), box(2), box(3)]
    plan = plan_scale(cs, 5)
    assert numbers(plan.start) == [1] and plan.remove == [] and plan.create == [4, 5]


def test_scale_in_keeps_running_low_numbers_and_removes_the_rest_highest_first() -> None:
    cs = [box(1, "exited"), box(2), box(3), box(4, "paused"), box(5)]
    plan = plan_scale(cs, 2)
    # Running/paused first, lowest numbers first: keep 2 and 3; the dead 1 goes as well.
    assert numbers(plan.remove) == [5, 4, 1] and plan.start == [] and plan.create == []
    assert plan_scale(cs, 0).create == [] and len(plan_scale(cs, 0).remove) == 5


def test_new_numbers_follow_the_highest_in_use_even_with_gaps() -> None:
    assert plan_scale([box(2), box(7)], 4).create == [8, 9]


def runner(containers: list[Any], **kw: Any) -> ActionRunner:
    return ActionRunner("lab", client=Listing(containers, **kw), rng=random.Random(1))


def test_replica_selection_by_number_random_and_all() -> None:
    cs = [box(1), box(2, "paused"), box(3), box(1, service="proxy")]
    r = runner(cs)
    result = r.run(Action(1.0, "kill", "backend:3"))
    assert (
        result["ok"] and cs[2].calls == ["kill"] and result["detail"].startswith("killed (SIGKILL) backend:3")
    )
    assert set(result) == {"kind", "target", "ok", "detail"}
    # random picks only among replicas the action applies to: unpause -> the paused one.
    assert r.run(Action(1.0, "unpause", "backend:random"))["ok"] and cs[1].calls == ["unpause"]
    result = r.run(Action(1.0, "restart", "proxy"))
    assert result["ok"] and cs[3].calls == ["restart"] and cs[0].calls == []


def test_selection_failures_are_results_not_exceptions() -> None:
    r = runner([box(1), box(2, "exited")])
    missing = r.run(Action(1.0, "kill", "backend:9"))
    assert (
        not missing["ok"] and "no container backend:9 in project 'lab' (replicas: 1, 2)" in missing["detail"]
    )
    dead = r.run(Action(1.0, "kill", "backend:2"))
    assert not dead["ok"] and "backend:2 (lab-backend-2) is exited, not running" in dead["detail"]
    none = r.run(Action(1.0, "stop", "cache"))
    assert not none["ok"] and "no container of service 'cache'" in none["detail"]


def test_engine_errors_during_a_run_become_ok_false() -> None:
    r = runner([], fail=ConnectionError("socket closed"))
    result = r.run(Action(2.0, "scale", "backend", {"replicas": 3}))
    assert result["ok"] is False and result["detail"].startswith("ConnectionError: socket closed")


def test_check_names_a_service_missing_from_the_project() -> None:
    r = runner([box(1)])
    r.check([Action(1.0, "kill", "backend:7")])  # numbers are not checked: a scale may create it
    with pytest.raises(
        ActionError, match=r"kill at 1 s: no container of service 'proxy' in Compose project 'lab'"
    ):
        r.check([Action(1.0, "kill", "proxy")])


def test_project_from_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "from-env")
    assert detect_project(Listing([])) == "from-env"


def test_no_project_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)

    class NoSuchContainer:
        containers = SimpleNamespace(get=lambda name: (_ for _ in ()).throw(LookupError(name)))

    with pytest.raises(ActionError, match="set COMPOSE_PROJECT_NAME"):
        detect_project(NoSuchContainer())


def test_no_engine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ActionError, match=r"^scenario actions need the Docker engine, which did not answer"):
        ActionRunner("lab")


def test_cli_exits_2_before_sending_when_actions_cannot_reach_docker(tmp_path: Path) -> None:
    scenario = tmp_path / "kill.yaml"
    scenario.write_text(
        "stages:\n  - {kind: hold, duration: 5, target: 10}\n"
        "actions:\n  - {at: 1, kind: kill, target: 'backend:1'}\n"
    )
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock", "COMPOSE_PROJECT_NAME": "lab"}
    result = subprocess.run(
        [sys.executable, "-m", "loadgen", "http://127.0.0.1:9/", "--scenario", str(scenario)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("loadgen: error: scenario actions need the Docker engine, which did not answer")
