"""Passive outlier detection: eject an endpoint that keeps failing real requests.

Active health checks (``health.py``) ask a replica whether it is well; this module watches what
the replica does to actual traffic, so it catches the replica whose ``/health`` answers 200 while
its application fails every request. Modelled on Envoy's outlier detection:

- ``consecutive_5xx``: that many upstream responses with status >= 500 (or protocol errors) in a
  row eject the endpoint. Envoy's default is 5.
- ``consecutive_failures``: that many gateway failures in a row (connect refused or timed out,
  connection reset before a response head, response head timeout) eject it (Envoy's
  ``consecutive_gateway_failure``).
- Any response below 500 resets both counts.
- An ejection lasts ``base_ejection`` times the number of times the endpoint has been ejected,
  capped at ``max_ejection``: a replica that keeps failing stays out longer each time. The
  multiplier goes back to zero once the endpoint has stayed clear of ejection for
  ``max_ejection`` seconds, so an old incident is forgotten.
- At most ``max_ejection_percent`` of the live endpoints are ejected at once (rounded down); an
  outlier over that cap is left in and logged, because ejecting most of a service turns a partial
  outage into a full one. The group's panic rule (``UpstreamGroup.unavailable``) still applies.

All of it is here: each endpoint's ``OutlierState`` (``ep.outlier``: the counts, the ejection and
its timer, the history) is written only by this module; ``OutlierDetector`` holds the knobs and
decides, ejects and ends ejections. The group only hears that its set of endpoints to skip changed
(``UpstreamGroup.availability_changed``), which keeps pick-time work to a cached set lookup.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.failure import GATEWAY_FAILURES, Failure

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.counters import Counters
    from proxy.pool import Endpoint

log = logging.getLogger("proxy.outlier")


class OutlierState:
    """One endpoint's passive-detection record (``ep.outlier``), written by this module only."""

    __slots__ = (
        "consecutive_5xx",
        "consecutive_failures",
        "ejected",
        "ejected_until",
        "ejections",
        "level",
        "over_cap_logged",
        "timer",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_failures = 0
        self.ejected = False
        self.ejected_until = 0.0  # loop time the current (or last) ejection ends
        self.level = 0  # multiplier of the next ejection time
        self.ejections = 0  # times ejected, ever
        self.over_cap_logged = False  # the "not ejected: over the cap" warning was given for this run
        self.timer: asyncio.TimerHandle | None = None  # ends the current ejection

    def cancel(self) -> None:
        """The endpoint is gone (left discovery and drained, or the proxy stops): no timer left."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """The knobs (defaults: ``Config``); 0 for a consecutive count switches that detector off."""

    consecutive_5xx: int
    consecutive_failures: int
    base_ejection: float
    max_ejection: float
    max_ejection_percent: float

    @classmethod
    def from_config(cls, config: Config) -> OutlierPolicy:
        return cls(
            consecutive_5xx=config.outlier_consecutive_5xx,
            consecutive_failures=config.outlier_consecutive_failures,
            base_ejection=config.outlier_base_ejection,
            max_ejection=config.outlier_max_ejection,
            max_ejection_percent=config.outlier_max_ejection_percent,
        )

    @property
    def enabled(self) -> bool:
        return self.consecutive_5xx > 0 or self.consecutive_failures > 0


class OutlierDetector:
    """Counts consecutive failures per endpoint, ejects the ones over a threshold, brings them back."""

    def __init__(self, policy: OutlierPolicy, counters: Counters | None) -> None:
        self.policy = policy
        self.counters = counters

    @classmethod
    def from_config(cls, config: Config, counters: Counters | None) -> OutlierDetector | None:
        """The detector the flags ask for, or None when both consecutive counts are 0."""
        policy = OutlierPolicy.from_config(config)
        return cls(policy, counters) if policy.enabled else None

    def observe(self, ep: Endpoint, status: int, failure: Failure | None) -> None:
        """One attempt's outcome (``Endpoint.observe``); the hot path is the success branch.

        ``failure.GATEWAY_FAILURES`` (connect, reset, timeout: the endpoint did not answer) count
        towards ``consecutive_failures``; a 5xx or a ``protocol`` failure (it answered, brokenly)
        towards ``consecutive_5xx``.
        """
        state = ep.outlier
        if failure is None and status < 500:
            state.consecutive_5xx = 0
            state.consecutive_failures = 0
            return
        policy = self.policy
        if failure in GATEWAY_FAILURES:
            state.consecutive_failures += 1
            if 0 < policy.consecutive_failures <= state.consecutive_failures:
                self._over_threshold(ep, "gateway", state.consecutive_failures)
        else:
            state.consecutive_5xx += 1
            if 0 < policy.consecutive_5xx <= state.consecutive_5xx:
                self._over_threshold(ep, "5xx", state.consecutive_5xx)

    def ejection_time(self, ep: Endpoint, now: float) -> float:
        """Seconds the next ejection of ``ep`` lasts: base x times ejected (recently), capped."""
        policy = self.policy
        state = ep.outlier
        if state.level and now - state.ejected_until > policy.max_ejection:
            state.level = 0  # clear for longer than the longest ejection: start over
        return min(policy.base_ejection * (state.level + 1), policy.max_ejection)

    def _over_threshold(self, ep: Endpoint, reason: str, count: int) -> None:
        """``ep`` failed ``count`` times in a row: eject it, unless the cap keeps it in."""
        state = ep.outlier
        group = ep.group
        if state.ejected or not ep.live:
            return
        ejected = sum(1 for e in group.live if e.outlier.ejected)
        allowed = int(len(group.live) * self.policy.max_ejection_percent / 100)
        if ejected >= allowed:
            if not state.over_cap_logged:
                state.over_cap_logged = True
                log.warning(
                    "endpoint %s: %d consecutive %s failures but not ejected: %d of %d endpoints "
                    "already ejected (max %g%%)",
                    ep.label,
                    count,
                    reason,
                    ejected,
                    len(group.live),
                    self.policy.max_ejection_percent,
                )
            return
        seconds = self.ejection_time(ep, group.loop.time())
        state.level += 1
        state.ejections += 1
        state.consecutive_5xx = 0
        state.consecutive_failures = 0
        state.over_cap_logged = False
        eject(ep, seconds)
        log.warning(
            "endpoint %s ejected for %gs after %d consecutive %s failures (ejection #%d)",
            ep.label,
            seconds,
            count,
            reason,
            state.ejections,
        )
        if self.counters is not None:
            # Event "ejections", label "5xx" or "gateway": an endpoint was taken out of rotation
            # by passive outlier detection (asgilab_proxy_ejections_total{reason=...}).
            self.counters.inc("ejections", reason)


def eject(ep: Endpoint, seconds: float) -> None:
    """Take ``ep`` out of new picks for ``seconds`` (a later call restarts the time)."""
    state = ep.outlier
    loop = ep.group.loop
    state.ejected = True
    state.ejected_until = loop.time() + seconds
    if state.timer is not None:
        state.timer.cancel()
    state.timer = loop.call_later(seconds, uneject, ep)
    ep.group.availability_changed(back=False)


def uneject(ep: Endpoint) -> None:
    """End ``ep``'s ejection now (its timer calls this when the time is up)."""
    state = ep.outlier
    state.cancel()
    state.ejected = False
    ep.group.availability_changed(back=ep.live)
    if ep.live:
        log.info("endpoint %s: ejection over, back in rotation", ep.label)
