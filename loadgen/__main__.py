"""``python -m loadgen``: parse, run, report, exit.

Exit status: 0 when at least one request succeeded (a response with status < 500), 1 when none
did (``loadgen: no request succeeded``, after the report has been written, so a script notices a
dead target but still has the evidence), 2 for a usage error (one ``loadgen: error: ...`` line,
nothing run). SIGINT/SIGTERM end the run early but still drain and report, because a run stopped
by ``docker compose stop`` or Ctrl-C is usually one whose numbers someone wants to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from loadgen.config import Config, ConfigError, load_config
from loadgen.live import LiveLine
from loadgen.report import build_report, format_summary, succeeded, write_json, write_results_dir
from loadgen.schedule import ClosedLoop


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when importable: against nginx on this 2-core box it gave ~85k req/s vs ~25k on asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        return None
    return uvloop.new_event_loop


async def run(config: Config, *, live: bool = True) -> dict[str, Any]:
    """Run one experiment on the current loop and return the report dict."""
    runner = ClosedLoop(config, on_tick=LiveLine() if live else None)
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, runner.stop)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
            pass
    try:
        result = await runner.run()
    finally:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    if result.stopped_early and live:
        print(f"loadgen: stopped early after {result.elapsed_s:.1f} s", file=sys.stderr)
    return build_report(config, result.timeline, result.started_at, result.elapsed_s)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The whole CLI; returns the exit status instead of exiting, so tests can call it."""
    try:
        config = load_config(argv, environ)
    except ConfigError as exc:
        print(f"loadgen: error: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        report = runner.run(run(config, live=not config.quiet))
    print(format_summary(report), end="", flush=True)
    try:
        if config.json_path:
            write_json(report, config.json_path)
        if config.results_dir:
            started_at = datetime.fromisoformat(report["started_at"])
            run_dir = write_results_dir(report, config.results_dir, started_at)
            if not config.quiet:
                print(f"loadgen: results in {run_dir}", file=sys.stderr)
    except OSError as exc:
        print(f"loadgen: error: cannot write the report: {exc}", file=sys.stderr)
        return 1
    if succeeded(report) == 0:
        print("loadgen: no request succeeded", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
