"""loadgen/files.py: result files appear whole or not at all; a folder is probed before a run."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from loadgen.files import check_writable, open_atomic, write_atomic


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old, whole")
    with pytest.raises(OSError, match="No space"), open_atomic(target) as f:
        f.write(b'{"half": ')
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old, whole"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_atomic_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "summary.md"
    write_atomic(target, "first")
    write_atomic(target, "second ünïcode")
    assert target.read_text(encoding="utf-8") == "second ünïcode"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_check_writable_creates_the_folder_and_leaves_nothing_in_it(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    assert check_writable(folder) == folder
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_check_writable_raises_for_a_folder_that_cannot_be(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        check_writable(blocker / "results")
    if Path("/dev/full").exists():  # a device that is always full, like a disk with no space left
        with pytest.raises(OSError) as exc, Path("/dev/full").open("wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
        assert exc.value.errno == errno.ENOSPC
