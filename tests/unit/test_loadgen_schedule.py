"""The closed-loop runner end to end against an in-process server: totals, backend split, drain."""

from __future__ import annotations

import asyncio
import socket

from loadgen.config import load_config
from loadgen.report import build_report
from loadgen.schedule import ClosedLoop


class AlternatingServer:
    """Keep-alive server answering ``X-Backend-Id: a``/``b`` alternately; counts what it served."""

    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.delay = delay
        self.status = status
        self.connections = 0
        self.served = 0
        self.by_backend = {"a": 0, "b": 0}

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if self.delay:
                    await asyncio.sleep(self.delay)
                backend = "ab"[self.served % 2]
                self.served += 1
                self.by_backend[backend] += 1
                head = f"HTTP/1.1 {self.status} X\r\nContent-Length: 2\r\nX-Backend-Id: {backend}\r\n\r\n"
                writer.write(head.encode() + b"ok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_closed_loop_totals_and_backend_split_match_the_server() -> None:
    ticks: list[int] = []

    async def main() -> tuple[dict, AlternatingServer]:
        srv = AlternatingServer()
        url = await srv.start()
        cfg = load_config([url, "--concurrency", "4", "--duration", "1", "--quiet"], {})
        result = await ClosedLoop(cfg, on_tick=lambda second, timeline: ticks.append(second)).run()
        srv.server.close()
        return build_report(cfg, result.timeline, result.started_at, result.elapsed_s), srv

    report, srv = asyncio.run(main())
    assert ticks == [1]
    assert srv.connections == 4  # keep-alive: one connection per worker for the whole run
    assert report["requests"] == report["responses"] == srv.served > 100
    assert report["failed"] == 0
    assert report["status"] == {"200": srv.served}
    assert report["backends"] == srv.by_backend
    assert abs(report["backends"]["a"] - report["backends"]["b"]) <= 1
    assert report["errors"] == {"connect": 0, "timeout": 0, "reset": 0, "other": 0}
    assert 1.0 <= report["elapsed_s"] < 1.5
    assert report["rps"] > 0
    assert [e["second"] for e in report["timeline"]] == [0]  # duration 1 s -> one whole second
    assert sum(e["requests"] for e in report["timeline"]) == srv.served
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]


def test_drain_waits_for_in_flight_requests() -> None:
    # Each response takes 0.3 s and the run is 0.5 s: at the deadline every worker has one
    # request in flight. None may be lost, none may be abandoned.
    async def main() -> tuple[dict, AlternatingServer]:
        srv = AlternatingServer(delay=0.3, status=503)
        url = await srv.start()
        cfg = load_config([url, "-c", "3", "-d", "0.5", "--quiet"], {})
        result = await ClosedLoop(cfg).run()
        srv.server.close()
        return build_report(cfg, result.timeline, result.started_at, result.elapsed_s), srv

    report, srv = asyncio.run(main())
    assert srv.served == 6  # 3 workers x (sent at 0 s and at 0.3 s)
    assert report["requests"] == report["responses"] == 6
    assert report["failed"] == 6  # 503 counts as failed
    assert report["status"] == {"503": 6}
    assert report["elapsed_s"] >= 0.6


def test_refused_target_gives_connect_errors_and_stop_ends_early() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> dict:
        cfg = load_config([f"http://127.0.0.1:{port}/", "-c", "2", "-d", "30", "--quiet"], {})
        runner = ClosedLoop(cfg)
        asyncio.get_running_loop().call_later(0.2, runner.stop)
        result = await runner.run()
        assert result.stopped_early
        assert result.elapsed_s < 2
        return build_report(cfg, result.timeline, result.started_at, result.elapsed_s)

    report = asyncio.run(main())
    assert report["responses"] == 0
    assert report["requests"] == report["failed"] == report["errors"]["connect"] > 0
