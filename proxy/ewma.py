"""An endpoint's load: its requests in flight and its peak-EWMA latency, what load-aware picks read.

``Load`` is the endpoint's record for it (``ep.load``). The request path counts requests in and
out (``Endpoint.acquire`` / ``release``); ``Endpoint.observe`` feeds the latency estimate after
every attempt (whatever the policy, so a runtime switch to ``peak_ewma`` starts warm); the
policies in balancer.py read ``in_flight`` and ``cost``; ``GET /upstreams`` and the dashboard read
``at``. The estimator is Finagle's ``PeakEwma`` (tower's ``RttEstimate`` in Linkerd):

- a sample above the estimate replaces it at once (the *peak*: one slow answer is enough to steer
  traffic away);
- a lower one is blended in with weight ``1 - exp(-dt/decay)``, ``dt`` being the time since the
  previous sample, so the estimate forgets at the same pace whatever the request rate;
- read at time ``now`` it is decayed towards 0 for the time since its last sample, so a replica
  that was avoided for being slow is tried again after a while and one answer re-measures it.
"""

from __future__ import annotations

import math

# An attempt that failed without a response (refused, reset, timed out) counts as at least this
# slow, so a replica that fails fast does not look like the fastest one and attract traffic.
FAILURE_LATENCY_S = 1.0
# Cost of an endpoint that has requests in flight but no latency sample yet (Finagle's Penalty):
# a new endpoint gets one probe request at cost 0, then waits for its answer before getting more.
UNMEASURED_PENALTY = 1e9

_exp = math.exp


class Load:
    """One endpoint's load: requests in flight now and sent ever, and its peak-EWMA latency.

    ``value`` is the estimate in seconds (0.0 = no sample yet), ``stamp`` the time of its last
    sample; ``decay`` (seconds, ``--ewma-decay``) the time constant: how long a latency spike
    keeps counting. Times are ``time.monotonic()`` seconds, passed in so tests choose them.
    """

    __slots__ = ("decay", "in_flight", "requests", "stamp", "value")

    def __init__(self, decay: float) -> None:
        self.in_flight = 0
        self.requests = 0
        self.decay = decay
        self.value = 0.0
        self.stamp = 0.0

    def __repr__(self) -> str:
        return f"<Load in_flight={self.in_flight} ewma={self.value * 1000:.3f} ms>"

    def observe(self, latency_s: float, failed: bool, now: float) -> None:
        """Fold one attempt's latency in; ``failed``: it ended without a response head."""
        if failed and latency_s < FAILURE_LATENCY_S:
            latency_s = FAILURE_LATENCY_S
        prev = self.value
        if latency_s >= prev:
            self.value = latency_s
        else:
            elapsed = now - self.stamp
            w = _exp(-elapsed / self.decay) if elapsed > 0 else 1.0
            self.value = prev * w + latency_s * (1.0 - w)
        self.stamp = now

    def at(self, now: float) -> float:
        """The estimate (seconds) as ``peak_ewma`` sees it at ``now``: decayed since the last sample."""
        elapsed = now - self.stamp
        return self.value * _exp(-elapsed / self.decay) if elapsed > 0 else self.value

    def cost(self, now: float) -> float:
        """Peak-EWMA cost of one more request: the estimate at ``now`` x (in flight + 1).

        Latency alone would herd everything onto the fastest replica, in-flight counts alone miss
        one that is slow but not yet backed up; their product estimates the wait.
        """
        est = self.value
        if est == 0.0:
            return UNMEASURED_PENALTY if self.in_flight else 0.0
        elapsed = now - self.stamp
        if elapsed > 0:
            est *= _exp(-elapsed / self.decay)
        return est * (self.in_flight + 1)
