"""The cases: what is sent, which rule it tests, and what a conforming server answers.

Categories follow Http11Probe (compliance, smuggling, malformed input, normalization); case ids
reuse Http11Probe's where the probe has the same case (``SMUG-CL-TE``...), ``LAB-`` otherwise.
``level`` is the rule's own keyword: MUST (or MUST NOT) or SHOULD. A SHOULD the lab does not
follow carries ``deviation`` (why), is listed in docs/conformance.md, and its ``expect`` asserts
what the lab does instead, so a change in behaviour is noticed either way.

``expect(result, seen)`` raises AssertionError; ``result`` is what came back on the connection
(servers.Result) and ``seen`` the raw targets the application got during the case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tests.unit.conformance.servers import Result

Expect = Callable[[Result, list[str]], None]
BOTH = ("proxy", "asgilab")
CATEGORIES = ("compliance", "smuggling", "malformed", "normalization")


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    rfc: str  # "RFC 9112 §6.3"
    level: str  # "MUST" or "SHOULD"
    rule: str  # the requirement, in one line
    send: tuple[bytes, ...]  # written in this many pieces, a short pause between them
    expect: Expect
    methods: tuple[str, ...] = ("GET",)  # of the requests whose responses are read (HEAD has no body)
    responses: int = 1  # final responses to wait for
    half_close: bool = False  # shut the client's write side after sending
    targets: tuple[str, ...] = BOTH
    deviation: str | None = None  # a SHOULD not followed: why (docs/conformance.md lists it)
    keep_open: bool = False  # the case expects the connection to stay open (waits briefly for EOF)
    # Set: the proxy's upstream is a raw server answering these bytes to GET /raw/<id> (proxy only).
    raw: bytes | None = None


HOST = b"Host: example.test\r\n"


def req(line: bytes = b"GET / HTTP/1.1", *headers: bytes, body: bytes = b"", host: bool = True) -> bytes:
    """One request: the request line, Host (unless ``host=False``), ``headers``, blank line, body."""
    out = line + b"\r\n" + (HOST if host else b"")
    for h in headers:
        out += h + b"\r\n"
    return out + b"\r\n" + body


def post(*headers: bytes, body: bytes = b"", target: bytes = b"/") -> bytes:
    return req(b"POST " + target + b" HTTP/1.1", *headers, body=body)


def chunked(payload: bytes, target: bytes = b"/") -> bytes:
    return post(b"Transfer-Encoding: chunked", body=payload, target=target)


# -- expectations ---------------------------------------------------------------------------------
def refused(*statuses: int, silent_ok: bool = False) -> Expect:
    """Refused with one of ``statuses`` (default 400), then closed; the app never got a request."""
    allowed = statuses or (400,)

    def check(r: Result, seen: list[str]) -> None:
        if silent_ok and not r.responses:
            assert r.closed, f"no response and the connection stayed open: {r}"
        else:
            assert r.statuses[:1] and r.statuses[0] in allowed, (
                f"want {allowed}, got {r.statuses} {r.extra[:80]!r}"
            )
            assert len(r.responses) == 1, f"one response only, got {r.statuses}"
        assert r.closed, "the connection must close after a refusal (nothing more is read as a request)"
        assert not seen, f"the application got {seen}"

    return check


def served(n: int = 1, body: str | None = None, keep: bool | None = None, **fields: object) -> Expect:
    """``n`` responses, all 2xx; the first echo's ``body`` (and other JSON fields) as given."""

    def check(r: Result, seen: list[str]) -> None:
        assert len(r.responses) == n and all(200 <= s < 300 for s in r.statuses), (
            f"{r.statuses} {r.extra[:80]!r}"
        )
        if body is not None or fields:
            echo = r.responses[0].json()
            if body is not None:
                assert echo["body"] == body, f"body {echo['body']!r}, want {body!r}"
            for k, v in fields.items():
                assert echo[k] == v, f"{k} = {echo[k]!r}, want {v!r}"
        if keep is not None:
            assert r.closed is not keep, "connection should stay open" if keep else "connection should close"
        assert not r.extra, f"bytes after the responses: {r.extra[:80]!r}"

    return check


def all_of(*checks: Expect) -> Expect:
    def check(r: Result, seen: list[str]) -> None:
        for c in checks:
            c(r, seen)

    return check


def that(fn: Callable[[Result, list[str]], object], why: str) -> Expect:
    def check(r: Result, seen: list[str]) -> None:
        assert fn(r, seen), f"{why}: statuses {r.statuses}, closed {r.closed}, seen {seen}"

    return check


def never_saw(target: str) -> Expect:
    return that(lambda r, seen: target not in seen, f"{target} must never reach the application")


def one_way(body: str) -> Expect:
    """Either refused (400, closed) or read as exactly one request with ``body``: never two ways."""

    def check(r: Result, seen: list[str]) -> None:
        if r.statuses and r.statuses[0] == 400:
            refused()(r, seen)
        else:
            served(1, body=body)(r, seen)
            assert len(seen) == 1, f"read as {seen}"

    return check


def echo_headers(r: Result) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in r.responses[0].json()["headers"]]


def header_names(r: Result) -> set[str]:
    return {k for k, _ in echo_headers(r)}


C = Case
CASES: list[Case] = []
HALF_CLOSE = (
    "a FIN from the client is taken as the client leaving (nginx's default, proxy_ignore_client_abort "
    "off): the request in flight is cancelled (access log 499, the upstream request aborted, the app "
    "gets http.disconnect) instead of answered, so abandoned requests free their backends; a client "
    "that half-closes may or may not get its answer, depending on whether it was sent before the FIN"
)


def add(*cases: Case) -> None:
    CASES.extend(cases)


# ---- compliance: request line, versions, Host, line endings, connections -----------------------
add(
    C(
        "COMP-BASELINE",
        "compliance",
        "RFC 9112 §3",
        "MUST",
        "a well-formed GET is served",
        (req(),),
        served(1, method="GET", target="/"),
    ),
    C(
        "LAB-ORIGIN-FORM-QUERY",
        "compliance",
        "RFC 9112 §3.2.1",
        "MUST",
        "origin-form is absolute-path [ '?' query ], passed on as sent",
        (req(b"GET /a/b?x=1&y HTTP/1.1"),),
        served(1, target="/a/b?x=1&y", path="/a/b"),
    ),
    C(
        "COMP-ABSOLUTE-FORM",
        "compliance",
        "RFC 9112 §3.2.2",
        "MUST",
        "a server MUST accept the absolute-form in requests",
        (req(b"GET http://example.test/abs?q=1 HTTP/1.1"),),
        served(1, path="/abs"),
    ),
    C(
        "COMP-OPTIONS-STAR",
        "compliance",
        "RFC 9112 §3.2.4",
        "MUST",
        "the asterisk-form '*' is valid for OPTIONS",
        (req(b"OPTIONS * HTTP/1.1"),),
        served(1, method="OPTIONS"),
    ),
    C(
        "COMP-ASTERISK-WITH-GET",
        "compliance",
        "RFC 9112 §3.2.4",
        "MUST",
        "the asterisk-form is only used for a server-wide OPTIONS request",
        (req(b"GET * HTTP/1.1"),),
        refused(),
    ),
    C(
        "RFC9112-3-MISSING-TARGET",
        "compliance",
        "RFC 9112 §3",
        "MUST",
        "request-line = method SP request-target SP HTTP-version",
        (req(b"GET HTTP/1.1"),),
        refused(),
    ),
    C(
        "RFC9112-3-MULTI-SP-REQUEST-LINE",
        "compliance",
        "RFC 9112 §3",
        "SHOULD",
        "an invalid request-line SHOULD get 400, never be autocorrected",
        (req(b"GET  / HTTP/1.1"),),
        served(1, target="/"),
        deviation="llhttp skips repeated SP between method and target and the engine never sees the "
        "raw request line; the request is read one way (target '/'), so nothing can be smuggled",
    ),
    C(
        "COMP-REQUEST-LINE-TAB",
        "compliance",
        "RFC 9112 §3",
        "SHOULD",
        "SP is 0x20, a tab is an invalid request-line (400)",
        (req(b"GET\t/ HTTP/1.1"),),
        refused(),
    ),
    C(
        "RFC9112-3.2-FRAGMENT-IN-TARGET",
        "compliance",
        "RFC 9112 §3.2",
        "SHOULD",
        "a fragment is not part of a request-target: invalid request-line, 400",
        (req(b"GET /a#frag HTTP/1.1"),),
        refused(),
    ),
    C(
        "LAB-METHOD-LOWERCASE-TOKEN",
        "compliance",
        "RFC 9110 §9.1",
        "MUST",
        "methods are case-sensitive tokens: 'get' is passed on as 'get', not read as GET",
        (req(b"get / HTTP/1.1"),),
        that(
            lambda r, s: r.statuses[:1] != [200] or r.responses[0].json()["method"] == "get",
            "a lower-case method must not be normalised",
        ),
    ),
    C(
        "COMP-METHOD-CONNECT",
        "compliance",
        "RFC 9110 §9.3.6",
        "SHOULD",
        "an origin server that does not implement CONNECT refuses it (405/501)",
        (req(b"CONNECT example.test:443 HTTP/1.1"),),
        refused(400, 405, 501),
    ),
    C(
        "MAL-LONG-METHOD",
        "compliance",
        "RFC 9112 §3",
        "SHOULD",
        "a method longer than any implemented SHOULD get 501",
        (req(b"A" * 2000 + b" / HTTP/1.1"),),
        refused(400, 501),
        deviation="llhttp refuses every method it does not know ('Invalid method encountered') with 400 "
        "before a handler runs, so an unknown method and an overlong one get the same answer",
    ),
    C(
        "RFC9112-7.1-MISSING-HOST",
        "compliance",
        "RFC 9112 §3.2",
        "MUST",
        "an HTTP/1.1 request without Host gets 400",
        (req(host=False),),
        refused(),
    ),
    C(
        "RFC9110-5.4-DUPLICATE-HOST",
        "compliance",
        "RFC 9112 §3.2",
        "MUST",
        "more than one Host field line gets 400",
        (req(b"GET / HTTP/1.1", b"Host: other.test"),),
        refused(),
    ),
    C(
        "COMP-DUPLICATE-HOST-SAME",
        "compliance",
        "RFC 9112 §3.2",
        "MUST",
        "two Host lines get 400 even when equal",
        (req(b"GET / HTTP/1.1", b"Host: example.test"),),
        refused(),
    ),
    C(
        "COMP-HOST-WITH-USERINFO",
        "compliance",
        "RFC 9112 §3.2",
        "MUST",
        "a Host with an invalid field value (userinfo) gets 400",
        (req(b"GET / HTTP/1.1", b"Host: user@example.test", host=False),),
        refused(),
    ),
    C(
        "COMP-HOST-WITH-PATH",
        "compliance",
        "RFC 9112 §3.2",
        "MUST",
        "a Host with an invalid field value (a path) gets 400",
        (req(b"GET / HTTP/1.1", b"Host: example.test/evil", host=False),),
        refused(),
    ),
    C(
        "SMUG-MULTIPLE-HOST-COMMA",
        "compliance",
        "RFC 9112 §3.2",
        "MUST",
        "a Host list ('a, b') is an invalid field value: 400",
        (req(b"GET / HTTP/1.1", b"Host: a.test, b.test", host=False),),
        refused(),
    ),
    C(
        "LAB-HOST-WITH-PORT",
        "compliance",
        "RFC 9112 §3.2",
        "MUST",
        "Host = uri-host [ ':' port ] is valid",
        (req(b"GET / HTTP/1.1", b"Host: example.test:8080", host=False),),
        served(1),
    ),
    C(
        "LAB-HOST-IPV6",
        "compliance",
        "RFC 9112 §3.2",
        "MUST",
        "an IP-literal Host is valid",
        (req(b"GET / HTTP/1.1", b"Host: [::1]:8000", host=False),),
        served(1),
    ),
    C(
        "LAB-HTTP10-NO-HOST",
        "compliance",
        "RFC 9112 §3.2",
        "MUST",
        "Host is required of HTTP/1.1 requests only: an HTTP/1.0 request without it is served",
        (req(b"GET / HTTP/1.0", host=False),),
        served(1),
    ),
    C(
        "COMP-VERSION-MISSING-MINOR",
        "compliance",
        "RFC 9112 §2.3",
        "MUST",
        "HTTP-version = HTTP-name '/' DIGIT '.' DIGIT",
        (req(b"GET / HTTP/1"),),
        refused(),
    ),
    C(
        "COMP-VERSION-LEADING-ZEROS",
        "compliance",
        "RFC 9112 §2.3",
        "MUST",
        "each version number is one DIGIT ('01.01' is invalid)",
        (req(b"GET / HTTP/01.01"),),
        refused(),
    ),
    C(
        "COMP-VERSION-WHITESPACE",
        "compliance",
        "RFC 9112 §2.3",
        "MUST",
        "no whitespace inside HTTP-version",
        (req(b"GET / HTTP/ 1.1"),),
        refused(),
    ),
    C(
        "LAB-VERSION-LOWERCASE",
        "compliance",
        "RFC 9112 §2.3",
        "MUST",
        "HTTP-name is the case-sensitive %s\"HTTP\" ('http/1.1' is invalid)",
        (req(b"GET / http/1.1"),),
        refused(),
    ),
    C(
        "RFC9112-2.3-HTTP09-REQUEST",
        "compliance",
        "RFC 9112 §2.3",
        "SHOULD",
        "HTTP/0.9 (no version) is an invalid request-line: 400",
        (b"GET /\r\n\r\n",),
        refused(),
    ),
    C(
        "COMP-HTTP12-VERSION",
        "compliance",
        "RFC 9110 §2.5",
        "SHOULD",
        "a higher minor version is processed as the highest one implemented (1.1)",
        (req(b"GET / HTTP/1.2"),),
        refused(400, 505),
        deviation="llhttp (the parser under both servers) refuses minor versions other than 0 and 1 with 400",
    ),
    C(
        "LAB-HTTP2-VERSION",
        "compliance",
        "RFC 9110 §15.6.6",
        "SHOULD",
        "a major version not supported gets 505",
        (req(b"GET / HTTP/2.0"),),
        refused(505),
    ),
    C(
        "COMP-LEADING-CRLF",
        "compliance",
        "RFC 9112 §2.2",
        "SHOULD",
        "a server SHOULD ignore at least one empty line before the request-line",
        (b"\r\n" + req(),),
        served(1),
    ),
    C(
        "RFC9112-3-CR-ONLY-LINE-ENDING",
        "compliance",
        "RFC 9112 §2.2",
        "MUST",
        "a bare CR MUST be treated as invalid (or replaced by SP)",
        (b"GET / HTTP/1.1\rHost: example.test\r\r",),
        refused(silent_ok=True),
    ),
    C(
        "LAB-BARE-LF-REQUEST",
        "compliance",
        "RFC 9112 §2.2",
        "MUST",
        "bare LF line ends (a recipient MAY accept them) are read one way only",
        (b"GET / HTTP/1.1\nHost: example.test\n\n",),
        one_way(""),
    ),
    C(
        "COMP-WHITESPACE-BEFORE-HEADERS",
        "compliance",
        "RFC 9112 §2.2",
        "MUST",
        "whitespace between the start-line and the first field: reject (or consume the line)",
        (b"GET / HTTP/1.1\r\n Host: example.test\r\n\r\n",),
        refused(),
    ),
    C(
        "COMP-CONNECTION-CLOSE",
        "compliance",
        "RFC 9112 §9.6",
        "MUST",
        "after a request with 'close' the server closes once it has answered",
        (req(b"GET / HTTP/1.1", b"Connection: close"),),
        all_of(
            served(1, keep=False),
            that(
                lambda r, s: b"close" in (r.responses[0].get("connection") or b""),
                "the final response SHOULD carry Connection: close",
            ),
        ),
    ),
    C(
        "LAB-CLOSE-THEN-PIPELINED",
        "compliance",
        "RFC 9112 §9.6",
        "MUST",
        "the server MUST NOT process requests received after one with 'close'",
        (req(b"GET /first HTTP/1.1", b"Connection: close") + req(b"GET /after-close HTTP/1.1"),),
        all_of(served(1, keep=False), never_saw("/after-close")),
    ),
    C(
        "COMP-HTTP10-DEFAULT-CLOSE",
        "compliance",
        "RFC 9112 §9.3",
        "SHOULD",
        "an HTTP/1.0 request without keep-alive: the connection closes after the response",
        (req(b"GET / HTTP/1.0"),),
        served(1, keep=False),
    ),
    C(
        "LAB-HTTP10-KEEP-ALIVE",
        "compliance",
        "RFC 9112 §9.3",
        "SHOULD",
        "HTTP/1.0 with 'keep-alive' may persist: two requests, two responses",
        (
            req(b"GET /1 HTTP/1.0", b"Connection: keep-alive"),
            req(b"GET /2 HTTP/1.0", b"Connection: keep-alive"),
        ),
        served(2, keep=True),
        responses=2,
        methods=("GET", "GET"),
        keep_open=True,
    ),
    C(
        "LAB-HTTP11-PERSISTENT",
        "compliance",
        "RFC 9112 §9.3",
        "SHOULD",
        "HTTP/1.1 connections persist by default",
        (req(b"GET /1 HTTP/1.1"), req(b"GET /2 HTTP/1.1")),
        served(2, keep=True),
        responses=2,
        methods=("GET", "GET"),
        keep_open=True,
    ),
    C(
        "LAB-PIPELINE-ORDER",
        "compliance",
        "RFC 9112 §9.3.2",
        "MUST",
        "responses to pipelined requests are sent in the order the requests arrived",
        (req(b"GET /p1 HTTP/1.1") + req(b"GET /p2 HTTP/1.1") + req(b"GET /p3 HTTP/1.1"),),
        all_of(
            served(3),
            that(lambda r, s: [x.json()["target"] for x in r.responses] == ["/p1", "/p2", "/p3"], "in order"),
        ),
        responses=3,
        methods=("GET",) * 3,
    ),
    C(
        "LAB-PIPELINE-WITH-BODIES",
        "compliance",
        "RFC 9112 §9.3.2",
        "MUST",
        "pipelined requests with bodies: each body goes with its own request, answers in order",
        (
            post(b"Content-Length: 3", body=b"one")
            + chunked(b"3\r\ntwo\r\n0\r\n\r\n")
            + req(b"GET /3 HTTP/1.1"),
        ),
        that(lambda r, s: [x.json()["body"] for x in r.responses] == ["one", "two", ""], "bodies in order"),
        responses=3,
        methods=("POST", "POST", "GET"),
    ),
    C(
        "LAB-PIPELINE-HEAD-THEN-GET",
        "compliance",
        "RFC 9110 §9.3.2",
        "MUST",
        "a HEAD response has no content, so the next pipelined response is read right",
        (req(b"HEAD /len HTTP/1.1") + req(b"GET /after-head HTTP/1.1"),),
        all_of(
            that(lambda r, s: r.statuses == [200, 200] and r.responses[0].body == b"", "HEAD then GET"),
            that(lambda r, s: r.responses[1].json()["target"] == "/after-head", "second is the GET"),
        ),
        responses=2,
        methods=("HEAD", "GET"),
    ),
    C(
        "LAB-HALF-CLOSE-AFTER-REQUEST",
        "compliance",
        "RFC 9112 §9.6",
        "SHOULD",
        "a complete request followed by the client's half-close (FIN) is still answered",
        (req(b"GET /status/200 HTTP/1.1"),),
        that(lambda r, s: r.closed and r.statuses in ([], [200]), "closed"),
        half_close=True,
        deviation=HALF_CLOSE,
    ),
    C(
        "LAB-HALF-CLOSE-PIPELINED",
        "compliance",
        "RFC 9112 §9.6",
        "SHOULD",
        "pipelined requests then FIN: all are answered, then the server closes",
        (req(b"GET /h1 HTTP/1.1") + req(b"GET /h2 HTTP/1.1"),),
        that(lambda r, s: r.closed and r.statuses in ([], [200], [200, 200]), "closed, no partial response"),
        half_close=True,
        responses=2,
        methods=("GET", "GET"),
        deviation=HALF_CLOSE,
    ),
    C(
        "COMP-POST-CL-UNDERSEND",
        "compliance",
        "RFC 9112 §6.2",
        "MUST",
        "fewer octets than Content-Length before the close: incomplete, never served",
        (post(b"Content-Length: 10", body=b"abc"),),
        refused(400, 408, silent_ok=True),
        half_close=True,
        methods=("POST",),
    ),
    C(
        "COMP-CHUNKED-NO-FINAL",
        "compliance",
        "RFC 9112 §7.1",
        "MUST",
        "a chunked body without its last chunk before the close is incomplete, never served",
        (chunked(b"3\r\nabc\r\n"),),
        refused(400, 408, silent_ok=True),
        half_close=True,
        methods=("POST",),
    ),
    C(
        "LAB-EXPECT-100",
        "compliance",
        "RFC 9110 §10.1.1",
        "MUST",
        "100-continue on an HTTP/1.1 request with content: 100 (Continue) or a final status at once",
        (post(b"Expect: 100-continue", b"Content-Length: 5"), b"hello"),
        all_of(
            served(1, body="hello"),
            that(lambda r, s: [i.status for i in r.interim] == [100], "one 100 Continue"),
        ),
        methods=("POST",),
    ),
    C(
        "LAB-EXPECT-100-HTTP10",
        "compliance",
        "RFC 9110 §15.2",
        "MUST",
        "a server MUST NOT send a 1xx response to an HTTP/1.0 client",
        (req(b"POST / HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 5", body=b"hello", host=False),),
        all_of(served(1, body="hello"), that(lambda r, s: not r.interim, "no interim response")),
        methods=("POST",),
    ),
    C(
        "COMP-UPGRADE-UNKNOWN",
        "compliance",
        "RFC 9110 §7.8",
        "MUST",
        "a server MUST NOT switch to a protocol the client did not ask for (nor an unknown one)",
        (req(b"GET / HTTP/1.1", b"Connection: Upgrade", b"Upgrade: unknown-proto/1"),),
        that(lambda r, s: r.statuses and r.statuses[0] != 101, "no 101"),
    ),
    C(
        "COMP-UPGRADE-HTTP10",
        "compliance",
        "RFC 9110 §7.8",
        "MUST",
        "a server MUST ignore Upgrade in an HTTP/1.0 request",
        (
            req(
                b"GET / HTTP/1.0",
                b"Connection: Upgrade",
                b"Upgrade: websocket",
                b"Sec-WebSocket-Version: 13",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                host=False,
            ),
        ),
        that(lambda r, s: r.statuses and r.statuses[0] != 101, "no 101"),
    ),
    C(
        "COMP-UPGRADE-MISSING-CONN",
        "compliance",
        "RFC 9110 §7.8",
        "SHOULD",
        "Upgrade without the 'upgrade' connection option is not an upgrade request",
        (
            req(
                b"GET / HTTP/1.1",
                b"Upgrade: websocket",
                b"Sec-WebSocket-Version: 13",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ),
        ),
        that(lambda r, s: r.statuses and r.statuses[0] != 101, "no 101"),
    ),
)

# ---- compliance: response framing (1xx/204/304, HEAD, versions, Date) ----------------------------
add(
    C(
        "LAB-204-NO-BODY",
        "compliance",
        "RFC 9110 §15.3.5",
        "MUST",
        "a 204 ends with its header section: no content, and no Content-Length or Transfer-Encoding",
        (req(b"GET /status/204 HTTP/1.1") + req(b"GET /after HTTP/1.1"),),
        that(
            lambda r, s: (
                r.statuses == [204, 200]
                and not r.responses[0].has("content-length")
                and not r.responses[0].has("transfer-encoding")
                and r.responses[1].json()["target"] == "/after"
            ),
            "204 without content or framing, then the next response",
        ),
        responses=2,
        methods=("GET", "GET"),
    ),
    C(
        "LAB-304-NO-BODY",
        "compliance",
        "RFC 9110 §15.4.5",
        "MUST",
        "a 304 ends with its header section: no content",
        (req(b"GET /status/304 HTTP/1.1") + req(b"GET /after HTTP/1.1"),),
        that(
            lambda r, s: (
                r.statuses == [304, 200]
                and not r.responses[0].has("transfer-encoding")
                and r.responses[1].json()["target"] == "/after"
            ),
            "304 without content, then the next response",
        ),
        responses=2,
        methods=("GET", "GET"),
    ),
    C(
        "LAB-1XX-INTERIM-NO-FRAMING",
        "compliance",
        "RFC 9112 §6.1",
        "MUST",
        "no Transfer-Encoding (and no content) in a 1xx response",
        (post(b"Expect: 100-continue", b"Content-Length: 2"), b"ok"),
        that(
            lambda r, s: (
                r.interim
                and all(not i.has("transfer-encoding") and not i.has("content-length") for i in r.interim)
            ),
            "a bare 100",
        ),
        methods=("POST",),
    ),
    C(
        "LAB-HEAD-NO-CONTENT",
        "compliance",
        "RFC 9110 §9.3.2",
        "MUST",
        "the server MUST NOT send content in a response to HEAD",
        (req(b"HEAD /len HTTP/1.1", b"Connection: close"),),
        that(
            lambda r, s: r.statuses == [200] and r.closed and r.extra == b"", "no bytes after the HEAD head"
        ),
        methods=("HEAD",),
    ),
    C(
        "LAB-HEAD-SAME-LENGTH",
        "compliance",
        "RFC 9110 §8.6",
        "MUST",
        "a Content-Length in a HEAD response equals what GET would have sent",
        (req(b"HEAD /len HTTP/1.1"),),
        that(lambda r, s: r.responses and r.responses[0].get("content-length") in (None, b"5"), "5 or none"),
        methods=("HEAD",),
    ),
    C(
        "LAB-HEAD-SAME-HEADERS",
        "compliance",
        "RFC 9110 §9.3.2",
        "SHOULD",
        "a HEAD response SHOULD carry the header fields GET would (here: its Content-Length)",
        (req(b"HEAD /len HTTP/1.1"),),
        that(lambda r, s: r.responses and r.responses[0].get("content-length") == b"5", "Content-Length: 5"),
        methods=("HEAD",),
    ),
    C(
        "LAB-NO-CHUNKED-TO-HTTP10",
        "compliance",
        "RFC 9112 §6.1",
        "MUST",
        "no Transfer-Encoding in a response to an HTTP/1.0 request (close-delimited instead)",
        (req(b"GET /stream HTTP/1.0", host=False),),
        that(
            lambda r, s: (
                r.statuses == [200]
                and not r.responses[0].has("transfer-encoding")
                and r.responses[0].body == b"part1,part2"
                and r.closed
            ),
            "close-delimited body",
        ),
    ),
    C(
        "LAB-CHUNKED-TO-HTTP11",
        "compliance",
        "RFC 9112 §7.1",
        "MUST",
        "content of unknown length to an HTTP/1.1 client is chunked (or close-delimited)",
        (req(b"GET /stream HTTP/1.1"),),
        that(lambda r, s: r.statuses == [200] and r.responses[0].body == b"part1,part2", "both parts"),
    ),
    C(
        "LAB-RESPONSE-VERSION",
        "compliance",
        "RFC 9110 §2.5",
        "SHOULD",
        "the response version is the highest the server conforms to (HTTP/1.1), also to 1.0 clients",
        (req(b"GET / HTTP/1.0", host=False),),
        that(lambda r, s: r.responses and r.responses[0].version == b"HTTP/1.1", "HTTP/1.1 status line"),
    ),
    C(
        "LAB-DATE",
        "compliance",
        "RFC 9110 §6.6.1",
        "MUST",
        "an origin server with a clock MUST send Date in 2xx, 3xx and 4xx responses",
        (req(),),
        that(lambda r, s: r.responses and r.responses[0].has("date"), "a Date header"),
    ),
    C(
        "LAB-DATE-ON-REFUSAL",
        "compliance",
        "RFC 9110 §6.6.1",
        "MUST",
        "Date is required in 4xx responses too, including the server's own refusals",
        (req(host=False),),
        that(lambda r, s: r.statuses == [400] and r.responses[0].has("date"), "400 with Date"),
    ),
    C(
        "LAB-VIA-INBOUND",
        "compliance",
        "RFC 9110 §7.6.3",
        "MUST",
        "a gateway MUST send Via in each inbound request it forwards",
        (req(),),
        that(lambda r, s: any(k == "via" and "1.1" in v for k, v in echo_headers(r)), "Via: 1.1 ..."),
        targets=("proxy",),
    ),
)

# ---- compliance: message bodies that must be read right ----------------------------------------
add(
    C(
        "COMP-POST-CL-BODY",
        "compliance",
        "RFC 9112 §6.2",
        "MUST",
        "a valid Content-Length without Transfer-Encoding is the body length",
        (post(b"Content-Length: 5", body=b"hello"),),
        served(1, body="hello"),
        methods=("POST",),
    ),
    C(
        "COMP-POST-CL-ZERO",
        "compliance",
        "RFC 9112 §6.2",
        "MUST",
        "Content-Length: 0 is a valid empty body",
        (post(b"Content-Length: 0"),),
        served(1, body=""),
        methods=("POST",),
    ),
    C(
        "COMP-POST-NO-CL-NO-TE",
        "compliance",
        "RFC 9112 §6.3",
        "MUST",
        "a request with neither Content-Length nor Transfer-Encoding has no body (what follows is a request)",
        (post() + req(b"GET /next HTTP/1.1"),),
        all_of(served(2, body=""), that(lambda r, s: s[-1] == "/next", "next")),
        responses=2,
        methods=("POST", "GET"),
    ),
    C(
        "COMP-GET-WITH-CL-BODY",
        "compliance",
        "RFC 9112 §9.3",
        "MUST",
        "a server MUST read the whole body (here of a GET) or close after the response",
        (req(b"GET / HTTP/1.1", b"Content-Length: 5", body=b"hello") + req(b"GET /next HTTP/1.1"),),
        that(
            lambda r, s: (
                (r.statuses == [200, 200] and r.responses[1].json()["target"] == "/next")
                or (r.statuses[:1] in ([200], [400]) and r.closed and "hello" not in str(s))
            ),
            "body read, not a request",
        ),
        responses=2,
        methods=("GET", "GET"),
    ),
    C(
        "SMUG-HEAD-CL-BODY",
        "compliance",
        "RFC 9112 §6.3",
        "MUST",
        "a HEAD request's Content-Length body is read as its body, not as the next request",
        (
            req(b"HEAD / HTTP/1.1", b"Content-Length: 22", body=b"GET /smuggled HTTP/1.1")
            + req(b"GET /next HTTP/1.1"),
        ),
        all_of(
            never_saw("/smuggled"),
            that(lambda r, s: r.statuses in ([200, 200], [400]), "two answers or a 400"),
        ),
        responses=2,
        methods=("HEAD", "GET"),
    ),
    C(
        "COMP-CHUNKED-BODY",
        "compliance",
        "RFC 9112 §7.1",
        "MUST",
        "a recipient MUST be able to parse and decode the chunked coding",
        (chunked(b"5\r\nhello\r\n0\r\n\r\n"),),
        served(1, body="hello"),
        methods=("POST",),
    ),
    C(
        "COMP-CHUNKED-MULTI",
        "compliance",
        "RFC 9112 §7.1",
        "MUST",
        "several chunks make one body",
        (chunked(b"2\r\nhe\r\n3\r\nllo\r\n1\r\n!\r\n0\r\n\r\n"),),
        served(1, body="hello!"),
        methods=("POST",),
    ),
    C(
        "COMP-CHUNKED-EMPTY",
        "compliance",
        "RFC 9112 §7.1",
        "MUST",
        "a body of just the last chunk is empty",
        (chunked(b"0\r\n\r\n"),),
        served(1, body=""),
        methods=("POST",),
    ),
    C(
        "COMP-CHUNKED-HEX-UPPERCASE",
        "compliance",
        "RFC 9112 §7.1",
        "MUST",
        "chunk-size is HEXDIG, A-F included",
        (chunked(b"A\r\n0123456789\r\n0\r\n\r\n"),),
        served(1, body="0123456789"),
        methods=("POST",),
    ),
    C(
        "LAB-CHUNKED-SPLIT-READS",
        "compliance",
        "RFC 9112 §7.1",
        "MUST",
        "a chunked body split across reads (inside the size line and the data) decodes the same",
        (post(b"Transfer-Encoding: chunked") + b"1", b"0\r\n012", b"3456789abcdef\r\n0", b"\r\n\r\n"),
        served(1, body="0123456789abcdef"),
        methods=("POST",),
    ),
    C(
        "COMP-CHUNKED-EXTENSION",
        "compliance",
        "RFC 9112 §7.1.1",
        "MUST",
        "a recipient MUST ignore unrecognized chunk extensions",
        (chunked(b"5;name=value\r\nhello\r\n0;last\r\n\r\n"),),
        served(1, body="hello"),
        methods=("POST",),
    ),
    C(
        "LAB-CHUNK-EXT-QUOTED",
        "compliance",
        "RFC 9112 §7.1.1",
        "MUST",
        "chunk-ext-val may be a quoted-string; still ignored",
        (chunked(b'5;n="a b;c"\r\nhello\r\n0\r\n\r\n'),),
        served(1, body="hello"),
        methods=("POST",),
    ),
    C(
        "COMP-CHUNKED-TRAILER-VALID",
        "compliance",
        "RFC 9112 §7.1.2",
        "MUST",
        "a trailer section after the last chunk is parsed (and may be discarded)",
        (chunked(b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n") + req(b"GET /next HTTP/1.1"),),
        served(2, body="hello"),
        responses=2,
        methods=("POST", "GET"),
    ),
    C(
        "LAB-CHUNKED-CASE-INSENSITIVE",
        "compliance",
        "RFC 9112 §7",
        "MUST",
        "transfer-coding names are case-insensitive ('Chunked')",
        (post(b"Transfer-Encoding: Chunked", body=b"2\r\nok\r\n0\r\n\r\n"),),
        served(1, body="ok"),
        methods=("POST",),
    ),
)

# ---- smuggling: Content-Length ------------------------------------------------------------------
SMUGGLED = req(b"GET /smuggled HTTP/1.1")


def cl(value: bytes, body: bytes = b"abc") -> bytes:
    return post(b"Content-Length: " + value, body=body)


add(
    C(
        "SMUG-CL-TE",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "Content-Length with Transfer-Encoding: refused and the connection closed (never two readings)",
        (post(b"Content-Length: 4", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),),
        all_of(refused(), never_saw("/smuggled")),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-CL",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "Transfer-Encoding then Content-Length: the same refusal",
        (post(b"Transfer-Encoding: chunked", b"Content-Length: 40", body=b"0\r\n\r\n" + SMUGGLED),),
        all_of(refused(), never_saw("/smuggled")),
        methods=("POST",),
    ),
    C(
        "SMUG-CLTE-PIPELINE",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "after a good request, a CL+TE request on the same connection is refused and the connection closed",
        (
            req(b"GET /first HTTP/1.1")
            + post(b"Content-Length: 4", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
        ),
        all_of(
            that(lambda r, s: r.statuses == [200, 400] and r.closed, "200 then 400 and close"),
            never_saw("/smuggled"),
        ),
        responses=2,
        methods=("GET", "POST"),
    ),
    C(
        "SMUG-DUPLICATE-CL",
        "smuggling",
        "RFC 9110 §8.6",
        "MUST",
        "Content-Length lines that differ are an unrecoverable framing error (400, close)",
        (post(b"Content-Length: 3", b"Content-Length: 13", body=b"abc" + SMUGGLED),),
        all_of(refused(), never_saw("/smuggled")),
        methods=("POST",),
    ),
    C(
        "SMUG-CL-COMMA-DIFFERENT",
        "smuggling",
        "RFC 9110 §8.6",
        "MUST",
        "a Content-Length list of different values is invalid",
        (cl(b"3, 13"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CL-COMMA-SAME",
        "smuggling",
        "RFC 9110 §8.6",
        "MUST",
        "a list of one repeated value: rejected, or read as that one value, never two ways",
        (cl(b"3, 3"),),
        one_way("abc"),
        methods=("POST",),
    ),
    C(
        "LAB-CL-REPEATED-EQUAL",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "repeated equal Content-Length lines: rejected, or read as the one value",
        (post(b"Content-Length: 3", b"Content-Length: 3", body=b"abc"),),
        one_way("abc"),
        methods=("POST",),
    ),
    C(
        "RFC9112-6.1-CL-PLUS-SIGN",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "Content-Length = 1*DIGIT: '+3' is invalid (400, close)",
        (cl(b"+3"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CL-NEGATIVE",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "'-1' is invalid",
        (cl(b"-1"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CL-NEGATIVE-ZERO",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "'-0' is invalid",
        (cl(b"-0"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CL-UNDERSCORE",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "'1_0' is invalid",
        (cl(b"1_0"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CL-HEX-PREFIX",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "'0x3' is invalid",
        (cl(b"0x3"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CL-OCTAL",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "'0o3' is invalid",
        (cl(b"0o3"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CL-INTERNAL-SPACE",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "'1 3' is invalid",
        (cl(b"1 3"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "RFC9112-6.1-CL-NON-NUMERIC",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "'abc' is invalid",
        (cl(b"abc"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "MAL-CL-EMPTY",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "an empty Content-Length is invalid",
        (cl(b""),),
        refused(),
        methods=("POST",),
    ),
    C(
        "MAL-CL-OVERFLOW",
        "smuggling",
        "RFC 9110 §8.6",
        "MUST",
        "a recipient MUST prevent integer overflow on large Content-Length values",
        (cl(b"99999999999999999999999999"),),
        refused(400, 413),
        methods=("POST",),
    ),
    C(
        "SMUG-CL-IN-TRAILER",
        "smuggling",
        "RFC 9110 §6.5.1",
        "MUST",
        "a Content-Length in a trailer MUST NOT be used for framing",
        (chunked(b"3\r\nabc\r\n0\r\nContent-Length: 50\r\n\r\n") + req(b"GET /next HTTP/1.1"),),
        that(
            lambda r, s: r.statuses == [400] or (r.statuses == [200, 200] and s[-1] == "/next"),
            "refused (llhttp) or ignored, never framing",
        ),
        responses=2,
        methods=("POST", "GET"),
    ),
    C(
        "SMUG-TE-IN-TRAILER",
        "smuggling",
        "RFC 9110 §6.5.1",
        "MUST",
        "a Transfer-Encoding in a trailer MUST NOT be used for framing",
        (chunked(b"3\r\nabc\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n") + req(b"GET /next HTTP/1.1"),),
        that(
            lambda r, s: r.statuses == [400] or (r.statuses == [200, 200] and s[-1] == "/next"),
            "refused (llhttp) or ignored, never framing",
        ),
        responses=2,
        methods=("POST", "GET"),
    ),
)


# ---- smuggling: Transfer-Encoding ---------------------------------------------------------------
def te(value: bytes, body: bytes = b"3\r\nabc\r\n0\r\n\r\n") -> bytes:
    return post(b"Transfer-Encoding: " + value, body=body)


add(
    C(
        "SMUG-TE-NOT-FINAL-CHUNKED",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "chunked not the final coding of a request: 400 and close",
        (te(b"chunked, gzip"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "LAB-TE-GZIP-ONLY",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "a request coding without chunked last cannot be delimited: 400 and close",
        (te(b"gzip", b"abc"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "COMP-UNKNOWN-TE-501",
        "smuggling",
        "RFC 9112 §6.1",
        "SHOULD",
        "a transfer coding the server does not understand SHOULD get 501",
        (te(b"gzip, chunked"),),
        refused(400, 501),
        methods=("POST",),
        deviation="refused with 400 and close, like every framing the lab will not read: one status for "
        "'body cannot be delimited safely' keeps the smuggling rules in one place (engine/framing.py)",
    ),
    C(
        "SMUG-TE-XCHUNKED",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "an unknown coding 'xchunked' is not chunked: refused",
        (te(b"xchunked"),),
        refused(400, 501),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-IDENTITY",
        "smuggling",
        "RFC 9112 §7",
        "MUST",
        "'identity' is no longer a transfer coding: refused",
        (te(b"identity", b"abc"),),
        refused(400, 501),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-DOUBLE-CHUNKED",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "chunked MUST NOT be applied more than once: 'chunked, chunked' is refused",
        (te(b"chunked, chunked"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-DUPLICATE-HEADERS",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "two Transfer-Encoding: chunked lines are chunked twice: refused",
        (post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-EMPTY-VALUE",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "an empty Transfer-Encoding is not a coding: refused",
        (te(b""),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-HTTP10",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "Transfer-Encoding in an HTTP/1.0 message: faulty framing; close after processing",
        (
            req(
                b"POST / HTTP/1.0",
                b"Transfer-Encoding: chunked",
                body=b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
                host=False,
            ),
        ),
        all_of(never_saw("/smuggled"), that(lambda r, s: r.closed, "closed")),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-SP-BEFORE-COLON",
        "smuggling",
        "RFC 9112 §5.1",
        "MUST",
        "whitespace between field name and colon: 400",
        (post(b"Transfer-Encoding : chunked", body=b"3\r\nabc\r\n0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-OBS-FOLD",
        "smuggling",
        "RFC 9112 §5.2",
        "MUST",
        "an obs-folded Transfer-Encoding: 400 (or the fold replaced by SP)",
        (post(b"Transfer-Encoding:\r\n chunked", body=b"3\r\nabc\r\n0\r\n\r\n"),),
        one_way("abc"),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-VTAB",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "a vertical tab is not OWS: '\\x0bchunked' is not chunked",
        (te(b"\x0bchunked"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-FORMFEED",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "a form feed is not OWS: '\\x0cchunked' is not chunked",
        (te(b"\x0cchunked"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-NULL",
        "smuggling",
        "RFC 9110 §5.5",
        "MUST",
        "NUL in a field value: reject (or replace with SP)",
        (te(b"chunked\x00"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-TRAILING-SPACE",
        "smuggling",
        "RFC 9110 §5.5",
        "MUST",
        "trailing OWS is not part of the value: 'chunked ' is chunked",
        (te(b"chunked "),),
        served(1, body="abc"),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-TAB-BEFORE-VALUE",
        "smuggling",
        "RFC 9110 §5.5",
        "MUST",
        "a tab is OWS before the value",
        (te(b"\tchunked"),),
        served(1, body="abc"),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-LEADING-COMMA",
        "smuggling",
        "RFC 9110 §5.6.1",
        "SHOULD",
        "empty list elements are ignored: ', chunked' is chunked",
        (te(b", chunked"),),
        served(1, body="abc"),
        methods=("POST",),
    ),
    C(
        "SMUG-TE-TRAILING-COMMA",
        "smuggling",
        "RFC 9110 §5.6.1",
        "SHOULD",
        "empty list elements are ignored: 'chunked,' is chunked",
        (te(b"chunked,"),),
        refused(),
        methods=("POST",),
        deviation="llhttp refuses a trailing empty element in Transfer-Encoding with 400 "
        "before the engine sees it; refusing an odd framing is the safe side of the smuggling rules",
    ),
    C(
        "SMUG-TRANSFER_ENCODING",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "'Transfer_Encoding' is another field, never framing: no body is read",
        (post(b"Transfer_Encoding: chunked") + req(b"GET /next HTTP/1.1"),),
        that(
            lambda r, s: (
                (r.statuses == [200, 200] and r.responses[0].json()["body"] == "") or r.statuses == [400]
            ),
            "no chunked body read",
        ),
        responses=2,
        methods=("POST", "GET"),
    ),
    C(
        "SMUG-CHUNKED-WITH-PARAMS",
        "smuggling",
        "RFC 9112 §7",
        "SHOULD",
        "chunked has no parameters; their presence SHOULD be treated as an error",
        (te(b"chunked;q=1"),),
        refused(),
        methods=("POST",),
    ),
)

# ---- smuggling: chunk sizes and line ends -------------------------------------------------------
add(
    C(
        "SMUG-CHUNK-BARE-SEMICOLON",
        "smuggling",
        "RFC 9112 §7.1.1",
        "MUST",
        "chunk-ext needs a name after ';'",
        (chunked(b"3;\r\nabc\r\n0\r\n\r\n"),),
        one_way("abc"),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-HEX-PREFIX",
        "smuggling",
        "RFC 9112 §7.1",
        "MUST",
        "chunk-size = 1*HEXDIG: '0x3' is invalid",
        (chunked(b"0x3\r\nabc\r\n0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-UNDERSCORE",
        "smuggling",
        "RFC 9112 §7.1",
        "MUST",
        "'1_0' is invalid",
        (chunked(b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-LEADING-SP",
        "smuggling",
        "RFC 9112 §7.1",
        "MUST",
        "no whitespace before chunk-size",
        (chunked(b" 3\r\nabc\r\n0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-NEGATIVE",
        "smuggling",
        "RFC 9112 §7.1",
        "MUST",
        "'-3' is invalid",
        (chunked(b"-3\r\nabc\r\n0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "MAL-CHUNK-SIZE-OVERFLOW",
        "smuggling",
        "RFC 9112 §7.1",
        "MUST",
        "recipients MUST prevent overflow on large chunk sizes",
        (chunked(b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n"),),
        refused(400, 413),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-MISSING-TRAILING-CRLF",
        "smuggling",
        "RFC 9112 §7.1",
        "MUST",
        "chunk = chunk-size CRLF chunk-data CRLF: the CRLF after the data is required",
        (chunked(b"3\r\nabc0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-SPILL",
        "smuggling",
        "RFC 9112 §7.1",
        "MUST",
        "exactly chunk-size octets of data: more is an error",
        (chunked(b"3\r\nabcde\r\n0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-EXT-CTRL",
        "smuggling",
        "RFC 9112 §7.1.1",
        "MUST",
        "NUL in a chunk extension is invalid",
        (chunked(b"3;a=\x00\r\nabc\r\n0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-EXT-CR",
        "smuggling",
        "RFC 9112 §2.2",
        "MUST",
        "a bare CR in a chunk extension is invalid",
        (chunked(b"3;a\rb\r\nabc\r\n0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-BARE-CR-TERM",
        "smuggling",
        "RFC 9112 §2.2",
        "MUST",
        "a bare CR does not end a chunk-size line",
        (chunked(b"3\rabc\r\n0\r\n\r\n"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-LF-TERM",
        "smuggling",
        "RFC 9112 §2.2",
        "MUST",
        "a bare LF after chunk data: rejected, or read as a line end, never two ways",
        (chunked(b"3\r\nabc\n0\r\n\r\n"),),
        one_way("abc"),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-EXT-LF",
        "smuggling",
        "RFC 9112 §2.2",
        "MUST",
        "a bare LF ending a chunk-size line: rejected, or read as a line end, never two ways",
        (chunked(b"3;x\nabc\r\n0\r\n\r\n"),),
        one_way("abc"),
        methods=("POST",),
    ),
    C(
        "SMUG-CHUNK-LF-TRAILER",
        "smuggling",
        "RFC 9112 §2.2",
        "MUST",
        "bare LF ending the trailer section: rejected, or read as a line end, never two ways",
        (chunked(b"3\r\nabc\r\n0\n\n"),),
        one_way("abc"),
        methods=("POST",),
    ),
    C(
        "LAB-CHUNK-SMUGGLE-AFTER-ZERO",
        "smuggling",
        "RFC 9112 §7.1",
        "MUST",
        "what follows the last chunk is the next request, read as one (answered in order)",
        (chunked(b"3\r\nabc\r\n0\r\n\r\n") + req(b"GET /second HTTP/1.1"),),
        that(lambda r, s: r.statuses == [200, 200] and s[-1] == "/second", "two requests"),
        responses=2,
        methods=("POST", "GET"),
    ),
)

# ---- malformed input: header syntax, control characters, garbage, limits ------------------------
add(
    C(
        "RFC9110-5.6.2-SP-BEFORE-COLON",
        "malformed",
        "RFC 9112 §5.1",
        "MUST",
        "whitespace between a field name and the colon MUST get 400",
        (req(b"GET / HTTP/1.1", b"X-A : 1"),),
        refused(),
    ),
    C(
        "RFC9112-5.1-OBS-FOLD",
        "malformed",
        "RFC 9112 §5.2",
        "MUST",
        "obs-fold in a request: 400, or each fold replaced by SP",
        (req(b"GET / HTTP/1.1", b"X-A: one\r\n two"),),
        that(
            lambda r, s: (
                r.statuses == [400] or any(v == "one two" or v == "one  two" for _, v in echo_headers(r))
            ),
            "rejected or unfolded",
        ),
    ),
    C(
        "RFC9112-5-EMPTY-HEADER-NAME",
        "malformed",
        "RFC 9112 §5",
        "MUST",
        "field-name = token (at least one tchar)",
        (req(b"GET / HTTP/1.1", b": empty"),),
        refused(),
    ),
    C(
        "RFC9112-5-INVALID-HEADER-NAME",
        "malformed",
        "RFC 9112 §5",
        "MUST",
        "'[' is not a tchar",
        (req(b"GET / HTTP/1.1", b"X[A]: 1"),),
        refused(),
    ),
    C(
        "RFC9112-5-HEADER-NO-COLON",
        "malformed",
        "RFC 9112 §5",
        "MUST",
        "field-line = field-name ':' OWS field-value OWS",
        (req(b"GET / HTTP/1.1", b"NoColonHere"),),
        refused(),
    ),
    C(
        "NORM-TAB-IN-NAME",
        "malformed",
        "RFC 9112 §5",
        "MUST",
        "a tab is not a tchar",
        (req(b"GET / HTTP/1.1", b"X\tA: 1"),),
        refused(),
    ),
    C(
        "MAL-NON-ASCII-HEADER-NAME",
        "malformed",
        "RFC 9112 §5",
        "MUST",
        "non-ASCII octets are not tchars",
        (req(b"GET / HTTP/1.1", b"X-\xc3\xa9: 1"),),
        refused(),
    ),
    C(
        "MAL-NUL-IN-HEADER-VALUE",
        "malformed",
        "RFC 9110 §5.5",
        "MUST",
        "NUL in a field value: reject (or replace with SP)",
        (req(b"GET / HTTP/1.1", b"X-A: a\x00b"),),
        refused(),
    ),
    C(
        "SMUG-BARE-CR-HEADER-VALUE",
        "malformed",
        "RFC 9112 §2.2",
        "MUST",
        "a bare CR in a field value is invalid",
        (req(b"GET / HTTP/1.1", b"X-A: a\rb"),),
        refused(),
    ),
    C(
        "LAB-BARE-LF-IN-HEADER",
        "malformed",
        "RFC 9112 §2.2",
        "MUST",
        "a bare LF inside the header section: a line end (MAY) or invalid, never part of a value",
        (b"GET / HTTP/1.1\r\nHost: example.test\r\nX-A: a\nX-B: b\r\n\r\n",),
        that(lambda r, s: r.statuses == [400] or ("x-b", "b") in echo_headers(r), "split or rejected"),
    ),
    C(
        "MAL-CONTROL-CHARS-HEADER",
        "malformed",
        "RFC 9110 §5.5",
        "SHOULD",
        "other CTLs in a field value are invalid (recipients MAY keep them in a safe context)",
        (req(b"GET / HTTP/1.1", b"X-A: a\x01b"),),
        refused(),
    ),
    C(
        "LAB-DEL-IN-HEADER-VALUE",
        "malformed",
        "RFC 9110 §5.5",
        "SHOULD",
        "DEL (0x7f) is a CTL, not a field-vchar",
        (req(b"GET / HTTP/1.1", b"X-A: a\x7fb"),),
        refused(),
    ),
    C(
        "LAB-HTAB-IN-HEADER-VALUE",
        "malformed",
        "RFC 9110 §5.5",
        "MUST",
        "HTAB is allowed inside field content",
        (req(b"GET / HTTP/1.1", b"X-A: a\tb"),),
        that(lambda r, s: ("x-a", "a\tb") in echo_headers(r), "value kept with its tab"),
    ),
    C(
        "MAL-NUL-IN-URL",
        "malformed",
        "RFC 9112 §3.2",
        "MUST",
        "NUL is not allowed in a request-target",
        (req(b"GET /a\x00b HTTP/1.1"),),
        refused(),
    ),
    C(
        "LAB-CTL-IN-URL",
        "malformed",
        "RFC 9112 §3.2",
        "MUST",
        "control characters are not allowed in a request-target",
        (req(b"GET /a\x01b HTTP/1.1"),),
        refused(),
    ),
    C(
        "MAL-NON-ASCII-URL",
        "malformed",
        "RFC 9112 §3",
        "SHOULD",
        "non-ASCII octets make an invalid request-line: 400, never autocorrected",
        (req(b"GET /caf\xc3\xa9 HTTP/1.1"),),
        refused(),
    ),
    C(
        "MAL-BINARY-GARBAGE",
        "malformed",
        "RFC 9112 §2.2",
        "SHOULD",
        "input that is not HTTP SHOULD get 400 and a close",
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 8,),
        refused(silent_ok=True),
    ),
    C(
        "MAL-H2-PREFACE",
        "malformed",
        "RFC 9112 §2.3",
        "SHOULD",
        "the HTTP/2 preface on an HTTP/1.1 port is refused (400/505) or closed",
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",),
        refused(400, 505, silent_ok=True),
    ),
    C(
        "MAL-WHITESPACE-ONLY-LINE",
        "malformed",
        "RFC 9112 §2.2",
        "SHOULD",
        "a whitespace-only request line is not a request-line: 400",
        (b"   \r\n\r\n",),
        refused(silent_ok=True),
    ),
    C(
        "MAL-INCOMPLETE-REQUEST",
        "malformed",
        "RFC 9112 §8",
        "MUST",
        "an incomplete head then the client's close is never served",
        (b"GET / HTTP/1.1\r\nHost: exa",),
        refused(400, 408, silent_ok=True),
        half_close=True,
    ),
    C(
        "MAL-LONG-URL",
        "malformed",
        "RFC 9112 §3",
        "MUST",
        "a request-target longer than the server parses MUST get 414",
        (req(b"GET /" + b"a" * 9000 + b" HTTP/1.1"),),
        refused(414),
    ),
    C(
        "MAL-LONG-HEADER-VALUE",
        "malformed",
        "RFC 9110 §5.4",
        "MUST",
        "a field larger than the server processes MUST get a 4xx (431)",
        (req(b"GET / HTTP/1.1", b"X-Big: " + b"v" * 70_000),),
        refused(431),
    ),
    C(
        "MAL-LONG-HEADER-NAME",
        "malformed",
        "RFC 9110 §5.4",
        "MUST",
        "a huge field name: 4xx (431)",
        (req(b"GET / HTTP/1.1", b"X" * 70_000 + b": v"),),
        refused(431),
    ),
    C(
        "MAL-MANY-HEADERS",
        "malformed",
        "RFC 9110 §5.4",
        "MUST",
        "more fields than the server processes (over 100 here): 4xx (431)",
        (req(b"GET / HTTP/1.1", *[b"X-H%d: v" % i for i in range(120)]),),
        refused(431),
    ),
    C(
        "LAB-HEADERS-AT-LIMIT",
        "malformed",
        "RFC 9110 §5.4",
        "MUST",
        "a head within the limits (100 fields, Host included) is served",
        (req(b"GET / HTTP/1.1", *[b"X-H%d: v" % i for i in range(99)]),),
        served(1),
    ),
    C(
        "MAL-CHUNK-EXT-64K",
        "malformed",
        "RFC 9112 §7.1.1",
        "SHOULD",
        "a server ought to limit chunk extensions and answer 4xx past the limit",
        (chunked(b"3;" + b"x" * 70_000 + b"\r\nabc\r\n0\r\n\r\n"),),
        served(1, body="abc"),
        methods=("POST",),
        deviation="llhttp skips chunk extensions without a length cap, and the engine only bounds the body "
        "(--max-body-size) and the head; a 70 KB extension is read and ignored",
    ),
    C(
        "MAL-POST-CL-HUGE-NO-BODY",
        "malformed",
        "RFC 9112 §6.2",
        "MUST",
        "a Content-Length over the body limit is refused at once (413), before any body arrives",
        (cl(b"999999999999", b""),),
        refused(413),
        methods=("POST",),
    ),
)

# ---- normalization: what the application sees --------------------------------------------------
add(
    C(
        "NORM-CASE-TE",
        "normalization",
        "RFC 9110 §5.1",
        "MUST",
        "field names are case-insensitive: 'TRANSFER-ENCODING' frames the body",
        (post(b"TRANSFER-ENCODING: chunked", body=b"2\r\nok\r\n0\r\n\r\n"),),
        served(1, body="ok"),
        methods=("POST",),
    ),
    C(
        "LAB-CASE-CL",
        "normalization",
        "RFC 9110 §5.1",
        "MUST",
        "'content-LENGTH' frames the body too",
        (post(b"content-LENGTH: 2", body=b"ok"),),
        served(1, body="ok"),
        methods=("POST",),
    ),
    C(
        "NORM-SP-BEFORE-COLON-CL",
        "normalization",
        "RFC 9112 §5.1",
        "MUST",
        "'Content-Length : 3' (space before colon) MUST get 400",
        (post(b"Content-Length : 3", body=b"abc"),),
        refused(),
        methods=("POST",),
    ),
    C(
        "NORM-UNDERSCORE-CL",
        "normalization",
        "RFC 9112 §6.3",
        "MUST",
        "'Content_Length' is not Content-Length: no body is read",
        (post(b"Content_Length: 3") + req(b"GET /next HTTP/1.1"),),
        that(
            lambda r, s: (
                (r.statuses == [200, 200] and r.responses[0].json()["body"] == "") or r.statuses == [400]
            ),
            "no body read",
        ),
        responses=2,
        methods=("POST", "GET"),
    ),
    C(
        "NORM-UNDERSCORE-TE",
        "normalization",
        "RFC 9112 §6.3",
        "MUST",
        "'Transfer_Encoding' is not Transfer-Encoding: no body is read",
        (post(b"Transfer_Encoding: chunked") + req(b"GET /next HTTP/1.1"),),
        that(
            lambda r, s: (
                (r.statuses == [200, 200] and r.responses[0].json()["body"] == "") or r.statuses == [400]
            ),
            "no body read",
        ),
        responses=2,
        methods=("POST", "GET"),
    ),
    C(
        "SMUG-CL-LEADING-ZEROS",
        "normalization",
        "RFC 9110 §8.6",
        "MUST",
        "Content-Length is decimal: '0003' is 3 (never octal), and it is read as 3",
        (cl(b"0003"),),
        one_way("abc"),
        methods=("POST",),
    ),
    C(
        "SMUG-CL-TRAILING-SPACE",
        "normalization",
        "RFC 9110 §5.5",
        "MUST",
        "OWS around a value is not part of it: 'Content-Length: 3 ' is 3",
        (cl(b"3 "),),
        served(1, body="abc"),
        methods=("POST",),
    ),
    C(
        "MAL-CL-TAB-BEFORE-VALUE",
        "normalization",
        "RFC 9110 §5.6.3",
        "MUST",
        "a tab is OWS before a value",
        (cl(b"\t3"),),
        served(1, body="abc"),
        methods=("POST",),
    ),
    C(
        "LAB-OBS-TEXT-VALUE",
        "normalization",
        "RFC 9110 §5.5",
        "SHOULD",
        "obs-text (0x80-0xFF) in a value is opaque data: passed on unchanged",
        (req(b"GET / HTTP/1.1", b"X-Latin: caf\xe9 \xff"),),
        that(lambda r, s: ("x-latin", "caf\xe9 \xff") in echo_headers(r), "bytes kept"),
    ),
    C(
        "LAB-VALUE-OWS-TRIMMED",
        "normalization",
        "RFC 9112 §5.1",
        "MUST",
        "leading and trailing OWS are not part of the field value",
        (req(b"GET / HTTP/1.1", b"X-A: \t v \t"),),
        that(lambda r, s: ("x-a", "v") in echo_headers(r), "'v'"),
    ),
    C(
        "LAB-PERCENT-ENCODING-KEPT",
        "normalization",
        "RFC 9110 §4.2.3",
        "MUST",
        "the target is passed on as received: '%2F' is not decoded into the raw path",
        (req(b"GET /a%2Fb?x=%20 HTTP/1.1"),),
        served(1, target="/a%2Fb?x=%20"),
    ),
    C(
        "LAB-DOT-SEGMENTS-KEPT",
        "normalization",
        "RFC 9110 §4.2.3",
        "MUST",
        "dot-segments are not removed on the way (the application decides)",
        (req(b"GET /a/../b HTTP/1.1"),),
        served(1, target="/a/../b"),
    ),
    C(
        "LAB-REPEATED-FIELD-ORDER",
        "normalization",
        "RFC 9110 §5.3",
        "MUST",
        "a proxy MUST NOT change the order of repeated field lines",
        (req(b"GET / HTTP/1.1", b"X-Multi: 1", b"X-Other: z", b"X-Multi: 2", b"X-Multi: 3"),),
        that(
            lambda r, s: [v for k, v in echo_headers(r) if k == "x-multi"] in (["1", "2", "3"], ["1, 2, 3"]),
            "1, 2, 3 in order",
        ),
    ),
    C(
        "LAB-EMPTY-VALUE-KEPT",
        "normalization",
        "RFC 9110 §5.5",
        "MUST",
        "an empty field value is valid",
        (req(b"GET / HTTP/1.1", b"X-Empty:"),),
        that(lambda r, s: ("x-empty", "") in echo_headers(r), "kept, empty"),
    ),
    C(
        "LAB-SPACE-IN-TARGET",
        "normalization",
        "RFC 9112 §3.2",
        "SHOULD",
        "a space inside the target makes the request-line invalid: 400, not autocorrected",
        (req(b"GET /a b HTTP/1.1"),),
        refused(),
    ),
)

# ---- hop-by-hop and Connection-named fields (what an intermediary must remove) ----------------
add(
    C(
        "LAB-CONNECTION-NAMED-REQUEST",
        "compliance",
        "RFC 9110 §7.6.1",
        "MUST",
        "an intermediary MUST remove the fields named in Connection, and Connection itself",
        (req(b"GET / HTTP/1.1", b"Connection: keep-alive, X-Secret", b"X-Secret: s", b"X-Kept: k"),),
        that(
            lambda r, s: (
                "x-secret" not in header_names(r)
                and "connection" not in header_names(r)
                and ("x-kept", "k") in echo_headers(r)
            ),
            "X-Secret and Connection dropped, X-Kept kept",
        ),
        targets=("proxy",),
    ),
    C(
        "LAB-HOP-BY-HOP-REQUEST",
        "compliance",
        "RFC 9110 §7.6.1",
        "SHOULD",
        "intermediaries SHOULD remove Keep-Alive, TE, Proxy-Connection, Upgrade, Transfer-Encoding",
        (req(b"GET / HTTP/1.1", b"Keep-Alive: timeout=9", b"TE: trailers", b"Proxy-Connection: keep-alive"),),
        that(lambda r, s: not {"keep-alive", "te", "proxy-connection"} & header_names(r), "none forwarded"),
        targets=("proxy",),
    ),
    C(
        "LAB-CONNECTION-NAMES-FRAMING",
        "smuggling",
        "RFC 9110 §7.6.1",
        "MUST",
        "'Connection: Content-Length' must not strip the framing the proxy relies on",
        (
            post(b"Connection: Content-Length", b"Content-Length: 3", body=b"abc")
            + req(b"GET /next HTTP/1.1"),
        ),
        that(
            lambda r, s: (
                (r.statuses == [200, 200] and r.responses[0].json()["body"] == "abc" and s[-1] == "/next")
                or r.statuses[:1] == [400]
            ),
            "body read as 3 bytes, or refused",
        ),
        responses=2,
        methods=("POST", "GET"),
        targets=("proxy",),
    ),
    C(
        "LAB-CONNECTION-NAMES-HOST",
        "smuggling",
        "RFC 9110 §7.6.1",
        "MUST",
        "'Connection: Host' does not remove the Host the upstream routes on",
        (req(b"GET / HTTP/1.1", b"Connection: Host"),),
        that(
            lambda r, s: r.statuses[:1] == [400] or any(k == "host" for k, _ in echo_headers(r)),
            "Host still forwarded, or refused",
        ),
        targets=("proxy",),
    ),
    C(
        "LAB-CLIENT-TE-NOT-FORWARDED",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "a chunked request goes upstream re-framed: the application reads the same body",
        (chunked(b"2;x=y\r\nab\r\n1\r\nc\r\n0\r\nX-Trailer: t\r\n\r\n"),),
        served(1, body="abc"),
        methods=("POST",),
    ),
)


# ---- the proxy's response side: what a misbehaving backend sends --------------------------------
def raw(case_id: str, *headers: bytes) -> bytes:
    return req(b"GET /raw/" + case_id.encode() + b" HTTP/1.1", *headers)


def R(case_id: str, category: str, rfc: str, level: str, rule: str, response: bytes, expect: Expect) -> Case:
    """A proxy-only case whose upstream answers ``response`` byte for byte."""
    return Case(
        case_id, category, rfc, level, rule, (raw(case_id),), expect, targets=("proxy",), raw=response
    )


add(
    R(
        "LAB-RESP-CONNECTION-NAMED",
        "compliance",
        "RFC 9110 §7.6.1",
        "MUST",
        "fields a backend names in Connection (and Keep-Alive) never reach the client",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\n"
        b"Keep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\nok",
        that(
            lambda r, s: (
                r.statuses == [200]
                and not r.responses[0].has("x-secret")
                and not r.responses[0].has("keep-alive")
                and r.responses[0].get("x-kept") == b"yes"
                and r.responses[0].body == b"ok"
            ),
            "X-Secret and Keep-Alive dropped, X-Kept kept",
        ),
    ),
    R(
        "LAB-RESP-CONNECTION-NAMES-LENGTH",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "'Connection: Content-Length' from a backend must not leave the client an unframed response",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: content-length\r\n\r\nok",
        that(
            lambda r, s: (
                r.statuses == [200]
                and r.responses[0].body == b"ok"
                and (
                    r.responses[0].has("content-length")
                    or r.responses[0].has("transfer-encoding")
                    or r.closed
                )
            ),
            "framed (or closed)",
        ),
    ),
    R(
        "LAB-RESP-204-WITH-LENGTH",
        "compliance",
        "RFC 9110 §8.6",
        "MUST",
        "a server MUST NOT send Content-Length in a 204: dropped when a backend sends one",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        that(lambda r, s: r.statuses == [204] and not r.responses[0].has("content-length"), "no length"),
    ),
    R(
        "LAB-RESP-CL-AND-TE",
        "smuggling",
        "RFC 9112 §6.1",
        "MUST",
        "never Content-Length with Transfer-Encoding to the client (the chunked reading wins, or 502)",
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        that(
            lambda r, s: (
                r.statuses == [502]
                or (
                    r.statuses == [200]
                    and r.responses[0].body == b"ok"
                    and not (r.responses[0].has("content-length") and r.responses[0].has("transfer-encoding"))
                )
            ),
            "one framing",
        ),
    ),
    R(
        "LAB-RESP-INVALID-LENGTH",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "an invalid Content-Length from the server: the proxy MUST discard it and answer 502",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nx",
        that(lambda r, s: r.statuses == [502], "502"),
    ),
    R(
        "LAB-RESP-CONFLICTING-LENGTHS",
        "smuggling",
        "RFC 9112 §6.3",
        "MUST",
        "Content-Length values that differ from the server: 502",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        that(lambda r, s: r.statuses == [502], "502"),
    ),
    R(
        "LAB-RESP-OBS-FOLD",
        "malformed",
        "RFC 9112 §5.2",
        "MUST",
        "obs-fold in a response: a proxy MUST answer 502 or replace the fold with SP",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Folded: a\r\n b\r\n\r\nok",
        that(
            lambda r, s: (
                r.statuses == [502]
                or (r.statuses == [200] and r.responses[0].get("x-folded") in (b"a b", b"a  b"))
            ),
            "502 or unfolded",
        ),
    ),
    R(
        "LAB-RESP-NUL-IN-VALUE",
        "malformed",
        "RFC 9110 §5.5",
        "MUST",
        "NUL in a response field value: rejected (502) or replaced, never forwarded",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\x00b\r\n\r\nok",
        that(lambda r, s: r.statuses == [502] or b"\x00" not in (r.responses[0].get("x-a") or b""), "no NUL"),
    ),
    R(
        "LAB-RESP-CLOSE-DELIMITED",
        "compliance",
        "RFC 9112 §6.3",
        "MUST",
        "a body delimited by the server's close is delivered whole (re-framed for the client)",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the close",
        that(lambda r, s: r.statuses == [200] and r.responses[0].body == b"until the close", "whole body"),
    ),
    R(
        "LAB-RESP-CHUNKED-TRAILERS",
        "compliance",
        "RFC 9112 §7.1.2",
        "MUST",
        "a chunked response with trailers is decoded whole",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n",
        that(lambda r, s: r.statuses == [200] and r.responses[0].body == b"abc", "abc"),
    ),
    R(
        "LAB-RESP-UNASKED-101",
        "compliance",
        "RFC 9110 §7.8",
        "MUST",
        "a 101 the client did not ask for is never passed on (502)",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        that(lambda r, s: r.statuses == [502] and not r.interim, "502, no 101"),
    ),
    R(
        "LAB-RESP-103-FORWARDED",
        "compliance",
        "RFC 9110 §15.2",
        "MUST",
        "a proxy MUST forward 1xx responses it did not ask for (103 Early Hints), then the final one",
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        that(
            lambda r, s: (
                r.statuses == [200]
                and r.responses[0].body == b"ok"
                and [i.status for i in r.interim] == [103]
            ),
            "103 then 200",
        ),
    ),
    R(
        "LAB-RESP-STATUS-OUT-OF-RANGE",
        "malformed",
        "RFC 9110 §15",
        "MUST",
        "a status outside 100..599 is invalid: 502",
        b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
        that(lambda r, s: r.statuses == [502], "502"),
    ),
    R(
        "LAB-RESP-STATUS-600",
        "malformed",
        "RFC 9110 §15",
        "SHOULD",
        "a status over 599 is invalid (handled as a 5xx): 502",
        b"HTTP/1.1 603 Odd\r\nContent-Length: 0\r\n\r\n",
        that(lambda r, s: r.statuses == [502], "502, never 603"),
    ),
)

add(
    C(
        "LAB-ABSOLUTE-FORM-HOST",
        "normalization",
        "RFC 9112 §3.2.2",
        "MUST",
        "with an absolute-form target the target's authority is the Host (the received one is ignored)",
        (req(b"GET http://target.test/abs HTTP/1.1"),),
        that(
            lambda r, s: [v for k, v in echo_headers(r) if k == "host"] == ["target.test"],
            "Host from the target",
        ),
    ),
)

add(
    Case(
        "LAB-RESP-101-WRONG-UPGRADE",
        "compliance",
        "RFC 9110 §7.8",
        "MUST",
        "a 101 to a protocol the client did not ask for (here an empty Upgrade) is never passed on: 502",
        (
            req(
                b"GET /raw/LAB-RESP-101-WRONG-UPGRADE HTTP/1.1",
                b"Connection: Upgrade",
                b"Upgrade: websocket",
                b"Sec-WebSocket-Version: 13",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ),
        ),
        that(lambda r, s: not r.interim and r.statuses == [502], "502, no 101"),
        targets=("proxy",),
        raw=b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: \r\nConnection: Upgrade\r\n\r\n",
    )
)
