"""Results per request kind (``by_request``): a failure is filed under the mix entry that failed.

The server answers every POST with 502 and every GET with 200, as a proxy that must not replay a
non-idempotent request would during a kill: the report has to put all failures on the POST entry,
none on the GET one, in the totals, in every second, in summary.md and in timeline.csv, also when
two worker processes share the run.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.__main__ import main
from loadgen.histogram import Timeline, merge_exports
from loadgen.plots import failures_by_request

from .loadgen_server import ThreadedServer

POST, GET = "POST /echo", "GET /"


def mix_scenario(tmp_path: Path, load: str) -> Path:
    path = tmp_path / "mix.yaml"
    path.write_text(
        f"name: post-fails\n{load}\n"
        "mix:\n"
        "  - {weight: 3, method: POST, path: /echo, body_size: 100}\n"
        "  - {weight: 1, method: GET, path: /}\n"
    )
    return path


@pytest.fixture
def failing_posts() -> Iterator[ThreadedServer]:
    with ThreadedServer({"POST": 502}) as srv:
        yield srv


def run(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[dict, Path]:
    rc = main([*argv, "--results-dir", str(tmp_path / "results"), "--quiet"], {})
    assert rc == 0, capsys.readouterr().err  # some requests succeeded (the GETs)
    (run_dir,) = (tmp_path / "results").iterdir()
    return json.loads((run_dir / "report.json").read_text()), run_dir


def assert_attributed(report: dict, srv: ThreadedServer) -> None:
    """Every failure is a POST's, every GET succeeded, and the entries add up to the totals."""
    by = report["by_request"]
    assert list(by) == [POST, GET]
    posts, gets = srv.answered[("POST", 502)], srv.answered[("GET", 200)]
    assert posts > 0 and gets > 0 and srv.served == posts + gets
    assert (by[POST]["method"], by[POST]["path"], by[POST]["weight"]) == ("POST", "/echo", 3)
    assert (by[POST]["requests"], by[POST]["failed"], by[POST]["status"]) == (posts, posts, {"502": posts})
    assert (by[GET]["requests"], by[GET]["failed"], by[GET]["status"]) == (gets, 0, {"200": gets})
    assert report["failed"] == posts and report["requests"] == posts + gets
    assert by[POST]["latency_ms"]["p50"] is not None and by[GET]["latency_ms"]["p99"] is not None
    for e in report["timeline"]:
        post, get = e["by_request"][POST], e["by_request"][GET]
        assert post["failed"] == post["requests"] and get["failed"] == 0, e
        assert post["requests"] + get["requests"] == e["requests"]
        assert post["failed"] + get["failed"] == e["failed"]
    assert sum(e["by_request"][POST]["failed"] for e in report["timeline"]) == posts


def test_post_failures_are_attributed_to_the_post_entry_in_open_loop(
    failing_posts: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    scenario = mix_scenario(tmp_path, "mode: rate\nstages:\n  - {kind: hold, duration: 2s, target: 200}")
    report, run_dir = run([failing_posts.url, "--scenario", str(scenario)], tmp_path, capsys)
    assert_attributed(report, failing_posts)
    assert report["by_request"][POST]["requests"] == 300  # 3 of every 4 of 400, exactly (weighted order)
    assert failing_posts.seen[("POST", "/echo", 100)] == 300

    summary = (run_dir / "summary.md").read_text()
    assert "## By request" in summary
    assert "| POST /echo | 3 | 300 | 300 | 300 | 300 | 0 |" in summary
    assert "| 0 (150), 1 (150) |" in summary, "the seconds the POSTs failed in"
    assert "| GET / | 1 | 100 | 100 | 0 | 0 | 0 |" in summary

    rows = list(csv.DictReader(io.StringIO((run_dir / "timeline.csv").read_text())))
    assert [(r["failed:POST /echo"], r["failed:GET /"]) for r in rows] == [("150", "0"), ("150", "0")]
    # throughput.png marks each kind's failures per second: only the POSTs have any.
    assert failures_by_request(report["timeline"]) == {POST: [150, 150], GET: [0, 0]}
    assert (run_dir / "throughput.png").stat().st_size > 1000


def test_a_single_request_gets_no_separate_failure_markers() -> None:
    timeline = [{"second": 0, "failed": 3, "by_request": {GET: {"failed": 3}}}, {"second": 1, "failed": 0}]
    assert failures_by_request(timeline) == {}, "its failures are the error bars themselves"


def test_two_workers_closed_loop_merge_to_the_sum(
    failing_posts: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    scenario = mix_scenario(tmp_path, "mode: concurrency\nstages:\n  - {kind: hold, duration: 2s, target: 4}")
    report, _ = run([failing_posts.url, "--scenario", str(scenario), "--workers", "2"], tmp_path, capsys)
    assert report["workers"] == 2
    assert_attributed(report, failing_posts)  # the server's own counts, summed over both workers


def test_merging_exports_adds_each_entry_exactly() -> None:
    """Two workers' per-entry timelines merge into the sum: counts, and histograms sample by sample."""
    parts = []
    for worker in range(2):
        t = Timeline(0.0)
        post, get = t.split_by_request([POST, GET])
        for i in range(50):
            ms = (worker * 50 + i + 1) / 1000
            for tl in (t, post):
                tl.record(0.2, 0.2 + ms, 502, b"a", None)
            for tl in (t, get):
                tl.record(1.2, 1.2 + ms / 10, 200, b"b", None)
        post.record(1.5, 1.6, 0, None, "reset")
        t.record(1.5, 1.6, 0, None, "reset")
        parts.append(t.export())

    merged = merge_exports(parts)
    assert list(merged.by_request) == [POST, GET]
    # By hand: the POSTs took 1, 2, ..., 100 ms (50 per worker), the GETs a tenth of that; the
    # value of rank round(p/100 x 100) is p50 = 50th, p90 = 90th, p99 = 99th (3 significant digits).
    for label, unit in ((POST, 1.0), (GET, 0.1)):
        got = merged.by_request[label]
        assert got.corrected.count == 100
        summary = got.corrected.summary_ms()
        for key, rank in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
            assert summary[key] == pytest.approx(rank * unit, rel=1e-3, abs=1e-3), (label, key)
        assert summary["mean"] == pytest.approx(50.5 * unit, rel=1e-3)
    post_s0, post_s1 = merged.by_request[POST].seconds
    assert (post_s0.requests, post_s0.failed, post_s0.status) == (100, 100, {502: 100})
    assert (post_s1.requests, post_s1.errors) == (2, {"reset": 2})
    assert [s.requests for s in merged.by_request[GET].seconds] == [0, 100]
