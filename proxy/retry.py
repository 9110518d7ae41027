"""Whether, and where, a failed attempt is tried again; and how many retries the proxy may afford.

Three objects, as in Envoy (``retry_on`` and ``retry_budget`` on a route, a retry state per
request) and Finagle (``RetryPolicy`` vs. ``RetryBudget``):

- ``RetryPolicy`` (immutable, from ``Config``): which methods (``--retry-methods``) and which
  failures (``--retry-on``, ``--attempt-timeout``) may be sent again, and how often
  (``--max-retries``).
- ``RetryBudget`` (one per proxy): "can the proxy afford another retry right now?". Retries are
  allowed while the retries of the last ``window`` seconds stay below ``percent`` % of the
  requests of that window plus ``min_per_sec`` * ``window`` (Finagle's defaults: 20 % + 10/s over
  10 s). When every replica is failing, per-request retry counts alone would multiply the load by
  ``1 + max_retries``; the budget caps the extra load at a fraction of the real traffic, so
  retries help against a dying replica and cannot turn an overload into a retry storm.
- ``RetryState`` (one per request, made only once there is something to remember: a body to
  keep, or a first failure): retries left, the kept body, the endpoints tried. Its one method,
  ``next``, answers "where next, if anywhere" and holds every rule of docs/proxy.md's retry
  table, row by row (``Row`` names them; the tests in tests/unit/test_proxy_retry.py follow it).

Connect failures are special (the same choice as nginx's ``proxy_next_upstream error``): the
request never left the proxy, so moving on to an endpoint not tried yet is safe for any method,
costs the backends nothing, and is neither budgeted nor bounded by ``--max-retries`` (each
endpoint is tried at most once per request, which bounds it). They are still counted as
``retries{reason="connect-failure"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Final, Protocol

from proxy.failure import CONNECT, RESET, RETRY_ON_WORD, TIMEOUT, Failure

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.pool import Endpoint

log = logging.getLogger("proxy.retry")

# Bodies up to this size are kept in memory while they are sent, so that a retriable request
# with a body (PUT, or POST when listed in --retry-methods) can be sent again; Envoy's
# per_request_buffer_limit_bytes plays the same role. Larger bodies are streamed and not kept.
KEEP_BODY_LIMIT = 64 * 1024

# A retriable status's body is read and dropped (so its connection can be pooled) only when its
# Content-Length is at most DISCARD_LIMIT and it all arrives within DISCARD_TIMEOUT_S (capped by
# --upstream-timeout). Anything else (chunked, close-delimited, larger, or stalled) costs the
# connection instead: it is closed and the request retried at once, so a backend that sends an
# endless or stalled error body cannot hold the request.
DISCARD_LIMIT = 64 * 1024
DISCARD_TIMEOUT_S = 1.0

# The retry budget's window in seconds (Finagle's TTL); not a flag.
BUDGET_WINDOW_S = 10

# The words --retry-on accepts besides 5xx status codes (config.py validates with them).
RETRY_ON_WORDS: Final[tuple[str, ...]] = tuple(RETRY_ON_WORD.values())
CONNECT_FAILURE: Final = RETRY_ON_WORD[CONNECT]  # also the retries_total label of a connect failover

# What ``RetryState.next`` is asked about: a failure, or a response status (a 5xx).
Trigger = Failure | int


class RetryPolicy:
    """Immutable answers to "may this request be retried after that failure?"."""

    __slots__ = ("max_retries", "methods", "on_connect_failure", "on_reset", "on_timeout", "statuses")

    def __init__(
        self, methods: Iterable[str], retry_on: Iterable[str], max_retries: int, attempt_timeout: float
    ) -> None:
        words = frozenset(retry_on)
        self.methods = frozenset(m.upper().encode("ascii") for m in methods)
        self.on_connect_failure = RETRY_ON_WORD[CONNECT] in words
        self.on_reset = RETRY_ON_WORD[RESET] in words
        self.statuses = frozenset(int(w) for w in words if w.isdigit())
        self.max_retries = max_retries
        # A try still without a response head after --attempt-timeout may move on (0 = off).
        self.on_timeout = attempt_timeout > 0

    @classmethod
    def from_config(cls, cfg: Config) -> RetryPolicy:
        return cls(cfg.retry_methods, cfg.retry_on, cfg.max_retries, cfg.attempt_timeout)


class RetryBudget:
    """Finagle-style budget: retries in the last ``window`` s < percent * requests + floor.

    Counts live in one-second buckets (a ring of ``window`` slots), so recording a request is
    an index and an increment; only a retry decision sums the ring.
    """

    __slots__ = ("_now", "_requests", "_retries", "_sec", "floor", "ratio", "window")

    def __init__(self, percent: float, min_per_sec: float, window: int) -> None:
        self.ratio = percent / 100.0
        self.floor = min_per_sec * window
        self.window = window
        self._requests = [0] * window
        self._retries = [0] * window
        self._sec = 0  # the absolute second the newest bucket stands for
        self._now = 0  # its index in the ring

    @classmethod
    def from_config(cls, cfg: Config) -> RetryBudget:
        return cls(cfg.retry_budget_percent, cfg.retry_budget_min, BUDGET_WINDOW_S)

    def _advance(self, now: float) -> int:
        sec = int(now)
        if sec != self._sec:
            gap = sec - self._sec
            if gap >= self.window or gap < 0:
                self._requests = [0] * self.window
                self._retries = [0] * self.window
            else:
                for i in range(1, gap + 1):
                    j = (self._now + i) % self.window
                    self._requests[j] = 0
                    self._retries[j] = 0
            self._sec = sec
            self._now = sec % self.window
        return self._now

    def deposit(self, now: float) -> None:
        """One client request arrived (each request, not each attempt)."""
        if int(now) == self._sec:
            self._requests[self._now] += 1
        else:
            self._requests[self._advance(now)] += 1

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from the budget; False when the budget is spent (then do not retry)."""
        i = self._advance(now)
        if sum(self._retries) >= self.ratio * sum(self._requests) + self.floor:
            return False
        self._retries[i] += 1
        return True

    def balance(self, now: float) -> float:
        """Retries still allowed in the current window (for tests and the admin view)."""
        self._advance(now)
        return self.ratio * sum(self._requests) + self.floor - sum(self._retries)


class Picker(Protocol):
    """How a retry chooses its endpoint: the balancer over the group, minus ``exclude`` (and minus
    the endpoints that cannot take a request now: unavailable, or full under the in-flight cap)."""

    def pick_excluding(self, exclude: Collection[Endpoint]) -> Endpoint | None: ...


class Events(Protocol):
    """Where a retry decision is counted (``proxy.counters.Counters``)."""

    def inc(self, name: str, label: str) -> None: ...


class RetryState:
    """One request's retries: how many are left, the body kept for a replay, the endpoints tried.

    Made by ``RetryState.for_request`` when the request arrives with a body it may replay, else
    at its first failure: a plain GET answered at once never allocates one.
    """

    __slots__ = (
        "budget",
        "events",
        "has_body",
        "kept",
        "kept_bytes",
        "policy",
        "retriable",
        "retries_left",
        "tried",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        events: Events,
        method: bytes,
        has_body: bool,
        keep_body: bool,
    ) -> None:
        self.policy = policy
        self.budget = budget
        self.events = events
        self.retriable = method in policy.methods
        self.retries_left = policy.max_retries if self.retriable else 0
        self.has_body = has_body
        # A copy of the body as sent, so a retriable request can be sent again; None = not kept
        # (not retriable, or larger than KEEP_BODY_LIMIT), which rules out any retry once sent.
        self.kept: list[bytes] | None = [] if keep_body else None
        self.kept_bytes = 0
        self.tried: list[Endpoint] = []  # each endpoint a try went to, once (next() records them)

    @staticmethod
    def keeps_body(policy: RetryPolicy, method: bytes, chunked: bool, length: int) -> bool:
        """Whether a request with a body must be kept as it is sent (it may be replayed)."""
        return method in policy.methods and policy.max_retries > 0 and (chunked or length <= KEEP_BODY_LIMIT)

    def keep(self, chunk: bytes) -> None:
        """A chunk of the request body was sent: keep a copy while it fits."""
        kept = self.kept
        if kept is not None:
            n = self.kept_bytes + len(chunk)
            if n > KEEP_BODY_LIMIT:
                self.kept = None  # too big to keep: this request can no longer be retried once sent
            else:
                self.kept_bytes = n
                kept.append(chunk)

    def replay(self) -> list[bytes]:
        """The body to send again on the next attempt (what was kept so far)."""
        return list(self.kept) if self.kept else []

    def next(
        self,
        trigger: Trigger,
        failed: Endpoint,
        picker: Picker,
        now: float,
        request_id: bytes,
        body_done: bool = True,
    ) -> Endpoint | None:
        """Where to send this request after ``failed``'s attempt ended in ``trigger``; None = nowhere.

        One branch per row of docs/proxy.md's retry table (``trigger``: a failure or a status):

        - ``connect`` (``--retry-on connect-failure``): any method; every live endpoint not tried
          yet, each once; neither budgeted nor counted against ``--max-retries``.
        - ``reset`` (``--retry-on reset``): a ``--retry-methods`` method whose body, if any, was
          kept; retries left; the budget; another endpoint, else a fresh connection to ``failed``.
        - ``timeout`` (``--attempt-timeout`` on): as ``reset``, once the whole request body was
          received (``body_done``), and only another endpoint.
        - a status in ``--retry-on``: as ``reset``, once the whole request body was received
          (``body_done``), and only another endpoint (else the response is forwarded).
        A ``protocol`` failure (and anything else) is never retried.
        """
        policy = self.policy
        events = self.events
        if trigger == CONNECT:
            if not policy.on_connect_failure:
                return None
            label = CONNECT_FAILURE
            budgeted = False
        else:
            if trigger == RESET:
                ok = policy.on_reset
            elif trigger == TIMEOUT:
                ok = policy.on_timeout and body_done  # else the slowness may be the client's upload
            elif isinstance(trigger, int):
                ok = trigger in policy.statuses and body_done
            else:
                ok = False
            if not ok:
                return None
            if self.has_body and self.kept is None:
                return None  # the body was streamed and not kept: it cannot be sent twice
            label = str(trigger)
            if self.retries_left <= 0:
                if self.retriable:
                    events.inc("retries_exhausted", label)  # --max-retries reached, by failure
                return None
            budgeted = True
        tried = self.tried
        if not tried or tried[-1] is not failed:
            tried.append(failed)  # the first try's endpoint (later ones were recorded when chosen)
        nxt = picker.pick_excluding(tried)
        if nxt is None and trigger == RESET and failed.live:
            nxt = failed  # the stale keep-alive case: a fresh connection to the same endpoint
        if nxt is None:
            return None
        if budgeted:
            if not self.budget.try_withdraw(now):
                events.inc("retry_budget_exhausted", label)  # a retry refused by the budget, by failure
                log.warning(
                    "retry budget spent: not retrying request %s after %s",
                    request_id.decode("latin-1"),
                    label,
                )
                return None
            self.retries_left -= 1
        events.inc("retries", label)  # attempts sent again: connect-failure, reset, timeout or the status
        failed.stats.retries += 1  # per endpoint, for the dashboard: the attempt that was retried
        if nxt is not failed:
            tried.append(nxt)
        return nxt
