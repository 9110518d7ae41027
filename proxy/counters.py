"""Event counts for /metrics, bumped where events happen and read only at scrape time.

The request path must not pay for a metrics library on every request, so events are plain
integer increments here; ``proxy/metrics.py`` turns them into Prometheus families when
``/metrics`` is scraped. Rare events (retries, ejections, rejections, tunnels) go through
``inc`` with a name and an optional label; per-request figures live on the objects that own
them (``Endpoint`` for per-upstream counts, ``responses`` here for what clients received).
"""

from __future__ import annotations

from collections import Counter


class Counters:
    """Monotonic counts for one proxy process."""

    __slots__ = ("events", "responses")

    def __init__(self) -> None:
        # (event name, label) -> count; e.g. ("retries", "connect"), ("rejected", "431").
        self.events: Counter[tuple[str, str]] = Counter()
        # Responses sent to clients by status class: index 1-5 for 1xx-5xx, 0 for none (client gone).
        self.responses = [0, 0, 0, 0, 0, 0]

    def inc(self, name: str, label: str = "", n: int = 1) -> None:
        self.events[name, label] += n

    def count(self, name: str, label: str | None = None) -> int:
        """Total for ``name`` (all labels) or for one label; for tests and the admin views."""
        if label is not None:
            return self.events[name, label]
        return sum(v for (n, _), v in self.events.items() if n == name)
