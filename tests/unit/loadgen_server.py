"""A keep-alive HTTP/1.1 server on its own thread, for the load generator's unit tests.

Its own thread and loop because the code under test runs its own loop (``main()``, the runners)
and, with ``--workers``, other processes: the server must answer whoever connects.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter


class ThreadedServer:
    """Reads each request with its body and answers ``status_for.get(method, 200)``, body ``ok``.

    ``seen`` counts (method, path, body length) of every request read, ``answered`` counts
    (method, status); ``X-Backend-Id`` alternates ``a``/``b`` so backend counts are checkable.
    """

    def __init__(self, status_for: dict[str, int] | None = None) -> None:
        self.status_for = dict(status_for or {})
        self.seen: Counter[tuple[str, str, int]] = Counter()
        self.answered: Counter[tuple[str, int]] = Counter()
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def served(self) -> int:
        return sum(self.answered.values())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        # Stopped by __exit__: close the listener and the connections still open, then the loop.
        self.server.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(asyncio.sleep(0.01))  # let the transports finish closing
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                method, path, _ = head.split("\r\n", 1)[0].split(" ")
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.seen[(method, path, len(body))] += 1
                status = self.status_for.get(method, 200)
                self.answered[(method, status)] += 1
                backend = "ab"[self.served % 2]
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nX-Backend-Id: {backend}\r\n\r\nok".encode()
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        if not self.ready.wait(5):
            raise RuntimeError("test server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
