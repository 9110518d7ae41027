"""The single-pass header rewriters: order kept, and the rare second pass still removes what it must.

``rewrite_request``/``rewrite_response`` append kept headers while scanning; a ``Connection``
header naming other headers, or a response length that turns out unusable, is only known later,
so these cases check that such headers go wherever they stood.
"""

from __future__ import annotations

import pytest

from proxy.headers import (
    _TOKENS_CACHE,
    BadResponse,
    connection_tokens,
    interim_head,
    rewrite_request,
    rewrite_response,
)


def head_lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[1:-2]


def test_request_headers_keep_their_order_and_case() -> None:
    req = rewrite_request(
        b"GET",
        b"/p?q=1",
        [(b"Host", b"h"), (b"X-B", b"2"), (b"x-a", b"1"), (b"Accept", b"*/*"), (b"X-B", b"3")],
        b"10.0.0.1",
        make_request_id=lambda: b"rid",
    )
    assert req.head.startswith(b"GET /p?q=1 HTTP/1.1\r\n")
    assert head_lines(req.head)[:5] == [b"Host: h", b"X-B: 2", b"x-a: 1", b"Accept: */*", b"X-B: 3"]


def test_request_connection_named_headers_are_removed_before_and_after_it() -> None:
    req = rewrite_request(
        b"GET",
        b"/",
        [
            (b"Host", b"h"),
            (b"X-Secret", b"1"),  # named by the Connection header that comes later
            (b"Connection", b"keep-alive, x-secret, X-Other"),
            (b"x-other", b"2"),
            (b"X-Kept", b"3"),
        ],
        b"ip",
    )
    lines = head_lines(req.head)
    assert not [line for line in lines if line.lower().startswith((b"x-secret", b"x-other", b"connection"))]
    assert b"X-Kept: 3" in lines and b"Host: h" in lines


def test_response_unusable_or_dropped_length_is_removed() -> None:
    r = rewrite_response(200, [(b"Content-Length", b"abc"), (b"X-A", b"1")], b"rid")
    head = b"".join(r.parts)
    assert r.content_length == -1 and b"Content-Length" not in head and b"X-A: 1" in head
    # A Connection token may even name Content-Length: the length stays, since the body is still
    # sent length-framed (without it a keep-alive client could not tell where the body ends).
    r = rewrite_response(200, [(b"Content-Length", b"5"), (b"Connection", b"content-length")], b"rid")
    assert r.content_length == 5 and b"Content-Length: 5\r\n" in b"".join(r.parts)


def test_response_close_and_named_headers() -> None:
    r = rewrite_response(200, [(b"X-Hop", b"1"), (b"Connection", b"Close, X-Hop"), (b"X-End", b"2")], b"i")
    head = b"".join(r.parts)
    assert r.close and b"X-Hop" not in head and b"X-End: 2" in head
    assert head.endswith(b"X-Request-ID: i\r\n")


def test_connection_tokens_are_memoised_but_bounded() -> None:
    assert connection_tokens(b"Keep-Alive, Upgrade") == {b"keep-alive", b"upgrade"}
    assert connection_tokens(b"Keep-Alive, Upgrade") is connection_tokens(b"Keep-Alive, Upgrade")
    for i in range(600):
        connection_tokens(b"x-%d" % i)
    assert len(_TOKENS_CACHE) <= 256
    assert connection_tokens(b"x-599") == {b"x-599"}


def test_interim_head_keeps_end_to_end_headers_only() -> None:
    head = interim_head(
        103,
        [
            (b"Link", b"</a.css>; rel=preload"),
            (b"Connection", b"X-Hint"),
            (b"X-Hint", b"1"),
            (b"Keep-Alive", b"5"),
        ],
    )
    assert head == b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"


def test_response_204_never_carries_a_length() -> None:
    r = rewrite_response(204, [(b"Content-Length", b"0"), (b"X-A", b"1")], b"rid")
    head = b"".join(r.parts)
    assert r.content_length == -1 and b"Content-Length" not in head and b"X-A: 1" in head


def test_a_status_outside_100_599_is_refused() -> None:
    """Found by the proxy fuzzer: llhttp parses "603" and the proxy passed it on to the client."""
    for status in (603, 999, 99):
        with pytest.raises(BadResponse):
            rewrite_response(status, [(b"Content-Length", b"0")], b"rid")
