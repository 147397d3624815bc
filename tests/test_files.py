"""File helpers (_files.py): atomic writes with the usual permissions, strict UTF-8 reads."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from prefill_router._files import atomic_dir, atomic_path, default_file_mode, read_text
from prefill_router.errors import DataError


def process_umask() -> int:
    """This process's umask, read without changing it (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    pytest.skip("no /proc/self/status Umask line on this system")


def test_atomic_writes_never_change_the_process_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The umask is process-wide: changing it, even for an instant, races with every thread that
    creates a file meanwhile (which would get the temporary mask). It is read once, at import."""

    def refuse(mask: int) -> int:
        raise AssertionError(f"os.umask({mask:#o}) called while writing")

    monkeypatch.setattr(os, "umask", refuse)
    with atomic_path(tmp_path / "file.txt") as tmp:
        tmp.write_text("content")
    with atomic_dir(tmp_path / "folder") as folder:
        (folder / "inside.txt").write_text("content")
    expected = 0o666 & ~process_umask()
    assert default_file_mode() == expected
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~process_umask()
    assert (tmp_path / "file.txt").read_text() == "content"


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")

    def write_half_then_fail() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_half_then_fail()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_read_text_names_the_line_of_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(DataError, match=r"invalid UTF-8 at byte 8; save the price file as UTF-8"):
        read_text(path, what="price file")
