"""report.html and compare.html: self-contained, and the data they embed is the run's.

Expected values are worked out by hand from known inputs (a timeline recorded request by request),
not taken from the code under test.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from loadgen.__main__ import main
from loadgen.compare import main as compare_main
from loadgen.config import load_config
from loadgen.histogram import Timeline, merge_exports
from loadgen.plan import make_plan
from loadgen.report import build_report
from loadgen.report_html import compare_html, report_html, run_labels
from loadgen.run import Outcome
from loadgen.scenario import parse_scenario

from .loadgen_server import ThreadedServer
from .test_loadgen_report import STARTED

REPO = Path(__file__).resolve().parents[2]
VENDOR = REPO / "loadgen" / "static" / "vendor"


def embedded(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="lg-data">(.*?)</script>', html, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1))


def known_report(tags: tuple[str, ...] = ()) -> dict:
    """Open loop, 2 s at 4 req/s: second 0 four 1 ms responses from a; second 1 one 2 ms from b,
    one 503 from b in 1 ms, one reset, one never sent."""
    t = Timeline(start=0.0, open_loop=True)
    for i in range(4):
        due = i / 4
        t.bucket(0).intended += 1
        t.record_open(due, due, due + 0.001, 200, b"a", None)
    for i, (status, error, ms) in enumerate([(200, None, 2), (503, None, 1), (0, "reset", 5)]):
        due = 1 + i / 4
        t.bucket(1).intended += 1
        t.record_open(due, due, due + ms / 1000, status, b"b" if error is None else None, error)
    t.bucket(1).intended += 1
    t.bucket(1).unsent += 1
    scenario = parse_scenario(
        {
            "name": "known",
            "mode": "rate",
            "stages": [{"kind": "ramp", "duration": "1s", "to": 4}, {"kind": "hold", "duration": "1s"}],
            "actions": [{"at": "1s", "kind": "kill", "target": "backend:1"}],
        }
    )
    argv = ["http://proxy:8000/", "--scenario", "x.yaml", *[a for tag in tags for a in ("--tag", tag)]]
    cfg = load_config(argv, {})
    plan = make_plan(cfg, scenario)
    merged = merge_exports([t.export()])
    stats = {"due": 8, "sent": 7, "sent_in_time": 7, "unsent": 1}
    action = {
        "at_s": 1.02,
        "planned_at_s": 1.0,
        "kind": "kill",
        "target": "backend:1",
        "ok": True,
        "detail": "",
    }
    return build_report(cfg, Outcome(plan, merged, STARTED, 2.1, False, [stats], [action]))


def test_the_report_page_embeds_the_runs_seconds_and_tables() -> None:
    doc = embedded(report_html(known_report(("policy=p2c",))))
    s0, s1 = doc["records"]
    assert (s0["second"], s0["rps"], s0["requests"], s0["failed"], s0["backends"]) == (0, 4.0, 4, 0, {"a": 4})
    assert s0["latency_ms"]["p50"] == 1.0 and s0["latency_ms"]["max"] == 1.0
    # Second 1: 2 responses (200 in 2 ms, 503 in 1 ms), a reset; failed = the 503 and the reset.
    assert (s1["rps"], s1["requests"], s1["failed"], s1["errors"]) == (2.0, 3, 2, 1)
    assert s1["status"] == {"200": 1, "503": 1} and s1["errors_by_kind"] == {"reset": 1}
    assert s1["latency_ms"]["max"] == 2.0 and s1["uncorrected_p99_ms"] == 2.0
    assert s0["intended_rps"] == 4.0 and s1["intended_rps"] == 4.0
    # The ramp 0 -> 4 over the first second, then 4: the level in the middle of each second.
    assert (s0["target"], s1["target"]) == (2.0, 4.0)
    assert not s0["live"] and not s1["live"]
    meta = doc["meta"]
    assert meta["tags"] == {"policy": "p2c"} and meta["scenario"] == "known" and meta["mode"] == "open"
    assert [(st["kind"], st["start_s"], st["end_s"], st["to"]) for st in meta["stages"]] == [
        ("ramp", 0.0, 1.0, 4.0),
        ("hold", 1.0, 2.0, 4.0),
    ]
    assert doc["actions"][0]["at_s"] == 1.02 and doc["actions"][0]["kind"] == "kill"
    summary = doc["summary"]
    assert (summary["requests"], summary["responses"], summary["failed"]) == (7, 6, 2)
    assert summary["status"] == {"200": 5, "503": 1} and summary["backends"] == {"a": 4, "b": 2}
    assert summary["rate_check"]["unsent"] == 1
    # The whole-run spectrum ends at the slowest response (2 ms), corrected and uncorrected.
    assert doc["spectrum"]["corrected"][-1][1] == 2.0 and doc["spectrum"]["uncorrected"][-1][1] == 2.0


def test_the_report_page_is_self_contained() -> None:
    html = report_html(known_report())
    # The library, its stylesheet and the page's own script are inlined byte for byte ...
    assert (VENDOR / "uPlot.iife.min.js").read_text() in html
    assert (VENDOR / "uPlot.min.css").read_text() in html
    assert (REPO / "loadgen" / "static" / "loadgen.js").read_text() in html
    # ... and nothing is loaded from anywhere: no src= or href= at all, no fetch, no EventSource call.
    assert not re.search(r"""\b(src|href)\s*=\s*["']""", html)
    assert "<link" not in html and "@import" not in html


def test_text_from_the_run_cannot_break_out_of_the_data_element() -> None:
    evil = "</script><script>alert(1)</script>"
    html = report_html(known_report((f"note={evil}",)))
    assert evil not in html
    assert embedded(html)["meta"]["tags"]["note"] == evil  # still the same text once parsed


@pytest.mark.parametrize(
    ("settings", "labels", "differs"),
    [
        ([{"tags": {"policy": "rr"}}, {"tags": {"policy": "p2c"}}], ["policy=rr", "policy=p2c"], ["policy"]),
        (
            [{"rate": 100.0, "tags": {"policy": "rr"}}, {"rate": 200.0, "tags": {"policy": "rr"}}],
            ["rate=100", "rate=200"],
            ["rate"],
        ),
        (
            [{"tags": {"server": "granian"}}, {"tags": {}}, {"rate": 5.0}],
            ["server=granian, rate=100", "server=-, rate=100", "server=-, rate=5"],
            ["server", "rate"],
        ),
        ([{}, {}], ["run 1", "run 2"], []),
    ],
)
def test_runs_are_labelled_by_what_differs(
    settings: list[dict], labels: list[str], differs: list[str]
) -> None:
    base = {"mode": "open", "rate": 100.0, "url": "http://proxy:8000/", "started_at": "2026-12-01T09:00:00"}
    reports = [{**base, **s, "started_at": f"2026-12-01T09:0{i}:00"} for i, s in enumerate(settings)]
    assert run_labels(reports) == (labels, differs)


def test_compare_page_overlays_the_runs_under_their_labels() -> None:
    a, b = known_report(("policy=rr",)), known_report(("policy=p2c",))
    doc = embedded(compare_html([a, b], ["20261201T090000Z", "20261201T091000Z"]))
    assert doc["kind"] == "compare" and doc["differs"] == ["policy"]
    assert [(r["label"], r["name"]) for r in doc["runs"]] == [
        ("policy=rr", "20261201T090000Z"),
        ("policy=p2c", "20261201T091000Z"),
    ]
    assert [r["rps"] for r in doc["runs"][1]["records"]] == [4.0, 2.0]


def test_compare_of_three_runs_writes_the_page_and_a_column_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for policy in ("rr", "p2c", "lr"):
        d = tmp_path / policy
        d.mkdir()
        (d / "report.json").write_text(json.dumps(known_report((f"policy={policy}",))))
        paths.append(str(d))
    assert compare_main([*paths, "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "A: policy=rr [rr (known)]  \nB: policy=p2c [p2c (known)]  \nC: policy=lr [lr (known)]\n"
    )
    assert "| metric | A | B | B vs A | C | C vs A |" in out
    assert "| requests | 7 | 7 | +0.0 % | 7 | +0.0 % |" in out
    doc = embedded((tmp_path / "cmp" / "compare.html").read_text())
    assert [r["label"] for r in doc["runs"]] == ["policy=rr", "policy=p2c", "policy=lr"]
    assert (tmp_path / "cmp" / "compare-spectrum.png").exists()


def test_every_run_writes_report_html_next_to_its_report(tmp_path: Path) -> None:
    with ThreadedServer() as srv:
        argv = [srv.url, "-c", "2", "-d", "1", "-q", "--results-dir", str(tmp_path / "res")]
        assert main([*argv, "--json", str(tmp_path / "out.json"), "--tag", "server=test"], {}) == 0
    (run_dir,) = (tmp_path / "res").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    for page in (run_dir / "report.html", tmp_path / "out.html"):
        doc = embedded(page.read_text())
        assert doc["summary"]["requests"] == report["requests"] > 0
        assert [r["rps"] for r in doc["records"]] == [e["rps"] for e in report["timeline"]]
        assert doc["meta"]["tags"] == {"server": "test"}


def test_the_vendored_chart_library_matches_the_pinned_sums() -> None:
    check = subprocess.run(
        [str(REPO / "scripts" / "vendor-uplot"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert (VENDOR / "VERSION").read_text().strip() == "uplot@1.6.32"
    assert "MIT" in (VENDOR / "uPlot.LICENSE").read_text()


def test_a_distributed_run_gets_its_workers_table_without_the_histograms() -> None:
    report = known_report()
    w = {"status": "done", "lost_at_s": None, "requests": 4, "failed": 0, "rps": 2.0, "histogram": "HISTx"}
    report["distributed"] = {
        "workers": [
            {**w, "name": "w0@a", "latency_ms": {"p50": 1.0, "p99": 2.0}},
            {**w, "name": "w1@b", "status": "lost", "lost_at_s": 1.2, "requests": 3, "failed": 2,
             "latency_ms": {"p50": None, "p99": None}},
        ]
    }  # fmt: skip
    html = report_html(report)
    assert embedded(html)["summary"]["workers"] == [
        {"name": "w0@a", "status": "done", "lost_at_s": None, "requests": 4, "failed": 0, "rps": 2.0,
         "p50_ms": 1.0, "p99_ms": 2.0},
        {"name": "w1@b", "status": "lost", "lost_at_s": 1.2, "requests": 3, "failed": 2, "rps": 2.0,
         "p50_ms": None, "p99_ms": None},
    ]  # fmt: skip
    assert "HISTx" not in html
