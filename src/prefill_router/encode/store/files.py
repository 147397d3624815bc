"""The bytes on disk: a key's folder layout, .npy and JSON writers that hash as they write, the
``key.json`` record, the per-key writer lock and the stamp that tells whether a file changed.

Written by hand because numpy's ``np.save`` neither streams an array assembled from pieces nor
returns the sha256 of what it wrote; the store needs both (one chunk in memory, no read-back).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from prefill_router._files import atomic_path
from prefill_router.encode.store.key import STORE_FORMAT_VERSION, FeatureKey


@dataclass(frozen=True)
class _KeyLayout:
    """The paths of one key's folder."""

    root: Path

    @property
    def chunks(self) -> Path:
        return self.root / "chunks"

    @property
    def views(self) -> Path:
        return self.root / "views"

    def chunk_npy(self, digest: str) -> Path:
        return self.chunks / f"{digest}.npy"


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through, so no file is read back."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.hash = hashlib.sha256()
        self.n_bytes = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.n_bytes += len(data)
        return self.handle.write(data)


def _write_npy(
    path: Path, shape: tuple[int, ...], blocks: Iterable[npt.NDArray[Any]], dtype: np.dtype[Any]
) -> tuple[str, int]:
    """Write ``blocks`` of ``dtype`` (stacked on axis 0) as one C-order .npy; return (sha256, n_bytes)."""
    with open(path, "wb") as handle:
        writer = _HashingWriter(handle)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(writer, header)
        rows = 0
        for block in blocks:
            assert block.dtype == dtype and block.shape[1:] == shape[1:], "chunk shape drifted"
            writer.write(np.ascontiguousarray(block).tobytes())
            rows += block.shape[0]
        assert rows == shape[0], "row count drifted"  # internal invariant: manifests sum to shape
    return writer.hash.hexdigest(), writer.n_bytes


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _write_key_file(path: Path, key: FeatureKey) -> None:
    """Record the key beside its features once, so a folder of digests can be read by people."""
    if not path.exists():
        _write_json(
            path, {"format_version": STORE_FORMAT_VERSION, "digest": key.digest(), "key": key.to_json()}
        )


@contextlib.contextmanager
def _key_lock(folder: Path) -> Iterator[None]:
    """Hold the key folder's advisory lock (``flock``; a no-op where the OS has none)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one writer per key is then the caller's business
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _file_stamp(path: Path) -> list[int]:
    """What any write to a file changes: size, mtime, ctime (not settable by users) and inode."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
