"""Tests of prefill_router.encode.store (the package): the on-disk feature cache.

The store never needs a real encoder: a fake compute callback made of deterministic numpy (one
seeded random draw per prompt text) stands in for it, and counts its calls.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import weakref
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prefill_router.encode.identity import EncoderIdentity
from prefill_router.encode.store import (
    ChunkResult,
    FeatureJob,
    FeatureKey,
    FeatureStore,
    StoredFeatures,
    default_cache_dir,
)
from prefill_router.errors import ConfigError, EncodeError

ROOT = Path(__file__).resolve().parents[1]

POOLINGS = ("mean", "last")
LAYERS = (0, 1, 2, 4)
HIDDEN = 8
KEY = FeatureKey(
    encoder=EncoderIdentity(
        name="tiny-test", weights_sha256="ab" * 32, view="chat", max_tokens=16, dtype="float32"
    ),
    poolings=POOLINGS,
    layers=LAYERS,
)
PROMPTS = [
    "",
    "hi",
    "What is 2+2?",
    "Prove Fermat's last theorem in one line.",
    "naïve café ☕",
    "Name a colour.",
    "Say hi",
    "Translate 'cat' to French.",
    "",
    "Write a haiku about caches.",
]  # 10 prompts: chunk_size=4 cuts them into 4 + 4 + 2


def fake_features(prompt: str, hidden: int = HIDDEN) -> np.ndarray:
    """Deterministic float32 (n_poolings, n_layers, hidden) features of one prompt."""
    rng = np.random.default_rng(zlib.crc32(prompt.encode("utf-8")))
    return (rng.standard_normal((len(POOLINGS), len(LAYERS), hidden)) * 100).astype(np.float32)


def expected(prompts: Sequence[str]) -> np.ndarray:
    return np.stack([fake_features(p) for p in prompts]).astype(np.float16)


class FakeEncoder:
    """A compute callback that counts calls and checks the store freed the previous chunk."""

    def __init__(self, poison: dict[str, float] | None = None) -> None:
        self.calls = 0
        self.poison = poison or {}  # prompt -> a value planted in its features
        self._previous: weakref.ref[np.ndarray] | None = None

    def __call__(self, prompts: Sequence[str]) -> ChunkResult:
        # The store must hold at most one chunk's float32 at a time: the last one is gone by now.
        assert self._previous is None or self._previous() is None, "previous chunk still in memory"
        self.calls += 1
        features = np.stack([fake_features(p) for p in prompts])
        for row, prompt in enumerate(prompts):
            if prompt in self.poison:
                features[row, 1, 2, 3] = self.poison[prompt]
        self._previous = weakref.ref(features)
        return ChunkResult(
            features,
            n_tokens=sum(len(p) + 3 for p in prompts),
            n_truncated=sum(len(p) > 16 for p in prompts),
            n_empty=sum(p == "" for p in prompts),
        )


def rekey(key: FeatureKey, **changes: Any) -> FeatureKey:
    """``key`` with some fields changed, named as in key.json (``encoder`` is the identity's name)."""
    own = {name: changes.pop(name) for name in ("poolings", "layers") if name in changes}
    identity = {("name" if name == "encoder" else name): value for name, value in changes.items()}
    return dataclasses.replace(key, encoder=dataclasses.replace(key.encoder, **identity), **own)


def run(
    root: Path, prompts: Sequence[str] = PROMPTS, key: FeatureKey = KEY, **kwargs: object
) -> StoredFeatures:
    return FeatureStore(root).get_or_compute(key, prompts, FakeEncoder(), chunk_size=4, **kwargs)  # type: ignore[arg-type]


def key_dir(root: Path, key: FeatureKey = KEY) -> Path:
    return root / "features" / key.digest()[:16]


def chunk_files(root: Path) -> list[Path]:
    return sorted((key_dir(root) / "chunks").glob("*.npy"))


# --- round trip and reuse ------------------------------------------------------------------------


def test_round_trip_stores_float16_of_the_computed_features(tmp_path: Path) -> None:
    fake = FakeEncoder()
    stored = FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, fake, chunk_size=4)

    assert fake.calls == 3
    assert (stored.computed_chunks, stored.reused_chunks) == (3, 0)
    assert stored.features.dtype == np.float16
    assert stored.features.shape == (10, 2, 4, HIDDEN)
    np.testing.assert_array_equal(stored.features, expected(PROMPTS))
    assert stored.n_tokens == sum(len(p) + 3 for p in PROMPTS)
    assert stored.n_truncated == sum(len(p) > 16 for p in PROMPTS)
    assert stored.n_empty == 2
    assert stored.key == KEY


def test_layout_on_disk(tmp_path: Path) -> None:
    stored = run(tmp_path)
    folder = key_dir(tmp_path)

    key_json = json.loads((folder / "key.json").read_text(encoding="utf-8"))
    assert key_json["key"] == KEY.to_json()
    assert key_json["digest"] == KEY.digest()
    assert len(chunk_files(tmp_path)) == 3
    manifest = json.loads(chunk_files(tmp_path)[0].with_suffix(".json").read_text(encoding="utf-8"))
    assert {"n_rows", "shape", "sha256", "n_tokens", "n_truncated", "n_empty"} <= set(manifest)
    assert stored.path.parent == folder / "views"
    assert json.loads(stored.path.with_suffix(".json").read_text(encoding="utf-8"))["n_rows"] == 10


def test_second_call_computes_nothing_and_returns_a_read_only_memmap(tmp_path: Path) -> None:
    run(tmp_path)
    fake = FakeEncoder()
    progress: list[tuple[int, bool]] = []

    stored = FeatureStore(tmp_path).get_or_compute(
        KEY, PROMPTS, fake, chunk_size=4, on_chunk=lambda n, result: progress.append((n, result is None))
    )

    assert fake.calls == 0
    assert (stored.computed_chunks, stored.reused_chunks) == (0, 3)
    assert progress == [(4, True), (4, True), (2, True)]
    assert isinstance(stored.features, np.memmap)
    assert not stored.features.flags.writeable
    np.testing.assert_array_equal(stored.features, expected(PROMPTS))
    assert stored.n_empty == 2


def test_on_chunk_reports_every_computed_chunk(tmp_path: Path) -> None:
    progress: list[tuple[int, int]] = []
    FeatureStore(tmp_path).get_or_compute(
        KEY,
        PROMPTS,
        FakeEncoder(),
        chunk_size=4,
        on_chunk=lambda n, result: progress.append((n, result.features.shape[0] if result else -1)),
    )
    assert progress == [(4, 4), (4, 4), (2, 2)]


def test_an_existing_view_is_reused_without_touching_chunks(tmp_path: Path) -> None:
    run(tmp_path)
    for path in (key_dir(tmp_path) / "chunks").iterdir():
        path.unlink()
    fake = FakeEncoder()

    stored = FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, fake, chunk_size=4)

    assert fake.calls == 0
    np.testing.assert_array_equal(stored.features, expected(PROMPTS))


def test_limit_then_full_then_limit_reuses_full_chunks(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)

    first = FakeEncoder()
    limited = store.get_or_compute(KEY, PROMPTS[:6], first, chunk_size=4)
    assert first.calls == 2  # [0:4] and the partial [4:6]

    second = FakeEncoder()
    full = store.get_or_compute(KEY, PROMPTS, second, chunk_size=4)
    assert second.calls == 2  # [4:8] and [8:10]; [0:4] is shared with the limited run
    assert (full.computed_chunks, full.reused_chunks) == (2, 1)

    third = FakeEncoder()
    again = store.get_or_compute(KEY, PROMPTS[:8], third, chunk_size=4)
    assert third.calls == 0  # both full chunks of the full run
    np.testing.assert_array_equal(limited.features, full.features[:6])
    np.testing.assert_array_equal(again.features, full.features[:8])


def test_a_job_commits_chunks_in_any_order_and_assembles_the_same_view(tmp_path: Path) -> None:
    """What the Ray backend does: plan, compute the missing chunks anywhere, commit as they arrive."""
    job = FeatureJob(FeatureStore(tmp_path), KEY, PROMPTS, chunk_size=4)
    assert [(c.index, c.start, c.stop) for c in job.chunks] == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert job.stored_view() is None
    missing = job.missing()
    assert [c.index for c in missing] == [0, 1, 2]
    for chunk in reversed(missing):  # results may stream back in any order
        job.commit(chunk, FakeEncoder()(job.prompts_of(chunk)))
    stored = job.finish()
    assert (stored.computed_chunks, stored.reused_chunks) == (3, 0)
    np.testing.assert_array_equal(stored.features, expected(PROMPTS))
    serial = FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, FakeEncoder(), chunk_size=4)
    assert serial.path == stored.path and serial.computed_chunks == 0


def test_a_job_refuses_to_assemble_before_every_chunk_is_stored(tmp_path: Path) -> None:
    job = FeatureJob(FeatureStore(tmp_path), KEY, PROMPTS, chunk_size=4)
    first = job.missing()[0]
    job.commit(first, FakeEncoder()(job.prompts_of(first)))
    with pytest.raises(EncodeError, match=r"^2 of 3 chunks are not stored yet \(first: chunk 1\)"):
        job.finish()
    resumed = FeatureJob(FeatureStore(tmp_path), KEY, PROMPTS, chunk_size=4)
    assert [c.index for c in resumed.missing()] == [1, 2] and resumed.reused == 1


def test_asking_for_the_missing_chunks_twice_counts_a_reused_chunk_once(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    store.get_or_compute(KEY, PROMPTS[:4], FakeEncoder(), chunk_size=4)  # chunk 0 on disk
    job = FeatureJob(store, KEY, PROMPTS, chunk_size=4)
    assert [c.index for c in job.missing()] == [1, 2]
    assert [c.index for c in job.missing()] == [1, 2]  # a second look (a retry, a progress bar)
    for chunk in job.missing():
        job.commit(chunk, FakeEncoder()(job.prompts_of(chunk)))
    assert job.missing() == []  # the chunks it committed are not "reused"
    stored = job.finish()
    assert (stored.reused_chunks, stored.computed_chunks) == (1, 2)


def test_same_texts_in_another_order_is_another_view(tmp_path: Path) -> None:
    run(tmp_path)
    reordered = PROMPTS[4:8] + PROMPTS[:4] + PROMPTS[8:]
    stored = run(tmp_path, reordered)
    assert (stored.computed_chunks, stored.reused_chunks) == (0, 3)
    np.testing.assert_array_equal(stored.features, expected(reordered))


# --- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("encoder", "other-encoder"),
        ("weights_sha256", "cd" * 32),
        ("view", "raw"),
        ("max_tokens", 512),
        ("dtype", "bfloat16"),
        ("poolings", ("mean",)),
        ("poolings", ("last", "mean")),
        ("layers", (0, 1, 2)),
        ("storage", "float32"),
    ],
)
def test_every_field_changes_the_key_digest(field: str, value: Any) -> None:
    changed = rekey(KEY, **{field: value})
    assert changed.digest() != KEY.digest()
    assert len(changed.digest()) == 64
    int(changed.digest(), 16)


def test_key_digest_is_stable_and_ignores_container_types() -> None:
    loose: list[Any] = [np.int64(16), "float32", ["mean", "last"], [np.int64(0), 1, 2, 4]]
    as_lists = FeatureKey(EncoderIdentity("tiny-test", "ab" * 32, "chat", *loose[:2]), *loose[2:])
    assert as_lists == KEY
    assert as_lists.digest() == KEY.digest()
    assert hash(as_lists) == hash(KEY)
    assert json.dumps(as_lists.to_json())  # plain Python values only


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layers", (2, 1), "'layers' parameter must be a non-empty, strictly increasing"),
        ("layers", (), "'layers' parameter must be"),
        ("layers", (-1, 0), "'layers' parameter must be"),
        ("poolings", "mean", "'poolings' parameter must be a non-empty tuple of distinct names; got 'mean'"),
        ("poolings", ("mean", "mean"), "'poolings' parameter must be"),
        ("max_tokens", 0, "'max_tokens' parameter must be a positive int; got 0 instead"),
        ("max_tokens", True, "'max_tokens' parameter must be a positive int"),
        ("encoder", "", "'encoder' parameter must be a non-empty string"),
    ],
)
def test_bad_keys_are_rejected(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rekey(KEY, **{field: value})


def test_a_key_round_trips_through_its_flat_json() -> None:
    """key.json (and a Ray worker's argument) hold the key flat; from_json reads the same key back."""
    for key in (KEY, rekey(KEY, storage="float32")):
        assert FeatureKey.from_json(json.loads(json.dumps(key.to_json()))) == key
    assert KEY.to_json()["encoder"] == KEY.encoder.name == "tiny-test"
    with pytest.raises(TypeError):
        FeatureKey.from_json({**KEY.to_json(), "pooling": "mean"})  # a field to_json never writes


def test_the_encoder_part_of_a_key_is_an_encoder_identity() -> None:
    message = r"^The 'encoder' parameter must be an EncoderIdentity; got 'tiny-test' instead\.$"
    with pytest.raises(ConfigError, match=message):
        FeatureKey("tiny-test", POOLINGS, LAYERS)  # type: ignore[arg-type]


# --- interrupted runs and damage ------------------------------------------------------------------

KILL_IN_COMPUTE = """
import os, sys
from tests.test_store import KEY, PROMPTS, FakeEncoder
from prefill_router.encode.store import FeatureStore

fake = FakeEncoder()
def compute(prompts):
    if fake.calls == 2:  # two chunks are committed; die while computing the third
        os._exit(1)
    return fake(prompts)
FeatureStore(sys.argv[1]).get_or_compute(KEY, PROMPTS, compute, chunk_size=2)
"""

KILL_BEFORE_MANIFEST = """
import os, sys
import prefill_router.encode.store as store
import prefill_router.encode.store.chunks as chunks
from tests.test_store import KEY, PROMPTS, FakeEncoder

write_json, manifests = chunks._write_json, []
def dying_write_json(path, data):
    if path.parent.name == "chunks":
        if len(manifests) == 2:  # the third chunk's .npy is on disk, its manifest never will be
            os._exit(1)
        manifests.append(path)
    write_json(path, data)
chunks._write_json = dying_write_json  # the chunk manifest writer
store.FeatureStore(sys.argv[1]).get_or_compute(KEY, PROMPTS, FakeEncoder(), chunk_size=2)
"""


@pytest.mark.parametrize(("script", "orphans"), [(KILL_IN_COMPUTE, 0), (KILL_BEFORE_MANIFEST, 1)])
def test_a_killed_run_resumes_where_it_stopped(tmp_path: Path, script: str, orphans: int) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert killed.returncode == 1, killed.stderr
    chunks = key_dir(tmp_path) / "chunks"
    assert len(list(chunks.glob("*.json"))) == 2
    assert len(list(chunks.glob("*.npy"))) == 2 + orphans
    (chunks / ".deadbeef.npy.abc123.tmp").write_bytes(b"half a chunk")  # a temp file left by a kill

    fake = FakeEncoder()
    stored = FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, fake, chunk_size=2)

    assert fake.calls == 3  # chunks 2, 3 and 4 of five; the first two are reused, silently
    assert (stored.computed_chunks, stored.reused_chunks) == (3, 2)
    np.testing.assert_array_equal(stored.features, expected(PROMPTS))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5:] = bytes(b ^ 0xFF for b in data[-5:])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_flip, r"corrupt \(sha256 mismatch\)"),
        (_truncate, r"corrupt \(truncated: 100 of \d+ bytes\)"),
        (Path.unlink, r"is missing"),
    ],
)
def test_a_damaged_chunk_is_detected_and_recomputed(tmp_path: Path, damage: object, message: str) -> None:
    run(tmp_path)
    victim = chunk_files(tmp_path)[0]
    damage(victim)  # type: ignore[operator]
    for path in (key_dir(tmp_path) / "views").iterdir():  # else the view is reused untouched
        path.unlink()
    fake = FakeEncoder()

    with pytest.warns(UserWarning, match=rf"chunk {victim}.*{message}; recomputing it"):
        stored = FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, fake, chunk_size=4)

    assert fake.calls == 1
    assert (stored.computed_chunks, stored.reused_chunks) == (1, 2)
    np.testing.assert_array_equal(stored.features, expected(PROMPTS))


def test_a_damaged_view_is_rebuilt_from_the_chunks(tmp_path: Path) -> None:
    first = run(tmp_path)
    _truncate(first.path)
    fake = FakeEncoder()

    with pytest.warns(UserWarning, match=r"view .*\.npy is damaged; rebuilding it"):
        stored = FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, fake, chunk_size=4)

    assert fake.calls == 0
    np.testing.assert_array_equal(stored.features, expected(PROMPTS))


# --- bad features ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, r"encoder produced NaN features for prompt 5 \(chunk 1, row 1; 1 of 4 prompts"),
        (np.inf, r"encoder produced inf features for prompt 5 \(chunk 1, row 1"),
        (-np.inf, r"encoder produced inf features for prompt 5"),
        (70000.0, r"outside the float16 range for prompt 5 \(chunk 1, row 1\): max \|value\| 70000 > 65504"),
        (-1e6, r"outside the float16 range for prompt 5 .*max \|value\| 1e\+06 > 65504"),
    ],
)
def test_bad_values_raise_and_store_nothing_for_their_chunk(
    tmp_path: Path, value: float, message: str
) -> None:
    store = FeatureStore(tmp_path)
    with pytest.raises(EncodeError, match=message):
        store.get_or_compute(KEY, PROMPTS, FakeEncoder(poison={PROMPTS[5]: value}), chunk_size=4)
    assert len(chunk_files(tmp_path)) == 1  # chunk 0 is kept, chunk 1 never written

    fake = FakeEncoder()
    store.get_or_compute(KEY, PROMPTS, fake, chunk_size=4)
    assert fake.calls == 2


def test_the_float16_maximum_itself_is_stored(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    stored = store.get_or_compute(KEY, PROMPTS, FakeEncoder(poison={PROMPTS[5]: -65504.0}), chunk_size=4)
    assert stored.features[5, 1, 2, 3] == -65504.0


# --- float32 storage ---------------------------------------------------------------------------


def test_float32_storage_keeps_values_float16_cannot_hold(tmp_path: Path) -> None:
    key = rekey(KEY, storage="float32")
    store = FeatureStore(tmp_path)
    stored = store.get_or_compute(key, PROMPTS, FakeEncoder(poison={PROMPTS[5]: 70000.5}), chunk_size=4)
    assert stored.features.dtype == np.float32
    assert stored.features[5, 1, 2, 3] == 70000.5
    chunks = (tmp_path / "features" / key.digest()[:16] / "chunks").glob("*.npy")
    manifests = [json.loads(p.with_suffix(".json").read_text()) for p in chunks]
    assert {m["dtype"] for m in manifests} == {"<f4"}
    fake = FakeEncoder()
    again = FeatureStore(tmp_path).get_or_compute(key, PROMPTS, fake, chunk_size=4)
    assert fake.calls == 0 and again.features[5, 1, 2, 3] == 70000.5  # reloaded, not recomputed


def test_the_storage_dtype_is_part_of_the_key_but_float16_keys_are_unchanged() -> None:
    assert "storage" not in KEY.to_json()  # caches written before the field existed stay valid
    wide = rekey(KEY, storage="float32")
    assert wide.to_json()["storage"] == "float32" and wide.digest() != KEY.digest()
    assert KEY.digest() == FeatureKey.from_json({**KEY.to_json(), "storage": "float16"}).digest()
    # the digest float16 keys had before the field existed (store format 1), computed independently
    import hashlib

    payload = {
        "store_format": 1, "encoder": "tiny-test", "weights_sha256": "ab" * 32, "view": "chat",
        "max_tokens": 16, "dtype": "float32", "poolings": ["mean", "last"], "layers": [0, 1, 2, 4],
    }  # fmt: skip
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert KEY.digest() == hashlib.sha256(canonical.encode("ascii")).hexdigest()
    with pytest.raises(
        ConfigError, match=r"^The 'storage' parameter must be one of float16, float32; got 'int8'"
    ):
        rekey(KEY, storage="int8")


def test_the_float16_overflow_message_says_how_to_keep_the_values(tmp_path: Path) -> None:
    with pytest.raises(EncodeError, match=r"encode with --storage float32 \(Encoder\(storage='float32'\)\)"):
        FeatureStore(tmp_path).get_or_compute(
            KEY, PROMPTS, FakeEncoder(poison={PROMPTS[5]: 7e4}), chunk_size=4
        )


def _returning(*results: ChunkResult) -> object:
    pending = list(results)
    return lambda prompts: pending.pop(0)


def _chunk(shape: tuple[int, ...], **counts: int) -> ChunkResult:
    return ChunkResult(
        np.zeros(shape, dtype=np.float32), **{"n_tokens": 1, "n_truncated": 0, "n_empty": 0, **counts}
    )


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([_chunk((3, 2, 4, 8))], r"shape \(3, 2, 4, 8\) for chunk 0; expected .* = \(4, 2, 4, 'hidden'\)"),
        ([_chunk((4, 1, 4, 8))], r"shape \(4, 1, 4, 8\) for chunk 0"),
        ([_chunk((4, 2, 3, 8))], r"shape \(4, 2, 3, 8\) for chunk 0"),
        ([_chunk((4, 2, 4))], r"shape \(4, 2, 4\) for chunk 0"),
        (
            [_chunk((4, 2, 4, 8)), _chunk((4, 2, 4, 9))],
            r"hidden size 9 for chunk 1, .* hidden size 8; inconsistent",
        ),
        ([_chunk((4, 2, 4, 8), n_truncated=5)], r"n_truncated=5 for chunk 0; expected an int in \[0, 4\]"),
        ([_chunk((4, 2, 4, 8), n_tokens=-1)], r"n_tokens=-1 for chunk 0; expected an int >= 0"),
        (
            [ChunkResult(np.zeros((4, 2, 4, 8), dtype=np.int32), 1, 0, 0)],
            r"float32 numpy features; got int32",
        ),
        ([ChunkResult([[0.0]], 1, 0, 0)], r"float32 numpy features; got list"),  # type: ignore[arg-type]
        (["not a result"], r"compute must return a ChunkResult; got str instead"),
    ],
)
def test_malformed_results_raise(tmp_path: Path, results: list[ChunkResult], message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, _returning(*results), chunk_size=4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prompts", "chunk_size", "message"),
    [
        ([], 4, r"no prompts to encode; got an empty list"),
        ("a prompt", 4, r"prompts must be a sequence of strings; got a single str instead"),
        (["ok", 3], 4, r"prompt 1 must be a str; got int instead"),
        (["ok"], 0, r"The 'chunk_size' parameter must be a positive int; got 0 instead"),
    ],
)
def test_bad_arguments_raise_config_error(
    tmp_path: Path, prompts: object, chunk_size: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        FeatureStore(tmp_path).get_or_compute(KEY, prompts, FakeEncoder(), chunk_size=chunk_size)  # type: ignore[arg-type]


# --- reading --------------------------------------------------------------------------------------


def test_pooled_is_a_memmap_backed_view(tmp_path: Path) -> None:
    stored = run(tmp_path)
    last = stored.pooled("last")
    assert last.shape == (10, 4, HIDDEN)
    assert np.shares_memory(last, stored.features)
    np.testing.assert_array_equal(last, expected(PROMPTS)[:, 1])
    with pytest.raises(ConfigError, match=r"unknown pooling 'max'; the stored poolings are mean, last\."):
        stored.pooled("max")


@pytest.mark.parametrize(
    ("layers", "is_view"), [([2], True), ([0, 2], True), ([4, 1], True), ([0, 1, 4], False)]
)
def test_layer_slice_selects_stored_layers(tmp_path: Path, layers: list[int], is_view: bool) -> None:
    stored = run(tmp_path)
    picked = stored.layer_slice(layers)
    positions = [LAYERS.index(layer) for layer in layers]
    np.testing.assert_array_equal(picked, expected(PROMPTS)[:, :, positions])
    assert np.shares_memory(picked, stored.features) is is_view


def test_layer_slice_errors_name_the_stored_layers(tmp_path: Path) -> None:
    stored = run(tmp_path)
    with pytest.raises(ConfigError, match=r"layer 3 is not stored for this key; stored layers: 0, 1, 2, 4\."):
        stored.layer_slice([0, 3])
    with pytest.raises(ConfigError, match=r"layer_slice needs at least one layer"):
        stored.layer_slice([])
    contiguous = dataclasses.replace(stored, key=dataclasses.replace(KEY, layers=(3, 4, 5, 6)))
    with pytest.raises(ConfigError, match=r"layer 30 is not stored for this key; stored layers: 3-6\."):
        contiguous.layer_slice([30])


# --- housekeeping ---------------------------------------------------------------------------------


def test_clear_one_key_then_all(tmp_path: Path) -> None:
    other = rekey(KEY, view="raw")
    run(tmp_path)
    run(tmp_path, key=other)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "weights.bin").write_bytes(b"not ours")
    store = FeatureStore(tmp_path)
    total = store.size_bytes()

    freed = store.clear(KEY)
    assert 0 < freed < total
    assert store.size_bytes() == total - freed
    assert not key_dir(tmp_path).exists()
    assert store.get_or_compute(other, PROMPTS, FakeEncoder(), chunk_size=4).computed_chunks == 0

    assert store.clear() == total - freed
    assert store.size_bytes() == 0
    assert store.clear() == 0
    assert (tmp_path / "models" / "weights.bin").exists()  # only root/features is the store's


def test_default_cache_dir_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFILL_ROUTER_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "mine"

    monkeypatch.delenv("PREFILL_ROUTER_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "prefill-router"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "prefill-router"
    assert not (tmp_path / "home").exists()  # nothing is created


# --- reuse of a superset key ---------------------------------------------------------------------


def test_a_subset_of_stored_layers_and_poolings_is_read_not_encoded(tmp_path: Path) -> None:
    """A key asking for some of the layers and poolings another key stores (same encoder, weights,
    view, truncation, dtype) slices them out of its chunks; the encoder never runs."""
    full = run(tmp_path)
    subset = dataclasses.replace(KEY, poolings=("last",), layers=(1, 4))
    fake = FakeEncoder()
    stored = FeatureStore(tmp_path).get_or_compute(subset, PROMPTS, fake, chunk_size=4)  # type: ignore[arg-type]

    assert fake.calls == 0
    assert (stored.computed_chunks, stored.reused_chunks) == (0, 3)
    np.testing.assert_array_equal(stored.features, np.asarray(full.features)[:, [1]][:, :, [1, 3]])
    assert (stored.n_tokens, stored.n_truncated, stored.n_empty) == (full.n_tokens, full.n_truncated, 2)
    job = FeatureJob(FeatureStore(tmp_path), dataclasses.replace(subset, layers=(0, 2)), PROMPTS, 4)
    assert job.missing() == [] and job.reused_from_superset == 3  # the Ray path reuses it too


@pytest.mark.parametrize(
    "change",
    [
        {"dtype": "bfloat16"},
        {"max_tokens": 8},
        {"view": "raw"},
        {"weights_sha256": "cd" * 32},
        {"storage": "float32"},
        {"layers": (0, 1, 2, 3)},
    ],
)
def test_a_key_that_is_not_a_subset_is_encoded(tmp_path: Path, change: dict[str, Any]) -> None:
    run(tmp_path)
    other = rekey(KEY, **change)
    fake = FakeEncoder()
    FeatureStore(tmp_path).get_or_compute(other, PROMPTS, fake, chunk_size=4)  # type: ignore[arg-type]
    assert fake.calls == 3


def test_a_damaged_superset_chunk_is_encoded_again(tmp_path: Path) -> None:
    run(tmp_path)
    damaged = chunk_files(tmp_path)[0]
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\0" * 8)
    fake = FakeEncoder()

    def layer_2(prompts: Sequence[str]) -> ChunkResult:
        full = fake(prompts)
        return dataclasses.replace(full, features=np.ascontiguousarray(full.features[:, :, [2]]))

    with pytest.warns(UserWarning, match="sha256 mismatch"):
        stored = FeatureStore(tmp_path).get_or_compute(
            dataclasses.replace(KEY, layers=(2,)), PROMPTS, layer_2, chunk_size=4
        )
    assert fake.calls == 1 and (stored.computed_chunks, stored.reused_chunks) == (1, 2)
    np.testing.assert_array_equal(stored.features, expected(PROMPTS)[:, :, [2]])


# --- the on-disk format is pinned -----------------------------------------------------------------

# Digests and file hashes as the store wrote them before it became a package (issue 18, item 4):
# computed with that code (commit e5cee0b) by this very test. A change here means every cache
# under ~/.cache/prefill-router would be missed (or misread): bump STORE_FORMAT_VERSION instead.
PINNED_DIGESTS = {
    "float16": "22b6a15929643de3b4ca5df60f2add85da99cb4717fd924f0d3a5a8d8c279110",
    "float32": "75cf9b61128b0da9fe8070771d85807c55fddbeb04a14a3f10f6ff3de619e9c4",
}
PINNED_FILES = {
    "float16": {
        "chunks/02590e2265388dc1e300e8b6ac30de5bff66fec006fe316d54ea42709a4fb2c7.json": "1b2b52732b1cf5f7",
        "chunks/02590e2265388dc1e300e8b6ac30de5bff66fec006fe316d54ea42709a4fb2c7.npy": "c8d04c642c403db5",
        "chunks/2dc7857a2c886e61833831aacc06edb3563a0f50a7133781a8d15c018dbd27cf.json": "ea12d3740fe4c4df",
        "chunks/2dc7857a2c886e61833831aacc06edb3563a0f50a7133781a8d15c018dbd27cf.npy": "96048bc6ffb62fed",
        "chunks/75eac070f568242c8d8914484e63bf787b29e4926cc1705219d309eb3cb54803.json": "c9743a6917e34d57",
        "chunks/75eac070f568242c8d8914484e63bf787b29e4926cc1705219d309eb3cb54803.npy": "4f7374fa33db63c4",
        "key.json": "0e01bfe1948019cf",
        "views/75c3c2705f2ca367a115dca199c841d37b97e266ee38351f6dd2f231435c1b1b.json": "2bef4955db5afa83",
        "views/75c3c2705f2ca367a115dca199c841d37b97e266ee38351f6dd2f231435c1b1b.npy": "dfd1dd327b7a3b2b",
    },
    "float32": {
        "chunks/2d39b812415f904cd33722a4cb3ee8a4d0af9075eebeeadf85a3d5888e7d2871.json": "a146f9e2eba60204",
        "chunks/2d39b812415f904cd33722a4cb3ee8a4d0af9075eebeeadf85a3d5888e7d2871.npy": "1222358410b31774",
        "chunks/529921b7d491de27cfa9f8a3651b8e718c71fb7e61f4a74b003bff0bc52f838f.json": "53165e288a8b1737",
        "chunks/529921b7d491de27cfa9f8a3651b8e718c71fb7e61f4a74b003bff0bc52f838f.npy": "5c13b047e58daa1c",
        "chunks/fc63440dafd41c6ae95df3cf2336765e4ea45f2556c9d7e4b32e077bff9fcb1d.json": "b9661d940807f5a9",
        "chunks/fc63440dafd41c6ae95df3cf2336765e4ea45f2556c9d7e4b32e077bff9fcb1d.npy": "8bd4f01d649ae025",
        "key.json": "16dcb2c3f2b412c5",
        "views/a72b487a03e32bf6a78b50bf1f1f2ffc5daa6e2eb42d3e0d1747985256c2f070.json": "b57116dddaf603c9",
        "views/a72b487a03e32bf6a78b50bf1f1f2ffc5daa6e2eb42d3e0d1747985256c2f070.npy": "784166ffa812f8d7",
    },
}


def exact_features(prompts: Sequence[str]) -> ChunkResult:
    """Features exactly representable in float16 (no random draws), so the bytes are portable."""
    lengths = np.array([len(p) for p in prompts], dtype=np.float32)[:, None, None, None]
    features = lengths + np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3) / 4  # (n, 2, 2, 3)
    return ChunkResult(features, sum(len(p) for p in prompts), 0, sum(p == "" for p in prompts))


@pytest.mark.parametrize("storage", ["float16", "float32"])
def test_keys_paths_and_bytes_are_those_existing_caches_hold(tmp_path: Path, storage: str) -> None:
    """A cache written before a refactor is still hit: same key digest, same file names, same bytes."""
    import hashlib

    key = FeatureKey(
        EncoderIdentity("pin-encoder", "ab" * 32, "chat", 512, "float32", storage), ("mean", "last"), (0, 3)
    )
    prompts = ["", "hi", "naïve café ☕", "What is 2+2?", "\ud800 lone"]  # a lone surrogate hashes too
    FeatureStore(tmp_path).get_or_compute(key, prompts, exact_features, chunk_size=2)
    digest, files = PINNED_DIGESTS[storage], PINNED_FILES[storage]
    assert key.digest() == digest
    folder = tmp_path / "features" / digest[:16]
    found = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name == ".lock":
            continue
        data = path.read_bytes()
        if path.parent.name == "views" and path.suffix == ".json":  # its file_stamp is this machine's
            manifest = json.loads(data)
            del manifest["file_stamp"]
            data = json.dumps(manifest, sort_keys=True).encode()
        found[path.relative_to(folder).as_posix()] = hashlib.sha256(data).hexdigest()[:16]
    assert found == files
    again = FeatureStore(tmp_path).get_or_compute(key, prompts, FakeEncoder(), chunk_size=2)  # type: ignore[arg-type]
    assert again.computed_chunks == 0
    np.testing.assert_array_equal(again.features, exact_features(prompts).features.astype(key.disk_dtype))
