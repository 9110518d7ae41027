"""``python -m loadgen --worker HOST[:PORT]``: one worker of a distributed run (see coordinator.py).

A worker knows nothing of the experiment until the coordinator tells it: it connects (retrying
until ``--join-timeout``, so workers may start before the coordinator does), says ``hello``,
answers the clock pings, receives ``run`` (its index, the worker count, second 0 in its own clock,
the config and the scenario file's text) and runs its share with the very code of a local
``--workers`` process (:func:`loadgen.workers.run_one`): in open loop the requests ``k`` of the
one global schedule with ``k mod N == index``, in closed loop the connections ``k mod N == index``.

While it runs, at each tick it sends the live snapshot and every second of its timeline that
changed since the previous tick (counts, status and backend splits, HDR encodings, per request
kind): if it dies, the coordinator keeps what it had. At the end it sends its whole timeline
(``Timeline.export()``), which is what the coordinator merges. A sender thread does the socket
writes (and a ``beat`` when idle) so the event loop that sends the load never blocks on the
network; a reader thread turns ``stop`` (or losing the coordinator) into SIGTERM to this
process, which the runner handles as Ctrl-C: stop issuing, drain, report.

Exit status: 0 after a run; 2 when nothing was run (no coordinator reachable within
``--join-timeout``, a coordinator of another protocol version, the coordinator aborted because
too few workers joined); 1 when the coordinator was lost during the run (this worker's numbers
are then only in its own ``--json`` report, if asked for).
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from loadgen.config import DEFAULT_MAX_BACKLOG, Config, ConfigError, parse_target
from loadgen.histogram import Timeline, merge_exports
from loadgen.live import LiveLine
from loadgen.plan import Plan, make_plan
from loadgen.protocol import HEARTBEAT_S, PROTOCOL_VERSION, LineSocket, Message, ProtocolError
from loadgen.schedule import ClosedLoop, OpenLoop, RunResult
from loadgen.shapes import Snapshot, TimelineExport

if TYPE_CHECKING:
    from loadgen.scenario import Scenario

Say = Callable[[str], None]
#: Between two connection attempts to a coordinator that is not there (yet).
RETRY_S = 0.5


class WorkerExit(Exception):
    """End this worker with ``status`` after printing ``message`` (one line)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def connect(host: str, port: int, timeout_s: float) -> socket.socket:
    """Connect, retrying until ``timeout_s``: in Compose or Swarm the coordinator may start later."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=min(5.0, max(0.1, timeout_s)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            if time.monotonic() + RETRY_S > deadline:
                raise WorkerExit(
                    2, f"no coordinator reachable at {host}:{port} within {timeout_s:g} s: {exc}"
                ) from None
            time.sleep(RETRY_S)


@dataclass
class Assignment:
    """What the coordinator's ``run`` message says this worker is to do."""

    index: int
    count: int
    start_wall: float
    config: Config


def _join(conn: LineSocket, where: str, timeout_s: float) -> Assignment:
    """hello -> welcome/reject -> clock pings -> run (or abort)."""
    conn.send(
        {"type": "hello", "protocol": PROTOCOL_VERSION, "name": socket.gethostname(), "pid": os.getpid()}
    )
    deadline = time.monotonic() + timeout_s
    welcomed = False
    while True:
        try:
            # Once welcomed, wait as long as the coordinator waits for the others (it says abort).
            msg = conn.recv(None if welcomed else max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            raise WorkerExit(2, f"{where} did not answer hello within {timeout_s:g} s") from None
        except ProtocolError as exc:
            raise WorkerExit(2, f"{where} is not a loadgen coordinator: {exc}") from None
        if msg is None:
            raise WorkerExit(2, f"{where} closed the connection before the run")
        kind = msg["type"]
        if kind == "reject":
            raise WorkerExit(2, f"{where} rejected this worker: {msg.get('reason')}")
        if not welcomed and kind != "welcome":
            raise WorkerExit(2, f"{where} is not a loadgen coordinator (first message {kind!r})")
        if kind == "welcome":
            if msg.get("protocol") != PROTOCOL_VERSION:
                raise WorkerExit(
                    2, f"{where} speaks protocol {msg.get('protocol')}, this worker {PROTOCOL_VERSION}"
                )
            welcomed = True
        elif kind == "clock":
            conn.send({"type": "clock", "t0": msg["t0"], "tw": time.time()})
        elif kind == "abort":
            raise WorkerExit(2, f"{where} aborted the run: {msg.get('reason')}")
        elif kind == "run":
            return _assignment(msg)


def _assignment(msg: Message) -> Assignment:
    c = msg["config"]
    scenario_path = None
    if msg.get("scenario"):
        # The scenario's text, written under its own name (the suffix picks YAML or TOML).
        tmp = Path(tempfile.mkdtemp(prefix="loadgen-worker-"))
        scenario_path = str(tmp / Path(msg["scenario"]["name"]).name)
        Path(scenario_path).write_text(msg["scenario"]["text"], encoding="utf-8")
    config = Config(
        url=c["url"],
        target=parse_target(c["url"]),
        concurrency=c["concurrency"],
        rate=c["rate"],
        connections=c["connections"],
        max_backlog=c.get("max_backlog", DEFAULT_MAX_BACKLOG),  # optional: added without a version bump
        workers=msg["count"],
        scenario_path=scenario_path,
        body_size=c["body_size"],
        duration_s=c["duration_s"],
        timeout_s=c["timeout_s"],
        method=c["method"],
        headers=tuple((n, v) for n, v in c["headers"]),
        quiet=True,
    )
    return Assignment(msg["index"], msg["count"], msg["start_wall"], config)


class Sender:
    """A thread that owns the socket's writes: queued messages in order, a ``beat`` when idle."""

    def __init__(self, conn: LineSocket) -> None:
        self._conn = conn
        self._q: queue.Queue[Message | None] = queue.Queue()
        self.failed: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="loadgen-sender")
        self._thread.start()

    def put(self, msg: Message) -> None:
        self._q.put(msg)

    def _run(self) -> None:
        while True:
            try:
                msg = self._q.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                msg = {"type": "beat"}
            if msg is None:
                return
            if self.failed is not None:
                continue
            try:
                self._conn.send(msg)
            except OSError as exc:
                self.failed = f"{exc.__class__.__name__}: {exc}"

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued, then end the thread."""
        self._q.put(None)
        self._thread.join(timeout)


class Streamer:
    """Which seconds of the timeline changed since the last tick, as protocol records."""

    def __init__(self) -> None:
        self._sent: dict[int, tuple[int, int, int, bool]] = {}

    def records(self, timeline: Timeline) -> list[Message]:
        out = []
        for b in timeline.buckets:
            sig = (b.requests, b.intended, b.unsent + b.dropped, b.sealed)
            if self._sent.get(b.second) == sig:
                continue
            self._sent[b.second] = sig
            settled = b.sealed or (timeline.open_loop and b.intended == b.requests + b.unsent + b.dropped)
            out.append(
                {
                    "second": b.second,
                    "settled": settled,
                    "entry": b.export(timeline.open_loop),
                    "by_request": {
                        label: child.bucket(b.second).export(child.open_loop)
                        for label, child in timeline.by_request.items()
                    },
                }
            )
        return out


def _watch(conn: LineSocket, lost: threading.Event, finished: threading.Event) -> None:
    """Reader thread during the run: ``stop`` or a lost coordinator ends the run like Ctrl-C."""
    while True:
        try:
            msg = conn.recv(None)
        except (OSError, ProtocolError):
            msg = None
        if msg is not None and msg["type"] != "stop":
            continue
        if finished.is_set():  # the run is over: the coordinator closing is the normal end
            return
        if msg is None:
            lost.set()
        os.kill(os.getpid(), signal.SIGTERM)  # run_one's handler: stop issuing, drain
        return


def run_worker(config: Config, say: Say) -> int:
    """The whole worker; returns the exit status (raises WorkerExit for the one-line failures)."""
    from loadgen.workers import run_one

    assert config.worker_of is not None
    host, port = config.worker_of
    where = f"coordinator {host}:{port}"
    conn = LineSocket(connect(host, port, config.join_timeout_s))
    try:
        job = _join(conn, where, config.join_timeout_s)
    except BaseException:
        conn.close()
        raise
    say(f"loadgen: worker {job.index} of {job.count}: {job.config.url}")
    try:
        plan = make_plan(job.config, _scenario(job.config))
    except ConfigError as exc:
        conn.send({"type": "error", "message": str(exc)})
        conn.close()
        raise WorkerExit(2, str(exc)) from None
    sender = Sender(conn)
    streamer = Streamer()
    live = None if config.quiet else LiveLine()
    runner: ClosedLoop | OpenLoop | None = None
    lost, finished = threading.Event(), threading.Event()
    threading.Thread(target=_watch, args=(conn, lost, finished), daemon=True, name="loadgen-watch").start()

    def keep(r: ClosedLoop | OpenLoop) -> None:
        nonlocal runner
        runner = r

    def on_tick(second: int, snap: Snapshot) -> None:
        assert runner is not None  # on_runner comes before the first tick
        if live is not None:
            live(second, [snap])
        sender.put(
            {"type": "tick", "second": second, "snap": snap, "records": streamer.records(runner.timeline)}
        )

    try:
        result = run_one(job.config, job.index, job.count, job.start_wall, on_tick, plan=plan, on_runner=keep)
    except BaseException as exc:
        sender.put({"type": "error", "message": f"{exc.__class__.__name__}: {exc}"})
        sender.close(5)
        conn.close()
        raise
    finished.set()
    export = result.timeline.export()
    sender.put(
        {
            "type": "done",
            "export": export,
            "elapsed_s": result.elapsed_s,
            "stopped_early": result.stopped_early,
            "stats": result.stats,
        }
    )
    sender.close()
    conn.close()
    status = 0
    if config.json_path:
        status = _write_own_report(config, job, plan, result, export)
    if lost.is_set() or sender.failed is not None:
        why = sender.failed or "connection closed"
        raise WorkerExit(1, f"lost the {where} during the run ({why}); its report lacks this worker")
    return status


def _scenario(config: Config) -> Scenario | None:
    if not config.scenario_path:
        return None
    from loadgen.scenario import load_scenario

    return load_scenario(config.scenario_path)


def _write_own_report(
    config: Config, job: Assignment, plan: Plan, result: RunResult, export: TimelineExport
) -> int:
    """``--json FILE`` on a worker: this worker's share as a report of its own (same schema)."""
    from loadgen.report import build_report, write_json
    from loadgen.run import Outcome

    outcome = Outcome(
        plan,
        merge_exports([export]),
        datetime.fromtimestamp(job.start_wall, UTC),
        result.elapsed_s,
        result.stopped_early,
        [result.stats],
    )
    try:
        write_json(build_report(job.config, outcome), config.json_path)  # type: ignore[arg-type]
    except OSError as exc:
        print(f"loadgen: error: cannot write the report: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(config: Config) -> int:
    """Entry point from ``__main__``: one ``loadgen: error: ...`` line for every failure."""
    say: Say = (
        (lambda _text: None) if config.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    )
    try:
        return run_worker(config, say)
    except WorkerExit as exc:
        print(f"loadgen: error: {exc}", file=sys.stderr, flush=True)
        return exc.status
    except KeyboardInterrupt:
        print("loadgen: error: interrupted before the run", file=sys.stderr, flush=True)
        return 2
