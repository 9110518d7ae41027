"""Requests that could be read two ways are refused at the socket; what goes upstream is re-framed.

Request smuggling needs two parsers that disagree about where a request ends. The proxy refuses
every ambiguous framing with 400 and closes the connection (so nothing after it is read as a
next request), and never forwards the client's framing bytes: the upstream always gets a head
the proxy wrote itself (Content-Length, or chunked re-encoded chunk by chunk).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.harness import FakeUpstream, access_lines, connect, get, proxy, read_response, run

H = b"POST /echo HTTP/1.1\r\nHost: x\r\n"
CASES = {
    "cl-then-te": H
    + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    "te-then-cl": H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "duplicate-cl": H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "conflicting-cl": H + b"Content-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
    "cl-list": H + b"Content-Length: 3, 3\r\n\r\nabc",
    "cl-plus-sign": H + b"Content-Length: +3\r\n\r\nabc",
    "cl-negative": H + b"Content-Length: -1\r\n\r\n",
    "bad-chunk-size": H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": H + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "chunk-size-lf-only": H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    "te-gzip": H + b"Transfer-Encoding: gzip\r\n\r\nabc",
    "te-gzip-chunked": H + b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te-chunked-gzip": H + b"Transfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te-unknown": H + b"Transfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te-twice": H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te-space-before-colon": H + b"Transfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te-obs-fold": H + b"Transfer-Encoding:\r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(CASES.values()), ids=list(CASES))
def test_ambiguous_framing_is_refused_with_400_and_close(raw: bytes) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(raw)
            resp = await read_response(r)
            assert resp.status == 400 and resp.body.startswith(b"400 Bad Request")
            assert resp.get("Connection") == "close"
            assert await asyncio.wait_for(r.read(), 3) == b"", "nothing after it is read as a request"
            w.close()
            await asyncio.sleep(0.02)
            assert up.requests == [], "no complete request reached the upstream"
            (line,) = access_lines(srv)
            assert line["status"] == 400 and line["upstream"] in (None, f"127.0.0.1:{up.port}")
            assert srv.state is not None and srv.state.counters.count("rejected", "400") == 1

    run(main)


def test_a_smuggling_attempt_after_a_good_request_is_refused_after_its_answer() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(get("/first") + CASES["cl-then-te"])
            first = await read_response(r)
            assert first.status == 200 and first.body == b"ok GET /first"
            second = await read_response(r)
            assert second.status == 400
            assert await asyncio.wait_for(r.read(), 3) == b""
            assert [rq.target for rq in up.requests] == ["/first"]

    run(main)


def test_upstream_gets_the_proxys_own_framing() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            # Chunk extensions, odd chunk boundaries and a trailer from the client...
            w.write(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2;name=value\r\nab\r\n1\r\nc\r\n0\r\nX-Trailer: sneaky\r\n\r\n"
            )
            resp = await read_response(r)
            assert resp.status == 200 and resp.body == b"abc"
            seen = up.requests[0]
            # ...arrive as plain chunked without extensions or trailers.
            assert seen.get("Transfer-Encoding") == "chunked" and not seen.has("Content-Length")
            assert seen.chunk_sizes == [2, 1] and not seen.has("X-Trailer")
            # A Content-Length with leading zeros is forwarded in canonical form.
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0003\r\n\r\nxyz")
            resp = await read_response(r)
            assert resp.body == b"xyz" and up.requests[1].get("Content-Length") == "3"
            w.close()

    run(main)
