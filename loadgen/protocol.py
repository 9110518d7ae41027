"""The coordinator <-> worker wire protocol of the distributed load generator, version 1.

One TCP connection per worker, opened by the worker; on it, JSON lines: one UTF-8 JSON object per
line, ``\\n``-terminated, each with a ``"type"``. JSON lines because every message is small except
the final one, a worker's whole timeline, and because ``nc`` and ``jq`` can read a capture of it.
The messages, in the order they flow (``->`` worker to coordinator, ``<-`` back):

==== ============ ===========================================================================
dir  type         fields
==== ============ ===========================================================================
->   ``hello``    ``protocol`` (this version), ``name`` (hostname), ``pid``
<-   ``reject``   ``protocol``, ``reason``; the coordinator closes (wrong version, run full)
<-   ``welcome``  ``protocol``, ``index`` (0..N-1), ``count`` (N)
<-   ``clock``    ``t0``: coordinator ``time.time()``; repeated a few times
->   ``clock``    ``t0`` echoed, ``tw``: the worker's ``time.time()`` (clock offset and RTT)
<-   ``run``      ``index``, ``count``, ``start_wall`` (second 0, in the WORKER's clock),
                  ``config`` (url, rate, concurrency, connections, max_backlog (optional),
                  duration_s, timeout_s, method, headers, body_size), ``scenario``
                  (``{"name", "text"}`` of the file, or null)
<-   ``abort``    ``reason``: the run will not happen (fewer than N workers joined in time)
->   ``tick``     ``second``, ``snap`` (the live-line snapshot, as ``--workers`` sends it),
                  ``records``: the seconds that changed since the last tick, each
                  ``{"second", "settled", "entry", "by_request"}`` (``entry`` as one element
                  of ``Timeline.export()["seconds"]``: counts and HDR encodings)
->   ``beat``     nothing: the worker is alive (sent when it had nothing else to send for 1 s)
<-   ``stop``     end the run now (the coordinator got SIGINT/SIGTERM): drain and send ``done``
->   ``done``     ``export`` (``Timeline.export()``, authoritative), ``elapsed_s``,
                  ``stopped_early``, ``stats``
->   ``error``    ``message``: the worker failed and exits
==== ============ ===========================================================================

Version rule: the coordinator accepts a ``hello`` of exactly :data:`PROTOCOL_VERSION` and rejects
any other (a worker from another loadgen image would merge differently encoded numbers); a change
of a message's meaning bumps the version, an added optional field does not.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_PORT = 7000
#: The largest line either side accepts (a ``done`` of an hour-long run is a few MB).
MAX_LINE = 256 * 1024 * 1024
#: A worker with nothing to send says ``beat`` this often ...
HEARTBEAT_S = 1.0
#: ... and the coordinator declares it lost after this long without a message (or at EOF).
LOST_AFTER_S = 5.0

Message = dict[str, Any]


class ProtocolError(Exception):
    """The peer sent something that is not this protocol; the message says what."""


def encode(msg: Message) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(line: bytes) -> Message:
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"not a JSON line: {line[:60]!r}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError(f"not a protocol message (no type): {line[:60]!r}")
    return msg


def parse_address(text: str, default_host: str | None, what: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``default_host`` given) or ``HOST[:PORT]`` (port defaults to 7000).

    Raises ValueError with a message naming ``what`` (the flag).
    """
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        if default_host is not None:
            host, port_text = default_host, raw
        else:
            host, port_text = raw, str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host:
        if default_host is None:
            raise ValueError(f"{what}: no host in {text!r}, expected HOST[:PORT]")
        host = default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{what}: bad port in {text!r}") from None
    if not 0 <= port <= 65535 or (port == 0 and default_host is None):
        raise ValueError(f"{what}: bad port in {text!r}")
    return host, port


class LineSocket:
    """Blocking JSON lines over a socket (the worker side): ``send`` from any thread, ``recv`` from one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._wlock = threading.Lock()

    def send(self, msg: Message) -> None:
        data = encode(msg)
        with self._wlock:
            self.sock.sendall(data)

    def recv(self, timeout: float | None) -> Message | None:
        """The next message, None at EOF; TimeoutError after ``timeout`` seconds without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return decode(line)
            if len(self._buf) > MAX_LINE:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no message in time")
                self.sock.settimeout(left)
            else:
                self.sock.settimeout(None)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self._buf += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
