"""The live view behind /dashboard: a snapshot a second, a bounded history, one SSE stream.

Three steps, each a plain function or a small class so tests drive them without sockets:

1. ``worker_sample(state)``: what one worker process has counted since it started (cumulative
   counters per endpoint, the endpoint's fine latency histogram, its state). Reading it costs a
   few dozen attribute reads per endpoint; nothing on the request path changes for it, because
   the counters already exist for /metrics.
2. ``merge(samples)``: the whole proxy. With ``--workers N`` worker 0 asks its siblings for their
   samples over loopback (siblings.py) once a second and adds them up. Cumulative counts and
   histogram buckets add exactly, so per-second rates and percentiles of the sum are those of the
   whole proxy (percentiles are never averaged across workers or seconds).
3. ``LiveView.tick``: the difference between this second's merged sample and the previous one
   gives req/s, responses by class, and the per-second latency histogram of every replica, from
   which p50 and p99 are read (linear interpolation inside a ~19 %-wide bucket). Comparing the
   states of the two samples gives the events drawn on the charts' time axis: a replica joined
   or left, was ejected or came back, went unhealthy or healthy, was drained or undrained, and
   the policy switched. Events are found at one-second resolution: a flap shorter than a second
   between two samples is not seen (the Prometheus counters still count it).

Each snapshot is encoded once as an SSE message and kept in a ring (``--events-history``
seconds, 15 minutes by default); a viewer that connects gets the ring replayed, then the live
messages. Writing one message to five viewers is five ``transport.write`` calls a second; a
viewer that stops reading is dropped once its unsent buffer passes ``VIEWER_BUFFER_LIMIT``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypedDict, cast

from proxy.counters import FINE_LATENCY_BUCKETS
from proxy.failure import ATTEMPT_FAILURES
from proxy.metrics import CODE_CLASSES, client_in_flight, endpoints_of

if TYPE_CHECKING:
    from proxy.pool import Endpoint
    from proxy.state import ProxyState

log = logging.getLogger("proxy.events")

INTERVAL_S = 1.0
WATCH_S = 0.1  # how often an early tick is considered (LiveView's ``watch``)
STALE_S = 5.0  # seconds a sibling's last sample stands in for a missing answer
MAX_VIEWERS = 32  # SSE connections at once; more are answered 503
VIEWER_BUFFER_LIMIT = 8 * 1024 * 1024  # unsent bytes after which a viewer that stopped reading is dropped
# Replica states, most severe first: a replica the workers disagree about shows the most severe.
STATES = ("draining", "ejected", "cooling", "unhealthy", "healthy")


class EndpointSample(TypedDict):
    """One endpoint as one worker counted it (cumulative since the worker started)."""

    state: str  # one of STATES
    drained: bool
    in_flight: int
    responses: list[int]  # attempts by status class, index 0 = no response head
    failures: dict[str, int]  # by proxy.failure name
    retries: int
    ejections: int
    connects: int
    reused: int
    ewma_s: float
    hist: list[int]  # attempt latency, per FINE_LATENCY_BUCKETS bucket


class Sample(TypedDict):
    """One worker's cumulative figures: what ``worker_sample`` makes and GET /events/sample answers."""

    worker: int
    policy: str
    connections: int
    in_flight: int
    queued: int
    responses: list[int]  # client responses by status class, index 0 = none sent
    endpoints: dict[str, EndpointSample]


class MergedEndpoint(TypedDict):
    """One endpoint over every worker: counts summed; the most severe state and how many workers see it."""

    state: str
    state_workers: int
    drained: bool
    in_flight: int
    responses: list[int]
    failures: dict[str, int]
    retries: int
    ejections: int
    connects: int
    reused: int
    ewma_s: float  # the highest of the workers' estimates
    hist: list[int]


class Merged(TypedDict):
    """The whole proxy from its workers' samples (``merge``)."""

    workers: int
    policy: str  # "mixed" while workers disagree (a switch that reached some of them)
    policies: list[str]
    connections: int
    in_flight: int
    queued: int
    responses: list[int]
    endpoints: dict[str, MergedEndpoint]


class Event(TypedDict):
    """Something viewers see on the charts' time axis: a replica joined, left, was ejected..."""

    t: float
    kind: str
    addr: str | None
    text: str


class Replica(TypedDict):
    """One row of the dashboard's replica table in a snapshot."""

    addr: str
    state: str
    state_workers: int
    since: float
    drained: bool
    in_flight: int
    rps: float
    classes: dict[str, float]
    responses: dict[str, int]
    errors: dict[str, int]
    retries: int
    ejections: int
    connections_opened: int
    reuse_ratio: float | None
    ewma_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    share: float | None


class Snapshot(TypedDict):
    """One second of the whole proxy, as /events sends it and /events/latest answers."""

    t: float
    interval: float
    workers: int
    reporting: int
    policy: str
    connections: int
    in_flight: int
    queued: int
    rps: float
    classes: dict[str, float]
    p50_ms: float | None
    p99_ms: float | None
    replicas: list[Replica]
    events: list[Event]


# Where worker 0 gets its siblings' samples from (siblings.py in the server; a list in tests).
SampleSource = Callable[[], Awaitable[list[Sample]]]


def sample_from_json(doc: Any) -> Sample | None:
    """A sibling's decoded answer to GET /events/sample, or None if it is not a sample.

    Siblings run this same code, so a well-formed answer is the rule; the check keeps one broken
    answer (a worker mid-restart, a proxy in front of it) from failing the whole tick.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("endpoints"), dict):
        return None
    for key in ("worker", "connections", "in_flight", "queued"):
        if not isinstance(doc.get(key), int):
            return None
    if not isinstance(doc.get("policy"), str) or not isinstance(doc.get("responses"), list):
        return None
    for e in doc["endpoints"].values():
        if not isinstance(e, dict) or not e.keys() >= _ENDPOINT_KEYS:
            return None
    return cast(Sample, doc)  # checked above, as far as merge() relies on it


_ENDPOINT_KEYS = frozenset(EndpointSample.__annotations__)


def replica_state(ep: Endpoint) -> str:
    """The dashboard's state of one endpoint in one worker (STATES).

    "draining": an operator drained it, or discovery removed it and its last requests run;
    "ejected": passive outlier detection; "cooling": a connect failed less than --fail-timeout
    ago; "unhealthy": active health checks fail it.
    """
    if ep.drain or not ep.live:
        return "draining"
    if ep.ejected:
        return "ejected"
    if ep.cooling:
        return "cooling"
    if not ep.healthy:
        return "unhealthy"
    return "healthy"


def worker_sample(state: ProxyState, worker: int = 0) -> Sample:
    """This worker's cumulative figures, JSON-ready (also what GET /events/sample answers)."""
    admission = state.admission
    endpoints: dict[str, EndpointSample] = {}
    for ep in endpoints_of(state):
        stats = ep.stats
        endpoints[ep.label] = {
            "state": replica_state(ep),
            "drained": ep.drain,
            "in_flight": ep.load.in_flight,
            "responses": list(stats.responses),
            "failures": {str(reason): n for reason, n in stats.failures.items()},
            "retries": stats.retries,
            "ejections": ep.outlier.ejections,
            "connects": stats.connects,
            "reused": stats.reused,
            "ewma_s": ep.load.value,
            "hist": list(stats.latency.counts),
        }
    return {
        "worker": worker,
        "policy": state.balancer.name,
        "connections": len(state.connections),
        "in_flight": client_in_flight(state),
        "queued": len(admission.waiting) if admission is not None else 0,
        "responses": list(state.counters.responses),
        "endpoints": endpoints,
    }


def _add(into: list[int], more: Iterable[int]) -> None:
    for i, n in enumerate(more):
        into[i] += n


def merge(samples: list[Sample]) -> Merged:
    """The whole proxy from its workers' samples: counts and histograms summed, states combined."""
    policies = sorted({s["policy"] for s in samples})
    out: Merged = {
        "workers": len(samples),
        "policy": policies[0] if len(policies) == 1 else "mixed",
        "policies": policies,
        "connections": 0,
        "in_flight": 0,
        "queued": 0,
        "responses": [0] * 6,
        "endpoints": {},
    }
    eps = out["endpoints"]
    states: dict[str, list[str]] = {}
    for s in samples:
        out["connections"] += s["connections"]
        out["in_flight"] += s["in_flight"]
        out["queued"] += s["queued"]
        _add(out["responses"], s["responses"])
        for label, e in s["endpoints"].items():
            m = eps.get(label)
            if m is None:
                m = eps[label] = {
                    "state": "",
                    "state_workers": 0,
                    "drained": False,
                    "in_flight": 0,
                    "responses": [0] * 6,
                    "failures": {},
                    "retries": 0,
                    "ejections": 0,
                    "connects": 0,
                    "reused": 0,
                    "ewma_s": 0.0,
                    "hist": [0] * len(e["hist"]),
                }
            states.setdefault(label, []).append(e["state"])
            m["drained"] = m["drained"] or e["drained"]
            m["in_flight"] += e["in_flight"]
            m["retries"] += e["retries"]
            m["ejections"] += e["ejections"]
            m["connects"] += e["connects"]
            m["reused"] += e["reused"]
            _add(m["responses"], e["responses"])
            _add(m["hist"], e["hist"])
            for reason, n in e["failures"].items():
                m["failures"][reason] = m["failures"].get(reason, 0) + n
            m["ewma_s"] = max(m["ewma_s"], e["ewma_s"])
    for label, m in eps.items():
        seen = states[label]
        m["state"] = min(seen, key=STATES.index)
        m["state_workers"] = seen.count(m["state"])
    return out


def percentile(counts: list[int], q: float, bounds: tuple[float, ...] = FINE_LATENCY_BUCKETS) -> float | None:
    """The ``q`` quantile (0-1) of a per-bucket histogram, linearly interpolated in its bucket.

    Like Prometheus' ``histogram_quantile``: the error is at most the bucket's width (~19 % of
    the value with the fine buckets); a value in the +Inf bucket reads as the last bound.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * max(0.0, rank - seen) / n
        seen += n
    return bounds[-1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _delta(cur: list[int], prev: list[int] | None) -> list[int]:
    if prev is None or len(prev) != len(cur):
        return list(cur)
    return [max(0, a - b) for a, b in zip(cur, prev, strict=True)]


def _classes(counts: list[int], dt: float) -> dict[str, float]:
    """Per-second rates by status class from a 6-slot delta (slot 0: no status / failed)."""
    out = {cls: round(counts[i + 1] / dt, 2) for i, cls in enumerate(CODE_CLASSES)}
    out["failed"] = round(counts[0] / dt, 2)
    return out


def _errors(e: MergedEndpoint) -> dict[str, int]:
    failures = e["failures"]
    out: dict[str, int] = {kind: failures.get(kind, 0) for kind in ATTEMPT_FAILURES}
    out["5xx"] = e["responses"][5]
    return out


class LiveView:
    """The ring of snapshots and the viewers of /events (worker 0 only; one per proxy)."""

    def __init__(
        self,
        local: Callable[[], Sample],
        history_s: float = 900.0,
        siblings: SampleSource | None = None,
        clock: Callable[[], float] = time.time,
        watch: Callable[[], object] | None = None,
    ) -> None:
        """``watch``: a cheap key of what viewers must see at once (the endpoint set, the policy,
        the drains); when it changes between ticks the next tick comes early (checked every
        WATCH_S), so a replica that leaves shows within ~0.1 s of the proxy noticing, not up to 1 s."""
        self.local = local
        self.watch = watch
        self.siblings = siblings
        self.clock = clock
        self.ring: deque[bytes] = deque(maxlen=max(1, int(history_s / INTERVAL_S)))
        self.latest: Snapshot | None = None
        self.viewers: set[asyncio.StreamWriter] = set()
        self._prev: Merged | None = None
        self._prev_t = 0.0
        self._since: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        # The last answer of each sibling and when it came: a sibling that misses a tick counts
        # with its last sample for STALE_S (so one slow answer is not a dip in every chart).
        self._last_samples: dict[int, tuple[float, Sample]] = {}
        self.reporting = 1  # workers whose sample is fresh in the latest snapshot

    # -- sampling ----------------------------------------------------------------------------------
    async def collect(self) -> list[Sample]:
        """This worker's sample plus every sibling's; a sibling that did not answer keeps its last."""
        samples = [self.local()]
        self.reporting = 1
        if self.siblings is not None:
            now = self.clock()
            for s in await self.siblings():
                self._last_samples[s["worker"]] = (now, s)
                self.reporting += 1
            for w, (seen, s) in sorted(self._last_samples.items()):
                if now - seen > STALE_S:
                    del self._last_samples[w]
                else:
                    samples.append(s)
        return samples

    def tick(self, samples: list[Sample]) -> Snapshot:
        """One second: the snapshot from ``samples`` against the previous ones; kept and sent."""
        now = self.clock()
        cur = merge(samples)
        prev = self._prev
        dt = max(1e-3, now - self._prev_t) if prev is not None else INTERVAL_S
        prev_eps: dict[str, MergedEndpoint] = prev["endpoints"] if prev is not None else {}
        events: list[Event] = []

        def event(kind: str, text: str, addr: str | None = None) -> None:
            events.append({"t": round(now, 3), "kind": kind, "addr": addr, "text": text})

        if prev is not None and cur["policy"] != prev["policy"]:
            event("policy", f"policy {prev['policy']} -> {cur['policy']}")
        total_hist: list[int] | None = None
        replicas: list[Replica] = []
        attempts_total = 0
        deltas: dict[str, tuple[list[int], list[int]]] = {}
        for label, e in cur["endpoints"].items():
            p = prev_eps.get(label)
            d_resp = _delta(e["responses"], p["responses"] if p else None)
            d_hist = _delta(e["hist"], p["hist"] if p else None)
            deltas[label] = (d_resp, d_hist)
            attempts_total += sum(d_resp)
            if total_hist is None:
                total_hist = list(d_hist)
            else:
                _add(total_hist, d_hist)
        for label, e in cur["endpoints"].items():
            p = prev_eps.get(label)
            if p is None:
                self._since[label] = now
                if prev is not None:
                    event("joined", f"{label} joined", label)
            else:
                self._transition(label, p, e, now, event)
            d_resp, d_hist = deltas[label]
            attempts = sum(d_resp)
            opened, reused = e["connects"], e["reused"]
            replicas.append(
                {
                    "addr": label,
                    "state": e["state"],
                    "state_workers": e["state_workers"],
                    "since": round(self._since.get(label, now), 3),
                    "drained": e["drained"],
                    "in_flight": e["in_flight"],
                    "rps": round(attempts / dt, 2),
                    "classes": _classes(d_resp, dt),
                    "responses": dict(zip(("failed", *CODE_CLASSES), e["responses"], strict=True)),
                    "errors": _errors(e),
                    "retries": e["retries"],
                    "ejections": e["ejections"],
                    "connections_opened": opened,
                    "reuse_ratio": round(reused / (reused + opened), 4) if reused + opened else None,
                    "ewma_ms": _ms(e["ewma_s"]),
                    "p50_ms": _ms(percentile(d_hist, 0.5)),
                    "p99_ms": _ms(percentile(d_hist, 0.99)),
                    "share": round(attempts / attempts_total, 4) if attempts_total else None,
                }
            )
        for label in prev_eps:
            if label not in cur["endpoints"]:
                self._since.pop(label, None)
                event("left", f"{label} left", label)
        d_client = _delta(cur["responses"], prev["responses"] if prev else None)
        snap: Snapshot = {
            "t": round(now, 3),
            "interval": round(dt, 3),
            "workers": cur["workers"],
            "reporting": min(self.reporting, cur["workers"]) if self.siblings else cur["workers"],
            "policy": cur["policy"],
            "connections": cur["connections"],
            "in_flight": cur["in_flight"],
            "queued": cur["queued"],
            "rps": round(sum(d_client) / dt, 2),
            "classes": _classes(d_client, dt),
            "p50_ms": _ms(percentile(total_hist or [], 0.5)),
            "p99_ms": _ms(percentile(total_hist or [], 0.99)),
            "replicas": replicas,
            "events": events,
        }
        for ev in events:
            log.info("dashboard event: %s", ev["text"])
        self._prev, self._prev_t = cur, now
        self.latest = snap
        message = b"data: " + json.dumps(snap, separators=(",", ":")).encode() + b"\n\n"
        self.ring.append(message)
        self._broadcast(message)
        return snap

    def _transition(
        self, label: str, p: MergedEndpoint, e: MergedEndpoint, now: float, event: Callable[..., None]
    ) -> None:
        before, after = p["state"], e["state"]
        if p["drained"] != e["drained"]:
            event(
                "drained" if e["drained"] else "undrained",
                f"{label} {'drained' if e['drained'] else 'undrained'}",
                label,
            )
        if before == after:
            return
        self._since[label] = now
        if after == "ejected":
            event("ejected", f"{label} ejected", label)
        elif before == "ejected":
            event("back", f"{label} back from ejection", label)
        if after == "unhealthy":
            event("health_down", f"{label} health down", label)
        elif before == "unhealthy" and after == "healthy":
            event("health_up", f"{label} health up", label)
        if after == "draining" and not e["drained"]:
            event("leaving", f"{label} removed by discovery, finishing its requests", label)

    # -- viewers -----------------------------------------------------------------------------------
    def _broadcast(self, message: bytes) -> None:
        for writer in list(self.viewers):
            transport = writer.transport
            if transport.is_closing():
                self.viewers.discard(writer)
            elif transport.get_write_buffer_size() > VIEWER_BUFFER_LIMIT:
                log.warning("dropping a dashboard viewer that stopped reading")
                self.viewers.discard(writer)
                transport.abort()
            else:
                writer.write(message)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One SSE viewer: headers, the history, then live messages until it hangs up."""
        if len(self.viewers) >= MAX_VIEWERS:
            body = f"too many dashboard viewers (at most {MAX_VIEWERS})\n".encode()
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"X-Accel-Buffering: no\r\nConnection: close\r\n\r\nretry: 1000\n\n"
        )
        writer.writelines(list(self.ring))
        self.viewers.add(writer)
        try:
            while await reader.read(4096):  # a viewer sends nothing; EOF or reset ends it
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            self.viewers.discard(writer)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="proxy-live-view")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        watch = self.watch
        while True:
            started = loop.time()
            key = watch() if watch is not None else None
            try:
                samples = await self.collect()
                self.tick(samples)
            except Exception:  # a bug here must not stop the dashboard for good
                log.exception("live view tick failed")
            next_at = started + INTERVAL_S
            while (delay := next_at - loop.time()) > 0:
                await asyncio.sleep(min(delay, WATCH_S) if watch is not None else delay)
                if watch is not None and watch() != key:
                    break  # something viewers must see changed: tick now

    def close(self) -> None:
        """Stop sampling and hang up on every viewer (the proxy is shutting down)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for writer in list(self.viewers):
            writer.close()
        self.viewers.clear()
