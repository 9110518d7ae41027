"""The per-second record (loadgen.record) and the live page's server (loadgen.dashboard).

Every expected number here is worked out by hand from the inputs, never computed by the code under
test. Latencies are chosen below 2048 us, where an HDR histogram of 3 significant digits is exact
(one microsecond per bucket), so a percentile is the recorded value itself.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import loadgen.record as record_mod
from benchmarks.host import free_port
from loadgen.__main__ import main
from loadgen.dashboard import Dashboard
from loadgen.histogram import LatencyHistogram, Timeline
from loadgen.live import LiveLine
from loadgen.record import SecondRecord, TickMerger, bucket_snapshot

from .loadgen_server import ThreadedServer

VENDOR = Path(__file__).resolve().parents[2] / "loadgen" / "static" / "vendor"


def hist(*pairs: tuple[int, int]) -> str:
    """An encoded histogram holding ``count`` samples of ``us`` for each (us, count)."""
    h = LatencyHistogram()
    for us, count in pairs:
        h.record_us(us, count)
    return h.encode()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """perf_counter as the test sets it: ``clock[0]`` seconds."""
    now = [100.0]
    monkeypatch.setattr(record_mod, "perf_counter", lambda: now[0])
    return now


def two_workers(completed: tuple[int, int], errors: tuple[int, int], failed: tuple[int, int]) -> list[dict]:
    a = {
        "index": 0,
        "completed": completed[0],
        "errors": errors[0],
        "failed": failed[0],
        "prev_hist": hist((500, 50), (1000, 50)),
        "prev_backends": {"a": 60, "b": 38},
        "prev_requests": 100,
        "prev_failed": 4,
        "prev_status": {200: 98, 503: 2},
        "prev_errors": {"reset": 2},
    }
    b = {
        "index": 1,
        "worker": "node-2",
        "completed": completed[1],
        "errors": errors[1],
        "failed": failed[1],
        "prev_hist": hist((1000, 50), (1500, 50)),
        "prev_backends": {"a": 50, "c": 50},
        "prev_requests": 100,
        "prev_failed": 0,
        "prev_status": {200: 100},
        "prev_errors": {},
    }
    return [a, b]


def test_two_workers_merge_into_one_record(clock: list[float]) -> None:
    merge = TickMerger(target_at=lambda t: 100.0 * t)
    r = merge(3, two_workers((100, 100), (2, 0), (4, 0)))  # the first interval counts as 1 s
    assert r.second == 2  # tick 3 ends second 2
    assert r.rps == 200.0 and r.errors == 2 and r.failed == 4
    assert r.requests == 200
    assert r.status == {"200": 198, "503": 2}
    assert r.errors_by_kind == {"reset": 2}
    assert r.backends == {"a": 110, "b": 38, "c": 50}
    # 200 samples: 50 x 0.5 ms, 100 x 1 ms, 50 x 1.5 ms.
    assert r.latency_ms == {"p50": 1.0, "p90": 1.5, "p99": 1.5, "p99.9": 1.5, "max": 1.5}
    assert r.uncorrected_p99_ms is None and r.intended_rps is None  # closed loop: no "due"
    assert r.target == 250.0  # the level in the middle of second 2
    assert [(w.name, w.rps, w.failed, w.p99_ms) for w in r.workers] == [
        ("worker-0", 100.0, 4, 1.0),
        ("node-2", 100.0, 0, 1.5),
    ]
    # Half a second later, cumulative counters moved by 150 and 50: rates per second over 0.5 s.
    clock[0] += 0.5
    r = merge(4, two_workers((250, 150), (2, 1), (4, 1)))
    assert r.second == 3 and r.rps == 400.0 and r.errors == 1 and r.failed == 1


def test_open_loop_rates_uncorrected_latency_and_the_behind_note(clock: list[float]) -> None:
    snap = {
        "completed": 500,
        "errors": 0,
        "prev_hist": hist((1800, 10)),
        "prev_hist_u": hist((300, 10)),
        "due": 1000,
        "sent": 500,
        "backlog": 500,
        "backlog_age_s": 0.25,
        "busy": 8,
        "max_connections": 8,
    }
    r = TickMerger()(1, [snap])
    assert r.latency_ms["p99"] == 1.8 and r.uncorrected_p99_ms == 0.3
    assert r.intended_rps == 1000.0 and r.achieved_rps == 500.0
    assert r.note == (
        "BEHIND: intended 1,000 req/s, achieved 500 req/s (500 waiting 250 ms for a connection, 8/8 busy)"
    )
    assert r.workers == []  # one process: no per-worker table


def test_a_timeline_second_goes_through_the_snapshot_unchanged(clock: list[float]) -> None:
    """Timeline -> bucket_snapshot (what a worker sends) -> TickMerger: the counts of second 0."""
    tl = Timeline(start=0.0)
    children = tl.split_by_request(["GET /", "POST /echo"])
    # Sent at 0.0 so that done - sent is exactly the latency (no float rounding to 999 us).
    for _ in range(4):  # 4 GETs of 1 ms on backend x
        tl.record(0.0, 0.001, 200, b"x", None)
        children[0].record(0.0, 0.001, 200, b"x", None)
    tl.record(0.0, 0.0015, 502, b"y", None)  # a POST answered 502 in 1.5 ms
    children[1].record(0.0, 0.0015, 502, b"y", None)
    tl.record(0.6, 0.7, 0, None, "reset")  # a POST reset
    children[1].record(0.6, 0.7, 0, None, "reset")
    snap = {"completed": tl.completed, "errors": tl.errors, "failed": tl.failed, **bucket_snapshot(tl, 0)}
    assert (snap["completed"], snap["errors"], snap["failed"]) == (6, 1, 2)
    r = TickMerger()(1, [snap])
    assert (r.requests, r.failed, r.errors) == (6, 2, 1)
    assert r.status == {"200": 4, "502": 1} and r.errors_by_kind == {"reset": 1}
    assert r.backends == {"x": 4, "y": 1}
    assert r.latency_ms["p50"] == 1.0 and r.latency_ms["max"] == 1.5
    assert {k: (v.requests, v.failed, v.p50_ms, v.p99_ms) for k, v in r.by_request.items()} == {
        "GET /": (4, 0, 1.0, 1.0),
        "POST /echo": (2, 2, 1.5, 1.5),
    }
    assert bucket_snapshot(tl, 5) == {"prev_hist": "", "prev_backends": {}}  # a second not begun


def test_late_responses_revise_the_second_they_belong_to(clock: list[float]) -> None:
    """A request of second 0 answered after the tick that ended it: the next tick revises second 0."""
    from loadgen.config import load_config
    from loadgen.plan import make_plan
    from loadgen.schedule import ClosedLoop

    runner = ClosedLoop(make_plan(load_config(["http://x/", "-c", "2", "--timeout", "5"], {})))
    tl = runner.timeline
    tl.record(0.0, 0.001, 200, b"a", None)  # 1 ms, in time for tick 1
    merge = TickMerger()
    first = merge(1, [runner.snapshot(1)])
    assert (first.second, first.requests, first.rps, first.latency_ms["max"]) == (0, 1, 1.0, 1.0)
    assert merge.revised == []
    tl.record(0.0, 1.5, 200, b"b", None)  # issued in second 0, answered at 1.5 s (1500 ms)
    tl.record(1.0, 1.002, 200, b"a", None)  # second 1: 2 ms
    clock[0] += 1.0
    second = merge(2, [runner.snapshot(2)])
    assert (second.second, second.requests, second.latency_ms["max"]) == (1, 1, 2.0)
    (rev,) = merge.revised
    assert rev.second == 0 and rev.requests == 2 and rev.backends == {"a": 1, "b": 1}
    # 1.5 s is beyond the exact range: HDR's 3 significant digits keep it within 0.1 %.
    assert rev.latency_ms["max"] == pytest.approx(1500.0, rel=1e-3) and rev.latency_ms["p50"] == 1.0
    assert rev.rps == 1.0  # the rate of the interval as first recorded, not recounted
    clock[0] += 1.0
    merge(3, [runner.snapshot(3)])
    assert merge.revised == []  # nothing changed since: nothing resent


def test_the_live_line_is_a_view_of_the_record(clock: list[float]) -> None:
    out = io.StringIO()
    line = LiveLine(out)
    line.show(7, SecondRecord(second=6, rps=1234.4, errors=3, failed=5, requests=1200,
                              latency_ms={"p50": 1.5, "p99": 4.25}, backends={"a": 1, "b": 3}))  # fmt: skip
    assert out.getvalue() == (
        "[   7s]      1,234 req/s  p50    1.50 ms  p99    4.25 ms  errors 3  backends a 25% b 75%\n"
    )


# -- the server --------------------------------------------------------------------------------


def read_events(port: int, stop_after: int | None = None, timeout: float = 10.0) -> list[tuple[str, Any]]:
    """Read /events until the server ends the stream (or ``stop_after`` events)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", "/events")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    events: list[tuple[str, Any]] = []
    name = None
    while stop_after is None or len(events) < stop_after:
        line = resp.readline()
        if not line:
            break
        line = line.rstrip(b"\n")
        if line.startswith(b"event: "):
            name = line[7:].decode()
        elif line.startswith(b"data: "):
            events.append((name, json.loads(line[6:])))
    conn.close()
    return events


def rec(second: int, rps: float) -> SecondRecord:
    return SecondRecord(second=second, rps=rps, errors=0, failed=0, requests=int(rps))


def test_a_late_viewer_gets_the_whole_history_then_the_end() -> None:
    dash = Dashboard("127.0.0.1", 0, {"url": "http://x/", "mode": "open"})
    dash.start()
    try:
        dash.publish(rec(0, 10.0))
        dash.publish(rec(1, 20.0))
        dash.action({"at_s": 1.5, "kind": "kill", "target": "backend:1", "ok": True})
        late: list[list[tuple[str, Any]]] = []
        t = threading.Thread(target=lambda: late.append(read_events(dash.port)))
        t.start()
        assert dash.wait_for_viewers(1, timeout=30)  # watching now: second 2 reaches it live
        dash.publish(rec(2, 30.0))
        report = {"timeline": [], "mode": "open", "requests": 60, "actions": []}
        dash.finish(report)
    finally:
        dash.close()
    t.join(10)
    names = [n for n, _ in late[0]]
    assert names == ["meta", "second", "second", "action", "second", "end"]
    assert [d["rps"] for n, d in late[0] if n == "second"] == [10.0, 20.0, 30.0]
    assert late[0][0][1]["url"] == "http://x/"
    end = late[0][-1][1]
    assert end["kind"] == "report" and end["summary"]["requests"] == 60
    with pytest.raises(OSError):  # closed: nothing listens any more
        socket.create_connection(("127.0.0.1", dash.port), timeout=1).close()


def test_the_page_and_its_assets_are_served_from_the_repo_files() -> None:
    dash = Dashboard("127.0.0.1", 0, {"url": "http://x/", "scenario": "kill-replica"})
    dash.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=5)
        conn.request("GET", "/")
        page = conn.getresponse().read().decode()
        assert "<title>loadgen: kill-replica (live)</title>" in page
        assert '<script src="/static/uPlot.iife.min.js"></script>' in page and "/events" in page
        assert "http://" not in page and "https://" not in page  # no CDN, nothing off this server
        conn.request("GET", "/static/uPlot.iife.min.js")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == (VENDOR / "uPlot.iife.min.js").read_bytes()
        conn.request("GET", "/static/../report.json")
        resp = conn.getresponse()
        assert resp.status == 404
        resp.read()
        conn.close()
    finally:
        dash.close()


def test_a_run_watched_by_a_viewer_still_exits_on_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    seen: list[list[tuple[str, Any]]] = []

    def viewer() -> None:
        for _ in range(100):  # until the run has bound its page
            try:
                seen.append(read_events(port, timeout=30))
                return
            except OSError:
                time.sleep(0.05)

    with ThreadedServer() as srv:
        t = threading.Thread(target=viewer, daemon=True)
        t.start()
        argv = [srv.url, "--rate", "100", "-d", "3", "--dashboard", f"127.0.0.1:{port}", "-q"]
        status = main([*argv, "--results-dir", str(tmp_path)], {})
        t.join(10)
    assert status == 0 and not t.is_alive()
    assert f"loadgen: live page on http://127.0.0.1:{port}/" in capsys.readouterr().err
    names = [n for n, _ in seen[0]]
    assert names[0] == "meta" and names[-1] == "end"
    seconds = [d for n, d in seen[0] if n == "second"]
    # One record per second in order; a late response may add a revision of an earlier second.
    order = list(dict.fromkeys(s["second"] for s in seconds))
    assert order in ([0, 1], [0, 1, 2])
    first = {}
    for s in seconds:
        first.setdefault(s["second"], s)
    assert all(s["live"] for s in seconds) and 50 <= first[1]["rps"] <= 150  # 100 req/s asked
    end = seen[0][-1][1]
    (report_path,) = tmp_path.glob("*/report.json")
    report = json.loads(report_path.read_text())
    assert [r["rps"] for r in end["records"]] == [e["rps"] for e in report["timeline"]]
    assert end["summary"]["requests"] == report["requests"] == 300


def test_a_dashboard_port_in_use_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["http://127.0.0.1:9/", "-d", "1", "--dashboard", f"127.0.0.1:{port}"], {}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"loadgen: error: --dashboard 127.0.0.1:{port}: cannot listen")


def test_with_workers_the_page_gets_one_merged_record_and_a_row_per_worker(tmp_path: Path) -> None:
    port = free_port()
    seen: list[list[tuple[str, Any]]] = []

    def viewer() -> None:
        for _ in range(200):
            try:
                seen.append(read_events(port, timeout=60))
                return
            except OSError:
                time.sleep(0.05)

    with ThreadedServer() as srv:
        t = threading.Thread(target=viewer, daemon=True)
        t.start()
        argv = [srv.url, "--rate", "100", "-d", "3", "-w", "2", "--dashboard", f"127.0.0.1:{port}", "-q"]
        assert main([*argv, "--json", str(tmp_path / "r.json")], {}) == 0
        t.join(10)
    seconds = [d for n, d in seen[0] if n == "second"]
    assert seconds and all([w["name"] for w in s["workers"]] == ["worker-0", "worker-1"] for s in seconds)
    # Each worker sends every other request of the one schedule: 50 req/s each, 100 together.
    first = {}
    for s in seconds:
        first.setdefault(s["second"], s)
    assert 70 <= first[1]["rps"] <= 130 and 30 <= first[1]["workers"][0]["rps"] <= 70
    # Second 1's requests of both workers, merged; its last version (a revision, if a response
    # came in after the tick) has them all.
    last_of_1 = [s for s in seconds if s["second"] == 1][-1]
    assert last_of_1["requests"] == 100


def test_a_failed_run_closes_its_page(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import loadgen.__main__ as cli
    from loadgen.workers import WorkerError

    def fail(*args: Any, **kwargs: Any) -> None:
        raise WorkerError("worker 0 failed: boom")

    monkeypatch.setattr(cli, "execute", fail)
    port = free_port()
    assert cli.main(["http://127.0.0.1:9/", "-d", "1", "--dashboard", f"127.0.0.1:{port}", "-q"], {}) == 1
    assert capsys.readouterr().err.strip().endswith("loadgen: error: worker 0 failed: boom")
    with pytest.raises(OSError):  # nothing left listening, no server thread left behind
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not [t for t in threading.enumerate() if t.name == "dashboard"]
