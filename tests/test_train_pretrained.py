"""A pretrained routing trunk (train/pretrained.py) and `fit --init`, on a planted problem."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from prefill_router import Router
from prefill_router.data.dataset import RoutingDataset, TargetInfo
from prefill_router.errors import ConfigError
from prefill_router.train import (
    EncoderIdentity,
    LayerFeatures,
    NetSettings,
    TrainSettings,
    fit_router,
)
from prefill_router.train.net import initial_weights
from prefill_router.train.pretrained import (
    initial_from_trunk,
    known_targets,
    load_trunk,
    pooled_dataset,
    pretrain_trunk,
    shipped_trunk_path,
)

HIDDEN = 12
MIXING = np.random.default_rng(7).normal(size=(4, HIDDEN))
ENCODER = EncoderIdentity("synthetic-encoder", "0" * 64, "chat", 512, "float32")
SETTINGS = TrainSettings(pca_k=8, seeds=3, keep=2, net=NetSettings(max_epochs=80, patience=10))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(
    names: tuple[str, ...], factors: tuple[int, ...], n: int, seed: int
) -> tuple[RoutingDataset, LayerFeatures]:
    """Target j is right when latent factor ``factors[j]`` is high; layer 1 holds the 4 factors."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    x = rng.normal(size=(n, 1, 2, HIDDEN)).astype(np.float32)
    x[:, 0, 1] = 0.3 * x[:, 0, 1] + z @ MIXING
    labels = np.stack([(2 * z[:, f] + rng.logistic(size=n) > 0) for f in factors], axis=1).astype(float)
    targets = tuple(TargetInfo(name, 0.1, 0.3) for name in names)
    ids, prompts = [f"p{seed}-{i}" for i in range(n)], [f"prompt {seed}-{i}" for i in range(n)]
    return RoutingDataset(ids, prompts, [None] * n, [None] * n, labels, targets), LayerFeatures(
        x, ("mean",), (0, 1)
    )


@pytest.fixture(scope="module")
def trunk_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trunk pretrained on two "datasets" whose targets follow factors 0-2 (factor 3 unseen)."""
    first, f1 = planted(("alpha", "beta"), (0, 1), 1500, seed=1)
    second, f2 = planted(("beta", "gamma"), (1, 2), 1500, seed=2)
    parts = [("one", first, [f1]), ("two", second, [f2])]
    trunk = pretrain_trunk(parts, [ENCODER], [(0, "mean", (1,))], SETTINGS)
    assert trunk.calibration is None and trunk.info["pretrained"]["heads"] == 4
    return trunk.save(tmp_path_factory.mktemp("trunk") / "trunk")


def test_a_pooled_dataset_has_one_head_per_dataset_and_target() -> None:
    first, _ = planted(("alpha", "beta"), (0, 1), 10, seed=1)
    second, _ = planted(("beta",), (1,), 5, seed=2)
    pooled = pooled_dataset([("one", first), ("two", second)])
    assert pooled.target_names == ["one/alpha", "one/beta", "two/beta"]
    assert pooled.n_prompts == 15 and pooled.prompt_ids[10] == "two:p2-0"
    assert np.isnan(pooled.labels[:10, 2]).all() and np.isnan(pooled.labels[10:, :2]).all()
    assert np.array_equal(pooled.labels[10:, 2], second.labels[:, 0])


def test_the_trunk_is_a_router_whose_heads_name_their_dataset(trunk_path: Path) -> None:
    trunk = load_trunk(str(trunk_path))
    assert trunk.targets == ("one/alpha", "one/beta", "two/beta", "two/gamma")
    assert known_targets(trunk) == {"alpha": [0], "beta": [1, 2], "gamma": [3]}


def test_initial_weights_copy_the_trunk_and_the_heads_of_known_targets(trunk_path: Path) -> None:
    trunk = load_trunk(str(trunk_path))
    d_in = trunk.transform.n_features
    seeds = [0, 1, 2]
    initial = initial_from_trunk(trunk, ["beta", "delta"], SETTINGS.net, seeds)
    members = [s % trunk.ensemble.n_members for s in range(3)]
    assert np.array_equal(initial["w1"], trunk.ensemble.w1[members])
    assert np.array_equal(initial["b2"], trunk.ensemble.b2[members])
    # "beta" was seen in both datasets: its head starts from the mean of the two
    expected = trunk.ensemble.w3[members][:, :, [1, 2]].mean(axis=2)
    np.testing.assert_allclose(initial["w3"][:, :, 0], expected)
    # "delta" is new: without labels to probe with, a fresh head, as a random init would give it
    fresh = initial_weights(d_in, 2, SETTINGS.net, seeds)
    assert np.array_equal(initial["w3"][:, :, 1], fresh["w3"][:, :, 1])
    # with labels, its head is a logistic regression on the frozen trunk's outputs
    small, feats = planted(("beta", "delta"), (1, 3), 300, seed=5)
    x = trunk.transform.transform(feats)
    probe = (x[:200], small.labels[:200], x[200:], small.labels[200:])
    probed = initial_from_trunk(trunk, ["beta", "delta"], SETTINGS.net, seeds, probe)
    assert np.array_equal(probed["w3"][:, :, 0], initial["w3"][:, :, 0])  # known heads untouched
    h = trunk.ensemble.trunk(x[200:])[members[0]]
    logits = h @ probed["w3"][0][:, 1] + probed["b3"][0][1]
    assert roc_auc_score(small.labels[200:, 1], logits) > 0.7  # the probed head already fits


def test_fit_from_the_trunk_reads_its_blocks_and_learns_a_new_target_from_few_rows(trunk_path: Path) -> None:
    # a new pool: a known target and a new one that follows a factor the trunk has seen (gamma's)
    names = ("alpha", "delta")
    small, feats = planted(names, (0, 2), 120, seed=3)
    fresh, fresh_feats = planted(names, (0, 2), 2000, seed=4)
    scores = {}
    for init in ("random", str(trunk_path)):
        router, report = fit_router(small, feats, ENCODER, replace(SETTINGS, init=init))
        p = router.predict_proba_features(fresh_feats)
        scores[init] = [roc_auc_score(fresh.labels[:, j], p[:, j]) for j in range(2)]
    pretrained = Router.load(trunk_path, check_encoder=False)
    router, report = fit_router(small, feats, ENCODER, replace(SETTINGS, init=str(trunk_path)))
    assert [b.name for b in router.transform.blocks] == [b.name for b in pretrained.transform.blocks]
    assert np.array_equal(router.transform.blocks[0].components, pretrained.transform.blocks[0].components)
    assert report.blocks == {"alpha": ["mean:L1"], "delta": ["mean:L1"]}
    assert router.info["settings"]["init"] == str(trunk_path)
    # 120 rows: the pretrained trunk beats random weights on both targets
    assert all(a > b for a, b in zip(scores[str(trunk_path)], scores["random"], strict=True)), scores


def test_a_trunk_of_other_encoders_is_refused(trunk_path: Path) -> None:
    small, feats = planted(("alpha",), (0,), 100, seed=3)
    other = replace(ENCODER, dtype="bfloat16")
    with pytest.raises(
        ConfigError, match=r"^the pretrained trunk reads the features of synthetic-encoder \(float32\)"
    ):
        fit_router(small, feats, other, replace(SETTINGS, init=str(trunk_path)))


def test_an_init_that_is_no_trunk(tmp_path: Path) -> None:
    small, feats = planted(("alpha",), (0,), 100, seed=3)
    with pytest.raises(
        ConfigError, match=r"The 'init' setting must be one of random, pretrained or a trunk folder"
    ):
        fit_router(small, feats, ENCODER, replace(SETTINGS, init=str(tmp_path / "nothing")))


def test_the_shipped_trunk_knows_the_three_datasets_and_is_small() -> None:
    trunk = load_trunk("pretrained")  # the package's own; built by scripts/build_pretrained_trunk.py
    known = known_targets(trunk)
    bundled = RoutingDataset.load("bundled")
    assert set(bundled.target_names) <= set(known)  # every bundled target has a pretrained head
    assert {"gpt-4-1106-preview", "gemini-1.5-pro-002"} <= set(known)  # RouteLLM's and MMLU-Pro's
    assert [d["dataset"] for d in trunk.info["pretrained"]["datasets"]] == [
        "llmrouter",
        "mmlu-pro",
        "routellm",
    ]
    assert trunk.encoder_identity.name == "smollm2-135m" and trunk.calibration is None
    assert all(np.isfinite(w).all() for w in (trunk.ensemble.w1, trunk.ensemble.w2, trunk.ensemble.w3))
    assert sum(f.stat().st_size for f in shipped_trunk_path().iterdir()) < 2_000_000
