"""The distributed load generator at the wire: a real coordinator process, workers played by the test.

The test speaks the protocol with plain sockets and ``json`` (not loadgen's own framing), sends
timelines it built with ``hdrh`` directly, and checks the coordinator's report against figures
worked out by hand, so the merge is checked against an independent expectation.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from loadgen.config import ConfigError, load_config
from loadgen.plan import make_plan
from loadgen.protocol import PROTOCOL_VERSION, ProtocolError, decode, encode, parse_address

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOADGEN_")}


class Coordinator:
    """``python -m loadgen --coordinator 127.0.0.1:0 ...`` as a process; ``port`` read from its stderr."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        self.json = tmp / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "loadgen",
            "--coordinator",
            "127.0.0.1:0",
            *args,
            "--json",
            str(self.json),
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stderr is not None
        self.first = self.proc.stderr.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.first)
        assert match, self.first
        self.port = int(match.group(1))

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, self.first + err

    def report(self) -> dict[str, Any]:
        return json.loads(self.json.read_text())


class FakeWorker:
    """A worker played by the test: raw JSON lines, a clock that may be off by ``offset_s``."""

    def __init__(self, port: int, *, protocol: int = PROTOCOL_VERSION, offset_s: float = 0.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.offset_s = offset_s
        self.send({"type": "hello", "protocol": protocol, "name": "fake", "pid": 1})

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def recv(self) -> dict[str, Any] | None:
        line = self.file.readline()
        return json.loads(line) if line else None

    def until_run(self) -> dict[str, Any]:
        """Answer the clock pings until ``run`` (or a reject/abort, returned as well)."""
        while True:
            msg = self.recv()
            assert msg is not None, "the coordinator closed the connection"
            if msg["type"] == "clock":
                self.send({"type": "clock", "t0": msg["t0"], "tw": time.time() + self.offset_s})
            elif msg["type"] in ("run", "reject", "abort"):
                return msg

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def join_all(*workers: FakeWorker) -> list[dict[str, Any]]:
    """Each worker answers its pings at once (the coordinator pings one while others wait)."""
    with ThreadPoolExecutor(len(workers)) as pool:
        return list(pool.map(FakeWorker.until_run, workers))


def _hist(*values: tuple[int, int]) -> str:
    """An HDR encoding made with hdrh itself: (microseconds, count) pairs."""
    h = HdrHistogram(1, 60_000_000, 3)
    for us, n in values:
        h.record_value(us, n)
    return h.encode().decode()


def _second(second: int, requests: int, status: dict[str, int], backends: dict[str, int], hist: str) -> dict:
    failed = sum(n for code, n in status.items() if int(code) >= 500)
    return {
        "second": second, "intended": 0, "unsent": 0, "waited": 0, "lag_max": 0.0,
        "requests": requests, "failed": failed, "status": status, "errors": {}, "backends": backends,
        "hist_c": hist, "hist_u": hist,
    }  # fmt: skip


def _done(*seconds: dict) -> dict[str, Any]:
    export = {"open_loop": False, "seconds": list(seconds)}
    return {"type": "done", "export": export, "elapsed_s": 1.0, "stopped_early": False, "stats": {}}


# --- the protocol's pieces --------------------------------------------------------------------


def test_messages_are_json_lines_with_a_type() -> None:
    line = encode({"type": "tick", "second": 3})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line.rstrip(b"\n")) == {"type": "tick", "second": 3}
    for bad in (b"GET / HTTP/1.1", b"[1, 2]", b'{"second": 3}'):
        with pytest.raises(ProtocolError):
            decode(bad)


def test_addresses() -> None:
    assert parse_address("7000", "0.0.0.0", "--coordinator") == ("0.0.0.0", 7000)
    assert parse_address("10.0.0.5:7100", "0.0.0.0", "--coordinator") == ("10.0.0.5", 7100)
    assert parse_address("loadgen-coordinator", None, "--worker") == ("loadgen-coordinator", 7000)
    assert parse_address("[::1]:7001", None, "--worker") == ("::1", 7001)
    for bad in ("host:x", ":7000", "host:70000"):
        with pytest.raises(ValueError, match="--worker"):
            parse_address(bad, None, "--worker")


def test_flags_and_their_environment_equivalents() -> None:
    c = load_config(["http://h/", "--coordinator", "7001", "--expect-workers", "3"], {})
    assert (c.coordinator, c.expect_workers) == (("0.0.0.0", 7001), 3)
    env = {"LOADGEN_COORDINATOR": "127.0.0.1:7002", "LOADGEN_EXPECT_WORKERS": "2", "LOADGEN_URL": "http://h/"}
    c = load_config([], env)
    assert (c.coordinator, c.expect_workers, c.join_timeout_s) == (("127.0.0.1", 7002), 2, 60.0)
    w = load_config([], {"LOADGEN_WORKER": "coord", "LOADGEN_JOIN_TIMEOUT": "5", "LOADGEN_URL": "http://h/"})
    assert (w.worker_of, w.join_timeout_s, w.url) == (("coord", 7000), 5.0, None)
    for argv, message in (
        (["http://h/", "--coordinator", "7001"], "needs --expect-workers"),
        (["http://h/", "--expect-workers", "2"], "needs --coordinator"),
        (["http://h/", "--coordinator", "7001", "--expect-workers", "2", "--workers", "2"], "--workers"),
        (["http://h/", "--worker", "coord"], "URL conflicts with --worker"),
        (["--worker", "coord", "--rate", "10"], "--rate conflicts with --worker"),
        (["--worker", "coord:x"], "bad port"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(argv, {})


def test_shares_of_connections_and_rate_give_remainders_to_the_first_workers() -> None:
    from loadgen.coordinator import shares

    closed = make_plan(load_config(["http://h/", "-c", "10"], {}))
    assert [s["connections"] for s in shares(closed, 3)] == [4, 3, 3]
    opened = make_plan(load_config(["http://h/", "--rate", "900", "--connections", "65"], {}))
    got = shares(opened, 2)
    assert [s["connections"] for s in got] == [33, 32]
    assert [s["rate"] for s in got] == [450.0, 450.0]


# --- a coordinator process and workers played by the test --------------------------------------


@pytest.fixture
def closed_loop(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(["http://127.0.0.1:9/", "-c", "4", "-d", "1", "--expect-workers", "2"], tmp_path)
    yield c
    if c.proc.poll() is None:
        c.proc.kill()
        c.proc.wait()


def test_merge_is_exact_not_an_average_of_percentiles(closed_loop: Coordinator) -> None:
    """900 requests of 100 us on one worker, 100 of 1000 us (10 of them 503) on the other.

    By hand: 1000 samples; the 500th and the 900th are 100 us, the 990th is 1000 us; mean
    (900 x 100 + 100 x 1000) / 1000 = 190 us. Averaging the workers' p50s would say 550 us.
    """
    a, b = FakeWorker(closed_loop.port), FakeWorker(closed_loop.port)
    runs = join_all(a, b)
    assert sorted(r["index"] for r in runs) == [0, 1] and {r["count"] for r in runs} == {2}
    assert runs[0]["config"]["url"] == "http://127.0.0.1:9/" and runs[0]["config"]["concurrency"] == 4
    a.send(_done(_second(0, 900, {"200": 900}, {"x": 900}, _hist((100, 900)))))
    b.send(_done(_second(0, 100, {"200": 90, "503": 10}, {"y": 100}, _hist((1000, 100)))))
    rc, out, err = closed_loop.finish()
    assert rc == 0, err
    r = closed_loop.report()
    assert (r["requests"], r["responses"], r["failed"], r["workers"]) == (1000, 1000, 10, 2)
    assert r["status"] == {"200": 990, "503": 10}
    assert r["backends"] == {"x": 900, "y": 100}
    lat = r["latency_ms"]
    assert (lat["p50"], lat["p90"], lat["p99"], lat["max"], lat["mean"]) == (0.1, 0.1, 1.0, 1.0, 0.19)
    assert r["timeline"][0]["p50_ms"] == 0.1 and r["timeline"][0]["requests"] == 1000
    workers = {w["requests"]: w for w in r["distributed"]["workers"]}
    assert workers[900]["latency_ms"]["p50"] == 0.1 and workers[100]["latency_ms"]["p50"] == 1.0
    assert all(w["status"] == "done" and w["seconds_missed"] == [] for w in workers.values())
    assert "## Workers (distributed, protocol 1)" in out
    a.close()
    b.close()


def test_one_start_time_for_all_in_each_workers_own_clock(closed_loop: Coordinator) -> None:
    before = time.time()
    a, b = FakeWorker(closed_loop.port), FakeWorker(closed_loop.port, offset_s=100.0)
    run_a, run_b = join_all(a, b)
    assert before < run_a["start_wall"] < time.time() + 5, "second 0 is a moment ahead, for all"
    assert run_b["start_wall"] - run_a["start_wall"] == pytest.approx(100.0, abs=0.5)
    offsets = []
    for w in (a, b):
        w.send(_done(_second(0, 1, {"200": 1}, {}, _hist((100, 1)))))
    rc, _, err = closed_loop.finish()
    assert rc == 0, err
    offsets = sorted(w["clock_offset_ms"] for w in closed_loop.report()["distributed"]["workers"])
    assert offsets[0] == pytest.approx(0, abs=500) and offsets[1] == pytest.approx(100_000, abs=500)
    a.close()
    b.close()


def test_a_worker_lost_mid_run_is_marked_and_the_run_goes_on(tmp_path: Path) -> None:
    c = Coordinator(["http://127.0.0.1:9/", "-c", "2", "-d", "3", "--expect-workers", "2"], tmp_path)
    a, b = FakeWorker(c.port), FakeWorker(c.port)
    _, run_b = join_all(a, b)
    one = _second(0, 10, {"200": 10}, {"x": 10}, _hist((200, 10)))
    record = {"second": 0, "settled": True, "entry": one, "by_request": {}}
    snap = {
        "second": 1,
        "index": run_b["index"],
        "completed": 10,
        "errors": 0,
        "prev_hist": "",
        "prev_backends": {},
    }
    time.sleep(max(0.0, run_b["start_wall"] + 1.0 - time.time()))  # its tick 1, on time
    b.send({"type": "tick", "second": 1, "snap": snap, "records": [record]})
    time.sleep(0.3)
    b.close()  # gone after its first tick: seconds 1 and 2 never arrive
    seconds = [_second(s, 5, {"200": 5}, {"x": 5}, _hist((300, 5))) for s in range(3)]
    a.send(_done(*seconds))
    rc, out, err = c.finish()
    assert rc == 0, err
    assert re.search(r"LOST at \d+\.\d s: connection closed; going on with 1 of 2", err), err
    assert "warning: workers lost during the run" in err
    r = c.report()
    (lost,) = [w for w in r["distributed"]["workers"] if w["status"] == "lost"]
    assert lost["seconds_missed"] == [1, 2] and lost["seconds_partial"] == [] and lost["requests"] == 10
    assert r["distributed"]["lost"] == [lost["name"]]
    assert r["requests"] == 10 + 15
    assert [e["workers_incomplete"] for e in r["timeline"]] == [[], [lost["name"]], [lost["name"]]]
    assert "**LOST**" in out
    a.close()


def test_a_worker_of_another_protocol_version_is_rejected(tmp_path: Path) -> None:
    c = Coordinator(
        ["http://127.0.0.1:9/", "-d", "1", "--expect-workers", "1", "--join-timeout", "1.5"], tmp_path
    )
    w = FakeWorker(c.port, protocol=PROTOCOL_VERSION + 1)
    msg = w.recv()
    assert msg is not None and msg["type"] == "reject" and msg["protocol"] == PROTOCOL_VERSION
    assert f"protocol version {PROTOCOL_VERSION + 1}" in msg["reason"]
    assert w.recv() is None, "the coordinator closes after a reject"
    rc, out, err = c.finish()
    assert rc == 2 and out == "" and not c.json.exists()
    last = err.strip().splitlines()[-1]
    assert last.startswith("loadgen: error: only 0 of 1 workers joined within 1.5 s (1 rejected:"), err
    w.close()


def test_the_worker_refuses_a_coordinator_of_another_version() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        cmd = [sys.executable, "-m", "loadgen", "--worker", f"127.0.0.1:{port}", "--join-timeout", "10"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)
        conn, _ = listener.accept()
        with conn:
            hello = json.loads(conn.makefile("rb").readline())
            assert hello["type"] == "hello" and hello["protocol"] == PROTOCOL_VERSION
            conn.sendall(
                json.dumps({"type": "welcome", "protocol": 99, "index": 0, "count": 1}).encode() + b"\n"
            )
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip() == f"loadgen: error: coordinator 127.0.0.1:{port} speaks protocol 99, this worker 1"


def test_too_few_workers_within_the_timeout_exits_2_and_aborts_those_that_came(tmp_path: Path) -> None:
    c = Coordinator(
        ["http://127.0.0.1:9/", "-d", "1", "--expect-workers", "2", "--join-timeout", "1"], tmp_path
    )
    cmd = [sys.executable, "-m", "loadgen", "--worker", f"127.0.0.1:{c.port}", "--join-timeout", "10"]
    worker = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    rc, out, err = c.finish()
    assert rc == 2 and out == "" and not c.json.exists()
    assert err.strip().splitlines()[-1] == "loadgen: error: only 1 of 2 workers joined within 1 s"
    assert worker.returncode == 2
    reason = "only 1 of 2 workers joined within 1 s"
    assert (
        worker.stderr.strip() == f"loadgen: error: coordinator 127.0.0.1:{c.port} aborted the run: {reason}"
    )


def test_no_coordinator_reachable_exits_2_with_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "loadgen", "--worker", f"127.0.0.1:{port}", "--join-timeout", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"loadgen: error: no coordinator reachable at 127.0.0.1:{port} within 1 s: ")


def test_the_benchmarks_merge_check_tells_an_exact_merge_from_an_averaged_one() -> None:
    from benchmarks.distributed import merge_exact

    own = [
        {"histograms": {"corrected": _hist((100, 900))}},
        {"histograms": {"corrected": _hist((1000, 100))}},
    ]
    exact = {"p50": 0.1, "p90": 0.1, "p99": 1.0, "p99.9": 1.0, "max": 1.0}
    assert merge_exact({"report": {"responses": 1000, "latency_ms": exact}, "own": own})
    averaged = {**exact, "p50": 0.55}
    assert not merge_exact({"report": {"responses": 1000, "latency_ms": averaged}, "own": own})
    assert not merge_exact({"report": {"responses": 999, "latency_ms": exact}, "own": own})
