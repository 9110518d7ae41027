"""Load the ASGI app named ``module:attribute`` (``backend.app:app``, ``pkg.mod:factory.app``)."""

from __future__ import annotations

import importlib
from typing import Any


class ImportFromStringError(Exception):
    """The app could not be loaded; the message is the one line the CLI prints before exit 2."""


def import_from_string(name: str) -> Any:
    module_name, _, attrs = name.partition(":")
    if not module_name or not attrs:
        raise ImportFromStringError(f"expected module:attribute, got {name!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise ImportFromStringError(f"importing {module_name!r} failed: {exc}") from None
        raise ImportFromStringError(f"no module named {module_name!r}") from None
    except Exception as exc:  # the module itself raised while importing
        raise ImportFromStringError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ImportFromStringError(f"module {module_name!r} has no attribute {attrs!r}") from None
    if not callable(obj):
        raise ImportFromStringError(f"{name!r} is not callable (an ASGI app is)")
    return obj
