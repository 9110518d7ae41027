"""``python -m loadgen compare A/report.json B/report.json [C ...] [--out DIR]``: what changed between runs.

An experiment in this lab is almost always a pair: round robin vs least-request with a slowed
replica, before vs after a proxy change. The question is then "how much better or worse, and
where": the median rarely moves, the tail does. So the comparison is a Markdown table (stdout) of
throughput, errors and the latency percentiles with absolute and relative differences (B - A),
and ``compare-spectrum.png``, both runs' HDR percentile spectra overlaid on the same log axis.
``compare.html`` (``loadgen/report_html.py``) overlays the runs' timelines and spectra in a browser,
each run labelled by what differs between them (``--tag`` values such as ``policy=p2c``, rate,
concurrency, scenario), not by when it ran. More than two runs: one column per run, each compared
with A.

Only the reports are read, so old results directories can be compared; lower is better for every
row but throughput. Exit status: 0, or 2 with one ``loadgen compare: error: ...`` line for a
missing or unreadable report or a bad flag (nothing written then).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadgen.plots import draw_spectrum, report_spectrum, save
from loadgen.report_html import run_labels

PERCENTILE_KEYS = ("p50", "p90", "p99", "p99.9", "p99.99", "max")


class CompareError(ValueError):
    """A report that cannot be compared; shown as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CompareError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog="python -m loadgen compare",
        description="Compare loadgen reports: a Markdown table of differences (B - A) on stdout, "
        "an overlaid HDR latency spectrum, compare-spectrum.png, and compare.html (the runs overlaid).",
    )
    p.add_argument("a", metavar="A/report.json", help="the baseline run")
    p.add_argument("others", nargs="+", metavar="B/report.json", help="the run(s) compared with it")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where to write compare-spectrum.png and compare.html (default: the last run's directory)",
    )
    return p


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report.json, or a results directory holding one; raises :class:`CompareError`."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompareError(f"{p}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CompareError(f"{p}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or "timeline" not in doc or "latency_ms" not in doc:
        raise CompareError(f"{p}: not a loadgen report (no timeline / latency_ms)")
    return doc


def error_count(report: dict[str, Any]) -> int:
    """Failed requests: transport errors plus 5xx responses, whichever way the report spells it."""
    failed = report.get("failed")
    if isinstance(failed, int):
        return failed
    errors = report.get("errors")
    if isinstance(errors, int):
        return errors
    transport = sum((errors or {}).values()) if isinstance(errors, dict) else 0
    return transport + sum(int(n) for code, n in (report.get("status") or {}).items() if str(code)[:1] == "5")


def rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(metric, value in A, value in B) for every row of the table, in display order."""
    out: list[tuple[str, float | None, float | None]] = []
    ca, cb = a.get("rate_check") or {}, b.get("rate_check") or {}
    if ca or cb:
        out.append(("intended req/s", ca.get("intended_rps"), cb.get("intended_rps")))
    out += [
        ("req/s", a.get("rps"), b.get("rps")),
        ("requests", a.get("requests"), b.get("requests")),
        ("errors", error_count(a), error_count(b)),
        ("error rate %", _rate(a), _rate(b)),
    ]
    for group, label in (("latency_ms", "{} ms"), ("latency_uncorrected_ms", "{} ms uncorrected")):
        la, lb = a.get(group) or {}, b.get(group) or {}
        for key in PERCENTILE_KEYS:
            if key in la or key in lb:
                out.append((label.format(key), la.get(key), lb.get(key)))
    out += _by_request_rows(a, b)
    return out


def _by_request_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """Errors and p99 per request kind of a mix (``by_request``), for the kinds both runs sent.

    Only for a mix of several kinds: one kind's figures would repeat the rows above. This is the
    row that says "POST failures went from 8 to 0" after a proxy change, which the totals blur.
    """
    ba, bb = a.get("by_request") or {}, b.get("by_request") or {}
    kinds = [k for k in ba if k in bb]
    if len(kinds) < 2:
        return []
    out: list[tuple[str, float | None, float | None]] = []
    for k in kinds:
        ea, eb = ba[k], bb[k]
        out.append((f"errors {k}", ea.get("failed"), eb.get("failed")))
        out.append(
            (f"p99 ms {k}", (ea.get("latency_ms") or {}).get("p99"), (eb.get("latency_ms") or {}).get("p99"))
        )
    return out


def _rate(r: dict[str, Any]) -> float | None:
    requests = r.get("requests") or 0
    return round(100.0 * error_count(r) / requests, 3) if requests else None


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if float(v).is_integer():
        return f"{int(v)}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def diff(a: float | None, b: float | None) -> tuple[str, str]:
    """(B - A, relative to A) as display strings; ``-`` where it is undefined."""
    if a is None or b is None:
        return "-", "-"
    d = b - a
    absolute = ("+" if d > 0 else "") + _fmt(round(d, 3))
    if a == 0:
        return absolute, "-" if d else "0 %"
    return absolute, f"{100.0 * d / a:+.1f} %"


def _name(path: str, report: dict[str, Any]) -> str:
    p = Path(path)
    run = p.parent.name if p.name == "report.json" else p.name
    scenario = report.get("scenario")
    if isinstance(scenario, dict):
        scenario = scenario.get("name")
    return f"{run} ({scenario})" if scenario else run


def format_table(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    lines = [
        f"A: {name_a}  ",
        f"B: {name_b}",
        "",
        "| metric | A | B | B - A | change |",
        "|---|---:|---:|---:|---:|",
    ]
    for metric, va, vb in rows(a, b):
        d_abs, d_rel = diff(va, vb)
        lines.append(f"| {metric} | {_fmt(va)} | {_fmt(vb)} | {d_abs} | {d_rel} |")
    # A run whose generator fell behind measured less load than asked: say so under the numbers.
    for label, r in (("A", a), ("B", b)):
        check = r.get("rate_check") or {}
        if check and not check.get("kept_up", True):
            lines += [
                "",
                f"Warning: {label} did not keep its rate: {check.get('reason') or 'generator behind'}",
            ]
    return "\n".join(lines) + "\n"


def letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"R{i + 1}"


def format_multi(reports: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """More than two runs: a column per run, and each one's change relative to A."""
    head = [f"{letter(i)}: {n}  " for i, n in enumerate(names)]
    head[-1] = head[-1].rstrip()
    cols = [letter(i) for i in range(len(reports))]
    lines = [
        *head,
        "",
        "| metric | " + " | ".join(c if i == 0 else f"{c} | {c} vs A" for i, c in enumerate(cols)) + " |",
        "|---|" + "---:|" * (2 * len(cols) - 1),
    ]
    base = reports[0]
    per_pair = [rows(base, r) for r in reports[1:]]
    for i, (metric, va, _) in enumerate(per_pair[0]):
        cells = [_fmt(va)]
        for pair in per_pair:
            vb = pair[i][2] if i < len(pair) and pair[i][0] == metric else None
            cells += [_fmt(vb), diff(va, vb)[1]]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_spectrum(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str, out_dir: Path) -> Path:
    return write_spectra([a, b], [name_a, name_b], out_dir)


def write_spectra(reports: Sequence[dict[str, Any]], names: Sequence[str], out_dir: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    series = [
        (f"{letter(i)}: {name}", report_spectrum(r, "corrected"))
        for i, (r, name) in enumerate(zip(reports, names, strict=True))
    ]
    if not draw_spectrum(ax, series):
        ax.text(0.5, 0.5, "no responses in any run", transform=ax.transAxes, ha="center", color="tab:gray")
    ax.set_title(
        "latency by percentile (HDR): " + " vs ".join(letter(i) for i in range(len(reports))), fontsize=10
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "compare-spectrum.png"
    save(fig, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["compare"]:
        args_in = args_in[1:]
    try:
        args = _parser().parse_args(args_in)
        paths = [args.a, *args.others]
        reports = [load_report(p) for p in paths]
    except CompareError as exc:
        print(f"loadgen compare: error: {exc}", file=sys.stderr)
        return 2
    names = [_name(p, r) for p, r in zip(paths, reports, strict=True)]
    html_names = list(names)
    labels, differs = run_labels(reports)
    if differs:  # say what each run was, not only when it ran
        names = [f"{label} [{name}]" for label, name in zip(labels, names, strict=True)]
    if len(reports) == 2:
        print(format_table(reports[0], reports[1], names[0], names[1]), end="", flush=True)
    else:
        print(format_multi(reports, names), end="", flush=True)
    last = Path(paths[-1])
    out = Path(args.out) if args.out else (last if last.is_dir() else last.parent)
    try:
        path = write_spectra(reports, names, out)
        html = write_compare_html(reports, html_names, out)
    except OSError as exc:
        print(f"loadgen compare: error: cannot write the plot: {exc}", file=sys.stderr)
        return 1
    print(f"loadgen compare: spectrum plot in {path}, overlaid runs in {html}", file=sys.stderr)
    return 0


def write_compare_html(reports: Sequence[dict[str, Any]], names: Sequence[str], out_dir: Path) -> Path:
    from loadgen.report_html import compare_html

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "compare.html"
    path.write_text(compare_html(reports, names), encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
