"""One JSON line per request on stdout.

Lines are collected and written in batches (every 50 ms or 512 lines): a
write+flush per request would be a syscall on the hot path, while never
flushing would leave lines stuck in a pipe buffer (docker logs would lag).
"""

from __future__ import annotations

import asyncio
import sys
import time
from json.encoder import encode_basestring_ascii as _q  # type: ignore[attr-defined]
from typing import TextIO

FLUSH_INTERVAL = 0.05  # seconds a line may wait in memory
FLUSH_LINES = 512  # or flush as soon as this many are waiting


class AccessLog:
    """Formats by hand (C-accelerated string quoting only) to stay cheap per request."""

    def __init__(self, stream: TextIO | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.loop = loop
        self._lines: list[str] = []
        self._scheduled = False
        self._sec = -1
        self._sec_text = ""

    def _timestamp(self, now: float) -> str:
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._sec_text}.{int((now - sec) * 1000):03d}Z"

    def log(
        self,
        request_id: bytes,
        method: bytes,
        path: bytes,
        status: int,
        nbytes: int,
        upstream: str | None,
        upstream_time: float | None,
        total_time: float,
    ) -> None:
        self._lines.append(
            f'{{"time": "{self._timestamp(time.time())}", '
            f'"request_id": {_q(request_id.decode("latin-1"))}, '
            f'"method": {_q(method.decode("latin-1"))}, '
            f'"path": {_q(path.decode("latin-1"))}, '
            f'"status": {status}, "bytes": {nbytes}, '
            f'"upstream": {"null" if upstream is None else _q(upstream)}, '
            f'"upstream_time": {"null" if upstream_time is None else round(upstream_time, 6)}, '
            f'"total_time": {round(total_time, 6)}}}\n'
        )
        if not self._scheduled:
            self._scheduled = True
            if self.loop is not None:
                self.loop.call_later(FLUSH_INTERVAL, self.flush)
            else:
                self.flush()
        elif len(self._lines) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stdout gone (closed pipe): logging must not kill the proxy
            pass
