"""Chunks, the unit the store computes, writes and reuses: what a compute callback returns
(:class:`ChunkResult`), the checks it passes before anything is written, and a chunk's ``.npy``
with its manifest (written strictly after the ``.npy``: the manifest is the commit marker).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from prefill_router._files import atomic_path
from prefill_router.encode.store.files import _write_json, _write_npy
from prefill_router.encode.store.key import STORE_FORMAT_VERSION, FeatureKey, _is_int
from prefill_router.errors import EncodeError

_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


@dataclass(frozen=True)
class ChunkResult:
    """What the compute callback returns for a list of prompts."""

    features: npt.NDArray[np.float32]  # (n, n_poolings, n_layers, hidden)
    n_tokens: int  # tokens run through the encoder
    n_truncated: int  # prompts cut to max_tokens
    n_empty: int  # empty prompts (encoded as the bare template)


# --- Checks before anything is written -----------------------------------------------------------


def check_chunk_result(
    result: object, key: FeatureKey, n: int, hidden: int | None, index: int, start: int
) -> dict[str, int]:
    """Check one computed chunk before anything is written; return its counts as plain ints."""
    # ``object``: the callback is user code, so check what it returned, not what it promised.
    if not isinstance(result, ChunkResult):
        raise EncodeError(f"compute must return a ChunkResult; got {type(result).__name__} instead.")
    features: object = result.features
    if not isinstance(features, np.ndarray) or not np.issubdtype(features.dtype, np.floating):
        kind = features.dtype if isinstance(features, np.ndarray) else type(features).__name__
        raise EncodeError(f"compute must return float32 numpy features; got {kind} instead (chunk {index}).")
    want = (n, len(key.poolings), len(key.layers))
    if features.ndim != 4 or features.shape[:3] != want or features.shape[3] < 1:
        raise EncodeError(
            f"compute returned features of shape {features.shape} for chunk {index}; expected "
            f"(n_prompts, n_poolings, n_layers, hidden) = {(*want, hidden or 'hidden')}."
        )
    if hidden is not None and features.shape[3] != hidden:
        raise EncodeError(
            f"compute returned hidden size {features.shape[3]} for chunk {index}, but earlier chunks "
            f"of this key have hidden size {hidden}; inconsistent shapes."
        )
    _check_values(features, index, start, key.encoder.storage)
    return _check_counts(result, n, index)


def _check_values(features: npt.NDArray[np.floating[Any]], index: int, start: int, storage: str) -> None:
    """Refuse NaN, inf and anything float16 storage would turn into inf, naming the first bad prompt."""
    # Row-wise max and min find all three problems without a second full-size array in memory.
    row_max = features.max(axis=(1, 2, 3))
    row_min = features.min(axis=(1, 2, 3))
    bad = ~(np.isfinite(row_max) & np.isfinite(row_min))
    if bad.any():
        row = int(np.argmax(bad))
        kind = "NaN" if np.isnan(row_max[row]) or np.isnan(row_min[row]) else "inf"
        raise EncodeError(
            f"encoder produced {kind} features for prompt {start + row} (chunk {index}, row {row}; "
            f"{int(bad.sum())} of {len(bad)} prompts in this chunk); nothing was stored for this chunk."
        )
    if storage != "float16":
        return
    peak = np.maximum(np.abs(row_max), np.abs(row_min))
    over = peak > _FLOAT16_MAX
    if over.any():
        row = int(np.argmax(over))
        raise EncodeError(
            f"encoder produced features outside the float16 range for prompt {start + row} (chunk "
            f"{index}, row {row}): max |value| {float(peak[row]):.6g} > {_FLOAT16_MAX:g}; float16 "
            "storage would turn them into inf. Nothing was stored for this chunk; encode with "
            "--storage float32 (Encoder(storage='float32')) to keep them."
        )


def _check_counts(result: ChunkResult, n: int, index: int) -> dict[str, int]:
    counts = {"n_tokens": result.n_tokens, "n_truncated": result.n_truncated, "n_empty": result.n_empty}
    for name, value in counts.items():
        limit = None if name == "n_tokens" else n
        if not _is_int(value) or value < 0 or (limit is not None and value > limit):
            bound = "an int >= 0" if limit is None else f"an int in [0, {limit}]"
            raise EncodeError(f"compute returned {name}={value!r} for chunk {index}; expected {bound}.")
    return {name: int(value) for name, value in counts.items()}


# --- Chunk files: write, look up, check ----------------------------------------------------------


def _write_chunk(
    npy: Path, result: ChunkResult, key: FeatureKey, n_rows: int, counts: dict[str, int]
) -> dict[str, Any]:
    """Write a checked chunk's ``.npy`` in the key's storage dtype, then its manifest; return that."""
    stored = np.ascontiguousarray(result.features, dtype=key.disk_dtype)
    with atomic_path(npy) as tmp:
        sha256, n_bytes = _write_npy(tmp, stored.shape, [stored], key.disk_dtype)
    manifest = {
        "format_version": STORE_FORMAT_VERSION,
        "n_rows": n_rows,
        "shape": list(stored.shape),
        "dtype": key.disk_dtype.str,
        "sha256": sha256,
        "n_bytes": n_bytes,
        **counts,
    }
    _write_json(npy.with_suffix(".json"), manifest)  # the commit marker, strictly after the .npy
    return manifest


def _load_chunk_manifest(
    npy: Path, expected: tuple[int, int, int], hidden: int | None
) -> dict[str, Any] | None:
    """The manifest of a valid stored chunk, or ``None`` when the chunk must be (re)computed.

    No manifest means the chunk was never committed (not computed yet, or the run was killed
    while writing it): that is normal and silent. A manifest whose ``.npy`` is missing, has the
    wrong size or hash, or whose shape does not fit, is damage: it gets one warning.
    """
    manifest_path = npy.with_suffix(".json")
    if not manifest_path.exists():
        return None
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        problem = _chunk_problem(npy, manifest, expected, hidden)
    except (OSError, ValueError, KeyError, TypeError):
        problem = f"unusable (unreadable manifest {manifest_path.name})"
    if problem is None:
        return manifest
    # Frames: here, is_stored(), get_or_compute(), its caller: the warning names the caller's line.
    warnings.warn(f"feature store: chunk {npy} is {problem}; recomputing it", UserWarning, stacklevel=4)
    return None


def _committed_meanwhile(
    npy: Path, expected: tuple[int, int, int], hidden: int | None
) -> dict[str, Any] | None:
    """The manifest of a sound chunk another writer committed, read quietly (no damage warning)."""
    try:
        manifest: dict[str, Any] = json.loads(npy.with_suffix(".json").read_text(encoding="utf-8"))
        return manifest if _chunk_problem(npy, manifest, expected, hidden) is None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _chunk_problem(
    npy: Path, manifest: dict[str, Any], expected: tuple[int, int, int], hidden: int | None
) -> str | None:
    """What is wrong with a committed chunk, in words, or ``None`` when it is sound."""
    shape = tuple(manifest["shape"])
    if len(shape) != 4 or shape[:3] != expected or (hidden is not None and shape[3] != hidden):
        return f"unusable (stored shape {shape} does not fit {(*expected, hidden or 'hidden')})"
    try:
        size = npy.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != manifest["n_bytes"]:
        return f"corrupt (truncated: {size} of {manifest['n_bytes']} bytes)"
    with open(npy, "rb") as handle:
        actual = hashlib.file_digest(handle, "sha256").hexdigest()
    return None if actual == manifest["sha256"] else "corrupt (sha256 mismatch)"
