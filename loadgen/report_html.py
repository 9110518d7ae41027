"""report.html, compare.html and the live page: one template, one script, the same charts.

Three pages, one renderer (``loadgen/static/loadgen.js`` on top of the vendored uPlot):

* ``report.html``, written next to report.json by every run with ``--results-dir``: a single
  self-contained file, the uPlot library, the stylesheet, the script and the data inlined, no
  network request at all, so it opens from ``file://`` on a laptop with no connection, is attached
  to a ticket, or is archived with the results;
* ``compare.html`` (``python -m loadgen compare A B ...``): the runs overlaid, each labelled by what
  differs between them (:func:`run_labels`: tags such as ``policy=p2c``, rate, concurrency, scenario),
  not by when it ran;
* the live page of ``--dashboard`` (``loadgen/dashboard.py``): the same page fed by Server-Sent Events,
  its assets served by the dashboard instead of inlined.

What the pages read is a *document* (plain JSON): ``{"kind": "report", "meta", "records",
"actions", "summary", "spectrum"}`` where ``records`` are :class:`~loadgen.record.SecondRecord`s
(``to_json``). :func:`report_doc` builds it from report.json alone, so a report.html can be
rebuilt from an old results directory (``python -m loadgen.report_html DIR``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.record import records_from_report

if TYPE_CHECKING:
    from loadgen.config import Config
    from loadgen.plan import Plan

STATIC = Path(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"

#: Summary keys of report.json that the pages' tables show.
SUMMARY_KEYS = (
    "requests", "responses", "failed", "rps", "elapsed_s", "duration_s", "started_at", "latency_ms",
    "latency_uncorrected_ms", "status", "errors", "backends", "by_request", "rate_check", "stopped_early",
    "connections_used", "connects",
)  # fmt: skip


@cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


def _asset(path: Path) -> Callable[[], bytes]:
    return lambda: _read(path)


#: What the live page's server serves under /static/ (name -> content type, body).
STATIC_FILES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "uPlot.iife.min.js": ("text/javascript; charset=utf-8", _asset(VENDOR / "uPlot.iife.min.js")),
    "uPlot.min.css": ("text/css; charset=utf-8", _asset(VENDOR / "uPlot.min.css")),
    "loadgen.js": ("text/javascript; charset=utf-8", _asset(STATIC / "loadgen.js")),
    "loadgen.css": ("text/css; charset=utf-8", _asset(STATIC / "loadgen.css")),
}


# ---------------------------------------------------------------------------------------------
# Documents


def _mix_labels(report: Mapping[str, Any]) -> list[str]:
    by_request = report.get("by_request") or {}
    if by_request:
        return list(by_request)
    return [f"{m['method']} {m['path']}" for m in report.get("mix") or []]


def meta_from_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """What a run was: the header of every page."""
    return {
        "url": report.get("url"),
        "method": report.get("method"),
        "mode": report.get("mode"),
        "rate": report.get("rate"),
        "concurrency": report.get("concurrency"),
        "connections": report.get("connections"),
        "duration_s": report.get("duration_s"),
        "workers": report.get("workers"),
        "scenario": report.get("scenario"),
        "mix": _mix_labels(report),
        "tags": dict(report.get("tags") or {}),
        "stages": list(report.get("stages") or []),
        "planned_actions": [
            {"at_s": a.get("planned_at_s", a.get("at_s")), "kind": a.get("kind"), "target": a.get("target")}
            for a in report.get("actions") or []
        ],
        "started_at": report.get("started_at"),
    }


def meta_from_plan(config: Config, plan: Plan) -> dict[str, Any]:
    """The same header for a run that has not happened yet (the live page's first event)."""
    from loadgen.mix import labels

    open_loop = plan.mode == "open"
    stages = [
        {"kind": s.kind, "start_s": s.start, "end_s": s.end, "from": s.level_from, "to": s.level_to}
        for s in plan.stages
    ]
    methods = {r.method for r in plan.mix}
    return {
        "url": plan.url,
        "method": methods.pop() if len(methods) == 1 else "mix",
        "mode": plan.mode,
        "rate": (plan.constant if plan.constant is not None else plan.peak) if open_loop else None,
        "concurrency": None if open_loop else plan.connections,
        "connections": plan.connections,
        "duration_s": plan.duration_s,
        "workers": getattr(config, "expect_workers", None) or config.workers,  # distributed: N
        "scenario": plan.scenario,
        "mix": labels(plan.mix),
        "tags": dict(config.tags),
        "stages": stages,
        "planned_actions": [{"at_s": a.at_s, "kind": a.kind, "target": a.target} for a in plan.actions],
        "started_at": None,
    }


def _spectrum(report: Mapping[str, Any]) -> dict[str, list[list[float]]]:
    from loadgen.plots import report_spectrum

    out = {"corrected": [[p, ms] for p, ms in report_spectrum(dict(report), "corrected")]}
    if report.get("mode") == "open":
        out["uncorrected"] = [[p, ms] for p, ms in report_spectrum(dict(report), "uncorrected")]
    return out


def _workers(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A distributed run's per-worker table (``report["distributed"]``), without the histograms."""
    out = []
    for w in (report.get("distributed") or {}).get("workers") or []:
        lat = w.get("latency_ms") or {}
        out.append(
            {
                "name": w.get("name"),
                "status": w.get("status"),
                "lost_at_s": w.get("lost_at_s"),
                "requests": w.get("requests"),
                "failed": w.get("failed"),
                "rps": w.get("rps"),
                "p50_ms": lat.get("p50"),
                "p99_ms": lat.get("p99"),
            }
        )
    return out


def report_doc(report: Mapping[str, Any]) -> dict[str, Any]:
    """Everything report.html shows, from report.json alone."""
    summary = {k: report.get(k) for k in SUMMARY_KEYS}
    summary["workers"] = _workers(report)
    return {
        "kind": "report",
        "meta": meta_from_report(report),
        "records": [r.to_json() for r in records_from_report(report)],
        "actions": list(report.get("actions") or []),
        "summary": summary,
        "spectrum": _spectrum(report),
    }


#: What compare labels runs by, in this order, when their values differ between the runs.
LABEL_KEYS = ("mode", "rate", "concurrency", "connections", "scenario", "workers", "duration_s", "url", "mix")


def _label_values(report: Mapping[str, Any]) -> dict[str, str]:
    values = {f"{k}": str(v) for k, v in (report.get("tags") or {}).items()}
    for key in LABEL_KEYS:
        v = report.get(key)
        if key == "mix":
            v = "+".join(_mix_labels(report))
        values[key] = "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
    return values


def run_labels(reports: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(label per run, keys that differ): ``policy=p2c, rate=500`` from what is not the same.

    Tags come first (what the experimenter said mattered), then the load's own settings. A tag
    absent from a run counts as ``-``. Runs alike in everything are numbered ``run 1``, ``run 2``;
    labels that would still collide get ``#2``, ``#3``.
    """
    values = [_label_values(r) for r in reports]
    keys = list(dict.fromkeys(k for v in values for k in v))
    differs = [k for k in keys if len({v.get(k, "-") for v in values}) > 1]
    labels = []
    for i, v in enumerate(values):
        label = ", ".join(f"{k}={v.get(k, '-')}" for k in differs) or f"run {i + 1}"
        n, base = 2, label
        while label in labels:
            label, n = f"{base} #{n}", n + 1
        labels.append(label)
    return labels, differs


def compare_doc(reports: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    labels, differs = run_labels(reports)
    runs = []
    for report, label, name in zip(reports, labels, names, strict=True):
        doc = report_doc(report)
        doc.update(label=label, name=name)
        runs.append(doc)
    return {"kind": "compare", "differs": differs, "runs": runs}


# ---------------------------------------------------------------------------------------------
# HTML


def _json_for_script(doc: object) -> str:
    """JSON safe inside <script>: no ``</script>`` or ``<!--`` can end or confuse the element."""
    return json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")


def _page(title: str, head: str, body_scripts: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_escape(title)}</title>\n{head}\n</head>\n<body>\n"
        '<div id="lg-root"></div>\n'
        f"{body_scripts}\n</body>\n</html>\n"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _inline(doc: Mapping[str, Any], title: str, boot: str) -> str:
    css = (_read(VENDOR / "uPlot.min.css") + b"\n" + _read(STATIC / "loadgen.css")).decode("utf-8")
    js = _read(VENDOR / "uPlot.iife.min.js").decode("utf-8")
    app = _read(STATIC / "loadgen.js").decode("utf-8")
    scripts = (
        f"<script>{js}</script>\n<script>{app}</script>\n"
        f'<script type="application/json" id="lg-data">{_json_for_script(doc)}</script>\n'
        f"<script>{boot}</script>"
    )
    return _page(title, f"<style>{css}</style>", scripts)


def _title(meta: Mapping[str, Any]) -> str:
    what = meta.get("scenario") or f"{meta.get('method')} {meta.get('url')}"
    return f"loadgen: {what}"


def report_html(report: Mapping[str, Any]) -> str:
    doc = report_doc(report)
    boot = "LoadgenPage.report(document.getElementById('lg-root'), LoadgenPage.data('lg-data'));"
    return _inline(doc, _title(doc["meta"]), boot)


def compare_html(reports: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    doc = compare_doc(reports, names)
    boot = "LoadgenPage.compare(document.getElementById('lg-root'), LoadgenPage.data('lg-data'));"
    return _inline(doc, "loadgen compare: " + " vs ".join(doc_run["label"] for doc_run in doc["runs"]), boot)


def live_page(meta: Mapping[str, Any]) -> str:
    head = (
        '<link rel="stylesheet" href="/static/uPlot.min.css">\n'
        '<link rel="stylesheet" href="/static/loadgen.css">'
    )
    scripts = (
        '<script src="/static/uPlot.iife.min.js"></script>\n<script src="/static/loadgen.js"></script>\n'
        "<script>LoadgenPage.live(document.getElementById('lg-root'), '/events');</script>"
    )
    return _page(_title(meta) + " (live)", head, scripts)


def write_report_html(report: Mapping[str, Any], run_dir: str | Path) -> Path:
    from loadgen.files import write_atomic

    return write_atomic(Path(run_dir) / "report.html", report_html(report))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadgen.report_html DIR_OR_REPORT...``: (re)write report.html next to each report."""
    from loadgen.compare import CompareError, load_report

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m loadgen.report_html RESULTS_DIR_OR_REPORT_JSON...", file=sys.stderr)
        return 2
    for arg in args:
        try:
            report = load_report(arg)
        except CompareError as exc:
            print(f"loadgen.report_html: error: {exc}", file=sys.stderr)
            return 2
        p = Path(arg)
        print(write_report_html(report, p if p.is_dir() else p.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
