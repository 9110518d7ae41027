"""The proxy benchmark's rules: its ratios, the error rule, p99 added, and the exact last line.

No speed is asserted (the benchmark prints ratios taken in one run); these check that a path
with errors gets no ratio but a message (a proxy answering fast 502s must not score well), and
that the last line says what the issue asks, in its order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from benchmarks import figures, proxy
from benchmarks.figures import Figures
from benchmarks.host import OpenLoopResult, WrkResult
from benchmarks.proxy import (
    AIOHTTP,
    DIRECT,
    NGINX,
    PROXY,
    OpenLoopRow,
    last_line,
    open_loop_rate,
    p99_added,
    summary,
)


def _row(name: str, rps: float, cpu_us: float, errors: int = 0) -> Figures:
    f = Figures(name)
    for i in range(3):
        f.runs.append(WrkResult(rps, 1.0, 2.0, errors if i == 2 else 0, int(rps * 3)))
        f.cpu_us.append(cpu_us)
    return f


def _open(name: str, *p99: float, errors: int = 0, kept_up: bool = True) -> OpenLoopRow:
    row = OpenLoopRow(name)
    for i, v in enumerate(p99):
        row.runs.append(
            OpenLoopResult(
                1000.0,
                1000.0,
                4000,
                errors if i == 0 else 0,
                v / 2,
                v,
                kept_up,
                None if kept_up else "behind",
            )
        )
    return row


def _clean() -> tuple[dict[str, Figures], dict[str, OpenLoopRow]]:
    rows = {
        DIRECT: _row(DIRECT, 60_000, 8.0),
        NGINX: _row(NGINX, 40_000, 20.0),
        PROXY: _row(PROXY, 20_000, 40.0),
        AIOHTTP: _row(AIOHTTP, 5_000, 120.0),
    }
    open_loop = {
        DIRECT: _open(DIRECT, 1.0, 1.2, 1.1),
        PROXY: _open(PROXY, 2.0, 2.5, 2.2),
        NGINX: _open(NGINX, 1.5, 1.4, 1.6),
    }
    return rows, open_loop


def test_the_last_line_has_the_five_figures_in_the_issues_order() -> None:
    values, messages = summary(*_clean())
    assert messages == []
    assert last_line(values) == (
        "proxy/nginx=0.50 cpu_nginx/proxy=0.50 proxy/aiohttp=4.00 p99_added_ms=1.10 nginx_p99_added_ms=0.40"
    )


def test_a_proxy_with_errors_gets_no_ratio_but_a_message() -> None:
    rows, open_loop = _clean()
    rows[PROXY] = _row(PROXY, 90_000, 5.0, errors=7)  # fast, because it answered 502s
    values, messages = summary(rows, open_loop)
    line = last_line(values)
    assert line.startswith("proxy/nginx=n/a cpu_nginx/proxy=n/a proxy/aiohttp=n/a ")
    assert "no figure for proxy/nginx: this proxy had 7 errors (socket errors or non-2xx responses)" in (
        "\n".join(messages)
    )
    assert "in round(s) 3" in messages[0]


def test_errors_of_the_reference_path_also_withhold_the_ratio() -> None:
    rows, open_loop = _clean()
    rows[NGINX] = _row(NGINX, 40_000, 20.0, errors=1)
    values, messages = summary(rows, open_loop)
    assert dict(values)["proxy/nginx"] is None and dict(values)["cpu_nginx/proxy"] is None
    assert dict(values)["proxy/aiohttp"] == pytest.approx(4.0)
    assert any("nginx proxy had 1 errors" in m for m in messages)


def test_p99_added_is_the_median_p99_minus_the_direct_median() -> None:
    value, why = p99_added(_open(PROXY, 3.0, 9.0, 4.0), _open(DIRECT, 1.0, 0.5, 2.0))
    assert why is None and value == pytest.approx(4.0 - 1.0)


@pytest.mark.parametrize(
    ("row", "expect"),
    [
        (_open(PROXY, 2.0, 2.0, errors=3), "this proxy had 3 failed, non-2xx or unsent requests"),
        (_open(PROXY, 2.0, kept_up=False), "did not keep the rate (behind)"),
        (OpenLoopRow(PROXY, failed="failed in round 1: loadgen failed (2)"), "failed in round 1"),
        (OpenLoopRow(PROXY), "was not measured"),
    ],
)
def test_an_open_loop_path_with_errors_or_a_missed_rate_has_no_p99_added(
    row: OpenLoopRow, expect: str
) -> None:
    rows, open_loop = _clean()
    open_loop[PROXY] = row
    values, messages = summary(rows, open_loop)
    assert dict(values)["p99_added_ms"] is None
    assert dict(values)["nginx_p99_added_ms"] == pytest.approx(0.4)
    assert any(expect in m for m in messages), messages


def test_the_open_loop_runs_at_half_of_the_slowest_round() -> None:
    f = Figures(PROXY)
    for rps in (24_000.0, 9_130.0, 30_000.0):  # a loaded minute in round 2
        f.runs.append(WrkResult(rps, 1.0, 2.0, 0, int(rps * 3)))
    assert open_loop_rate(f) == 4_600.0  # 9,130 / 2, to the nearest 100
    assert open_loop_rate(Figures(PROXY, failed="did not start")) == 1000.0


def test_main_end_to_end_with_fake_processes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole main() with servers, wrk and loadgen replaced: this proxy's 200-connection runs
    reset sockets, so its 200/50 figure is withheld; the rest of the last line is computed."""
    ports = iter(range(21000, 21100))
    names: dict[int, str] = {}

    def fake(name: str) -> contextlib.AbstractContextManager[int]:
        @contextlib.contextmanager
        def cm() -> Iterator[int]:
            port = next(ports)
            names[port] = name
            yield port

        return cm()

    rps = {DIRECT: 60_000.0, NGINX: 40_000.0, PROXY: 24_000.0, AIOHTTP: 6_000.0, "logged": 22_000.0}

    def fake_wrk(url: str, *, connections: int = 50, **_: object) -> WrkResult:
        name = names[int(url.rsplit(":", 1)[1].strip("/"))]
        errors = 4 if (name == PROXY and connections == 200) else 0
        return WrkResult(rps[name], 1.0, 2.0, errors, int(rps[name] * 3))

    p99 = {DIRECT: 1.0, PROXY: 1.8, NGINX: 1.3}

    def fake_open_loop(url: str, *, rate: float, **_: object) -> OpenLoopResult:
        assert rate == 12_000.0  # half this proxy's capacity (every round the same here)
        v = p99[names[int(url.rsplit(":", 1)[1].strip("/"))]]
        return OpenLoopResult(rate, rate, int(rate), 0, v / 2, v, True, None)

    monkeypatch.setattr(proxy, "static_upstream", lambda cpu: fake(DIRECT))
    monkeypatch.setattr(proxy, "nginx_proxy", lambda up, cpu: fake(NGINX))
    monkeypatch.setattr(
        proxy, "this_proxy", lambda up, cpu, **kw: fake("logged" if kw.get("access_log") else PROXY)
    )
    monkeypatch.setattr(proxy, "aiohttp_proxy", lambda up, cpu: fake(AIOHTTP))
    monkeypatch.setattr(proxy, "listener_pids", lambda port: {port})
    monkeypatch.setattr(proxy, "require_tools", lambda *n: None)
    monkeypatch.setattr(proxy, "run_open_loop", fake_open_loop)
    monkeypatch.setattr(figures, "run_wrk", fake_wrk)
    cpu = iter(float(i) for i in range(1_000_000))
    monkeypatch.setattr(figures, "cpu_seconds", lambda pids: next(cpu))
    assert proxy.main(["--rounds", "2", "--duration", "1", "--warmup", "0", "--no-image"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (
        "proxy/nginx=0.60 cpu_nginx/proxy=0.60 proxy/aiohttp=4.00 p99_added_ms=0.80 nginx_p99_added_ms=0.30"
    )
    text = "\n".join(out)
    assert "| nginx proxy | 40,000 | 40,000 | 1.00x |" in text
    assert "| this proxy | 24,000 | 24,000 | n/a: this proxy, 200 connections had 8 errors" in text
