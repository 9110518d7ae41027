"""The proxy's side of the connection engine: a ``Site`` whose handler is an ``Exchange``.

Parsing, limits, timeouts, keep-alive, pipelining and refusals are the engine's
(``engine/connection.py``); what is the proxy's is here: the framing checks that also build
the upstream request head (``headers.rewrite_request``, one pass), an ``Upgrade`` request's
head for the tunnel, the hashing policies' key, and how a refusal is logged and counted.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from engine.connection import HTTPConnection
from engine.handler import EventCounter, Headers, Prepared
from engine.limits import Limits
from engine.trust import TrustedProxies
from proxy.exchange import Exchange
from proxy.headers import NO_BODY, UpstreamRequest, rewrite_request

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.state import ProxyState
    from proxy.tunnel import Tunnel

log = logging.getLogger("proxy.downstream")


def limits_from(cfg: Config) -> Limits:
    """The engine's limits from the proxy's flags (one header deadline covers keep-alive idle time)."""
    return Limits(
        max_request_line=cfg.max_request_line,
        max_header_bytes=cfg.max_header_bytes,
        max_headers=cfg.max_headers,
        max_body_size=cfg.max_body_size,
        max_connections=cfg.max_connections,
        header_timeout=cfg.client_header_timeout,
        body_timeout=cfg.client_body_timeout,
        send_timeout=cfg.client_send_timeout,
    )


class ProxySite:
    """The engine ``Site`` of the proxy's listener (``engine.handler.Site``)."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.loop = state.loop
        self.limits = limits_from(state.config)
        self.connections = state.connections
        self.refused: set[HTTPConnection] = set()  # refused over --max-connections, 503 still lingering
        self.counters: EventCounter | None = state.counters  # send_timeouts, connections_refused
        if state.config.forwarded_allow_ips:  # trusted proxies in front: keep their X-Forwarded-For
            self.prepare = functools.partial(
                rewrite_request, trusted=TrustedProxies(state.config.forwarded_allow_ips)
            )

    # The framing checks are the ones that build the upstream head, in one pass; the function
    # itself (not a method calling it) so the engine's per-request call costs one frame.
    prepare = staticmethod(rewrite_request)

    def handler(
        self,
        conn: HTTPConnection,
        method: bytes,
        target: bytes,
        headers: Headers,
        prepared: Prepared,
        http11: bool,
        keep_alive: bool,
        upgrade: bool,
        t0: float,
    ) -> Exchange:
        req: UpstreamRequest = prepared  # type: ignore[assignment]  # what prepare returned
        state = self.state
        proto = None
        if upgrade and req.framing == NO_BODY:
            proto = next((v for n, v in headers if n.lower() == b"upgrade"), None)
            if proto:
                # Upgrade and Connection are hop-by-hop and were dropped; a tunnel needs them.
                req.head = req.head[:-2] + b"Connection: Upgrade\r\nUpgrade: " + proto + b"\r\n\r\n"
        ex = Exchange(conn, state, method, target, req, http11, keep_alive, t0)  # type: ignore[arg-type]
        ex.upgrade = proto
        balancer = state.balancer
        if balancer.needs_key:  # only hashing policies look for a key; the others pay nothing
            ex.hash_key = balancer.key_for(headers, conn.client_ip)
        return ex

    def rejected(
        self,
        client_ip: bytes,
        status: int,
        reason: str,
        nbytes: int,
        target: bytes,
        elapsed: float,
        access: bool,
    ) -> None:
        """Every refusal gets a log line, a count, and (without an Exchange) an access-log line."""
        log.info("rejected request from %s: %s", client_ip.decode("latin-1"), reason)
        state = self.state
        state.counters.inc("rejected", str(status))  # requests the proxy refused, by status
        if access and state.access_log is not None:
            state.access_log.log(b"", b"-", target, status, nbytes, None, None, elapsed)


class DownstreamProtocol(HTTPConnection):
    """A client connection of the proxy: the engine's, plus the names ``Exchange`` and ``Tunnel`` call."""

    __slots__ = ("state", "tunnel")
    # ``site`` stays the engine's ``Site`` (not narrowed to ProxySite): mypyc refuses a redeclared
    # attribute, and the proxy's own needs go through ``state``.

    def __init__(self, site: ProxySite) -> None:
        super().__init__(site)
        self.state = site.state
        self.tunnel: Tunnel | None = None

    def exchange_finished(self, ex: Exchange) -> None:
        self.request_finished(ex)

    def tunnel_started(self, ex: Exchange, tunnel: Tunnel, from_upstream: bytes) -> None:
        """The backend switched protocols: from now on this connection is a byte tunnel."""
        self.tunnel = tunnel
        rest = self.hand_over(ex)
        tunnel.start(rest, from_upstream)

    def tunnel_closed(self, exc: Exception | None) -> None:
        """The tunnel ended (either side closed); the transport no longer calls connection_lost here."""
        self.released(exc)
