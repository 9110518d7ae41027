"""What every fuzz target checks besides "no exception": the shared failure type and log watch."""

from __future__ import annotations

import asyncio
import logging
from typing import Any


class Finding(AssertionError):
    """An invariant the code under test broke for this input (libFuzzer saves it as a crash)."""


class LogWatch(logging.Handler):
    """Collects log records that carry a traceback: code under test that caught an unexpected
    exception and logged it (``log.exception``) hid a crash from the fuzzer; this surfaces it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.crashes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.crashes.append(f"{record.name}: {record.getMessage()}")

    def check(self) -> None:
        if self.crashes:
            found, self.crashes = self.crashes, []
            raise Finding("logged error: " + " | ".join(found))


def watch_loop(loop: asyncio.AbstractEventLoop, watch: LogWatch) -> None:
    """An exception escaping a callback (asyncio logs it and goes on) counts as a crash too."""

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        watch.crashes.append(f"loop: {context.get('message')} {exc!r}")

    loop.set_exception_handler(handler)


def install_log_watch() -> LogWatch:
    watch = LogWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if h is not watch:
            root.removeHandler(h)  # quiet: the fuzzer prints its own progress
    return watch
