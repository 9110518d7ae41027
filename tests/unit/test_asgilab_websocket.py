"""asgilab.websocket at the frame level: a wsproto client talks to a WebSocketSession over a fake transport.

The session gets the upgrade request head and then raw frames, exactly as the engine forwards
them after the hand-over; what it writes is parsed by the client side of wsproto, so every
assertion is about bytes on the wire, as a browser or client library would see them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import struct
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import pytest
import uvloop
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.typing import Subprotocol
from wsproto import ConnectionType, WSConnection, events

from asgilab import websocket as ws_module
from asgilab.asgi_types import Receive, Scope, Send
from asgilab.config import Config as AsgilabConfig
from asgilab.errors import ClientDisconnected
from asgilab.site import AppSite
from asgilab.websocket import WebSocketSession
from tests.unit.asgi_checker import Checked, Client

LOG = "test.asgilab.websocket"
App = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class Config:
    ws_max_size: int | None = 1 << 20
    ws_ping_interval: float | None = None
    ws_ping_timeout: float | None = None
    ws_idle_timeout: float | None = None


class FakeTransport:
    """What the session sees of a socket: writes are kept, close/abort report connection_lost."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.written = bytearray()
        self.closing = False
        self.aborted = False
        self.reading = True
        self.session: WebSocketSession | None = None

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.session is not None
            self.loop.call_soon(self.session.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Peer:
    """The client end: a wsproto client connection plus the session under test."""

    def __init__(
        self,
        app: App,
        config: Config | None = None,
        subprotocols: tuple[str, ...] = (),
        request: bytes | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = FakeTransport(self.loop)
        self.client = WSConnection(ConnectionType.CLIENT)
        self.closed_calls = 0
        self.scope: Scope = {
            "type": "websocket",
            "http_version": "1.1",
            "scheme": "ws",
            "path": "/ws",
            "raw_path": b"/ws",
            "query_string": b"room=1",
            "root_path": "",
            "headers": [(b"host", b"x")],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        self.session = WebSocketSession(
            app,
            self.scope,
            self.transport,  # type: ignore[arg-type]
            loop=self.loop,
            config=config or Config(),
            logger=logging.getLogger(LOG),
            on_close=self._on_close,
        )
        self.transport.session = self.session
        if request is None:
            request = self.client.send(
                events.Request(host="x", target="/ws?room=1", subprotocols=list(subprotocols))
            )
        self.session.start(request)
        self._seen = 0
        self.pending: list[events.Event] = []  # parsed but not yet looked at by the test

    def _on_close(self) -> None:
        self.closed_calls += 1

    def send(self, event: events.Event) -> None:
        self.session.data_received(self.client.send(event))

    def raw(self, data: bytes) -> None:
        self.session.data_received(data)

    def received(self) -> list[events.Event]:
        """Events the client parsed from what the server wrote since the last call."""
        new = bytes(self.transport.written[self._seen :])
        self._seen = len(self.transport.written)
        if new:
            self.client.receive_data(new)
        got, self.pending = self.pending + list(self.client.events()), []
        return got

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Let the loop run until ``condition`` holds (a bound for a loaded machine, not a timing claim)."""
        deadline = self.loop.time() + timeout
        while not condition():
            assert self.loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.001)

    async def next_events(self, what: str) -> list[events.Event]:
        """Wait until the server wrote something the client can parse, and return it."""
        got: list[events.Event] = []

        def arrived() -> bool:
            got.extend(self.received())
            return bool(got)

        await self.until(arrived, what)
        return got

    async def settle(self) -> None:
        for _ in range(10):
            await asyncio.sleep(0)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    """A client->server frame built by hand (RFC 6455 5.2), for what wsproto's client never sends."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, echo every message, record the disconnect in the scope for the test to read."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            scope["test.disconnect"] = message
            return
        await send({"type": "websocket.send", "bytes": message.get("bytes"), "text": message.get("text")})


def accepted(peer: Peer) -> events.AcceptConnection:
    evs = peer.received()
    assert isinstance(evs[0], events.AcceptConnection), evs
    peer.pending = evs[1:]
    return evs[0]


# -- handshake


def test_accept_with_subprotocol_and_headers_and_the_scope_keys() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {"type": "websocket.accept", "subprotocol": "chat.v2", "headers": [(b"x-backend-id", b"b7")]}
        )
        await receive()

    async def main() -> None:
        peer = Peer(app, subprotocols=("chat.v1", "chat.v2"))
        await peer.settle()
        accept = accepted(peer)
        assert accept.subprotocol == "chat.v2"
        assert (b"x-backend-id", b"b7") in accept.extra_headers
        scope = peer.scope
        assert scope["subprotocols"] == ["chat.v1", "chat.v2"]
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
        assert scope["extensions"] == {"websocket.http.response": {}}
        peer.send(events.CloseConnection(code=1000))
        await peer.until(lambda: peer.closed_calls == 1, "on_close")

    run(main)


def test_subprotocol_the_client_did_not_offer_is_an_app_error() -> None:
    errors: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            await send({"type": "websocket.accept", "subprotocol": "graphql-ws"})
        except RuntimeError as exc:
            errors.append(str(exc))
            raise

    async def main() -> None:
        peer = Peer(app, subprotocols=("chat",))
        await peer.until(lambda: peer.transport.closing, "the 500")
        (reject, *_) = peer.received()
        assert isinstance(reject, events.RejectConnection) and reject.status_code == 500

    run(main)
    assert errors and "not offered" in errors[0]


def test_close_before_accept_is_http_403() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 4003})
        seen.append(dict(await receive()))

    async def main() -> None:
        peer = Peer(app)
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        reject = peer.received()[0]
        assert isinstance(reject, events.RejectConnection)
        assert reject.status_code == 403
        assert (b"connection", b"close") in reject.headers

    run(main)
    assert seen == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


def test_denial_response_extension() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        assert "websocket.http.response" in scope["extensions"]
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"www-authenticate", b"Bearer"), (b"content-length", b"13")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"token ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"expired"})

    async def main() -> None:
        peer = Peer(app)
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        evs = peer.received()
        assert isinstance(evs[0], events.RejectConnection) and evs[0].status_code == 401
        assert (b"www-authenticate", b"Bearer") in evs[0].headers
        body = b"".join(e.data for e in evs if isinstance(e, events.RejectData))
        assert body == b"token expired"
        assert isinstance(evs[-1], events.RejectData) and evs[-1].body_finished

    run(main)


def test_exception_before_accept_is_500_and_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise KeyError("session")

    async def main() -> None:
        peer = Peer(app)
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        reject = peer.received()[0]
        assert isinstance(reject, events.RejectConnection) and reject.status_code == 500

    run(main)
    (record,) = [r for r in caplog.records if r.name == LOG and r.levelno == logging.ERROR]
    assert record.exc_info and isinstance(record.exc_info[1], KeyError)


def test_a_500_that_cannot_be_written_drops_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise ValueError("app bug")

    async def main() -> None:
        peer = Peer(app)

        def broken(event: events.Event) -> bytes:
            raise RuntimeError("h11 is in an error state")

        peer.session.conn.send = broken  # type: ignore[method-assign]
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        assert peer.transport.aborted

    run(main)
    assert any("dropping it" in r.getMessage() for r in caplog.records if r.name == LOG)


def test_app_returning_without_an_answer_is_500(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async def main() -> None:
        peer = Peer(app)
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        reject = peer.received()[0]
        assert isinstance(reject, events.RejectConnection) and reject.status_code == 500

    run(main)
    assert any("without accepting" in r.getMessage() for r in caplog.records if r.name == LOG)


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"Sec-WebSocket-Version: 13\r\n", b"400"),  # no Sec-WebSocket-Key
        (b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"426"),
    ],
)
def test_bad_upgrade_request_is_refused_without_calling_the_app(extra: bytes, status: bytes) -> None:
    called: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(True)

    async def main() -> None:
        head = (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" + extra + b"\r\n"
        )
        peer = Peer(app, request=head)
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        assert peer.transport.written.startswith(b"HTTP/1.1 " + status)

    run(main)
    assert called == []


# -- messages


def test_text_and_binary_echo() -> None:
    async def main() -> None:
        peer = Peer(echo)
        await peer.settle()
        accepted(peer)
        peer.send(events.TextMessage(data="héllo"))
        peer.send(events.BytesMessage(data=b"\x00\xff\x01"))
        await peer.settle()
        got = peer.received()
        assert got == [events.TextMessage(data="héllo"), events.BytesMessage(data=b"\x00\xff\x01")]

    run(main)


def test_fragmented_messages_are_reassembled() -> None:
    received: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for _ in range(3):
            message = await receive()
            received.append(message.get("text", message.get("bytes")))

    async def main() -> None:
        peer = Peer(app)
        await peer.settle()
        accepted(peer)
        peer.send(events.TextMessage(data="frag", message_finished=False))
        peer.send(events.TextMessage(data="ment", message_finished=False))
        peer.send(events.TextMessage(data="ed", message_finished=True))
        peer.send(events.BytesMessage(data=b"\x01\x02", message_finished=False))
        peer.send(events.BytesMessage(data=b"\x03", message_finished=True))
        # A character whose UTF-8 bytes are split across two frames (text frame + continuation).
        euro = "€".encode()
        peer.raw(frame(0x1, b"price " + euro[:1], fin=False) + frame(0x0, euro[1:] + b"5", fin=True))
        await peer.until(lambda: len(received) == 3, "three messages")

    run(main)
    assert received == ["fragmented", b"\x01\x02\x03", "price €5"]


def test_frames_sent_before_the_accept_are_delivered_after_it() -> None:
    got: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(0.01)  # the app takes its time (auth...) while frames arrive
        await send({"type": "websocket.accept"})
        got.append((await receive())["text"])

    async def main() -> None:
        peer = Peer(app)
        # wsproto's client refuses to send before the 101, so craft the frame.
        peer.raw(frame(0x1, b"early bird"))
        await peer.until(lambda: got == ["early bird"], "the early message")

    run(main)


def test_reading_is_on_after_the_accept_even_if_the_engine_paused_it() -> None:
    async def main() -> None:
        peer = Peer(echo)
        peer.transport.reading = False  # the engine pauses reading while an upgrade is pending
        await peer.settle()
        accepted(peer)
        assert peer.transport.reading
        peer.send(events.TextMessage(data="flows"))
        await peer.settle()
        assert peer.received() == [events.TextMessage(data="flows")]

    run(main)


# -- ping / pong


def test_client_ping_is_answered_with_its_payload() -> None:
    async def main() -> None:
        peer = Peer(echo)
        await peer.settle()
        accepted(peer)
        peer.send(events.Ping(payload=b"are-you-there"))
        assert peer.received() == [events.Pong(payload=b"are-you-there")]

    run(main)


def test_server_pings_and_a_pong_keeps_the_connection() -> None:
    async def main() -> None:
        peer = Peer(echo, Config(ws_ping_interval=0.01, ws_ping_timeout=5))
        await peer.settle()
        accepted(peer)
        for _ in range(2):
            (ping,) = await peer.next_events("a ping")
            assert isinstance(ping, events.Ping) and len(ping.payload) == 4
            peer.send(ping.response())
        assert not peer.transport.closing

    run(main)


def test_no_pong_within_the_timeout_drops_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)

    async def main() -> None:
        peer = Peer(echo, Config(ws_ping_interval=0.01, ws_ping_timeout=0.02))
        await peer.settle()
        accepted(peer)
        await peer.until(lambda: peer.closed_calls == 1, "the drop")
        assert peer.transport.aborted
        assert any(isinstance(e, events.Ping) for e in peer.received())
        assert peer.scope["test.disconnect"] == {
            "type": "websocket.disconnect",
            "code": 1006,
            "reason": "keepalive ping timeout",
        }

    run(main)
    assert any("no pong within 0.02 s" in r.getMessage() for r in caplog.records if r.name == LOG)


def test_idle_timeout_closes_with_1001() -> None:
    async def main() -> None:
        peer = Peer(echo, Config(ws_idle_timeout=0.03))
        await peer.settle()
        accepted(peer)
        closes = await peer.next_events("the idle close")
        assert closes == [events.CloseConnection(code=1001, reason="idle timeout")]
        peer.send(events.CloseConnection(code=1001))  # the client answers; the server ends TCP
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        assert not peer.transport.aborted
        assert peer.scope["test.disconnect"]["code"] == 1001

    run(main)


# -- close codes


@pytest.mark.parametrize(
    ("code", "reason", "echoed_code", "app_code"),
    [(4001, "bye now", 4001, 4001), (1000, "", 1000, 1000), (None, None, 1005, 1005)],
)
def test_client_close_is_echoed_and_reaches_the_app(
    code: int | None, reason: str | None, echoed_code: int, app_code: int
) -> None:
    async def main() -> None:
        peer = Peer(echo)
        await peer.settle()
        accepted(peer)
        if code is None:
            peer.raw(frame(0x8, b""))  # a close frame with no status code at all
        else:
            peer.send(events.CloseConnection(code=code, reason=reason))
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        (echoed,) = peer.received()
        assert isinstance(echoed, events.CloseConnection) and echoed.code == echoed_code
        assert peer.scope["test.disconnect"] == {
            "type": "websocket.disconnect",
            "code": app_code,
            "reason": reason or "",
        }
        assert not peer.transport.aborted

    run(main)


@pytest.mark.parametrize(
    ("message", "expected"), [({}, (1000, "")), ({"code": 4404, "reason": "gone"}, (4404, "gone"))]
)
def test_app_close_sends_its_code_and_reason(message: dict[str, Any], expected: tuple[int, str]) -> None:
    disconnects: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", **message})
        disconnects.append(await receive())

    async def main() -> None:
        peer = Peer(app)
        await peer.settle()
        accepted(peer)
        (close,) = peer.received()
        assert isinstance(close, events.CloseConnection)
        assert (close.code, close.reason or "") == expected
        assert not peer.transport.closing  # waiting for the client's answer
        peer.send(close.response())
        await peer.until(lambda: peer.closed_calls == 1, "on_close")

    run(main)
    assert disconnects == [{"type": "websocket.disconnect", "code": expected[0], "reason": expected[1]}]


def test_client_that_never_answers_our_close_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_module, "CLOSE_TIMEOUT", 0.02)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})

    async def main() -> None:
        peer = Peer(app)
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        assert peer.transport.aborted

    run(main)


def test_connection_lost_without_close_frame_is_1006() -> None:
    async def main() -> None:
        peer = Peer(echo)
        await peer.settle()
        accepted(peer)
        peer.transport.closing = True
        peer.session.connection_lost(ConnectionResetError())
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        assert peer.scope["test.disconnect"] == {"type": "websocket.disconnect", "code": 1006, "reason": ""}

    run(main)


def test_exception_after_accept_closes_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise ZeroDivisionError

    async def main() -> None:
        peer = Peer(app)
        await peer.settle()
        evs = peer.received()
        assert isinstance(evs[0], events.AcceptConnection)
        assert isinstance(evs[1], events.CloseConnection) and evs[1].code == 1011

    run(main)
    assert any(r.exc_info for r in caplog.records if r.name == LOG)


def test_app_returning_after_accept_closes_with_1000() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    async def main() -> None:
        peer = Peer(app)
        await peer.settle()
        evs = peer.received()
        assert evs[1] == events.CloseConnection(code=1000, reason="")

    run(main)


@pytest.mark.parametrize(("payload", "code"), [(b"\xff\xfe", 1007), (None, 1002)])
def test_protocol_errors_close_with_their_code(payload: bytes | None, code: int) -> None:
    async def main() -> None:
        peer = Peer(echo)
        await peer.settle()
        accepted(peer)
        # Invalid UTF-8 in a text frame, or an unmasked client frame (clients must mask).
        peer.raw(frame(0x1, payload) if payload else frame(0x2, b"x", mask=False))
        await peer.until(lambda: peer.transport.closing, "the close")
        (close,) = peer.received()
        assert isinstance(close, events.CloseConnection) and close.code == code
        await peer.until(lambda: "test.disconnect" in peer.scope, "the disconnect")
        assert peer.scope["test.disconnect"]["code"] == code

    run(main)


# -- limits and backpressure


@pytest.mark.parametrize("fragmented", [False, True])
def test_oversized_message_closes_with_1009(fragmented: bool) -> None:
    async def main() -> None:
        peer = Peer(echo, Config(ws_max_size=10))
        await peer.settle()
        accepted(peer)
        peer.send(events.BytesMessage(data=b"0123456789"))  # exactly the limit: fine
        await peer.settle()
        if fragmented:  # each fragment is small, the message is not
            for _ in range(3):
                peer.send(events.BytesMessage(data=b"abcd", message_finished=False))
        else:
            peer.send(events.TextMessage(data="x" * 11))
        await peer.settle()
        evs = peer.received()
        assert evs[0] == events.BytesMessage(data=b"0123456789")
        assert isinstance(evs[1], events.CloseConnection) and evs[1].code == 1009
        assert peer.scope["test.disconnect"]["code"] == 1009

    run(main)


def test_oversized_frame_is_refused_while_it_is_still_arriving() -> None:
    """One 200 kB frame against a 64 kB limit: the close goes out before the frame is complete."""

    async def main() -> None:
        peer = Peer(echo, Config(ws_max_size=65_536))
        await peer.settle()
        accepted(peer)
        data = frame(0x2, b"y" * 200_000)
        fed, got = 0, []
        while not got and fed < len(data):
            peer.raw(data[fed : fed + 4096])
            fed += 4096
            got = peer.received()
        assert fed < 100_000
        assert got == [events.CloseConnection(code=1009, reason="message larger than 65536 bytes")]
        peer.raw(data[fed:])  # the rest is read and dropped while waiting for the client's close
        peer.send(events.CloseConnection(code=1009))
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        assert peer.scope["test.disconnect"]["code"] == 1009

    run(main)


def test_send_waits_while_the_transport_is_paused() -> None:
    sent: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for i in range(3):
            await send({"type": "websocket.send", "text": f"m{i}"})
            sent.append(i)
        await receive()

    async def main() -> None:
        peer = Peer(app)
        peer.session.pause_writing()  # the socket buffer is over its high-water mark
        await peer.settle()
        assert sent == [] and peer.transport.written == b""
        peer.session.resume_writing()
        await peer.until(lambda: sent == [0, 1, 2], "the sends")
        evs = peer.received()
        assert [e.data for e in evs[1:]] == ["m0", "m1", "m2"]  # type: ignore[attr-defined]

    run(main)


def test_reading_pauses_while_the_app_is_not_receiving() -> None:
    gate = asyncio.Event()
    got: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await gate.wait()  # a slow app
        while len(got) < 100:
            got.append((await receive())["text"])

    async def main() -> None:
        peer = Peer(app)
        await peer.settle()
        accepted(peer)
        sent = 0
        while peer.transport.reading and sent < 100:
            peer.send(events.TextMessage(data=f"{sent}"))
            sent += 1
        # The queue is bounded: reading stopped long before the client ran out of messages.
        assert not peer.transport.reading
        assert sent == ws_module.QUEUE_MESSAGES
        gate.set()
        await peer.until(lambda: peer.transport.reading, "reading resumed")
        while sent < 100:  # the kernel would now deliver the rest
            peer.send(events.TextMessage(data=f"{sent}"))
            sent += 1
            await asyncio.sleep(0)
        await peer.until(lambda: len(got) == 100, "all messages")

    run(main)
    assert got == [str(i) for i in range(100)]


def test_send_after_close_raises_an_oserror_subclass(caplog: pytest.LogCaptureFixture) -> None:
    outcomes: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            outcomes.append(exc)
        await send({"type": "websocket.send", "text": "still too late"})  # escapes the app

    async def main() -> None:
        peer = Peer(app)
        await peer.settle()
        accepted(peer)
        peer.send(events.CloseConnection(code=1001))
        await peer.until(lambda: peer.closed_calls == 1, "on_close")

    run(main)
    assert len(outcomes) == 1 and isinstance(outcomes[0], ClientDisconnected)
    # The server swallows its own exception: no error in the log.
    assert not [r for r in caplog.records if r.name == LOG and r.levelno >= logging.ERROR]


def test_send_after_the_apps_own_close_raises_too() -> None:
    outcomes: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})
        try:
            await send({"type": "websocket.send", "bytes": b"x"})
        except ClientDisconnected as exc:
            outcomes.append(exc)

    async def main() -> None:
        peer = Peer(app)
        await peer.settle()

    run(main)
    assert len(outcomes) == 1


# -- server drain


def test_shutdown_closes_open_sessions_with_1012_and_refuses_handshakes_with_503() -> None:
    async def slow_accept(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(3600)

    async def main() -> None:
        peer = Peer(echo)
        await peer.settle()
        accepted(peer)
        peer.session.shutdown()
        (close,) = peer.received()
        assert isinstance(close, events.CloseConnection) and close.code == 1012
        peer.send(close.response())
        await peer.until(lambda: peer.closed_calls == 1, "on_close")
        assert peer.scope["test.disconnect"]["code"] == 1012

        pending = Peer(slow_accept)
        await pending.settle()
        pending.session.shutdown()
        reject = pending.received()[0]
        assert isinstance(reject, events.RejectConnection) and reject.status_code == 503
        assert pending.transport.closing
        assert pending.session.task is not None
        pending.session.task.cancel()

    run(main)


# -- over a real socket, with the `websockets` client library (independent of the engine)


class UpgradeOnly(asyncio.Protocol):
    """A stand-in for the engine's hand-over: read one request head, then forward to a session."""

    def __init__(self, app: App, config: Config, sessions: list[WebSocketSession]) -> None:
        self.app = app
        self.config = config
        self.sessions = sessions
        self.head = b""
        self.session: WebSocketSession | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.data_received(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, _, rest = self.head.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        target = lines[0].split(b" ")[1]
        path, _, query = target.partition(b"?")
        headers = [(k.strip().lower(), v.strip()) for k, v in (line.split(b":", 1) for line in lines[1:])]
        scope: Scope = {
            "type": "websocket",
            "path": path.decode(),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": self.transport.get_extra_info("peername")[:2],
            "server": self.transport.get_extra_info("sockname")[:2],
            "scheme": "ws",
            "http_version": "1.1",
            "state": {},
        }
        loop = asyncio.get_running_loop()
        self.session = WebSocketSession(
            self.app,
            scope,
            self.transport,
            loop=loop,
            config=self.config,
            logger=logging.getLogger(LOG),
            on_close=lambda: None,
        )
        self.sessions.append(self.session)
        self.session.start(head + b"\r\n\r\n")
        if rest:
            self.session.data_received(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause_writing()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.resume_writing()


LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def serve_and(
    app: App,
    client: Callable[[str, list[WebSocketSession]], Coroutine[Any, Any, None]],
    loop: str,
    **config: Any,
) -> None:
    async def main() -> None:
        sessions: list[WebSocketSession] = []
        server = await asyncio.get_running_loop().create_server(
            lambda: UpgradeOnly(app, Config(**config), sessions), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncio.wait_for(client(f"ws://127.0.0.1:{port}", sessions), 30)
        finally:
            server.close()
            for s in sessions:
                s.transport.abort()
                if s.task is not None:
                    s.task.cancel()

    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop]) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop", LOOP_FACTORIES)
def test_real_client_against_the_backend_app(loop: str) -> None:
    from backend.app import app as backend_app

    async def client(url: str, sessions: list[WebSocketSession]) -> None:
        async with connect(f"{url}/ws", compression=None) as ws:
            assert ws.response is not None and ws.response.headers["x-backend-id"]
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00" * 100_000)
            assert await ws.recv() == b"\x00" * 100_000
            await ws.ping()
        assert ws.close_code == 1000

    serve_and(backend_app, client, loop)


@pytest.mark.parametrize("loop", LOOP_FACTORIES)
def test_real_client_sees_codes_403_and_1009(loop: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if scope["path"] == "/deny":
            await send({"type": "websocket.close"})
            return
        await send({"type": "websocket.accept", "subprotocol": "v2" if scope["subprotocols"] else None})
        message = await receive()
        if message["type"] == "websocket.receive" and message.get("text") == "bye":
            await send({"type": "websocket.close", "code": 4000, "reason": "done"})
        else:
            await receive()

    async def client(url: str, sessions: list[WebSocketSession]) -> None:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/deny")
        assert info.value.response.status_code == 403
        async with connect(f"{url}/ok", subprotocols=[Subprotocol("v1"), Subprotocol("v2")]) as ws:
            assert ws.subprotocol == "v2"
            await ws.send("bye")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4000, "done")
        async with connect(f"{url}/big", max_size=None) as ws:
            await ws.send(b"x" * 70_000)
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
        assert ws.close_code == 1009

    serve_and(app, client, loop, ws_max_size=65_536)


@pytest.mark.parametrize("loop", LOOP_FACTORIES)
def test_slow_reader_does_not_grow_the_servers_buffer(loop: str) -> None:
    """The app sends 16 MiB to a client that reads nothing: send() blocks, the buffer stays small."""
    sent: list[int] = [0]
    chunk = b"z" * 65_536

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for _ in range(256):
            await send({"type": "websocket.send", "bytes": chunk})
            sent[0] += 1

    async def client(url: str, sessions: list[WebSocketSession]) -> None:
        async with connect(url, compression=None, max_size=None, max_queue=1) as ws:
            # Wait until the app's sends stop making progress (kernel buffers and the client's
            # one-message queue full), then look at what the server holds.
            last = -1
            while sent[0] != last:
                last = sent[0]
                await asyncio.sleep(0.2)
            assert sent[0] < 256
            (session,) = sessions
            assert session.transport.get_write_buffer_size() <= 2 * 65_536 + len(chunk)
            received = 0
            while received < 256:
                assert await ws.recv() == chunk
                received += 1

    serve_and(app, client, loop)


# -- through the engine and asgilab's site, in-process, every scope and event spec-checked


def engine_site(app: App, **cfg: Any) -> tuple[Any, Checked]:
    checked = Checked(app)
    config = dataclasses.replace(AsgilabConfig(app="tests:app", access_log=False), **cfg)
    site = AppSite(checked, config, asyncio.get_running_loop(), state={"pool": "shared"})
    site.server = ("127.0.0.1", 8000)
    return site, checked


class EngineClient:
    """A wsproto client speaking through the real engine (``HTTPConnection``) over a fake transport."""

    def __init__(self, site: Any) -> None:
        self.c = Client(site)
        self.ws = WSConnection(ConnectionType.CLIENT)

    def send(self, event: events.Event) -> None:
        self.c.send(self.ws.send(event))

    def received(self) -> list[events.Event]:
        data = self.c.take()
        if data:
            self.ws.receive_data(data)
        return list(self.ws.events())

    async def next_events(self, timeout: float = 5.0) -> list[events.Event]:
        got: list[events.Event] = []

        def arrived() -> bool:
            got.extend(self.received())
            return bool(got)

        assert await self.c.until(arrived, timeout), "nothing from the server"
        return got


def test_through_the_engine_the_scope_and_events_are_valid_asgi() -> None:
    async def main() -> None:
        site, checked = engine_site(echo)
        client = EngineClient(site)
        client.send(events.Request(host="x", target="/ws?room=1", subprotocols=["chat"]))
        (accept,) = await client.next_events()
        assert isinstance(accept, events.AcceptConnection)
        client.send(events.TextMessage(data="through the engine"))
        client.send(events.BytesMessage(data=b"\x00\x01"))
        got = await client.next_events()
        while len(got) < 2:
            got += await client.next_events()
        assert got == [events.TextMessage(data="through the engine"), events.BytesMessage(data=b"\x00\x01")]
        client.send(events.CloseConnection(code=1000, reason="bye"))
        assert await client.c.until(lambda: not site.connections), "the connection was not released"
        assert checked.problems == []
        (scope,) = checked.scopes
        assert scope["type"] == "websocket" and scope["scheme"] == "ws"
        assert (scope["path"], scope["query_string"]) == ("/ws", b"room=1")
        assert scope["subprotocols"] == ["chat"]
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
        assert "websocket.http.response" in scope["extensions"]
        assert scope["state"] == {"pool": "shared"}
        assert scope["test.disconnect"] == {"type": "websocket.disconnect", "code": 1000, "reason": "bye"}

    run(main)


def test_through_the_engine_a_drain_closes_with_1012() -> None:
    async def main() -> None:
        site, checked = engine_site(echo)
        client = EngineClient(site)
        client.send(events.Request(host="x", target="/ws"))
        await client.next_events()
        for conn in list(site.connections):
            conn.shutdown()
        (close,) = await client.next_events()
        assert isinstance(close, events.CloseConnection) and close.code == 1012
        client.send(close.response())
        assert await client.c.until(lambda: not site.connections)
        assert checked.problems == []

    run(main)


def test_through_the_engine_a_frame_in_the_upgrade_requests_segment_is_kept() -> None:
    async def main() -> None:
        site, _ = engine_site(echo)
        client = EngineClient(site)
        client.c.send(client.ws.send(events.Request(host="x", target="/ws")) + frame(0x1, b"eager"))
        got = await client.next_events()  # the 101, and the echo if the frame was kept
        if len(got) < 2:
            got += await client.next_events(timeout=1.0)
        assert events.TextMessage(data="eager") in got

    run(main)
