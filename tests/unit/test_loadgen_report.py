"""report.json content, the Markdown summary and the files, for a known hand-made timeline."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loadgen.config import load_config
from loadgen.histogram import Timeline
from loadgen.live import LiveLine, format_line
from loadgen.report import build_report, format_summary, results_stamp, succeeded, write_results_dir

STARTED = datetime(2026, 11, 25, 17, 45, 0, tzinfo=UTC)
TOP_KEYS = [
    "version", "url", "method", "concurrency", "duration_s", "elapsed_s", "started_at", "requests",
    "responses", "failed", "rps", "latency_ms", "status", "errors", "backends", "timeline",
]  # fmt: skip
ENTRY_KEYS = ["second", "requests", "failed", "status", "errors", "backends", "p50_ms", "p99_ms"]


def known_report() -> dict:
    cfg = load_config(["http://proxy:8080/", "-c", "3", "-d", "2"], {})
    t = Timeline(start=0.0)
    for _ in range(6):
        t.record(0.5, 0.502, 200, b"backend-1", None)  # 2 ms
    for _ in range(2):
        t.record(0.5, 0.504, 200, b"backend-2", None)  # 4 ms
    t.record(1.5, 1.510, 503, b"backend-2", None)  # 10 ms, failed
    t.record(1.5, 1.6, 0, None, "reset")
    return build_report(cfg, t, STARTED, elapsed_s=2.0)


def test_report_has_exactly_the_documented_keys_and_values() -> None:
    r = known_report()
    assert list(r) == TOP_KEYS
    assert r["version"] == 1
    assert (r["url"], r["method"], r["concurrency"], r["duration_s"]) == ("http://proxy:8080/", "GET", 3, 2.0)
    assert r["started_at"] == "2026-11-25T17:45:00+00:00"
    assert (r["requests"], r["responses"], r["failed"], r["rps"]) == (10, 9, 2, 4.5)
    assert r["status"] == {"200": 8, "503": 1}
    assert r["errors"] == {"connect": 0, "timeout": 0, "reset": 1, "other": 0}
    assert r["backends"] == {"backend-1": 6, "backend-2": 3}
    lat = r["latency_ms"]  # HDR: within 0.1 % (3 significant digits)
    assert lat["p50"] == pytest.approx(2.0, rel=1e-3) and lat["p90"] == pytest.approx(4.0, rel=1e-3)
    assert lat["max"] == pytest.approx(10.0, rel=1e-3)
    assert [list(e) for e in r["timeline"]] == [ENTRY_KEYS, ENTRY_KEYS]
    s0, s1 = r["timeline"]
    assert (s0["second"], s0["requests"], s0["failed"], s0["status"]) == (0, 8, 0, {"200": 8})
    assert s0["backends"] == {"backend-1": 6, "backend-2": 2}
    assert (s0["p50_ms"], s0["p99_ms"]) == pytest.approx((2.0, 4.0), rel=1e-3)
    assert (s1["requests"], s1["failed"], s1["status"]) == (2, 2, {"503": 1})
    assert s1["errors"] == {"connect": 0, "timeout": 0, "reset": 1, "other": 0}
    assert s1["p50_ms"] == pytest.approx(10.0, rel=1e-3)
    assert succeeded(r) == 8
    json.dumps(r)  # serialisable as is


def test_summary_markdown_content() -> None:
    r = known_report()
    md = format_summary(r)
    lat = r["latency_ms"]
    latency_row = (
        "| " + " | ".join(f"{lat[k]:.3f}" for k in ("mean", "p50", "p90", "p99", "p99.9", "max")) + " |"
    )
    assert md.startswith("# loadgen summary\n")
    for row in (
        "| target | GET http://proxy:8080/ |",
        "| concurrency | 3 |",
        "| duration | 2 s asked, 2.000 s measured |",
        "| requests | 10 |",
        "| req/s | 4.5 |",
        "| failed | 2 (20.0 %) |",
        "| mean | p50 | p90 | p99 | p99.9 | max |",
        latency_row,
        "| 503 | 1 |",
        "| reset | 1 |",
        "| backend-1 | 6 | 66.7 % |",
        "| backend-2 | 3 | 33.3 % |",
    ):
        assert row in md, row
    assert "(no header)" not in md


def test_summary_of_an_empty_run_and_missing_backend_header() -> None:
    cfg = load_config(["http://x/"], {})
    t = Timeline(start=0.0)
    r = build_report(cfg, t, STARTED, elapsed_s=0.0)
    assert (r["requests"], r["rps"], r["timeline"]) == (0, 0.0, [])
    assert r["latency_ms"]["p50"] is None
    assert "| - | - | - | - | - | - |" in format_summary(r)

    t = Timeline(start=0.0)
    t.record(0.1, 0.2, 200, None, None)
    md = format_summary(build_report(cfg, t, STARTED, elapsed_s=1.0))
    assert "| (no header) | 1 | 100.0 % |" in md


def test_results_dir_layout(tmp_path: Path) -> None:
    r = known_report()
    assert results_stamp(STARTED) == "20261125T174500Z"
    first = write_results_dir(r, tmp_path / "results", STARTED)
    second = write_results_dir(r, tmp_path / "results", STARTED)
    assert first == tmp_path / "results" / "20261125T174500Z"
    assert second.name == "20261125T174500Z-2"  # never overwrites
    assert json.loads((first / "report.json").read_text()) == r
    assert (first / "summary.md").read_text() == format_summary(r)


def test_live_line() -> None:
    line = format_line(3, 12345.6, 1.234, None, 2)
    assert line == "[   3s]     12,346 req/s  p50    1.23 ms  p99       - ms  errors 2"
    t = Timeline(start=0.0)
    t.record(0.1, 0.102, 200, None, None)
    t.record(0.1, 0.2, 0, None, "timeout")
    out = io.StringIO()
    LiveLine(out)(1, t)
    text = out.getvalue()
    assert text.startswith("[   1s]") and text.endswith("errors 1\n")
    assert "p50    2.00 ms" in text
