"""The run report: report.json (schema 2), timeline.csv, summary.md, and writing them to disk.

The schema is documented key by key in ``docs/loadgen.md`` ("Report files"); keys are fixed
because tests, plots, ``compare`` and scripts read them by name, and a change of meaning bumps
``schema``. In short:

* top level: what was asked (url, method, mode, concurrency, connections, rate, duration_s,
  workers, scenario) and what happened (elapsed_s, started_at, requests, responses, failed, rps);
* ``rate_check`` (open loop; null in closed loop): intended vs achieved send rate, and whether the
  generator kept up (``kept_up``) or why not (``reason``);
* ``latency_ms`` (corrected: from the intended send time, in open loop; the plain figure in closed
  loop) and ``latency_uncorrected_ms`` (from the actual send), each mean, p50 .. p99.99, max;
* ``histograms``: both HDR histograms, base64 of the standard V2 compressed encoding, so any HDR
  library (Java, Go, Rust, ``hdrh`` in Python) can decode, merge and re-plot them;
* ``status``, ``errors``, ``backends``: counts by status code, error kind, ``X-Backend-Id``;
* ``actions``: what the scenario did to the lab and when (actual elapsed seconds);
* ``timeline``: one entry per whole second, requests filed under the second they were issued in;
* ``by_request`` (top level and in each timeline entry; additive to schema 2): the same counts per
  mix entry (``"POST /echo"``), so a failure is attributed to the kind of request that failed
  (a POST that must not be replayed vs a GET the proxy may retry). A single request's entry is
  the totals.
* ``tags`` (``--tag policy=p2c``), ``stages`` (the scenario's load shape, [] without one) and each
  timeline entry's ``target`` (the load level asked for that second): additive to schema 2, for
  report.html and compare.html.

The Markdown summary (:func:`format_summary`) is both what is printed to stdout at the end and the
content of ``summary.md``, so a results directory reads the same as the terminal did.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TypedDict

from loadgen.client import ERROR_KINDS
from loadgen.config import Config
from loadgen.files import write_atomic
from loadgen.histogram import LatencyHistogram, MergedRun, SecondSummary
from loadgen.mix import labels
from loadgen.plan import Plan
from loadgen.run import Outcome
from loadgen.shapes import (
    EntrySecond,
    MixEntry,
    RateCheck,
    Report,
    RequestTotals,
    StageMark,
    TimelineEntry,
)

SCHEMA = 2
#: Open loop: the generator "kept up" when it sent within this much of the intended rate.
RATE_TOLERANCE_PCT = 1.0
#: A scheduler this late behind a due request means the process could not keep up (CPU, GC, ...).
CPU_LATE_MS = 50.0

CSV_COLUMNS = (
    "second", "intended", "requests", "responses", "failed", "errors", "unsent", "dropped", "rps",
    "p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms", "uncorrected_p99_ms",
    *(f"errors_{k}" for k in ERROR_KINDS),
)  # fmt: skip


def _errors(counts: dict[str, int]) -> dict[str, int]:
    out = {kind: counts.get(kind, 0) for kind in ERROR_KINDS}
    for kind, n in counts.items():  # never silently drop a kind this module does not know
        out.setdefault(kind, n)
    return out


def _status(counts: dict[int, int]) -> dict[str, int]:
    return {str(code): n for code, n in sorted(counts.items())}


def _entry_second(s: SecondSummary | None) -> EntrySecond:
    """One mix entry's figures for one second (a second in which it had no request: zeros)."""
    if s is None:
        s = SecondSummary(second=0)
    return {
        "requests": s.requests,
        "responses": sum(s.status.values()),
        "failed": s.failed,
        "errors": sum(s.errors.values()),
        "status": _status(s.status),
        "errors_by_kind": _errors(s.errors),
        "p50_ms": s.latency_ms.get("p50"),
        "p99_ms": s.latency_ms.get("p99"),
    }


def _timeline_entry(
    s: SecondSummary, open_loop: bool, by_request: dict[str, MergedRun], target: float | None = None
) -> TimelineEntry:
    """One second, with ``by_request``: each mix entry's own figures for it."""
    lat = s.latency_ms
    responses = sum(s.status.values())
    errors = sum(s.errors.values())
    return {
        "second": s.second,
        "intended": s.intended if open_loop else None,
        "requests": s.requests,
        "responses": responses,
        "failed": s.failed,
        "errors": errors,
        "unsent": s.unsent if open_loop else None,
        "dropped": s.dropped if open_loop else None,
        "waited": s.waited if open_loop else None,
        "rps": float(responses),
        "p50_ms": lat.get("p50"),
        "p90_ms": lat.get("p90"),
        "p99_ms": lat.get("p99"),
        "p99_9_ms": lat.get("p99.9"),
        "max_ms": lat.get("max"),
        "uncorrected_p99_ms": s.uncorrected_p99_ms,
        "status": _status(s.status),
        "errors_by_kind": _errors(s.errors),
        "backends": dict(s.backends),
        "by_request": {
            label: _entry_second(run.seconds[s.second] if s.second < len(run.seconds) else None)
            for label, run in by_request.items()
        },
        "target": target,
    }


def _stages(plan: Plan) -> list[StageMark]:
    """The scenario's stages as the reports mark them: kind, start/end seconds, levels."""
    out = []
    for st in plan.stages:
        entry: StageMark = {
            "kind": st.kind,
            "start_s": st.start,
            "end_s": st.end,
            "from": st.level_from,
            "to": st.level_to,
        }
        if st.kind == "spike":
            entry["peak_start_s"] = st.peak_start
            entry["peak_end_s"] = st.peak_end
        out.append(entry)
    return out


def _rate_check(outcome: Outcome) -> RateCheck | None:
    """Open loop: did the generator send what was asked? (wrk2 would silently send less.)"""
    plan = outcome.plan
    if plan.mode != "open":
        return None
    stats = outcome.stats
    due = sum(s.get("due", 0) for s in stats)
    sent = sum(s.get("sent", 0) for s in stats)
    in_time = sum(s.get("sent_in_time", 0) for s in stats)
    unsent = sum(s.get("unsent", 0) for s in stats)
    dropped = sum(s.get("dropped", 0) for s in stats)
    waited = sum(x.waited for x in outcome.merged.seconds)
    lag_ms = max((x.lag_max_s for x in outcome.merged.seconds), default=0.0) * 1000
    sched_ms = max((s.get("scheduler_late_max_s", 0.0) for s in stats), default=0.0) * 1000
    window = min(plan.duration_s, outcome.elapsed_s) if outcome.stopped_early else plan.duration_s
    intended_rps = due / window if window > 0 else 0.0
    achieved_rps = in_time / window if window > 0 else 0.0
    error_pct = abs(achieved_rps - intended_rps) / intended_rps * 100 if intended_rps else 0.0
    kept_up = error_pct <= RATE_TOLERANCE_PCT
    reason = None
    if not kept_up:
        causes = []
        if dropped:
            causes.append(
                f"{dropped} dropped when due: {plan.max_backlog} already waited for a connection "
                "(--max-backlog; raise --connections)"
            )
        if unsent:
            causes.append(f"{unsent} requests due but never sent before the end")
        if sent - in_time:
            causes.append(f"{sent - in_time} sent after the end")
        if waited:
            causes.append(
                f"{waited} waited for a free connection (all {plan.connections} busy: raise --connections)"
            )
        if sched_ms >= CPU_LATE_MS:
            causes.append(f"the scheduler itself ran up to {sched_ms:.0f} ms late (CPU-bound: add --workers)")
        reason = f"generator behind: intended {intended_rps:.1f} req/s, achieved {achieved_rps:.1f} req/s"
        if causes:
            reason += "; " + "; ".join(causes)
    return {
        "intended_rps": round(intended_rps, 1),
        "achieved_rps": round(achieved_rps, 1),
        "error_pct": round(error_pct, 3),
        "kept_up": kept_up,
        "reason": reason,
        "intended": due,
        "sent": sent,
        "unsent": unsent,
        "dropped": dropped,
        "max_backlog": plan.max_backlog,
        "waited_for_connection": waited,
        "max_send_lag_ms": round(lag_ms, 3),
        "max_scheduler_lag_ms": round(sched_ms, 3),
    }


def _mix(plan: Plan) -> list[MixEntry]:
    return [
        {"weight": r.weight, "method": r.method, "path": r.path, "body_size": r.body_size} for r in plan.mix
    ]


class _Totals(TypedDict):
    requests: int
    responses: int
    failed: int
    status: dict[str, int]
    errors: dict[str, int]
    backends: dict[str, int]


def _totals(run: MergedRun) -> _Totals:
    """A run's (or one mix entry's) counts summed over its seconds, as the report shows them."""
    status: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    backends: Counter[str] = Counter()
    requests = failed = 0
    for s in run.seconds:
        requests += s.requests
        failed += s.failed
        status.update(s.status)
        errors.update(s.errors)
        backends.update(s.backends)
    return {
        "requests": requests,
        "responses": sum(status.values()),
        "failed": failed,
        "status": _status(dict(status)),
        "errors": _errors(dict(errors)),
        "backends": dict(sorted(backends.items())),
    }


def _entry_runs(plan: Plan, merged: MergedRun) -> dict[str, MergedRun]:
    """Each mix entry's merged run, in mix order. A single request's is the whole run; an entry of
    a mix that got no request at all (a run shorter than its turn) gets an empty one."""
    keys = labels(plan.mix)
    if len(keys) == 1:
        return {keys[0]: merged}
    return {
        k: merged.by_request.get(k) or MergedRun(merged.open_loop, [], LatencyHistogram(), LatencyHistogram())
        for k in keys
    }


def _by_request(plan: Plan, runs: dict[str, MergedRun]) -> dict[str, RequestTotals]:
    """Per mix entry: what it is, then its counts and latency (see docs/loadgen.md)."""
    out: dict[str, RequestTotals] = {}
    for (label, run), spec in zip(runs.items(), plan.mix, strict=True):
        counts = _totals(run)
        out[label] = {
            "method": spec.method,
            "path": spec.path,
            "weight": spec.weight,
            "requests": counts["requests"],
            "responses": counts["responses"],
            "failed": counts["failed"],
            "status": counts["status"],
            "errors": counts["errors"],
            "latency_ms": run.corrected.summary_ms(),
        }
    return out


def build_report(config: Config, outcome: Outcome) -> Report:
    """The report dict described in docs/loadgen.md ("Report files")."""
    plan = outcome.plan
    merged = outcome.merged
    open_loop = plan.mode == "open"
    totals = _totals(merged)
    runs = _entry_runs(plan, merged)
    requests, responses, failed = totals["requests"], totals["responses"], totals["failed"]
    elapsed = outcome.elapsed_s
    methods = {r.method for r in plan.mix}
    report: Report = {
        "schema": SCHEMA,
        "url": plan.url,
        "method": methods.pop() if len(methods) == 1 else "mix",
        "mode": plan.mode,
        "concurrency": None if open_loop else plan.connections,
        "connections": plan.connections,
        "rate": (plan.constant if plan.constant is not None else plan.peak) if open_loop else None,
        "duration_s": plan.duration_s,
        "elapsed_s": round(elapsed, 3),
        "started_at": outcome.started_at.isoformat(),
        "workers": config.workers,
        "scenario": plan.scenario,
        "mix": _mix(plan),
        "requests": requests,
        "responses": responses,
        "failed": failed,
        "rps": round(responses / elapsed, 1) if elapsed > 0 else 0.0,
        "rate_check": _rate_check(outcome),
        "latency_ms": merged.corrected.summary_ms(),
        "latency_uncorrected_ms": merged.uncorrected.summary_ms(),
        "histograms": {
            "corrected": merged.corrected.encode(),
            "uncorrected": merged.uncorrected.encode(),
            "unit": "us",
        },
        "status": totals["status"],
        "errors": totals["errors"],
        "backends": totals["backends"],
        "by_request": _by_request(plan, runs),
        "connections_used": sum(s.get("connections_used", 0) for s in outcome.stats),
        "connects": sum(s.get("connects", 0) for s in outcome.stats),
        "connections_retired": sum(s.get("connections_retired", 0) for s in outcome.stats),
        "stopped_early": outcome.stopped_early,
        "actions": list(outcome.actions),
        "tags": dict(config.tags),
        "stages": _stages(plan),
        "timeline": [
            _timeline_entry(s, open_loop, runs, round(plan.load_at(s.second + 0.5), 3))
            for s in merged.seconds
        ],
    }
    return _with_fleet(outcome, report)


def _with_fleet(outcome: Outcome, report: Report) -> Report:
    """A distributed run (loadgen/coordinator.py): the per-worker section, in each timeline entry
    the workers whose share of that second is missing or partial, and a failed rate check when a
    worker was lost (the run measured less than was asked)."""
    fleet = outcome.distributed
    if fleet is None:
        return report
    report["workers"] = fleet["expected_workers"]
    report["distributed"] = fleet
    incomplete: dict[int, list[str]] = {}
    for w in fleet["workers"]:
        for second in sorted({*w["seconds_missed"], *w["seconds_partial"]}):
            incomplete.setdefault(second, []).append(w["name"])
    for entry in report["timeline"]:
        entry["workers_incomplete"] = incomplete.get(entry["second"], [])
    rc = report["rate_check"]
    lost = [w for w in fleet["workers"] if w["status"] == "lost"]
    if rc is not None and lost:
        what = ", ".join(f"{w['name']} at {w['lost_at_s']:.1f} s" for w in lost)
        reason = f"worker(s) lost: {what}; their share from then on is missing"
        rc["kept_up"] = False
        rc["reason"] = f"{reason}; {rc['reason']}" if rc["reason"] else reason
    return report


def _seconds(xs: list[int]) -> str:
    """``3-9 (7)``: the first and last of some seconds, and how many."""
    return f"{xs[0]}-{xs[-1]} ({len(xs)})" if xs else "-"


def _fleet_lines(r: Report) -> list[str]:
    """The "Workers" table of a distributed run: each worker's share and what it measured."""
    fleet = r.get("distributed")
    if not fleet:
        return []
    lines = [
        "",
        f"## Workers (distributed, protocol {fleet['protocol']})",
        "",
        "| worker | address | status | connections | requests | responses | failed | req/s | p50 ms | p99 ms "
        "| clock offset ms | seconds missed | seconds partial |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for w in fleet["workers"]:
        status = "done" if w["status"] == "done" else f"**LOST** at {w['lost_at_s']:.1f} s: {w['reason']}"
        lat = w["latency_ms"]
        cells = [
            w["name"], w["address"], status, w["share"]["connections"], w["requests"], w["responses"],
            w["failed"], f"{w['rps']:.1f}", _fmt_ms(lat["p50"]), _fmt_ms(lat["p99"]),
            f"{w['clock_offset_ms']:.1f}", _seconds(w["seconds_missed"]), _seconds(w["seconds_partial"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if fleet["lost"]:
        lines += ["", f"Lost during the run: {', '.join(fleet['lost'])}; the figures above lack their share "
                  "of the seconds marked (timeline: `workers_incomplete`)."]  # fmt: skip
    return lines


def succeeded(report: Report) -> int:
    """Requests that neither failed at the transport level nor got a 5xx."""
    return report["requests"] - report["failed"]


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f} %" if total else "-"


LATENCY_KEYS = ("mean", "p50", "p90", "p99", "p99.9", "p99.99", "max")


def format_summary(report: Report) -> str:
    """The end-of-run summary as Markdown (readable raw in a terminal, rendered in a PR/README).

    Counts are plain integers (no thousands separators) so a script can find a report's numbers in
    the summary text verbatim.
    """
    r = report
    open_loop = r["mode"] == "open"
    if open_loop and r["scenario"]:
        load = f"open loop, scenario rate (peak {r['rate']:g} req/s), up to {r['connections']} connections"
    elif open_loop:
        load = f"open loop, {r['rate']:g} req/s intended, up to {r['connections']} connections"
    else:
        load = f"closed loop, {r['concurrency']} connections"
    lines = [
        "# loadgen summary",
        "",
        "| run | |",
        "|---|---|",
        f"| target | {r['method']} {r['url']} |",
        f"| started | {r['started_at']} |",
    ]
    if r["scenario"]:
        lines.append(f"| scenario | {r['scenario']} |")
    lines += [
        f"| load | {load} |",
        f"| concurrency | {r['concurrency'] if r['concurrency'] is not None else '-'} |",
        f"| workers | {r['workers']} |",
        f"| duration | {r['duration_s']:g} s asked, {r['elapsed_s']:.3f} s measured |",
        f"| requests | {r['requests']} |",
        f"| responses | {r['responses']} |",
        f"| req/s | {r['rps']:.1f} |",
        f"| failed | {r['failed']} ({_pct(r['failed'], r['requests'])}) |",
    ]
    rc = r["rate_check"]
    if rc is not None:
        verdict = "kept up" if rc["kept_up"] else "**BEHIND**"
        lines += [
            "",
            "## Rate check (open loop)",
            "",
            "| intended req/s | achieved req/s | error | verdict | unsent | dropped "
            "| waited for a connection |",
            "|---:|---:|---:|---|---:|---:|---:|",
            f"| {rc['intended_rps']:.1f} | {rc['achieved_rps']:.1f} | {rc['error_pct']:.2f} % | {verdict} "
            f"| {rc['unsent']} | {rc.get('dropped', 0)} | {rc['waited_for_connection']} |",
        ]
        if rc["reason"]:
            lines += ["", rc["reason"]]
    lines += ["", "## Latency (ms)", ""]
    lines.append("| latency | " + " | ".join(LATENCY_KEYS) + " |")
    lines.append("|---|" + "---:|" * len(LATENCY_KEYS))
    corrected = r["latency_ms"]
    label = "corrected (from intended send)" if open_loop else "all responses"
    lines.append(f"| {label} | " + " | ".join(_fmt_ms(corrected[k]) for k in LATENCY_KEYS) + " |")
    if open_loop:
        unc = r["latency_uncorrected_ms"]
        lines.append(
            "| uncorrected (from actual send) | " + " | ".join(_fmt_ms(unc[k]) for k in LATENCY_KEYS) + " |"
        )
    lines += ["", "## Status", "", "| status | count |", "|---|---:|"]
    lines += [f"| {code} | {n} |" for code, n in r["status"].items()] or ["| - | 0 |"]
    lines += ["", "## Errors", "", "| kind | count |", "|---|---:|"]
    lines += [f"| {kind} | {n} |" for kind, n in r["errors"].items()]
    lines += _by_request_lines(r)
    lines += _fleet_lines(r)
    lines += ["", "## Backends (X-Backend-Id)", "", "| backend | count | % |", "|---|---:|---:|"]
    responses = r["responses"]
    lines += [f"| {name} | {n} | {_pct(n, responses)} |" for name, n in r["backends"].items()]
    missing = responses - sum(r["backends"].values())
    if missing:
        lines.append(f"| (no header) | {missing} | {_pct(missing, responses)} |")
    if not responses:
        lines.append("| - | 0 | - |")
    if r["actions"]:
        lines += [
            "",
            "## Actions",
            "",
            "| at (s) | action | target | ok | detail |",
            "|---:|---|---|---|---|",
        ]
        for a in r["actions"]:
            at = "-" if a.get("at_s") is None else f"{a['at_s']:.2f}"
            ok = "yes" if a.get("ok") else "**no**"
            lines.append(f"| {at} | {a.get('kind')} | {a.get('target')} | {ok} | {a.get('detail', '')} |")
    return "\n".join(lines) + "\n"


#: summary.md lists at most this many seconds with failures per request kind.
FAILED_SECONDS_SHOWN = 8


def failed_seconds(report: Report, label: str) -> list[tuple[int, int]]:
    """(second, failed) for each second in which mix entry ``label`` had failures."""
    out = []
    for e in report["timeline"]:
        entry = (e.get("by_request") or {}).get(label)
        n = entry["failed"] if entry else 0
        if n:
            out.append((e["second"], n))
    return out


def _by_request_lines(r: Report) -> list[str]:
    """The "By request" table: which kind of request failed, and in which seconds."""
    rows = r.get("by_request")  # absent in reports written before it existed
    if not rows:
        return []
    lines = [
        "",
        "## By request",
        "",
        "| request | weight | requests | responses | failed | 5xx | transport errors | p50 ms | p99 ms "
        "| failed in seconds (count) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, e in rows.items():
        five = sum(n for code, n in e["status"].items() if int(code) >= 500)
        transport = sum(e["errors"].values())
        secs = failed_seconds(r, label)
        where = ", ".join(f"{s} ({n})" for s, n in secs[:FAILED_SECONDS_SHOWN])
        if len(secs) > FAILED_SECONDS_SHOWN:
            where += f", ... ({len(secs)} seconds)"
        lat = e["latency_ms"]
        lines.append(
            f"| {label} | {e['weight']:g} | {e['requests']} | {e['responses']} | {e['failed']} | {five} "
            f"| {transport} | {_fmt_ms(lat['p50'])} | {_fmt_ms(lat['p99'])} | {where or '-'} |"
        )
    return lines


def format_csv(report: Report) -> str:
    """timeline.csv: the timeline's scalar columns, one ``backend:<id>`` column per backend, then
    one ``failed:<request>`` column per mix entry (``failed:POST /echo``); a distributed run ends
    with ``workers_incomplete`` (the workers whose share of the second is missing or partial)."""
    names = sorted({name for e in report["timeline"] for name in e["backends"]})
    kinds = list(report.get("by_request") or {})
    fleet = ["workers_incomplete"] if report.get("distributed") else []
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([*CSV_COLUMNS, *(f"backend:{n}" for n in names), *(f"failed:{k}" for k in kinds), *fleet])
    for e in report["timeline"]:
        row: list[object] = []
        columns: Mapping[str, object] = e
        for col in CSV_COLUMNS:
            if col.startswith("errors_"):
                row.append(e["errors_by_kind"].get(col[len("errors_") :], 0))
            else:
                v = columns[col]
                row.append("" if v is None else v)
        row += [e["backends"].get(n, 0) for n in names]
        per = e.get("by_request") or {}
        row += [per[k]["failed"] if k in per else 0 for k in kinds]
        row += [" ".join(e.get("workers_incomplete", [])) for _ in fleet]
        w.writerow(row)
    return out.getvalue()


def write_json(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write the report whole (loadgen/files.py), creating parent directories (a results path is
    often fresh)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(p, json.dumps(report, indent=2) + "\n")


def results_stamp(started_at: datetime) -> str:
    """``20261125T174500Z``: sortable, no characters that need quoting in any shell or filesystem."""
    return started_at.strftime("%Y%m%dT%H%M%SZ")


def new_run_dir(results_dir: str | os.PathLike[str], started_at: datetime) -> Path:
    """Create ``DIR/<stamp>``, never an existing one: runs started in the same second get
    ``<stamp>-2``, ``<stamp>-3``..."""
    base = Path(results_dir)
    base.mkdir(parents=True, exist_ok=True)
    stamp = results_stamp(started_at)
    run_dir = base / stamp
    n = 1
    while True:
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            n += 1
            run_dir = base / f"{stamp}-{n}"


def result_files(report: Report) -> list[tuple[str, Callable[[], str]]]:
    """The text files of a run's folder, in the order written: report.json first, so whatever
    fails later (plots), the measurements are on disk."""
    return [
        ("report.json", lambda: json.dumps(report, indent=2) + "\n"),
        ("timeline.csv", lambda: format_csv(report)),
        ("summary.md", lambda: format_summary(report)),
    ]


def write_results_dir(report: Report, results_dir: str | os.PathLike[str], started_at: datetime) -> Path:
    """Write ``DIR/<stamp>/report.json``, ``timeline.csv`` and ``summary.md``; never overwrite a run.

    Each file is written whole or not at all (loadgen/files.py); an OSError goes to the caller.
    """
    run_dir = new_run_dir(results_dir, started_at)
    for name, content in result_files(report):
        write_atomic(run_dir / name, content())
    return run_dir
