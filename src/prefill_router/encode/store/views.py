"""Views, one array per prompt list, and the reader over them: :class:`StoredFeatures`.

A view is every chunk of one prompt list, in order, concatenated into one ``.npy`` and opened
memory-mapped. It is served only after its sha256 and finiteness were checked once for the file
as it is on disk (:func:`_view_verified`); a damaged view is rebuilt from its chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from prefill_router._files import atomic_path
from prefill_router.encode.store.files import _file_stamp, _write_json, _write_npy
from prefill_router.encode.store.key import STORE_FORMAT_VERSION, FeatureKey
from prefill_router.errors import ConfigError


@dataclass(frozen=True)
class StoredFeatures:
    """Features of N prompts as stored: a read-only memmap (float16, or float32 when the key's
    storage says so) plus the run's totals."""

    key: FeatureKey
    features: npt.NDArray[np.floating[Any]]  # np.memmap (N, n_poolings, n_layers, hidden), read-only
    path: Path  # the .npy file behind ``features``
    n_tokens: int  # totals over the N prompts
    n_truncated: int
    n_empty: int
    computed_chunks: int  # chunks this call ran the encoder for
    reused_chunks: int  # chunks found on disk (all of them when the view was reused)

    def pooled(self, pooling: str) -> npt.NDArray[np.floating[Any]]:
        """The features of one pooling, (N, n_layers, hidden), still backed by the memmap.

        Raises:
            ConfigError: ``pooling`` is not one of ``key.poolings``.
        """
        if pooling not in self.key.poolings:
            raise ConfigError(
                f"unknown pooling {pooling!r}; the stored poolings are {', '.join(self.key.poolings)}."
            )
        result: npt.NDArray[np.floating[Any]] = self.features[:, self.key.poolings.index(pooling)]
        return result

    def layer_slice(self, layers: Sequence[int]) -> npt.NDArray[np.floating[Any]]:
        """The features of some stored layers, (N, n_poolings, len(layers), hidden).

        A memmap-backed view when the layers sit at evenly spaced positions (a single layer, a
        range, every third layer); otherwise numpy's fancy indexing makes a copy.

        Raises:
            ConfigError: ``layers`` is empty, or names a layer that is not stored.
        """
        layers = list(layers)
        if not layers:
            raise ConfigError("layer_slice needs at least one layer; got an empty list.")
        for layer in layers:
            if layer not in self.key.layers:
                stored = _describe_layers(self.key.layers)
                raise ConfigError(f"layer {layer!r} is not stored for this key; stored layers: {stored}.")
        positions = [self.key.layers.index(layer) for layer in layers]
        result: npt.NDArray[np.floating[Any]] = self.features[:, :, _as_slice(positions)]
        return result


def _open_view(
    key: FeatureKey, npy: Path, n_rows: int, *, computed: int, reused: int
) -> StoredFeatures | None:
    """Open a committed view read-only, or return ``None`` if there is none (or it is damaged).

    The size, dtype and shape are checked every time; the sha256 and finiteness of every value
    once per file as it is on disk (:func:`_view_verified`).
    """
    manifest_path = npy.with_suffix(".json")
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        features = np.load(npy, mmap_mode="r", allow_pickle=False)
        totals = {name: int(manifest[name]) for name in ("n_tokens", "n_truncated", "n_empty")}
        sound = (
            npy.stat().st_size == manifest["n_bytes"]
            and features.dtype == key.disk_dtype
            and features.ndim == 4
            and features.shape[:3] == (n_rows, len(key.poolings), len(key.layers))
            and _view_verified(npy, manifest, features)
        )
    except (OSError, ValueError, KeyError, TypeError):
        sound = False
    if not sound:
        # Only the view is rebuilt (from the chunks, which are checked one by one), so this is cheap.
        # Frames: here, stored_view(), get_or_compute(), its caller.
        warnings.warn(f"feature store: view {npy} is damaged; rebuilding it", UserWarning, stacklevel=4)
        return None
    return StoredFeatures(
        key=key,
        features=features,
        path=npy,
        **totals,
        computed_chunks=computed,
        reused_chunks=reused,
    )


def _view_verified(npy: Path, manifest: dict[str, Any], features: npt.NDArray[Any]) -> bool:
    """Whether the view's bytes are those its manifest describes, all finite.

    A full check (sha256, then finiteness, streamed) runs when the file is not the one last checked
    (its stamp differs: first open after a copy, or any write since); a pass records the new stamp
    in the manifest, so later opens stay instant. A read-only store checks on every open.
    """
    if manifest.get("file_stamp") == _file_stamp(npy):
        return True
    with open(npy, "rb") as handle:
        if hashlib.file_digest(handle, "sha256").hexdigest() != manifest["sha256"]:
            return False
    step = max(1, (64 << 20) // max(1, features[:1].nbytes))  # ~64 MB of rows at a time
    if not all(np.isfinite(features[i : i + step]).all() for i in range(0, len(features), step)):
        return False
    with contextlib.suppress(OSError):
        _write_json(npy.with_suffix(".json"), {**manifest, "file_stamp": _file_stamp(npy)})
    return True


def _write_view(npy: Path, key: FeatureKey, chunk_paths: list[Path], manifests: list[dict[str, Any]]) -> None:
    """Concatenate the chunks into one .npy, streaming one chunk at a time, then commit it."""
    hidden = int(manifests[0]["shape"][3])
    n_rows = sum(int(m["n_rows"]) for m in manifests)
    shape = (n_rows, len(key.poolings), len(key.layers), hidden)
    # Memory-mapped reads page each chunk in as it is written; only one is resident at a time.
    blocks = (np.load(path, mmap_mode="r", allow_pickle=False) for path in chunk_paths)
    with atomic_path(npy) as tmp:
        sha256, n_bytes = _write_npy(tmp, shape, blocks, key.disk_dtype)
    totals = {name: sum(int(m[name]) for m in manifests) for name in ("n_tokens", "n_truncated", "n_empty")}
    manifest = {
        "format_version": STORE_FORMAT_VERSION,
        "key_digest": key.digest(),
        "n_rows": n_rows,
        "shape": list(shape),
        "dtype": key.disk_dtype.str,
        "sha256": sha256,
        "n_bytes": n_bytes,
        **totals,
        "chunks": [path.stem for path in chunk_paths],
        "file_stamp": _file_stamp(npy),  # written and hashed just now: no need to read it back
    }
    _write_json(npy.with_suffix(".json"), manifest)


def _as_slice(positions: list[int]) -> slice | list[int]:
    """A basic slice for evenly spaced positions (numpy then returns a view), else the list."""
    if len(positions) == 1:
        return slice(positions[0], positions[0] + 1)
    step = positions[1] - positions[0]
    if step == 0 or any(b - a != step for a, b in itertools.pairwise(positions)):
        return positions
    stop = positions[-1] + step
    return slice(positions[0], stop if stop >= 0 else None, step)


def _describe_layers(layers: tuple[int, ...]) -> str:
    """'0-30' for a contiguous range, else the list: short in the common case, exact always."""
    if len(layers) > 1 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(str(layer) for layer in layers)
