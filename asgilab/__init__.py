"""asgi-lab's own ASGI server: small modules, one concept each (see docs/asgi.md)."""
