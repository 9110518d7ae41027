"""A steady trickle of GETs from a background thread, recording what each client saw."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    at: float  # time.monotonic() when the response (or error) arrived
    status: int | None  # None: a transport error
    backend: str | None
    error: str | None = None


@dataclass
class Trickle:
    """GETs `url` back to back (with `pause` between) until stopped; a client's-eye record."""

    url: str
    pause: float = 0.01
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Trickle:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.url)
                    self.outcomes.append(
                        Outcome(time.monotonic(), r.status_code, r.headers.get("x-backend-id"))
                    )
                except httpx.HTTPError as exc:
                    self.outcomes.append(Outcome(time.monotonic(), None, None, repr(exc)))
                time.sleep(self.pause)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status is None or o.status >= 500]

    def backends_since(self, since: float) -> set[str]:
        return {o.backend for o in self.outcomes if o.at >= since and o.backend}


class BackgroundGet:
    """One GET sent from a thread at once (a request in flight while the test acts on containers)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.reply: httpx.Response | Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(url, timeout), daemon=True)
        self._thread.start()

    def _run(self, url: str, timeout: float) -> None:
        try:
            self.reply = httpx.get(url, timeout=timeout)
        except httpx.HTTPError as exc:
            self.reply = exc

    def result(self, timeout: float) -> httpx.Response | Exception | None:
        """The response or the transport error; None if it has not ended within ``timeout``."""
        self._thread.join(timeout)
        return self.reply
