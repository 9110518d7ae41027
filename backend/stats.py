"""What ``GET /stats`` reports: the requests this replica served, in total and by path, bounded.

Tests compare these counts with what their clients counted, so the total is exact. The per-path
table is bounded, because a key per distinct path is memory a client controls: a scan of random
404 paths, or ``/delay/1`` .. ``/delay/60000``, would grow it without end. Two rules bound it:

- a request that matched no route (the router's 404) is counted under ``<unmatched>``, never
  under its own path: only paths the app serves can become keys;
- at most :data:`MAX_PATHS` distinct paths get a key of their own; requests to further paths
  are counted under ``<other>``. A test's few paths always fit.

So the table has at most ``MAX_PATHS + 2`` keys whatever the traffic, and its values still add
up to the total.
"""

from __future__ import annotations

MAX_PATHS = 256
UNMATCHED = "<unmatched>"
OTHER = "<other>"


class RequestCounts:
    """Requests by path, at most ``max_paths`` paths plus ``<unmatched>`` and ``<other>``."""

    __slots__ = ("_paths", "by_path", "max_paths", "total")

    def __init__(self, max_paths: int = MAX_PATHS) -> None:
        self.max_paths = max_paths
        self.total = 0
        self.by_path: dict[str, int] = {}
        self._paths = 0  # keys of by_path other than <unmatched> and <other>

    def add(self, path: str) -> None:
        self.total += 1
        counts = self.by_path
        if path in counts:
            counts[path] += 1
        elif path == UNMATCHED:
            counts[path] = 1
        elif self._paths < self.max_paths:
            counts[path] = 1
            self._paths += 1
        else:
            counts[OTHER] = counts.get(OTHER, 0) + 1

    def clear(self) -> None:
        self.total = self._paths = 0
        self.by_path.clear()

    def snapshot(self) -> dict[str, int]:
        return dict(self.by_path)
