"""Writing result files whole or not at all, and finding out early that a folder cannot take them.

A run's measurements exist only in memory until the report is written, so the two ways a results
folder fails are handled apart (docs/loadgen.md, "When the results cannot be written"):

- **before the run** (:func:`check_writable`): the folder is created and a small probe file is
  written and removed in it. A read-only mount, a missing permission, a path through a file or
  a full disk stop the start with one message, before any request is sent: nothing is lost;
- **after the run** (:func:`open_atomic`, :func:`write_atomic`): each file is written under a
  temporary name beside its final one and renamed into place once complete, so a disk that
  fills up mid-write leaves no half-written ``report.json`` that a script would then misread;
  the temporary file is removed and the error goes up to the caller, which says it once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: The probe holds a little data: creating an empty file can succeed on a full filesystem.
PROBE_BYTES = 4096


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` (and parents) and write + remove a probe in it; raises OSError if not."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".loadgen-probe-{os.getpid()}"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return path


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only once everything was written to it."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            yield f
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """``Path.write_text`` (UTF-8), whole or not at all."""
    with open_atomic(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)
