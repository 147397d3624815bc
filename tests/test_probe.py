"""Layer probes (DESIGN §5): Fisher J (trace and discriminant forms), d_eff, CV-AUC, layer choice."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression

from prefill_router.errors import ConfigError, DataError
from prefill_router.probe import (
    LayerProbe,
    ProbeSettings,
    TargetProbe,
    _standardise_pca,
    apply_pca,
    d_eff,
    fisher_j,
    fisher_j_lda,
    fit_pca,
    logistic_fit,
    probe_layers,
    select_layers,
    shallowest_depth,
    spearman,
)

FAST = ProbeSettings(pca_k=8, folds=3)


# ----------------------------------------------------- the router's features
def test_each_layer_is_probed_on_the_features_the_routers_transform_gives_it() -> None:
    """Per layer and fold, the probe's standardised PCA-k features are bit for bit what a router
    block of that layer, fitted on the same rows with the same seed, gives."""
    from prefill_router.train.transform import fit_block

    x = planted_layer(n=300, h=40)[0].astype(np.float32)  # (N, L, H)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))
    fold_train, fold_test = _standardise_pca(xt[:, :200], xt[:, 200:], 8, seed=3)
    for layer in range(x.shape[1]):
        block = fit_block(x[:200, layer], "mean", [layer], pca_k=8, seed=3)
        assert np.array_equal(fold_train[layer].numpy(), block.apply(x[:200, layer]))
        assert np.array_equal(fold_test[layer].numpy(), block.apply(x[200:, layer]))


def test_fit_pca_caps_k_and_scales_a_constant_feature_by_one() -> None:
    x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    x[:, 3] = 4.0
    mean, scale, components = fit_pca(x, 128)
    assert components.shape == (4, 12) and components.dtype == np.float32  # k = N - 1
    assert scale[3] == 1.0 and mean[3] == 4.0
    np.testing.assert_allclose(apply_pca(x, mean, scale, components).mean(axis=0), 0, atol=1e-5)


# ------------------------------------------------------------ direct formulas
def direct_fisher_j(x: np.ndarray, y: np.ndarray) -> float:
    """tr(S_B) / tr(S_W) of one layer's (N, K) features, written out as in DESIGN §5."""
    mu = x.mean(axis=0)
    s_b = np.zeros((x.shape[1], x.shape[1]))
    s_w = np.zeros((x.shape[1], x.shape[1]))
    for c in (0, 1):
        rows = x[y == c]
        mu_c = rows.mean(axis=0)
        s_b += len(rows) * np.outer(mu_c - mu, mu_c - mu)
        for row in rows:
            s_w += np.outer(row - mu_c, row - mu_c)
    return float(np.trace(s_b) / np.trace(s_w))


def participation_ratio(x: np.ndarray) -> float:
    """(Σλ)² / Σλ² over the eigenvalues of the covariance of one layer's (N, H) features."""
    eig = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False)), 0, None)
    return float(eig.sum() ** 2 / (eig**2).sum())


# ------------------------------------------------------------ synthetic data
def separated_and_noise(n: int = 400, h: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2, H) features: layer 0 holds two well-separated Gaussians, layer 1 is pure noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 2, h))
    x[:, 0] += np.where(y == 1, 3.0, -3.0)[:, None]
    return x, y.astype(float)[:, None]


def planted_layer(
    n: int = 500, h: int = 16, n_layers: int = 7, planted: int = 3, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(N, L, H) noise features with a moderately informative layer ``planted``; (N, 1) labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_layers, h))
    logit = 1.5 * x[:, planted, 0] - 1.0 * x[:, planted, 1]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, y[:, None]


def noise(n: int = 300, n_layers: int = 3, h: int = 16, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(N, L, H) noise features and (N, 2) balanced random labels."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_layers, h)), rng.integers(0, 2, size=(n, 2)).astype(float)


# ---------------------------------------------------------------- fisher_j
def test_fisher_j_matches_the_direct_formula() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 80, 6)) + rng.normal(size=(3, 1, 6))
    y = rng.integers(0, 2, size=80)
    expected = [direct_fisher_j(layer, y) for layer in x]
    np.testing.assert_allclose(fisher_j(x, y), expected, rtol=1e-10)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shift=st.floats(-100, 100, allow_nan=False),
    scale=st.floats(0.01, 100, allow_nan=False),
)
def test_fisher_j_is_invariant_to_translation_and_isotropic_scaling(
    seed: int, shift: float, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 60, 5))
    y = np.arange(60) % 2
    moved = scale * x + shift * rng.normal(size=(1, 1, 5))
    np.testing.assert_allclose(fisher_j(moved, y), fisher_j(x, y), rtol=1e-6)


def test_fisher_j_is_large_for_separated_gaussians_and_small_for_noise() -> None:
    x, y = separated_and_noise()
    j = fisher_j(x.transpose(1, 0, 2), y[:, 0])
    assert j[0] > 5.0  # class means ±3 per dim: tr(S_B) / tr(S_W) ≈ 9
    assert j[1] < 0.2


# ------------------------------------------------------------------- d_eff
def test_d_eff_matches_the_participation_ratio_of_the_covariance() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 200, 10)) * rng.uniform(0.1, 3.0, size=(3, 1, 10))
    np.testing.assert_allclose(d_eff(x), [participation_ratio(layer) for layer in x], rtol=1e-5)


def test_d_eff_of_an_isotropic_gaussian_is_near_the_dimension() -> None:
    h = 16
    x = np.random.default_rng(5).normal(size=(1, 2000, h))
    assert d_eff(x)[0] > 0.8 * h


def test_d_eff_of_rank_one_data_is_near_one() -> None:
    rng = np.random.default_rng(6)
    x = np.outer(rng.normal(size=500), rng.normal(size=20))[None] + 1e-3 * rng.normal(size=(1, 500, 20))
    assert 1.0 - 1e-6 <= d_eff(x)[0] < 1.1


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), rank=st.integers(1, 12))
def test_d_eff_lies_between_one_and_the_rank(seed: int, rank: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(100, rank)) @ rng.normal(size=(rank, 12))
    value = d_eff(x[None])[0]
    assert 1.0 - 1e-6 <= value <= np.linalg.matrix_rank(x - x.mean(axis=0)) + 1e-3


# ------------------------------------------------------- discriminant form J
def test_fisher_j_lda_out_of_fold_ranks_a_planted_layer_above_noise() -> None:
    x, y = planted_layer()
    t = torch.from_numpy(x.transpose(1, 0, 2).copy())  # (L, N, H)
    yt = torch.from_numpy(y)
    j = fisher_j_lda(t[:, :300], yt[:300], t[:, 300:], yt[300:], shrinkage=0.1)
    assert j.shape == (7, 1)
    assert int(j[:, 0].argmax()) == 3
    assert j[3, 0] > 5 * j[[0, 1, 2, 4, 5, 6], 0].max()


# --------------------------------------------------------------- logistic_fit
def test_logistic_fit_matches_scikit_learn() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 300, 6))
    logits = np.stack([x[0] @ rng.normal(size=6), x[1] @ rng.normal(size=6) + 0.5], axis=1)  # (n, T)
    y = (rng.random((300, 2)) < 1 / (1 + np.exp(-logits))).astype(float)
    w = logistic_fit(torch.from_numpy(x), torch.from_numpy(y), l2_c=0.5, steps=30).numpy()
    assert w.shape == (2, 2, 7)
    for layer in range(2):
        for target in range(2):
            model = LogisticRegression(C=0.5, tol=1e-10, max_iter=1000).fit(x[layer], y[:, target])
            np.testing.assert_allclose(w[layer, target, :-1], model.coef_[0], atol=1e-3)
            np.testing.assert_allclose(w[layer, target, -1], model.intercept_[0], atol=1e-3)


# ------------------------------------------------------------------- spearman
def test_spearman_matches_scipy_and_is_nan_for_a_constant_side() -> None:
    a, b = np.array([0.1, 0.5, 0.3, 0.9]), np.array([1.0, 3.0, 2.0, 2.5])
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert math.isnan(spearman(a, np.ones(4)))


# ---------------------------------------------------------------- probe_layers
def test_separable_layer_has_auc_one_and_noise_layer_auc_near_half() -> None:
    x, y = separated_and_noise()
    report = probe_layers(x, y, ["m"], [0, 1], FAST)
    separated, noisy = report.targets["m"].layers
    assert (separated.layer, noisy.layer) == (0, 1)
    assert separated.cv_auc > 0.999
    assert abs(noisy.cv_auc - 0.5) < 0.1
    assert separated.fisher_j > 5.0 and noisy.fisher_j < 0.2
    assert separated.fisher_j_lda > 50.0 and noisy.fisher_j_lda < 1.0
    assert report.targets["m"].best_by_auc == report.targets["m"].best_by_j_lda == 0


def test_fisher_strategy_chooses_a_perfectly_separable_layer() -> None:
    x, y = separated_and_noise()
    target = probe_layers(x, y, ["m"], [0, 1], FAST).targets["m"]
    auc = {p.layer: p.cv_auc for p in target.layers}
    assert target.auc_lost == pytest.approx(max(auc.values()) - auc[target.chosen[0]])
    assert target.chosen == [0]


def test_fisher_and_auc_strategies_find_a_planted_layer_among_noise_layers() -> None:
    x, y = planted_layer()
    target = probe_layers(x, y, ["m"], list(range(7)), ProbeSettings(pca_k=12, folds=4)).targets["m"]
    j_lda = {p.layer: p.fisher_j_lda for p in target.layers}
    assert max(j_lda, key=j_lda.__getitem__) == 3
    assert select_layers(target, "fisher") == [3]
    assert select_layers(target, "auc") == [3]
    assert 3 in select_layers(target, "fisher", n=2) and len(select_layers(target, "fisher", n=2)) == 2
    assert select_layers(target, "all-mean") == list(range(7))
    assert target.chosen == [3]
    assert target.best_by_j_lda == 3 and target.best_by_auc == 3
    assert target.auc_lost == pytest.approx(0.0)


def test_fisher_strategy_breaks_near_ties_against_a_collapsed_layer() -> None:
    """d_eff only breaks near-ties: a collapsed layer within 5% of a healthy one ranks below it,
    but a collapsed layer with clearly more J_lda is still chosen."""
    near_tie = [
        LayerProbe(i, 0.1, j, d, 0.7) for i, (j, d) in enumerate([(1.0, 10.0), (2.0, 9.0), (2.05, 1.0)])
    ]
    target = TargetProbe("m", 100, 0.5, layers=near_tie)
    assert select_layers(target, "fisher") == [1]
    assert select_layers(target, "fisher", n=2) == [1, 2]
    clear = [LayerProbe(i, 0.1, j, d, 0.7) for i, (j, d) in enumerate([(1.0, 10.0), (2.0, 9.0), (9.0, 1.0)])]
    assert select_layers(TargetProbe("m", 100, 0.5, layers=clear), "fisher") == [2]


def curve(name: str, j_lda: Sequence[float], auc: Sequence[float] | None = None) -> TargetProbe:
    """A target whose layers 0.. have these J_lda (and CV-AUC) values, none collapsed."""
    aucs = auc or [0.5] * len(j_lda)
    return TargetProbe(
        name,
        100,
        0.5,
        [LayerProbe(i, 0.0, j, 10.0, a) for i, (j, a) in enumerate(zip(j_lda, aucs, strict=True))],
    )


def test_shallowest_depth_by_hand() -> None:
    """Mean relative loss of the best layer no deeper than D: D=2 loses (1 - 3/3.1 + 0) / 2 = 1.6%,
    D=3 (1 - 3.05/3.1) / 2 = 0.8%, D=1 (0.355 + 0.5) / 2 = 43%."""
    targets = [curve("a", [1, 2, 3, 3.05, 3.1]), curve("b", [1, 1, 2, 2, 2])]
    assert shallowest_depth(targets, "fisher", 0.0) == 4
    assert shallowest_depth(targets, "fisher", 0.01) == 3
    assert shallowest_depth(targets, "fisher", 0.02) == 2
    assert shallowest_depth(targets, "fisher", 0.5) == 1
    assert select_layers(targets[0], "fisher", max_layer=2) == [2]
    assert select_layers(targets[0], "fisher", n=2, max_layer=3) == [2, 3]
    assert select_layers(targets[0], "fisher", max_layer=-1) == []


def test_shallowest_depth_by_auc_counts_only_the_part_above_chance() -> None:
    """AUC 0.6 at layer 0 against 0.7 at layer 1 is half the signal lost, not 14%."""
    target = curve("a", [1, 1], auc=[0.6, 0.7])
    assert shallowest_depth([target], "auc", 0.2) == 1
    assert shallowest_depth([target], "auc", 0.5) == 0


def test_shallowest_depth_ignores_targets_without_a_verdict() -> None:
    targets = [curve("a", [1.0, 2.0]), curve("nan", [float("nan"), float("nan")])]
    assert shallowest_depth(targets, "fisher", 0.5) == 0  # (1 - 1/2) at D=0; the NaN target does not count
    assert shallowest_depth(targets, "fisher", 0.4) == 1
    assert shallowest_depth([targets[1]], "fisher", 0.1) == 1  # nothing to go by: the deepest


def test_select_layers_rejects_an_unknown_strategy_and_n_below_one() -> None:
    target = TargetProbe("m", 10, 0.5, layers=[LayerProbe(0, 1.0, 1.0, 1.0, 0.5)])
    with pytest.raises(
        ConfigError, match=r"unknown layer strategy 'bogus'; expected one of: fisher, auc, all-mean"
    ):
        select_layers(target, "bogus")
    with pytest.raises(ConfigError, match=r"The 'n' parameter must be >= 1; got 0 instead\."):
        select_layers(target, "fisher", n=0)


# ----------------------------------------------------------------- bad input
def test_a_target_with_one_class_is_skipped_and_the_others_are_probed() -> None:
    x, labels = noise()
    labels[:, 1] = 1.0
    report = probe_layers(x, labels, ["mixed", "always-right"], [0, 1, 2], FAST)
    skipped = report.targets["always-right"]
    assert skipped.skipped == "only one class in the training rows (300 correct, 0 wrong)"
    assert skipped.layers == [] and skipped.chosen == []
    assert report.targets["mixed"].skipped is None
    assert len(report.targets["mixed"].layers) == 3


def test_a_target_with_too_few_rows_of_one_class_for_the_folds_is_skipped() -> None:
    x, labels = noise()
    labels[:, 1] = 0.0
    labels[:2, 1] = 1.0
    report = probe_layers(x, labels, ["mixed", "rare"], [0, 1, 2], FAST)
    assert report.targets["rare"].skipped == "too few rows of one class for 3 folds (2 correct, 298 wrong)"
    assert len(report.targets["mixed"].layers) == 3


def test_a_target_without_labelled_rows_is_skipped() -> None:
    x, labels = noise()
    labels[:, 1] = np.nan
    report = probe_layers(x, labels, ["mixed", "unlabelled"], [0, 1, 2], FAST)
    assert report.targets["unlabelled"].skipped == "no labelled training rows"
    assert report.targets["unlabelled"].n_rows == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_features_are_a_data_error(bad: float) -> None:
    x, labels = noise()
    x[10, 1, 3] = bad
    with pytest.raises(DataError, match=r"features of layer 7 contain NaN or inf"):
        probe_layers(x, labels, ["a", "b"], [0, 7, 14], FAST)


def test_layer_ids_must_match_the_feature_layers() -> None:
    x, labels = noise()
    with pytest.raises(DataError, match=r"features hold 3 layers but 2 layer ids were given"):
        probe_layers(x, labels, ["a", "b"], [0, 1], FAST)


def test_a_constant_layer_is_skipped_and_the_others_are_probed() -> None:
    x, labels = noise()
    x[:, 0] = 0.0
    report = probe_layers(x, labels, ["a", "b"], [0, 1, 2], FAST)
    assert report.skipped_layers == {0: "constant across prompts"}
    assert [p.layer for p in report.targets["a"].layers] == [1, 2]
    assert all(
        math.isfinite(v)
        for p in report.targets["a"].layers
        for v in (p.fisher_j, p.fisher_j_lda, p.d_eff, p.cv_auc)
    )


def test_a_constant_layer_of_arbitrary_values_is_skipped() -> None:
    x, labels = noise()
    x[:, 0] = np.random.default_rng(8).normal(size=16)  # every prompt has the same (non-zero) features
    report = probe_layers(x, labels, ["a", "b"], [0, 1, 2], FAST)
    assert report.skipped_layers == {0: "constant across prompts"}


def test_every_layer_constant_is_a_data_error() -> None:
    x, labels = noise()
    x[:] = 1.0
    with pytest.raises(
        DataError, match=r"every layer's features are constant across prompts; nothing to probe"
    ):
        probe_layers(x, labels, ["a", "b"], [0, 1, 2], FAST)


def test_rows_with_nan_labels_are_left_out_for_that_target() -> None:
    x, y = planted_layer()
    labels = y.copy()
    labels[::5, 0] = np.nan  # 100 of 500 rows not evaluated
    kept = ~np.isnan(labels[:, 0])
    target = probe_layers(x, labels, ["m"], list(range(7)), FAST).targets["m"]
    alone = probe_layers(x[kept], labels[kept], ["m"], list(range(7)), FAST).targets["m"]
    assert target.n_rows == 400
    assert target.positive_rate == pytest.approx(labels[kept, 0].mean())
    for with_nan, without in zip(target.layers, alone.layers, strict=True):
        assert with_nan.fisher_j == pytest.approx(without.fisher_j)
        assert with_nan.fisher_j_lda == pytest.approx(without.fisher_j_lda)
        assert with_nan.cv_auc == pytest.approx(without.cv_auc)


def test_graded_labels_count_as_correct_at_the_threshold() -> None:
    x, y = separated_and_noise()
    graded = np.where(y == 1, 0.5, 0.25)  # 0.5 counts as correct, 0.25 as wrong
    target = probe_layers(x, graded, ["m"], [0, 1], FAST).targets["m"]
    assert target.positive_rate == pytest.approx(0.5)
    assert target.layers[0].cv_auc > 0.999


def test_nan_labels_of_one_target_do_not_starve_another() -> None:
    x, labels = noise(n=400)
    labels[:, 1] = 0.0
    labels[:50, 0] = np.nan  # 'a' not evaluated on the first 50 rows ...
    labels[:50, 1] = 1.0  # ... which are the only rows where 'b' is correct
    report = probe_layers(x, labels, ["a", "b"], [0, 1, 2], FAST)
    assert report.targets["b"].n_rows == 400
    assert all(math.isfinite(p.cv_auc) for p in report.targets["b"].layers)


def test_targets_labelled_on_disjoint_rows_are_each_probed() -> None:
    x, labels = noise(n=400)
    labels[:200, 1] = np.nan
    labels[200:, 0] = np.nan
    report = probe_layers(x, labels, ["a", "b"], [0, 1, 2], FAST)
    assert report.targets["a"].n_rows == report.targets["b"].n_rows == 200
    assert len(report.targets["a"].layers) == len(report.targets["b"].layers) == 3


def test_a_rare_class_is_spread_over_the_folds_with_several_targets() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 1, 8))
    labels = rng.integers(0, 2, size=(200, 3)).astype(float)
    labels[:, 2] = 0.0
    labels[rng.choice(200, 5, replace=False), 2] = 1.0
    report = probe_layers(x, labels, ["a", "b", "c"], [0], ProbeSettings(pca_k=4, folds=5))
    assert report.targets["c"].skipped is None
    assert math.isfinite(report.targets["c"].layers[0].cv_auc)


# ---------------------------------------------------------------------- JSON
def test_report_json_is_strict_and_holds_the_documented_keys() -> None:
    x, labels = noise()
    labels[:, 1] = np.nan  # a skipped target: NaN positive rate and NaN Spearman must become null
    report = probe_layers(x, labels, ["a", "b"], [0, 1, 2], ProbeSettings(pca_k=128, folds=3, shrinkage=0.2))
    blob = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert {"pca_k", "folds", "shrinkage"} <= blob["settings"].keys()
    assert (blob["settings"]["pca_k"], blob["settings"]["folds"], blob["settings"]["shrinkage"]) == (
        16,
        3,
        0.2,
    )
    a = blob["targets"]["a"]
    assert {"layers", "chosen", "spearman_j_auc", "auc_lost"} <= a.keys()
    assert [layer["layer"] for layer in a["layers"]] == [0, 1, 2]
    for layer in a["layers"]:
        assert {"layer", "fisher_j", "fisher_j_lda", "d_eff", "cv_auc"} <= layer.keys()
        assert all(isinstance(layer[k], float) for k in ("fisher_j", "fisher_j_lda", "d_eff", "cv_auc"))
    assert len(a["chosen"]) == 1 and a["chosen"][0] in {0, 1, 2}
    b = blob["targets"]["b"]
    assert (b["layers"], b["positive_rate"], b["spearman_j_auc"], b["auc_lost"]) == ([], None, None, None)


def test_fisher_strategy_ignores_d_eff_when_every_layer_sits_near_one() -> None:
    """Mean-pooled LM layers all have d_eff ~1 (one massive dimension); none is collapsed relative
    to the others, so the top J_lda layer wins (an absolute d_eff threshold of 1.05 once moved the
    choice to the first layer above it, costing 0.003 AUC on the bundled data)."""
    layers = [
        LayerProbe(i, 0.1, j, d, 0.7) for i, (j, d) in enumerate([(2.0, 1.01), (1.95, 1.06), (1.0, 1.2)])
    ]
    assert select_layers(TargetProbe("m", 100, 0.5, layers=layers), "fisher") == [0]
