"""Precomputed HTTP/1.1 status lines, so no hot path ever formats one."""

from __future__ import annotations

from http import HTTPStatus

_STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("latin-1")) for s in HTTPStatus
}


def status_line(code: int) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``; an unregistered code gets the reason phrase ``Unknown`` (cached)."""
    line = _STATUS_LINES.get(code)
    if line is None:
        line = _STATUS_LINES[code] = b"HTTP/1.1 %d Unknown\r\n" % code
    return line
