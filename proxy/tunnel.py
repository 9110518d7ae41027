"""Byte splicing between a client and a backend after ``101 Switching Protocols`` (WebSocket).

Once the backend agrees to an ``Upgrade``, HTTP is over on both connections: the proxy no
longer parses anything and copies bytes each way until either side closes (nginx's
``proxy_http_version 1.1`` + ``Upgrade``/``Connection`` pass-through, Envoy's
``upgrade_configs``). Each transport gets a small protocol object whose only jobs are to
forward what it reads to the other transport and to apply flow control: when one side's
write buffer passes its high-water mark, reading from the *other* side stops until it drains,
so a slow reader never makes the proxy buffer without bound.

Two bounds keep a tunnel from being held forever:
- ``--websocket-idle-timeout``: no byte in either direction for that long closes both sides
  (HAProxy's ``timeout tunnel``; nginx applies ``proxy_read_timeout``). One lazily re-armed
  timer per tunnel; a read only stores the loop's time.
- ``--client-send-timeout``: a side that reads nothing of what it is sent for that long (its
  write buffer full and not draining, ``engine.flow.SendWatch``) cuts the tunnel, so a client
  that stops reading cannot hold the backend connection and the bytes queued for it.

The backend connection of a tunnel is never returned to the keep-alive pool; both
connections close together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from engine.flow import SendWatch

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol
    from proxy.state import ProxyState

log = logging.getLogger("proxy.tunnel")


class _Side(asyncio.Protocol):
    """One direction's reader: what ``transport`` receives is written to ``peer``."""

    __slots__ = ("name", "peer", "transport", "tunnel", "watch")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, name: str) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: asyncio.Transport = None  # type: ignore[assignment]
        self.name = name
        self.watch: SendWatch | None = None  # created when writing to this side first pauses

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        tunnel.nbytes += len(data)
        tunnel.last_read = tunnel.loop.time()
        self.peer.write(data)

    def eof_received(self) -> bool:
        # No half-open tunnels: an end of stream from either side ends the tunnel (as nginx does);
        # this transport closes, and connection_lost closes the other once its buffer is sent.
        return False

    def pause_writing(self) -> None:
        with contextlib.suppress(RuntimeError, AttributeError):
            self.peer.pause_reading()
        self.watch_send()

    def watch_send(self) -> None:
        """Bytes wait in this side's write buffer: cut the tunnel if they stop draining."""
        tunnel = self.tunnel
        timeout = tunnel.state.config.client_send_timeout
        if timeout:
            if self.watch is None:
                self.watch = SendWatch(tunnel.loop, self.transport, timeout, self.stalled)
            self.watch.watch()

    def resume_writing(self) -> None:
        if self.watch is not None:
            self.watch.resumed()
        with contextlib.suppress(RuntimeError, AttributeError):
            self.peer.resume_reading()

    def stalled(self) -> None:
        """This side read nothing of what it was sent for --client-send-timeout: cut the tunnel."""
        tunnel = self.tunnel
        log.info(
            "%s tunnel: the %s side read nothing for %gs (%d bytes unsent): closing both sides",
            tunnel.label,
            self.name,
            tunnel.state.config.client_send_timeout,
            self.transport.get_write_buffer_size(),
        )
        tunnel.state.counters.inc("send_timeouts", "")
        self.transport.abort()  # connection_lost -> side_lost closes (or cuts) the other side

    def connection_lost(self, exc: Exception | None) -> None:
        if self.watch is not None:
            self.watch.cancel()
        self.tunnel.side_lost(self, exc)


class Tunnel:
    """A spliced client <-> backend pair; counts itself in ``state.tunnels_open`` while open."""

    __slots__ = (
        "client",
        "closed",
        "down",
        "idle_timer",
        "label",
        "last_read",
        "loop",
        "nbytes",
        "state",
        "upstream",
    )

    def __init__(
        self,
        state: ProxyState,
        down: DownstreamProtocol,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        label: str,
    ) -> None:
        self.state = state
        self.loop = state.loop
        self.down = down
        self.label = label
        self.nbytes = 0
        self.closed = False
        self.last_read = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
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
        idle = state.config.websocket_idle_timeout
        if idle:
            self.last_read = self.loop.time()
            self.idle_timer = self.loop.call_later(idle, self._idle_check)

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        idle = self.state.config.websocket_idle_timeout
        deadline = self.last_read + idle
        if self.loop.time() < deadline:
            self.idle_timer = self.loop.call_at(deadline, self._idle_check)
            return
        log.info("%s tunnel idle for %gs (no byte either way): closing both sides", self.label, idle)
        self.state.counters.inc("websocket_idle_timeouts", "")
        for side in (self.client, self.upstream):
            t = side.transport
            # Nothing moved for that long: bytes still buffered for a side will not be read either.
            if t.get_write_buffer_size():
                t.abort()
            else:
                t.close()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.state.tunnels_open -= 1
            if self.idle_timer is not None:
                self.idle_timer.cancel()
                self.idle_timer = None
            log.debug("%s tunnel closed by %s side (%d bytes)", self.label, side.name, self.nbytes)
            # Let what is already buffered for the other side go out, then close it; if that side
            # does not read it, the send timeout cuts it (its watch is armed if it was paused).
            other = self.upstream if side is self.client else self.client
            other.transport.close()
            if other.transport.get_write_buffer_size():
                other.watch_send()
            self.down.tunnel_closed(exc if side is self.client else None)
