"""``--proxy-headers``: believe X-Forwarded-For/-Proto, but only from trusted peers.

Behind the lab's proxy every request comes from the proxy's address; the real client is in
``X-Forwarded-For`` (the last hop appended is the one the proxy saw). A header from any other
peer is ignored, or a client could claim any address (Uvicorn's ``--forwarded-allow-ips``).
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The set of peers whose forwarding headers count (``*`` trusts every peer)."""

    __slots__ = ("all", "cache", "networks")

    def __init__(self, spec: str) -> None:
        items = [w.strip() for w in spec.split(",") if w.strip()]
        self.all = "*" in items
        self.networks: list[Network] = [ipaddress.ip_network(w, strict=False) for w in items if w != "*"]
        self.cache: dict[str, bool] = {}

    def trusts(self, host: str) -> bool:
        if self.all:
            return True
        ok = self.cache.get(host)
        if ok is None:
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                ok = False
            else:
                ok = any(addr in net for net in self.networks)
            if len(self.cache) < 1024:
                self.cache[host] = ok
        return ok


def forwarded(
    headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None, scheme: str
) -> tuple[tuple[str, int] | None, str]:
    """The (client, scheme) the forwarding headers name; the inputs when they name nothing.

    ``headers`` have lower-cased names (the scope's).

    ``scheme`` is the connection's own (http/https, or ws/wss for a WebSocket scope); a
    forwarded ``https``/``wss`` makes it the secure one of its kind.
    """
    xff: bytes | None = None
    proto: bytes | None = None
    for name, value in headers:
        if name == b"x-forwarded-for":
            xff = value if xff is None else xff + b"," + value
        elif name == b"x-forwarded-proto":
            proto = value
    if proto is not None:
        p = proto.decode("latin-1").strip().lower()
        if p in ("http", "https", "ws", "wss"):
            secure = p in ("https", "wss")
            kinds = ("ws", "wss") if scheme in ("ws", "wss") else ("http", "https")
            scheme = kinds[secure]
    if xff is not None:
        last = xff.rsplit(b",", 1)[-1].strip().decode("latin-1")
        if last:
            client = (last, 0)
    return client, scheme
