"""Fuzz target: response bytes into the load generator's ``loadgen.client.Connection``.

The first input byte chooses HEAD or GET and how the bytes are cut into reads; the rest is
what "the server" answers, possibly several responses on one keep-alive connection. The
connection gets an in-memory transport, sends a request, and is fed the bytes; whenever a
request completes and the connection stays open, the next request is sent.

Invariants: nothing raises out of the parser callbacks or ``_data_received``; each ``send``
gets exactly one outcome (counting the final connection loss), never two; an outcome is a
status 100..999 with no error, or status 0 with one of ``ERROR_KINDS``; the loop's exception
handler stays silent.
"""

from __future__ import annotations

import asyncio

from fuzz.invariants import Finding, LogWatch, install_log_watch, watch_loop
from fuzz.wire import MemoryTransport, segments

MAX_SENDS = 64  # requests per input (a keep-alive run of tiny responses)


class LoadgenResponse:
    def __init__(self) -> None:
        from loadgen.client import ERROR_KINDS, build_request
        from loadgen.config import Target

        self.kinds = frozenset(ERROR_KINDS)
        self.watch: LogWatch = install_log_watch()
        self.loop = asyncio.new_event_loop()
        watch_loop(self.loop, self.watch)
        self.target = Target(host="127.0.0.1", port=9, host_header="127.0.0.1:9", path="/")
        self.get = build_request("GET", self.target)
        self.head = build_request("HEAD", self.target)

    def one(self, data: bytes) -> None:
        from loadgen.client import Connection, _Wire

        if not data:
            return
        flags = data[0]
        head = bool(flags & 1)
        pattern = data[:1] if flags & 0x80 else b""
        conn = Connection(self.target, self.head if head else self.get, 60.0, head=head, loop=self.loop)
        outcomes: list[list[tuple[int, str | None]]] = []

        def done(_sent: float, _done: float, status: int, _backend: bytes | None, error: str | None) -> None:
            outcomes[-1].append((status, error))

        def send() -> None:
            outcomes.append([])
            conn.send(done)

        # Connect by hand: the transport is in memory, the Wire is the connection's own.
        transport = MemoryTransport(("127.0.0.1", 9), self.loop)
        wire = _Wire(conn)
        transport.protocol = wire
        conn._transport = transport
        conn._wire = wire
        send()
        for seg in segments(data[1:], pattern):
            if transport.closing or conn._wire is not wire:
                break
            wire.data_received(seg)
            if not conn.busy and not conn._closed and len(outcomes) < MAX_SENDS:
                if conn._wire is not wire:
                    break  # the response closed the connection: a resend would dial
                send()
        transport.lose(None)
        if conn.busy:
            conn.fail_inflight("other")  # (what a drain does)
        conn.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.watch.check()
        for i, got in enumerate(outcomes):
            if len(got) != 1:
                raise Finding(f"request {i} got {len(got)} outcomes: {got!r}")
            status, error = got[0]
            if error is None and not 100 <= status <= 999:
                raise Finding(f"request {i}: success with status {status}")
            if error is not None and (status != 0 or error not in self.kinds):
                raise Finding(f"request {i}: error outcome {status}, {error!r}")


_TARGET: LoadgenResponse | None = None


def test_one_input(data: bytes) -> None:
    global _TARGET
    if _TARGET is None:
        _TARGET = LoadgenResponse()
    _TARGET.one(data)
