"""``python -m loadgen --coordinator [HOST:]PORT --expect-workers N``: one run, many machines.

The model is Locust's master/worker split with wrk2's measurement kept whole. The coordinator
sends no request itself. It waits for N workers (``python -m loadgen --worker HOST:PORT``) to
join within ``--join-timeout``, measures each one's clock offset (three pings: the offset at the
smallest round trip), hands every worker its index and the experiment (URL, load, scenario file
text), and one start time (second 0, translated into each worker's clock). Each worker then runs
the same code as a local ``--workers`` process, so the shares are those of loadgen.plan: in open
loop worker ``w`` sends the requests ``w, w+N, w+2N, ...`` of the one global schedule (the union
is the schedule of one process at the full rate, remainders included); in closed loop it runs the
connections ``k`` with ``k mod N == w`` (10 connections over 3 workers: 4, 3, 3).

Every second each worker streams its tick snapshot (what the live line and the live page merge,
as for ``--workers``) and the seconds of its timeline that changed; at the end it sends its whole
timeline. The coordinator merges the timelines with ``histogram.merge_exports``: counts are summed
and HDR histograms added, never percentiles averaged, so the report is that of one process that
had sent everything. Scenario actions run here, once, timed against the same second 0.

A worker lost mid-run (its connection closed, or silent for ``protocol.LOST_AFTER_S``): the live
line says so from then on (``LOST``), the run goes on with the others, and the report keeps what
the worker had streamed. Its per-worker entry says when it was lost and why, lists the seconds it
sent nothing for (``seconds_missed``) and those whose figures may lack requests that were still in
flight (``seconds_partial``), and every timeline entry names the workers whose share is incomplete
(``workers_incomplete``). An open-loop rate check fails when a worker was lost.

Failures before anything is measured exit 2 with one line (:class:`CoordinatorError`): cannot
listen, fewer than N workers joined in time (each joined worker is told ``abort``), more
connections wanted than the plan has. Workers of another protocol version are rejected (they
exit 2) and the coordinator keeps waiting for the right ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from loadgen.config import Config
from loadgen.histogram import SecondBucket, merge_exports
from loadgen.plan import Plan
from loadgen.protocol import LOST_AFTER_S, MAX_LINE, PROTOCOL_VERSION, Message, ProtocolError, decode, encode
from loadgen.run import ActionHook, Outcome, TicksHook, TimedActions
from loadgen.schedule import DRAIN_GRACE_S
from loadgen.shapes import (
    ActionResult,
    Fleet,
    FleetWorker,
    Performer,
    RunStats,
    SecondExport,
    Snapshot,
    TimelineExport,
    WorkerShare,
)
from loadgen.workers import START_LEAD_S

Say = Callable[[str], None]

#: Clock pings per worker at join time; the one with the smallest round trip gives the offset.
CLOCK_PINGS = 3
#: A worker must say hello (and answer a ping) within this long of connecting.
HELLO_TIMEOUT_S = 10.0
#: Beyond duration + request timeout + drain, how long the coordinator waits for a last result.
END_MARGIN_S = LOST_AFTER_S + 5.0


class CoordinatorError(Exception):
    """The run cannot happen; ``__main__`` prints the message as one line and exits ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Peer:
    """One worker as the coordinator sees it."""

    host: str
    address: str  # ip:port it connected from
    writer: asyncio.StreamWriter
    index: int = -1
    name: str = ""
    pid: int = 0
    offset_s: float = 0.0  # worker clock minus coordinator clock
    rtt_s: float = 0.0
    ready: bool = False  # hello and clock pings done
    last_seen: float = field(default_factory=time.monotonic)
    snaps: dict[int, Snapshot] = field(default_factory=dict)  # tick -> snapshot
    last_snap: Snapshot | None = None
    records: dict[int, Message] = field(default_factory=dict)  # second -> latest streamed record
    done: Message | None = None
    error: str | None = None
    lost_reason: str | None = None
    lost_at_s: float | None = None

    @property
    def alive(self) -> bool:
        return self.done is None and self.lost_reason is None

    def send(self, msg: Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(msg))

    def frozen(self, tick: int, open_loop: bool) -> Snapshot:
        """A stand-in snapshot for a tick this worker did not send (lost, or finished): its last
        counters, so merged rates do not jump, and nothing for the second itself."""
        last = self.last_snap or Snapshot()
        snap: Snapshot = {
            "second": tick,
            "index": self.index,
            "worker": self.name,
            "completed": last.get("completed", 0),
            "errors": last.get("errors", 0),
            "failed": last.get("failed", 0),
            "prev_hist": "",
            "prev_backends": {},
        }
        if open_loop:
            snap.update(
                {
                    "due": last.get("due", 0),
                    "sent": last.get("sent", 0),
                    "dropped": last.get("dropped", 0),
                    "max_connections": last.get("max_connections", 0),
                    "backlog": 0,
                    "backlog_age_s": 0.0,
                    "busy": 0,
                }
            )
        if self.lost_reason is not None:
            snap["lost"] = self.lost_reason
        return snap


def shares(plan: Plan, count: int) -> list[WorkerShare]:
    """What each of ``count`` workers is given: the plan's own split (loadgen.plan), remainders
    to the lowest indices."""
    out: list[WorkerShare] = []
    for i in range(count):
        share: WorkerShare
        if plan.mode == "open":
            rate = None if plan.constant is None else plan.constant / count
            share = {
                "rate": rate,
                "rate_fraction": 1 / count,
                "connections": plan.share(plan.connections, i, count),
            }
        else:
            share = {"connections": plan.share(plan.connections, i, count)}
        out.append(share)
    return out


def _run_config(config: Config, plan: Plan) -> Message:
    return {
        "url": plan.url,
        "rate": config.rate,
        "concurrency": config.concurrency,
        "connections": config.connections,
        "max_backlog": config.max_backlog,
        "duration_s": config.duration_s,
        "timeout_s": config.timeout_s,
        "method": config.method,
        "headers": [list(h) for h in config.headers],
        "body_size": config.body_size,
    }


class Coordinator:
    """One distributed run: join, start, merge; :meth:`run` returns the merged :class:`Outcome`."""

    def __init__(
        self,
        config: Config,
        plan: Plan,
        on_tick: TicksHook | None,
        say: Say | None,
        performer: Performer | None,
        on_action: ActionHook | None = None,
    ) -> None:
        assert config.coordinator is not None and config.expect_workers is not None
        self.config = config
        self.plan = plan
        self.expected = config.expect_workers
        self.on_tick = on_tick
        self.say: Say = say or (lambda _text: None)
        self.performer = performer
        self.on_action = on_action
        self.peers: list[Peer] = []
        self.rejected: list[str] = []
        self.started = False
        self.start_wall = 0.0
        self.stopped_early = False
        self.next_tick = 1
        self.port = 0
        self._joined = asyncio.Event()
        self._finished = asyncio.Event()
        self._open_loop = plan.mode == "open"
        #: The scenario file as validated at start (workers get its text, not its path).
        self._scenario: Message | None = None
        if config.scenario_path:
            path = Path(config.scenario_path)
            self._scenario = {"name": path.name, "text": path.read_text(encoding="utf-8")}

    # -- joining -------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer = Peer(host=str(peername[0]), address=f"{peername[0]}:{peername[1]}", writer=writer)
        try:
            if not await self._handshake(reader, peer):
                return
            while True:
                line = await reader.readline()
                if not line:
                    self._lose(peer, peer.error or "connection closed")
                    return
                peer.last_seen = time.monotonic()
                self._handle(peer, decode(line))
        except (OSError, ProtocolError, ValueError, asyncio.IncompleteReadError) as exc:
            self._lose(peer, peer.error or f"{exc.__class__.__name__}: {exc}")
        except asyncio.CancelledError:  # the run is over (asyncio.run cancels what is left)
            pass
        finally:
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, peer: Peer) -> bool:
        """hello -> (reject | welcome) -> clock pings; True once the worker is ready."""
        try:
            hello = decode(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT_S))
        except (TimeoutError, ProtocolError, ValueError, OSError) as exc:
            self._reject(peer, f"no hello ({exc.__class__.__name__}: {exc})", tell=False)
            return False
        peer.name, peer.pid = str(hello.get("name", peer.host)), int(hello.get("pid", 0))
        version = hello.get("protocol")
        if hello["type"] != "hello":
            self._reject(peer, f"expected hello, got {hello['type']!r}")
            return False
        if version != PROTOCOL_VERSION:
            self._reject(
                peer,
                f"protocol version {version} of the worker, {PROTOCOL_VERSION} of the coordinator "
                "(run the same loadgen version on both sides)",
            )
            return False
        if self.started or len(self.peers) >= self.expected:
            self._reject(peer, f"the run already has its {self.expected} workers")
            return False
        self.peers.append(peer)
        peer.send({"type": "welcome", "protocol": PROTOCOL_VERSION, "index": len(self.peers) - 1,
                   "count": self.expected})  # fmt: skip
        best: tuple[float, float] | None = None
        for _ in range(CLOCK_PINGS):
            t0 = time.time()
            peer.send({"type": "clock", "t0": t0})
            try:
                reply = decode(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT_S))
            except (TimeoutError, ProtocolError, ValueError, OSError) as exc:
                self.peers.remove(peer)
                self._reject(peer, f"no clock reply ({exc.__class__.__name__})", tell=False)
                return False
            t1 = time.time()
            if reply.get("type") != "clock":
                continue
            rtt, offset = t1 - t0, float(reply["tw"]) - (t0 + t1) / 2
            if best is None or rtt < best[0]:
                best = (rtt, offset)
        peer.rtt_s, peer.offset_s = best if best is not None else (0.0, 0.0)
        peer.ready = True
        ready = sum(p.ready for p in self.peers)
        self.say(f"loadgen: worker {peer.name} ({peer.address}) joined: {ready} of {self.expected}")
        if ready == self.expected:
            self._joined.set()
        return True

    def _reject(self, peer: Peer, reason: str, tell: bool = True) -> None:
        if tell:
            peer.send({"type": "reject", "protocol": PROTOCOL_VERSION, "reason": reason})
        self.rejected.append(f"{peer.address}: {reason}")
        self.say(f"loadgen: rejected a worker at {peer.address}: {reason}")

    # -- during the run ------------------------------------------------------------------------

    def _handle(self, peer: Peer, msg: Message) -> None:
        kind = msg["type"]
        if kind == "tick":
            snap: Snapshot = msg["snap"]  # a JSON message: the shape the worker sent
            snap["index"], snap["worker"] = peer.index, peer.name
            peer.snaps[int(msg["second"])] = snap
            peer.last_snap = snap
            for rec in msg.get("records", ()):
                peer.records[int(rec["second"])] = rec
            self._emit_ticks()
        elif kind == "done":
            peer.done = msg
            self._emit_ticks()
            self._check_finished()
        elif kind == "error":
            peer.error = f"worker failed: {msg.get('message')}"

    def _lose(self, peer: Peer, reason: str) -> None:
        if not self.started:
            if peer in self.peers:
                self.peers.remove(peer)
                peer.ready = False
                self.say(f"loadgen: worker {peer.name} ({peer.address}) left before the run: {reason}")
            return
        if not peer.alive:
            return
        peer.lost_reason = reason
        peer.lost_at_s = round(time.time() - self.start_wall, 3)
        alive = sum(p.alive for p in self.peers)
        self.say(
            f"loadgen: worker {peer.name} ({peer.address}) LOST at {peer.lost_at_s:.1f} s: {reason}; "
            f"going on with {alive} of {len(self.peers)}"
        )
        peer.writer.close()
        self._emit_ticks()
        self._check_finished()

    def _emit_ticks(self) -> None:
        """Hand each tick on once every live worker has sent it (a lost or finished one stands in
        with its last counters), so the live line and page see the whole fleet each second."""
        while True:
            tick = self.next_tick
            if not any(tick in p.snaps for p in self.peers):
                return
            if any(p.alive and tick not in p.snaps for p in self.peers):
                return
            snaps = [
                p.snaps.pop(tick) if tick in p.snaps else p.frozen(tick, self._open_loop) for p in self.peers
            ]
            self.next_tick += 1
            if self.on_tick is not None:
                self.on_tick(tick, snaps)

    def _check_finished(self) -> None:
        if self.started and not any(p.alive for p in self.peers):
            self._finished.set()

    def _stop(self) -> None:
        """SIGINT/SIGTERM: every worker stops issuing, drains and still sends its results."""
        if not self.stopped_early:
            self.stopped_early = True
            self.say("loadgen: stopping the workers")
        for p in self.peers:
            if p.alive:
                p.send({"type": "stop"})

    async def _watch(self) -> None:
        end = self.start_wall + self.plan.duration_s + self.plan.timeout_s + DRAIN_GRACE_S + END_MARGIN_S
        while not self._finished.is_set():
            now = time.monotonic()
            for p in self.peers:
                if p.alive and now - p.last_seen > LOST_AFTER_S:
                    self._lose(p, f"silent for {LOST_AFTER_S:g} s")
                elif p.alive and time.time() > end:
                    self._lose(p, "no result by the end of the run")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), 0.25)

    # -- the whole run -------------------------------------------------------------------------

    async def run(self) -> Outcome:
        host, port = self.config.coordinator  # type: ignore[misc]
        try:
            server = await asyncio.start_server(self._accept, host, port, limit=MAX_LINE)
        except OSError as exc:
            raise CoordinatorError(2, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.port = server.sockets[0].getsockname()[1]
        timeout = self.config.join_timeout_s
        self.say(
            f"loadgen: coordinator listening on {host}:{self.port}, "
            f"waiting up to {timeout:g} s for {self.expected} workers"
        )
        actions = None
        loop = asyncio.get_running_loop()
        installed = []
        try:
            try:
                await asyncio.wait_for(self._joined.wait(), timeout)
            except TimeoutError:
                ready = sum(p.ready for p in self.peers)
                reason = f"only {ready} of {self.expected} workers joined within {timeout:g} s"
                if self.rejected:
                    reason += f" ({len(self.rejected)} rejected: {self.rejected[-1]})"
                for p in self.peers:
                    p.send({"type": "abort", "reason": reason})
                await asyncio.sleep(0.05)  # let the aborts leave
                raise CoordinatorError(2, reason) from None
            self.started = True
            for i, p in enumerate(self.peers):
                p.index, p.name = i, f"w{i}@{p.name}"
            self.start_wall = time.time() + START_LEAD_S + max(p.rtt_s for p in self.peers)
            scenario = self._scenario
            for p in self.peers:
                p.last_seen = time.monotonic()
                run = {"type": "run", "index": p.index, "count": self.expected, "scenario": scenario}
                run.update(
                    start_wall=self.start_wall + p.offset_s, config=_run_config(self.config, self.plan)
                )
                p.send(run)
            if self.plan.actions:
                assert self.performer is not None, "a plan with actions needs a performer"
                actions = TimedActions(
                    self.plan.actions, self.performer, self.start_wall, self.say, self.on_action
                )
                actions.start()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._stop)
                    installed.append(sig)
            await self._watch()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            action_results = actions.finish() if actions is not None else []
            server.close()
            for p in self.peers:
                p.writer.close()
        return self._outcome(action_results)

    # -- the result ----------------------------------------------------------------------------

    def _export_of(self, p: Peer) -> TimelineExport:
        """A worker's timeline: its final export, or rebuilt from what it streamed (lost)."""
        if p.done is not None:
            final: TimelineExport = p.done["export"]  # a JSON message: the shape the worker sent
            return final
        ol = self._open_loop
        n = max(p.records, default=-1) + 1
        seconds = [p.records[s]["entry"] if s in p.records else SecondBucket(s).export(ol) for s in range(n)]
        out: TimelineExport = {"open_loop": ol, "seconds": seconds}
        labels = list(dict.fromkeys(label for r in p.records.values() for label in r.get("by_request", {})))
        if labels:

            def entry(s: int, label: str) -> SecondExport:
                got: SecondExport | None = (
                    (p.records[s].get("by_request") or {}).get(label) if s in p.records else None
                )
                return got or SecondBucket(s).export(ol)

            out["by_request"] = {
                label: {"open_loop": ol, "seconds": [entry(s, label) for s in range(n)]} for label in labels
            }
        return out

    def _stats_of(self, p: Peer) -> RunStats:
        if p.done is not None:
            reported: RunStats = p.done["stats"]
            return reported
        snap = p.last_snap or {}
        stats = RunStats(connections_used=snap.get("busy", 0))
        if self._open_loop:
            stats.update(
                {"due": snap.get("due", 0), "sent": snap.get("sent", 0), "sent_in_time": snap.get("sent", 0)}
            )
        return stats

    def _outcome(self, action_results: list[ActionResult]) -> Outcome:
        from loadgen.report import build_report

        started_at = datetime.fromtimestamp(self.start_wall, UTC)
        exports = [self._export_of(p) for p in self.peers]
        stats = [self._stats_of(p) for p in self.peers]
        merged = merge_exports(exports)
        elapsed = max(
            (p.done["elapsed_s"] if p.done is not None else (p.lost_at_s or 0.0) for p in self.peers),
            default=0.0,
        )
        stopped = self.stopped_early or any(
            p.done is not None and p.done["stopped_early"] for p in self.peers
        )
        total_seconds = max(len(merged.seconds), math.ceil(self.plan.duration_s))
        workers: list[FleetWorker] = []
        for p, export, share, st in zip(
            self.peers, exports, shares(self.plan, self.expected), stats, strict=True
        ):
            elapsed_w = p.done["elapsed_s"] if p.done is not None else (p.lost_at_s or 0.0)
            own = Outcome(self.plan, merge_exports([export]), started_at, elapsed_w, stopped, [st])
            r = build_report(replace(self.config, workers=1), own)
            missed = [] if p.done is not None else [s for s in range(total_seconds) if s not in p.records]
            partial = (
                []
                if p.done is not None
                else sorted(s for s, rec in p.records.items() if not rec.get("settled"))
            )
            workers.append(
                {
                    "index": p.index,
                    "name": p.name,
                    "address": p.address,
                    "status": "done" if p.done is not None else "lost",
                    "lost_at_s": p.lost_at_s,
                    "reason": p.lost_reason,
                    "share": share,
                    "requests": r["requests"],
                    "responses": r["responses"],
                    "failed": r["failed"],
                    "rps": r["rps"],
                    "elapsed_s": round(elapsed_w, 3),
                    "latency_ms": r["latency_ms"],
                    "rate_check": r["rate_check"] if p.done is not None else None,
                    "histogram": r["histograms"]["corrected"],
                    "seconds_missed": missed,
                    "seconds_partial": partial,
                    "clock_offset_ms": round(p.offset_s * 1000, 3),
                    "rtt_ms": round(p.rtt_s * 1000, 3),
                }
            )
        distributed: Fleet = {
            "protocol": PROTOCOL_VERSION,
            "expected_workers": self.expected,
            "lost": [w["name"] for w in workers if w["status"] == "lost"],
            "rejected": list(self.rejected),
            "workers": workers,
        }
        return Outcome(self.plan, merged, started_at, elapsed, stopped, stats, action_results, distributed)


def coordinate(
    config: Config,
    plan: Plan,
    *,
    on_tick: TicksHook | None = None,
    say: Say | None = None,
    performer: Performer | None = None,
    on_action: ActionHook | None = None,
) -> Outcome:
    """Run the plan through ``config.expect_workers`` workers; the counterpart of ``run.execute``.

    Raises :class:`CoordinatorError` when the run cannot start.
    """
    n = config.expect_workers or 0
    if plan.connections < n:
        what = (
            "--connections" if plan.mode == "open" else "connections (--concurrency or the scenario's peak)"
        )
        raise CoordinatorError(
            2, f"--expect-workers {n} needs at least as many {what}, got {plan.connections}"
        )
    return asyncio.run(Coordinator(config, plan, on_tick, say, performer, on_action).run())
