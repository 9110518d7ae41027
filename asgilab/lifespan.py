"""The ASGI lifespan protocol: the app's startup before the server accepts, its shutdown after.

The server calls the app once with a ``lifespan`` scope, in the same event loop that will run
the requests, and talks to it through the scope's ``receive``/``send`` like any other
connection: ``lifespan.startup`` -> ``lifespan.startup.complete`` (or ``.failed``), later
``lifespan.shutdown`` -> ``lifespan.shutdown.complete`` (or ``.failed``). That one app call
lives for the whole life of the server; FastAPI's ``lifespan=`` context manager and Starlette's
``on_startup`` run inside it.

The rules (ASGI lifespan spec 2.0) and what this server does with them:

- **Startup before accepting.** The server awaits :meth:`Lifespan.startup` before it listens,
  so no request meets an app that is half started.
- **State.** ``scope["state"]`` is one dict the app may fill during startup (a database pool, a
  client session); the request cycle gives every request a *shallow copy* of it, so a request
  can replace a key for itself without changing what the next request sees.
- **``lifespan.startup.failed``** -> :class:`LifespanFailed` carrying the app's message; the
  server prints it and exits 1, before any socket is opened.
- **The app raises** (or returns) instead of answering: many apps simply do not speak lifespan
  (``if scope["type"] != "http": raise ...``). Under ``auto`` that is one log line and serving
  goes on without lifespan events, as the spec asks (with the traceback when the app had taken
  ``lifespan.startup`` first: then it is startup code that broke, not a missing feature); under
  ``on`` the operator said the app needs its startup, so it is a failure; ``off`` never calls
  the app with a lifespan scope.
- **Shutdown is bounded.** Uvicorn waits for ``shutdown.complete`` forever; here the wait has a
  timeout, after which the lifespan task is cancelled and a warning names the bound, so a stuck
  cleanup cannot keep a container from stopping. ``lifespan.shutdown.failed`` is logged
  (:attr:`Lifespan.shutdown_failed` tells the server, which may use it for its exit status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from asgilab.asgi_types import ASGIApp, Message, Scope

LifespanMode = Literal["auto", "on", "off"]

#: The lifespan sub-specification this module implements (startup/shutdown ``.failed`` are 2.0).
LIFESPAN_SPEC_VERSION = "2.0"


class LifespanFailed(Exception):
    """The app's startup did not succeed; ``message`` is what the server prints before exiting 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Lifespan:
    """One app's lifespan in one event loop (each worker process runs its own, as the spec says).

    ``startup()`` starts the long-lived lifespan call and returns once the app answered
    ``lifespan.startup``; ``shutdown(timeout)`` sends ``lifespan.shutdown`` and waits at most
    ``timeout`` seconds for the answer. Both are no-ops under ``off``, and ``shutdown`` is one
    when the app turned out not to support lifespan.
    """

    def __init__(self, app: ASGIApp, mode: LifespanMode, logger: logging.Logger) -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"lifespan mode must be auto, on or off, not {mode!r}")
        self.app = app
        self.mode: LifespanMode = mode
        self.logger = logger
        #: The lifespan state: the app fills it during startup; each request scope gets a copy.
        self.state: dict[str, Any] = {}
        #: True when the app answered ``lifespan.shutdown.failed`` (or raised during shutdown).
        self.shutdown_failed = False
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # The phase the app is in, as seen from its send(): each answer is valid once, in order.
        self._phase: Literal["idle", "starting", "started", "stopping", "stopped"] = "idle"
        self._startup_answer: asyncio.Future[Message] | None = None
        self._shutdown_answer: asyncio.Future[Message] | None = None
        # Set when the app raised or returned without taking part: no more lifespan events.
        self._unsupported = False
        # Whether the app asked for its first event: an exception after that is its startup code
        # failing (worth a traceback even under auto), not a missing lifespan implementation.
        self._startup_taken = False

    # -- what the server calls

    async def startup(self) -> None:
        """Run the app's startup; return when it completed, raise :class:`LifespanFailed` if not."""
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._startup_answer = loop.create_future()
        self._shutdown_answer = loop.create_future()
        self._phase = "starting"
        self._inbox.put_nowait({"type": "lifespan.startup"})
        self.logger.info("Waiting for application startup.")
        self._task = loop.create_task(self._run(), name="asgilab-lifespan")
        answer = await self._startup_answer
        kind = answer["type"]
        if kind == "lifespan.startup.complete":
            self.logger.info("Application startup complete.")
            return
        if kind == "lifespan.startup.failed":
            message = str(answer.get("message") or "") or "the app sent lifespan.startup.failed"
            raise LifespanFailed(message)
        # The app raised or returned without answering (kind is our own "exception"/"returned").
        why = answer["why"]
        if self.mode == "on":
            raise LifespanFailed(f"application startup failed (--lifespan on): {why}")
        self._unsupported = True
        if kind == "exception" and self._startup_taken:
            # Its traceback is logged already; the spec says go on, the operator should know.
            self.logger.warning("Application startup raised (%s); serving without lifespan events.", why)
        else:
            self.logger.info("ASGI 'lifespan' protocol appears unsupported (%s); serving without it.", why)

    async def shutdown(self, timeout: float) -> None:
        """Ask the app to shut down and wait for its answer at most ``timeout`` seconds."""
        if self._task is None or self._unsupported or self._phase != "started":
            return
        assert self._shutdown_answer is not None
        if self._task.done():
            # The lifespan call already ended after startup (its exception was logged then).
            return
        self._phase = "stopping"
        self._inbox.put_nowait({"type": "lifespan.shutdown"})
        self.logger.info("Waiting for application shutdown.")
        try:
            answer = await asyncio.wait_for(asyncio.shield(self._shutdown_answer), timeout)
        except TimeoutError:
            self.logger.warning(
                "Application shutdown did not complete within %g s; cancelling the lifespan task.",
                timeout,
            )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            return
        kind = answer["type"]
        if kind == "lifespan.shutdown.complete":
            self.logger.info("Application shutdown complete.")
        elif kind == "lifespan.shutdown.failed":
            self.shutdown_failed = True
            self.logger.error(
                "Application shutdown failed: %s", answer.get("message") or "lifespan.shutdown.failed"
            )
        elif kind == "exception":
            self.shutdown_failed = True
            self.logger.error("Application shutdown failed: %s", answer["why"])
        # "returned": the app ended its lifespan call on shutdown without an answer; nothing to add.
        # Let the app's lifespan call finish its own return (it usually does right after answering).
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._task), 0.1)

    # -- the app's side

    async def _run(self) -> None:
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": LIFESPAN_SPEC_VERSION},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._app_ended(exc)
        else:
            self._app_ended(None)

    def _app_ended(self, exc: BaseException | None) -> None:
        """The lifespan call ended: resolve whichever answer is still awaited, log the rest."""
        pending = self._pending_answer()
        if exc is None:
            if pending is not None:
                pending.set_result({"type": "returned", "why": "the app returned without answering"})
            return
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        unsupported = self.mode == "auto" and not self._startup_taken
        if pending is not None and pending is self._startup_answer and unsupported:
            # The common case of an app without lifespan support: it raised on the scope itself,
            # before asking for an event. One line, no traceback.
            pending.set_result({"type": "exception", "why": why})
            return
        if pending is not None:
            self.logger.error("Exception in the ASGI lifespan protocol", exc_info=exc)
            pending.set_result({"type": "exception", "why": why})
            return
        if self._phase in ("starting", "started") and not self._unsupported:
            # After startup.complete, while serving, or after a startup.failed (Starlette re-raises).
            self.logger.error("The ASGI lifespan call raised after startup", exc_info=exc)

    def _pending_answer(self) -> asyncio.Future[Message] | None:
        if self._phase == "starting" and self._startup_answer and not self._startup_answer.done():
            return self._startup_answer
        if self._phase == "stopping" and self._shutdown_answer and not self._shutdown_answer.done():
            return self._shutdown_answer
        return None

    async def _receive(self) -> Message:
        self._startup_taken = True
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if self._phase != "starting" or self._startup_answer is None or self._startup_answer.done():
                raise RuntimeError(f"{kind} sent in lifespan phase {self._phase!r}")
            self._phase = "started" if kind == "lifespan.startup.complete" else "stopped"
            self._startup_answer.set_result(message)
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if self._phase == "started":
                # Unasked: the app's lifespan ended on its own (its task was cancelled, say, and
                # Starlette reports that as shutdown.failed). Nothing is left to shut down.
                self._phase = "stopped"
                if kind == "lifespan.shutdown.failed":
                    self.shutdown_failed = True
                    self.logger.error("Application lifespan ended: %s", message.get("message") or kind)
                return
            if self._phase != "stopping" or self._shutdown_answer is None or self._shutdown_answer.done():
                raise RuntimeError(f"{kind} sent in lifespan phase {self._phase!r}")
            self._phase = "stopped"
            self._shutdown_answer.set_result(message)
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message type {kind!r}")
