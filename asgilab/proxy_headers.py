"""``--proxy-headers``: believe X-Forwarded-For/-Proto, but only from trusted peers.

Behind the lab's proxy every request comes from the proxy's address; the real client is in
``X-Forwarded-For`` (the rightmost entry no trusted proxy wrote, engine/trust.py). A header from
any other peer is ignored, or a client could claim any address (Uvicorn's
``--forwarded-allow-ips``, nginx's ``set_real_ip_from``).
"""

from __future__ import annotations

from engine.trust import TrustedProxies as TrustedProxies  # re-exported: asgilab.site builds one


def forwarded(
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    scheme: str,
    trusted: TrustedProxies | None = None,
) -> tuple[tuple[str, int] | None, str]:
    """The (client, scheme) the forwarding headers name; the inputs when they name nothing.

    Called only for a peer ``trusted`` trusts. ``headers`` have lower-cased names (the scope's).
    The client is the rightmost X-Forwarded-For entry that is not itself a trusted proxy
    (engine/trust.py; without ``trusted``: the last entry, the hop the peer saw).

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
        chain = xff.decode("latin-1").split(",")
        named = trusted.client(chain) if trusted is not None else chain[-1].strip()
        if named:
            client = (named, 0)
    return client, scheme
