"""Flags with environment twins, read the same way by the proxy and the ASGI server.

Each program keeps its own table of flags and its own ``Config`` dataclass (the one source of
its defaults); what they share is the convention: ``--some-flag`` has the twin
``<PREFIX>SOME_FLAG``, a flag wins over its variable, both go through one validation, and a bad
value is one line on stderr naming both spellings, then exit status 2 (argparse's status for a
usage error), before any socket is opened. loadgen reads its options the same way but on its
own: the instrument shares no code with what it measures.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol, TypeVar

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

C = TypeVar("C")


class ConfigError(ValueError):
    """A bad option value; the message already names the flag and its environment variable."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line instead of the usage dump: container logs show it whole."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def dest(flag: str) -> str:
    """The argparse destination (and Config field) of ``--some-flag``: ``some_flag``."""
    return flag.lstrip("-").replace("-", "_")


class Reader(Protocol):
    """A flag's raw value, else its environment twin's, else None (``dest`` when argparse's differs)."""

    def __call__(self, flag: str, dest: str | None = None, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Spelling:
    """One program's environment prefix: ``PROXY_`` or ``ASGILAB_``."""

    prefix: str

    def env(self, flag: str) -> str:
        return self.prefix + dest(flag).upper()

    def both(self, flag: str) -> str:
        """``--flag / PREFIX_FLAG``, how every error message names the option."""
        return f"{flag} / {self.env(flag)}"

    def reader(self, ns: argparse.Namespace, env: Mapping[str, str]) -> Reader:
        def get(flag: str, dest_: str | None = None) -> str | None:
            value: str | None = getattr(ns, dest_ or dest(flag))
            return env.get(self.env(flag)) if value is None else value

        return get


def parse_bool(what: str, value: str, *, blank: bool | None = None) -> bool:
    """1/0, true/false, yes/no, on/off; ``blank`` is what an empty value means (None: an error)."""
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    if not low and blank is not None:
        return blank
    raise ConfigError(f"{what}: expected a boolean (1/0, true/false), got {value!r}")


def parse_size(what: str, value: str) -> int:
    """Bytes, with nginx's k/m/g suffixes (binary: 1m = 1048576) and an optional trailing b."""
    v = value.strip().lower().removesuffix("b")
    unit = v[-1:] if v[-1:] in ("k", "m", "g") else ""
    digits = v[: len(v) - len(unit)]
    if not digits.isdigit():
        raise ConfigError(f"{what}: expected a size like 1048576, 512k, 100m or 1g, got {value!r}")
    return int(digits) * _SIZE_UNITS[unit]


def parse_level(what: str, value: str) -> str:
    """A logging level name, any case; returned upper-case."""
    level = value.strip().upper()
    if level not in LEVELS:
        raise ConfigError(f"{what}: expected one of {', '.join(LEVELS)}, got {value!r}")
    return level


def load(
    parser: argparse.ArgumentParser,
    build: Callable[[argparse.Namespace, Mapping[str, str]], C],
    argv: Sequence[str] | None,
    env: Mapping[str, str] | None,
) -> C:
    """Parse ``argv`` (default: this process's), merge over ``env`` (default: os.environ) with
    ``build``; a ConfigError becomes the parser's one-line error and exit status 2."""
    ns = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return build(ns, os.environ if env is None else env)
    except ConfigError as exc:
        parser.error(str(exc))
