"""The ASGI 3 callable's types, for the modules that call an app (lifespan, websocket).

Scopes and messages are mappings with string keys; their content is checked by the spec, not
by the type checker (``tests/unit/asgi_checker.py`` validates what the server produces).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
