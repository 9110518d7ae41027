"""report.json (schema 2), timeline.csv, the Markdown summary and the live line, for known runs."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loadgen.config import load_config
from loadgen.histogram import LatencyHistogram, Timeline, merge_exports
from loadgen.live import LiveLine, format_line
from loadgen.plan import make_plan
from loadgen.report import (
    build_report,
    format_csv,
    format_summary,
    results_stamp,
    succeeded,
    write_results_dir,
)
from loadgen.run import Outcome

STARTED = datetime(2026, 11, 25, 17, 45, 0, tzinfo=UTC)
TOP_KEYS = [
    "schema", "url", "method", "mode", "concurrency", "connections", "rate", "duration_s", "elapsed_s",
    "started_at", "workers", "scenario", "mix", "requests", "responses", "failed", "rps", "rate_check",
    "latency_ms", "latency_uncorrected_ms", "histograms", "status", "errors", "backends", "by_request",
    "connections_used", "connects", "connections_retired", "stopped_early", "actions", "tags", "stages",
    "timeline",
]  # fmt: skip
ENTRY_KEYS = [
    "second", "intended", "requests", "responses", "failed", "errors", "unsent", "dropped", "waited", "rps",
    "p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms", "uncorrected_p99_ms", "status",
    "errors_by_kind", "backends", "by_request", "target",
]  # fmt: skip
LAT_KEYS = ["mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"]


def outcome(argv: list[str], timeline: Timeline, elapsed_s: float, stats: dict | None = None) -> tuple:
    cfg = load_config(argv, {})
    plan = make_plan(cfg)
    merged = merge_exports([timeline.export()])
    return cfg, Outcome(plan, merged, STARTED, elapsed_s, False, [stats or {}], [])


def known_report() -> dict:
    t = Timeline(start=0.0)
    for _ in range(6):
        t.record(0.5, 0.502, 200, b"backend-1", None)  # 2 ms
    for _ in range(2):
        t.record(0.5, 0.504, 200, b"backend-2", None)  # 4 ms
    t.record(1.5, 1.510, 503, b"backend-2", None)  # 10 ms, failed
    t.record(1.5, 1.6, 0, None, "reset")
    cfg, out = outcome(["http://proxy:8080/", "-c", "3", "-d", "2"], t, 2.0)
    return build_report(cfg, out)


def open_report() -> dict:
    t = Timeline(start=0.0, open_loop=True)
    for i in range(10):  # 10 req/s for 2 s asked; 19 sent, the last one never
        due = i / 10
        t.bucket(0).intended += 1
        t.record_open(due, due, due + 0.002, 200, b"a", None)
    for i in range(10):
        due = 1 + i / 10
        t.bucket(1).intended += 1
        if i == 9:
            t.bucket(1).unsent += 1
            continue
        t.record_open(due, due + 0.5, due + 0.503, 200, b"b", None)  # waited 0.5 s
    stats = {"due": 20, "sent": 19, "sent_in_time": 19, "unsent": 1, "connections_used": 1, "connects": 1}
    cfg, out = outcome(["http://x/", "--rate", "10", "-d", "2", "--connections", "1"], t, 2.1, stats)
    return build_report(cfg, out)


def test_closed_loop_report_has_exactly_the_documented_keys_and_values() -> None:
    r = known_report()
    assert list(r) == TOP_KEYS
    assert (r["schema"], r["mode"], r["rate"], r["rate_check"], r["workers"], r["scenario"]) == (
        2, "closed", None, None, 1, None,
    )  # fmt: skip
    assert (r["url"], r["method"], r["concurrency"], r["duration_s"]) == ("http://proxy:8080/", "GET", 3, 2.0)
    assert r["started_at"] == "2026-11-25T17:45:00+00:00"
    assert (r["requests"], r["responses"], r["failed"], r["rps"]) == (10, 9, 2, 4.5)
    assert r["status"] == {"200": 8, "503": 1}
    assert r["errors"] == {"connect": 0, "timeout": 0, "reset": 1, "other": 0}
    assert r["backends"] == {"backend-1": 6, "backend-2": 3}
    lat = r["latency_ms"]  # HDR: within 0.1 % (3 significant digits)
    assert list(lat) == LAT_KEYS
    assert lat["p50"] == pytest.approx(2.0, rel=1e-3) and lat["p90"] == pytest.approx(4.0, rel=1e-3)
    assert lat["max"] == pytest.approx(10.0, rel=1e-3)
    assert r["latency_uncorrected_ms"] == lat  # closed loop: the same figure
    hist = LatencyHistogram.decode(r["histograms"]["corrected"])
    assert hist.count == 9 and r["histograms"]["unit"] == "us"
    assert [list(e) for e in r["timeline"]] == [ENTRY_KEYS, ENTRY_KEYS]
    s0, s1 = r["timeline"]
    assert (s0["second"], s0["intended"], s0["requests"], s0["failed"], s0["status"]) == (
        0,
        None,
        8,
        0,
        {"200": 8},
    )
    assert s0["backends"] == {"backend-1": 6, "backend-2": 2}
    assert (s0["p50_ms"], s0["p99_ms"]) == pytest.approx((2.0, 4.0), rel=1e-3)
    assert (s1["requests"], s1["responses"], s1["failed"], s1["errors"], s1["status"]) == (
        2,
        1,
        2,
        1,
        {"503": 1},
    )
    assert s1["errors_by_kind"] == {"connect": 0, "timeout": 0, "reset": 1, "other": 0}
    assert s1["p50_ms"] == pytest.approx(10.0, rel=1e-3)
    # One request: its by_request entry is the totals, per run and per second.
    (only,) = r["by_request"].values()
    assert list(r["by_request"]) == ["GET /"]
    assert (only["method"], only["path"], only["weight"]) == ("GET", "/", 1.0)
    assert (only["requests"], only["responses"], only["failed"]) == (10, 9, 2)
    assert (only["status"], only["errors"], only["latency_ms"]) == (r["status"], r["errors"], lat)
    assert s1["by_request"]["GET /"] == {
        "requests": 2, "responses": 1, "failed": 2, "errors": 1, "status": {"503": 1},
        "errors_by_kind": s1["errors_by_kind"], "p50_ms": s1["p50_ms"], "p99_ms": s1["p99_ms"],
    }  # fmt: skip
    assert succeeded(r) == 8
    json.dumps(r)  # serialisable as is


def test_open_loop_report_rate_check_and_both_latencies() -> None:
    r = open_report()
    assert (r["mode"], r["rate"], r["concurrency"], r["connections"]) == ("open", 10.0, None, 1)
    rc = r["rate_check"]
    assert (rc["intended_rps"], rc["achieved_rps"], rc["error_pct"]) == (10.0, 9.5, 5.0)
    assert rc["kept_up"] is False and rc["unsent"] == 1
    assert rc["reason"].startswith("generator behind: intended 10.0 req/s, achieved 9.5 req/s")
    assert rc["max_send_lag_ms"] == pytest.approx(500, rel=1e-3)
    assert r["latency_ms"]["max"] == pytest.approx(503, rel=1e-3)
    assert r["latency_uncorrected_ms"]["max"] == pytest.approx(3, rel=1e-3)
    s0, s1 = r["timeline"]
    assert (s0["intended"], s0["unsent"], s1["intended"], s1["unsent"]) == (10, 0, 10, 1)
    assert s1["p50_ms"] == pytest.approx(503, rel=1e-3) and s1["uncorrected_p99_ms"] == pytest.approx(
        3, rel=1e-3
    )
    md = format_summary(r)
    for row in (
        "| load | open loop, 10 req/s intended, up to 1 connections |",
        "| 10.0 | 9.5 | 5.00 % | **BEHIND** | 1 | 0 | 0 |",
        "| latency | mean | p50 | p90 | p99 | p99.9 | p99.99 | max |",
        "generator behind: intended 10.0 req/s",
    ):
        assert row in md, row
    assert "| corrected (from intended send) |" in md and "| uncorrected (from actual send) |" in md


def test_dropped_requests_are_in_the_rate_check_timeline_csv_and_summary() -> None:
    # 10 req/s for 2 s, one connection, --max-backlog 2: second 0 all sent; in second 1, 5 sent
    # and 5 dropped when due (the backlog was full).
    t = Timeline(start=0.0, open_loop=True)
    for i in range(10):
        t.bucket(0).intended += 1
        t.record_open(i / 10, i / 10, i / 10 + 0.002, 200, b"a", None)
    for i in range(10):
        due = 1 + i / 10
        t.bucket(1).intended += 1
        if i >= 5:
            t.bucket(1).dropped += 1
            continue
        t.record_open(due, due, due + 0.002, 200, b"a", None)
    stats = {"due": 20, "sent": 15, "sent_in_time": 15, "unsent": 0, "dropped": 5, "max_backlog": 2}
    argv = ["http://x/", "--rate", "10", "-d", "2", "--connections", "1", "--max-backlog", "2"]
    cfg, out = outcome(argv, t, 2.0, stats)
    r = build_report(cfg, out)
    rc = r["rate_check"]
    assert (rc["intended"], rc["sent"], rc["unsent"], rc["dropped"], rc["max_backlog"]) == (20, 15, 0, 5, 2)
    assert (rc["achieved_rps"], rc["kept_up"]) == (7.5, False)
    assert "5 dropped when due: 2 already waited for a connection (--max-backlog" in rc["reason"]
    assert [e["dropped"] for e in r["timeline"]] == [0, 5]
    assert [e["intended"] - e["requests"] - e["unsent"] - e["dropped"] for e in r["timeline"]] == [0, 0]
    rows = list(csv.DictReader(io.StringIO(format_csv(r))))
    assert [row["dropped"] for row in rows] == ["0", "5"]
    assert "| 10.0 | 7.5 | 25.00 % | **BEHIND** | 0 | 5 | 0 |" in format_summary(r)
    assert known_report()["timeline"][0]["dropped"] is None  # closed loop: no backlog


def test_summary_markdown_content() -> None:
    r = known_report()
    md = format_summary(r)
    lat = r["latency_ms"]
    latency_row = "| all responses | " + " | ".join(f"{lat[k]:.3f}" for k in LAT_KEYS) + " |"
    assert md.startswith("# loadgen summary\n")
    for row in (
        "| target | GET http://proxy:8080/ |",
        "| load | closed loop, 3 connections |",
        "| duration | 2 s asked, 2.000 s measured |",
        "| requests | 10 |",
        "| req/s | 4.5 |",
        "| failed | 2 (20.0 %) |",
        latency_row,
        "| 503 | 1 |",
        "| reset | 1 |",
        "| backend-1 | 6 | 66.7 % |",
        "| backend-2 | 3 | 33.3 % |",
    ):
        assert row in md, row
    assert "(no header)" not in md and "Rate check" not in md


def test_summary_of_an_empty_run_and_missing_backend_header() -> None:
    cfg, out = outcome(["http://x/"], Timeline(start=0.0), 0.0)
    r = build_report(cfg, out)
    assert (r["requests"], r["rps"], r["timeline"]) == (0, 0.0, [])
    assert r["latency_ms"]["p50"] is None
    assert "| all responses | - | - | - | - | - | - | - |" in format_summary(r)

    t = Timeline(start=0.0)
    t.record(0.1, 0.2, 200, None, None)
    cfg, out = outcome(["http://x/"], t, 1.0)
    assert "| (no header) | 1 | 100.0 % |" in format_summary(build_report(cfg, out))


def test_timeline_csv_has_scalar_columns_and_one_column_per_backend() -> None:
    r = open_report()
    rows = list(csv.DictReader(io.StringIO(format_csv(r))))
    assert len(rows) == 2
    assert list(rows[0])[:3] == ["second", "intended", "requests"]
    assert (rows[0]["backend:a"], rows[0]["backend:b"], rows[1]["backend:b"]) == ("10", "0", "9")
    assert (rows[1]["intended"], rows[1]["unsent"], rows[1]["errors_reset"]) == ("10", "1", "0")
    assert float(rows[1]["p50_ms"]) == pytest.approx(503, rel=1e-3)
    closed = list(csv.DictReader(io.StringIO(format_csv(known_report()))))
    assert closed[0]["intended"] == "" and closed[1]["errors_reset"] == "1"


def test_results_dir_layout(tmp_path: Path) -> None:
    r = known_report()
    assert results_stamp(STARTED) == "20261125T174500Z"
    first = write_results_dir(r, tmp_path / "results", STARTED)
    second = write_results_dir(r, tmp_path / "results", STARTED)
    assert first == tmp_path / "results" / "20261125T174500Z"
    assert second.name == "20261125T174500Z-2"  # never overwrites
    assert json.loads((first / "report.json").read_text()) == r
    assert (first / "summary.md").read_text() == format_summary(r)
    assert (first / "timeline.csv").read_text() == format_csv(r)


def test_live_line() -> None:
    line = format_line(3, 12345.6, 1.234, None, 2, {"b": 1, "a": 3})
    assert line == "[   3s]     12,346 req/s  p50    1.23 ms  p99       - ms  errors 2  backends a 75% b 25%"
    h = LatencyHistogram()
    h.record_us(2000)
    snap = {"completed": 2, "errors": 1, "prev_hist": h.encode(), "prev_backends": {"x": 1}}
    out = io.StringIO()
    LiveLine(out)(1, [snap, {**snap, "prev_backends": {"y": 3}}])  # two workers, merged
    text = out.getvalue()
    assert text.startswith("[   1s]") and "errors 2  backends x 25% y 75%\n" in text
    assert "p50    2.00 ms" in text and "BEHIND" not in text
    out = io.StringIO()
    behind = {
        **snap,
        "due": 1000,
        "sent": 500,
        "backlog": 500,
        "backlog_age_s": 0.5,
        "busy": 8,
        "max_connections": 8,
    }
    LiveLine(out)(1, [behind])
    assert (
        "BEHIND: intended 1,000 req/s, achieved 500 req/s (500 waiting 500 ms for a connection, 8/8 busy)"
        in (out.getvalue())
    )
