"""Active health checking: probe every live endpoint on an interval, skip the failing ones.

Passive outlier detection (``outlier.py``) needs traffic to notice a problem; a replica that
hangs (``docker pause``), or one that gets no requests at the moment, is only seen by asking it.
Modelled on Envoy's HTTP health checker:

- Every ``interval`` seconds each live endpoint gets ``GET <path>`` on a fresh connection (never
  a pooled one: the check must not disturb, or be helped by, the request path's connections).
- A check passes on a 2xx status within ``timeout``; a refused or reset connection, a timeout or
  any other status fails it.
- ``unhealthy_threshold`` failures in a row make an endpoint UNHEALTHY (new picks skip it);
  ``healthy_threshold`` passes in a row bring it back. A new endpoint is UNKNOWN, which counts as
  usable, and its first pass makes it HEALTHY at once (as Envoy does for new hosts), so scaling up
  is not delayed by the checker.
- A check that fails is the endpoint's problem, not the client's: nothing here touches requests.

The worst-case time from a replica hanging to no new picks is about ``interval x
unhealthy_threshold + timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.counters import Counters
    from proxy.pool import Endpoint, UpstreamGroup

log = logging.getLogger("proxy.health")

# Active health states. A new endpoint is UNKNOWN and gets traffic at once, so a replica that
# scaled up is used before its first check; only UNHEALTHY keeps picks away.
UNKNOWN, HEALTHY, UNHEALTHY = "unknown", "healthy", "unhealthy"


class HealthState:
    """One endpoint's active-check record (``ep.health``), written by this module only."""

    __slots__ = ("fails", "oks", "state")

    def __init__(self) -> None:
        self.state = UNKNOWN
        self.oks = 0  # passes in a row
        self.fails = 0  # failures in a row

    def __repr__(self) -> str:
        return f"<HealthState {self.state} oks={self.oks} fails={self.fails}>"


def set_health(ep: Endpoint, state: str) -> None:
    """Put ``ep`` in ``state`` (UNKNOWN, HEALTHY or UNHEALTHY) and tell its group if that changed."""
    if ep.health.state != state:
        ep.health.state = state
        ep.group.availability_changed(back=state != UNHEALTHY)


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The knobs (defaults: ``Config``); ``interval`` 0 switches active checking off."""

    path: str
    interval: float
    timeout: float
    unhealthy_threshold: int
    healthy_threshold: int

    @classmethod
    def from_config(cls, config: Config) -> HealthPolicy:
        return cls(
            path=config.health_path,
            interval=config.health_interval,
            timeout=config.health_timeout,
            unhealthy_threshold=config.unhealthy_threshold,
            healthy_threshold=config.healthy_threshold,
        )

    @property
    def enabled(self) -> bool:
        return self.interval > 0


# A status line longer than this is not an HTTP response worth reading further (asyncio's stream
# limit, which readline() would otherwise turn into an exception out of the probe).
MAX_STATUS_LINE = 64 * 1024


class HealthChecker:
    """One asyncio task per upstream group running rounds of concurrent probes."""

    def __init__(
        self, group: UpstreamGroup, policy: HealthPolicy, host: str, counters: Counters | None
    ) -> None:
        self.group = group
        self.policy = policy
        self.counters = counters
        self._request = (
            f"GET {policy.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: asgi-lab-proxy-health-check\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls, config: Config, group: UpstreamGroup, counters: Counters | None
    ) -> HealthChecker | None:
        """The checker the flags ask for, or None when --health-interval is 0."""
        policy = HealthPolicy.from_config(config)
        return cls(group, policy, config.upstream, counters) if policy.enabled else None

    async def probe(self, ep: Endpoint) -> str | None:
        """Check ``ep`` once; None when it passed, else why it failed (for the log line)."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.policy.timeout):
                reader, writer = await asyncio.open_connection(ep.host, ep.port, limit=MAX_STATUS_LINE)
                writer.write(self._request)
                line = await reader.readline()
        except ValueError:  # readline's LimitOverrunError: no line end within the limit
            return f"status line over {MAX_STATUS_LINE // 1024} KiB"
        except TimeoutError:
            return f"no answer within {self.policy.timeout:g}s"
        except ConnectionRefusedError:
            return "connection refused"
        except OSError as exc:
            return exc.strerror or str(exc) or type(exc).__name__
        finally:
            if writer is not None:
                writer.close()
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return f"not an HTTP response: {line[:60]!r}" if line else "connection closed without a response"
        status = int(parts[1])
        if 200 <= status < 300:
            return None
        return f"status {status}"

    def record(self, ep: Endpoint, failure: str | None) -> None:
        """Apply one probe result to ``ep``'s run of passes/failures and its state."""
        policy = self.policy
        if self.counters is not None:
            # Event "health_checks", label "pass" or "fail": one active probe's result.
            self.counters.inc("health_checks", "fail" if failure else "pass")
        health = ep.health
        if failure is None:
            health.fails = 0
            health.oks += 1
            was = health.state
            if was == UNKNOWN or (was == UNHEALTHY and health.oks >= policy.healthy_threshold):
                if was == UNHEALTHY:
                    log.info("endpoint %s healthy again after %d passed checks", ep.label, health.oks)
                    self._changed(HEALTHY)
                set_health(ep, HEALTHY)
            return
        health.oks = 0
        health.fails += 1
        if health.state != UNHEALTHY and health.fails >= policy.unhealthy_threshold:
            log.warning(
                "endpoint %s unhealthy after %d failed checks of %s (%s)",
                ep.label,
                health.fails,
                policy.path,
                failure,
            )
            self._changed(UNHEALTHY)
            set_health(ep, UNHEALTHY)
        elif health.state != UNHEALTHY:
            log.info("endpoint %s: health check failed (%s)", ep.label, failure)

    def _changed(self, state: str) -> None:
        if self.counters is not None:
            # Event "health_changes", label "healthy" or "unhealthy": an endpoint crossed a threshold.
            self.counters.inc("health_changes", state)

    async def check_all(self) -> None:
        """One round: every live endpoint probed concurrently.

        A probe that raises anyway (a bug, or an error this module does not know) fails that
        endpoint's check only: the other results of the round are recorded all the same.
        """
        endpoints = list(self.group.live)
        results = await asyncio.gather(*(self.probe(ep) for ep in endpoints), return_exceptions=True)
        for ep, result in zip(endpoints, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled (stop()), or the process is exiting
            if isinstance(result, Exception):
                log.error("endpoint %s: health probe raised %r", ep.label, result)
                failure: str | None = f"probe error: {type(result).__name__}"
            else:
                failure = result
            if ep.live:  # it may have left discovery while the probe ran
                self.record(ep, failure)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.policy.interval
        next_round = loop.time() + interval  # first round after one interval, then on a steady beat
        while True:
            await asyncio.sleep(max(0.0, next_round - loop.time()))
            next_round = loop.time() + interval
            try:
                await self.check_all()
            except Exception:  # never let the checker die: endpoints would keep a stale state
                log.exception("health check round failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
