"""``python -m loadgen`` end to end, in process, against a server running in another thread."""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.__main__ import main

from .loadgen_server import ThreadedServer


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer() as srv:
        yield srv


def test_main_runs_prints_summary_and_writes_files(
    server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = f"http://127.0.0.1:{server.port}/"
    json_path = tmp_path / "out" / "report.json"
    rc = main(
        [url, "-c", "2", "-d", "0.5", "--json", str(json_path), "--results-dir", str(tmp_path / "res")], {}
    )
    assert rc == 0
    out, err = capsys.readouterr()
    report = json.loads(json_path.read_text())
    assert report["requests"] == report["responses"] == server.served > 0
    assert set(report["backends"]) == {"a", "b"}
    assert out.startswith("# loadgen summary") and f"| target | GET {url} |" in out
    assert f"| responses | {report['responses']} |" in out  # verbatim, no thousands separators
    (run_dir,) = (tmp_path / "res").iterdir()
    assert json.loads((run_dir / "report.json").read_text()) == report
    assert (run_dir / "summary.md").read_text() == out
    assert "results in" in err


def test_live_line_each_second_unless_quiet(server: ThreadedServer, capsys: pytest.CaptureFixture) -> None:
    url = f"http://127.0.0.1:{server.port}/"
    assert main([url, "-c", "1", "-d", "2.05"], {}) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [line[:7] for line in lines] == ["[   1s]", "[   2s]"]
    assert all("req/s" in line and "errors 0" in line and "backends a 50% b 50%" in line for line in lines)
    assert main([url, "-c", "1", "-d", "0.2", "--quiet"], {}) == 0
    assert capsys.readouterr().err == ""


def test_refused_target_writes_report_then_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    json_path = tmp_path / "r.json"
    rc = main([f"http://127.0.0.1:{port}/", "-c", "2", "-d", "0.3", "-q", "--json", str(json_path)], {})
    assert rc == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "loadgen: no request succeeded"
    report = json.loads(json_path.read_text())
    assert report["responses"] == 0
    assert report["errors"]["connect"] == report["requests"] == report["failed"] > 0


def test_open_loop_with_two_workers_writes_every_file(
    server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--workers 2 at 300 req/s: one merged report whose counts are the server's, plus csv, md, plots."""
    url = f"http://127.0.0.1:{server.port}/"
    rc = main([url, "--rate", "300", "-d", "2", "--workers", "2", "--results-dir", str(tmp_path)], {})
    out, err = capsys.readouterr()
    assert rc == 0, err
    (run_dir,) = tmp_path.iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["mode"], report["workers"], report["rate"]) == ("open", 2, 300.0)
    # The union of the two workers' schedules is the 300 req/s one; every request is accounted for.
    assert [e["intended"] for e in report["timeline"]] == [300, 300]
    assert report["requests"] == report["responses"] == server.served
    assert server.served + report["rate_check"]["unsent"] == 600 and server.served >= 590
    assert report["rate_check"]["intended_rps"] == 300.0
    assert sum(report["backends"].values()) == server.served
    assert (run_dir / "summary.md").read_text() == out
    assert (run_dir / "timeline.csv").read_text().count("\n") == 3
    pngs = sorted(run_dir.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert [line[:7] for line in err.splitlines() if line.startswith("[")] == ["[   1s]", "[   2s]"]


def test_compare_subcommand_is_wired(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare"], {}) == 2  # compare's own usage error, not "a target URL is required"
    assert "URL is required" not in capsys.readouterr().err


# -- a results folder that cannot be written (docs/loadgen.md) --------------------------------


def test_an_unwritable_results_folder_stops_the_start_with_one_line_and_sends_nothing(
    server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the folder should be")
    url = f"http://127.0.0.1:{server.port}/"
    rc = main([url, "-c", "2", "-d", "0.5", "-q", "--results-dir", str(blocker / "results")], {})
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == "" and server.served == 0  # nothing run, so nothing lost
    assert err.count("\n") == 1 and err.startswith(
        f"loadgen: error: cannot write results to {blocker}/results: "
    )


def test_a_disk_full_after_the_run_is_one_line_exit_1_and_loses_nothing_else(
    server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import loadgen.__main__ as cli
    from loadgen.files import open_atomic, write_atomic

    def full_at_csv(path: Path, text: str) -> Path:
        if path.name == "timeline.csv":  # the disk fills up after report.json, mid-write
            with open_atomic(path) as f:
                f.write(text.encode()[:10])
                raise OSError(errno.ENOSPC, "No space left on device")
        return write_atomic(path, text)

    monkeypatch.setattr(cli, "write_atomic", full_at_csv)
    url = f"http://127.0.0.1:{server.port}/"
    json_path = tmp_path / "elsewhere" / "report.json"
    rc = main(
        [url, "-c", "2", "-d", "0.3", "-q", "--json", str(json_path), "--results-dir", str(tmp_path / "res")],
        {},
    )
    out, err = capsys.readouterr()
    assert rc == 1
    (run_dir,) = (tmp_path / "res").iterdir()
    assert err == (
        f"loadgen: error: results not written to {run_dir}: timeline.csv: No space left on device "
        "(written whole: report.json)\n"
    )
    report = json.loads((run_dir / "report.json").read_text())  # whole, not truncated
    assert report["requests"] == server.served > 0
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.json"]  # no temp file, no partial csv
    assert json.loads(json_path.read_text()) == report  # --json elsewhere still written
    assert out.startswith("# loadgen summary")  # and the summary printed
