"""The minimal HTTP/1.1 client against tiny in-process asyncio servers (no Docker, no network)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from time import perf_counter

from loadgen.client import Connection, build_request
from loadgen.config import parse_target

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "FakeServer"], Awaitable[None]]


class FakeServer:
    """Counts connections and requests; ``handler`` decides how to answer on each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/path?q=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        self.requests += 1
        self.heads.append(head)
        return head


def keepalive(response: bytes | Callable[[FakeServer], bytes], chunks: int = 1) -> Handler:
    """Answer every request on the connection with ``response``, optionally in several writes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: FakeServer) -> None:
        while await srv.read_request(reader) is not None:
            data = response(srv) if callable(response) else response
            step = max(1, len(data) // chunks)
            for i in range(0, len(data), step):
                writer.write(data[i : i + step])
                await writer.drain()
                if chunks > 1:
                    await asyncio.sleep(0.001)

    return handler


def make_conn(url: str, timeout: float = 2.0, method: str = "GET") -> Connection:
    target = parse_target(url)
    return Connection(target, build_request(method, target), timeout, head=method == "HEAD")


async def one(conn: Connection) -> tuple:
    fut = asyncio.get_running_loop().create_future()
    conn.send(lambda *outcome: fut.set_result(outcome))
    return await asyncio.wait_for(fut, 5)


def run(coro: Awaitable) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


CL_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Backend-Id: a\r\n\r\nhello"


def test_build_request_is_valid_http11() -> None:
    target = parse_target("http://example.test:8080/x?y=1")
    raw = build_request("GET", target, [("X-Test", "1"), ("user-agent", "me")])
    assert raw.startswith(b"GET /x?y=1 HTTP/1.1\r\nHost: example.test:8080\r\n")
    assert raw.endswith(b"\r\n\r\n")
    assert b"X-Test: 1\r\n" in raw
    assert b"user-agent: me\r\n" in raw and b"asgi-lab-loadgen" not in raw  # user header wins
    assert b"Content-Length: 0" in build_request("POST", target)


def test_content_length_and_connection_reuse() -> None:
    async def main() -> None:
        async with FakeServer(keepalive(CL_RESPONSE)) as srv:
            conn = make_conn(srv.url)
            outcomes = [await one(conn) for _ in range(50)]
            conn.close()
        assert {(o[2], o[3], o[4]) for o in outcomes} == {(200, b"a", None)}
        assert all(o[1] >= o[0] for o in outcomes)
        assert srv.connections == 1 and conn.connects == 1
        assert srv.requests == 50
        assert srv.heads[0].startswith(b"GET /path?q=1 HTTP/1.1\r\n")

    run(main())


def test_chunked_response_split_across_writes() -> None:
    body = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nx-backend-id: b\r\n\r\n"
    body += b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"

    async def main() -> None:
        async with FakeServer(keepalive(body, chunks=7)) as srv:
            conn = make_conn(srv.url)
            outcomes = [await one(conn) for _ in range(5)]
            conn.close()
        assert {(o[2], o[3], o[4]) for o in outcomes} == {(201, b"b", None)}
        assert srv.connections == 1

    run(main())


def test_close_delimited_response_is_success_and_reconnects() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: FakeServer) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Backend-Id: c\r\n\r\nbody until eof")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b" ... more")
        # the FakeServer closes the connection after the handler

    async def main() -> None:
        async with FakeServer(handler) as srv:
            conn = make_conn(srv.url)
            outcomes = [await one(conn) for _ in range(3)]
            conn.close()
        assert [(o[2], o[3], o[4]) for o in outcomes] == [(200, b"c", None)] * 3
        assert srv.connections == 3

    run(main())


def test_connection_close_header_reconnects_without_errors() -> None:
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: FakeServer) -> None:
        await srv.read_request(reader)
        writer.write(resp)
        await writer.drain()

    async def main() -> None:
        async with FakeServer(handler) as srv:
            conn = make_conn(srv.url)
            outcomes = [await one(conn) for _ in range(4)]
            conn.close()
        assert [(o[2], o[4]) for o in outcomes] == [(200, None)] * 4
        assert srv.connections == 4

    run(main())


def test_head_and_204_have_no_body_and_keep_the_connection() -> None:
    async def main() -> None:
        async with FakeServer(keepalive(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")) as srv:
            conn = make_conn(srv.url, method="HEAD")
            outcomes = [await one(conn) for _ in range(3)]
            conn.close()
        assert [(o[2], o[3], o[4]) for o in outcomes] == [(200, None, None)] * 3
        assert srv.connections == 1
        assert srv.heads[0].startswith(b"HEAD ")

        async with FakeServer(keepalive(b"HTTP/1.1 204 No Content\r\n\r\n")) as srv:
            conn = make_conn(srv.url)
            outcomes = [await one(conn) for _ in range(3)]
            conn.close()
        assert [o[2] for o in outcomes] == [204] * 3
        assert srv.connections == 1

    run(main())


def test_interim_100_continue_is_skipped() -> None:
    resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Backend-Id: z\r\n\r\nx"

    async def main() -> None:
        async with FakeServer(keepalive(resp)) as srv:
            conn = make_conn(srv.url)
            outcomes = [await one(conn) for _ in range(2)]
            conn.close()
        assert [(o[2], o[3], o[4]) for o in outcomes] == [(200, b"z", None)] * 2

    run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_refused_is_connect_error() -> None:
    async def main() -> None:
        conn = make_conn(f"http://127.0.0.1:{_free_port()}/")
        outcome = await one(conn)
        assert outcome[2:] == (0, None, "connect")
        # and it keeps trying on the next send
        outcome = await one(conn)
        assert outcome[4] == "connect"
        conn.close()

    run(main())


def test_silent_server_is_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: FakeServer) -> None:
        await srv.read_request(reader)
        await asyncio.sleep(5)

    async def main() -> None:
        async with FakeServer(handler) as srv:
            conn = make_conn(srv.url, timeout=0.2)
            t0 = perf_counter()
            outcome = await one(conn)
            took = perf_counter() - t0
            conn.close()
        assert outcome[2:] == (0, None, "timeout")
        assert 0.18 <= took < 1.0
        assert 0.18 <= outcome[1] - outcome[0] < 1.0

    run(main())


def test_timeout_is_per_request_not_per_connection() -> None:
    # Many fast requests over longer than the timeout must not trip it (the timer re-arms).
    async def main() -> None:
        async with FakeServer(keepalive(CL_RESPONSE)) as srv:
            # 0.3 s, not less: a loaded machine can stall one local request for tens of ms.
            conn = make_conn(srv.url, timeout=0.3)
            t_end = perf_counter() + 0.8
            outcomes = []
            while perf_counter() < t_end:
                outcomes.append(await one(conn))
            conn.close()
        assert {o[4] for o in outcomes} == {None}
        assert srv.connections == 1

    run(main())


def test_close_mid_response_is_reset() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: FakeServer) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it")
        await writer.drain()

    async def close_before_answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: FakeServer
    ) -> None:
        await srv.read_request(reader)

    async def main() -> None:
        async with FakeServer(handler) as srv:
            conn = make_conn(srv.url)
            outcome = await one(conn)
            conn.close()
        assert outcome[2:] == (0, None, "reset")

        async with FakeServer(close_before_answer) as srv:
            conn = make_conn(srv.url)
            outcome = await one(conn)
            conn.close()
        assert outcome[2:] == (0, None, "reset")

    run(main())


def test_garbage_response_is_other_and_connection_recovers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: FakeServer) -> None:
        await srv.read_request(reader)
        if srv.connections == 1:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        else:
            writer.write(CL_RESPONSE)
        await writer.drain()
        await asyncio.sleep(0.5)

    async def main() -> None:
        async with FakeServer(handler) as srv:
            conn = make_conn(srv.url)
            first = await one(conn)
            second = await one(conn)
            conn.close()
        assert first[2:] == (0, None, "other")
        assert second[2:] == (200, b"a", None)

    run(main())
