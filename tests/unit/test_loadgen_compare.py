"""`python -m loadgen compare A B`: the table's numbers, the overlaid spectrum, exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.compare import diff, error_count, format_table, main, rows

from .test_loadgen_plots import PNG_SIGNATURE, coloured_share, synthetic_report

REPO = Path(__file__).resolve().parents[2]


def save(tmp_path: Path, name: str, report: dict) -> Path:
    run = tmp_path / name
    run.mkdir()
    path = run / "report.json"
    path.write_text(json.dumps(report))
    return path


def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = synthetic_report()
    b = synthetic_report()
    b.update(rps=149.25, requests=1800, failed=0)
    b["latency_ms"] = {"mean": 1.5, "p50": 1.2, "p90": 1.0, "p99": 2.5, "p99.9": 10.0, "max": 60.0}
    b["latency_uncorrected_ms"] = {"p50": 0.7}
    return save(tmp_path, "20261125T180000Z", a), save(tmp_path, "20261125T181000Z", b)


def test_table_rows_hold_both_values_and_the_differences(tmp_path: Path) -> None:
    a_path, b_path = two_runs(tmp_path)
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    table = {metric: (va, vb) for metric, va, vb in rows(a, b)}
    assert table["req/s"] == (99.5, 149.25)
    assert table["errors"] == (6, 0)
    assert table["error rate %"] == (0.5, 0.0)  # 6 of 1200
    assert table["p99 ms"] == (5.0, 2.5) and table["max ms"] == (50.0, 60.0)
    assert table["p99 ms uncorrected"] == (0.8, None)  # B has no uncorrected figures: shown as -
    text = format_table(a, b, "A-run", "B-run")
    assert "| req/s | 99.5 | 149.25 | +49.75 | +50.0 % |" in text
    assert "| p99 ms | 5 | 2.5 | -2.5 | -50.0 % |" in text
    assert "| errors | 6 | 0 | -6 | -100.0 % |" in text
    assert "| p99 ms uncorrected | 0.8 | - | - | - |" in text
    assert text.startswith("A: A-run  \nB: B-run\n")


def test_a_mix_gets_errors_and_p99_per_request_kind(tmp_path: Path) -> None:
    def entry(failed: int, p99: float) -> dict:
        return {"failed": failed, "latency_ms": {"p99": p99}}

    a, b = synthetic_report(), synthetic_report()
    a["by_request"] = {"POST /echo": entry(8, 21.0), "GET /": entry(0, 20.0)}
    b["by_request"] = {"POST /echo": entry(0, 22.0), "GET /": entry(0, 19.0), "PUT /x": entry(1, 5.0)}
    table = rows(a, b)
    kinds = [(m, va, vb) for m, va, vb in table if m.endswith(("POST /echo", "GET /", "PUT /x"))]
    assert kinds == [
        ("errors POST /echo", 8, 0), ("p99 ms POST /echo", 21.0, 22.0),
        ("errors GET /", 0, 0), ("p99 ms GET /", 20.0, 19.0),
    ], "kinds both runs sent, in A's order"  # fmt: skip
    assert "| errors POST /echo | 8 | 0 | -8 | -100.0 % |" in format_table(a, b)
    a["by_request"] = {"GET /": entry(0, 20.0)}  # a single request: its rows would repeat the totals
    b["by_request"] = {"GET /": entry(0, 19.0)}
    assert not [m for m, _, _ in rows(a, b) if m.endswith("GET /")]


def test_diff_edge_cases() -> None:
    assert diff(0, 0) == ("0", "0 %")
    assert diff(0, 3) == ("+3", "-")  # no relative change from zero
    assert diff(None, 3) == ("-", "-")
    assert diff(4, 3) == ("-1", "-25.0 %")


def test_error_count_reads_failed_or_the_parts() -> None:
    assert error_count({"failed": 7}) == 7
    assert error_count({"errors": {"reset": 2, "connect": 1}, "status": {"200": 5, "502": 4}}) == 7


def test_main_prints_the_table_and_writes_the_overlaid_spectrum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_path, b_path = two_runs(tmp_path)
    assert main([str(a_path), str(b_path)]) == 0
    out = capsys.readouterr().out
    assert "A: 20261125T180000Z (kill-replica)" in out and "| p50 ms | 1 | 1.2 | +0.2 | +20.0 % |" in out
    plot = b_path.parent / "compare-spectrum.png"  # default: next to the last report
    assert plot.read_bytes()[:8] == PNG_SIGNATURE and coloured_share(plot) > 0.003
    # --out, and a results directory instead of its report.json.
    assert main(["compare", str(a_path.parent), str(b_path.parent), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare-spectrum.png").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ('{"rps": 1}', "not a loadgen report"),
    ],
)
def test_bad_reports_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    a_path, _ = two_runs(tmp_path)
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert main([str(a_path), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"loadgen compare: error: {bad}: {expected}")
    assert not (a_path.parent / "compare-spectrum.png").exists()


def test_cli_entry_point(tmp_path: Path) -> None:
    a_path, b_path = two_runs(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "loadgen", "compare", str(a_path), str(b_path)],
                        cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "| metric | A | B | B - A | change |" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "loadgen", "compare", str(a_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("loadgen compare: error: ")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_intended_rate_row_and_a_warning_when_a_run_fell_behind(tmp_path: Path) -> None:
    a_path, b_path = two_runs(tmp_path)
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    a["rate_check"] = {"intended_rps": 300.0, "kept_up": True, "reason": None}
    b["rate_check"] = {
        "intended_rps": 300.0,
        "kept_up": False,
        "reason": "generator behind: intended 300.0 req/s",
    }
    text = format_table(a, b)
    assert "| intended req/s | 300 | 300 | 0 | +0.0 % |" in text
    assert text.rstrip().endswith("Warning: B did not keep its rate: generator behind: intended 300.0 req/s")
    assert "Warning: A" not in text
