"""Admin listener: /metrics for Prometheus, /upstreams for humans, /healthz for Docker's healthcheck,
/dashboard and its /events stream (events.py) for watching, drain/undrain and /policy for acting.

Deliberately built on asyncio streams rather than the hot-path protocols: it serves a request
every few seconds, and keeping it separate means nothing in the request path imports it. Routes
live in a small table (path -> method -> handler) so another route is one ``add_route`` call;
handlers get the parsed request (body included, read by Content-Length) and return a ``Reply``.
Rendering /metrics for a few dozen endpoints takes well under a millisecond, so it runs inline
on the event loop instead of in a thread. A handler may be a coroutine function (the ones that
ask sibling workers, siblings.py); a stream route (/events) gets the connection itself.

Write actions. Every request that changes state (any method but GET and HEAD: ``PUT``/``POST
/policy``, ``POST /upstreams/{addr}/drain`` and ``/undrain``, and whatever route is added later)
is authorized in one place, ``_route``, before its handler runs: with ``--admin-token``
(PROXY_ADMIN_TOKEN) set it needs ``Authorization: Bearer <token>`` (401 otherwise); without one
it is refused (403) to every client but loopback inside the proxy's own host or container, so
it is never open to the network. A request a browser sends from another origin (``Origin`` not
matching ``Host``) is refused either way, so a web page cannot act through a local browser.
Read-only routes stay open. Under ``--workers`` a policy switch or a drain is applied by the
worker that got it and forwarded, with the same Authorization, to every sibling (siblings.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from proxy.balancer import POLICIES, make_balancer
from proxy.events import LiveView, Sample, sample_from_json, worker_sample
from proxy.headers import status_line
from proxy.metrics import Metrics, endpoint_counters
from proxy.siblings import Siblings
from proxy.state import ProxyState

log = logging.getLogger("proxy.admin")

MAX_BODY = 64 * 1024  # admin request bodies are tiny JSON documents
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
STATIC = Path(__file__).resolve().parent / "static"
# uPlot, vendored once in git under loadgen/static/vendor (scripts/vendor-uplot) and copied into
# the proxy image at build time; in a checkout the proxy reads it where it is vendored.
VENDOR_DIRS = (STATIC / "vendor", Path(__file__).resolve().parent.parent / "loadgen" / "static" / "vendor")
STATIC_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
LOCAL_ONLY = "scope=worker"  # query of an action forwarded to a sibling: apply there, do not forward
READS = frozenset({"GET", "HEAD"})  # every other method changes state and is authorized first


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""
    peer: str = ""  # the client's IP address

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


Handler = Callable[[Request], Reply | Awaitable[Reply]]
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _forwarded_headers(req: Request) -> dict[str, str]:
    """What a sibling needs to authorize the same action: the Authorization header, if any."""
    return {k: v for k, v in req.headers.items() if k == "authorization"}


def is_loopback(peer: str) -> bool:
    try:
        ip = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class BadAdminRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminServer:
    """One request per connection, then close: simplest thing that health checkers handle."""

    def __init__(self, state: ProxyState, worker: int = 0) -> None:
        """``worker``: this process's index under ``--workers`` (each worker has its own listener)."""
        self.state = state
        self.worker = worker
        self.server: asyncio.Server | None = None
        self.metrics = Metrics(state, worker)
        # path -> METHOD -> handler; GET routes answer HEAD too.
        self.routes: dict[str, dict[str, Handler]] = {}
        self.add_route("/healthz", ("GET",), self.healthz)
        self.add_route("/metrics", ("GET",), self.metrics_text)
        self.add_route("/upstreams", ("GET",), self.upstreams)
        self.add_route("/policy", ("GET", "PUT", "POST"), self.policy)
        self.add_route("/dashboard", ("GET",), self.dashboard)
        self.add_route("/events/latest", ("GET",), self.events_latest)
        self.add_route("/events/sample", ("GET",), self.events_sample)
        self.add_route("/auth", ("GET",), self.auth)
        # /upstreams/{addr}/drain and /undrain: matched by dispatch (the address is in the path).
        self.actions: dict[str, bool] = {"drain": True, "undrain": False}
        cfg = state.config
        self.siblings = Siblings(cfg.admin_host, cfg.admin_port, cfg.workers, worker)
        # The live view runs in worker 0 only and speaks for every worker (events.py).
        self.live: LiveView | None = None
        if worker == 0:
            self.live = LiveView(
                lambda: worker_sample(state, worker),
                cfg.events_history,
                self._sibling_samples if self.siblings else None,
                watch=lambda: (id(state.group.live), state.balancer.name, frozenset(state.group.drains)),
            )
        self.streams: dict[str, StreamHandler] = {}
        if self.live is not None:
            self.streams["/events"] = self.live.serve

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

    async def _sibling_samples(self) -> list[Sample]:
        replies = await self.siblings.ask("GET", "/events/sample")
        out = []
        for r in replies:
            with contextlib.suppress(ValueError):
                sample = sample_from_json(r.json())
                if sample is not None:
                    out.append(sample)
        return out

    def dashboard(self, req: Request) -> Reply:
        if self.live is None:
            return Reply.text(404, "the dashboard is served by worker 0 (the first admin port)\n")
        return Reply(200, (STATIC / "dashboard.html").read_bytes(), "text/html; charset=utf-8")

    def static(self, name: str) -> Reply:
        kind = STATIC_FILES.get(name)
        if kind is None:
            return Reply.text(404, f"not found: /static/{name}\n")
        for folder in (STATIC, *VENDOR_DIRS):
            path = folder / name
            if path.is_file():
                return Reply(200, path.read_bytes(), kind, {"Cache-Control": "max-age=300"})
        return Reply.text(404, f"/static/{name} is missing from this build (see docs/live.md)\n")

    def events_latest(self, req: Request) -> Reply:
        """The latest whole-proxy snapshot (what /events sent last), for curl and tests."""
        if self.live is None:
            return Reply.text(404, "the live view is served by worker 0 (the first admin port)\n")
        return Reply.json(self.live.latest)

    def events_sample(self, req: Request) -> Reply:
        """This worker's cumulative figures; worker 0 sums its siblings' answers (events.py)."""
        return Reply.json(worker_sample(self.state, self.worker))

    def auth(self, req: Request) -> Reply:
        """What the write actions need from this client, so the page asks for a token only then."""
        return Reply.json(
            {"token_required": bool(self.state.config.admin_token), "loopback_client": is_loopback(req.peer)}
        )

    def authorize(self, req: Request) -> Reply | None:
        """None if ``req`` may use a write action, else the refusal (module docstring)."""
        origin = req.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != req.headers.get("host", ""):
            return Reply.text(403, f"refused: a request from another origin ({origin})\n")
        token = self.state.config.admin_token
        if token:
            scheme, _, given = req.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return Reply(
                    401,
                    b"this action needs the admin token: Authorization: Bearer <PROXY_ADMIN_TOKEN>\n",
                    headers={"WWW-Authenticate": 'Bearer realm="asgi-lab proxy admin"'},
                )
            return None
        if not is_loopback(req.peer):
            return Reply.text(
                403,
                "refused: without PROXY_ADMIN_TOKEN (--admin-token) only loopback clients may "
                f"change the proxy ({req.method} {req.path}); this request came from "
                f"{req.peer or 'an unknown address'}\n",
            )
        return None

    async def drain(self, req: Request, label: str, on: bool) -> Reply:
        """POST /upstreams/{addr}/drain|undrain: no new requests to ``addr`` (in-flight ones finish).

        Applied in this worker and forwarded to every sibling (with the same Authorization),
        so the whole proxy stops sending to the replica; the answer says which workers did.
        Authorized by ``_route`` (a write).
        """
        ep = self.state.group.set_drain(label, on)
        workers: dict[str, str] = {}
        if ep is not None:
            workers[str(self.worker)] = "drained" if on else "undrained"
        else:
            workers[str(self.worker)] = "unknown endpoint"
        if req.query != LOCAL_ONLY and self.siblings:
            headers = _forwarded_headers(req)
            path = f"/upstreams/{label}/{'drain' if on else 'undrain'}?{LOCAL_ONLY}"
            for r in await self.siblings.ask("POST", path, headers):
                doc = r.json() if r.status == 200 else None
                state = doc.get("workers", {}).get(str(r.worker)) if isinstance(doc, dict) else None
                workers[str(r.worker)] = state or (f"status {r.status}" if r.status else "no answer")
        if all(v == "unknown endpoint" for v in workers.values()):
            return Reply.text(404, f"unknown endpoint {label!r}: see GET /upstreams for the addresses\n")
        return Reply.json({"address": label, "drained": on, "workers": workers})

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

    async def policy_everywhere(self, req: Request) -> Reply:
        """``PUT /policy`` under ``--workers``: this worker, then every sibling, with the same
        Authorization; the answer says which workers switched (``?workers=all`` is accepted too)."""
        reply = self.policy(req)
        if reply.status != 200 or not self.siblings:
            return reply
        doc = json.loads(reply.body)
        path = f"/policy?name={doc['policy']}&{LOCAL_ONLY}"
        answers = await self.siblings.ask("PUT", path, _forwarded_headers(req))
        doc["workers"] = {
            str(self.worker): "ok",
            **{str(r.worker): "ok" if r.status == 200 else f"status {r.status or 'none'}" for r in answers},
        }
        return Reply.json(doc)

    # -- dispatch ----------------------------------------------------------------------------------
    def dispatch(self, req: Request) -> Reply:
        """Answer a request whose handler is synchronous (all but the ones that ask siblings)."""
        reply = self._route_safe(req)
        if inspect.isawaitable(reply):
            reply.close()  # type: ignore[attr-defined]
            raise TypeError(f"{req.method} {req.path} needs the event loop: use respond()")
        return reply

    async def respond(self, req: Request) -> Reply:
        """Answer any request (awaiting the handler if it is a coroutine)."""
        reply = self._route_safe(req)
        if inspect.isawaitable(reply):
            try:
                return await reply
            except ValueError as exc:
                return Reply.text(400, f"bad request: {exc}\n")
        return reply

    def _route_safe(self, req: Request) -> Reply | Awaitable[Reply]:
        try:
            return self._route(req)
        except ValueError as exc:  # bad JSON or a bad value in the body
            return Reply.text(400, f"bad request: {exc}\n")

    def _route(self, req: Request) -> Reply | Awaitable[Reply]:
        if req.path.startswith("/static/") and req.method in ("GET", "HEAD"):
            return self.static(req.path[len("/static/") :])
        head, _, action = req.path.rpartition("/")
        if head.startswith("/upstreams/") and action in self.actions:
            if req.method != "POST":
                return Reply(405, f"use POST for {req.path}\n".encode(), headers={"Allow": "POST"})
            if (refused := self.authorize(req)) is not None:
                return refused
            return self.drain(req, unquote(head[len("/upstreams/") :]), self.actions[action])
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
        if req.method not in READS:
            if (refused := self.authorize(req)) is not None:
                return refused
            if handler == self.policy and self.siblings and LOCAL_ONLY not in req.query.split("&"):
                return self.policy_everywhere(req)  # every worker, not only the one that got it
        return handler(req)

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
                peer = writer.get_extra_info("peername")
                req.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            except BadAdminRequest as exc:
                writer.write(Reply.text(exc.status, f"{exc}\n").encode())
            else:
                stream = self.streams.get(req.path)
                if stream is not None and req.method == "GET":
                    await stream(reader, writer)
                else:
                    reply = await self.respond(req)
                    writer.write(reply.encode(head_only=req.method == "HEAD"))
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
        if self.live is not None:
            self.live.start()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.live is not None:
            self.live.close()
