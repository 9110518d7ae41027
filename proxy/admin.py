"""Admin listener: /metrics for Prometheus, /upstreams for humans, /healthz for Docker's healthcheck.

Deliberately built on asyncio streams rather than the hot-path protocols: it serves a request
every few seconds, and keeping it separate means nothing in the request path imports it. Routes
live in a small table (path -> method -> handler) so another route is one ``add_route`` call;
handlers get the parsed request (body included, read by Content-Length) and return a ``Reply``.
Rendering /metrics for a few dozen endpoints takes well under a millisecond, so it runs inline
on the event loop instead of in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST

from proxy.balancer import POLICIES, make_balancer
from proxy.context import ProxyState
from proxy.headers import status_line
from proxy.metrics import Metrics, endpoint_counters

log = logging.getLogger("proxy.admin")

MAX_BODY = 64 * 1024  # admin request bodies are tiny JSON documents
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""

    def json(self) -> object:
        """The body as JSON; raises ValueError (answered 400 by the server) when it is not."""
        return json.loads(self.body or b"null")


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str) -> Reply:
        return cls(status, text.encode())

    @classmethod
    def json(cls, doc: object, status: int = 200) -> Reply:
        return cls(status, json.dumps(doc, indent=1).encode() + b"\n", JSON)

    def encode(self, head_only: bool = False) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        head = (
            status_line(self.status)
            + f"Content-Type: {self.content_type}\r\n{extra}".encode()
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(self.body)
        )
        return head if head_only else head + self.body


Handler = Callable[[Request], Reply]


class BadAdminRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminServer:
    """One request per connection, then close: simplest thing that health checkers handle."""

    def __init__(self, state: ProxyState, worker: int = 0) -> None:
        """``worker``: this process's index under ``--workers`` (each worker has its own listener)."""
        self.state = state
        self.server: asyncio.AbstractServer | None = None
        self.metrics = Metrics(state, worker)
        # path -> METHOD -> handler; GET routes answer HEAD too.
        self.routes: dict[str, dict[str, Handler]] = {}
        self.add_route("/healthz", ("GET",), self.healthz)
        self.add_route("/metrics", ("GET",), self.metrics_text)
        self.add_route("/upstreams", ("GET",), self.upstreams)
        self.add_route("/policy", ("GET", "PUT", "POST"), self.policy)

    def add_route(self, path: str, methods: tuple[str, ...], handler: Handler) -> None:
        table = self.routes.setdefault(path, {})
        for method in methods:
            table[method] = handler
            if method == "GET":
                table["HEAD"] = handler

    # -- handlers ----------------------------------------------------------------------------------
    def healthz(self, req: Request) -> Reply:
        if self.state.draining:
            return Reply.text(503, "draining\n")
        return Reply.text(200, "ok\n")

    def metrics_text(self, req: Request) -> Reply:
        return Reply(200, self.metrics.render(), CONTENT_TYPE_LATEST)

    def upstreams(self, req: Request) -> Reply:
        """Every endpoint's full state: the pool's snapshot plus health, counters and latency."""
        state = self.state
        eps = {ep.label: ep for ep in [*state.group.live, *state.group.endpoints.values()]}
        rows = []
        for row in state.group.snapshot():
            ep = eps.get(str(row.get("address")))
            extra = endpoint_counters(ep) if ep is not None else {}
            rows.append({**row, **{k: v for k, v in extra.items() if k not in row}})
        doc = {
            "upstream": state.config.upstream,
            "policy": state.balancer.name,
            "draining": state.draining,
            "endpoints": rows,
        }
        return Reply.json(doc)

    def policy(self, req: Request) -> Reply:
        """GET: the policy in use; PUT/POST: switch it at runtime (balancer.py).

        The name comes from ``?name=`` or the body (plain ``p2c`` or JSON ``{"policy": "p2c"}``):
        ``curl -X PUT --data p2c :8080/policy``. A new policy object replaces ``state.balancer``,
        which every request reads when it picks, so requests already in flight finish where they
        are and the next pick uses the new policy; load and latency state lives on the endpoints,
        so load-aware policies start warm.
        """
        state = self.state
        if req.method in ("GET", "HEAD"):
            return Reply.json({"policy": state.balancer.name, "policies": list(POLICIES)})
        name = ""
        for pair in req.query.split("&"):
            key, _, value = pair.partition("=")
            if key == "name":
                name = value
        if not name:
            text = req.body.decode("utf-8", "replace").strip()
            if text.startswith(("{", '"')):
                doc = json.loads(text)
                doc = doc.get("policy", doc.get("name", "")) if isinstance(doc, dict) else doc
                text = doc if isinstance(doc, str) else ""
            name = text.strip()
        if name not in POLICIES:
            choices = ", ".join(POLICIES)
            return Reply.text(400, f"unknown policy {name!r}: expected one of {choices}\n")
        previous = state.balancer.name
        if previous != name:
            state.balancer = make_balancer(name, state.config)
            state.counters.inc("policy_switches", name)  # runtime policy switches, by the new policy
            log.info("load-balancing policy switched: %s -> %s (admin API)", previous, name)
        return Reply.json({"policy": name, "previous": previous})

    # -- dispatch ----------------------------------------------------------------------------------
    def dispatch(self, req: Request) -> Reply:
        table = self.routes.get(req.path)
        if table is None:
            listing = "".join(
                f"  {' '.join(sorted(set(m) - {'HEAD'}))} {p}\n" for p, m in sorted(self.routes.items())
            )
            return Reply.text(404, f"not found: {req.path}\nroutes:\n{listing}")
        handler = table.get(req.method)
        if handler is None:
            allow = ", ".join(sorted(table))
            return Reply(
                405, f"method {req.method} not allowed on {req.path}\n".encode(), headers={"Allow": allow}
            )
        try:
            return handler(req)
        except ValueError as exc:  # bad JSON or a bad value in the body
            return Reply.text(400, f"bad request: {exc}\n")

    async def _read(self, reader: asyncio.StreamReader) -> Request:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise BadAdminRequest(400, "bad request line")
        headers = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise BadAdminRequest(400, "bad header line")
                headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise BadAdminRequest(411, "send a Content-Length body, not chunked")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadAdminRequest(400, "bad Content-Length") from None
        if length < 0:
            raise BadAdminRequest(400, "bad Content-Length")
        if length > MAX_BODY:
            raise BadAdminRequest(413, f"body over {MAX_BODY} bytes")
        body = await asyncio.wait_for(reader.readexactly(length), 5.0) if length else b""
        path, _, query = parts[1].partition("?")
        return Request(parts[0].upper(), path, query, headers, body)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                req = await self._read(reader)
            except BadAdminRequest as exc:
                writer.write(Reply.text(exc.status, f"{exc}\n").encode())
            else:
                writer.write(self.dispatch(req).encode(head_only=req.method == "HEAD"))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:  # a bug in a handler must not kill the admin listener
            log.exception("admin request failed")
            with contextlib.suppress(Exception):
                writer.write(Reply.text(500, "internal error\n").encode())
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
