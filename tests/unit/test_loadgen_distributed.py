"""Distributed runs end to end on localhost: a coordinator and worker processes against a real server.

The server (tests/unit/loadgen_server.py) counts what it was sent and which connections it saw,
so the shares (connections in closed loop, requests in open loop, remainders included) and the
merged totals are checked against what actually arrived, not against the coordinator's own view.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .loadgen_server import ThreadedServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer() as srv:
        yield srv


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOADGEN_")}


class Fleet:
    """A coordinator process and its worker processes; everything killed at the end."""

    def __init__(self, tmp: Path, args: list[str], workers: int, worker_args: tuple[str, ...] = ()) -> None:
        self.json = tmp / "report.json"
        cmd = [sys.executable, "-m", "loadgen", "--coordinator", "127.0.0.1:0",
               "--expect-workers", str(workers), *args, "--json", str(self.json)]  # fmt: skip
        self.coordinator = subprocess.Popen(
            cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.coordinator.stderr is not None
        self.err_lines = [self.coordinator.stderr.readline()]
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.err_lines[0])
        assert match, self.err_lines
        self.port = int(match.group(1))
        self.workers = [self.worker(worker_args) for _ in range(workers)]

    def worker(self, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "loadgen", "--worker", f"127.0.0.1:{self.port}", "-q", *extra]
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)

    def wait_line(self, pattern: str, timeout: float = 60) -> str:
        """Read the coordinator's stderr until a line matches (the live line, a join, a loss)."""
        assert self.coordinator.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.coordinator.stderr.readline()
            self.err_lines.append(line)
            if re.search(pattern, line):
                return line
            if not line:
                break
        raise AssertionError(f"no line matching {pattern!r}: {self.err_lines}")

    def finish(self, timeout: float = 90) -> tuple[int, str, str]:
        out, err = self.coordinator.communicate(timeout=timeout)
        for w in self.workers:
            w.wait(timeout)
        return self.coordinator.returncode, out, "".join(self.err_lines) + err

    def report(self) -> dict[str, Any]:
        return json.loads(self.json.read_text())

    def close(self) -> None:
        for p in (self.coordinator, *self.workers):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_closed_loop_connections_are_shared_with_remainders_and_totals_match_the_server(
    server: ThreadedServer, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path, [server.url, "-c", "10", "-d", "1.5"], workers=3)
    try:
        rc, out, err = fleet.finish()
    finally:
        fleet.close()
    assert rc == 0, err
    assert all(w.returncode == 0 for w in fleet.workers)
    r = fleet.report()
    workers = r["distributed"]["workers"]
    assert [w["share"]["connections"] for w in workers] == [4, 3, 3]
    assert server.connections == 10, "each worker opened exactly its share of the connections"
    assert r["requests"] == r["responses"] == server.served > 0
    assert sum(w["requests"] for w in workers) == r["requests"]
    assert sum(r["backends"].values()) == server.served and set(r["backends"]) == {"a", "b"}
    assert re.search(r"^\[   1s\] .* req/s", err, re.M), "the coordinator prints the merged live line"
    assert "## Workers (distributed, protocol 1)" in out


def test_open_loop_requests_are_shared_with_remainders(server: ThreadedServer, tmp_path: Path) -> None:
    """100 requests due in 1 s over 3 workers: the global schedule's k mod 3 gives 34, 33, 33."""
    fleet = Fleet(tmp_path, [server.url, "--rate", "100", "-d", "1"], workers=3)
    try:
        rc, _, err = fleet.finish()
    finally:
        fleet.close()
    assert rc == 0, err
    r = fleet.report()
    assert [w["requests"] for w in r["distributed"]["workers"]] == [34, 33, 33]
    assert r["requests"] == server.served == 100
    assert r["rate_check"]["intended"] == 100 and r["rate_check"]["kept_up"], r["rate_check"]


def test_scenario_text_goes_over_the_wire_and_per_request_kinds_merge(
    server: ThreadedServer, tmp_path: Path
) -> None:
    scenario = tmp_path / "mix.yaml"
    scenario.write_text(
        "mode: concurrency\nstages:\n  - {kind: hold, duration: 1.5, target: 4}\n"
        "mix:\n  - {weight: 3, method: GET, path: /}\n"
        "  - {weight: 1, method: POST, path: /echo, body_size: 10}\n"
    )
    fleet = Fleet(tmp_path, [server.url, "--scenario", str(scenario)], workers=2)
    scenario.unlink()  # validated by the coordinator; the workers get its text, not its path
    try:
        rc, _, err = fleet.finish()
    finally:
        fleet.close()
    assert rc == 0, err
    r = fleet.report()
    kinds = r["by_request"]
    assert kinds["GET /"]["requests"] == server.seen[("GET", "/", 0)] > 0
    assert kinds["POST /echo"]["requests"] == server.seen[("POST", "/echo", 10)] > 0
    assert (
        sum(e["by_request"]["POST /echo"]["requests"] for e in r["timeline"])
        == kinds["POST /echo"]["requests"]
    )


def test_a_worker_killed_mid_run_is_reported_and_the_others_go_on(
    server: ThreadedServer, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path, [server.url, "-c", "2", "-d", "4"], workers=2)
    try:
        fleet.wait_line(r"^\[   1s\]")
        os.kill(fleet.workers[1].pid, signal.SIGKILL)
        lost_line = fleet.wait_line(r"LOST at")
        live_line = fleet.wait_line(r"^\[   \d+s\]")
        rc, out, err = fleet.finish()
    finally:
        fleet.close()
    assert rc == 0, err
    assert "going on with 1 of 2" in lost_line
    assert re.search(r"LOST 1/2 workers \(w\d@", live_line), "the live line says so from then on"
    r = fleet.report()
    (lost,) = [w for w in r["distributed"]["workers"] if w["status"] == "lost"]
    (done,) = [w for w in r["distributed"]["workers"] if w["status"] == "done"]
    assert lost["reason"] == "connection closed" and 0 < lost["lost_at_s"] < 4
    assert lost["seconds_missed"] and lost["seconds_missed"][-1] == 3
    assert lost["requests"] > 0, "what it streamed before dying is kept"
    assert r["requests"] == done["requests"] + lost["requests"]
    assert r["requests"] <= server.served, "requests in flight at the kill are not counted"
    marked = [e["second"] for e in r["timeline"] if lost["name"] in e["workers_incomplete"]]
    assert marked and marked[-1] == 3
    assert "**LOST**" in out and "warning: workers lost during the run" in err


def test_a_worker_that_loses_its_coordinator_stops_and_exits_1(
    server: ThreadedServer, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path, [server.url, "-c", "1", "-d", "30"], workers=1)
    try:
        fleet.wait_line(r"^\[   1s\]")
        fleet.coordinator.kill()
        _, err = fleet.workers[0].communicate(timeout=60)
    finally:
        fleet.close()
    assert fleet.workers[0].returncode == 1
    assert err.strip().splitlines()[-1].startswith("loadgen: error: lost the coordinator 127.0.0.1:")


def test_workers_that_cannot_keep_their_share_say_so(server: ThreadedServer, tmp_path: Path) -> None:
    """One connection each cannot carry 20,000 req/s: BEHIND in the live line, failed rate checks."""
    fleet = Fleet(tmp_path, [server.url, "--rate", "40000", "--connections", "2", "-d", "2"], workers=2,
                  worker_args=("--no-live",))  # fmt: skip
    fleet.wait_line(r"joined: 2 of 2")
    own = fleet.worker()  # a third one is refused: the run has its two
    try:
        rc, out, err = fleet.finish()
        _, own_err = own.communicate(timeout=60)
    finally:
        fleet.close()
        if own.poll() is None:
            own.kill()
    assert rc == 0, err
    assert own.returncode == 2 and "rejected this worker: the run already has its 2 workers" in own_err
    assert re.search(r"^\[   \ds\] .*BEHIND: intended", err, re.M), err
    r = fleet.report()
    assert not r["rate_check"]["kept_up"] and "waited for a free connection" in r["rate_check"]["reason"]
    for w in r["distributed"]["workers"]:
        assert w["share"]["connections"] == 1 and not w["rate_check"]["kept_up"], w["rate_check"]
    assert "**BEHIND**" in out


def test_a_silent_worker_is_lost_after_the_heartbeat_timeout(server: ThreadedServer, tmp_path: Path) -> None:
    """A frozen worker (SIGSTOP: a hung host, a partition) closes nothing; its silence gives it away."""
    fleet = Fleet(tmp_path, [server.url, "-c", "2", "-d", "7"], workers=2)
    frozen = fleet.workers[1]
    try:
        fleet.wait_line(r"^\[   1s\]")
        os.kill(frozen.pid, signal.SIGSTOP)
        lost_line = fleet.wait_line(r"LOST at")
        os.kill(frozen.pid, signal.SIGCONT)  # it wakes to a closed connection: stops, exits 1
        rc, _, err = fleet.finish()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen.pid, signal.SIGCONT)
        fleet.close()
    assert rc == 0, err
    assert frozen.returncode == 1
    assert "silent for 5 s; going on with 1 of 2" in lost_line
    r = fleet.report()
    (lost,) = [w for w in r["distributed"]["workers"] if w["status"] == "lost"]
    assert lost["reason"] == "silent for 5 s" and lost["seconds_missed"][-1] == 6
