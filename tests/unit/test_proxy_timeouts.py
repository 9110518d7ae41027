"""Timeouts: upstream connect and response headers (504), client headers and body (408)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from tests.unit.harness import (
    FakeUpstream,
    access_lines,
    addr,
    connect,
    fetch,
    get,
    pattern,
    proxy,
    read_response,
    run,
)


def test_upstream_response_header_timeout_gives_504_and_is_not_retried() -> None:
    async def main() -> None:
        async with (
            FakeUpstream() as a,
            FakeUpstream() as b,
            proxy(endpoints=[addr(a), addr(b)], upstream_timeout=0.2) as srv,
        ):
            resp = await fetch(srv.port, get("/hang"))
            assert resp.status == 504 and b"sent no response within 0.2s" in resp.body
            assert len(a.requests) + len(b.requests) == 1, "a timed-out request may still be running"
            (line,) = access_lines(srv)
            assert line["status"] == 504
            assert (await fetch(srv.port, get("/"))).status == 200

    run(main)


def test_upstream_connect_timeout_moves_on_to_the_next_replica(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        # A listener that never accepts, with its backlog full: connects to it hang.
        black = socket.socket()
        black.bind(("127.0.0.1", 0))
        black.listen(0)
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(black.getsockname())
            fillers.append(s)
        await asyncio.sleep(0.05)
        try:
            async with (
                FakeUpstream() as up,
                proxy(endpoints=[black.getsockname(), addr(up)], connect_timeout=0.2, fail_timeout=0) as srv,
            ):
                for _ in range(3):
                    assert (await fetch(srv.port, get("/"))).status == 200
                assert srv.state is not None
                assert srv.state.counters.count("retries", "connect-failure") >= 1
                assert any("timed out after 0.2s" in rec.getMessage() for rec in caplog.records)
        finally:
            for s in [*fillers, black]:
                s.close()

    run(main)


def test_slow_client_headers_get_408_and_close_while_others_are_served() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, client_header_timeout=0.5) as srv:
            slow_r, slow_w = await connect(srv.port)
            slow_w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            slow_answer = asyncio.ensure_future(read_response(slow_r))
            r, w = await connect(srv.port)
            for i in range(20):
                w.write(get(f"/n{i}"))
                assert (await read_response(r)).body == f"ok GET /n{i}".encode()
            assert not slow_answer.done(), "the other client was served while the slow one still waited"
            resp = await slow_answer
            assert resp.status == 408 and resp.get("Connection") == "close"
            assert await asyncio.wait_for(slow_r.read(), 3) == b""
            w.close()
            assert srv.state is not None and srv.state.counters.count("rejected", "408") == 1
            assert [line["status"] for line in access_lines(srv)].count(408) == 1

    run(main)


def test_stalled_request_body_gets_408_and_the_upstream_is_let_go(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, client_body_timeout=0.3) as srv:
            r, w = await connect(srv.port)
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 30)
            resp = await read_response(r)
            assert resp.status == 408 and b"no request body data for 0.3s" in resp.body
            assert await asyncio.wait_for(r.read(), 3) == b""
            await asyncio.sleep(0.05)
            assert up.requests == [] and up.closed == 1, "the half-sent upstream request was abandoned"
            (line,) = access_lines(srv)
            assert line["status"] == 408
            assert srv.state is not None and srv.state.counters.count("rejected", "408") == 1

    run(main, loop_kind)


def test_a_body_sent_slowly_but_steadily_is_not_timed_out() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, client_body_timeout=0.3) as srv:
            r, w = await connect(srv.port)
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
            for _ in range(8):  # 0.96 s in total, but never 0.3 s without data
                await asyncio.sleep(0.12)
                w.write(b"s")
            resp = await read_response(r)
            assert resp.status == 200 and resp.body == b"ssssssss"

    run(main)


def test_back_pressure_from_the_upstream_is_not_blamed_on_the_client() -> None:
    async def main() -> None:
        n = 16 * 1024 * 1024
        # The timeout leaves room for a loaded machine (the 16 MiB move in many reads once released).
        async with FakeUpstream() as up, proxy(up.port, client_body_timeout=0.5) as srv:
            r, w = await connect(srv.port)
            # The upstream reads nothing for 2 s: the proxy stops reading the client meanwhile.
            w.write(b"POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n)
            w.write(pattern(n))
            await asyncio.sleep(2.0)
            up.release.set()
            resp = await read_response(r)
            posted = [seen for seen in up.requests if seen.target == "/stall"]
            assert resp.status == 200 and len(posted) == 1 and len(posted[0].body) == n
            w.close()

    run(main)
