"""Features of a prompt list through the on-disk store: compute what is missing, reuse the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from prefill_router._files import atomic_path
from prefill_router.encode.encoder import (
    DEFAULT_TOKEN_BUDGET,
    POOLINGS,
    Encoder,
    parse_layers,
    parse_poolings,
)
from prefill_router.encode.identity import EncoderIdentity
from prefill_router.encode.store import ChunkResult, FeatureKey, FeatureStore, StoredFeatures

DEFAULT_CHUNK_SIZE = 256


def feature_key(encoder: Encoder, layers: tuple[int, ...], poolings: tuple[str, ...]) -> FeatureKey:
    """The store key of ``encoder``'s features at ``layers`` and ``poolings``."""
    return FeatureKey(EncoderIdentity.of(encoder), poolings=poolings, layers=layers)


def extract_features(
    encoder: Encoder,
    prompts: Sequence[str],
    store: FeatureStore,
    *,
    layers: str | Sequence[int] = "all",
    poolings: str | Sequence[str] = POOLINGS,
    token_budget: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
) -> StoredFeatures:
    """Pooled features of ``prompts`` (cached): a memmap (N, n_poolings, n_layers, hidden) in the
    encoder's storage dtype (float16, or float32 for encoders that overflow it).

    ``on_progress(n_prompts, n_tokens)`` is called as prompts are encoded (n_tokens = 0 for
    prompts found in the cache).
    """
    layer_ids = parse_layers(layers, encoder.n_layers)
    pooling_ids = parse_poolings(poolings)
    budget = DEFAULT_TOKEN_BUDGET if token_budget is None else token_budget

    def compute(chunk: Sequence[str]) -> ChunkResult:
        encoded = encoder.encode(
            chunk, layers=layer_ids, poolings=pooling_ids, token_budget=budget, on_batch=on_progress
        )
        return ChunkResult(encoded.features, encoded.n_tokens, encoded.n_truncated, encoded.n_empty)

    def on_chunk(n_rows: int, result: ChunkResult | None) -> None:
        if result is None and on_progress is not None:
            on_progress(n_rows, 0)

    key = feature_key(encoder, layer_ids, pooling_ids)
    return store.get_or_compute(key, prompts, compute, chunk_size=chunk_size, on_chunk=on_chunk)


def export_npz(stored: StoredFeatures, prompt_ids: Sequence[str], path: str | Path) -> Path:
    """Write a plain NumPy ``.npz``: ``prompt_id``, one float32 (N, n_layers, hidden) array per
    pooling (``mean`` / ``last``) and ``layers``; atomically."""
    arrays: dict[str, np.ndarray] = {
        "prompt_id": np.asarray(list(prompt_ids), dtype=str),
        "layers": np.asarray(stored.key.layers, dtype=np.int64),
    }
    for pooling in stored.key.poolings:
        arrays[pooling] = np.asarray(stored.pooled(pooling), dtype=np.float32)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    return path
