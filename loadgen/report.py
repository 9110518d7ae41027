"""The run report: one JSON-able dict, its Markdown summary, and writing both to disk.

report.json schema, version 1. Keys are fixed: tests, docs and scripts read them by name; a change
of meaning bumps ``version``.

```
{
  "version": 1,
  "url": "http://proxy:8080/",          # as given
  "method": "GET",
  "concurrency": 50,
  "duration_s": 20.0,                   # asked for
  "elapsed_s": 20.013,                  # measured: second 0 until the last request finished
                                        #   (includes the drain after the deadline)
  "started_at": "2026-11-25T17:45:00.123456+00:00",   # ISO 8601, UTC
  "requests": 123456,                   # completed: responses + transport errors (every request sent)
  "responses": 123450,                  # HTTP responses, any status
  "failed": 6,                          # transport errors + responses with status >= 500
  "rps": 6168.6,                        # responses / elapsed_s
  "latency_ms": {"mean": .., "p50": .., "p90": .., "p99": .., "p99.9": .., "max": ..},
                                        # of responses only (any status), HDR, 3 significant
                                        #   digits; null when there was no response
  "status": {"200": 123444, "503": 6},  # status code (string) -> responses
  "errors": {"connect": 0, "timeout": 0, "reset": 0, "other": 0},   # always all four
  "backends": {"backend-1": 61722, ...},  # X-Backend-Id value -> responses; responses without
                                        #   the header are not listed (so the sum may be lower)
  "timeline": [                         # one entry per whole second since start, in order,
    {"second": 0,                       #   including seconds with nothing in them
     "requests": .., "failed": .., "status": {..}, "errors": {..4 kinds..}, "backends": {..},
     "p50_ms": .., "p99_ms": ..},       # null when no response in that second
    ...
  ]
}
```

Timeline entries count the requests SENT in that second (see ``histogram``), so the sums of the
timeline's ``requests``/``failed``/``status``/``errors``/``backends`` equal the top-level totals.

The Markdown summary (:func:`format_summary`) is both what is printed to stdout at the end and
the content of ``summary.md``, so a results directory reads the same as the terminal did.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from loadgen.client import ERROR_KINDS
from loadgen.config import Config
from loadgen.histogram import SecondBucket, Timeline

REPORT_VERSION = 1


def _backend_name(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _errors(counts: dict[str, int]) -> dict[str, int]:
    out = {kind: counts.get(kind, 0) for kind in ERROR_KINDS}
    for kind, n in counts.items():  # never silently drop a kind this module does not know
        out.setdefault(kind, n)
    return out


def _status(counts: Iterable[tuple[int, int]]) -> dict[str, int]:
    return {str(code): n for code, n in sorted(counts)}


def _backends(counts: dict[bytes, int]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for raw, n in counts.items():
        out[_backend_name(raw)] += n
    return dict(sorted(out.items()))


def _timeline_entry(b: SecondBucket) -> dict[str, Any]:
    p50, p99 = b.percentiles_ms()
    return {
        "second": b.second,
        "requests": b.requests,
        "failed": b.failed,
        "status": _status(b.status.items()),
        "errors": _errors(b.errors),
        "backends": _backends(b.backends),
        "p50_ms": p50,
        "p99_ms": p99,
    }


def build_report(
    config: Config, timeline: Timeline, started_at: datetime, elapsed_s: float
) -> dict[str, Any]:
    """Turn a finished (sealed) timeline into the report dict described in the module docstring."""
    timeline.finish()
    status: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    backends: Counter[bytes] = Counter()
    requests = failed = 0
    for b in timeline.buckets:
        requests += b.requests
        failed += b.failed
        status.update(b.status)
        errors.update(b.errors)
        backends.update(b.backends)
    responses = sum(status.values())
    return {
        "version": REPORT_VERSION,
        "url": config.url,
        "method": config.method,
        "concurrency": config.concurrency,
        "duration_s": config.duration_s,
        "elapsed_s": round(elapsed_s, 3),
        "started_at": started_at.isoformat(),
        "requests": requests,
        "responses": responses,
        "failed": failed,
        "rps": round(responses / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "latency_ms": timeline.total.summary_ms(),
        "status": _status(status.items()),
        "errors": _errors(dict(errors)),
        "backends": _backends(dict(backends)),
        "timeline": [_timeline_entry(b) for b in timeline.buckets],
    }


def succeeded(report: dict[str, Any]) -> int:
    """Requests that neither failed at the transport level nor got a 5xx."""
    return report["requests"] - report["failed"]


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f} %" if total else "-"


def format_summary(report: dict[str, Any]) -> str:
    """The end-of-run summary as Markdown (readable raw in a terminal, rendered in a PR/README).

    Counts are plain integers (no thousands separators) so a script can find a report's numbers in
    the summary text verbatim.
    """
    r = report
    lat = r["latency_ms"]
    lines = [
        "# loadgen summary",
        "",
        "| run | |",
        "|---|---|",
        f"| target | {r['method']} {r['url']} |",
        f"| started | {r['started_at']} |",
        f"| concurrency | {r['concurrency']} |",
        f"| duration | {r['duration_s']:g} s asked, {r['elapsed_s']:.3f} s measured |",
        f"| requests | {r['requests']} |",
        f"| responses | {r['responses']} |",
        f"| req/s | {r['rps']:.1f} |",
        f"| failed | {r['failed']} ({_pct(r['failed'], r['requests'])}) |",
        "",
        "## Latency (ms)",
        "",
        "| mean | p50 | p90 | p99 | p99.9 | max |",
        "|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(_fmt_ms(lat[k]) for k in ("mean", "p50", "p90", "p99", "p99.9", "max")) + " |",
        "",
        "## Status",
        "",
        "| status | count |",
        "|---|---:|",
    ]
    lines += [f"| {code} | {n} |" for code, n in r["status"].items()] or ["| - | 0 |"]
    lines += ["", "## Errors", "", "| kind | count |", "|---|---:|"]
    lines += [f"| {kind} | {n} |" for kind, n in r["errors"].items()]
    lines += ["", "## Backends (X-Backend-Id)", "", "| backend | count | % |", "|---|---:|---:|"]
    responses = r["responses"]
    lines += [f"| {name} | {n} | {_pct(n, responses)} |" for name, n in r["backends"].items()]
    missing = responses - sum(r["backends"].values())
    if missing:
        lines.append(f"| (no header) | {missing} | {_pct(missing, responses)} |")
    if not responses:
        lines.append("| - | 0 | - |")
    return "\n".join(lines) + "\n"


def write_json(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the report, creating parent directories (a results path is often fresh)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return p


def results_stamp(started_at: datetime) -> str:
    """``20261125T174500Z``: sortable, no characters that need quoting in any shell or filesystem."""
    return started_at.strftime("%Y%m%dT%H%M%SZ")


def write_results_dir(
    report: dict[str, Any], results_dir: str | os.PathLike[str], started_at: datetime
) -> Path:
    """Write ``DIR/<stamp>/report.json`` and ``summary.md``; never overwrite an earlier run.

    Two runs started in the same second get ``<stamp>-2``, ``<stamp>-3``...
    """
    base = Path(results_dir)
    base.mkdir(parents=True, exist_ok=True)
    stamp = results_stamp(started_at)
    run_dir = base / stamp
    n = 1
    while True:
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            n += 1
            run_dir = base / f"{stamp}-{n}"
    write_json(report, run_dir / "report.json")
    (run_dir / "summary.md").write_text(format_summary(report), encoding="utf-8")
    return run_dir
