"""The proxy's Python cost per request (CPU time), without sockets: a steady profile target.

Wall-clock benchmarks on a shared machine move by 30% between runs; this one replaces both
transports with in-memory fakes and drives one keep-alive client connection and one pooled
upstream connection through ``N`` GET requests, so what it reports (microseconds of Python per
proxied request) is the part of the cost the code controls, free of kernel and scheduler noise.
The rest (four syscalls per request: read + writev towards each side) is in the host benchmark.

    python -m benchmarks.hotpath [-n 200000] [--profile]      # --profile: cProfile top 25
    python -m benchmarks.hotpath --access-log                 # with the JSON access log (to /dev/null)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Iterable

from engine.process import new_event_loop
from proxy.config import Config
from proxy.downstream import DownstreamProtocol
from proxy.server import ProxyServer
from proxy.upstream import UpstreamConnection

CHUNK = 5000  # requests per timed batch

# What wrk sends, and what the static nginx upstream answers (12-byte body).
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 18:40:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n"
)


class InMemoryTransport(asyncio.Transport):
    """The no-op part of the Transport API that both in-memory benchmarks need (this one and
    ``benchmarks.asgi_hotpath``); subclasses say what a write does."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class FakeTransport(InMemoryTransport):
    """Counts bytes written; enough of the Transport API for both protocols."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for d in list_of_data:
            self.written += len(d)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default


async def drive(n: int, access_log: bool, profile: bool) -> float:
    cfg = Config(
        upstream_host="127.0.0.1",
        upstream_port=9,
        listen_host="127.0.0.1",
        listen_port=0,
        admin_host=None,
        access_log=access_log,
        log_level="WARNING",
    )
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below
    server = ProxyServer(cfg, access_log_stream=sink, endpoints=[("127.0.0.1", 9)])
    await server.start()
    try:
        state = server.state
        assert state is not None
        ep = state.group.live[0]
        up = UpstreamConnection(ep, cfg.upstream_read_timeout)
        up_t = FakeTransport(("127.0.0.1", 9))
        up.connection_made(up_t)
        ep.put_idle(up)
        down = DownstreamProtocol(server.site)  # type: ignore[arg-type]
        down_t = FakeTransport(("127.0.0.1", 40000))
        down.connection_made(down_t)

        def one() -> None:
            down.data_received(REQUEST)
            up.data_received(RESPONSE)

        for _ in range(1000):  # warm caches and the pool
            one()
        before = down_t.written
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        # The best of many short batches: a batch that other processes interrupted (cache and
        # TLB thrash, frequency changes) runs slower, never faster, so the minimum is the cost.
        batch = min(CHUNK, n)
        best = float("inf")
        for _ in range(max(1, n // batch)):
            t0 = time.process_time()
            for _ in range(batch):
                one()
            best = min(best, time.process_time() - t0)
        if prof:
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        per = (down_t.written - before) / (max(1, n // batch) * batch)
        if per < len(RESPONSE) - 60:  # sanity: a response per request reached the client
            raise RuntimeError(f"client got {per:.0f} bytes per request; the proxy path did not complete")
        return best / batch * 1e6
    finally:
        await server.close()
        sink.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200_000, help="requests (default 200000)")
    p.add_argument("--access-log", action="store_true", help="JSON access log on (written to /dev/null)")
    p.add_argument("--profile", action="store_true", help="print cProfile's top functions to stderr")
    p.add_argument("--repeat", type=int, default=3, help="runs; the best is reported (default 3)")
    a = p.parse_args(argv)
    best = float("inf")
    for _ in range(1 if a.profile else a.repeat):
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            best = min(best, runner.run(drive(a.n, a.access_log, a.profile)))
    print(
        f"python per proxied request: {best:.2f} us (best {CHUNK}-request batch of {a.repeat} x {a.n}, "
        f"access log {'on' if a.access_log else 'off'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
