"""The ASGI benchmark's harness: its ratio and error rules, the last line, RSS parsing, commands.

No speed is asserted (the benchmark prints ratios taken in one run); these check that a run with
errors gets no ratio but a message, and that the rows and the last line say what they claim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from benchmarks import asgi, figures
from benchmarks.asgi import parse_vmrss_kib, server_command
from benchmarks.figures import Figures, cpu_ratio, format_ratios, ratio
from benchmarks.host import WrkResult


def _run(rps: float, errors: int = 0) -> WrkResult:
    return WrkResult(rps=rps, p50_ms=1.0, p99_ms=2.0, errors=errors, requests=int(rps * 3))


def _figures(name: str, *rps: float, errors: int = 0) -> Figures:
    f = Figures(name)
    for i, r in enumerate(rps):
        f.runs.append(_run(r, errors if i == 1 else 0))
        f.cpu_us.append(10.0)
    return f


def test_ratio_is_of_the_medians() -> None:
    value, why = ratio(_figures("a", 100, 300, 200), _figures("b", 50, 100, 400))
    assert why is None and value == pytest.approx(2.0)


def test_a_run_with_errors_gets_no_ratio_but_a_message_naming_it() -> None:
    value, why = ratio(_figures("asgilab raw", 100, 100, 100, errors=3), _figures("uvicorn raw", 100))
    assert value is None
    assert why == "asgilab raw had 3 errors (socket errors or non-2xx responses) in round(s) 2"
    value, why = ratio(_figures("a", 100), _figures("uvicorn raw", 100, 100, errors=1))
    assert value is None and "uvicorn raw" in str(why)


def test_a_server_that_did_not_start_or_was_not_selected_gets_no_ratio() -> None:
    dead = Figures("asgilab raw", failed="did not start")
    assert ratio(dead, _figures("b", 1)) == (None, "asgilab raw did not start")
    assert ratio(None, _figures("b", 1))[0] is None
    assert ratio(_figures("a", 1), _figures("b", 0))[1] == "b served nothing"


def test_cpu_ratio_is_the_other_servers_cpu_over_asgilabs_and_refuses_errors() -> None:
    mine, other = _figures("asgilab raw", 100), _figures("uvicorn raw", 100)
    mine.cpu_us, other.cpu_us = [10.0, 12.0, 11.0], [22.0]
    assert cpu_ratio(mine, other) == pytest.approx(2.0)
    assert cpu_ratio(_figures("a", 1, 1, errors=2), other) is None


def test_the_last_line_has_exactly_the_three_labels() -> None:
    line = format_ratios(
        [("asgilab/uvicorn", 1.234), ("asgilab/granian", None), ("fastapi_asgilab/uvicorn", 1.0)]
    )
    assert line == "asgilab/uvicorn=1.23 asgilab/granian=n/a fastapi_asgilab/uvicorn=1.00"
    assert [label for label, *_ in asgi.RATIOS] == [
        "asgilab/uvicorn",
        "asgilab/granian",
        "fastapi_asgilab/uvicorn",
    ]


def test_vmrss_is_read_in_kib() -> None:
    status = "Name:\tpython\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n"
    assert parse_vmrss_kib(status) == 12345
    with pytest.raises(ValueError):
        parse_vmrss_kib("Name:\tkthreadd\n")


def test_servers_run_one_worker_on_loopback_without_forwarded_headers() -> None:
    for server in ("uvicorn", "asgilab", "granian", "hypercorn", "gunicorn"):
        cmd = server_command(server, "benchmarks.asgi_apps:raw", 9999)  # type: ignore[arg-type]
        assert cmd[cmd.index("--workers") + 1] == "1"
        assert "benchmarks.asgi_apps:raw" in cmd, "no backend.forwarded wrapper in the benchmark"
        assert "127.0.0.1" in " ".join(cmd) and "9999" in " ".join(cmd)


def test_a_run_with_errors_prints_a_message_and_na_in_the_last_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole main() with the processes and wrk replaced: asgilab raw's runs had errors."""
    ports = iter(range(20000, 20100))
    started: dict[int, str] = {}

    @contextlib.contextmanager
    def fake_server(cmd: list[str], port: int, cpu: int | None, **_: object) -> Iterator[int]:
        target = next(arg for arg in cmd if arg.startswith("benchmarks.asgi_apps:"))
        started[port] = f"{cmd[2]} {target.rsplit(':', 1)[1]}"  # e.g. "asgilab raw"
        yield port

    def fake_wrk(url: str, *, cpu: int | None = 0, duration_s: float = 5.0, **_: object) -> WrkResult:
        name = started[int(url.rsplit(":", 1)[1].strip("/"))]
        rps = {"asgilab": 30_000.0, "uvicorn": 20_000.0, "granian": 40_000.0}.get(name.split()[0], 1.0)
        return _run(rps, errors=5 if name == "asgilab raw" else 0)

    monkeypatch.setattr(asgi, "python_server", fake_server)
    monkeypatch.setattr(figures, "run_wrk", fake_wrk)
    monkeypatch.setattr(asgi, "free_port", lambda: next(ports))
    monkeypatch.setattr(asgi, "listener_pids", lambda port: set())
    monkeypatch.setattr(figures, "cpu_seconds", lambda pids: 0.0)
    monkeypatch.setattr(asgi, "require_tools", lambda *names: None)
    assert (
        asgi.main(["--servers", "asgilab,uvicorn,granian", "--rounds", "2", "--idle-connections", "0"]) == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "asgilab/uvicorn=n/a asgilab/granian=n/a fastapi_asgilab/uvicorn=1.50"
    assert "no ratio for asgilab/uvicorn: asgilab raw had 10 errors" in "\n".join(out)
    assert any(line.startswith("| asgilab raw | 30,000 |") and "| 10 |" in line for line in out)


def test_bad_selection_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        asgi.main(["--servers", "uvicorn,daphne"])
    assert exc.value.code == 2 and "daphne" in capsys.readouterr().err
