"""asgi-lab reverse proxy: asyncio + httptools (+ uvloop when available) HTTP/1.1 proxy."""
