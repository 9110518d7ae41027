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


def runner(containers: list[Any], admin_token: str | None = None, **kw: Any) -> ActionRunner:
    return ActionRunner(
        "lab", client=Listing(containers, **kw), rng=random.Random(1), admin_token=admin_token
    )


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


# -- sub-second grace periods and the admin token (docs/security.md) --------------------------------


class Clock:
    """A fake monotonic clock that advances only when the runner sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def stubborn(number: int, exits_after: float | None, clock: Clock, stop_signal: str | None = None) -> Any:
    """A running replica that exits ``exits_after`` seconds after its stop signal (None: never)."""
    c = box(number)
    c.attrs = {"Config": {"StopSignal": stop_signal} if stop_signal else {}}
    signalled: list[float] = []

    def kill(signal: str = "SIGKILL") -> None:
        c.calls.append(f"kill {signal}")
        if signal == "SIGKILL":
            c.status = "exited"
        elif not signalled:
            signalled.append(clock.now)

    def reload() -> None:
        if signalled and exits_after is not None and clock.now - signalled[0] >= exits_after:
            c.status = "exited"

    c.kill, c.reload = kill, reload
    return c


def timed_runner(containers: list[Any], clock: Clock) -> ActionRunner:
    return ActionRunner("lab", client=Listing(containers), clock=clock, sleep=clock.sleep)


def test_a_sub_second_stop_grace_is_kept_not_truncated_to_an_immediate_sigkill() -> None:
    clock = Clock()
    polite = stubborn(1, exits_after=0.2, clock=clock, stop_signal="SIGINT")
    stuck = stubborn(2, exits_after=None, clock=clock)
    r = timed_runner([polite, stuck], clock)
    assert r.run(Action(1.0, "stop", "backend:1", {"timeout": 0.5}))["ok"]
    assert polite.calls == ["kill SIGINT"], "its own stop signal, and no SIGKILL: it exited in time"
    start = clock.now
    assert r.run(Action(1.0, "stop", "backend:2", {"timeout": 0.5}))["ok"]
    assert stuck.calls == ["kill SIGTERM", "kill SIGKILL"]
    assert clock.now - start == pytest.approx(0.5), "SIGKILL only when the half second was over"
    assert max(clock.slept) <= 0.05


def test_whole_second_graces_still_use_the_engines_stop_and_restart() -> None:
    c = box(1)
    seen: list[Any] = []
    c.stop = lambda timeout: seen.append(("stop", timeout))
    c.restart = lambda timeout: seen.append(("restart", timeout))
    r = runner([c])
    assert r.run(Action(1.0, "stop", "backend:1", {"timeout": 2.0}))["ok"]
    assert r.run(Action(1.0, "restart", "backend:1", {"timeout": 0.0}))["ok"]
    assert seen == [("stop", 2), ("restart", 0)]


def test_a_sub_second_restart_stops_with_grace_then_starts() -> None:
    clock = Clock()
    c = stubborn(1, exits_after=None, clock=clock)
    r = timed_runner([c], clock)
    assert r.run(Action(1.0, "restart", "backend:1", {"timeout": 0.25}))["ok"]
    assert c.calls == ["kill SIGTERM", "kill SIGKILL", "start"]


class AdminStub:
    """An HTTP server standing in for the proxy's admin port: records each PUT's Authorization."""

    def __init__(self, status: int = 200) -> None:
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                seen.append((self.path, self.headers.get("Authorization"), body))
                doc = b'{"policy": "%s", "previous": "round_robin"}' % body
                self.send_response(status)
                self.send_header("Content-Length", str(len(doc)))
                self.end_headers()
                self.wfile.write(doc)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def proxy_box(port: int, env: list[str]) -> Any:
    c = box(1, service="proxy")
    c.attrs = {
        "Config": {"Env": env},
        "NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}},
    }
    c.reload = lambda: None
    return c


def test_policy_action_sends_the_admin_token_from_its_env_or_the_proxys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub = AdminStub()
    try:
        monkeypatch.delenv("PROXY_ADMIN_TOKEN", raising=False)
        action = Action(1.0, "policy", "proxy", {"policy": "p2c"})
        container = proxy_box(stub.port, ["PATH=/bin", "PROXY_ADMIN_TOKEN=from-the-container"])
        assert runner([container]).run(action)["ok"]
        monkeypatch.setenv("PROXY_ADMIN_TOKEN", "from-my-env-123")
        assert runner([container]).run(action)["ok"]
        assert runner([proxy_box(stub.port, [])], admin_token="").run(action)["ok"]
        assert stub.seen == [
            ("/policy", "Bearer from-the-container", b"p2c"),
            ("/policy", "Bearer from-my-env-123", b"p2c"),
            ("/policy", None, b"p2c"),
        ]
    finally:
        stub.close()


def test_a_refused_policy_action_reports_the_status() -> None:
    stub = AdminStub(status=403)
    try:
        result = runner([proxy_box(stub.port, [])], admin_token="").run(
            Action(1.0, "policy", "proxy", {"policy": "p2c"})
        )
        assert not result["ok"] and ": 403 " in result["detail"]
    finally:
        stub.close()
