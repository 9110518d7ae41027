"""``python -m loadgen``: parse, run, report, exit; ``python -m loadgen compare A B``: compare runs.

Exit status: 0 when at least one request succeeded (a response with status < 500), 1 when none
did (``loadgen: no request succeeded``, after the report has been written, so a script notices a
dead target but still has the evidence) or when writing the report or the plots failed, 2 for a
usage error: a bad flag, a bad scenario file, scenario actions without a reachable Docker engine
(one ``loadgen: error: ...`` line, nothing run). SIGINT/SIGTERM end the run early but still drain
and report, because a run stopped by ``docker compose stop`` or Ctrl-C is usually one whose numbers
someone wants to see. An open-loop run that could not keep its rate still exits 0, but says so
in the live line, the summary, the report's ``rate_check`` and a final warning on stderr.

Distributed runs (``--coordinator``/``--worker``, loadgen/coordinator.py and loadgen/worker.py):
2 also when nothing was measured: fewer than ``--expect-workers`` workers joined within
``--join-timeout``, no coordinator reachable, a coordinator or worker of another protocol version;
a worker exits 1 when it lost its coordinator mid-run. A coordinator that lost workers mid-run
still reports (exit 0 if anything succeeded) and ends with a warning naming them.

Each tick's worker snapshots are merged once into a :class:`~loadgen.record.SecondRecord`, which
both the live line and the live page (``--dashboard``) show; the page gets the final report too,
then stops, so a run watched in a browser still exits on its own. Every report on disk gets its
``report.html`` beside it (``loadgen/report_html.py``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from loadgen.config import ConfigError, load_config
from loadgen.coordinator import CoordinatorError, coordinate
from loadgen.files import check_writable, write_atomic
from loadgen.live import LiveLine
from loadgen.plan import make_plan
from loadgen.record import SecondRecord, TickMerger
from loadgen.report import build_report, format_summary, new_run_dir, result_files, succeeded, write_json
from loadgen.run import execute
from loadgen.shapes import Performer, Report, Snapshot
from loadgen.workers import WorkerError

if TYPE_CHECKING:  # imported when --dashboard asks for it
    from loadgen.dashboard import Dashboard


def _error(message: str) -> None:
    print(f"loadgen: error: {message}", file=sys.stderr, flush=True)


def _publisher(dashboard: Dashboard | None) -> Callable[[int, SecondRecord], None] | None:
    if dashboard is None:
        return None

    def publish(tick: int, record: SecondRecord) -> None:
        dashboard.publish(record)

    return publish


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _write_json_file(report: Report, path: str) -> int:
    """``--json FILE`` and ``FILE`` with ``.html`` beside it; 1 (said once) if either failed."""
    from loadgen.report_html import report_html

    try:
        write_json(report, path)
    except OSError as exc:
        _error(f"cannot write the report to {path}: {_why(exc)}")
        return 1
    html = Path(path).with_suffix(".html")
    try:
        write_atomic(html, report_html(report))
    except Exception as exc:  # report.json is on disk already; say what is missing
        _error(f"{html} not written: {exc.__class__.__name__}: {exc}")
        return 1
    return 0


def _write_results(report: Report, results_dir: str, quiet: bool) -> int:
    """``DIR/<stamp>/``: the text files, report.html, the plots; each whole or absent.

    A folder that fails (read-only now, disk full) gets ONE message naming it, what failed and
    what was written whole, and exit status 1; the summary was printed already and ``--json`` is
    written apart, so nothing else is lost. A bug in the plots (not an OSError) leaves the other
    files and says so."""
    from loadgen.report_html import write_report_html

    run_dir: Path | None = None
    step = results_dir
    try:
        run_dir = new_run_dir(results_dir, datetime.fromisoformat(report["started_at"]))
        for step, content in result_files(report):
            write_atomic(run_dir / step, content())
        step = "report.html"
        write_report_html(report, run_dir)
        if not quiet:
            print(f"loadgen: results in {run_dir}", file=sys.stderr)
        step = "plots"
        from loadgen.plots import write_plots

        write_plots(report, run_dir)
    except OSError as exc:
        where = run_dir or Path(results_dir)
        written = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) if run_dir else []
        if run_dir is not None and not written:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        kept = f"written whole: {', '.join(written)}" if written else "the summary above is all of this run"
        _error(f"results not written to {where}: {step}: {_why(exc)} ({kept})")
        return 1
    except Exception as exc:  # report.json is on disk already; say what is missing
        _error(f"{step} not written to {run_dir}: {exc.__class__.__name__}: {exc}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The whole CLI; returns the exit status instead of exiting, so tests can call it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        from loadgen.compare import main as compare_main

        return compare_main(args[1:])
    try:
        config = load_config(args, environ)
    except ConfigError as exc:
        _error(str(exc))
        return 2
    if config.worker_of is not None:
        from loadgen.worker import main as worker_main

        return worker_main(config)
    scenario = None
    if config.scenario_path:
        from loadgen.scenario import ScenarioError, load_scenario

        try:
            scenario = load_scenario(config.scenario_path)
        except ScenarioError as exc:
            _error(str(exc))
            return 2
    try:
        plan = make_plan(config, scenario)
    except ConfigError as exc:
        _error(str(exc))
        return 2
    if config.results_dir:
        try:  # before the run: a folder that cannot take the results costs nothing yet
            check_writable(config.results_dir)
        except OSError as exc:
            _error(f"cannot write results to {config.results_dir}: {_why(exc)}")
            return 1
    performer: Performer | None = None
    if plan.actions:
        from loadgen.actions import ActionError, ActionRunner

        try:
            performer = ActionRunner()
            performer.check(plan.actions)
        except ActionError as exc:
            _error(str(exc))
            return 2
    live = None if config.quiet else LiveLine()
    dashboard: Dashboard | None = None
    if config.dashboard is not None:
        from loadgen.dashboard import Dashboard
        from loadgen.report_html import meta_from_plan

        try:
            dashboard = Dashboard(*config.dashboard, meta_from_plan(config, plan))
            url = dashboard.start()
        except OSError as exc:
            _error(f"--dashboard {config.dashboard[0]}:{config.dashboard[1]}: cannot listen: {exc}")
            return 2
        print(f"loadgen: live page on {url}", file=sys.stderr, flush=True)
    sinks = [s for s in (live.show if live else None, _publisher(dashboard)) if s is not None]
    merge = TickMerger(plan.load_at)

    def on_tick(tick: int, snaps: Sequence[Snapshot]) -> None:
        record = merge(tick, snaps)
        for sink in sinks:
            sink(tick, record)
        if dashboard is not None:  # earlier seconds that late responses changed
            for revised in merge.revised:
                dashboard.publish(revised)

    extra = {"on_action": dashboard.action} if dashboard is not None else {}
    try:
        run_plan = execute if config.coordinator is None else coordinate
        outcome = run_plan(
            config,
            plan,
            on_tick=on_tick if sinks else None,
            say=live.print if live else None,
            performer=performer,
            **extra,
        )
    except BaseException as exc:
        if dashboard is not None:  # the run failed: stop the page's server before saying so
            dashboard.close()
        if isinstance(exc, WorkerError):
            _error(str(exc))
            return 1
        if isinstance(exc, CoordinatorError):
            _error(str(exc))
            return exc.status
        raise
    if outcome.stopped_early and live:
        print(f"loadgen: stopped early after {outcome.elapsed_s:.1f} s", file=sys.stderr)
    report = build_report(config, outcome)
    if dashboard is not None:
        dashboard.finish(report)
        dashboard.close()
    print(format_summary(report), end="", flush=True)
    status = 0
    if config.json_path:  # each output apart: one that fails does not cost the other
        status = max(status, _write_json_file(report, config.json_path))
    if config.results_dir:
        status = max(status, _write_results(report, config.results_dir, config.quiet))
    rc = report["rate_check"]
    if rc is not None and not rc["kept_up"]:
        print(f"loadgen: warning: {rc['reason']}", file=sys.stderr, flush=True)
    fleet = report.get("distributed")
    if fleet and fleet["lost"]:
        lost = ", ".join(f"{w['name']} at {w['lost_at_s']:.1f} s" for w in fleet["workers"] if w["lost_at_s"])
        print(f"loadgen: warning: workers lost during the run: {lost}", file=sys.stderr, flush=True)
    if succeeded(report) == 0:
        print("loadgen: no request succeeded", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
