"""``python -m loadgen compare A/report.json B/report.json [--out DIR]``: what changed between two runs.

An experiment in this lab is almost always a pair: round robin vs least-request with a slowed
replica, before vs after a proxy change. The question is then "how much better or worse, and
where": the median rarely moves, the tail does. So the comparison is a Markdown table (stdout) of
throughput, errors and the latency percentiles with absolute and relative differences (B - A),
and ``compare-spectrum.png``, both runs' HDR percentile spectra overlaid on the same log axis.

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

PERCENTILE_KEYS = ("p50", "p90", "p99", "p99.9", "p99.99", "max")


class CompareError(ValueError):
    """A report that cannot be compared; shown as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CompareError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog="python -m loadgen compare",
        description="Compare two loadgen reports: a Markdown table of differences (B - A) on stdout "
        "and an overlaid HDR latency spectrum, compare-spectrum.png.",
    )
    p.add_argument("a", metavar="A/report.json", help="the baseline run")
    p.add_argument("b", metavar="B/report.json", help="the run compared with it")
    p.add_argument(
        "--out", metavar="DIR", help="where to write compare-spectrum.png (default: B's directory)"
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
    if isinstance(report.get("failed"), int):
        return report["failed"]
    errors = report.get("errors")
    if isinstance(errors, int):
        return errors
    transport = sum((errors or {}).values()) if isinstance(errors, dict) else 0
    return transport + sum(n for code, n in (report.get("status") or {}).items() if str(code)[:1] == "5")


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


def write_spectrum(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str, out_dir: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    series = [
        (f"A: {name_a}", report_spectrum(a, "corrected")),
        (f"B: {name_b}", report_spectrum(b, "corrected")),
    ]
    if not draw_spectrum(ax, series):
        ax.text(0.5, 0.5, "no responses in either run", transform=ax.transAxes, ha="center", color="tab:gray")
    ax.set_title("latency by percentile (HDR): A vs B", fontsize=10)
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
        a, b = load_report(args.a), load_report(args.b)
    except CompareError as exc:
        print(f"loadgen compare: error: {exc}", file=sys.stderr)
        return 2
    name_a, name_b = _name(args.a, a), _name(args.b, b)
    print(format_table(a, b, name_a, name_b), end="", flush=True)
    b_path = Path(args.b)
    out = Path(args.out) if args.out else (b_path if b_path.is_dir() else b_path.parent)
    try:
        path = write_spectrum(a, b, name_a, name_b, out)
    except OSError as exc:
        print(f"loadgen compare: error: cannot write the plot: {exc}", file=sys.stderr)
        return 1
    print(f"loadgen compare: spectrum plot in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
