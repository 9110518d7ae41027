"""The HTTP/1.1 connection engine shared by the proxy and the ASGI server.

Everything on the client side of a request lives here once: parsing (httptools), limits,
timeouts, keep-alive, pipelining, read-side flow control, the write path and the refusal
responses. What *answers* a request is a handler behind the small contract in
``engine/handler.py``: the proxy's exchange forwards it to a backend, the ASGI cycle calls a
Python app in-process (Envoy's HTTP connection manager with a router filter or another filter).
"""
