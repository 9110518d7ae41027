"""asgilab.lifespan: startup before serving, state, startup.failed, auto/on/off, bounded shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI

from asgilab.asgi_types import Receive, Scope, Send
from asgilab.lifespan import Lifespan, LifespanFailed
from tests.unit.asgi_checker import Checked

LOG = "test.asgilab.lifespan"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Recorder:
    """A lifespan-speaking app that records what it saw and answers as told."""

    def __init__(self, startup: str = "complete", shutdown: str = "complete", message: str = "") -> None:
        self.startup = startup
        self.shutdown = shutdown
        self.message = message
        self.scopes: list[Scope] = []
        self.received: list[str] = []
        self.cancelled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        assert scope["type"] == "lifespan"
        event = await receive()
        self.received.append(event["type"])
        scope["state"]["pool"] = "connected"
        await send({"type": f"lifespan.startup.{self.startup}", "message": self.message})
        if self.startup == "failed":
            return
        event = await receive()
        self.received.append(event["type"])
        if self.shutdown == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        await send({"type": f"lifespan.shutdown.{self.shutdown}", "message": self.message})


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOG]


def test_startup_then_shutdown_with_state_and_scope(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)
    app = Recorder()

    async def main() -> None:
        lifespan = Lifespan(app, "auto", logging.getLogger(LOG))
        await lifespan.startup()
        # The state the app filled during startup is what the request cycle copies per request.
        assert lifespan.state == {"pool": "connected"}
        assert app.received == ["lifespan.startup"]
        await lifespan.shutdown(timeout=5)
        assert app.received == ["lifespan.startup", "lifespan.shutdown"]
        assert not lifespan.shutdown_failed

    run(main())
    (scope,) = app.scopes
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.0"}
    assert set(scope) == {"type", "asgi", "state"}
    assert ("INFO", "Application startup complete.") in messages(caplog)
    assert ("INFO", "Application shutdown complete.") in messages(caplog)


def test_the_lifespan_scope_and_events_are_valid_asgi() -> None:
    checked = Checked(Recorder())

    async def main() -> None:
        lifespan = Lifespan(checked, "on", logging.getLogger(LOG))
        await lifespan.startup()
        await lifespan.shutdown(timeout=5)

    run(main())
    assert checked.problems == []
    assert [e["type"] for e in checked.events] == ["lifespan.startup", "lifespan.shutdown"]


def test_startup_failed_raises_with_the_apps_message() -> None:
    app = Recorder(startup="failed", message="cannot reach the database at db:5432")

    async def main() -> None:
        lifespan = Lifespan(app, "auto", logging.getLogger(LOG))
        with pytest.raises(LifespanFailed) as info:
            await lifespan.startup()
        assert info.value.message == "cannot reach the database at db:5432"
        await lifespan.shutdown(timeout=1)  # nothing to shut down: no event is sent
        assert app.received == ["lifespan.startup"]

    run(main())


def test_startup_failed_without_a_message_still_says_why() -> None:
    async def main() -> None:
        with pytest.raises(LifespanFailed, match=r"lifespan\.startup\.failed"):
            await Lifespan(Recorder(startup="failed"), "on", logging.getLogger(LOG)).startup()

    run(main())


async def no_lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that only speaks HTTP, as many do: it raises on any other scope."""
    assert scope["type"] == "http", "only http is supported"


def test_auto_app_that_raises_is_one_line_and_serving_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)

    async def main() -> None:
        lifespan = Lifespan(no_lifespan_app, "auto", logging.getLogger(LOG))
        await lifespan.startup()  # does not raise
        await lifespan.shutdown(timeout=1)  # and sends no event

    run(main())
    lines = messages(caplog)
    assert len([m for m in lines if "unsupported" in m[1]]) == 1
    assert "only http is supported" in next(m for _, m in lines if "unsupported" in m)
    assert not [r for r in caplog.records if r.name == LOG and r.exc_info]
    assert not [m for m in lines if "shutdown" in m[1].lower()]


def test_on_app_that_raises_is_a_startup_failure(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with pytest.raises(LifespanFailed, match="only http is supported"):
            await Lifespan(no_lifespan_app, "on", logging.getLogger(LOG)).startup()

    run(main())


def test_auto_startup_code_that_raises_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The app took lifespan.startup and then raised: a real bug, worth a traceback; auto goes on."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise ConnectionRefusedError("redis down")

    async def main() -> None:
        await Lifespan(app, "auto", logging.getLogger(LOG)).startup()

    caplog.set_level(logging.INFO, LOG)
    run(main())
    errors = [r for r in caplog.records if r.name == LOG and r.levelno == logging.ERROR]
    assert errors and errors[0].exc_info and isinstance(errors[0].exc_info[1], ConnectionRefusedError)
    assert (
        "WARNING",
        "Application startup raised (ConnectionRefusedError: redis down); serving without lifespan events.",
    ) in messages(caplog)


def test_app_returning_without_answering(caplog: pytest.LogCaptureFixture) -> None:
    async def quiet(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    async def main() -> None:
        await Lifespan(quiet, "auto", logging.getLogger(LOG)).startup()
        with pytest.raises(LifespanFailed, match="returned without answering"):
            await Lifespan(quiet, "on", logging.getLogger(LOG)).startup()

    run(main())


def test_off_never_calls_the_app() -> None:
    app = Recorder()

    async def main() -> None:
        lifespan = Lifespan(app, "off", logging.getLogger(LOG))
        await lifespan.startup()
        await lifespan.shutdown(timeout=1)
        assert lifespan.state == {}

    run(main())
    assert app.scopes == []


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, on or off"):
        Lifespan(no_lifespan_app, "maybe", logging.getLogger(LOG))  # type: ignore[arg-type]


def test_shutdown_is_bounded_and_the_stuck_task_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)
    app = Recorder(shutdown="hang")

    async def main() -> None:
        lifespan = Lifespan(app, "on", logging.getLogger(LOG))
        await lifespan.startup()
        await lifespan.shutdown(timeout=0.05)

    run(main())
    assert app.cancelled
    warnings = [m for level, m in messages(caplog) if level == "WARNING"]
    assert warnings == ["Application shutdown did not complete within 0.05 s; cancelling the lifespan task."]


def test_shutdown_failed_is_logged_and_flagged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)
    app = Recorder(shutdown="failed", message="could not flush the queue")

    async def main() -> bool:
        lifespan = Lifespan(app, "auto", logging.getLogger(LOG))
        await lifespan.startup()
        await lifespan.shutdown(timeout=5)
        return lifespan.shutdown_failed

    assert run(main())
    assert ("ERROR", "Application shutdown failed: could not flush the queue") in messages(caplog)


def test_exception_during_shutdown_is_a_failed_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("pool already closed")

    async def main() -> bool:
        lifespan = Lifespan(app, "auto", logging.getLogger(LOG))
        await lifespan.startup()
        await lifespan.shutdown(timeout=5)
        return lifespan.shutdown_failed

    assert run(main())
    assert any("pool already closed" in m for _, m in messages(caplog))


def test_messages_out_of_order_raise_in_the_app() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        for wrong in ({"type": "lifespan.shutdown.complete"}, {"type": "http.response.start"}):
            try:
                await send(wrong)
            except RuntimeError as exc:
                seen.append(str(exc))
        await send({"type": "lifespan.startup.complete"})
        try:
            await send({"type": "lifespan.startup.complete"})
        except RuntimeError as exc:
            seen.append(str(exc))
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    async def main() -> None:
        lifespan = Lifespan(app, "on", logging.getLogger(LOG))
        await lifespan.startup()
        await lifespan.shutdown(timeout=5)

    run(main())
    assert len(seen) == 3 and "unexpected" in seen[1]


def test_fastapi_lifespan_state_and_failure() -> None:
    """The real thing: FastAPI's lifespan context manager, its yielded state, its exception."""

    @contextlib.asynccontextmanager
    async def ok(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"client": "ready"}

    @contextlib.asynccontextmanager
    async def broken(app: FastAPI) -> AsyncIterator[None]:
        raise OSError("no config file /etc/app.toml")
        yield

    async def main() -> None:
        lifespan = Lifespan(FastAPI(lifespan=ok), "auto", logging.getLogger(LOG))
        await lifespan.startup()
        assert lifespan.state == {"client": "ready"}
        await lifespan.shutdown(timeout=5)
        # Starlette answers startup.failed with the traceback as its message, then re-raises.
        with pytest.raises(LifespanFailed, match=r"no config file /etc/app\.toml"):
            await Lifespan(FastAPI(lifespan=broken), "auto", logging.getLogger(LOG)).startup()

    run(main())


def test_lifespan_cancelled_before_shutdown_is_logged_not_an_app_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The loop ends without a drain (a crash path): Starlette reports shutdown.failed unasked."""

    @contextlib.asynccontextmanager
    async def ok(app: FastAPI) -> AsyncIterator[None]:
        yield

    async def main() -> bool:
        lifespan = Lifespan(FastAPI(lifespan=ok), "auto", logging.getLogger(LOG))
        await lifespan.startup()
        task = lifespan._task
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await lifespan.shutdown(timeout=5)  # nothing left to shut down: returns at once
        return lifespan.shutdown_failed

    assert run(main())
    assert any(m.startswith("Application lifespan ended") for _, m in messages(caplog))
    assert not any("sent in lifespan phase" in m for _, m in messages(caplog))
