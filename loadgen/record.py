"""The per-second record: what the live line, the live page and the HTML report all show.

One :class:`SecondRecord` describes whole second ``k`` of a run (from ``k`` to ``k + 1`` s after
second 0). It is made in two ways, with the same fields and the same meaning of each:

* **live**, once a second: :class:`TickMerger` turns the tick snapshots of every worker (one per
  process, see ``schedule._Runner.snapshot``) into the record of the second that just ended. At the
  tick ending second ``k`` the requests issued during ``k`` have almost all completed, so its
  latency, status, backend and per-kind figures are close to final; ``rps``, ``errors`` and
  ``failed`` are counted by completion over the interval, which is what "right now" means
  (a request timing out after 10 s shows when it times out, not 10 s back in time).
* **final**, from report.json's ``timeline`` (:func:`records_from_report`): everything
  attributed to the second in which the request was issued, as the report does, exactly merged.

The live page, ``report.html`` and ``compare.html`` draw from a list of these (as JSON, see
:meth:`SecondRecord.to_json`) with the same JavaScript, so a chart means the same thing in each.

**The contract for other producers** (the distributed coordinator): give the live page one
``SecondRecord`` a second, in order of ``second``. The simplest way is :class:`TickMerger` over the
workers' tick snapshots (the dict ``schedule`` produces, shipped as is; ``"worker"``: an optional
name shown in the per-worker table); a producer that builds records itself fills the same fields
and, for a run with several workers, ``workers`` (one :class:`WorkerSecond` each).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from time import perf_counter
from typing import Any

from loadgen.histogram import LatencyHistogram, SecondBucket, Timeline

#: The latency figures of a second, corrected (from the intended send time) in open loop.
LATENCY_KEYS: tuple[str, ...] = ("p50", "p90", "p99", "p99.9", "max")
#: Below this share of the intended sends in an interval, or with requests waiting this long, the
#: generator is behind (the live line's BEHIND note).
BEHIND_RATIO = 0.99
BEHIND_BACKLOG_AGE_S = 0.1


@dataclass
class KindSecond:
    """One request kind of the mix (``"POST /echo"``) in one second."""

    requests: int = 0
    failed: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass
class WorkerSecond:
    """One worker's share of a second (several workers: local ``--workers`` or distributed)."""

    name: str
    rps: float
    failed: int
    p99_ms: float | None


@dataclass
class SecondRecord:
    """Whole second ``second`` of a run: the unit of the live page and of report.html.

    Counts (``requests``, ``status``, ``errors_by_kind``, ``backends``, ``by_request``) and latencies
    are those of the requests issued during the second. ``rps``, ``errors`` and ``failed`` are per
    second over it: by completion in a live record, by issue time in a final one (see the module).
    """

    second: int
    rps: float  # responses per second
    errors: int  # transport errors (connect, timeout, reset, other)
    failed: int  # transport errors + 5xx responses
    requests: int  # issued in this second and completed (responses + transport errors)
    status: dict[str, int] = field(default_factory=dict)  # status code -> count
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    backends: dict[str, int] = field(default_factory=dict)  # X-Backend-Id -> responses
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # LATENCY_KEYS, corrected
    uncorrected_p99_ms: float | None = None  # open loop: from the actual send; else None
    by_request: dict[str, KindSecond] = field(default_factory=dict)  # a mix of several kinds only
    target: float | None = None  # the scenario's level: req/s (open loop) or connections
    intended_rps: float | None = None  # open loop: sends due in the interval, per second
    achieved_rps: float | None = None  # open loop: sends made in the interval, per second
    note: str = ""  # "BEHIND: ..." when the generator could not keep the rate
    live: bool = True
    workers: list[WorkerSecond] = field(default_factory=list)  # empty for one process

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able data, the shape the page's JavaScript reads (``loadgen/static/loadgen.js``)."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# What a worker puts in its tick snapshot about the second that just ended


def bucket_snapshot(tl: Timeline, second: int) -> dict[str, Any]:
    """The ``prev_*`` keys of a tick snapshot: second ``second`` of ``tl`` as it stands.

    Histograms travel as HDR encodings (small, picklable, exactly mergeable in the parent).
    """
    out: dict[str, Any] = {"prev_hist": "", "prev_backends": {}}
    if not 0 <= second < len(tl.buckets):
        return out
    b = tl.buckets[second]
    out.update(_bucket_view(b, tl.open_loop))
    if tl.by_request:
        out["prev_by_request"] = {
            label: _bucket_view(child.buckets[second], child.open_loop) if second < len(child.buckets) else {}
            for label, child in tl.by_request.items()
        }
    return out


def _bucket_view(b: SecondBucket, open_loop: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "prev_hist": b.corrected().encode() if b.requests else "",
        "prev_backends": {k.decode("utf-8", "replace"): n for k, n in b.backends.items()},
        "prev_requests": b.requests,
        "prev_failed": b.failed,
        "prev_status": dict(b.status),
        "prev_errors": dict(b.errors),
    }
    if open_loop and b.requests:
        view["prev_hist_u"] = b.uncorrected().encode()
    return view


# ---------------------------------------------------------------------------------------------
# Merging the workers' snapshots into one record


def _add(into: dict[Any, int], items: Mapping[Any, int]) -> None:
    for k, n in items.items():
        into[k] = into.get(k, 0) + n


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def behind_note(intended: float, achieved: float, snaps: Sequence[Mapping[str, Any]]) -> str:
    """The BEHIND note for an open-loop interval, or "" when the generator kept up."""
    backlog = sum(s.get("backlog", 0) for s in snaps)
    age = max((s.get("backlog_age_s", 0.0) for s in snaps), default=0.0)
    if intended <= 0 or (achieved >= intended * BEHIND_RATIO and age < BEHIND_BACKLOG_AGE_S):
        return ""
    note = f"BEHIND: intended {intended:,.0f} req/s, achieved {achieved:,.0f} req/s"
    if backlog:
        busy = sum(s.get("busy", 0) for s in snaps)
        cap = sum(s.get("max_connections", 0) for s in snaps)
        note += f" ({backlog:,} waiting {age * 1000:.0f} ms for a connection, {busy}/{cap} busy)"
    else:
        note += " (sending late: generator CPU-bound?)"
    return note


class TickMerger:
    """Turns each tick's worker snapshots into the :class:`SecondRecord` of the second that ended.

    Called with the tick number ``tick`` (the record is about second ``tick - 1``) and one snapshot
    per worker; keeps the previous cumulative counters to turn them into per-second rates.
    ``target_at`` is the plan's load level function (``Plan.load_at``), for ``target``.
    """

    def __init__(self, target_at: Callable[[float], float] | None = None) -> None:
        self._target_at = target_at
        self._last: dict[int, tuple[int, int, int]] = {}  # worker -> (completed, errors, failed)
        self._last_due = 0
        self._last_sent = 0
        self._last_time: float | None = None

    def __call__(self, tick: int, snaps: Sequence[Mapping[str, Any]]) -> SecondRecord:
        now = perf_counter()
        since = self._last_time if self._last_time is not None else now - 1.0
        interval = max(now - since, 1e-9)
        self._last_time = now
        completed = errors = failed = 0
        hist, hist_u = LatencyHistogram(), LatencyHistogram()
        status: dict[int, int] = {}
        by_kind_errors: dict[str, int] = {}
        backends: dict[str, int] = {}
        requests = prev_failed = 0
        kinds: dict[str, dict[str, Any]] = {}
        workers: list[WorkerSecond] = []
        open_loop = any("due" in s for s in snaps)
        for i, s in enumerate(snaps):
            index = s.get("index", i)
            c, e = s["completed"], s["errors"]
            f = s.get("failed", e)
            lc, le, lf = self._last.get(index, (0, 0, 0))
            self._last[index] = (c, e, f)
            completed += c - lc
            errors += e - le
            failed += f - lf
            worker_hist = LatencyHistogram.decode(s["prev_hist"]) if s.get("prev_hist") else None
            if worker_hist is not None:
                hist.merge(worker_hist)
            if s.get("prev_hist_u"):
                hist_u.merge(LatencyHistogram.decode(s["prev_hist_u"]))
            _add(backends, s.get("prev_backends") or {})
            _add(status, {int(k): n for k, n in (s.get("prev_status") or {}).items()})
            _add(by_kind_errors, s.get("prev_errors") or {})
            requests += s.get("prev_requests", 0)
            prev_failed += s.get("prev_failed", 0)
            for label, view in (s.get("prev_by_request") or {}).items():
                k = kinds.setdefault(label, {"requests": 0, "failed": 0, "hist": LatencyHistogram()})
                k["requests"] += view.get("prev_requests", 0)
                k["failed"] += view.get("prev_failed", 0)
                if view.get("prev_hist"):
                    k["hist"].merge(LatencyHistogram.decode(view["prev_hist"]))
            if len(snaps) > 1:
                p99 = worker_hist.percentile_ms(99.0) if worker_hist is not None else None
                workers.append(
                    WorkerSecond(
                        name=str(s.get("worker", f"worker-{index}")),
                        rps=round((c - lc) / interval, 1),
                        failed=f - lf,
                        p99_ms=_r(p99),
                    )
                )
        note = ""
        intended_rps = achieved_rps = None
        if open_loop:
            due = sum(s.get("due", 0) for s in snaps)
            sent = sum(s.get("sent", 0) for s in snaps)
            intended_rps = (due - self._last_due) / interval
            achieved_rps = (sent - self._last_sent) / interval
            note = behind_note(intended_rps, achieved_rps, snaps)
            self._last_due, self._last_sent = due, sent
            intended_rps, achieved_rps = round(intended_rps, 1), round(achieved_rps, 1)
        lost = [str(s.get("worker", i)) for i, s in enumerate(snaps) if s.get("lost")]
        if lost:  # a distributed run that lost workers (loadgen/coordinator.py) says so each second
            lost_note = f"LOST {len(lost)}/{len(snaps)} workers ({', '.join(lost)})"
            note = f"{lost_note}  {note}" if note else lost_note
        second = tick - 1
        return SecondRecord(
            second=second,
            rps=round(completed / interval, 1),
            errors=errors,
            failed=failed,
            requests=requests,
            status={str(k): n for k, n in sorted(status.items())},
            errors_by_kind=dict(sorted(by_kind_errors.items())),
            backends=dict(sorted(backends.items())),
            latency_ms={k: _r(hist.percentile_ms(_PCT[k])) for k in LATENCY_KEYS},
            uncorrected_p99_ms=_r(hist_u.percentile_ms(99.0)) if open_loop else None,
            by_request={
                label: KindSecond(
                    requests=k["requests"],
                    failed=k["failed"],
                    p50_ms=_r(k["hist"].percentile_ms(50.0)),
                    p99_ms=_r(k["hist"].percentile_ms(99.0)),
                )
                for label, k in kinds.items()
            },
            target=self._target(second),
            intended_rps=intended_rps,
            achieved_rps=achieved_rps,
            note=note,
            live=True,
            workers=workers,
        )

    def _target(self, second: int) -> float | None:
        return None if self._target_at is None else round(self._target_at(second + 0.5), 3)


_PCT = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9, "max": 100.0}


# ---------------------------------------------------------------------------------------------
# The same records from a finished run's report.json


def records_from_report(report: Mapping[str, Any]) -> list[SecondRecord]:
    """report.json's ``timeline`` as final records (issue-time attribution, exact)."""
    out = []
    for e in report.get("timeline") or []:
        out.append(
            SecondRecord(
                second=e["second"],
                rps=float(e.get("rps") or 0.0),
                errors=e.get("errors", 0),
                failed=e.get("failed", 0),
                requests=e.get("requests", 0),
                status=dict(e.get("status") or {}),
                errors_by_kind={k: n for k, n in (e.get("errors_by_kind") or {}).items() if n},
                backends=dict(e.get("backends") or {}),
                latency_ms={
                    "p50": e.get("p50_ms"),
                    "p90": e.get("p90_ms"),
                    "p99": e.get("p99_ms"),
                    "p99.9": e.get("p99_9_ms"),
                    "max": e.get("max_ms"),
                },
                uncorrected_p99_ms=e.get("uncorrected_p99_ms") if report.get("mode") == "open" else None,
                by_request={
                    label: KindSecond(
                        requests=k.get("requests", 0),
                        failed=k.get("failed", 0),
                        p50_ms=k.get("p50_ms"),
                        p99_ms=k.get("p99_ms"),
                    )
                    for label, k in (e.get("by_request") or {}).items()
                }
                if len(report.get("by_request") or {}) > 1
                else {},
                target=e.get("target"),
                intended_rps=float(e["intended"]) if e.get("intended") is not None else None,
                achieved_rps=None,
                live=False,
            )
        )
    return out
