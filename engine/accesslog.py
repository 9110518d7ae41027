"""One JSON line per request on stdout (the proxy's and asgilab's access log: one format for both).

Lines are collected and written in batches (every 50 ms or 512 lines): a
write+flush per request would be a syscall on the hot path, while never
flushing would leave lines stuck in a pipe buffer (docker logs would lag).
"""

from __future__ import annotations

import asyncio
import sys
import time
from json.encoder import encode_basestring_ascii as _q
from typing import TextIO

FLUSH_INTERVAL = 0.05  # seconds a line may wait in memory
FLUSH_LINES = 512  # or flush as soon as this many are waiting
PIPE_BUF = 4096  # Linux's atomic pipe-write size; lines are ASCII, so len() counts bytes


class AccessLog:
    """Formats by hand (C-accelerated string quoting only) to stay cheap per request."""

    def __init__(self, stream: TextIO | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.loop = loop
        self._lines: list[str] = []
        self._scheduled = False
        self._sec = -1
        self._sec_text = ""
        self._ms = -1
        self._time_field = ""  # '{"time": "...", ' for the current millisecond
        self._quoted: dict[str | None, str] = {None: "null"}  # upstream label -> JSON string

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
        # Under load many lines share a millisecond and an upstream: their text is reused, not
        # formatted again. Times are printed with 6 decimals, the same values round(x, 6) gives.
        now = time.time()
        ms = int(now * 1000)
        if ms != self._ms:
            self._ms = ms
            self._time_field = f'{{"time": "{self._timestamp(now)}", '
        up = self._quoted.get(upstream)
        if up is None:
            up = "null" if upstream is None else _q(upstream)
            if len(self._quoted) < 1024:
                self._quoted[upstream] = up
        self._lines.append(
            f'{self._time_field}"request_id": {_q(request_id.decode("latin-1"))}, '
            f'"method": {_q(method.decode("latin-1"))}, '
            f'"path": {_q(path.decode("latin-1"))}, '
            f'"status": {status}, "bytes": {nbytes}, "upstream": {up}, '
            f'"upstream_time": {"null" if upstream_time is None else f"{upstream_time:.6f}"}, '
            f'"total_time": {total_time:.6f}}}\n'
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
        lines = self._lines
        if not lines:
            return
        self._lines = []
        try:
            # Each write() is at most PIPE_BUF bytes and ends at a line end: the kernel makes such
            # writes to a pipe atomic, so with --workers N sharing stdout no line is ever torn.
            chunk: list[str] = []
            size = 0
            for line in lines:
                if size + len(line) > PIPE_BUF and chunk:
                    self.stream.write("".join(chunk))
                    self.stream.flush()
                    chunk.clear()
                    size = 0
                chunk.append(line)
                size += len(line)
            self.stream.write("".join(chunk))
            self.stream.flush()
        except (OSError, ValueError):  # stdout gone (closed pipe): logging must not kill the proxy
            pass
