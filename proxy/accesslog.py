"""The proxy's access log is the engine's (``engine/accesslog.py``): one JSON line format for both servers."""

from engine.accesslog import AccessLog

__all__ = ["AccessLog"]
