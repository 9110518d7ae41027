"""Plots drawn from a report: four real PNGs, and the numbers behind them."""

from __future__ import annotations

import csv
import io
import struct
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
from hdrh.histogram import HdrHistogram

from loadgen.plots import (
    PLOT_FILES,
    backend_shares,
    decode_spectrum,
    draw_plots,
    entry_errors,
    report_spectrum,
    write_plots,
)
from loadgen.report import format_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def histogram(values_us: list[int]) -> HdrHistogram:
    h = HdrHistogram(1, 60_000_000, 3)
    for v in values_us:
        h.record_value(v)
    return h


def synthetic_report(seconds: int = 12, kill_at: int = 5) -> dict[str, Any]:
    """A report.json (schema 2) as loadgen writes it: 3 backends, backend c killed at ``kill_at``."""
    timeline = []
    for s in range(seconds):
        resets = 4 if s == kill_at else 0
        bad = 2 if s == kill_at else 0
        backends = {"a": 30, "b": 30, "c": 0 if s > kill_at else 30}
        timeline.append({
            "second": s, "intended": 100, "requests": 100, "responses": 100 - resets, "failed": resets + bad,
            "errors": resets, "unsent": 0, "dropped": 0, "waited": 0, "rps": float(100 - resets),
            "p50_ms": 1.0 + s / 10, "p90_ms": 2.0, "p99_ms": 9.0 if s == kill_at else 3.0, "p99_9_ms": 12.0,
            "max_ms": 15.0, "uncorrected_p99_ms": 2.5,
            "status": {"200": 100 - resets - bad, "502": bad} if bad else {"200": 100},
            "errors_by_kind": {"connect": 0, "timeout": 0, "reset": resets, "other": 0},
            "backends": backends,
        })  # fmt: skip
    corrected = histogram([1000] * 900 + [5000] * 90 + [50_000] * 10)
    uncorrected = histogram([800] * 990 + [4000] * 10)
    return {
        "schema": 2,
        "url": "http://proxy:8000/",
        "scenario": "kill-replica",
        "started_at": "2026-11-25T18:00:00+00:00",
        "requests": 100 * seconds,
        "failed": 6,
        "rps": 99.5,
        "latency_ms": {"mean": 1.9, "p50": 1.0, "p90": 1.0, "p99": 5.0, "p99.9": 50.0, "max": 50.0},
        "latency_uncorrected_ms": {"p50": 0.8, "p99": 0.8, "max": 4.0},
        "histograms": {
            "corrected": corrected.encode().decode(),
            "uncorrected": uncorrected.encode().decode(),
            "unit": "us",
        },
        "actions": [
            {
                "at_s": kill_at + 0.02,
                "planned_at_s": kill_at,
                "kind": "kill",
                "target": "backend:3",
                "ok": True,
                "detail": "killed",
            }
        ],
        "timeline": timeline,
    }


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def coloured_share(path: Path) -> float:
    """Share of the image's pixels that are clearly coloured: data, not axes, text or background."""
    rgb = matplotlib.image.imread(path)[..., :3]
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.25).mean())


def test_four_pngs_of_the_figures_size(tmp_path: Path) -> None:
    paths = write_plots(synthetic_report(), tmp_path / "run")
    assert [p.name for p in paths] == list(PLOT_FILES)
    for path, (fig, _) in zip(paths, draw_plots(synthetic_report()), strict=True):
        width, height = png_size(path)
        assert (width, height) == (round(fig.get_figwidth() * 110), round(fig.get_figheight() * 110))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(PLOT_FILES)  # no temp file


# What each figure shows, read back from its artists and compared with the known input (the
# synthetic report, and the timeline.csv written from it): a plot of the wrong data fails here.


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    return {name: fig for fig, name in draw_plots(report)}


def _lines(ax: Any) -> dict[str, tuple[list[float], list[float]]]:
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}


def _bars(ax: Any) -> dict[str, tuple[list[float], list[float]]]:
    """label -> (heights, bottoms) of each bar container."""
    return {c.get_label(): ([b.get_height() for b in c], [b.get_y() for b in c]) for c in ax.containers}


def test_latency_plot_draws_each_seconds_percentiles_as_in_the_csv() -> None:
    report = synthetic_report(seconds=8, kill_at=5)
    rows = list(csv.DictReader(io.StringIO(format_csv(report))))
    (ax,) = _figures(report)["latency.png"].axes
    lines = _lines(ax)
    for label, column in (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p99_9_ms"),
                          ("max", "max_ms"), ("p99 uncorrected", "uncorrected_p99_ms")):  # fmt: skip
        xs, ys = lines[label]
        assert xs == [s + 0.5 for s in range(8)], label  # each point over the middle of its second
        assert ys == [float(r[column]) for r in rows], label
    assert lines["p50"][1] == pytest.approx([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7])  # 1 + s/10
    assert lines["p99"][1] == [3.0] * 5 + [9.0] + [3.0] * 2  # the kill second stands out


def test_throughput_plot_bars_are_the_responses_and_the_errors_by_kind() -> None:
    report = synthetic_report(seconds=8, kill_at=5)
    top, bottom = _figures(report)["throughput.png"].axes
    heights, bottoms = _bars(top)["responses/s"]
    assert heights == [100.0] * 5 + [96.0] + [100.0] * 2 and bottoms == [0.0] * 8
    xs, ys = _lines(top)["intended/s"]
    assert list(xs) == list(range(9)) and list(ys) == [100] * 9  # a step per second, closed at the end
    errors = _bars(bottom)
    assert set(errors) == {"reset", "5xx"}
    assert errors["reset"] == ([0] * 5 + [4] + [0] * 2, [0.0] * 8)
    assert errors["5xx"] == ([0] * 5 + [2] + [0] * 2, [0] * 5 + [4] + [0] * 2)  # stacked on the resets


def test_backends_plot_stacks_each_backends_share_per_second() -> None:
    report = synthetic_report(seconds=8, kill_at=5)
    (ax,) = _figures(report)["backends.png"].axes
    bands = {p.get_label(): p.get_data() for p in ax.patches}
    assert list(bands) == ["a", "b", "c"]
    third, half = 100 / 3, 50.0
    for name, before, after in (("a", third, half), ("b", third, half), ("c", third, 0.0)):
        values, edges, baseline = bands[name]
        assert list(edges) == list(range(9))
        assert [v - b for v, b in zip(values, baseline, strict=True)] == pytest.approx(
            [before] * 6 + [after] * 2
        )
    assert list(bands["c"][0]) == pytest.approx([100.0] * 8)  # the top band ends at 100 %


def test_spectrum_plot_is_the_hdr_spectrum_of_the_known_samples() -> None:
    # corrected: 900 x 1 ms, 90 x 5 ms, 10 x 50 ms; uncorrected: 990 x 0.8 ms, 10 x 4 ms
    (ax,) = _figures(synthetic_report())["spectrum.png"].axes
    lines = _lines(ax)
    for label, steps in (("corrected", ((90.0, 1.0), (99.0, 5.0), (100.0, 50.0))),
                         ("uncorrected", ((99.0, 0.8), (100.0, 4.0)))):  # fmt: skip
        xs, ys = lines[label]
        lower = 0.0
        for percentile, ms in steps:  # x = 1/(1-p): every point up to p has the value of its step
            x_max = 1 / (1 - percentile / 100) if percentile < 100 else float("inf")
            values = [y for x, y in zip(xs, ys, strict=True) if lower < x <= x_max * 1.0001]
            assert values and all(abs(y - ms) <= ms * 1e-3 for y in values), (label, percentile, values)
            lower = x_max * 1.0001


def test_an_empty_run_still_gives_four_readable_pngs(tmp_path: Path) -> None:
    report = {"timeline": [], "actions": [], "latency_ms": {"p50": None}, "histograms": {}}
    for path in write_plots(report, tmp_path):
        png_size(path)
        assert coloured_share(path) < 0.001, path.name


def test_a_v1_report_without_histograms_still_plots(tmp_path: Path) -> None:
    report = synthetic_report()
    del report["histograms"]
    for entry in report["timeline"]:
        entry["errors"] = entry.pop("errors_by_kind")  # v1 spelled the per-kind dict `errors`
    paths = write_plots(report, tmp_path)
    assert all(coloured_share(p) > 0.003 for p in paths)
    assert report_spectrum(report)[:2] == [(50.0, 1.0), (90.0, 1.0)]  # from the summary percentiles


def test_spectrum_points_come_from_the_hdr_histogram() -> None:
    report = synthetic_report()
    points = decode_spectrum(report["histograms"]["corrected"])
    percentiles = [p for p, _ in points]
    values = [v for _, v in points]
    assert percentiles == sorted(percentiles) and values == sorted(values)
    assert percentiles[-1] == 100.0 and values[-1] == pytest.approx(50.0, rel=1e-3)
    # 90 % of the samples are 1 ms, 9 % 5 ms, 1 % 50 ms: the spectrum steps at those percentiles.
    assert max(v for p, v in points if p <= 90.0) == pytest.approx(1.0, rel=1e-3)
    assert max(v for p, v in points if p <= 99.0) == pytest.approx(5.0, rel=1e-3)
    assert min(v for p, v in points if p > 99.0) == pytest.approx(50.0, rel=1e-3)
    assert report_spectrum(report, "uncorrected") != report_spectrum(report, "corrected")
    assert decode_spectrum("not base64 at all") == []


def test_backend_shares_and_errors_per_second() -> None:
    timeline = synthetic_report(seconds=8, kill_at=5)["timeline"]
    names, shares = backend_shares(timeline)
    assert names == ["a", "b", "c"]
    assert [round(x, 1) for x in shares[2]] == [33.3] * 6 + [0.0, 0.0]  # c's band ends after the kill
    assert all(round(sum(col), 6) == 100.0 for col in zip(*shares, strict=True))
    assert entry_errors(timeline[5]) == {"reset": 4, "5xx": 2}
    assert entry_errors(timeline[4]) == {}
