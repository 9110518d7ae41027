"""PNG plots of a report: what happened second by second, and the whole run's latency spectrum.

Four files, each answering one question a reader of an experiment asks:

* ``latency.png``: how latency moved over the run (p50, p90, p99, p99.9, max per second, plus the
  uncorrected p99 dashed, whose gap to the corrected one is coordinated omission made visible);
* ``throughput.png``: responses per second against the intended rate, and errors per second by
  kind (transport errors and 5xx responses), with the scenario's actions as labelled vertical
  lines: the plot where a kill at t=10 s either shows or does not. With a mix of several
  requests, a marker per request kind and second gives its failures ("failed: POST /echo"), so
  the POSTs that must not be replayed show up against the GETs the proxy may retry;
* ``backends.png``: each backend's share of the responses per second, stacked to 100 %: a killed
  replica's band ends, a new replica's band starts, a slow one's shrinks under a smart policy;
* ``spectrum.png``: the HDR percentile spectrum of the whole run, x = 1/(1-p) on a log axis like
  HdrHistogram's plotter, so the tail (99.9 %, 99.99 %) gets as much room as the median.

All of it reads only report.json (schema v2, see ``report.py``), so plots can be redrawn from an
old results directory (``write_plots(json.load(...), dir)``). Drawing uses matplotlib's
object API on the Agg canvas (no pyplot, no display, no global state), which is safe in a
container without X and in a process that draws several reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

PLOT_FILES = ("latency.png", "throughput.png", "backends.png", "spectrum.png")
DPI = 110
# Timeline percentile series: (label, key in a timeline entry, line style).
_LATENCY_SERIES = (
    ("p50", "p50_ms", "-"),
    ("p90", "p90_ms", "-"),
    ("p99", "p99_ms", "-"),
    ("p99.9", "p99_9_ms", "-"),
    ("max", "max_ms", ":"),
    ("p99 uncorrected", "uncorrected_p99_ms", "--"),
)
# Fixed per kind, so the same failure has the same colour in every run's plot.
_ERROR_COLORS = {
    "connect": "tab:orange",
    "reset": "tab:red",
    "timeout": "tab:purple",
    "other": "tab:brown",
    "5xx": "darkred",
}
_SPECTRUM_TICKS = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999, 99.9999)


def write_plots(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Draw the four PNGs into ``out_dir`` (created if needed); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig, name in draw_plots(report):
        path = out_dir / name
        save(fig, path)
        paths.append(path)
    return paths


def draw_plots(report: Mapping[str, Any]) -> list[tuple[Figure, str]]:
    """The four figures and their file names, in :data:`PLOT_FILES` order (tests read the data
    back from their artists: what is drawn, not how many pixels are coloured)."""
    timeline = report.get("timeline") or []
    actions = report.get("actions") or []
    title = _title(report)
    drawn = [
        (_latency(timeline, actions, title), "latency.png"),
        (_throughput(timeline, actions, title), "throughput.png"),
        (_backends(timeline, actions, title), "backends.png"),
        (_spectrum([("corrected", report_spectrum(report, "corrected")),
                    ("uncorrected", report_spectrum(report, "uncorrected"))], title), "spectrum.png"),
    ]  # fmt: skip
    return drawn


def save(fig: Figure, path: Path) -> None:
    """The PNG, whole or not at all (loadgen/files.py): a full disk leaves no truncated image."""
    from loadgen.files import open_atomic

    FigureCanvasAgg(fig)
    with open_atomic(path) as f:
        fig.savefig(f, dpi=DPI, format="png")


# ---------------------------------------------------------------------------------------------
# The HDR spectrum


def report_spectrum(report: Mapping[str, Any], which: str = "corrected") -> list[tuple[float, float]]:
    """(percentile, ms) points of the run's histogram ``which`` ("corrected"/"uncorrected").

    From the base64 HDR histogram in ``report["histograms"]`` when there is one (the exact
    spectrum); else from the summary percentiles (``latency_ms`` / ``latency_uncorrected_ms``),
    which still draws the shape, with fewer points. Empty when the run had no response.
    """
    hist = (report.get("histograms") or {}).get(which)
    if hist:
        points = decode_spectrum(hist, (report.get("histograms") or {}).get("unit", "us"))
        if points:
            return points
    key = "latency_ms" if which == "corrected" else "latency_uncorrected_ms"
    summary = report.get(key) or {}
    points = []
    for name, value in summary.items():
        if value is None or not name.startswith("p"):
            continue
        try:
            points.append((float(name[1:]), float(value)))
        except ValueError:
            continue
    return sorted(points)


def decode_spectrum(
    encoded: str, unit: str = "us", ticks_per_half_distance: int = 5
) -> list[tuple[float, float]]:
    """The percentile spectrum of an ``HdrHistogram.encode()`` string, like HdrHistogram's output."""
    from hdrh.histogram import HdrHistogram

    try:
        h = HdrHistogram.decode(encoded)
    except Exception:
        return []
    if h is None or not h.get_total_count():
        return []
    scale = {"us": 1e-3, "ms": 1.0, "ns": 1e-6, "s": 1e3}.get(unit, 1e-3)
    return [
        (item.percentile_level_iterated_to, item.value_iterated_to * scale)
        for item in h.get_percentile_iterator(ticks_per_half_distance)
    ]


def spectrum_x(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """x = 1/(1-p) per point; the 100 % point (x would be infinite) sits one decade past the last."""
    xs, ys = [], []
    finite = [p for p, _ in points if p < 100.0]
    last_x = 1.0 / (1.0 - max(finite) / 100.0) if finite else 1.0
    for p, v in points:
        xs.append(1.0 / (1.0 - p / 100.0) if p < 100.0 else max(last_x * 10.0, 10.0))
        ys.append(v)
    return xs, ys


def draw_spectrum(ax: Axes, series: Iterable[tuple[str, Sequence[tuple[float, float]]]]) -> bool:
    """Draw labelled spectra on ``ax``; False when none had a point. Shared with ``compare``."""
    drawn = False
    top = 1.0
    for label, points in series:
        if not points:
            continue
        xs, ys = spectrum_x(points)
        ax.plot(xs, ys, label=label, drawstyle="steps-post" if len(xs) > 20 else "default")
        top = max(top, max(xs))
        drawn = True
    ax.set_xscale("log")
    ticks = [t for t in _SPECTRUM_TICKS if 1.0 / (1.0 - t / 100.0) <= top * 1.01]
    ax.xaxis.set_major_locator(FixedLocator([1.0 / (1.0 - t / 100.0) for t in ticks]))
    ax.set_xticklabels([f"{t:g}%" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(1.0, top * 1.1)
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="major", alpha=0.3)
    if drawn:
        ax.legend(loc="upper left")
    return drawn


def _spectrum(series: list[tuple[str, list[tuple[float, float]]]], title: str) -> Figure:
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    if not draw_spectrum(ax, series):
        _no_data(ax, "no responses: no latency spectrum")
    ax.set_title(f"latency by percentile (HDR)  {title}", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# Timelines


def _latency(timeline: list[dict[str, Any]], actions: list[dict[str, Any]], title: str) -> Figure:
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    positive: list[float] = []
    for label, key, style in _LATENCY_SERIES:
        # At the middle of its second, so points sit over the other plots' per-second bars.
        xs = [e["second"] + 0.5 for e in timeline if e.get(key) is not None]
        ys = [e[key] for e in timeline if e.get(key) is not None]
        if not xs:
            continue
        lw = 1.0 if style != "-" else 1.6
        ax.plot(xs, ys, style, label=label, linewidth=lw, marker="." if len(xs) < 30 else None)
        positive += [y for y in ys if y > 0]
        drawn = True
    if not drawn:
        _no_data(ax, "no responses: no latency")
    elif positive and max(positive) / max(min(positive), 1e-3) > 30:
        ax.set_yscale("log")  # a stall next to sub-millisecond medians: only a log axis shows both
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("second of the run (requests counted in the second they were due)")
    ax.set_ylabel("latency (ms)")
    _mark_actions(ax, actions)
    _x_range(ax, timeline)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(loc="upper left", fontsize=8, ncol=3)
    ax.set_title(f"latency per second  {title}", fontsize=10)
    return fig


def entry_errors(entry: dict[str, Any]) -> dict[str, int]:
    """Errors of one timeline second by kind: transport kinds plus ``5xx`` responses."""
    kinds = entry.get("errors_by_kind")
    if kinds is None and isinstance(entry.get("errors"), dict):  # report v1
        kinds = entry["errors"]
    out = {k: int(n) for k, n in (kinds or {}).items() if n}
    fivexx = sum(int(n) for code, n in (entry.get("status") or {}).items() if str(code)[:1] == "5")
    if fivexx:
        out["5xx"] = fivexx
    return out


def failures_by_request(timeline: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Failures per second of each request kind of a mix, when any kind had any.

    Empty for a single request (its failures are the error bars themselves), for a run without
    failures and for reports written before ``by_request`` existed. A kind without failures is
    kept (all zeros): "GET /: none" next to the POSTs' failures is the point of the plot.
    """
    kinds = list(dict.fromkeys(k for e in timeline for k in (e.get("by_request") or {})))
    if len(kinds) < 2:
        return {}
    out = {k: [(e.get("by_request") or {}).get(k, {}).get("failed", 0) for e in timeline] for k in kinds}
    return out if any(any(v) for v in out.values()) else {}


def _throughput(timeline: list[dict[str, Any]], actions: list[dict[str, Any]], title: str) -> Figure:
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    seconds = [e["second"] for e in timeline]
    rps = [e.get("rps", e.get("responses", 0)) or 0 for e in timeline]
    if timeline:
        top.bar(seconds, rps, width=0.9, align="edge", label="responses/s", color="tab:blue", alpha=0.8)
        intended = [e.get("intended") or 0 for e in timeline]
        if any(intended):
            top.step([*seconds, seconds[-1] + 1], intended + intended[-1:], where="post",
                     color="black", linewidth=1.2, label="intended/s")  # fmt: skip
        top.legend(loc="lower left", fontsize=8)
    else:
        _no_data(top, "empty timeline")
    top.set_ylabel("per second")
    top.grid(True, alpha=0.3)
    top.set_title(f"throughput and errors  {title}", fontsize=10)

    per_second = [entry_errors(e) for e in timeline]
    kinds = sorted({k for d in per_second for k in d}, key=lambda k: (k == "5xx", k))
    base = [0] * len(timeline)
    for kind in kinds:
        counts = [d.get(kind, 0) for d in per_second]
        color = _ERROR_COLORS.get(kind, "tab:gray")
        bottom.bar(seconds, counts, width=0.9, align="edge", bottom=base, label=kind, color=color)
        base = [b + c for b, c in zip(base, counts, strict=True)]
    by_request = failures_by_request(timeline)
    markers = "oXsD^v"
    for i, (label, counts) in enumerate(by_request.items()):
        xs = [s + 0.45 for s, n in zip(seconds, counts, strict=True) if n]
        ys = [n for n in counts if n]
        marker = markers[i % len(markers)]
        bottom.plot(xs, ys, linestyle="none", marker=marker, markersize=7, markerfacecolor="none",
                    color="black", label=f"failed: {label}" + ("" if ys else " (none)"))  # fmt: skip
    if kinds:
        bottom.legend(loc="upper right", fontsize=8, ncol=min(len(kinds) + len(by_request), 5))
    else:
        bottom.text(
            0.5, 0.5, "no errors", transform=bottom.transAxes, ha="center", va="center", color="tab:green"
        )
    bottom.set_ylabel("errors")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("second of the run")
    bottom.grid(True, alpha=0.3)
    _mark_actions(top, actions)
    _mark_actions(bottom, actions, labels=False)
    _x_range(bottom, timeline)
    return fig


def backend_shares(timeline: list[dict[str, Any]]) -> tuple[list[str], list[list[float]]]:
    """Backend names and, per backend, its share (%) of each second's attributed responses."""
    names = sorted({name for e in timeline for name in (e.get("backends") or {})})
    shares: list[list[float]] = [[] for _ in names]
    for e in timeline:
        counts = e.get("backends") or {}
        total = sum(counts.values())
        for i, name in enumerate(names):
            shares[i].append(100.0 * counts.get(name, 0) / total if total else 0.0)
    return names, shares


def _backends(timeline: list[dict[str, Any]], actions: list[dict[str, Any]], title: str) -> Figure:
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    names, shares = backend_shares(timeline)
    if names:
        # Steps, not interpolated lines: a second is a bucket, and a band that ends should end.
        xs = [e["second"] for e in timeline]
        xs_edges = [*xs, xs[-1] + 1]
        bottoms = [0.0] * len(xs)
        colors = _colors(len(names))
        for name, share, color in zip(names, shares, colors, strict=True):
            tops = [b + s for b, s in zip(bottoms, share, strict=True)]
            ax.stairs(tops, xs_edges, baseline=bottoms, fill=True, color=color, label=name, alpha=0.9)
            bottoms = tops
        ax.set_ylim(0, 100)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="X-Backend-Id")
    else:
        _no_data(ax, "no response carried X-Backend-Id")
    ax.set_ylabel("share of responses (%)")
    ax.set_xlabel("second of the run")
    _mark_actions(ax, actions)
    _x_range(ax, timeline)
    ax.set_title(f"backend share per second  {title}", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _mark_actions(ax: Axes, actions: list[dict[str, Any]], labels: bool = True) -> None:
    """A vertical line per scenario action, labelled ``kill backend:1`` at the top (red: failed)."""
    for a in actions:
        at = a.get("at_s")
        if at is None:
            continue
        ok = a.get("ok", True)
        color = "tab:red" if ok else "tab:gray"
        ax.axvline(at, color=color, linestyle="-" if ok else "--", linewidth=1.2, alpha=0.9)
        if labels:
            text = f"{a.get('kind', '?')} {a.get('target', '')}".strip()
            # "scale backend to 5", "policy proxy to least_request": the detail says where to.
            to = (
                re.search(r"-> (\w+)", str(a.get("detail", "")))
                if a.get("kind") in ("scale", "policy")
                else None
            )
            text += (f" to {to.group(1)}" if to else "") + ("" if ok else " (failed)")
            ax.annotate(text, xy=(at, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                        textcoords="offset points", rotation=90, va="top", ha="left", fontsize=8,
                        color=color, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none",
                                           "pad": 1})  # fmt: skip


def _x_range(ax: Axes, timeline: list[dict[str, Any]]) -> None:
    if timeline:
        ax.set_xlim(timeline[0]["second"], timeline[-1]["second"] + 1)


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="tab:gray")


def _colors(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _title(report: Mapping[str, Any]) -> str:
    parts = []
    if report.get("scenario"):
        name = report["scenario"]
        parts.append(name.get("name", "") if isinstance(name, dict) else str(name))
    if report.get("url"):
        parts.append(str(report["url"]))
    if report.get("started_at"):
        parts.append(str(report["started_at"])[:19].replace("T", " ") + " UTC")
    return "  ".join(p for p in parts if p)
