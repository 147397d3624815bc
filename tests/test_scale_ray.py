"""Scale-out on a real local Ray instance with 2 workers: distributed encoding and batch routing.

The encoder is the tiny random-weight llama with one poisoned character ("☃"): its tokens have NaN
embeddings, so the real encoder fails on exactly the prompts that contain it.
Marked ``ray``: `make test` runs these (it installs the ray extra); plain `pytest` deselects them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from prefill_router import Router
from prefill_router._ray import plan_workers
from prefill_router.cli import run
from prefill_router.data.dataset import RoutingDataset
from prefill_router.encode import Encoder, FeatureStore, extract_features, feature_key
from prefill_router.encode.distributed import extract_features_ray
from prefill_router.encode.store import FeatureJob
from prefill_router.errors import EncodeError
from prefill_router.policy import RoutePlan
from prefill_router.route_batch import route_prompts_ray
from tests.serve_support import build_tiny_router, load_tiny_router
from tests.test_route import topics
from tests.tiny_models import build_tiny_llama

ray = pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")
pytestmark = pytest.mark.ray

POISON = "☃"
FLOAT16_TOL = {"rtol": 2**-10, "atol": 1e-3}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A local Ray instance with 2 CPUs: two 1-CPU workers."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "cache"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "poisoned-llama", poison=POISON)


@pytest.fixture(scope="module")
def encoder(model: Path, cache: Path) -> Encoder:
    return Encoder(str(model), dtype="float32", threads=1, cache_dir=cache)


def prompts(n: int) -> list[str]:
    return topics(n).prompts.tolist()


def encode_on_ray(
    cluster: Any, encoder: Encoder, texts: list[str], store: FeatureStore, cache: Path, **kw: Any
) -> Any:
    plan = plan_workers(cluster, workers=2, worker_cpus=1)
    return extract_features_ray(cluster, encoder, texts, store, plan, chunk_size=8, cache_dir=cache, **kw)


# ================================================================================== encoding
def test_two_workers_store_the_features_of_the_single_process_path(
    cluster: Any, encoder: Encoder, cache: Path, tmp_path: Path
) -> None:
    texts = prompts(40)
    ray_store = FeatureStore(tmp_path / "ray")
    on_ray = encode_on_ray(cluster, encoder, texts, ray_store, cache)
    local = extract_features(encoder, texts, FeatureStore(tmp_path / "local"), chunk_size=8)
    assert on_ray.computed_chunks == 5 and on_ray.reused_chunks == 0
    assert on_ray.features.shape == local.features.shape
    np.testing.assert_allclose(np.asarray(on_ray.features, np.float32), local.features, **FLOAT16_TOL)
    assert (on_ray.n_tokens, on_ray.n_truncated, on_ray.n_empty) == (
        local.n_tokens, local.n_truncated, local.n_empty,
    )  # fmt: skip
    # the same files: a single-process run over the Ray-written store computes nothing
    again = extract_features(encoder, texts[:24], ray_store, chunk_size=8)
    assert (again.computed_chunks, again.reused_chunks) == (0, 3)


def test_an_interrupted_run_resumes_without_recomputing_finished_chunks(
    cluster: Any, encoder: Encoder, cache: Path, tmp_path: Path
) -> None:
    texts, store = prompts(48), FeatureStore(tmp_path)
    committed: list[int] = []

    def interrupt_after_two(n_prompts: int, n_tokens: int) -> None:
        committed.append(n_prompts)
        if len(committed) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run

    with pytest.raises(KeyboardInterrupt):
        encode_on_ray(cluster, encoder, texts, store, cache, on_progress=interrupt_after_two)
    finished = sorted(store.features_dir.rglob("chunks/*.npy"))
    assert len(finished) == 2
    written = {path: path.stat().st_mtime_ns for path in finished}

    resumed = encode_on_ray(cluster, encoder, texts, store, cache)
    assert (resumed.computed_chunks, resumed.reused_chunks) == (4, 2)
    assert {path: path.stat().st_mtime_ns for path in finished} == written  # not rewritten
    local = extract_features(encoder, texts, FeatureStore(tmp_path / "local"), chunk_size=8)
    np.testing.assert_allclose(np.asarray(resumed.features, np.float32), local.features, **FLOAT16_TOL)


def test_a_prompt_the_encoder_fails_on_is_reported_and_the_other_chunks_are_stored(
    cluster: Any, encoder: Encoder, cache: Path, tmp_path: Path
) -> None:
    texts, store = prompts(24), FeatureStore(tmp_path)
    texts[13] = f"snow {POISON} man"
    ids = [f"q{i}" for i in range(len(texts))]
    with pytest.raises(EncodeError, match=r"^1 prompt could not be encoded.*other 2 of 3 chunks were") as err:
        encode_on_ray(cluster, encoder, texts, store, cache, prompt_ids=ids)
    assert "prompt 13 (id 'q13'): EncodeError" in str(err.value)
    assert "NaN" in str(err.value)
    job = FeatureJob(store, feature_key(encoder, tuple(range(5)), ("mean", "last")), texts, chunk_size=8)
    assert [chunk.index for chunk in job.missing()] == [1]  # only the bad prompt's chunk


def test_encode_command_with_ray_fills_the_same_cache(
    cluster: Any, model: Path, cache: Path, tmp_path: Path
) -> None:
    data = topics(30).save(tmp_path / "topics.parquet")
    common = ["encode", str(data), "--encoder", str(model), "--dtype", "float32", "--cache", str(cache)]
    assert run([*common, "--ray", "--workers", "2", "--worker-cpus", "1"]) == 0
    store = FeatureStore(cache)
    encoder = Encoder(str(model), dtype="float32", threads=1, cache_dir=cache)
    again = extract_features(encoder, topics(30).prompts.tolist(), store)
    assert again.computed_chunks == 0


# ================================================================================== routing
@pytest.fixture(scope="module")
def router_path(model: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_router(model, cache, tmp_path_factory.mktemp("router"))


@pytest.fixture(scope="module")
def router(router_path: Path, model: Path, cache: Path) -> Router:
    loaded: Router = load_tiny_router(router_path, model, cache)
    return loaded


def prompt_file(tmp_path: Path, kind: str = "parquet") -> tuple[Path, list[str]]:
    texts = [*prompts(30)[10:], f"a {POISON} prompt", "   "]
    frame = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(len(texts))], "prompt": texts})
    path = tmp_path / f"prompts.{kind}"
    if kind == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    return path, texts


def test_batch_routing_on_ray_equals_per_prompt_routing(
    cluster: Any, router: Router, router_path: Path, cache: Path, tmp_path: Path
) -> None:
    path, texts = prompt_file(tmp_path)
    choice = RoutePlan("budget", 0.0)
    plan = plan_workers(cluster, workers=2, worker_cpus=1)
    total, tables = route_prompts_ray(cluster, router_path, path, choice, plan, batch_size=4, cache_dir=cache)
    out = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    assert total == len(texts) and len(out) == len(texts)
    assert out["prompt_id"].tolist() == [f"p{i}" for i in range(len(texts))]
    for row, text in zip(out.itertuples(index=False), texts[:-2], strict=False):
        one = router.route(text, policy="budget", knob=0.0)
        assert row.target == one.target and pd.isna(row.error)
        assert row.cost_usd == pytest.approx(one.costs_usd[one.target], rel=1e-12)
        got = out.loc[out["prompt_id"] == row.prompt_id, [f"p_{n}" for n in router.targets]].to_numpy()[0]
        np.testing.assert_allclose(got, [one.probabilities[n] for n in router.targets], atol=1e-6)
    assert out["target"].nunique() == 3  # the tiny router sends each topic to its own target
    poisoned, empty = out.iloc[-2], out.iloc[-1]
    assert pd.isna(poisoned["target"]) and "NaN" in poisoned["error"]
    assert pd.isna(empty["target"]) and empty["error"] == "empty prompt"


def test_route_batch_command_on_ray_writes_what_the_local_run_writes(
    cluster: Any, router_path: Path, cache: Path, tmp_path: Path
) -> None:
    path, texts = prompt_file(tmp_path, "jsonl")
    common = ["route-batch", str(router_path), str(path), "--tolerance", "0.05", "--cache", str(cache)]
    assert run([*common, "-o", str(tmp_path / "local.parquet")]) == 0
    assert (
        run([*common, "-o", str(tmp_path / "ray.parquet"), "--ray", "--workers", "2", "--worker-cpus", "1"])
        == 0
    )
    local, on_ray = (pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("local", "ray"))
    assert on_ray["prompt_id"].tolist() == local["prompt_id"].tolist() == [f"p{i}" for i in range(len(texts))]
    assert on_ray["target"].tolist() == local["target"].tolist()
    p_columns = [c for c in local.columns if c.startswith("p_")]
    np.testing.assert_allclose(on_ray[p_columns].to_numpy(float), local[p_columns].to_numpy(float), atol=1e-6)
    assert on_ray["error"].notna().sum() == 2


def test_route_batch_with_ray_numbers_prompts_of_shards_without_ids(
    cluster: Any, router_path: Path, cache: Path, tmp_path: Path
) -> None:
    path = tmp_path / "shards"
    path.mkdir()
    texts = prompts(12)
    pd.DataFrame({"prompt": texts[5:]}).to_csv(path / "part-1.csv", index=False)
    pd.DataFrame({"prompt": texts[:5]}).to_csv(path / "part-0.csv", index=False)
    out = tmp_path / "decisions.csv"
    args = [
        "route-batch",
        str(router_path),
        str(path),
        "-o",
        str(out),
        "--batch-size",
        "5",
        "--ray",
        "--cache",
        str(cache),
    ]
    assert run(args) == 0
    decisions = pd.read_csv(out, dtype={"prompt_id": str})
    assert decisions["prompt_id"].tolist() == [str(i) for i in range(12)]
    assert decisions["target"].notna().all()
    local = tmp_path / "local.csv"
    assert run([*args[:3], "-o", str(local), "--cache", str(cache)]) == 0
    expected = pd.read_csv(local, dtype={"prompt_id": str})
    assert expected[["prompt_id", "target"]].equals(decisions[["prompt_id", "target"]])
    p_columns = [c for c in expected.columns if c.startswith("p_")]
    np.testing.assert_allclose(decisions[p_columns], expected[p_columns], atol=1e-6)


@pytest.mark.slow
def test_real_smollm2_features_on_ray_equal_the_single_process_path(cluster: Any, tmp_path: Path) -> None:
    """The real encoder (bfloat16, every layer) on 2 Ray workers against the single process."""
    texts = RoutingDataset.load("bundled").prompts.tolist()[:24]
    encoder = Encoder("smollm2-135m", threads=1)
    plan = plan_workers(cluster, workers=2, worker_cpus=1)
    on_ray = extract_features_ray(cluster, encoder, texts, FeatureStore(tmp_path / "ray"), plan, chunk_size=8)
    local = extract_features(encoder, texts, FeatureStore(tmp_path / "local"), chunk_size=8)
    assert on_ray.features.shape == (24, 2, 31, 576) and on_ray.computed_chunks == 3
    np.testing.assert_allclose(np.asarray(on_ray.features, np.float32), local.features, **FLOAT16_TOL)
