"""Checks of what a client gets through the proxy, whichever ASGI server the backends run.

``test_routing`` makes them against the default lab, ``test_asgilab`` against backends under
asgilab (``BACKEND_SERVER=asgilab``): one body of assertions, two servers. Each raises
AssertionError naming what differed.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from .conftest import Lab


def even_split(lab: Lab, requests: int = 60) -> list[httpx.Response]:
    """``requests`` GET / spread over every running replica, each within 10 % of its share."""
    ids = {c.attrs["Config"]["Hostname"] for c in lab.containers("backend")}
    with httpx.Client(base_url=lab.base_url, timeout=10) as client:
        replies = [client.get("/") for _ in range(requests)]
    assert all(r.status_code == 200 for r in replies), [r.status_code for r in replies]
    seen = Counter(r.headers["x-backend-id"] for r in replies)
    assert set(seen) == ids, f"replies came from {seen}, replicas are {ids}"
    share = requests / len(ids)
    for backend, count in seen.items():
        # Round-robin over a stable set should keep each replica within 10 % of its share.
        assert 0.9 * share <= count <= 1.1 * share, f"{backend} served {count} of {requests}: {seen}"
    assert all(r.json()["backend"] == r.headers["x-backend-id"] for r in replies)
    return replies


def _digest(data: bytes) -> dict[str, object]:
    return {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def fixed_length_upload(base_url: str) -> None:
    body = os.urandom(1024 * 1024)
    r = httpx.post(f"{base_url}/echo", content=body, timeout=30)
    assert r.status_code == 200
    assert r.json()["body"] == _digest(body)


def chunked_upload(base_url: str) -> None:
    parts = [os.urandom(50_000) for _ in range(8)]
    r = httpx.post(f"{base_url}/echo", content=iter(parts), timeout=30)  # an iterator goes chunked
    assert r.json()["body"] == _digest(b"".join(parts))


def chunked_stream(base_url: str) -> None:
    with httpx.stream("GET", f"{base_url}/stream/200?size=5000", timeout=30) as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        received = sum(len(chunk) for chunk in r.iter_bytes())
    assert received == 200 * 5000


def large_download(base_url: str) -> None:
    size = 8 * 1024 * 1024
    r = httpx.get(f"{base_url}/bytes/{size}", timeout=30)
    assert r.headers["content-length"] == str(size)
    assert len(r.content) == size


def statuses_pass_through(base_url: str) -> None:
    """The app's own status (418) and FastAPI's validation error (422) reach the client as sent."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        assert client.get("/status/418").status_code == 418
        assert client.get("/delay/nope").status_code == 422
