"""The responses the engine (and its handlers) answer with when they refuse a request.

Short text bodies, always length-framed, usually with ``Connection: close``: a refusal is
read by a human in a terminal or a log as often as by a program, so the body says why.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from engine.status import status_line

RETRY_AFTER_S = 1
_date_sec = 0
_date = b""  # b"Date: ...\r\n" of second _date_sec: formatted at most once a second


def date_line() -> bytes:
    """``Date: <IMF-fixdate>\r\n``: RFC 9110 6.6.1 wants it in every 4xx a server with a clock sends."""
    global _date_sec, _date
    now = int(time.time())
    if now != _date_sec:
        _date_sec, _date = now, b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date


def simple_response(status: int, body: bytes, request_id: bytes | None, close: bool) -> bytes:
    """A server-generated response (4xx/5xx): short text body, always length-framed."""
    parts = [
        status_line(status),
        date_line(),
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: ",
        b"%d" % len(body),
        b"\r\n",
    ]
    if request_id is not None:
        parts += (b"X-Request-ID: ", request_id, b"\r\n")
    parts.append(b"Connection: close\r\n\r\n" if close else b"\r\n")
    parts.append(body)
    return b"".join(parts)


def with_retry_after(response: bytes, status: int, seconds: int = RETRY_AFTER_S) -> bytes:
    """Insert ``Retry-After`` right after the status line of a ``simple_response``."""
    line = status_line(status)
    return line + b"Retry-After: %d\r\n" % seconds + response[len(line) :]


def overload_response(reason: str, request_id: bytes | None, close: bool) -> tuple[bytes, int]:
    """A 503 saying why, with Retry-After; returns the bytes and the body length (access log)."""
    body = f"503 Service Unavailable: {reason}\n".encode()
    return with_retry_after(simple_response(503, body, request_id, close), 503), len(body)


def request_timeout_408() -> bytes:
    """The 408 for a head that did not arrive in time (built when sent: it carries a Date)."""
    return simple_response(408, b"408 Request Timeout: request headers not received in time\n", None, True)
