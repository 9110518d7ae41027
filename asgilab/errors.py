"""Exceptions the server raises into the app (shared by the HTTP cycle and the WebSocket session)."""

from __future__ import annotations


class ClientDisconnected(OSError):
    """``send()`` was called after the client left (or after the app closed the WebSocket).

    ASGI (HTTP and WebSocket spec 2.4) asks for a server-specific ``OSError`` subclass here, so
    an app can tell "the peer is gone" from its own bugs; the server swallows it when it comes
    back out of the app and never logs it as an application error.
    """
