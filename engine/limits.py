"""The limits and timeouts one listener applies to every client connection.

Built once from a server's own configuration (``proxy/config.py`` or ``asgilab/config.py``),
so both servers enforce the same rules with the same code; 0 switches a size limit off.
"""

from __future__ import annotations

from dataclasses import dataclass

# Request line / header framing bytes tolerated on top of the two header limits before one
# endless header line (httptools buffers a header until its end) is refused.
HEAD_SLACK = 8 * 1024
LINGER_S = 2.0  # how long a refused connection's input is drained before the socket is closed
# Connections refused over max_connections that may linger at once (their 503 is read, not reset);
# past this many a refused connection gets its 503 and is closed at once, so open sockets stay
# within max_connections + REFUSED_LINGERING however fast clients connect.
REFUSED_LINGERING = 64


@dataclass(frozen=True, slots=True)
class Limits:
    """What a client may send and how long it may take; frozen, shared by every connection."""

    max_request_line: int = 8 * 1024  # request target bytes (then 414)
    max_header_bytes: int = 64 * 1024  # header bytes (then 431)
    max_headers: int = 100  # header count (then 431)
    max_body_size: int = 100 * 1024 * 1024  # body bytes (then 413)
    max_connections: int = 10_000  # connections served at once (then 503 + Retry-After)
    header_timeout: float = 30.0  # seconds for a request's head to arrive (then 408)
    body_timeout: float = 30.0  # seconds the client may go silent mid-body (then 408)
    # Seconds an idle keep-alive connection is kept between requests; None = header_timeout
    # (the proxy's rule: one deadline covers idle time and the next request's head).
    keepalive_timeout: float | None = None
    # Seconds a response may make no progress into a client that stopped reading (its socket
    # buffer full) before the connection is cut (nginx's send_timeout); 0 = never.
    send_timeout: float = 0.0
    linger: float = LINGER_S

    @property
    def max_head_fed(self) -> int:
        """Bytes of one request head fed to the parser before it counts as too large."""
        if self.max_request_line and self.max_header_bytes:
            return self.max_request_line + self.max_header_bytes + HEAD_SLACK
        return 0
