"""asgi-lab's load generator: closed and open loop HTTP/1.1 load on its own lean client.

Run it as ``python -m loadgen URL --concurrency C`` (closed loop) or ``--rate R`` (open loop,
latency corrected for coordinated omission), optionally ``--workers N`` and ``--scenario FILE``
(see ``config`` for every flag and its ``LOADGEN_*`` environment variable, ``docs/loadgen.md`` for
the measurement model and the report schema). It exists, rather than using wrk or an
off-the-shelf Python client, because the lab needs things those do not give together: a report
that splits responses by the ``X-Backend-Id`` header, a per-second timeline on which a scenario's
actions line up, exact totals that an integration test can compare with what the backends
counted, and code small enough to read. The client is lean (prebuilt request bytes, llhttp
parsing, callbacks instead of coroutines, uvloop when available) so that on one core it measures
the proxy, not itself.

Modules, one concept each, dependencies pointing down: ``__main__`` (wiring, exit codes, files)
-> ``run`` (one experiment: processes, timed actions, merging) -> ``workers`` (``--workers``
processes) -> ``schedule`` (when to send: closed and open loop) -> ``client`` (the keep-alive
HTTP/1.1 connection), ``mix`` (which request), ``histogram`` (HDR latencies, the per-second
timeline, exact merging); ``plan`` (flags + scenario resolved into what to run), ``config``
(flags/env/validation), ``report`` (report.json, timeline.csv, summary.md), ``live`` (the 1 s
line). Scenario files, Docker actions, plots and ``compare``: ``scenario``, ``actions``, ``plots``,
``compare``.
"""

__version__ = "0.2.0"
