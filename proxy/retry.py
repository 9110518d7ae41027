"""Which failed attempts may be tried again, and how many retries the whole proxy may afford.

Two separate questions, as in Envoy (``retry_on`` vs. ``retry_budget``) and Finagle
(``RetryPolicy`` vs. ``RetryBudget``):

- ``RetryPolicy`` answers "is *this* request safe to send again after *this* failure?".
  Only methods listed in ``--retry-methods`` (GET, HEAD, OPTIONS by default; never POST
  unless asked) and only failures listed in ``--retry-on`` (``connect-failure``, ``reset``
  and ``503`` by default), at most ``--max-retries`` times per request. A request whose
  body was streamed upstream without being kept can never be sent again.
- ``RetryBudget`` answers "can the proxy afford another retry right now?". Retries are
  allowed while the retries of the last ``window`` seconds stay below
  ``percent`` % of the requests of that window plus ``min_per_sec`` * ``window`` (Finagle's
  defaults: 20 % + 10/s over 10 s). When every replica is failing, per-request retry counts
  alone would multiply the load by ``1 + max_retries``; the budget caps the extra load at a
  fraction of the real traffic, so retries help against a dying replica and cannot turn an
  overload into a retry storm.

Connect failures are special (the same choice as nginx's ``proxy_next_upstream error``):
the request never left the proxy, so moving on to an endpoint not tried yet is safe for any
method, costs the backends nothing, and is neither budgeted nor bounded by ``--max-retries``
(each endpoint is tried at most once per request, which bounds it). They are still counted
as ``retries{reason="connect-failure"}``.
"""

from __future__ import annotations

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

CONNECT_FAILURE = "connect-failure"
RESET = "reset"
RETRY_ON_WORDS = (CONNECT_FAILURE, RESET)


class RetryPolicy:
    """Immutable answers to "may this request be retried after that failure?"."""

    __slots__ = ("max_retries", "methods", "on_connect_failure", "on_reset", "statuses")

    def __init__(
        self,
        methods: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"}),
        retry_on: frozenset[str] = frozenset({CONNECT_FAILURE, RESET, "503"}),
        max_retries: int = 2,
    ) -> None:
        self.methods = frozenset(m.upper().encode("ascii") for m in methods)
        self.on_connect_failure = CONNECT_FAILURE in retry_on
        self.on_reset = RESET in retry_on
        self.statuses = frozenset(int(w) for w in retry_on if w.isdigit())
        self.max_retries = max_retries

    def method_ok(self, method: bytes) -> bool:
        return method in self.methods


class RetryBudget:
    """Finagle-style budget: retries in the last ``window`` s < percent * requests + floor.

    Counts live in one-second buckets (a ring of ``window`` slots), so recording a request is
    an index and an increment; only a retry decision sums the ring.
    """

    __slots__ = ("_now", "_requests", "_retries", "_sec", "floor", "ratio", "window")

    def __init__(self, percent: float = 20.0, min_per_sec: float = 10.0, window: int = 10) -> None:
        self.ratio = percent / 100.0
        self.floor = min_per_sec * window
        self.window = window
        self._requests = [0] * window
        self._retries = [0] * window
        self._sec = 0  # the absolute second the newest bucket stands for
        self._now = 0  # its index in the ring

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
