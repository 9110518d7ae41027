"""One try on one endpoint: the per-try timeout (--attempt-timeout) and the body's read idle
timeout (--upstream-read-timeout), through a real proxy and real local sockets."""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import Config, ConfigError, build_parser, config_from
from proxy.server import ProxyServer
from tests.unit.conftest import Proxied
from tests.unit.harness import (
    FakeUpstream,
    access_lines,
    addr,
    connect,
    fetch,
    get,
    proxy,
    read_head,
    read_response,
    run,
)
from tests.unit.upstreams import LocalServer


def post(path: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


class Sleepy(LocalServer):
    """Answers every request ``ok <name>``, ``delay`` seconds after reading its head (and body)."""

    def __init__(self, delay: float, name: bytes = b"sleepy") -> None:
        self.delay = delay
        self.name = name
        self.requests: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line, headers = await read_head(reader)
                n = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                await reader.readexactly(n)
                self.requests.append(line.split(" ")[1])
                await asyncio.sleep(self.delay)
                body = b"ok " + self.name
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


class Trickle(LocalServer):
    """A chunked body of ``chunks`` chunks, one every ``gap`` seconds."""

    def __init__(self, chunks: int, gap: float) -> None:
        self.chunks = chunks
        self.gap = gap

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(self.chunks):
                await writer.drain()
                await asyncio.sleep(self.gap)
                writer.write(b"1\r\n%d\r\n" % (i % 10))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


# -- --attempt-timeout ------------------------------------------------------------------------------
def test_attempt_timeout_moves_a_slow_get_to_another_replica_and_tells_the_slow_endpoint() -> None:
    async def main() -> None:
        async with (
            Sleepy(3.0) as slow,
            FakeUpstream() as good,
            proxy(
                endpoints=[slow.address, addr(good)],
                attempt_timeout=0.2,
                upstream_timeout=5,
                health_interval=0,
            ) as srv,
        ):
            resps = [await fetch(srv.port, get(f"/r{i}")) for i in range(3)]
            assert [(r.status, r.body) for r in resps] == [(200, f"ok GET /r{i}".encode()) for i in range(3)]
            assert slow.requests, "round robin sent some to the slow replica first"
            assert srv.state is not None
            assert srv.state.counters.count("retries", "timeout") == len(slow.requests)
            ep = srv.state.group.endpoints[slow.address]
            assert ep.failures == {"timeout": len(slow.requests)} and ep.retries == len(slow.requests)
            assert {line["upstream"] for line in access_lines(srv)} == {f"127.0.0.1:{good.port}"}
            assert all(e.in_flight == 0 for e in srv.state.group.live)

    run(main)


def test_a_try_that_may_not_move_on_keeps_waiting_for_the_upstream_timeout() -> None:
    """POST (not in --retry-methods), no other endpoint, or a spent budget: the slow try is not cut."""

    async def main() -> None:
        async with (
            Sleepy(0.5) as slow,
            proxy(endpoints=[slow.address], attempt_timeout=0.1, upstream_timeout=5) as srv,
        ):
            assert (await fetch(srv.port, post("/p", b"body"))).status == 200
            assert (await fetch(srv.port, get("/only-one"))).status == 200
            assert srv.state is not None and srv.state.counters.count("retries") == 0
            assert srv.state.group.endpoints[slow.address].failures == {}
        async with (
            Sleepy(0.5) as slow,
            FakeUpstream() as good,
            proxy(
                endpoints=[slow.address, addr(good)],
                attempt_timeout=0.1,
                upstream_timeout=5,
                retry_budget_percent=0,
                retry_budget_min=0,
            ) as srv,
        ):
            resps = [await fetch(srv.port, get("/")) for _ in range(3)]
            assert [r.status for r in resps] == [200] * 3
            assert slow.requests, "round robin sent some to the slow replica first"
            assert [r.body for r in resps].count(b"ok sleepy") == len(slow.requests), "it answered them"
            assert srv.state is not None
            assert srv.state.counters.count("retries") == 0
            assert srv.state.counters.count("retry_budget_exhausted", "timeout") == len(slow.requests)
        async with (
            Sleepy(3.0) as slow,
            proxy(endpoints=[slow.address], attempt_timeout=0.1, upstream_timeout=0.4) as srv,
        ):
            resp = await fetch(srv.port, get("/"))
            assert resp.status == 504 and b"sent no response within 0.4s" in resp.body

    run(main)


def test_attempt_timeout_flag_env_default_and_validation() -> None:
    assert Config().attempt_timeout == 0.0, "off by default: behaviour unchanged"
    cfg = config_from(build_parser().parse_args([]), {"PROXY_ATTEMPT_TIMEOUT": "0.5"})
    assert cfg.attempt_timeout == 0.5
    assert config_from(build_parser().parse_args(["--attempt-timeout", "2"]), {}).attempt_timeout == 2.0
    with pytest.raises(ConfigError, match=r"--attempt-timeout / PROXY_ATTEMPT_TIMEOUT: must be below"):
        config_from(build_parser().parse_args(["--attempt-timeout", "30"]), {})
    with pytest.raises(ConfigError, match="must be below"):
        config_from(build_parser().parse_args(["--attempt-timeout", "2", "--upstream-timeout", "1"]), {})
    with pytest.raises(ConfigError, match="PROXY_ATTEMPT_TIMEOUT"):
        config_from(build_parser().parse_args(["--attempt-timeout", "-1"]), {})


# -- --upstream-read-timeout ------------------------------------------------------------------------
def test_a_body_that_stalls_closes_the_client_connection_and_the_access_log_says_why(
    proxied: Proxied, loop_kind: str
) -> None:
    async def main(srv: ProxyServer, up: FakeUpstream) -> None:
        r, w = await connect(srv.port)
        w.write(get("/chunked"))  # the head and "hello", then nothing until released
        line, headers = await read_head(r)
        assert line.startswith("HTTP/1.1 200") and ("Transfer-Encoding", "chunked") in headers
        assert await r.readuntil(b"hello\r\n") == b"5\r\nhello\r\n"
        rest = await asyncio.wait_for(r.read(), 3)
        assert rest == b"", "closed without the last chunk: the client knows the body is cut"
        w.close()
        (entry,) = access_lines(srv)
        assert entry["status"] == 200 and entry["error"] == "upstream read-timeout"
        assert srv.state is not None
        assert srv.state.counters.count("responses_cut", "read-timeout") == 1
        up.release.set()
        assert (await fetch(srv.port, get("/"))).status == 200
        assert "error" not in access_lines(srv)[-1], "an ordinary line has no error field"

    proxied(main, loop=loop_kind, upstream_read_timeout=0.3)


def test_a_body_that_keeps_coming_slowly_is_never_cut() -> None:
    async def main() -> None:
        async with Trickle(8, 0.1) as up, proxy(up.port, upstream_read_timeout=0.5) as srv:
            resp = await fetch(srv.port, get("/"))
            assert resp.status == 200 and resp.body == b"01234567"
            assert srv.state is not None and srv.state.counters.count("responses_cut") == 0

    run(main)


def test_a_client_that_stops_reading_does_not_trip_the_upstream_read_timeout(proxied: Proxied) -> None:
    """The proxy stops reading the upstream for a slow client (CLIENT_BUSY): not the upstream's stall."""

    async def main(srv: ProxyServer, up: FakeUpstream) -> None:
        n = 32 * 1024 * 1024
        r, w = await connect(srv.port)
        w.write(get(f"/big?{n}"))
        await asyncio.sleep(1.0)  # not reading: the proxy's upstream reads are paused meanwhile
        resp = await read_response(r)
        assert resp.status == 200 and len(resp.body) == n
        w.close()
        assert srv.state is not None and srv.state.counters.count("responses_cut") == 0

    proxied(main, upstream_read_timeout=0.2)


def test_upstream_read_timeout_flag_env_default_and_validation() -> None:
    assert Config().upstream_read_timeout == 60.0, "nginx's proxy_read_timeout"
    cfg = config_from(build_parser().parse_args([]), {"PROXY_UPSTREAM_READ_TIMEOUT": "5"})
    assert cfg.upstream_read_timeout == 5.0
    assert (
        config_from(build_parser().parse_args(["--upstream-read-timeout", "0"]), {}).upstream_read_timeout
        == 0
    )
    with pytest.raises(ConfigError, match="--upstream-read-timeout / PROXY_UPSTREAM_READ_TIMEOUT"):
        config_from(build_parser().parse_args(["--upstream-read-timeout", "soon"]), {})


def test_a_response_cut_by_the_upstream_is_logged_with_its_failure(proxied: Proxied) -> None:
    async def main(srv: ProxyServer, up: FakeUpstream) -> None:
        r, w = await connect(srv.port)
        w.write(get("/die"))  # Content-Length: 100, 7 bytes, then the upstream aborts
        line, _headers = await read_head(r)
        assert line.startswith("HTTP/1.1 200")
        assert await asyncio.wait_for(r.read(), 3) == b"partial", "cut short: the client sees EOF"
        w.close()
        (entry,) = access_lines(srv)
        assert entry["status"] == 200 and entry["error"] == "upstream reset"
        assert srv.state is not None and srv.state.counters.count("responses_cut", "reset") == 1

    proxied(main)


class Canned(LocalServer):
    """Reads a request head, answers ``raw`` as it is, then reads on until the proxy hangs up."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_head(reader)
            writer.write(self.raw)
            await writer.drain()
            await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def test_a_backends_103_early_hints_reach_the_client_before_its_response() -> None:
    """RFC 9110 15.2: a proxy MUST forward the 1xx it did not ask for (100 Continue is its own)."""

    async def main() -> None:
        raw = (
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n"
            b"Connection: X-Hop\r\nX-Hop: 1\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        async with Canned(raw) as up, proxy(endpoints=[up.address]) as srv:
            r, w = await connect(srv.port)
            w.write(get("/"))
            line, headers = await read_head(r)
            assert line == "HTTP/1.1 103 Early Hints"
            assert ("Link", "</style.css>; rel=preload") in headers
            assert not any(k.lower() == "x-hop" for k, _ in headers), "hop-by-hop headers stay behind"
            resp = await read_response(r)
            assert resp.status == 200 and resp.body == b"ok"
            w.close()
            (entry,) = access_lines(srv)
            assert entry["status"] == 200

    run(main)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            b"unexpected 101",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: \r\nConnection: Upgrade\r\n\r\n", b"unexpected 101"),
        (b"HTTP/1.1 603 Nope\r\nContent-Length: 0\r\n\r\n", b"603"),
        (b"HTTP/1.1 000 OK\r\nContent-Length: 0\r\n\r\n", b"invalid status 000"),  # found by the fuzzer
    ],
)
def test_a_response_head_the_proxy_cannot_pass_on_is_a_502(raw: bytes, why: bytes) -> None:
    """A 101 switching to a protocol the client did not ask for (RFC 9110 7.8), or a status no
    client can read: nothing went to the client yet, so it gets a 502, not a cut connection."""

    async def main() -> None:
        async with Canned(raw) as up, proxy(endpoints=[up.address]) as srv:
            ws = get(
                "/ws",
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            )
            resp = await fetch(srv.port, ws)
            assert resp.status == 502, why
            assert b"invalid response from" in resp.body and why in resp.body, resp.body
            assert srv.state is not None
            assert srv.state.counters.count("responses_cut") == 0

    run(main)


def test_a_retriable_error_whose_body_stalls_is_retried_not_cut_by_the_read_timeout() -> None:
    """A 503's body is read and dropped before the retry; a read timeout shorter than the discard's
    own limit gives up that connection and retries, it does not cut the client (nothing was sent)."""

    async def main() -> None:
        stalled = b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\nbusy"  # 96 bytes never come
        async with (
            Canned(stalled) as bad,
            FakeUpstream() as good,
            proxy(endpoints=[bad.address, addr(good)], upstream_read_timeout=0.1, health_interval=0) as srv,
        ):
            resps = [await fetch(srv.port, get("/")) for _ in range(2)]
            assert [(r.status, r.body) for r in resps] == [(200, b"ok GET /")] * 2
            assert srv.state is not None
            assert srv.state.counters.count("retries", "503") >= 1
            assert srv.state.counters.count("responses_cut") == 0

    run(main)
