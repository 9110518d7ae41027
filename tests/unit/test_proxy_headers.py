"""Pure header-rewriting rules."""

from __future__ import annotations

import pytest

from proxy.headers import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    BadRequest,
    new_request_id,
    rewrite_request,
    rewrite_response,
    simple_response,
    status_line,
)


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    return lines[0], [tuple(line.split(b": ", 1)) for line in lines[1:]]  # type: ignore[misc]


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [n.lower() for n, _ in headers]


def test_request_forwarded_headers_and_id() -> None:
    req = rewrite_request(
        b"GET",
        b"/p?q=1",
        [(b"Host", b"shop.test"), (b"X-Forwarded-For", b"1.1.1.1"), (b"X-Forwarded-For", b"2.2.2.2")],
        b"9.9.9.9",
        make_request_id=lambda: b"generated",
    )
    line, headers = parse_head(req.head)
    assert line == b"GET /p?q=1 HTTP/1.1"
    d = dict(headers)
    assert d[b"Host"] == b"shop.test"
    # No trusted proxies given: the client's own chain is dropped (tests/unit/test_forwarded_trust.py).
    assert d[b"X-Forwarded-For"] == b"9.9.9.9"
    assert d[b"X-Forwarded-Proto"] == b"http"
    assert d[b"X-Forwarded-Host"] == b"shop.test"
    assert d[b"X-Request-ID"] == b"generated" == req.request_id
    assert req.framing == NO_BODY and req.host == b"shop.test"


def test_request_id_kept_and_spoofed_forwarded_headers_replaced() -> None:
    req = rewrite_request(
        b"GET",
        b"/",
        [
            (b"host", b"h"),
            (b"x-request-id", b"client-id"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil"),
        ],
        b"1.2.3.4",
    )
    _, headers = parse_head(req.head)
    assert req.request_id == b"client-id"
    assert names(headers).count(b"x-forwarded-proto") == 1 and (b"X-Forwarded-Proto", b"http") in headers
    assert (b"X-Forwarded-Host", b"h") in headers and (b"X-Forwarded-Host", b"evil") not in headers
    assert (b"X-Forwarded-For", b"1.2.3.4") in headers


def test_generated_request_ids_are_unique() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 for i in ids)


def test_request_hop_by_hop_and_connection_named_dropped() -> None:
    hop = [
        (b"Connection", b"keep-alive, X-Foo"),
        (b"Connection", b"X-Bar"),
        (b"X-Foo", b"1"),
        (b"x-bar", b"2"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-T"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"Proxy-Authenticate", b"Basic"),
    ]
    req = rewrite_request(b"GET", b"/", [(b"Host", b"h"), *hop, (b"X-Keep", b"k")], b"1.2.3.4")
    _, headers = parse_head(req.head)
    assert set(names(headers)) == {
        b"host",
        b"x-keep",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"via",  # the gateway's own (RFC 9110 7.6.3)
    }


def test_request_framing() -> None:
    req = rewrite_request(b"POST", b"/", [(b"Host", b"h"), (b"Content-Length", b"12")], b"ip")
    assert req.framing == LENGTH and req.content_length == 12
    assert req.head.endswith(b"Content-Length: 12\r\n\r\n")
    req = rewrite_request(b"POST", b"/", [(b"Host", b"h"), (b"Transfer-Encoding", b"Chunked")], b"ip")
    assert req.framing == CHUNKED and req.head.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    req = rewrite_request(
        b"POST", b"/", [(b"Host", b"h"), (b"Expect", b"100-continue"), (b"Content-Length", b"1")], b"ip"
    )
    assert req.expect_continue and b"Expect" not in req.head
    # HTTP/1.0 may omit Host
    assert rewrite_request(b"GET", b"/", [], b"ip", http11=False).host is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")],
        [(b"Transfer-Encoding", b"gzip")],
        [(b"Transfer-Encoding", b"gzip, chunked")],
        [(b"Content-Length", b"1"), (b"Content-Length", b"2")],
        [(b"Content-Length", b"-1")],
        [(b"Host", b"dup")],
    ],
)
def test_bad_request_framing(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadRequest):
        rewrite_request(b"POST", b"/", [(b"Host", b"h"), *headers], b"ip")


def test_bad_request_missing_host_on_http11() -> None:
    with pytest.raises(BadRequest, match="Host"):
        rewrite_request(b"GET", b"/", [], b"ip")


def test_response_rewrite_drops_hop_by_hop_and_stamps_request_id() -> None:
    resp = rewrite_response(
        200,
        [
            (b"Content-Type", b"text/plain"),
            (b"Connection", b"close, X-Internal"),
            (b"X-Internal", b"secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Request-ID", b"upstream-made"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ],
        b"rid",
    )
    head = b"".join(resp.parts)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"X-Internal" not in head and b"Keep-Alive" not in head and b"Transfer-Encoding" not in head
    assert b"Connection" not in head and b"upstream-made" not in head
    assert head.count(b"Set-Cookie") == 2 and head.endswith(b"X-Request-ID: rid\r\n")
    assert resp.chunked and resp.close and resp.content_length == -1


def test_response_framing_flags() -> None:
    r = rewrite_response(200, [(b"Content-Length", b"5")], b"r")
    assert (r.content_length, r.chunked, r.close) == (5, False, False)
    assert rewrite_response(200, [], b"r", http11=False).close
    assert not rewrite_response(200, [(b"Connection", b"Keep-Alive")], b"r", http11=False).close
    # Transfer-Encoding other than chunked: length is ignored, body is close-delimited
    r = rewrite_response(200, [(b"Transfer-Encoding", b"gzip"), (b"Content-Length", b"5")], b"r")
    assert (r.content_length, r.chunked) == (-1, False) and b"Content-Length" not in b"".join(r.parts)


def test_status_lines_and_simple_response() -> None:
    assert status_line(502) == b"HTTP/1.1 502 Bad Gateway\r\n"
    assert status_line(599) == b"HTTP/1.1 599 Unknown\r\n"
    raw = simple_response(400, b"bad\n", b"id", True)
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert (
        b"Content-Length: 4\r\n" in raw and b"Connection: close\r\n" in raw and raw.endswith(b"\r\n\r\nbad\n")
    )


def test_absolute_form_target_gives_the_host_and_goes_upstream_in_origin_form() -> None:
    """RFC 9112 3.2.2: a proxy MUST take Host from an absolute-form target, not the received one."""
    req = rewrite_request(b"GET", b"http://target.test:81/a?b=1", [(b"Host", b"other.test")], b"1.2.3.4")
    line, headers = parse_head(req.head)
    assert line == b"GET /a?b=1 HTTP/1.1"
    assert dict(headers)[b"Host"] == b"target.test:81" and req.host == b"target.test:81"
    assert names(headers).count(b"host") == 1
    opt = rewrite_request(b"OPTIONS", b"http://target.test", [(b"Host", b"target.test")], b"1.2.3.4")
    assert parse_head(opt.head)[0] == b"OPTIONS * HTTP/1.1"


def test_http10_request_gets_a_host_via_and_no_expectation() -> None:
    req = rewrite_request(
        b"POST", b"/", [(b"Expect", b"100-continue"), (b"Content-Length", b"2")], b"1.2.3.4", http11=False
    )
    _, headers = parse_head(req.head)
    d = dict(headers)
    assert b"Host: \r\n" in req.head, "an HTTP/1.1 request upstream always carries Host (empty: none known)"
    assert d[b"Via"] == b"1.0 asgi-lab"
    assert not req.expect_continue, "no 100 Continue to an HTTP/1.0 client (RFC 9110 15.2)"
    assert b"expect" not in names(headers)


@pytest.mark.parametrize("host", [b"user@h.test", b"h.test/path", b"a.test, b.test", b"h test", b"h.test:8x"])
def test_invalid_host_values_are_refused(host: bytes) -> None:
    with pytest.raises(BadRequest, match="invalid Host"):
        rewrite_request(b"GET", b"/", [(b"Host", host)], b"1.2.3.4")


def test_connection_naming_host_does_not_strip_it() -> None:
    req = rewrite_request(
        b"GET", b"/", [(b"Host", b"h.test"), (b"Connection", b"Host, X-A"), (b"X-A", b"1")], b"i"
    )
    _, headers = parse_head(req.head)
    assert dict(headers)[b"Host"] == b"h.test" and b"x-a" not in names(headers)
