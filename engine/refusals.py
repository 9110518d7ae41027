"""The responses the engine (and its handlers) answer with when they refuse a request.

Short text bodies, always length-framed, usually with ``Connection: close``: a refusal is
read by a human in a terminal or a log as often as by a program, so the body says why.
"""

from __future__ import annotations

from engine.status import status_line

RETRY_AFTER_S = 1


def simple_response(status: int, body: bytes, request_id: bytes | None, close: bool) -> bytes:
    """A server-generated response (4xx/5xx): short text body, always length-framed."""
    parts = [
        status_line(status),
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


REQUEST_TIMEOUT_408 = simple_response(
    408, b"408 Request Timeout: request headers not received in time\n", None, True
)
