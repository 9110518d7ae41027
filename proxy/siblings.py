"""The other workers' admin listeners, over loopback: how one worker speaks for the whole proxy.

With ``--workers N`` every worker keeps its own endpoints, counters and policy, and worker *i*
serves admin on the admin port + *i* (server.py). The dashboard shows the whole proxy, and a
drain must reach every worker, so the worker that got the request asks its siblings through
their admin listeners: a one-shot HTTP/1.1 request per sibling, sent concurrently, with a short
timeout. Nothing is shared between processes but these requests, so a worker that hangs or died
only drops out of the answer (the caller sees which ones answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

TIMEOUT_S = 0.5  # a sibling on the same host answers in well under a millisecond when idle


@dataclass(frozen=True)
class SiblingReply:
    worker: int
    status: int  # 0: no answer (refused, timed out, broken reply)
    body: bytes

    def json(self) -> object:
        return json.loads(self.body) if self.status == 200 else None


def loopback_host(admin_host: str | None) -> str:
    """Where a sibling's admin listener is reachable from here: its bind address, or loopback."""
    if not admin_host or admin_host in ("0.0.0.0", "::", "*"):
        return "127.0.0.1"
    return admin_host.strip("[]")


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = TIMEOUT_S,
) -> tuple[int, bytes]:
    """One request to an admin listener (which answers and closes); (0, b"") when it fails."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            data = await reader.read()  # the admin listener closes after one reply
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        status_line, _, rest = data.partition(b"\r\n")
        _, _, payload = rest.partition(b"\r\n\r\n")
        parts = status_line.split()
        return (int(parts[1]), payload) if len(parts) >= 2 and parts[1].isdigit() else (0, b"")

    try:
        return await asyncio.wait_for(go(), timeout)
    except (OSError, TimeoutError, ValueError):
        return 0, b""


class Siblings:
    """The admin listeners of workers other than ``worker`` (none without ``--workers``)."""

    def __init__(self, admin_host: str | None, admin_port: int, workers: int, worker: int) -> None:
        self.host = loopback_host(admin_host)
        self.worker = worker
        # An ephemeral admin port (0) gives each worker a random one: siblings cannot be found.
        self.ports = {
            i: admin_port + i for i in range(workers) if i != worker and admin_port and admin_host is not None
        }

    def __bool__(self) -> bool:
        return bool(self.ports)

    async def ask(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> list[SiblingReply]:
        """Send the same request to every sibling at once; one reply each, in worker order."""
        workers = sorted(self.ports)
        answers = await asyncio.gather(
            *(request(self.host, self.ports[i], method, path, headers, body) for i in workers)
        )
        return [
            SiblingReply(i, status, payload) for i, (status, payload) in zip(workers, answers, strict=True)
        ]
