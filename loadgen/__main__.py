"""``python -m loadgen``: parse, run, report, exit; ``python -m loadgen compare A B``: compare runs.

Exit status: 0 when at least one request succeeded (a response with status < 500), 1 when none
did (``loadgen: no request succeeded``, after the report has been written, so a script notices a
dead target but still has the evidence) or when writing the report or the plots failed, 2 for a
usage error: a bad flag, a bad scenario file, scenario actions without a reachable Docker engine
(one ``loadgen: error: ...`` line, nothing run). SIGINT/SIGTERM end the run early but still drain
and report, because a run stopped by ``docker compose stop`` or Ctrl-C is usually one whose numbers
someone wants to see. An open-loop run that could not keep its rate still exits 0, but says so
in the live line, the summary, the report's ``rate_check`` and a final warning on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from loadgen.config import ConfigError, load_config
from loadgen.live import LiveLine
from loadgen.plan import make_plan
from loadgen.report import build_report, format_summary, succeeded, write_json, write_results_dir
from loadgen.run import execute
from loadgen.workers import WorkerError


def _error(message: str) -> None:
    print(f"loadgen: error: {message}", file=sys.stderr, flush=True)


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
    performer: Any = None
    if plan.actions:
        from loadgen.actions import ActionError, ActionRunner

        try:
            performer = ActionRunner()
            performer.check(plan.actions)
        except ActionError as exc:
            _error(str(exc))
            return 2
    live = None if config.quiet else LiveLine()
    try:
        outcome = execute(config, plan, on_tick=live, say=live.print if live else None, performer=performer)
    except WorkerError as exc:
        _error(str(exc))
        return 1
    if outcome.stopped_early and live:
        print(f"loadgen: stopped early after {outcome.elapsed_s:.1f} s", file=sys.stderr)
    report = build_report(config, outcome)
    print(format_summary(report), end="", flush=True)
    status = 0
    try:
        if config.json_path:
            write_json(report, config.json_path)
        if config.results_dir:
            started_at = datetime.fromisoformat(report["started_at"])
            run_dir = write_results_dir(report, config.results_dir, started_at)
            if not config.quiet:
                print(f"loadgen: results in {run_dir}", file=sys.stderr)
            try:
                from loadgen.plots import write_plots

                write_plots(report, run_dir)
            except Exception as exc:  # report.json is on disk already; say what is missing
                _error(f"plots not written to {run_dir}: {exc.__class__.__name__}: {exc}")
                status = 1
    except OSError as exc:
        _error(f"cannot write the report: {exc}")
        return 1
    rc = report["rate_check"]
    if rc is not None and not rc["kept_up"]:
        print(f"loadgen: warning: {rc['reason']}", file=sys.stderr, flush=True)
    if succeeded(report) == 0:
        print("loadgen: no request succeeded", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
