"""One encoding job: a prompt list under one key, cut into :class:`Chunk` s. Plan (which chunks
exist), :meth:`~FeatureJob.missing` (which must be computed), :meth:`~FeatureJob.commit` (write
one computed chunk) and :meth:`~FeatureJob.finish` (assemble the view).

A chunk another key already holds with a superset of this key's layers and poolings is sliced
out of that key's files rather than encoded again (:func:`superset_keys`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefill_router.encode.store.chunks import (
    ChunkResult,
    _committed_meanwhile,
    _load_chunk_manifest,
    _write_chunk,
    check_chunk_result,
)
from prefill_router.encode.store.files import _key_lock, _KeyLayout, _write_key_file
from prefill_router.encode.store.key import FeatureKey, _chunk_digest, _is_int, _order_digest
from prefill_router.encode.store.views import StoredFeatures, _open_view, _write_view
from prefill_router.errors import ConfigError, EncodeError

if TYPE_CHECKING:
    from prefill_router.encode.store.cache import FeatureStore


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, stop)`` of a prompt list: the unit the store computes, writes and reuses."""

    index: int
    start: int
    stop: int
    digest: str  # sha256 of the key digest and the chunk's prompt texts

    @property
    def n_rows(self) -> int:
        """How many prompts the chunk holds."""
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
            self._accept(chunk, _write_chunk(npy, result, self.key, chunk.n_rows, counts))
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
    found = []
    for path in sorted(features_dir.glob("*/key.json")):
        try:
            other = FeatureKey.from_json(json.loads(path.read_text(encoding="utf-8"))["key"])
        except (OSError, ValueError, KeyError, TypeError, ConfigError):
            continue
        if (
            other != key
            and other.encoder == key.encoder
            and set(key.layers) <= set(other.layers)
            and set(key.poolings) <= set(other.poolings)
        ):
            found.append(other)
    return sorted(found, key=lambda k: len(k.layers) * len(k.poolings))


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
