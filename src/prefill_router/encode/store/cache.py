"""The store's front door: :class:`FeatureStore` (get or compute, clear, size) and
:func:`default_cache_dir`, the user cache folder it lives in by default."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from prefill_router.encode.store.chunks import ChunkResult
from prefill_router.encode.store.job import FeatureJob
from prefill_router.encode.store.key import FeatureKey
from prefill_router.encode.store.views import StoredFeatures


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


def _notify(
    on_chunk: Callable[[int, ChunkResult | None], None] | None, n: int, result: ChunkResult | None
) -> None:
    if on_chunk is not None:
        on_chunk(n, result)


def _tree_size(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())
