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
