"""The plain-data shapes that cross a boundary: between processes (``--workers``, the distributed
protocol), between the runners and the report, between the scenario actions and the report.

They are dicts, not objects, because they are pickled to the parent process or sent as JSON lines
to a coordinator; a ``TypedDict`` names every key once, so a typo in a producer or a consumer is a
type error instead of a silent zero in the report. Keys added later without a protocol or schema
change are ``NotRequired`` (an older worker does not send them) and read with ``.get``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NotRequired, Protocol, TypedDict

if TYPE_CHECKING:
    from loadgen.scenario import Action


class SecondExport(TypedDict):
    """One second of a :class:`~loadgen.histogram.Timeline`, as a worker hands it over.

    ``status`` is keyed by the code: an ``int`` in process, a ``str`` once it went through JSON
    (the distributed protocol); :func:`~loadgen.histogram.merge_exports` reads both."""

    second: int
    intended: int
    unsent: int
    dropped: NotRequired[int]  # added 2026-12-01 (bounded backlog); absent from older workers
    waited: int
    lag_max: float
    requests: int
    failed: int
    status: Mapping[int, int] | Mapping[str, int]
    errors: dict[str, int]
    backends: dict[str, int]
    hist_c: str  # HDR V2 compressed encoding, base64; "" when empty
    hist_u: str


class TimelineExport(TypedDict):
    """A whole :class:`~loadgen.histogram.Timeline` (``Timeline.export()``), per mix entry too."""

    open_loop: bool
    seconds: list[SecondExport]
    by_request: NotRequired[dict[str, TimelineExport]]


class RunStats(TypedDict, total=False):
    """What a runner counted besides the timeline (``RunResult.stats``); one per worker.

    Open loop: ``due`` .. ``scheduler_late_max_s``; closed loop: ``connections_retired``; both:
    ``connections_used`` and ``connects``."""

    due: int
    sent: int
    sent_in_time: int  # sent before the deadline (+ slack): what counts as achieved
    unsent: int
    dropped: int
    max_backlog: int
    max_connections: int
    scheduler_late_max_s: float
    connections_retired: int
    connections_used: int
    connects: int


class WorkerDone(TypedDict):
    """What a ``--workers`` process hands its parent at the end (pickled through a queue)."""

    export: TimelineExport
    elapsed_s: float
    stopped_early: bool
    stats: RunStats


class ActionResult(TypedDict, total=False):
    """A scenario action as it went (``actions`` in the report), from ``Performer.run`` plus
    when it ran."""

    at_s: float | None  # actual elapsed seconds; None: never run (the run ended first)
    planned_at_s: float
    kind: str
    target: str
    ok: bool
    detail: str


class Performer(Protocol):
    """Does a scenario's actions to the lab (``loadgen.actions.ActionRunner``; tests pass fakes).

    ``run`` blocks (a stop waits for its grace period), so it is called from a thread, and never
    raises: a failure is ``ok: False`` with the reason in ``detail``."""

    def run(self, action: Action) -> Mapping[str, object]: ...


class BucketView(TypedDict, total=False):
    """One second of one process as a tick snapshot carries it (``loadgen.record.bucket_snapshot``):
    its counts and HDR encodings so far, merged in the parent into a ``SecondRecord``."""

    second: int  # in ``recent`` entries: which second this is
    prev_hist: str
    prev_hist_u: str  # open loop
    prev_backends: dict[str, int]
    prev_requests: int
    prev_failed: int
    prev_status: Mapping[int, int] | Mapping[str, int]
    prev_errors: dict[str, int]
    prev_by_request: dict[str, BucketView]  # a mix of several requests


class Snapshot(BucketView, total=False):
    """What a runner reports at each tick (``schedule._Runner.snapshot``): cumulative counters,
    the second that just ended (the ``prev_*`` keys), earlier seconds that changed (``recent``)
    and, in open loop, the scheduler's state. Pickled to the parent with ``--workers``, sent as
    JSON by a distributed worker."""

    index: int
    completed: int
    errors: int
    failed: int
    recent: list[BucketView]
    # open loop only
    due: int
    sent: int
    backlog: int
    backlog_age_s: float
    dropped: int
    busy: int
    max_connections: int
    # a distributed run (loadgen/coordinator.py): the worker's name; why it was lost mid-run
    worker: str
    lost: str


# -- report.json (schema 2; docs/loadgen.md, "Report files") ------------------------------------

#: ``latency_ms`` and friends: ``mean``, ``p50`` .. ``p99.99``, ``max`` in ms, None without data.
Latency = dict[str, float | None]


class RateCheck(TypedDict):
    """``rate_check``: did an open-loop generator send what was asked?"""

    intended_rps: float
    achieved_rps: float
    error_pct: float
    kept_up: bool
    reason: str | None
    intended: int
    sent: int
    unsent: int
    dropped: int
    max_backlog: int
    waited_for_connection: int
    max_send_lag_ms: float
    max_scheduler_lag_ms: float


class EntrySecond(TypedDict):
    """One mix entry's figures for one second (``timeline[i].by_request[label]``)."""

    requests: int
    responses: int
    failed: int
    errors: int
    status: dict[str, int]
    errors_by_kind: dict[str, int]
    p50_ms: float | None
    p99_ms: float | None


class TimelineEntry(TypedDict):
    """One whole second of ``timeline``; the open-loop counts are None in closed loop."""

    second: int
    intended: int | None
    requests: int
    responses: int
    failed: int
    errors: int
    unsent: int | None
    dropped: int | None
    waited: int | None
    rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p99_9_ms: float | None
    max_ms: float | None
    uncorrected_p99_ms: float | None
    status: dict[str, int]
    errors_by_kind: dict[str, int]
    backends: dict[str, int]
    by_request: dict[str, EntrySecond]
    target: float | None
    workers_incomplete: NotRequired[list[str]]  # a distributed run only


class RequestTotals(TypedDict):
    """``by_request[label]``: one mix entry over the whole run."""

    method: str
    path: str
    weight: float
    requests: int
    responses: int
    failed: int
    status: dict[str, int]
    errors: dict[str, int]
    latency_ms: Latency


class MixEntry(TypedDict):
    weight: float
    method: str
    path: str
    body_size: int


#: ``stages``: a scenario stage as the reports mark it ("from" is a keyword: functional syntax).
StageMark = TypedDict(
    "StageMark",
    {
        "kind": str,
        "start_s": float,
        "end_s": float,
        "from": float,
        "to": float,
        "peak_start_s": NotRequired[float],  # a spike
        "peak_end_s": NotRequired[float],
    },
)


class Histograms(TypedDict):
    corrected: str
    uncorrected: str
    unit: str


class WorkerShare(TypedDict, total=False):
    """What one distributed worker was given: its connections; open loop also its rate."""

    connections: int
    rate: float | None
    rate_fraction: float


class FleetWorker(TypedDict):
    """``distributed.workers[i]``: one worker of a distributed run and what it measured."""

    index: int
    name: str
    address: str
    status: str  # "done" or "lost"
    lost_at_s: float | None
    reason: str | None
    share: WorkerShare
    requests: int
    responses: int
    failed: int
    rps: float
    elapsed_s: float
    latency_ms: Latency
    rate_check: RateCheck | None
    histogram: str
    seconds_missed: list[int]
    seconds_partial: list[int]
    clock_offset_ms: float
    rtt_ms: float


class Fleet(TypedDict):
    """``distributed``: the per-worker section of a distributed run (loadgen/coordinator.py)."""

    protocol: int
    expected_workers: int
    lost: list[str]
    rejected: list[str]
    workers: list[FleetWorker]


class Report(TypedDict):
    """report.json as ``loadgen.report.build_report`` writes it (schema 2)."""

    schema: int
    url: str
    method: str
    mode: str
    concurrency: int | None
    connections: int
    rate: float | None
    duration_s: float
    elapsed_s: float
    started_at: str
    workers: int
    scenario: str | None
    mix: list[MixEntry]
    requests: int
    responses: int
    failed: int
    rps: float
    rate_check: RateCheck | None
    latency_ms: Latency
    latency_uncorrected_ms: Latency
    histograms: Histograms
    status: dict[str, int]
    errors: dict[str, int]
    backends: dict[str, int]
    by_request: dict[str, RequestTotals]
    connections_used: int
    connects: int
    connections_retired: int
    stopped_early: bool
    actions: list[ActionResult]
    tags: dict[str, str]
    stages: list[StageMark]
    timeline: list[TimelineEntry]
    #: A distributed run (loadgen/coordinator.py): the per-worker section, as documented.
    distributed: NotRequired[Fleet]
