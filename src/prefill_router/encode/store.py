"""The feature store: an on-disk, content-addressed cache of pooled encoder features.

Encoding a dataset takes minutes; reading its features back should take milliseconds. The store
keys features by everything that changes them (:class:`FeatureKey`) plus the prompt texts, keeps
them as float16 ``.npy`` files (float32 for encoders whose activations exceed float16's range) and
hands them back memory-mapped. Layout under ``root``::

    features/<key digest[:16]>/
        key.json                     the FeatureKey, for people and for clear()
        chunks/<chunk digest>.npy    (n, n_poolings, n_layers, hidden) in the key's storage dtype
        chunks/<chunk digest>.json   manifest: rows, shape, sha256 of the .npy, token counts
        views/<order digest>.npy     every chunk of one prompt list, in order, as one array
        views/<order digest>.json    manifest of the view, with totals over all prompts

A chunk's digest covers the key digest and its prompt texts, so a run over the first N prompts
reuses every full chunk of a later run over all of them (and the other way round). Every file is
written atomically and a manifest is written only after its ``.npy``: the manifest is the commit
marker, so a killed run resumes at the first chunk without one. Writers of one key take its lock
(``features/<key>/.lock``, an advisory ``flock``), so two runs never interleave a ``.npy`` and
another run's manifest. A view is served only after its sha256 and finiteness were checked once
for the file as it is on disk (its size, times and inode are recorded then; any later write to it
changes them and brings the check back). Pure numpy and stdlib on purpose:
the store never needs the encoder, only a callback that computes features for a list of prompts.

Example::

    store = FeatureStore(default_cache_dir())
    stored = store.get_or_compute(key, prompts, encoder_callback)
    X = stored.pooled("mean")[:, -1]  # (N, hidden), last stored layer
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from prefill_router._files import atomic_path
from prefill_router.errors import ConfigError, EncodeError

__all__ = [
    "Chunk",
    "ChunkResult",
    "FeatureJob",
    "FeatureKey",
    "FeatureStore",
    "StoredFeatures",
    "check_chunk_result",
    "default_cache_dir",
]

#: Bumped whenever the on-disk layout or the digests change; it is part of every key digest, so
#: files written by an older layout are simply never looked up again.
STORE_FORMAT_VERSION = 1

#: How features may be kept on disk. float16 halves the size and is precise enough for encoders
#: whose activations stay well under its 65,504 maximum; Gemma-3-270M's residual stream grows to
#: several 10^4 (33,000 on 32 bundled prompts, ~60,700 seen on larger sets), at the edge of that
#: range, so its features are kept as float32.
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
DEFAULT_STORAGE = "float16"
_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


# --- Public value types ------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureKey:
    """Everything that changes the features, except the prompt texts.

    Two runs share cached features exactly when their keys are equal. The store checks the
    structure of the fields (types, non-empty, sorted layers) but not their vocabulary: which
    views, dtypes and poolings exist is the encoder's business.

    Example::

        key = FeatureKey("smollm2-135m", sha, "chat", 512, "float32", ("mean", "last"), (0, 15, 30))
    """

    encoder: str  # registered name or local path
    weights_sha256: str  # hash of the weights actually loaded, so a changed model is a new key
    view: str  # "chat" | "raw"
    max_tokens: int  # truncation length
    dtype: str  # "float32" | "bfloat16": compute dtype, not the storage dtype
    poolings: tuple[str, ...]  # in the order of axis 1 of the features, e.g. ("mean", "last")
    layers: tuple[int, ...]  # sorted; 0 = embedding output, as in DESIGN.md §4
    storage: str = DEFAULT_STORAGE  # on-disk dtype: "float16" | "float32" (see STORAGE_DTYPES)

    def __post_init__(self) -> None:
        for name in ("encoder", "weights_sha256", "view", "dtype"):
            _require(_is_nonempty_str(getattr(self, name)), name, "a non-empty string", getattr(self, name))
        _require(
            _is_int(self.max_tokens) and self.max_tokens > 0, "max_tokens", "a positive int", self.max_tokens
        )
        poolings = _as_tuple(self.poolings)
        _require(
            bool(poolings) and all(map(_is_nonempty_str, poolings)) and len(set(poolings)) == len(poolings),
            "poolings", "a non-empty tuple of distinct names", self.poolings,
        )  # fmt: skip
        _require(
            self.storage in STORAGE_DTYPES, "storage", f"one of {', '.join(STORAGE_DTYPES)}", self.storage
        )
        layers = _as_tuple(self.layers)
        layers_ok = all(_is_int(x) and x >= 0 for x in layers) and list(layers) == sorted(set(layers))
        _require(
            bool(layers) and layers_ok,
            "layers", "a non-empty, strictly increasing tuple of layer indices >= 0", self.layers,
        )  # fmt: skip
        # Plain Python values whatever the caller passed (lists, numpy ints), so the key stays
        # hashable and its JSON, hence its digest, never depends on the caller's container types.
        object.__setattr__(self, "max_tokens", int(self.max_tokens))
        object.__setattr__(self, "poolings", poolings)
        object.__setattr__(self, "layers", tuple(int(x) for x in layers))

    @property
    def disk_dtype(self) -> np.dtype[Any]:
        """The numpy dtype the features are stored in."""
        return STORAGE_DTYPES[self.storage]

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples become lists).

        ``storage`` appears only when it is not the default float16, so keys (and digests) of
        float16 features are the same as before the field existed: existing caches stay valid.
        """
        return {
            "encoder": self.encoder,
            "weights_sha256": self.weights_sha256,
            "view": self.view,
            "max_tokens": self.max_tokens,
            "dtype": self.dtype,
            "poolings": list(self.poolings),
            "layers": list(self.layers),
            **({} if self.storage == DEFAULT_STORAGE else {"storage": self.storage}),
        }

    def digest(self) -> str:
        """The sha256 hex digest of a canonical JSON of every field and the store format version."""
        payload = {"store_format": STORE_FORMAT_VERSION, **self.to_json()}
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ChunkResult:
    """What the compute callback returns for a list of prompts."""

    features: npt.NDArray[np.float32]  # (n, n_poolings, n_layers, hidden)
    n_tokens: int  # tokens run through the encoder
    n_truncated: int  # prompts cut to max_tokens
    n_empty: int  # empty prompts (encoded as the bare template)


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


# --- The store ---------------------------------------------------------------------------------


class FeatureStore:
    """An on-disk cache of pooled encoder features under ``root/features``.

    Only ``root/features`` is ever written or removed, so ``root`` can be a cache directory that
    other parts of the package share (see :func:`default_cache_dir`).

    Example::

        store = FeatureStore(tmp_dir)
        stored = store.get_or_compute(key, ["Hi", "What is 2+2?"], compute, chunk_size=256)
        stored.features.shape  # (2, n_poolings, n_layers, hidden)
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def features_dir(self) -> Path:
        """The folder that holds one sub-folder per feature key."""
        return self.root / "features"

    def get_or_compute(
        self,
        key: FeatureKey,
        prompts: Sequence[str],
        compute: Callable[[Sequence[str]], ChunkResult],
        *,
        chunk_size: int = 256,
        on_chunk: Callable[[int, ChunkResult | None], None] | None = None,
    ) -> StoredFeatures:
        """Return the features of ``prompts`` under ``key``, computing only what is not on disk.

        Prompts are cut in order into chunks of ``chunk_size``; ``compute`` runs once per missing
        chunk and its result is checked and written before the next chunk starts. ``on_chunk``
        is called after every chunk with its row count and the ChunkResult, or ``None`` for a
        chunk found on disk (every chunk, when the assembled view is reused), so a progress bar
        can advance.

        Raises:
            ConfigError: no prompts, a prompt that is not a str, or ``chunk_size`` < 1.
            EncodeError: ``compute`` returned features of the wrong shape, NaN/inf values, or
                values float16 storage cannot hold; nothing is stored for that chunk.
        """
        job = FeatureJob(self, key, prompts, chunk_size)
        stored = job.stored_view()
        if stored is not None:
            for chunk in job.chunks:  # nothing to do, but let a progress bar reach its total
                _notify(on_chunk, chunk.n_rows, None)
            return stored
        for chunk in job.chunks:
            if job.is_stored(chunk) or job.reuse_superset(chunk):
                _notify(on_chunk, chunk.n_rows, None)
                continue
            # The float32 result lives only in this iteration: it is written to disk and
            # dropped before the next chunk is computed, so at most one chunk's float32 is held.
            result = compute(job.prompts_of(chunk))
            job.commit(chunk, result)
            _notify(on_chunk, chunk.n_rows, result)
            del result
        return job.finish()

    def clear(self, key: FeatureKey | None = None) -> int:
        """Remove the stored files of ``key`` (of every key when ``None``); return the bytes freed."""
        target = self.features_dir if key is None else self.features_dir / key.digest()[:16]
        freed = _tree_size(target)
        if target.exists():
            shutil.rmtree(target)
        return freed

    def size_bytes(self) -> int:
        """Bytes taken by every stored file, temporary leftovers of killed runs included."""
        return _tree_size(self.features_dir)


def default_cache_dir() -> Path:
    """The user cache folder: ``$PREFILL_ROUTER_CACHE``, else ``$XDG_CACHE_HOME/prefill-router``,
    else ``~/.cache/prefill-router``. Nothing is created."""
    explicit = os.environ.get("PREFILL_ROUTER_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "prefill-router"


# --- Chunks: look up, compute, check, write ----------------------------------------------------


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


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, stop)`` of a prompt list: the unit the store computes, writes and reuses."""

    index: int
    start: int
    stop: int
    digest: str  # sha256 of the key digest and the chunk's prompt texts

    @property
    def n_rows(self) -> int:
        return self.stop - self.start


class FeatureJob:
    """The chunks of one prompt list under one key: which are stored, committing new ones, the view.

    :meth:`FeatureStore.get_or_compute` runs a job chunk by chunk;
    :func:`prefill_router.encode.distributed.extract_features_ray` computes a job's missing chunks
    on Ray workers and commits each result here, in the driver, so the store always has one writer
    and a distributed run leaves exactly the files a local one does.

    Example::

        job = FeatureJob(store, key, prompts)
        for chunk in job.missing():
            job.commit(chunk, compute(job.prompts_of(chunk)))
        stored = job.finish()
    """

    def __init__(
        self, store: FeatureStore, key: FeatureKey, prompts: Sequence[str], chunk_size: int = 256
    ) -> None:
        self.prompts = _check_prompts(prompts)
        if not _is_int(chunk_size) or chunk_size < 1:
            raise ConfigError(
                f"The 'chunk_size' parameter must be a positive int; got {chunk_size!r} instead."
            )
        self.key = key
        key_digest = key.digest()
        self.layout = _KeyLayout(store.features_dir / key_digest[:16])
        _write_key_file(self.layout.root / "key.json", key)
        self.chunks = []
        for i, start in enumerate(range(0, len(self.prompts), chunk_size)):
            stop = min(start + chunk_size, len(self.prompts))
            self.chunks.append(Chunk(i, start, stop, _chunk_digest(key_digest, self.prompts[start:stop])))
        self.view_path = (
            self.layout.views / f"{_order_digest(key_digest, [c.digest for c in self.chunks])}.npy"
        )
        self.hidden: int | None = None  # set by the first stored chunk; every later one must agree
        self.computed = 0  # chunks committed by this job
        self.reused = 0  # chunks found on disk (each counted once, however often it is looked up)
        self._manifests: dict[int, dict[str, Any]] = {}
        self._supersets: list[FeatureKey] | None = None  # found on first use
        self.reused_from_superset = 0  # chunks sliced out of a superset key's chunks

    def prompts_of(self, chunk: Chunk) -> list[str]:
        """The prompt texts of ``chunk``."""
        return self.prompts[chunk.start : chunk.stop]

    def stored_view(self) -> StoredFeatures | None:
        """The committed view of the whole prompt list, or ``None`` when it must be assembled."""
        return _open_view(self.key, self.view_path, len(self.prompts), computed=0, reused=len(self.chunks))

    def is_stored(self, chunk: Chunk) -> bool:
        """Whether ``chunk`` is committed and sound (a damaged one warns and counts as missing)."""
        npy = self.layout.chunk_npy(chunk.digest)
        manifest = _load_chunk_manifest(npy, self._expected(chunk), self.hidden)
        if manifest is None:
            return False
        if chunk.index not in self._manifests:  # not committed by this job, nor found before
            self.reused += 1
        self._accept(chunk, manifest)
        return True

    def missing(self) -> list[Chunk]:
        """The chunks that still need computing, in order (none that a superset key holds)."""
        return [chunk for chunk in self.chunks if not (self.is_stored(chunk) or self.reuse_superset(chunk))]

    def reuse_superset(self, chunk: Chunk) -> bool:
        """Commit ``chunk`` without encoding when another key holds its prompts with a superset of
        this key's layers and poolings (same encoder, weights, view, truncation, compute dtype and
        storage): the layers and poolings asked for are sliced out of that chunk, checked and
        written under this key. A router's few layers are thus read from the every-layer features
        ``encode`` and ``fit`` store, never encoded a second time.
        """
        if self._supersets is None:
            self._supersets = superset_keys(self.layout.root.parent, self.key)
        for other in self._supersets:
            digest = other.digest()
            npy = _KeyLayout(self.layout.root.parent / digest[:16]).chunk_npy(
                _chunk_digest(digest, self.prompts_of(chunk))
            )
            shape = (chunk.n_rows, len(other.poolings), len(other.layers))
            manifest = _load_chunk_manifest(npy, shape, self.hidden)
            if manifest is None:
                continue
            stored = np.load(npy, mmap_mode="r")
            poolings = [other.poolings.index(name) for name in self.key.poolings]
            layers = [other.layers.index(layer) for layer in self.key.layers]
            values = np.asarray(stored[:, poolings][:, :, layers], dtype=np.float32)
            counts = {name: int(manifest[name]) for name in ("n_tokens", "n_truncated", "n_empty")}
            self.commit(chunk, ChunkResult(values, **counts))
            self.computed -= 1  # read, not encoded: it counts as reused
            self.reused += 1
            self.reused_from_superset += 1
            return True
        return False

    def commit(self, chunk: Chunk, result: ChunkResult) -> None:
        """Check ``chunk``'s computed features and write them: the ``.npy``, then its manifest.

        Raises:
            EncodeError: wrong shape, NaN/inf, or values float16 storage cannot hold (nothing is
                written).
        """
        counts = check_chunk_result(result, self.key, chunk.n_rows, self.hidden, chunk.index, chunk.start)
        npy = self.layout.chunk_npy(chunk.digest)
        with _key_lock(self.layout.root):
            theirs = _committed_meanwhile(npy, self._expected(chunk), self.hidden)
            if theirs is not None:  # another run of this key committed it while we computed it
                self._accept(chunk, theirs)
                self.computed += 1
                return
            self._write_chunk(chunk, npy, result, counts)

    def _write_chunk(self, chunk: Chunk, npy: Path, result: ChunkResult, counts: dict[str, int]) -> None:
        stored = np.ascontiguousarray(result.features, dtype=self.key.disk_dtype)
        with atomic_path(npy) as tmp:
            sha256, n_bytes = _write_npy(tmp, stored.shape, [stored], self.key.disk_dtype)
        manifest = {
            "format_version": STORE_FORMAT_VERSION,
            "n_rows": chunk.n_rows,
            "shape": list(stored.shape),
            "dtype": self.key.disk_dtype.str,
            "sha256": sha256,
            "n_bytes": n_bytes,
            **counts,
        }
        _write_json(npy.with_suffix(".json"), manifest)  # the commit marker, strictly after the .npy
        self._accept(chunk, manifest)
        self.computed += 1

    def finish(self) -> StoredFeatures:
        """Assemble every chunk into the view (streaming, one chunk in memory) and open it.

        Raises:
            EncodeError: some chunks were neither found on disk nor committed.
        """
        absent = [chunk.index for chunk in self.chunks if chunk.index not in self._manifests]
        if absent:
            raise EncodeError(
                f"{len(absent)} of {len(self.chunks)} chunks are not stored yet (first: chunk {absent[0]}); "
                "compute them before assembling the features."
            )
        manifests = [self._manifests[chunk.index] for chunk in self.chunks]
        paths = [self.layout.chunk_npy(chunk.digest) for chunk in self.chunks]
        with _key_lock(self.layout.root):
            _write_view(self.view_path, self.key, paths, manifests)
        stored = _open_view(
            self.key, self.view_path, len(self.prompts), computed=self.computed, reused=self.reused
        )
        assert stored is not None, "a view just written must open"  # internal invariant
        return stored

    def _expected(self, chunk: Chunk) -> tuple[int, int, int]:
        return (chunk.n_rows, len(self.key.poolings), len(self.key.layers))

    def _accept(self, chunk: Chunk, manifest: dict[str, Any]) -> None:
        self._manifests[chunk.index] = manifest
        self.hidden = int(manifest["shape"][3])


def superset_keys(features_dir: Path, key: FeatureKey) -> list[FeatureKey]:
    """The other keys stored under ``features_dir`` whose features hold every layer and pooling of
    ``key`` for the same encoder, weights, view, truncation, compute dtype and storage; the
    smallest first (the least to read). Unreadable ``key.json`` files are skipped: this is a cache."""
    same = ("encoder", "weights_sha256", "view", "max_tokens", "dtype", "storage")
    found = []
    for path in sorted(features_dir.glob("*/key.json")):
        try:
            blob = json.loads(path.read_text(encoding="utf-8"))["key"]
            other = FeatureKey(**blob)
        except (OSError, ValueError, KeyError, TypeError, ConfigError):
            continue
        if (
            other != key
            and all(getattr(other, name) == getattr(key, name) for name in same)
            and set(key.layers) <= set(other.layers)
            and set(key.poolings) <= set(other.poolings)
        ):
            found.append(other)
    return sorted(found, key=lambda k: len(k.layers) * len(k.poolings))


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
    _check_values(features, index, start, key.storage)
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


# --- Views: one array per prompt order ---------------------------------------------------------


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


def _file_stamp(path: Path) -> list[int]:
    """What any write to a file changes: size, mtime, ctime (not settable by users) and inode."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


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


def _committed_meanwhile(
    npy: Path, expected: tuple[int, int, int], hidden: int | None
) -> dict[str, Any] | None:
    """The manifest of a sound chunk another writer committed, read quietly (no damage warning)."""
    try:
        manifest: dict[str, Any] = json.loads(npy.with_suffix(".json").read_text(encoding="utf-8"))
        return manifest if _chunk_problem(npy, manifest, expected, hidden) is None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


# --- Small helpers -----------------------------------------------------------------------------


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


def _chunk_digest(key_digest: str, prompts: Sequence[str]) -> str:
    """sha256 over the key digest and each prompt, length-prefixed so boundaries are unambiguous."""
    digest = hashlib.sha256(key_digest.encode("ascii"))
    for prompt in prompts:
        # surrogatepass: any Python str hashes, even one with lone surrogates from bad JSON.
        data = prompt.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _order_digest(key_digest: str, chunk_digests: Sequence[str]) -> str:
    """sha256 over the key digest and every chunk digest, in order: one per prompt list."""
    return hashlib.sha256("\n".join([key_digest, *chunk_digests]).encode("ascii")).hexdigest()


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a sequence of strings; got a single str instead.")
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("no prompts to encode; got an empty list. Check the dataset and --limit.")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt {index} must be a str; got {type(prompt).__name__} instead.")
    return prompts


def _notify(
    on_chunk: Callable[[int, ChunkResult | None], None] | None, n: int, result: ChunkResult | None
) -> None:
    if on_chunk is not None:
        on_chunk(n, result)


def _tree_size(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


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


def _as_tuple(value: object) -> tuple[Any, ...]:
    """``value`` as a tuple; a str or a non-iterable gives ``()`` (caught by the caller's check)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return ()
    return tuple(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_nonempty_str(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _require(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"The {name!r} parameter must be {expected}; got {got!r} instead.")
