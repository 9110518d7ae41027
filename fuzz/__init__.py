"""Coverage-guided fuzzing of the two HTTP/1.1 parsers the lab depends on (atheris, libFuzzer).

* ``fuzz.proxy_path``: bytes from a client go through the proxy in memory (the connection
  engine's parse and limits, ``proxy.headers.rewrite_request``, the exchange, re-framing) to a
  fake upstream whose strict parser checks every request the proxy writes; the upstream's
  answer can be fuzzed too, and what reaches the client must parse as HTTP/1.1 responses.
* ``fuzz.loadgen_response``: response bytes fed to the load generator's ``Connection`` (its
  httptools response parser and completion logic): one outcome per request, never two.

A target raises ``Finding`` (or any exception) for a violated invariant; libFuzzer then saves
the input. ``python -m fuzz`` runs them (``./lab fuzz`` is the long run, docs/conformance.md).
"""
