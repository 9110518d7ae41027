"""Flow control: a transport's reading paused for several reasons; its writing watched for stalls.

A transport's reading can be paused for several reasons at once (a pipelined request is
queued, the handler's peer cannot take more, the app is not receiving). Counting reasons as
bits means one reason being cleared never resumes reading while another still holds it.

The engine owns ``PIPELINED``; handlers pick their own bits from the others (the proxy's are
in ``proxy/flow.py``, the ASGI cycle's in ``asgilab/cycle.py``) and must not reuse ``PIPELINED``.

The write side needs no gate (the transport calls ``pause_writing``/``resume_writing``), but a
peer that stops reading must not hold a connection, and what is buffered for it, forever:
``SendWatch`` cuts it once its write buffer made no progress for a timeout (nginx's
``send_timeout``). Used by the engine's client connections and the proxy's tunnels.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

PIPELINED = 2  # a complete request is queued behind the active one (or an error/upgrade is pending)


class ReadGate:
    """Pause/resume a transport's reading by reason bits; transitions only touch the transport once."""

    __slots__ = ("reasons", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0

    def pause(self, reason: int) -> None:
        if not self.reasons:
            with contextlib.suppress(RuntimeError, AttributeError):  # transport already closing
                self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if not self.reasons & reason:
            return
        self.reasons &= ~reason
        if not self.reasons:
            with contextlib.suppress(RuntimeError, AttributeError):
                self.transport.resume_reading()


class SendWatch:
    """Calls ``on_stall`` when ``transport``'s write buffer made no progress for ``timeout`` seconds.

    ``watch()`` when bytes wait in the buffer (writing was paused, or the transport is closing
    with bytes unsent); ``resumed()`` on every ``resume_writing``. While it watches, one timer
    samples the buffer ``SAMPLES`` times per timeout: a sample that finds it smaller than the
    one before (or writing resumed in between) is progress. A reader that takes anything keeps
    the connection (as with nginx, the bound is on silence, not on the whole response); one that
    takes nothing for ``SAMPLES`` samples in a row is cut, between 1 and 1 + 1/``SAMPLES`` times
    ``timeout`` after its last read. Comparing neighbouring samples rather than the size when the
    watch began keeps bytes the producer added after the pause from hiding a reader's progress.
    """

    SAMPLES = 4

    __slots__ = ("last", "loop", "on_stall", "quiet", "resumes", "seen", "timeout", "timer", "transport")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.WriteTransport,
        timeout: float,
        on_stall: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.transport = transport
        self.timeout = timeout
        self.on_stall = on_stall
        self.timer: asyncio.TimerHandle | None = None
        self.last = 0  # buffer size at the previous sample
        self.quiet = 0  # samples in a row without progress
        self.resumes = 0
        self.seen = 0  # ``resumes`` at the previous sample

    def watch(self) -> None:
        if self.timer is None and self.timeout > 0:
            self.last = self._buffered()
            self.seen = self.resumes
            self.quiet = 0
            self._arm()

    def resumed(self) -> None:
        self.resumes += 1

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _arm(self) -> None:
        self.timer = self.loop.call_later(self.timeout / self.SAMPLES, self._check)

    def _buffered(self) -> int:
        try:
            return self.transport.get_write_buffer_size()
        except (AttributeError, RuntimeError):  # transport already gone
            return 0

    def _check(self) -> None:
        self.timer = None
        size = self._buffered()
        if size == 0:
            return  # all sent: nothing to watch until writing pauses again
        if size < self.last or self.resumes != self.seen:
            self.quiet = 0  # the peer read something since the last sample
        else:
            self.quiet += 1
            if self.quiet >= self.SAMPLES:
                self.on_stall()
                return
        self.last = size
        self.seen = self.resumes
        self._arm()
