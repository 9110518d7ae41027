"""How a request's body is framed, decided once from its headers, and what makes framing ambiguous.

Request smuggling lives in the gap between two parsers that read one message two ways, so any
request whose framing could be read two ways is refused (400) before a handler sees it:
several different Content-Lengths, Content-Length with Transfer-Encoding, a coding other than
plain ``chunked``, several Host headers, or an HTTP/1.1 request without Host. llhttp (under
httptools) refuses most of these already; these checks hold even where it is lenient.

The proxy's ``proxy.headers.rewrite_request`` makes the same checks in the one pass that also
builds the upstream head, with the same two helpers (``parse_content_length`` for each
Content-Length header, ``body_framing`` once after the pass); ``request_framing`` is that pass
for a handler that builds nothing (the ASGI cycle).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Request body framing.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2


class BadRequest(ValueError):
    """The request cannot be served safely; the message becomes the 400 body."""


class Framing:
    """What a handler's ``prepare`` tells the engine about a request (``engine.handler.Prepared``)."""

    __slots__ = ("content_length", "expect_continue", "framing", "lowered", "upgrade")

    def __init__(
        self,
        framing: int,
        content_length: int,
        expect_continue: bool,
        upgrade: bytes | None,
        lowered: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.framing = framing
        self.content_length = content_length
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        # The headers with lower-cased names, in order (the ASGI scope's), made in the same pass.
        self.lowered: list[tuple[bytes, bytes]] = [] if lowered is None else lowered


def parse_content_length(value: bytes, seen: int) -> int:
    """One Content-Length header's value, checked against the one seen before it (-1: none yet).

    Repeated equal values are tolerated (RFC 9112 6.3 lets a recipient merge them); different
    ones, or anything but digits, are refused."""
    v = value.strip()
    if not v.isdigit():
        raise BadRequest("invalid Content-Length")
    n = int(v)
    if seen >= 0 and n != seen:
        raise BadRequest("conflicting Content-Length headers")
    return n


_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(?::[0-9]*)?")
_HOSTS_OK: set[bytes] = set()  # values already checked (bounded): nearly every request repeats one


def check_host(value: bytes) -> None:
    """RFC 9112 3.2: a Host that is not ``uri-host [ ":" port ]`` (userinfo, a path, a list,
    spaces) is an invalid field value, answered 400. Commas are refused too, although reg-name
    allows them: a Host that reads as a list is what a smuggler sends."""
    if value in _HOSTS_OK:
        return
    if _HOST.fullmatch(value) is None:
        raise BadRequest("invalid Host header")
    if len(_HOSTS_OK) < 256:
        _HOSTS_OK.add(value)


def body_framing(content_length: int, te: bytes | None, has_host: bool, http11: bool) -> int:
    """NO_BODY, LENGTH or CHUNKED from what the header pass collected (``te``: the
    Transfer-Encoding values joined by commas); BadRequest for the ambiguous combinations."""
    if te is not None:
        if content_length >= 0:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        # Only plain chunked: anything else would make the server (or the proxy) guess at framing.
        # (Empty list elements are ignored, RFC 9110 5.6.1: ", chunked" is chunked, as llhttp reads it.)
        if [c for c in (x.strip().lower() for x in te.split(b",")) if c] != [b"chunked"]:
            raise BadRequest("unsupported Transfer-Encoding")
        framing = CHUNKED
    elif content_length >= 0:
        framing = LENGTH
    else:
        framing = NO_BODY
    if http11 and not has_host:
        raise BadRequest("missing Host header")
    return framing


_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"expect", b"upgrade"})


def request_framing(headers: Iterable[tuple[bytes, bytes]], http11: bool) -> Framing:
    """Validate framing (module docstring) in one pass; raises ``BadRequest``."""
    host = False
    content_length = -1
    te: bytes | None = None
    expect = False
    upgrade: bytes | None = None
    lowered: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lname = name.lower()
        lowered.append((lname, value))
        if lname not in _SPECIAL:
            continue
        if lname == b"host":
            if host:
                raise BadRequest("multiple Host headers")
            check_host(value)
            host = True
        elif lname == b"content-length":
            content_length = parse_content_length(value, content_length)
        elif lname == b"transfer-encoding":
            te = value if te is None else te + b"," + value
        elif lname == b"expect":
            expect = value.strip().lower() == b"100-continue"
        else:
            upgrade = value
    framing = body_framing(content_length, te, host, http11)
    return Framing(framing, max(content_length, 0), expect, upgrade, lowered)
