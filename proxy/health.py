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

from proxy.pool import HEALTHY, UNHEALTHY, UNKNOWN, Endpoint, UpstreamGroup

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.counters import Counters

log = logging.getLogger("proxy.health")


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The knobs; ``interval`` 0 switches active checking off."""

    path: str = "/health"
    interval: float = 2.0
    timeout: float = 1.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2

    @property
    def enabled(self) -> bool:
        return self.interval > 0


class HealthChecker:
    """One asyncio task per upstream group running rounds of concurrent probes."""

    def __init__(
        self, group: UpstreamGroup, policy: HealthPolicy, host: str, counters: Counters | None = None
    ) -> None:
        self.group = group
        self.policy = policy
        self.counters = counters
        self._request = (
            f"GET {policy.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: asgi-lab-proxy-health-check\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        self._task: asyncio.Task[None] | None = None

    async def probe(self, ep: Endpoint) -> str | None:
        """Check ``ep`` once; None when it passed, else why it failed (for the log line)."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.policy.timeout):
                reader, writer = await asyncio.open_connection(ep.host, ep.port)
                writer.write(self._request)
                line = await reader.readline()
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
        if failure is None:
            ep.health_fails = 0
            ep.health_oks += 1
            if ep.health == UNKNOWN or (ep.health == UNHEALTHY and ep.health_oks >= policy.healthy_threshold):
                if ep.health == UNHEALTHY:
                    log.info("endpoint %s healthy again after %d passed checks", ep.label, ep.health_oks)
                    self._changed(HEALTHY)
                self.group.set_health(ep, HEALTHY)
            return
        ep.health_oks = 0
        ep.health_fails += 1
        if ep.health != UNHEALTHY and ep.health_fails >= policy.unhealthy_threshold:
            log.warning(
                "endpoint %s unhealthy after %d failed checks of %s (%s)",
                ep.label,
                ep.health_fails,
                policy.path,
                failure,
            )
            self._changed(UNHEALTHY)
            self.group.set_health(ep, UNHEALTHY)
        elif ep.health != UNHEALTHY:
            log.info("endpoint %s: health check failed (%s)", ep.label, failure)

    def _changed(self, state: str) -> None:
        if self.counters is not None:
            # Event "health_changes", label "healthy" or "unhealthy": an endpoint crossed a threshold.
            self.counters.inc("health_changes", state)

    async def check_all(self) -> None:
        """One round: every live endpoint probed concurrently."""
        endpoints = list(self.group.live)
        results = await asyncio.gather(*(self.probe(ep) for ep in endpoints))
        for ep, failure in zip(endpoints, results, strict=True):
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


def health_checker(config: Config, group: UpstreamGroup, counters: Counters | None) -> HealthChecker | None:
    """The checker the flags ask for, or None when --health-interval is 0."""
    policy = HealthPolicy(
        path=config.health_path,
        interval=config.health_interval,
        timeout=config.health_timeout,
        unhealthy_threshold=config.unhealthy_threshold,
        healthy_threshold=config.healthy_threshold,
    )
    return HealthChecker(group, policy, config.upstream, counters) if policy.enabled else None
