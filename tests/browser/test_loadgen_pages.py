"""The load generator's pages in a real browser: the live page during a run, report.html and
compare.html opened from file:// with every network request refused."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.host import free_port
from loadgen.compare import main as compare_main
from tests.browser.pagecheck import block_network, canvas_ink
from tests.unit.loadgen_server import ThreadedServer

REPO = Path(__file__).resolve().parents[2]
RUN_CHARTS = ["throughput", "latency", "backends", "spectrum"]
#: Coloured pixels of a chart whose series drew (a line across it gives hundreds; axes give none).
DRAWN = 100


def charts_drawn(page: Any, names: list[str]) -> dict[str, int]:
    return {n: max(canvas_ink(page, f'[data-chart="{n}"]'), default=0) for n in names}


def run_loadgen(url: str, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "loadgen", url, *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def open_when_up(page: Any, url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            page.goto(url)
            return
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_live_page_moves_during_a_run_and_the_run_still_exits(
    browser_page: Any, chromium: Any, tmp_path: Path
) -> None:
    page = browser_page.page
    port = free_port()
    with ThreadedServer() as srv:
        proc = run_loadgen(
            srv.url, "--rate", "200", "-d", "8", "-q", "--dashboard", f"127.0.0.1:{port}",
            "--results-dir", str(tmp_path), "--tag", "policy=test",
        )  # fmt: skip
        try:
            open_when_up(page, f"http://127.0.0.1:{port}/", proc)
            root = page.locator("#lg-root")
            page.wait_for_function("document.getElementById('lg-root').dataset.seconds >= 2")
            first = int(root.get_attribute("data-seconds") or 0)
            requests_before = page.text_content("#lg-card-requests .lg-card-value")
            page.wait_for_function(f"document.getElementById('lg-root').dataset.seconds > {first}")
            assert page.text_content("#lg-card-requests .lg-card-value") != requests_before  # it moves
            assert "running" in (page.text_content("#lg-status") or "")
            assert "policy=test" in (page.text_content(".lg-meta") or "")
            drawn = charts_drawn(page, ["throughput", "latency", "backends"])
            assert all(n >= DRAWN for n in drawn.values()), drawn
            # A viewer who arrives late gets the history replayed: as many seconds at once.
            late_ctx = chromium.new_context()
            late = late_ctx.new_page()
            late.goto(f"http://127.0.0.1:{port}/")
            late.wait_for_function(
                f"document.getElementById('lg-root').dataset.seconds >= {first + 1}", timeout=5000
            )
            late_ctx.close()
            # The end: the page swaps to the final figures and the run exits by itself.
            page.wait_for_function(
                "document.getElementById('lg-root').dataset.finished === 'true'", timeout=30000
            )
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert "finished" in (page.text_content("#lg-status") or "")
    (report,) = tmp_path.glob("*/report.json")
    expected = json.loads(report.read_text())["requests"]
    assert page.text_content("#lg-card-requests .lg-card-value") == f"{expected:,}"
    drawn = charts_drawn(page, RUN_CHARTS)  # the spectrum appears with the final report
    assert all(n >= DRAWN for n in drawn.values()), drawn
    browser_page.assert_no_console_errors()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two short open-loop runs, told apart by their policy tag."""
    base = tmp_path_factory.mktemp("runs")
    out = []
    with ThreadedServer({"POST": 503}) as srv:
        for policy in ("round_robin", "least_request"):
            proc = run_loadgen(
                srv.url, "--rate", "100", "-d", "3", "-q", "--results-dir", str(base / policy),
                "--tag", f"policy={policy}",
            )  # fmt: skip
            assert proc.wait(timeout=60) == 0, proc.communicate()
            proc.communicate()
            (run_dir,) = (base / policy).iterdir()
            out.append(run_dir)
    return out


def test_report_html_opens_offline_and_draws_every_chart(browser_page: Any, runs: list[Path]) -> None:
    page = browser_page.page
    blocked = block_network(page)
    page.goto((runs[0] / "report.html").as_uri())
    page.wait_for_function("document.getElementById('lg-root').dataset.finished === 'true'")
    drawn = charts_drawn(page, RUN_CHARTS)
    assert all(n >= DRAWN for n in drawn.values()), drawn
    report = json.loads((runs[0] / "report.json").read_text())
    assert page.text_content("#lg-card-requests .lg-card-value") == f"{report['requests']:,}"
    # What the charts drew, read back from the uPlot instances, against the run's timeline.csv
    # (drawn from the same report): the data, not how many pixels are coloured.
    drew = page.evaluate(
        """() => Object.fromEntries(['throughput', 'latency'].map(name => {
             const plot = window.LoadgenPage.view[name].plot;
             return [name, Object.fromEntries(plot.series.map((s, i) => [s.label, plot.data[i]]))];
           }))"""
    )
    with (runs[0] / "timeline.csv").open() as f:
        rows_csv = list(csv.DictReader(f))

    def column(name: str) -> list[float | None]:
        return [float(r[name]) if r[name] not in ("", "0", "0.0") else None for r in rows_csv]

    assert drew["throughput"]["s"] == [int(r["second"]) for r in rows_csv]
    assert drew["throughput"]["req/s"] == [float(r["rps"]) for r in rows_csv]
    assert drew["throughput"]["failed/s"] == [int(r["failed"]) for r in rows_csv]
    for label, name in (("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms")):
        assert drew["latency"][label] == column(name), label
    rows = page.locator("#lg-latency-table tbody tr").all_inner_texts()
    assert rows[0].split("\t")[0] == "corrected" and rows[1].split("\t")[0] == "uncorrected"
    assert blocked == []  # not one request left the file
    browser_page.assert_no_console_errors()


def test_compare_html_overlays_the_runs_offline(browser_page: Any, runs: list[Path], tmp_path: Path) -> None:
    assert compare_main([str(runs[0]), str(runs[1]), "--out", str(tmp_path)]) == 0
    page = browser_page.page
    blocked = block_network(page)
    page.goto((tmp_path / "compare.html").as_uri())
    page.wait_for_function("document.getElementById('lg-root').dataset.finished === 'true'")
    drawn = charts_drawn(page, ["throughput", "latency", "failed", "spectrum"])
    assert all(n >= DRAWN for n in drawn.values()), drawn
    labels = page.locator("#lg-runs-table tbody tr td:first-child").all_inner_texts()
    assert labels == ["policy=round_robin", "policy=least_request"]
    # Each run's line is its own timeline.csv, second by second (read back from the charts).
    drew = page.evaluate(
        """() => Object.fromEntries(['throughput', 'failed'].map(name => {
             const plot = window.LoadgenPage.view[name].plot;
             return [name, Object.fromEntries(plot.series.map((s, i) => [s.label, plot.data[i]]))];
           }))"""
    )
    for run_dir, label in zip(runs, labels, strict=True):
        with (run_dir / "timeline.csv").open() as f:
            rows_csv = list(csv.DictReader(f))
        seconds = [int(r["second"]) for r in rows_csv]
        assert drew["throughput"]["s"][: len(seconds)] == seconds
        assert drew["throughput"][label][: len(seconds)] == [float(r["rps"]) for r in rows_csv], label
        assert drew["failed"][label][: len(seconds)] == [int(r["failed"]) for r in rows_csv], label
    assert blocked == []
    browser_page.assert_no_console_errors()
