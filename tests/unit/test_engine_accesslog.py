"""The access log: its line format, a slow reader never stalling the loop, drops counted, and
lines longer than PIPE_BUF from several workers never interleaving on a shared pipe."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from engine.accesslog import PIPE_BUF, AccessLog
from proxy.counters import Counters

ROOT = Path(__file__).resolve().parents[2]


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_error_field_appears_only_when_given() -> None:
    import io

    out = io.StringIO()
    log = AccessLog(out)
    log.log(b"a", b"GET", b"/", 200, 5, None, None, 0.1)
    log.log(b"b", b"GET", b"/big", 200, 70000, "10.0.0.1:8001", 0.01, 9.5, error="client send timeout")
    plain, cut = _lines(out.getvalue())
    assert "error" not in plain
    assert list(cut)[-1] == "error" and cut["error"] == "client send timeout"
    assert cut["status"] == 200 and cut["bytes"] == 70000


def test_a_reader_that_stops_reading_never_blocks_logging_and_drops_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r, w = os.pipe()
    stream = os.fdopen(w, "w")
    events = Counters()
    log = AccessLog(stream, None, buffer_bytes=32 * 1024, counters=events)
    total = 4000  # ~ 700 KB of lines: far more than the pipe (64 KiB) and the buffer hold
    caplog.set_level(logging.WARNING, "engine.accesslog")

    def produce() -> None:
        for i in range(total):
            log.log(b"%d" % i, b"GET", b"/p" * 40, 200, 2, None, None, 0.001)
        log.flush()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    # Nobody reads the pipe: with blocking writes on the logging side this never ends.
    producer.join(60)
    assert not producer.is_alive(), "logging blocked on a pipe nobody reads"
    assert log.dropped > 0
    assert events.count("access_log_dropped") == log.dropped
    assert any("dropped" in r.getMessage() for r in caplog.records), "drops are reported on stderr"

    got = bytearray()

    def read() -> None:
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    log.close(30)  # what was queued reaches the reader once it reads
    stream.close()
    reader.join(30)
    os.close(r)
    lines = _lines(got.decode())
    assert len(lines) + log.dropped == total, "every line is either written or counted as dropped"
    ids = [int(x["request_id"]) for x in lines]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "written lines are whole and in order"


def _worker_writes(n: int, worker: int) -> int:
    """One worker: n lines of 3 x PIPE_BUF each, the path made of its own letter."""
    log = AccessLog(sys.stdout, None)
    letter = b"abcdefgh"[worker : worker + 1]
    for i in range(n):
        log.log(b"%d-%d" % (worker, i), b"GET", b"/" + letter * (3 * PIPE_BUF), 200, 0, None, None, 0.0)
    log.close(30)
    time.sleep(600)  # a worker serves until told to stop: the test sends SIGTERM once it read all
    return 0


def supervised(workers: int, n: int) -> int:
    from engine.workers import supervise

    return supervise(workers, partial(_worker_writes, n), "accesslog-test")


def test_lines_longer_than_pipe_buf_from_several_workers_never_interleave() -> None:
    workers, n = 3, 80
    code = (
        "import sys; from tests.unit.test_engine_accesslog import supervised; "
        f"sys.exit(supervised({workers}, {n}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    got = bytearray()
    # Small reads keep the pipe full, so the workers' writes meet there (where a write over
    # PIPE_BUF may be split and another process's bytes land inside it).
    try:
        while got.count(b"\n") < workers * n and (chunk := proc.stdout.read1(1024)):
            got.extend(chunk)
    finally:
        proc.terminate()  # the supervisor forwards SIGTERM to its workers
        assert proc.wait(60) == 0
    per_worker: Counter[str] = Counter()
    for raw in got.decode().splitlines():
        line = json.loads(raw)  # a torn line is not JSON
        path = line["path"]
        letter = path[1]
        assert path == "/" + letter * (3 * PIPE_BUF), "a line mixes two workers' bytes"
        assert line["request_id"].startswith(f"{'abcdefgh'.index(letter)}-")
        per_worker[letter] += 1
    assert per_worker == {"a": n, "b": n, "c": n}
