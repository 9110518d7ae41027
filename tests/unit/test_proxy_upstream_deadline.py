"""The response-head deadline (--upstream-timeout) lives on the pooled upstream connection.

One timer per connection, re-armed only when it fires, replaces a TimerHandle per request
(benchmarks/hotpath.py: ~1.4 us of the ~13 us of Python a request cost). These check the cases a
lazily re-armed timer could get wrong: a deadline set by an earlier request on the same
connection must neither cut a later one short nor let it hang forever, and an answered request
must not be timed out afterwards.
"""

from __future__ import annotations

import asyncio
import time

from tests.unit.harness import FakeUpstream, addr, connect, get, proxy, read_response, run


def test_a_request_on_a_reused_connection_gets_its_own_full_deadline() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(endpoints=[addr(up)], upstream_timeout=0.4) as srv:
            r, w = await connect(srv.port)
            w.write(get("/"))  # arms the connection's timer at t + 0.4
            assert (await read_response(r)).status == 200
            await asyncio.sleep(0.25)
            t0 = time.monotonic()
            w.write(get("/hang"))  # same client and pooled upstream connection: deadline t0 + 0.4
            resp = await asyncio.wait_for(read_response(r), 3)  # a lost deadline would hang here
            waited = time.monotonic() - t0
            w.close()
            assert resp.status == 504
            # Not at the first request's deadline (0.15 s in), not much later than its own.
            assert 0.35 <= waited < 1.5, waited
            assert up.connections == 1  # both requests went over the one pooled connection

    run(main)


def test_answered_requests_are_never_timed_out_later() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(endpoints=[addr(up)], upstream_timeout=0.2) as srv:
            r, w = await connect(srv.port)
            for _ in range(3):
                w.write(get("/"))
                assert (await read_response(r)).status == 200
                await asyncio.sleep(0.15)  # the timer fires while the connection idles in the pool
            w.write(get("/slow?0.1"))  # answered within the deadline
            assert (await read_response(r)).status == 200
            w.close()

    run(main)
