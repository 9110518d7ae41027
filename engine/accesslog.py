"""One JSON line per request on stdout (the proxy's and asgilab's access log: one format for both).

Lines are collected and handed on in batches (every 50 ms or 512 lines): a write+flush per
request would be a syscall on the hot path, while never flushing would leave lines stuck in a
pipe buffer (docker logs would lag).

Writing never blocks the event loop. A stream with a file descriptor (stdout: a pipe, a file, a
terminal) is written by one writer thread per log; the loop only appends a batch to its queue.
A reader that stops reading (a stuck ``docker logs`` pipe, a paused terminal) then stalls that
thread, not the traffic: the queue holds at most ``BUFFER_BYTES``, and a batch that does not fit
is dropped, counted (``dropped``, and the ``access_log_dropped`` event of ``counters``) and
reported on stderr at most every ``DROP_WARN_INTERVAL`` seconds: never lost silently. An
in-memory stream (``io.StringIO`` in tests) cannot block and is written at once.

With ``--workers`` every worker writes the same stdout. The kernel keeps a pipe write whole only
up to ``PIPE_BUF`` (4 KiB), so a longer line could be cut by another worker's write; the
supervisor therefore gives its workers one lock (``share_lock``, ``engine/workers.py``) and a
writer holds it for each whole batch: no line is ever torn, whatever its length.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from json.encoder import encode_basestring_ascii as _q
from typing import Protocol, TextIO

from engine.handler import EventCounter

FLUSH_INTERVAL = 0.05  # seconds a line may wait in memory
FLUSH_LINES = 512  # or flush as soon as this many are waiting
PIPE_BUF = 4096  # Linux's atomic pipe-write size; lines are ASCII, so len() counts bytes
BUFFER_BYTES = 4 * 1024 * 1024  # bytes a writer may hold for a slow reader before batches are dropped
DROP_WARN_INTERVAL = 10.0  # seconds between two stderr warnings about dropped lines
CLOSE_WAIT_S = 2.0  # at exit, how long the queued lines get to reach a slow reader

log = logging.getLogger("engine.accesslog")


class SharedLock(Protocol):
    """A lock all workers share (``multiprocessing.Lock``): held while a batch is written."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


_shared_lock: SharedLock | None = None


def share_lock(lock: SharedLock | None) -> None:
    """Called in each worker before it starts serving: every log it creates then writes under ``lock``."""
    global _shared_lock
    _shared_lock = lock


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.StringIO raises UnsupportedOperation (an OSError)
        return None


class _Writer:
    """The thread that writes one log's batches to a file descriptor, so the loop never waits for it."""

    def __init__(self, fd: int, limit: int, lock: SharedLock | None) -> None:
        self.fd = fd
        self.limit = limit
        self.lock = lock
        self.queue: deque[bytes] = deque()
        self.queued = 0  # bytes queued or being written: what counts against ``limit``
        self.cond = threading.Condition()
        self.closing = False
        self.thread: threading.Thread | None = None

    def submit(self, data: bytes) -> bool:
        """Queue ``data``; False (nothing queued) when the queue would pass its limit."""
        with self.cond:
            if self.closing or self.queued + len(data) > self.limit:
                return False
            self.queue.append(data)
            self.queued += len(data)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="access-log", daemon=True)
                self.thread.start()
                _writers.add(self)
            self.cond.notify()
        return True

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                data = b"".join(self.queue)
                self.queue.clear()
            self._write(data)
            with self.cond:
                self.queued -= len(data)
                self.cond.notify_all()

    def _write(self, data: bytes) -> None:
        lock = self.lock
        try:
            if lock is None:
                self._write_atomic_chunks(data)
                return
            # No timeout: the holder may wait long on a slow reader, and writing anyway would tear
            # lines. A holder killed while holding it only stops the others' writer threads (their
            # loops go on, their queues fill and drop, counted), and the supervisor stops every
            # worker when one dies.
            lock.acquire()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
            finally:
                lock.release()
        except OSError:  # stdout gone (closed pipe): logging must not kill the server
            pass

    def _write_atomic_chunks(self, data: bytes) -> None:
        """Without a shared lock (one process, or no semaphores): each write() at most PIPE_BUF bytes
        and ending at a line end, which a pipe keeps whole even if another process writes too; only a
        line longer than PIPE_BUF is written alone and could then be cut by such a process."""
        start, end = 0, len(data)
        while start < end:
            stop = end if end - start <= PIPE_BUF else data.rfind(b"\n", start, start + PIPE_BUF) + 1
            if stop <= start:  # one line longer than PIPE_BUF
                stop = data.index(b"\n", start) + 1
            view = memoryview(data)[start:stop]
            while view:
                view = view[os.write(self.fd, view) :]
            start = stop

    def close(self, timeout: float) -> None:
        """Let the thread write what is queued (up to ``timeout`` seconds), then end it."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)


_writers: weakref.WeakSet[_Writer] = weakref.WeakSet()


@atexit.register
def _close_writers() -> None:
    """At exit the queued lines still go out (a daemon thread would be stopped mid-queue)."""
    for writer in list(_writers):
        writer.close(CLOSE_WAIT_S)


class AccessLog:
    """Formats by hand (C-accelerated string quoting only) to stay cheap per request."""

    def __init__(
        self,
        stream: TextIO | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        buffer_bytes: int = BUFFER_BYTES,
        counters: EventCounter | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.loop = loop
        self.counters = counters  # gets ``access_log_dropped``; may be set after construction
        self.dropped = 0  # lines dropped because the reader did not keep up (since start)
        self._dropped_reported = 0
        self._warned_at = -DROP_WARN_INTERVAL
        fd = _fileno(self.stream)
        if fd is not None:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                self.stream.flush()  # whatever was printed through the stream goes first
        self._writer = None if fd is None else _Writer(fd, buffer_bytes, _shared_lock)
        if self._writer is not None:
            # A log nobody holds any more lets its thread write what is queued and end.
            weakref.finalize(self, self._writer.close, 0.0)
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
        error: str | None = None,
    ) -> None:
        """One request's line; ``error`` (why the server cut the exchange short) only when given."""
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
            f'"total_time": {total_time:.6f}' + ("}\n" if error is None else f', "error": {_q(error)}}}\n')
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
        """Hand the waiting lines on (to the writer thread, or straight into an in-memory stream)."""
        self._scheduled = False
        lines = self._lines
        if not lines:
            return
        self._lines = []
        text = "".join(lines)
        writer = self._writer
        if writer is None:
            with contextlib.suppress(OSError, ValueError):  # a closed stream must not kill the server
                self.stream.write(text)
                self.stream.flush()
            return
        if not writer.submit(text.encode("ascii")):  # (quoted by encode_basestring_ascii: ASCII)
            self._drop(len(lines))

    def _drop(self, n: int) -> None:
        self.dropped += n
        if self.counters is not None:
            self.counters.inc("access_log_dropped", "", n)
        now = time.monotonic()
        if now - self._warned_at >= DROP_WARN_INTERVAL:
            self._warned_at = now
            self._report_drops()

    def _report_drops(self) -> None:
        log.warning(
            "access log: %d line(s) dropped since the last report, %d in all: stdout is not read "
            "fast enough (%d bytes queued for it now)",
            self.dropped - self._dropped_reported,
            self.dropped,
            self._writer.queued if self._writer is not None else 0,
        )
        self._dropped_reported = self.dropped

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Flush, give the writer thread up to ``timeout`` seconds to write what it holds, and
        report drops the last warning did not cover (the total is always on stderr)."""
        self.flush()
        if self._writer is not None:
            self._writer.close(timeout)
        if self.dropped > self._dropped_reported:
            self._report_drops()
