"""Why one attempt at an upstream failed: the one vocabulary of the proxy's upstream side.

An attempt (``proxy/attempt.py``) ends in a response head or in one of these failures. The same
name is what the retry decision reads (``proxy/retry.py``), what the endpoint is told
(``Endpoint.observe(status, latency, failure)``: outlier detection, EWMA, per-endpoint counts),
what ``/metrics`` shows as ``upstream_failures_total{reason}`` and what the access log and the
log lines say. The names are the metric label values users already see; only two of them can be
named in ``--retry-on``, with the spelling Envoy's ``retry_on`` gives them (``RETRY_ON_WORD``).

- ``connect``: no connection (refused, unreachable, ``--connect-timeout``, or abandoned after
  ``--connect-slow-threshold``). Nothing was sent.
- ``reset``: the connection closed after the request was written, before any response byte
  (the application may or may not have seen the request), or in the middle of the response.
- ``timeout``: no response head within ``--upstream-timeout`` or ``--attempt-timeout``.
- ``protocol``: the upstream sent bytes that are not an HTTP/1.x response.
A failure after the response head went out cannot be answered any more: the client connection is
closed, counted as ``responses_cut{reason}`` and logged as the access log's ``"error": "upstream
<failure>"``.
- ``read-timeout``: the response head arrived, then nothing for ``--upstream-read-timeout``
  (the client connection is closed: its status line is already out). Not reported to the
  endpoint as a gateway failure (its status was, when the head arrived).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

Failure = Literal["connect", "reset", "timeout", "protocol", "read-timeout"]

CONNECT: Final = "connect"
RESET: Final = "reset"
TIMEOUT: Final = "timeout"
PROTOCOL: Final = "protocol"
READ_TIMEOUT: Final = "read-timeout"

# Every failure an attempt can end in before its response head, in the order /metrics and the
# dashboard list them (the values of upstream_failures_total's ``reason`` label).
ATTEMPT_FAILURES: Final[tuple[Failure, ...]] = (CONNECT, TIMEOUT, RESET, PROTOCOL)

# The failures outlier detection counts as "gateway failures" (Envoy's consecutive_gateway_failure):
# the endpoint did not answer. ``protocol`` is an answer, a broken one: outlier detection counts it
# with the 5xx answers instead.
GATEWAY_FAILURES: Final[frozenset[Failure]] = frozenset({CONNECT, RESET, TIMEOUT})

# How ``--retry-on`` names the failures it can retry (besides 5xx status codes). ``timeout`` is
# retried only by ``--attempt-timeout`` (a per-try deadline asked for explicitly), never by a word.
RETRY_ON_WORD: Final[Mapping[Failure, str]] = {CONNECT: "connect-failure", RESET: "reset"}
