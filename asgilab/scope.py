"""The connection scope an ASGI app gets: every key the spec requires, with honest types.

- ``path`` is the target's path percent-decoded as UTF-8, prefixed with ``root_path`` (as the
  spec asks since asgiref's 2022 clarification, and as Uvicorn does); ``raw_path`` is the same
  path as it arrived, in bytes; ``query_string`` is the bytes after ``?``, undecoded.
- ``headers`` keep the client's order and duplicates, names lower-cased, values untouched
  (the caller passes them lower-cased: ``engine.framing.request_framing`` does it in its pass),
  except that an absolute-form target's authority replaces ``host`` (RFC 9112 3.2.2).
- ``client``/``server`` are ``(host, port)`` with an ``int`` port (``None`` when unknown, e.g.
  a Unix socket's peer).
- ``state`` is a *shallow copy* of the lifespan state, so a request may add keys without the
  next request seeing them, while objects made at startup (a pool, a client) are shared.
- ``spec_version`` is what ``cycle.py`` implements: HTTP 2.4 (``send`` after a disconnect
  raises an ``OSError``), with the ``http.response.pathsend`` and ``http.response.trailers``
  extensions announced in ``extensions``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import httptools

SPEC_VERSION = "2.4"  # HTTP; the WebSocket session sets its own

Scope = dict[str, Any]
Address = tuple[str, int] | None


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """(raw path, query string) of a request target; absolute-form targets lose scheme and host."""
    if not target.startswith(b"/"):
        if target == b"*":
            return b"*", b""
        url = httptools.parse_url(target)
        return url.path or b"/", url.query or b""
    path, _, query = target.partition(b"?")
    return path, query


def _host_from_target(target: bytes, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 9112 3.2.2: with an absolute-form target the server MUST ignore the received Host and
    use the target's authority, so the app's ``host`` header is the target's."""
    authority = target.split(b"://", 1)[-1]
    for sep in (b"/", b"?"):
        authority = authority.split(sep, 1)[0]
    out = [(n, v) for n, v in headers if n != b"host"]
    out.insert(0, (b"host", authority))
    return out


def decode_path(raw: bytes) -> str:
    if b"%" not in raw:
        return raw.decode("utf-8", "surrogateescape")
    return unquote(raw.decode("latin-1"), errors="surrogateescape")


def common_scope(
    kind: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    http_version: str,
    scheme: str,
    client: Address,
    server: Address,
    root_path: str,
    state: dict[str, Any] | None,
) -> Scope:
    """The keys HTTP and WebSocket scopes share (``kind`` is ``http`` or ``websocket``)."""
    if target[:1] == b"/":  # origin-form, nearly every request: no function calls
        raw_path, _, query = target.partition(b"?")
    else:
        raw_path, query = split_target(target)
        if target != b"*":
            headers = _host_from_target(target, headers)
    path = raw_path.decode("utf-8", "surrogateescape") if b"%" not in raw_path else decode_path(raw_path)
    if root_path:
        path = root_path + path
        raw_path = root_path.encode("utf-8") + raw_path
    scope: Scope = {
        "type": kind,
        "asgi": {"version": "3.0", "spec_version": SPEC_VERSION},  # a dict per scope: apps may write
        "http_version": http_version,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": headers,
        "client": client,
        "server": server,
    }
    if state is not None:
        scope["state"] = state.copy()
    return scope


def http_scope(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    http_version: str,
    scheme: str,
    client: Address,
    server: Address,
    root_path: str,
    state: dict[str, Any] | None,
) -> Scope:
    scope = common_scope("http", target, headers, http_version, scheme, client, server, root_path, state)
    scope["method"] = method.decode("ascii")
    scope["extensions"] = {"http.response.pathsend": {}, "http.response.trailers": {}}
    return scope


def websocket_scope(
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    scheme: str,
    client: Address,
    server: Address,
    root_path: str,
    state: dict[str, Any] | None,
) -> Scope:
    """The common keys of a WebSocket scope; the session adds ``subprotocols``, ``asgi`` and extensions."""
    return common_scope("websocket", target, headers, "1.1", scheme, client, server, root_path, state)
