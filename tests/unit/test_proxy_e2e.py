"""End-to-end tests: a real proxy in-process between raw-socket clients and a fake asyncio upstream."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from proxy.server import ProxyServer
from tests.unit.harness import (
    FakeUpstream,
    access_lines,
    addr,
    connect,
    fetch,
    free_port,
    get,
    hget,
    pattern,
    proxy,
    read_chunked,
    read_head,
    read_response,
    run,
)


# -- tests ----------------------------------------------------------------------------------------
def test_get_forwarded_headers_request_id_and_access_log(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            resp = await fetch(srv.port, get("/a?b=1", "X-Forwarded-For: 10.0.0.1\r\n"))
            assert resp.status == 200 and resp.body == b"ok GET /a?b=1"
            seen = up.requests[0]
            # The client (127.0.0.1) is no trusted proxy: its own X-Forwarded-For is dropped.
            assert seen.get("X-Forwarded-For") == "127.0.0.1"
            assert seen.get("X-Forwarded-Proto") == "http"
            assert seen.get("X-Forwarded-Host") == "example.test"
            assert seen.get("Host") == "example.test"
            rid = seen.get("X-Request-ID")
            assert rid and len(rid) == 32
            assert resp.get("X-Request-ID") == rid
            (line,) = access_lines(srv)
            assert line["request_id"] == rid and line["method"] == "GET" and line["path"] == "/a?b=1"
            assert line["status"] == 200 and line["bytes"] == len(resp.body)
            assert line["upstream"] == f"127.0.0.1:{up.port}"
            assert 0 <= line["upstream_time"] <= line["total_time"]
            assert line["time"].endswith("Z") and "T" in line["time"]

            resp2 = await fetch(srv.port, get("/", "X-Request-ID: abc-123\r\n"))
            assert up.requests[1].get("X-Request-ID") == "abc-123"
            assert resp2.get("X-Request-ID") == "abc-123"
            assert up.requests[1].get("X-Request-ID") != rid

    run(main, loop_kind)


def test_hop_by_hop_headers_dropped_both_ways() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            resp = await fetch(
                srv.port,
                get(
                    "/hop",
                    "Connection: keep-alive, X-Private\r\nX-Private: p\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
                    "Proxy-Authorization: Basic x\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\n"
                    "Upgrade: websocket\r\nX-Public: yes\r\n",
                ),
            )
            seen = up.requests[0]
            for name in (
                "Connection",
                "X-Private",
                "Keep-Alive",
                "TE",
                "Proxy-Authorization",
                "Proxy-Connection",
                "Trailer",
                "Upgrade",
            ):
                assert not seen.has(name), name
            assert seen.get("X-Public") == "yes"
            assert resp.status == 200 and resp.body == b"ok"
            for name in ("X-Secret", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade", "Connection"):
                assert resp.get(name) is None, name
            assert resp.get("X-Kept") == "yes"
            assert resp.get("X-Request-ID") == seen.get("X-Request-ID")

    run(main)


def test_pool_reuses_connection_and_expires_idle(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, pool_idle_timeout=0.2) as srv:
            for _ in range(3):  # separate client connections share one upstream connection
                assert (await fetch(srv.port, get("/"))).status == 200
            assert up.connections == 1
            assert srv.state is not None
            assert len(srv.state.group.live[0].idle) == 1
            await asyncio.sleep(0.5)
            assert up.closed == 1, "idle pooled connection should be closed by the proxy"
            assert len(srv.state.group.live[0].idle) == 0
            assert (await fetch(srv.port, get("/"))).status == 200
            assert up.connections == 2

    run(main, loop_kind)


def test_pool_max_idle_limits_kept_connections() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, pool_max_idle=1) as srv:
            results = await asyncio.gather(*(fetch(srv.port, get("/slow?0.1")) for _ in range(3)))
            assert [r.status for r in results] == [200, 200, 200]
            assert up.connections == 3
            assert srv.state is not None and len(srv.state.group.live[0].idle) == 1

    run(main)


def test_stale_pooled_connection_is_not_used(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            assert (await fetch(srv.port, get("/"))).status == 200
            for w in up.writers:  # the backend closes its idle keep-alive connection
                w.close()
            await asyncio.sleep(0.05)
            assert (await fetch(srv.port, get("/"))).status == 200
            assert up.connections == 2

    run(main, loop_kind)


def test_reused_connection_failing_before_response_retries_get_not_post() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            up.drop_reused = True  # pooled connection looks fine but resets on the next request
            assert (await fetch(srv.port, get("/"))).status == 200
            resp = await fetch(srv.port, get("/again"))
            assert resp.status == 200 and resp.body == b"ok GET /again"
            assert up.connections == 2
            post = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            resp = await fetch(srv.port, post)
            assert resp.status == 502, "a request with a body must never be retried"
            assert b"closed the connection" in resp.body
            assert [r.target for r in up.requests].count("/echo") == 0

    run(main)


def test_502_when_nothing_listens(loop_kind: str) -> None:
    async def main() -> None:
        port = free_port()
        async with proxy(port) as srv:
            resp = await fetch(srv.port, get("/"))
            assert resp.status == 502
            assert f"connect to 127.0.0.1:{port} failed".encode() in resp.body
            assert resp.get("X-Request-ID")
            (line,) = access_lines(srv)
            assert line["status"] == 502 and line["upstream"] == f"127.0.0.1:{port}"
            assert line["upstream_time"] is None
        async with proxy(endpoints=[]) as srv:
            resp = await fetch(srv.port, get("/"))
            assert resp.status == 502 and b"no upstream endpoints for 127.0.0.1:0" in resp.body

    run(main, loop_kind)


def test_connect_failure_fails_over_to_next_endpoint_even_with_a_body() -> None:
    async def main() -> None:
        dead = ("127.0.0.1", free_port())
        async with FakeUpstream() as up:
            live = ("127.0.0.1", up.port)
            async with proxy(endpoints=[dead, live], fail_timeout=0) as srv:
                for _ in range(6):
                    assert (await fetch(srv.port, get("/"))).status == 200
                # A refused connect means the request never left the proxy, so a POST moves on too,
                # and its body (held by the proxy meanwhile) arrives whole.
                post = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                for _ in range(2):
                    assert (await fetch(srv.port, post)).status == 200
                assert [r.body for r in up.requests if r.method == "POST"] == [b"hello", b"hello"]

    run(main)


def test_failed_endpoint_gets_no_new_requests_for_fail_timeout(caplog: pytest.LogCaptureFixture) -> None:
    dead = ("127.0.0.1", free_port())
    refused = f"connect to 127.0.0.1:{dead[1]} failed"

    async def main(fail_timeout: float) -> int:
        caplog.clear()
        # Outlier ejection off: 5 refused connects in a row would eject the endpoint (test_proxy_outlier).
        cfg = {"fail_timeout": fail_timeout, "outlier_consecutive_failures": 0}
        async with FakeUpstream() as up, proxy(endpoints=[dead, addr(up)], **cfg) as srv:
            for _ in range(8):
                assert (await fetch(srv.port, get("/"))).status == 200
            if fail_timeout:
                (view,) = [e for e in srv.state.group.snapshot() if e["address"] == f"127.0.0.1:{dead[1]}"]
                assert view["failed_recently"] is True
        return sum(refused in r.getMessage() for r in caplog.records)

    assert asyncio.run(main(60)) == 1, "after one refused connect the endpoint is skipped"
    # Without the cool-down the dead endpoint gets every request's first try: the retry's own pick
    # advances the round-robin cursor, so the next request lands on the dead endpoint again.
    assert asyncio.run(main(0)) == 8, "with --fail-timeout 0 every request tries it first"


def test_every_endpoint_failing_gives_502_and_is_still_retried_later() -> None:
    async def main() -> None:
        dead = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
        async with proxy(endpoints=dead, fail_timeout=60) as srv:
            first = await fetch(srv.port, get("/"))
            assert first.status == 502 and b"failed: Connection refused" in first.body
            # All endpoints cooling down: the proxy still tries them rather than refusing outright.
            second = await fetch(srv.port, get("/"))
            assert second.status == 502 and b"connect to" in second.body

    run(main)


def test_504_on_upstream_timeout() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, upstream_timeout=0.2) as srv:
            resp = await fetch(srv.port, get("/hang"))
            assert resp.status == 504 and b"504 Gateway Timeout" in resp.body
            assert (await fetch(srv.port, get("/"))).status == 200

    run(main)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ],
    # Ambiguous framings (Content-Length with Transfer-Encoding, unknown codings...) are the
    # cases of test_proxy_smuggling.py.
    ids=["garbage", "no-host"],
)
def test_400_on_malformed_request(raw: bytes) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(raw)
            resp = await read_response(r)
            assert resp.status == 400 and resp.body.startswith(b"400 Bad Request")
            assert resp.get("Connection") == "close"
            assert await r.read() == b""  # connection closed
            assert up.requests == []
            (line,) = access_lines(srv)  # refused requests are logged too, like nginx's 400s
            assert line["status"] == 400 and line["upstream"] is None

    run(main)


def test_408_on_slow_headers() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, client_header_timeout=0.2) as srv:
            r, w = await connect(srv.port)
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            resp = await read_response(r)
            assert resp.status == 408 and resp.get("Connection") == "close"
            assert await r.read() == b""
            (line,) = access_lines(srv)
            assert line["status"] == 408 and line["path"] == "/"

    run(main)


def test_chunked_request_body_is_reframed_and_streamed(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n")
            await asyncio.sleep(0.05)
            w.write(b"4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n")
            resp = await read_response(r)
            assert resp.status == 200 and resp.body == b"abcdefg"
            seen = up.requests[0]
            assert seen.get("Transfer-Encoding") == "chunked" and not seen.has("Content-Length")
            assert sum(seen.chunk_sizes) == 7
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            resp = await read_response(r)
            assert resp.body == b"hello"
            assert up.requests[1].get("Content-Length") == "5" and not up.requests[1].has("Transfer-Encoding")
            w.close()

    run(main, loop_kind)


def test_chunked_response_is_streamed(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(get("/chunked"))
            line, headers = await read_head(r)
            assert line.startswith("HTTP/1.1 200") and hget(headers, "Transfer-Encoding") == "chunked"
            # The first chunk arrives while the upstream is still holding back the rest.
            assert await r.readuntil(b"\r\n") == b"5\r\n"
            assert await r.readexactly(7) == b"hello\r\n"
            up.release.set()
            assert await read_chunked(r) == b" world"
            w.close()

    run(main, loop_kind)


def test_large_bodies_pass_intact(loop_kind: str) -> None:
    async def main() -> None:
        n = 6 * 1024 * 1024 + 7
        data = pattern(n)
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n)
            w.write(data)
            resp = await read_response(r)
            assert hashlib.sha256(resp.body).digest() == hashlib.sha256(data).digest()
            w.write(get(f"/big?{n}"))
            resp = await read_response(r)
            assert len(resp.body) == n and resp.body == data
            w.close()

    run(main, loop_kind)


def test_head_keepalive_http10_and_close_delimited() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(b"HEAD /big?100 HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = await read_response(r, "HEAD")
            assert resp.status == 200 and resp.get("Content-Length") == "100"
            w.write(get("/after-head"))  # same client conn and same pooled upstream conn
            assert (await read_response(r)).body == b"ok GET /after-head"
            assert up.connections == 1
            # close-delimited upstream body is re-chunked for an HTTP/1.1 client
            w.write(get("/eof"))
            resp = await read_response(r)
            assert resp.get("Transfer-Encoding") == "chunked" and resp.body == b"until-eof"
            w.close()
            # HTTP/1.0 without keep-alive: close-delimited response, connection closed
            resp = await fetch(srv.port, b"GET /eof HTTP/1.0\r\n\r\n")
            assert resp.body == b"until-eof" and resp.get("Transfer-Encoding") is None
            # HTTP/1.0 with keep-alive stays open
            r, w = await connect(srv.port)
            w.write(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            resp = await read_response(r)
            assert resp.get("Connection") == "keep-alive"
            w.write(b"GET /y HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert (await read_response(r)).body == b"ok GET /y"
            w.close()

    run(main)


def test_pipelined_requests_answered_in_order() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(
                get("/slow?0.1")
                + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                + get("/third")
            )
            bodies = [(await read_response(r)).body for _ in range(3)]
            assert bodies == [b"ok GET /slow?0.1", b"abc", b"ok GET /third"]
            w.close()

    run(main)


def test_upstream_dying_mid_response_closes_client() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(get("/die"))
            line, headers = await read_head(r)
            assert line.startswith("HTTP/1.1 200") and hget(headers, "Content-Length") == "100"
            rest = await r.read()  # EOF before 100 bytes: the client sees a truncated body
            assert rest == b"partial"
            w.close()

    run(main)


def test_expect_100_continue_answered_by_proxy() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            assert await r.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            w.write(b"data")
            resp = await read_response(r)
            assert resp.status == 200 and resp.body == b"data"
            assert not up.requests[0].has("Expect")
            w.close()

    run(main)


def test_drain_lets_in_flight_request_finish(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, drain_timeout=3) as srv:
            idle_r, idle_w = await connect(srv.port)
            idle_w.write(get("/"))
            await read_response(idle_r)
            r, w = await connect(srv.port)
            w.write(get("/slow?0.4"))
            await asyncio.sleep(0.1)
            port = srv.port
            drain = asyncio.ensure_future(srv.drain())
            await asyncio.sleep(0.05)
            assert await idle_r.read() == b"", "idle keep-alive connection closed at drain start"
            with pytest.raises(OSError):
                await connect(port)
            resp = await read_response(r)
            assert resp.status == 200 and resp.body == b"ok GET /slow?0.4"
            assert resp.get("Connection") == "close"
            assert await drain is True

    run(main, loop_kind)


def test_admin_endpoints() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            await fetch(srv.port, get("/"))
            resp = await fetch(srv.admin_port, get("/healthz"))
            assert (resp.status, resp.body) == (200, b"ok\n")
            resp = await fetch(srv.admin_port, get("/upstreams"))
            doc = json.loads(resp.body)
            assert doc["upstream"] == f"127.0.0.1:{up.port}" and doc["policy"] == "round_robin"
            (ep,) = doc["endpoints"]
            assert ep["address"] == f"127.0.0.1:{up.port}"
            assert (ep["in_flight"], ep["idle_connections"], ep["requests"]) == (0, 1, 1)
            assert (await fetch(srv.admin_port, get("/nope"))).status == 404
            assert srv.state is not None
            srv.state.draining = True
            resp = await fetch(srv.admin_port, get("/healthz"))
            assert (resp.status, resp.body) == (503, b"draining\n")

    run(main)


def test_round_robin_across_live_upstreams_and_dns_changes() -> None:
    async def main() -> None:
        async with FakeUpstream() as a, FakeUpstream() as b, proxy(endpoints=[addr(a), addr(b)]) as srv:
            for _ in range(6):
                await fetch(srv.port, get("/"))
            assert (len(a.requests), len(b.requests)) == (3, 3)
            assert srv.state is not None
            srv.state.group.update([addr(b)])
            for _ in range(4):
                await fetch(srv.port, get("/"))
            assert (len(a.requests), len(b.requests)) == (3, 7)
            await asyncio.sleep(0.02)
            assert a.closed == 1, "a removed endpoint's idle connections are closed"

    run(main)


def test_removed_endpoint_finishes_in_flight_request() -> None:
    async def main() -> None:
        async with FakeUpstream() as a, FakeUpstream() as b, proxy(endpoints=[addr(a)]) as srv:
            assert srv.state is not None
            slow = asyncio.ensure_future(fetch(srv.port, get("/slow?0.3")))
            await asyncio.sleep(0.1)
            srv.state.group.update([addr(b)])
            assert (await fetch(srv.port, get("/new"))).body == b"ok GET /new"
            resp = await slow
            assert resp.status == 200 and resp.body == b"ok GET /slow?0.3"
            assert [r.target for r in b.requests] == ["/new"]
            assert list(srv.state.group.endpoints) == [addr(b)]

    run(main)


def _downstreams(srv: ProxyServer) -> list:
    assert srv.state is not None
    return list(srv.state.connections)


def test_flow_control_both_directions() -> None:
    from proxy.flow import CLIENT_BUSY, UPSTREAM_BUSY

    async def main() -> None:
        n = 32 * 1024 * 1024
        async with FakeUpstream() as up, proxy(up.port) as srv:
            # Response direction: a client that does not read makes the proxy stop reading the upstream.
            r, w = await connect(srv.port)
            w.write(get(f"/big?{n}"))
            await asyncio.sleep(0.3)
            (down,) = _downstreams(srv)
            assert down.write_paused
            assert down.active.attempt.conn.gate.reasons & CLIENT_BUSY
            resp = await read_response(r)
            assert len(resp.body) == n
            w.close()
            # Request direction: an upstream that does not read makes the proxy stop reading the client.
            r, w = await connect(srv.port)
            w.write(b"POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n)
            w.write(pattern(n))
            await asyncio.sleep(0.3)
            (down,) = _downstreams(srv)
            assert down.gate.reasons & UPSTREAM_BUSY
            assert w.transport.get_write_buffer_size() > 0, "client is being back-pressured"
            up.release.set()
            resp = await read_response(r)
            assert resp.status == 200 and resp.body == b"ok POST /stall"
            assert len(up.requests[-1].body) == n
            w.close()

    run(main)


def test_client_disconnect_aborts_upstream_and_logs_499() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            _, w = await connect(srv.port)
            w.write(get("/slow?5"))
            await asyncio.sleep(0.1)
            w.transport.abort()
            await asyncio.sleep(0.1)
            rd = up.readers[0]
            assert rd.at_eof() or rd.exception(), "the upstream connection of an abandoned request is closed"
            (line,) = access_lines(srv)
            assert line["status"] == 499 and line["upstream_time"] is None
            assert srv.state is not None and srv.state.group.live[0].in_flight == 0

    run(main)


def test_sigterm_drains_and_exits_zero() -> None:
    import os
    import signal
    import sys
    from pathlib import Path

    async def main() -> None:
        async with FakeUpstream() as up:
            port, admin = free_port(), free_port()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy",
                "--upstream",
                f"127.0.0.1:{up.port}",
                "--listen",
                f"127.0.0.1:{port}",
                "--admin-listen",
                f"127.0.0.1:{admin}",
                cwd=Path(__file__).resolve().parents[2],
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PROXY_DRAIN_TIMEOUT": "5"},
            )
            try:
                for _ in range(100):
                    try:
                        r, w = await connect(port)
                        break
                    except OSError:
                        await asyncio.sleep(0.05)
                w.write(get("/slow?0.4"))
                await asyncio.sleep(0.15)
                proc.send_signal(signal.SIGTERM)
                resp = await read_response(r)
                assert resp.status == 200 and resp.get("Connection") == "close"
                assert await asyncio.wait_for(proc.wait(), 5) == 0
                out = (await proc.stdout.read()).decode()  # type: ignore[union-attr]
                assert json.loads(out.splitlines()[-1])["path"] == "/slow?0.4"
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    run(main)


def test_proxy_generated_error_to_head_has_no_body_and_keeps_the_connection_usable(loop_kind: str) -> None:
    async def main() -> None:
        async with proxy(free_port()) as srv:  # nothing listens upstream: every request gets a 502
            r, w = await connect(srv.port)
            w.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await read_response(r, "HEAD")
            assert head.status == 502 and int(head.get("Content-Length") or 0) > 0
            w.write(get("/after-head"))
            # With the 502's body written after the HEAD response, this would parse that text.
            resp = await read_response(r)
            assert resp.status == 502 and resp.body.startswith(b"502 Bad Gateway")
            w.close()
            (head_line, _) = access_lines(srv)
            assert head_line["method"] == "HEAD" and head_line["bytes"] == 0

    run(main, loop_kind)
