"""asgi-lab's load generator: a closed-loop HTTP/1.1 load generator on its own lean client.

Run it as ``python -m loadgen URL --concurrency C --duration S [--json FILE]`` (see ``config`` for
every flag and its ``LOADGEN_*`` environment variable). It exists, rather than using wrk or an
off-the-shelf Python client, because the lab needs things those do not give together: a report
that splits responses by the ``X-Backend-Id`` header, a per-second timeline keyed by send time,
exact totals that an integration test can compare with what the backends counted, and code small
enough to read. The client is lean (prebuilt request bytes, llhttp parsing, callbacks instead of
coroutines, uvloop when available) so that on one core it measures the proxy, not itself.

Modules, one concept each: ``config`` (flags/env/validation), ``client`` (the keep-alive HTTP/1.1
connection), ``schedule`` (when to send: the closed loop), ``histogram`` (HDR latencies and the
per-second timeline), ``report`` (report.json, the Markdown summary, files), ``live`` (the 1 s
progress line), ``__main__`` (wiring and exit codes).
"""

__version__ = "0.1.0"
