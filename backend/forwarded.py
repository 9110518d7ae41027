"""The served app behind Uvicorn's X-Forwarded-* middleware, for Granian and Hypercorn.

Neither has a "trust these peers' X-Forwarded-For" option in its CLI, so `backend.servers`
serves this module's ``app`` instead: the real target (``BACKEND_WRAPPED_APP``) wrapped in the
very middleware Uvicorn and Gunicorn's Uvicorn worker apply, with the same trusted peers
(``BACKEND_FORWARDED_ALLOW_IPS``). /echo's ``client`` then means the same under every server.
"""

from __future__ import annotations

import os

from uvicorn.importer import import_from_string
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from backend.servers import ENV_FORWARDED_ALLOW_IPS, ENV_WRAPPED_TARGET
from engine import trust

# backend.servers passes addresses and networks; `local` set by hand is expanded here as well.
app = ProxyHeadersMiddleware(
    import_from_string(os.environ[ENV_WRAPPED_TARGET]),
    trusted_hosts=trust.expand(os.environ[ENV_FORWARDED_ALLOW_IPS]),
)
