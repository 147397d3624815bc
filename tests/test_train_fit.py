"""Fitting a router (train/fit.py) on synthetic features with a planted signal."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from prefill_router import Router
from prefill_router.data.dataset import RoutingDataset, TargetInfo
from prefill_router.errors import ConfigError, DataError, UnknownTargetError
from prefill_router.train import (
    EncoderIdentity,
    FitReport,
    LayerFeatures,
    NetSettings,
    TrainSettings,
    add_target,
    fit_router,
    validation_split,
)
from prefill_router.train.fit import MIN_PER_CLASS, MIN_ROWS, training_splits

NAMES = ("gemma-2b", "llama-8b", "qwen-72b")
HIDDEN = 16
#: How the 3 latent factors enter layer 1; fixed, so fresh samples pose the same problem.
MIXING = np.random.default_rng(1234).normal(size=(3, HIDDEN))
SYNTHETIC = EncoderIdentity("synthetic-encoder", "0" * 64, "chat", 512, "float32")
FAST = TrainSettings(
    layers=(1,), pca_k=8, seeds=3, keep=2, net=NetSettings(max_epochs=60, patience=10), calibration_share=0.0
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(n: int = 600, seed: int = 0, nan_share: float = 0.0) -> tuple[RoutingDataset, LayerFeatures]:
    """(N, 1 pooling, 3 layers, 16) features; target j is correct when latent factor j is high.

    Layer 1 holds the three latent factors (mixed into its 16 dims) plus a little noise; layers 0
    and 2 are pure noise.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 3, HIDDEN)).astype(np.float32)
    z = rng.normal(size=(n, 3))
    x[:, 0, 1] = 0.3 * x[:, 0, 1] + z @ MIXING
    labels = (3 * z + 0.5 * rng.logistic(size=z.shape) > 0).astype(np.float64)
    if nan_share:
        labels[rng.random(labels.shape) < nan_share] = np.nan
    ids, prompts = [f"p{i}" for i in range(n)], [f"synthetic prompt {seed}-{i}" for i in range(n)]
    targets = tuple(TargetInfo(name, 0.1 * (j + 1), 0.3 * (j + 1)) for j, name in enumerate(NAMES))
    dataset = RoutingDataset(ids, prompts, [None] * n, ["train"] * n, labels, targets)
    return dataset, LayerFeatures(x, ("mean",), (0, 1, 2))


def held_out_auc(router: Router, seed: int = 99) -> list[float]:
    """Per-target ROC-AUC of ``router`` on a fresh sample of the same planted problem."""
    dataset, feats = planted(seed=seed)
    p = router.predict_proba_features(feats)
    return [roc_auc_score(dataset.labels[:, j], p[:, j]) for j in range(p.shape[1])]


@pytest.fixture(scope="module")
def fitted() -> tuple[Router, FitReport]:
    dataset, feats = planted()
    return fit_router(dataset, feats, SYNTHETIC, FAST)


@pytest.fixture(scope="module")
def two_target_router() -> Router:
    dataset, feats = planted()
    router, _ = fit_router(dataset.select(targets=list(NAMES[:2])), feats, SYNTHETIC, FAST)
    return router


# ---------------------------------------------------------------- the happy path
def test_a_planted_signal_is_learned(fitted: tuple[Router, FitReport]) -> None:
    router, report = fitted
    assert router.targets == NAMES
    assert all(report.val_auc[name] > 0.9 for name in NAMES), report.val_auc
    assert all(auc > 0.9 for auc in held_out_auc(router))


def test_the_report_describes_the_fit(fitted: tuple[Router, FitReport]) -> None:
    router, report = fitted
    r = report.to_json()
    assert r["n_fit"] + r["n_val"] == 600 and 0.1 < r["n_val"] / 600 < 0.2
    assert r["layer_choice"] == {name: [1] for name in NAMES}
    assert len(r["member_val_loss"]) == 3 and len(r["kept_members"]) == 2
    # the kept members are the ones with the lowest validation loss
    assert sorted(r["kept_members"]) == sorted(np.argsort(r["member_val_loss"])[:2].tolist())
    assert router.ensemble.n_members == 2 and router.ensemble.n_targets == 3
    assert list(r["temperatures"]) == list(NAMES)
    assert list(r["temperatures"].values()) == pytest.approx(router.temperatures.tolist())
    assert set(r["seconds"]) == {"probe", "transform", "train", "calibrate"}
    assert router.info["settings"]["pca_k"] == 8 and router.info["training"]["n_rows"] == 600
    assert router.transform.layers == (1,) and router.transform.n_features == 8


def test_calibration_does_not_hurt(fitted: tuple[Router, FitReport]) -> None:
    _, report = fitted
    for name in NAMES:
        assert report.ece_after[name] <= report.ece_before[name] + 0.02


def test_target_prices_travel_with_the_router(fitted: tuple[Router, FitReport]) -> None:
    router, _ = fitted
    assert [t.input_usd_per_mtok for t in router.target_info] == pytest.approx([0.1, 0.2, 0.3])
    assert router.target_index("qwen-72b") == 2
    with pytest.raises(UnknownTargetError, match=r"unknown target 'qwen-7b'\. Did you mean 'qwen-72b'\?"):
        router.target_index("qwen-7b")


def test_fisher_picks_the_layer_that_holds_the_signal() -> None:
    dataset, feats = planted()
    settings = TrainSettings(layers="fisher", pca_k=8, seeds=2, keep=1, net=NetSettings(max_epochs=30))
    router, report = fit_router(dataset, feats, SYNTHETIC, settings)
    assert report.layer_choice == {name: [1] for name in NAMES}
    assert router.transform.layers == (1,) and len(router.transform.blocks) == 1


def test_all_mean_uses_every_layer() -> None:
    dataset, feats = planted(n=200)
    settings = TrainSettings(layers="all-mean", pca_k=8, seeds=1, keep=1, net=NetSettings(max_epochs=5))
    router, report = fit_router(dataset, feats, SYNTHETIC, settings)
    assert report.layer_choice == {name: [0, 1, 2] for name in NAMES}
    assert [b.name for b in router.transform.blocks] == ["mean:L0+L1+L2"]


def test_missing_labels_do_not_break_training() -> None:
    dataset, feats = planted(nan_share=0.3)
    router, report = fit_router(dataset, feats, SYNTHETIC, FAST)
    assert np.isnan(dataset.labels).mean() == pytest.approx(0.3, abs=0.03)
    assert all(report.val_auc[name] > 0.9 for name in NAMES), report.val_auc
    assert all(np.isfinite(v) for v in report.member_val_loss)
    assert np.isfinite(router.temperatures).all()
    assert all(auc > 0.9 for auc in held_out_auc(router))


def test_fitting_is_deterministic_for_a_seed(fitted: tuple[Router, FitReport]) -> None:
    router, _ = fitted
    dataset, feats = planted()
    again, _ = fit_router(dataset, feats, SYNTHETIC, FAST)
    other, _ = fit_router(dataset, feats, SYNTHETIC, replace(FAST, seed=1))
    fresh = planted(seed=5)[1]
    assert np.array_equal(router.predict_proba_features(fresh), again.predict_proba_features(fresh))
    assert not np.allclose(router.predict_proba_features(fresh), other.predict_proba_features(fresh))


def test_progress_goes_through_the_stages_in_order() -> None:
    dataset, feats = planted(n=200)
    seen: list[tuple[str, int, int]] = []
    settings = TrainSettings(layers=(1,), pca_k=4, seeds=2, keep=1, net=NetSettings(max_epochs=5))
    fit_router(dataset, feats, SYNTHETIC, settings, on_progress=lambda *args: seen.append(args))
    stages = [stage for stage, _, _ in seen]
    assert stages[:2] == ["probe", "transform"] and stages[-1] == "calibrate"
    train = [(done, total) for stage, done, total in seen if stage == "train"]
    assert train[-1] == (5, 5) and all(total == 5 for _, total in train)
    assert [done for done, _ in train] == sorted(done for done, _ in train)


# ------------------------------------------------------------- validation split
def test_validation_split_keeps_equal_prompts_together() -> None:
    texts = [f"question {i // 3}" for i in range(300)]  # each text three times
    texts = [t.upper() if i % 3 == 1 else t for i, t in enumerate(texts)]  # same text after case-folding
    fit_rows, val_rows = validation_split(texts, 0.15, seed=0)
    groups = np.arange(300) // 3
    assert not set(groups[fit_rows]) & set(groups[val_rows])
    assert np.array_equal(np.sort(np.concatenate([fit_rows, val_rows])), np.arange(300))
    assert list(fit_rows) == sorted(fit_rows) and list(val_rows) == sorted(val_rows)
    assert len(val_rows) == 45  # 15 of the 100 texts


def test_validation_split_is_deterministic_per_seed() -> None:
    texts = [f"question {i}" for i in range(200)]
    first, again = validation_split(texts, 0.15, seed=3), validation_split(texts, 0.15, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], validation_split(texts, 0.15, seed=4)[1])


def test_fit_validates_on_whole_prompt_groups() -> None:
    dataset, feats = planted(n=300)
    texts = ["the same prompt"] * 100 + [f"prompt {i}" for i in range(200)]  # 201 texts
    dataset = RoutingDataset(
        dataset.prompt_ids, texts, dataset.tasks, dataset.splits, dataset.labels, dataset.targets
    )
    settings = TrainSettings(
        layers=(1,), pca_k=4, seeds=1, keep=1, net=NetSettings(max_epochs=3), calibration_share=0.0
    )
    _, report = fit_router(dataset, feats, SYNTHETIC, settings)
    fit_rows, val_rows = validation_split(texts, settings.val_share, settings.seed)
    assert (report.n_fit, report.n_val) == (len(fit_rows), len(val_rows))
    assert report.n_val in (31, 130)  # 31 of 201 texts: the 100 copies go together; 45 = a row split
    assert not {texts[i] for i in fit_rows} & {texts[i] for i in val_rows}


# -------------------------------------------------------------------- bad input
def test_too_few_rows() -> None:
    dataset, feats = planted(n=MIN_ROWS - 1)
    message = rf"^fitting needs at least {MIN_ROWS} training rows; got {MIN_ROWS - 1}$"
    with pytest.raises(DataError, match=message):
        fit_router(dataset, feats, SYNTHETIC, FAST)


def test_features_for_other_rows() -> None:
    dataset, feats = planted(n=100)
    short = LayerFeatures(feats.values[:99], feats.poolings, feats.layers)
    with pytest.raises(DataError, match=r"^99 feature rows for 100 prompts$"):
        fit_router(dataset, short, SYNTHETIC, FAST)


def test_a_target_without_labels_is_named() -> None:
    dataset, feats = planted(n=100)
    labels = dataset.labels.copy()
    labels[:, 1] = np.nan
    dataset = RoutingDataset(
        dataset.prompt_ids, dataset.prompts, dataset.tasks, dataset.splits, labels, dataset.targets
    )
    with pytest.raises(DataError, match=r"^target 'llama-8b' has no labels in the training rows$"):
        fit_router(dataset, feats, SYNTHETIC, FAST)


@pytest.mark.parametrize(("correct", "wrong"), [(100, 0), (96, 4), (MIN_PER_CLASS - 1, 101 - MIN_PER_CLASS)])
def test_a_target_with_too_few_of_one_class_is_named(correct: int, wrong: int) -> None:
    dataset, feats = planted(n=100)
    labels = dataset.labels.copy()
    labels[:, 2] = np.r_[np.ones(correct), np.zeros(wrong)]
    dataset = RoutingDataset(
        dataset.prompt_ids, dataset.prompts, dataset.tasks, dataset.splits, labels, dataset.targets
    )
    message = (
        rf"^target 'qwen-72b' needs at least {MIN_PER_CLASS} correct and {MIN_PER_CLASS} wrong labelled "
        rf"training rows; it has {correct} correct and {wrong} wrong$"
    )
    with pytest.raises(DataError, match=message):
        fit_router(dataset, feats, SYNTHETIC, FAST)


def test_graded_labels_count_as_correct_from_one_half() -> None:
    dataset, feats = planted(n=100)
    labels = dataset.labels.copy()
    labels[:, 0] = np.r_[np.full(97, 0.5), np.full(3, 0.49)]  # 97 correct, 3 wrong
    dataset = RoutingDataset(
        dataset.prompt_ids, dataset.prompts, dataset.tasks, dataset.splits, labels, dataset.targets
    )
    with pytest.raises(DataError, match=r"it has 97 correct and 3 wrong$"):
        fit_router(dataset, feats, SYNTHETIC, FAST)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^'keep' must be between 1 and 'seeds' \(2\); got 3 instead\.$"):
        TrainSettings(seeds=2, keep=3)
    with pytest.raises(ConfigError, match=r"^'keep' must be between 1 and 'seeds' \(2\); got 0 instead\.$"):
        TrainSettings(seeds=2, keep=0)
    with pytest.raises(ConfigError, match=r"^The 'layers' parameter must be one of fisher, auc, all-mean"):
        TrainSettings(layers="best")
    with pytest.raises(ConfigError, match=r"^The 'val_share' parameter must be in \(0, 0\.5\); got 0\.5"):
        TrainSettings(val_share=0.5)


def test_an_explicit_layer_missing_from_the_features() -> None:
    dataset, feats = planted(n=100)
    with pytest.raises(ConfigError, match=r"^layer 7 is not in the features \(layers \[0, 1, 2\]\)$"):
        fit_router(dataset, feats, SYNTHETIC, TrainSettings(layers=(1, 7), seeds=1, keep=1))


def test_a_pooling_missing_from_the_features_is_a_config_error_with_explicit_layers() -> None:
    dataset, feats = planted(n=100)
    settings = TrainSettings(layers=(1,), pooling="last", seeds=1, keep=1)
    with pytest.raises(
        ConfigError, match=r"must be one of the features' poolings \(mean\) or auto / both; got 'last'"
    ):
        fit_router(dataset, feats, SYNTHETIC, settings)


def test_a_pooling_missing_from_the_features_is_a_config_error_with_fisher() -> None:
    dataset, feats = planted(n=100)
    settings = TrainSettings(layers="fisher", pooling="last", seeds=1, keep=1)
    with pytest.raises(ConfigError, match=r"'last'"):
        fit_router(dataset, feats, SYNTHETIC, settings)


# ------------------------------------------------------------------- add_target
@pytest.fixture(scope="module")
def added(two_target_router: Router) -> tuple[Router, FitReport]:
    dataset, feats = planted()
    return add_target(two_target_router, dataset, "qwen-72b", feats, FAST)


def test_add_target_learns_a_new_head_and_leaves_the_others_alone(
    two_target_router: Router, added: tuple[Router, FitReport]
) -> None:
    new, report = added
    assert new.targets == NAMES and two_target_router.targets == NAMES[:2]
    fresh = planted(seed=7)[1]
    before, after = two_target_router.predict_proba_features(fresh), new.predict_proba_features(fresh)
    assert after.shape == (600, 3)
    assert np.array_equal(after[:, :2], before)
    assert report.val_auc["qwen-72b"] > 0.85
    assert held_out_auc(new)[2] > 0.85
    assert new.target_info[2].input_usd_per_mtok == pytest.approx(0.3)
    assert new.info["added_targets"] == [
        {"name": "qwen-72b", "val_auc": report.val_auc["qwen-72b"], "n_rows": 600}
    ]
    assert "added_targets" not in two_target_router.info


def test_add_target_shares_the_trunk(two_target_router: Router, added: tuple[Router, FitReport]) -> None:
    new, _ = added
    old = two_target_router.ensemble
    for name in ("w1", "b1", "w2", "b2"):
        assert np.array_equal(getattr(new.ensemble, name), getattr(old, name))
    assert np.array_equal(new.ensemble.w3[:, :, :2], old.w3)
    assert new.transform.blocks == two_target_router.transform.blocks
    assert new.transform.target_blocks["qwen-72b"] == (0,)


def test_add_target_uses_only_labelled_rows() -> None:
    dataset, feats = planted(nan_share=0.4)
    router, _ = fit_router(dataset.select(targets=list(NAMES[:2])), feats, SYNTHETIC, FAST)
    new, report = add_target(router, dataset, "qwen-72b", feats, FAST)
    labelled = int((~np.isnan(dataset.labels[:, 2])).sum())
    assert report.n_fit + report.n_val == labelled == new.info["added_targets"][0]["n_rows"]
    assert np.isfinite(new.predict_proba_features(feats)).all()


def test_add_target_already_routed(two_target_router: Router) -> None:
    dataset, feats = planted()
    message = r"^target 'llama-8b' is already in the router; fit a new router to retrain it$"
    with pytest.raises(ConfigError, match=message):
        add_target(two_target_router, dataset, "llama-8b", feats, FAST)


def test_add_target_not_in_the_data(two_target_router: Router) -> None:
    dataset, feats = planted()
    with pytest.raises(UnknownTargetError, match=r"unknown target 'qwen-7b'\. Did you mean 'qwen-72b'\?"):
        add_target(two_target_router, dataset, "qwen-7b", feats, FAST)


def test_add_target_with_one_class_is_named(two_target_router: Router) -> None:
    dataset, feats = planted()
    labels = dataset.labels.copy()
    labels[:, 2] = 1.0
    dataset = RoutingDataset(
        dataset.prompt_ids, dataset.prompts, dataset.tasks, dataset.splits, labels, dataset.targets
    )
    with pytest.raises(DataError, match=r"^target 'qwen-72b' needs at least 5 correct and 5 wrong"):
        add_target(two_target_router, dataset, "qwen-72b", feats, FAST)


def test_an_added_router_saves_and_loads(added: tuple[Router, FitReport], tmp_path: Path) -> None:
    new, _ = added
    new.save(tmp_path / "router")
    loaded = Router.load(tmp_path / "router", check_encoder=False)
    fresh = planted(seed=7)[1]
    assert loaded.targets == NAMES
    assert np.array_equal(loaded.predict_proba_features(fresh), new.predict_proba_features(fresh))
    assert loaded.info["added_targets"][0]["name"] == "qwen-72b"


def test_adding_twice_leaves_the_intermediate_router_alone() -> None:
    dataset, feats = planted()
    router, _ = fit_router(dataset.select(targets=[NAMES[0]]), feats, SYNTHETIC, FAST)
    once, _ = add_target(router, dataset, NAMES[1], feats, FAST)
    twice, _ = add_target(once, dataset, NAMES[2], feats, FAST)
    assert [a["name"] for a in twice.info["added_targets"]] == [NAMES[1], NAMES[2]]
    assert [a["name"] for a in once.info["added_targets"]] == [NAMES[1]]


# ------------------------------------------------------- per-target pooling, fused encoders
def two_poolings(n: int = 600, seed: int = 0) -> tuple[RoutingDataset, LayerFeatures]:
    """The planted problem with a second pooling: the mean pooling holds targets 0 and 1 at layer 1,
    the last pooling holds target 2 at layer 2 (everything else is noise)."""
    dataset, feats = planted(n, seed)
    rng = np.random.default_rng(seed + 1)
    z_mean = feats.values[:, 0, 1].copy()
    values = rng.normal(size=(n, 2, 3, HIDDEN)).astype(np.float32)
    labels = dataset.labels
    values[:, 0, 1] = z_mean  # mean:L1 knows all three (as in planted())
    signal = (labels[:, 2] - 0.5)[:, None] * MIXING[2] * 3
    values[:, 1, 2] = 0.3 * values[:, 1, 2] + signal  # last:L2 knows target 2 only, better
    return dataset, LayerFeatures(values, ("mean", "last"), (0, 1, 2))


def test_auto_pooling_picks_the_better_pooling_per_target() -> None:
    dataset, feats = two_poolings()
    settings = replace(FAST, layers="fisher", pooling="auto")
    router, report = fit_router(dataset, feats, SYNTHETIC, settings)
    assert report.blocks[NAMES[0]] == ["mean:L1"] and report.blocks[NAMES[1]] == ["mean:L1"]
    assert report.blocks[NAMES[2]] == ["last:L2"]
    assert sorted(b.name for b in router.transform.blocks) == ["last:L2", "mean:L1"]
    assert [(p["encoder"], p["pooling"]) for p in router.info["probe"]] == [(0, "mean"), (0, "last")]


def test_both_poolings_give_every_target_a_block_of_each() -> None:
    dataset, feats = two_poolings()
    _, report = fit_router(dataset, feats, SYNTHETIC, replace(FAST, layers="fisher", pooling="both"))
    assert report.blocks[NAMES[2]] == ["mean:L1", "last:L2"]
    assert all(len(blocks) == 2 for blocks in report.blocks.values())


def test_a_depth_tolerance_moves_the_deep_blocks_up() -> None:
    """The last pooling's best layer for target 2 is L2; a tolerance that lets the router stop at
    L1 reads every block at L1 or above, and the settings record it."""
    dataset, feats = two_poolings()
    deep, _ = fit_router(dataset, feats, SYNTHETIC, replace(FAST, layers="fisher", pooling="both"))
    assert max(max(b.layers) for b in deep.transform.blocks) == 2
    settings = replace(FAST, layers="fisher", pooling="both", depth_tolerance=0.4)
    shallow, report = fit_router(dataset, feats, SYNTHETIC, settings)
    assert report.blocks[NAMES[2]] == ["mean:L1", "last:L1"]
    assert report.blocks[NAMES[0]][0] == "mean:L1"  # the best layer, already shallow, is kept
    assert TrainSettings.from_json(shallow.info["settings"]).depth_tolerance == 0.4


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_a_depth_tolerance_outside_0_1_is_refused(value: float) -> None:
    with pytest.raises(ConfigError, match=r"The 'depth_tolerance' parameter must be in \[0, 1\)"):
        TrainSettings(depth_tolerance=value)


def test_a_router_fitted_before_depth_tolerance_existed_reads_as_zero() -> None:
    blob = TrainSettings().to_json()
    del blob["depth_tolerance"]
    assert TrainSettings.from_json(blob).depth_tolerance == 0.0


def test_a_fused_fit_reads_a_block_of_each_encoder_and_learns() -> None:
    dataset, feats = planted()
    rng = np.random.default_rng(5)
    noise = LayerFeatures(rng.normal(size=(dataset.n_prompts, 1, 2, 4)).astype(np.float32), ("mean",), (0, 1))
    other = EncoderIdentity("noise-encoder", "1" * 64, "raw", 128, "float32")
    router, report = fit_router(dataset, [feats, noise], [SYNTHETIC, other], replace(FAST, layers="fisher"))
    assert router.encoders == (SYNTHETIC, other)
    assert all(
        blocks[0] == "mean:L1" and blocks[1].startswith("e1:mean:") for blocks in report.blocks.values()
    )
    assert report.layer_choice == {name: [1] for name in NAMES}  # the first encoder's layers
    fresh, fresh_feats = planted(seed=7)
    fresh_noise = LayerFeatures(
        rng.normal(size=(fresh.n_prompts, 1, 2, 4)).astype(np.float32), ("mean",), (0, 1)
    )
    p = router.predict_proba_features([fresh_feats, fresh_noise])
    assert min(roc_auc_score(fresh.labels[:, j], p[:, j]) for j in range(3)) > 0.85


def test_features_and_identities_must_pair_up() -> None:
    dataset, feats = planted(n=100)
    with pytest.raises(ConfigError, match=r"^features of 2 encoders but 1 encoder identities$"):
        fit_router(dataset, [feats, feats], SYNTHETIC, FAST)


def test_an_unknown_pooling_setting() -> None:
    with pytest.raises(ConfigError, match=r"^The 'pooling' parameter must be one of mean, last, auto, both"):
        TrainSettings(pooling="max")


def test_the_probe_cache_makes_a_refit_skip_the_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefill_router.train import ProbeCache
    from prefill_router.train import fit as fit_module

    dataset, feats = two_poolings(n=300)
    settings = replace(FAST, layers="fisher", pooling="auto")
    cache = ProbeCache(tmp_path / "probes")
    first, _ = fit_router(dataset, feats, SYNTHETIC, settings, probe_cache=cache)
    assert len(list((tmp_path / "probes").glob("*.json"))) == 2  # one per pooling
    calls = []
    real = fit_module.probe_layers
    monkeypatch.setattr(fit_module, "probe_layers", lambda *a, **k: calls.append(1) or real(*a, **k))
    again, _ = fit_router(dataset, feats, SYNTHETIC, settings, probe_cache=cache)
    assert calls == []  # read back, not recomputed
    assert again.info["probe"] == first.info["probe"]
    assert np.array_equal(again.predict_proba_features(feats), first.predict_proba_features(feats))
    # other labels are another key: the probes run again
    fit_router(dataset.select(targets=list(NAMES[:2])), feats, SYNTHETIC, settings, probe_cache=cache)
    assert len(calls) == 2


def test_add_target_on_a_trunk_with_huge_outputs_does_not_overflow(two_target_router: Router) -> None:
    """Trunk outputs of order 1e6 give the new head logits far past float32's exp range (88.7)."""
    dataset, feats = planted()
    rows = np.arange(120)
    dataset, feats = dataset.take(rows), LayerFeatures(feats.values[rows], feats.poolings, feats.layers)
    loud = copy.copy(two_target_router)
    e = loud.ensemble
    loud.ensemble = replace(e, w2=e.w2 * 1e6, b2=e.b2 * 1e6)
    new, report = add_target(loud, dataset, "qwen-72b", feats, FAST)  # warnings are errors here
    p = new.predict_proba_features(planted(seed=7)[1])[:, 2]
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert report.val_auc["qwen-72b"] > 0.85


def test_task_targets_are_one_hot_over_the_tasks_seen_in_the_rows() -> None:
    from prefill_router.train.fit import task_targets

    tasks = np.array(["math", "code", None, "math", "poem"], dtype=object)
    out = task_targets(tasks, np.array([0, 1, 2, 3]))  # "poem" is not among these rows
    assert out.shape == (5, 2)  # code, math
    assert out[:2].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert np.isnan(out[2]).all() and np.isnan(out[4]).all()


def test_auxiliary_task_heads_train_the_trunk_and_are_dropped() -> None:
    dataset, feats = planted(n=400)
    tasks = np.where(feats.values[:, 0, 1, 0] > 0, "high", "low")  # a task the features can tell
    dataset = RoutingDataset(
        dataset.prompt_ids, dataset.prompts, tasks, dataset.splits, dataset.labels, dataset.targets
    )
    plain, _ = fit_router(dataset, feats, SYNTHETIC, replace(FAST, aux_tasks=False))
    aux, _ = fit_router(dataset, feats, SYNTHETIC, replace(FAST, aux_tasks=True))
    assert aux.targets == plain.targets and aux.ensemble.n_targets == 3  # the task heads are gone
    assert aux.info["settings"]["aux_tasks"] is True
    assert not np.array_equal(aux.ensemble.w1, plain.ensemble.w1)  # they did shape the trunk
    assert min(held_out_auc(aux)) > 0.85


# ----------------------------------------------------------------------------------- calibration rows
def test_calibration_rows_are_held_out_of_every_training_step() -> None:
    """calibration_share > 0: a grouped share of the prompts no fit, validation or probe row sees;
    the artifact keeps their net input, tokens and labels, and says they are independent."""
    dataset, feats = planted(n=300)
    settings = replace(FAST, calibration_share=0.2)
    router, report = fit_router(dataset, feats, SYNTHETIC, settings)
    fit_rows, val_rows, cal_rows = training_splits(dataset.prompts, settings)
    assert not set(cal_rows) & (set(fit_rows) | set(val_rows))
    assert len(fit_rows) + len(val_rows) + len(cal_rows) == 300
    assert (report.n_fit, report.n_val, report.n_calibration) == (len(fit_rows), len(val_rows), len(cal_rows))
    assert 50 <= len(cal_rows) <= 70
    assert router.calibration is not None and len(router.calibration) == len(cal_rows)
    np.testing.assert_array_equal(router.calibration.labels, dataset.labels[cal_rows])
    np.testing.assert_allclose(router.calibration.x, router.transform.transform(feats)[cal_rows], rtol=1e-6)
    assert router.to_json()["calibration"] == {
        "rows": len(cal_rows), "labels": True, "independent": True, "source": "fit"
    }  # fmt: skip
    assert router.info["training"]["n_calibration"] == len(cal_rows)
    best = NAMES[int(np.argmax(dataset.labels[np.concatenate([fit_rows, val_rows])].mean(axis=0)))]
    assert router.best_single == best


def test_calibration_share_zero_keeps_the_splits_of_earlier_routers() -> None:
    dataset, _ = planted(n=300)
    fit_rows, val_rows, cal_rows = training_splits(dataset.prompts, FAST)
    before = validation_split(dataset.prompts, FAST.val_share, FAST.seed)
    assert np.array_equal(fit_rows, before[0]) and np.array_equal(val_rows, before[1])
    assert np.array_equal(cal_rows, val_rows)
    assert TrainSettings.from_json({}).calibration_share == 0.0  # a router.json from before


@pytest.mark.parametrize("value", [-0.1, 0.5, 0.9])
def test_a_calibration_share_out_of_range_is_a_config_error(value: float) -> None:
    with pytest.raises(ConfigError, match=r"'calibration_share' parameter must be in \[0, 0.5\)"):
        TrainSettings(calibration_share=value)
