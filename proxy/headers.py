"""Header rewriting as pure functions over ``[(name, value), ...]`` bytes pairs.

Kept free of I/O so the subtle rules (hop-by-hop, Connection-named headers,
X-Forwarded-*, framing validation) are unit-testable in isolation, and so the
hot path does exactly one pass over the headers and one ``bytes.join``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable

from engine.framing import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    BadRequest,
    body_framing,
    check_host,
    parse_content_length,
)
from engine.refusals import simple_response
from engine.status import status_line
from engine.trust import TrustedProxies

# RFC 9110 7.6.1 plus the de-facto ones (Proxy-Connection, Keep-Alive).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# Names the rewriters look at; every other header is copied through untouched, so the common
# header costs one lower() and one set lookup.
_REQUEST_SPECIAL = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
    b"expect",
}
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"content-length", b"x-request-id"}
_CONTENT_LENGTH = frozenset({b"content-length"})

Headers = Iterable[tuple[bytes, bytes]]


def _request_id_factory() -> Callable[[], bytes]:
    # A random per-process prefix + counter is unique like uuid4 but ~10x cheaper per request.
    prefix = os.urandom(8).hex().encode()
    counter = itertools.count(1)
    return lambda: prefix + b"%016x" % next(counter)


new_request_id: Callable[[], bytes] = _request_id_factory()


_TOKENS_CACHE: dict[bytes, frozenset[bytes]] = {}
_PLAIN_CONNECTION = frozenset({b"close", b"keep-alive"})


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Lower-cased Connection tokens; memoised because nearly every peer sends one of a few values."""
    tokens = _TOKENS_CACHE.get(value)
    if tokens is None:
        tokens = frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
        if len(_TOKENS_CACHE) < 256:  # bounded: a client inventing values must not grow it
            _TOKENS_CACHE[value] = tokens
    return tokens


def _note_hop_by_hop(
    lname: bytes, value: bytes, conn: frozenset[bytes] | None, te: bytes | None
) -> tuple[frozenset[bytes] | None, bytes | None]:
    """Keep what a dropped hop-by-hop header still tells us: the Connection tokens (more headers to
    drop, keep-alive or close) and the Transfer-Encoding (how this hop's body is framed). The same
    rules hold for requests and responses (RFC 9110 7.6.1), so both rewriters use this."""
    if lname == b"connection":
        tokens = connection_tokens(value)
        return (tokens if conn is None else conn | tokens), te
    if lname == b"transfer-encoding":
        return conn, (value if te is None else te + b"," + value)
    return conn, te


def _drop_named(parts: list[bytes], first: int, names: frozenset[bytes]) -> list[bytes]:
    """Remove ``name: value`` quadruples from ``parts[first:]`` whose lower-cased name is in ``names``.

    The rewriters append kept headers as ``(name, b": ", value, b"\r\n")`` while they scan, so a
    Connection header naming other headers (rare) is handled afterwards here instead of costing
    every request a second pass.
    """
    out = parts[:first]
    for i in range(first, len(parts), 4):
        if parts[i].lower() not in names:
            out += parts[i : i + 4]
    return out


_VIA_11 = b"Via: 1.1 asgi-lab\r\n"
_VIA_10 = b"Via: 1.0 asgi-lab\r\n"
# A Connection option naming Host must not strip the field the upstream routes on (RFC 9110
# 7.6.1 forbids a sender to name fields meant for every recipient); it is ignored.
_NEVER_NAMED = frozenset({b"host"})


def _split_absolute(method: bytes, target: bytes) -> tuple[bytes, bytes]:
    """(authority, origin-form target) of an absolute-form target ``http://host:port/path?q``."""
    rest = target.split(b"://", 1)[1]
    end = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if 0 <= i < end:
            end = i
    authority, origin = rest[:end], rest[end:]
    if not origin.startswith(b"/"):
        # No path: "/" (RFC 9112 3.2.4: "*" for an OPTIONS request that has no query either).
        origin = b"*" if method == b"OPTIONS" and not origin else b"/" + origin
    return authority, origin


class UpstreamRequest:
    """What the proxy learned from the client's headers plus the re-framed head to send upstream."""

    __slots__ = ("content_length", "expect_continue", "framing", "head", "host", "request_id")

    def __init__(
        self,
        head: bytes,
        request_id: bytes,
        host: bytes | None,
        framing: int,
        content_length: int,
        expect_continue: bool,
    ) -> None:
        self.head = head
        self.request_id = request_id
        self.host = host
        self.framing = framing
        self.content_length = content_length
        self.expect_continue = expect_continue


def rewrite_request(
    method: bytes,
    target: bytes,
    headers: Headers,
    client_ip: bytes,
    http11: bool = True,
    make_request_id: Callable[[], bytes] | None = None,
    trusted: TrustedProxies | None = None,
) -> UpstreamRequest:
    """Validate framing and build the upstream request head in one pass.

    X-Forwarded-For: the chain a client sent is kept (and the client's address appended) only
    when the client is a proxy in ``trusted`` (``--forwarded-allow-ips``, engine/trust.py);
    from anyone else it is dropped and the header names the client alone, so a backend never
    sees an address the client chose.

    The upstream head is always HTTP/1.1 with the proxy's own framing
    (Content-Length kept, chunked re-encoded) so the backend never sees a
    framing ambiguity the client created. ``Expect: 100-continue`` is consumed
    here: the proxy itself answers ``100 Continue`` once an upstream is ready.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    conn: frozenset[bytes] | None = None
    host: bytes | None = None
    host_at = 0
    content_length = -1
    te: bytes | None = None
    xff: bytes | None = None
    rid: bytes | None = None
    expect = False
    for name, value in headers:
        lname = name.lower()
        if lname in _REQUEST_SPECIAL:
            if lname in HOP_BY_HOP:
                conn, te = _note_hop_by_hop(lname, value, conn, te)
                continue
            if lname == b"host":
                if host is not None:
                    raise BadRequest("multiple Host headers")
                check_host(value)
                host = value
                host_at = len(parts) + 2  # where its value lands in parts (absolute-form replaces it)
            elif lname == b"content-length":
                content_length = parse_content_length(value, content_length)
                continue
            elif lname == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
                continue
            elif lname == b"x-request-id":
                if rid is None and 0 < len(value) <= 200:
                    rid = value
                continue
            elif lname == b"expect":
                if value.strip().lower() == b"100-continue":
                    expect = http11  # RFC 9110 10.1.1: ignored in an HTTP/1.0 request (no 1xx to it)
                    continue
            else:  # x-forwarded-proto, x-forwarded-host: replaced by ours
                continue
        parts += (name, b": ", value, b"\r\n")

    framing = body_framing(content_length, te, host is not None, http11)

    if target[:1] != b"/" and target != b"*":
        # Absolute-form (the engine let nothing else through): RFC 9112 3.2.2, a proxy MUST take
        # Host from the target rather than forward the received one; sent on in origin-form.
        authority, origin = _split_absolute(method, target)
        check_host(authority)
        parts[2] = origin
        if host is None:
            parts += (b"Host", b": ", authority, b"\r\n")
        else:
            parts[host_at] = authority
        host = authority
    elif host is None:
        # An HTTP/1.0 request without Host: the upstream request is HTTP/1.1, which MUST carry
        # one; with no authority known it is empty (RFC 9112 3.2).
        parts.append(b"Host: \r\n")
    if rid is None:
        rid = (make_request_id or new_request_id)()
    if conn is not None and (named := conn - _PLAIN_CONNECTION - _NEVER_NAMED):
        parts = _drop_named(parts, 4, named)
    # RFC 9110 7.6.3: a gateway MUST send Via in each inbound request (after any the client sent).
    parts.append(_VIA_11 if http11 else _VIA_10)
    if xff is not None and (trusted is None or not trusted.trusts(client_ip.decode("latin-1"))):
        xff = None  # the client's own claim (module docstring of engine/trust.py)
    parts += (b"X-Forwarded-For: ", client_ip if xff is None else xff + b", " + client_ip, b"\r\n")
    parts.append(b"X-Forwarded-Proto: http\r\n")
    if host is not None:
        parts += (b"X-Forwarded-Host: ", host, b"\r\n")
    parts += (b"X-Request-ID: ", rid, b"\r\n")
    if framing == LENGTH:
        parts += (b"Content-Length: ", b"%d" % content_length, b"\r\n\r\n")
    elif framing == CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return UpstreamRequest(b"".join(parts), rid, host, framing, max(content_length, 0), expect)


class BadResponse(ValueError):
    """The upstream's response cannot be passed on (the client gets a 502)."""


class UpstreamResponse:
    """Filtered response headers (a parts list ready to join) and what they say about framing."""

    __slots__ = ("chunked", "close", "content_length", "parts")

    def __init__(self, parts: list[bytes], content_length: int, chunked: bool, close: bool) -> None:
        self.parts = parts
        self.content_length = content_length
        self.chunked = chunked
        self.close = close


def rewrite_response(
    status: int, headers: Headers, request_id: bytes, http11: bool = True
) -> UpstreamResponse:
    """Status line + end-to-end headers + X-Request-ID; the caller appends framing and the blank line.

    ``close`` reports whether the upstream connection must not be reused
    (``Connection: close``, or an HTTP/1.0 upstream without keep-alive).
    """
    if not 100 <= status <= 599:
        # RFC 9110 15: invalid, to be handled as a 5xx. llhttp takes any three digits (603, 999);
        # raised inside the upstream parser's callback it becomes the parse error that answers 502.
        raise BadResponse(f"invalid status code {status}")
    parts = [status_line(status)]
    conn: frozenset[bytes] | None = None
    te: bytes | None = None
    content_length = -1
    length_seen = False
    for name, value in headers:
        lname = name.lower()
        if lname in _RESPONSE_SPECIAL:
            if lname == b"content-length":
                length_seen = True
                v = value.strip()
                if v.isdigit():
                    content_length = int(v)
            elif lname == b"x-request-id":
                continue
            else:
                conn, te = _note_hop_by_hop(lname, value, conn, te)
                continue
        parts += (name, b": ", value, b"\r\n")
    chunked = False
    if te is not None:
        # A chunked response's Content-Length (if any) is meaningless; one with another coding is
        # close-delimited (RFC 9112 6.3), so drop the length in both cases.
        chunked = te.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        content_length = -1
    if conn is None:
        close = not http11
    else:
        close = b"close" in conn or (not http11 and b"keep-alive" not in conn)
        # Never the length: dropping it while the body is still sent length-framed would leave
        # the client a keep-alive response without framing (found by the catalogue review).
        named = conn - _PLAIN_CONNECTION - _CONTENT_LENGTH
        if named:
            parts = _drop_named(parts, 1, named)
    if status == 204 or status < 200:
        content_length = -1  # RFC 9110 8.6: a server MUST NOT send Content-Length in a 1xx or 204
    if length_seen and content_length < 0:
        parts = _drop_named(parts, 1, _CONTENT_LENGTH)
    parts += (b"X-Request-ID: ", request_id, b"\r\n")
    return UpstreamResponse(parts, content_length, chunked, close)


def interim_head(status: int, headers: Headers) -> bytes:
    """A backend's 1xx (103 Early Hints...) as forwarded to an HTTP/1.1 client: RFC 9110 15.2 says
    a proxy MUST forward 1xx responses it did not ask for. End-to-end headers only, no framing."""
    parts = [status_line(status)]
    conn: frozenset[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in _RESPONSE_SPECIAL:
            conn, _ = _note_hop_by_hop(lname, value, conn, None)
            continue  # hop-by-hop, Content-Length (none in a 1xx), X-Request-ID
        parts += (name, b": ", value, b"\r\n")
    if conn is not None and (named := conn - _PLAIN_CONNECTION):
        parts = _drop_named(parts, 1, named)
    parts.append(b"\r\n")
    return b"".join(parts)


__all__ = ["CHUNKED", "LENGTH", "NO_BODY", "BadRequest", "simple_response", "status_line"]
