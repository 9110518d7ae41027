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

The counts live on the ``Endpoint``; this class holds the policy and the knobs, and the group
applies the result (``UpstreamGroup.eject``), which keeps pick-time work to a cached set lookup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.counters import Counters
    from proxy.pool import Endpoint

log = logging.getLogger("proxy.outlier")

# Failures reported by exchange.py that count as gateway failures; "protocol" (a response the
# proxy could not parse) is the upstream's fault like a 5xx and counts towards consecutive_5xx.
GATEWAY_FAILURES = frozenset({"connect", "reset", "timeout"})


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """The knobs; 0 for a consecutive count switches that detector off."""

    consecutive_5xx: int = 5
    consecutive_failures: int = 5
    base_ejection: float = 5.0
    max_ejection: float = 60.0
    max_ejection_percent: float = 50.0

    @property
    def enabled(self) -> bool:
        return self.consecutive_5xx > 0 or self.consecutive_failures > 0


class OutlierDetector:
    """Counts consecutive failures per endpoint and ejects the ones over a threshold."""

    def __init__(self, policy: OutlierPolicy, counters: Counters | None = None) -> None:
        self.policy = policy
        self.counters = counters

    def observe(self, ep: Endpoint, status: int, failure: str | None) -> None:
        """One attempt's outcome (``Endpoint.observe``); the hot path is the success branch."""
        if failure is None and status < 500:
            ep.consecutive_5xx = 0
            ep.consecutive_failures = 0
            return
        policy = self.policy
        if failure in GATEWAY_FAILURES:
            ep.consecutive_failures += 1
            if 0 < policy.consecutive_failures <= ep.consecutive_failures:
                self._eject(ep, "gateway")
        else:
            ep.consecutive_5xx += 1
            if 0 < policy.consecutive_5xx <= ep.consecutive_5xx:
                self._eject(ep, "5xx")

    def ejection_time(self, ep: Endpoint, now: float) -> float:
        """Seconds the next ejection of ``ep`` lasts: base x times ejected (recently), capped."""
        policy = self.policy
        if ep.ejection_level and now - ep.ejected_until > policy.max_ejection:
            ep.ejection_level = 0  # clear for longer than the longest ejection: start over
        return min(policy.base_ejection * (ep.ejection_level + 1), policy.max_ejection)

    def _eject(self, ep: Endpoint, reason: str) -> None:
        group = ep.group
        if ep.ejected or not ep.live:
            return
        ejected = sum(1 for e in group.live if e.ejected)
        allowed = int(len(group.live) * self.policy.max_ejection_percent / 100)
        count = ep.consecutive_5xx if reason == "5xx" else ep.consecutive_failures
        if ejected >= allowed:
            if not ep.over_cap_logged:
                ep.over_cap_logged = True
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
        now = group.loop.time()
        seconds = self.ejection_time(ep, now)
        ep.ejection_level += 1
        ep.ejections += 1
        ep.consecutive_5xx = 0
        ep.consecutive_failures = 0
        ep.over_cap_logged = False
        group.eject(ep, seconds)
        log.warning(
            "endpoint %s ejected for %gs after %d consecutive %s failures (ejection #%d)",
            ep.label,
            seconds,
            count,
            reason,
            ep.ejections,
        )
        if self.counters is not None:
            # Event "ejections", label "5xx" or "gateway": an endpoint was taken out of rotation
            # by passive outlier detection (asgilab_proxy_ejections_total{reason=...}).
            self.counters.inc("ejections", reason)


def outlier_detector(config: Config, counters: Counters | None) -> OutlierDetector | None:
    """The detector the flags ask for, or None when both consecutive counts are 0."""
    policy = OutlierPolicy(
        consecutive_5xx=config.outlier_consecutive_5xx,
        consecutive_failures=config.outlier_consecutive_failures,
        base_ejection=config.outlier_base_ejection,
        max_ejection=config.outlier_max_ejection,
        max_ejection_percent=config.outlier_max_ejection_percent,
    )
    return OutlierDetector(policy, counters) if policy.enabled else None
