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
from typing import Any, TypeVar

from loadgen.histogram import LatencyHistogram, SecondBucket, Timeline
from loadgen.shapes import BucketView, Snapshot

K = TypeVar("K")

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


def bucket_snapshot(tl: Timeline, second: int, into: BucketView | None = None) -> BucketView:
    """The ``prev_*`` keys of a tick snapshot: second ``second`` of ``tl`` as it stands, set in
    ``into`` (a snapshot being built) or a new view.

    Histograms travel as HDR encodings (small, picklable, exactly mergeable in the parent).
    """
    out: BucketView = {} if into is None else into
    out["prev_hist"] = ""
    out["prev_backends"] = {}
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


def recent_snapshots(tl: Timeline, upto: int, seen: dict[int, int], window: int) -> list[BucketView]:
    """Views of the seconds before ``upto`` (at most ``window`` back) whose requests changed since
    they were last sent, each with its ``second``; ``seen`` (second -> requests sent) is the
    caller's memory between ticks. Second ``upto`` itself goes out as the ``prev_*`` keys."""
    out = []
    buckets = tl.buckets
    for sec in range(max(0, upto - window), min(upto, len(buckets))):
        n = buckets[sec].requests
        if sec in seen and seen[sec] != n:
            out.append(bucket_snapshot(tl, sec, into={"second": sec}))
        seen[sec] = n
    if 0 <= upto < len(buckets):
        seen[upto] = buckets[upto].requests
    for sec in [k for k in seen if k < upto - window]:
        del seen[sec]
    return out


def _bucket_view(b: SecondBucket, open_loop: bool) -> BucketView:
    view: BucketView = {
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


def _add(into: dict[K, int], items: Mapping[K, int]) -> None:
    for k, n in items.items():
        into[k] = into.get(k, 0) + n


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def behind_note(intended: float, achieved: float, snaps: Sequence[Snapshot]) -> str:
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
    dropped = sum(s.get("dropped", 0) for s in snaps)
    if dropped:
        note += f"; {dropped:,} dropped so far (backlog full)"
    return note


def _fill(r: SecondRecord, views: Sequence[BucketView], open_loop: bool) -> None:
    """Set a record's per-second counts and latencies from every worker's view of that second."""
    hist, hist_u = LatencyHistogram(), LatencyHistogram()
    status: dict[int, int] = {}
    errors: dict[str, int] = {}
    backends: dict[str, int] = {}
    kinds: dict[str, dict[str, Any]] = {}
    requests = 0
    for v in views:
        if v.get("prev_hist"):
            hist.merge(LatencyHistogram.decode(v["prev_hist"]))
        if v.get("prev_hist_u"):
            hist_u.merge(LatencyHistogram.decode(v["prev_hist_u"]))
        _add(backends, v.get("prev_backends") or {})
        _add(status, {int(k): n for k, n in (v.get("prev_status") or {}).items()})
        _add(errors, v.get("prev_errors") or {})
        requests += v.get("prev_requests", 0)
        for label, kv in (v.get("prev_by_request") or {}).items():
            k = kinds.setdefault(label, {"requests": 0, "failed": 0, "hist": LatencyHistogram()})
            k["requests"] += kv.get("prev_requests", 0)
            k["failed"] += kv.get("prev_failed", 0)
            if kv.get("prev_hist"):
                k["hist"].merge(LatencyHistogram.decode(kv["prev_hist"]))
    r.requests = requests
    r.status = {str(k): n for k, n in sorted(status.items())}
    r.errors_by_kind = dict(sorted(errors.items()))
    r.backends = dict(sorted(backends.items()))
    r.latency_ms = {k: _r(hist.percentile_ms(_PCT[k])) for k in LATENCY_KEYS}
    r.uncorrected_p99_ms = _r(hist_u.percentile_ms(99.0)) if open_loop else None
    r.by_request = {
        label: KindSecond(
            requests=k["requests"],
            failed=k["failed"],
            p50_ms=_r(k["hist"].percentile_ms(50.0)),
            p99_ms=_r(k["hist"].percentile_ms(99.0)),
        )
        for label, k in kinds.items()
    }


class TickMerger:
    """Turns each tick's worker snapshots into the :class:`SecondRecord` of the second that ended.

    Called with the tick number ``tick`` (the record is about second ``tick - 1``) and one snapshot
    per worker; keeps the previous cumulative counters to turn them into per-second rates.
    ``target_at`` is the plan's load level function (``Plan.load_at``), for ``target``.

    Revisions: a request issued in second ``k`` may complete long after the tick that ends ``k``
    (a slow backend, a timeout). Snapshots carry, under ``recent``, the earlier seconds of the
    worker whose counts changed since its last tick (:func:`recent_snapshots`); after each call,
    :attr:`revised` holds those seconds' records again, their counts and latencies brought up to
    date, their per-interval rates (``rps``, ``errors``, ``failed``, ``note``...) as first recorded.
    The live page replaces a second it already has by its revision, so its figures converge to the
    final ones while the run goes.
    """

    def __init__(self, target_at: Callable[[float], float] | None = None, keep_s: int = 120) -> None:
        self._target_at = target_at
        self._keep_s = keep_s
        self._last: dict[int, tuple[int, int, int]] = {}  # worker -> (completed, errors, failed)
        self._last_due = 0
        self._last_sent = 0
        self._last_time: float | None = None
        self._views: dict[int, dict[int, BucketView]] = {}  # second -> worker -> its view
        self._records: dict[int, SecondRecord] = {}
        self.revised: list[SecondRecord] = []

    def __call__(self, tick: int, snaps: Sequence[Snapshot]) -> SecondRecord:
        now = perf_counter()
        since = self._last_time if self._last_time is not None else now - 1.0
        interval = max(now - since, 1e-9)
        self._last_time = now
        second = tick - 1
        completed = errors = failed = 0
        workers: list[WorkerSecond] = []
        changed: set[int] = set()
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
            self._views.setdefault(second, {})[index] = s
            for view in s.get("recent") or ():
                if view.get("second") is not None and view["second"] in self._views:
                    self._views[view["second"]][index] = view
                    changed.add(view["second"])
            if len(snaps) > 1:
                worker_hist = LatencyHistogram.decode(s["prev_hist"]) if s.get("prev_hist") else None
                workers.append(
                    WorkerSecond(
                        name=str(s.get("worker", f"worker-{index}")),
                        rps=round((c - lc) / interval, 1),
                        failed=f - lf,
                        p99_ms=_r(worker_hist.percentile_ms(99.0)) if worker_hist is not None else None,
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
        record = SecondRecord(
            second=second,
            rps=round(completed / interval, 1),
            errors=errors,
            failed=failed,
            requests=0,
            target=self._target(second),
            intended_rps=intended_rps,
            achieved_rps=achieved_rps,
            note=note,
            live=True,
            workers=workers,
        )
        _fill(record, list(self._views[second].values()), open_loop)
        self._records[second] = record
        self.revised = []
        for sec in sorted(changed - {second}):
            if sec in self._records:
                old = self._records[sec]
                _fill(old, list(self._views[sec].values()), open_loop)
                self.revised.append(old)
        for sec in [k for k in self._views if k < second - self._keep_s]:
            del self._views[sec]
            self._records.pop(sec, None)
        return record

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
