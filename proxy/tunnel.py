"""Byte splicing between a client and a backend after ``101 Switching Protocols`` (WebSocket).

Once the backend agrees to an ``Upgrade``, HTTP is over on both connections: the proxy no
longer parses anything and copies bytes each way until either side closes (nginx's
``proxy_http_version 1.1`` + ``Upgrade``/``Connection`` pass-through, Envoy's
``upgrade_configs``). Each transport gets a small protocol object whose only jobs are to
forward what it reads to the other transport and to apply flow control: when one side's
write buffer passes its high-water mark, reading from the *other* side stops until it drains,
so a slow reader never makes the proxy buffer without bound.

The backend connection of a tunnel is never returned to the keep-alive pool; both
connections close together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol
    from proxy.state import ProxyState

log = logging.getLogger("proxy.tunnel")


class _Side(asyncio.Protocol):
    """One direction's reader: what ``transport`` receives is written to ``peer``."""

    __slots__ = ("name", "peer", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, name: str) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: asyncio.Transport = None  # type: ignore[assignment]
        self.name = name

    def data_received(self, data: bytes) -> None:
        self.tunnel.nbytes += len(data)
        self.peer.write(data)

    def eof_received(self) -> bool:
        # No half-open tunnels: an end of stream from either side ends the tunnel (as nginx does);
        # this transport closes, and connection_lost closes the other once its buffer is sent.
        return False

    def pause_writing(self) -> None:
        with contextlib.suppress(RuntimeError, AttributeError):
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        with contextlib.suppress(RuntimeError, AttributeError):
            self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.side_lost(self, exc)


class Tunnel:
    """A spliced client <-> backend pair; counts itself in ``state.tunnels_open`` while open."""

    __slots__ = ("client", "closed", "down", "label", "nbytes", "state", "upstream")

    def __init__(
        self,
        state: ProxyState,
        down: DownstreamProtocol,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        label: str,
    ) -> None:
        self.state = state
        self.down = down
        self.label = label
        self.nbytes = 0
        self.closed = False
        self.client = _Side(self, client, "client")
        self.upstream = _Side(self, upstream, "upstream")
        self.client.peer = upstream
        self.upstream.peer = client

    def start(self, from_client: bytes, from_upstream: bytes) -> None:
        """Take both transports over; bytes already read past the HTTP heads go out first."""
        state = self.state
        state.tunnels_open += 1
        state.counters.inc("websocket_tunnels", self.label)  # tunnels opened, by Upgrade protocol
        client, upstream = self.client.transport, self.upstream.transport
        client.set_protocol(self.client)
        upstream.set_protocol(self.upstream)
        if from_client:
            upstream.write(from_client)
        if from_upstream:
            client.write(from_upstream)
        for t in (client, upstream):
            with contextlib.suppress(RuntimeError, AttributeError):
                t.resume_reading()
        # A side whose write buffer is already over the mark will not get pause_writing again.
        for side in (self.client, self.upstream):
            if side.transport.get_write_buffer_size() > side.transport.get_write_buffer_limits()[1]:
                side.pause_writing()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.state.tunnels_open -= 1
            log.debug("%s tunnel closed by %s side (%d bytes)", self.label, side.name, self.nbytes)
            # Let what is already buffered for the other side go out, then close it.
            other = self.upstream if side is self.client else self.client
            other.transport.close()
            self.down.tunnel_closed(exc if side is self.client else None)
