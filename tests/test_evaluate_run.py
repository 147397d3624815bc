"""Evaluation runs (evaluate/run.py): predict a split, score it, cross-validate, on synthetic features."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from prefill_router import Router
from prefill_router.data.dataset import RoutingDataset, TargetInfo
from prefill_router.errors import ConfigError, DataError
from prefill_router.evaluate.baselines import KNN_KS, LEARNED, random_probabilities
from prefill_router.evaluate.run import (
    FeatureSet,
    Predictions,
    cross_validated,
    eval_costs,
    predict_split,
    score,
)
from prefill_router.policy import choose
from prefill_router.train import (
    EncoderIdentity,
    LayerFeatures,
    NetSettings,
    TrainSettings,
    fit_router,
)

NAMES = ("small", "medium", "large")
#: USD per million input / output tokens: each target costs ten times the one before.
PRICES = ((0.1, 0.3), (1.0, 3.0), (10.0, 30.0))
#: How much likelier each target is to be right (the large one is the best single target).
SKILL = np.array([-0.5, 0.0, 0.5])
HIDDEN = 16
#: How the 3 latent factors enter layer 1 and the embeddings; fixed, so every sample poses one problem.
MIXING = np.random.default_rng(1234).normal(size=(3, HIDDEN))
SYNTHETIC = EncoderIdentity("synthetic-encoder", "0" * 64, "chat", 512, "float32")
EMBEDDER = EncoderIdentity("synthetic-embedder", "1" * 64, "raw", 512, "float32")
SETTINGS = TrainSettings(
    pca_k=8, seeds=2, keep=1, net=NetSettings(max_epochs=20, patience=5), calibration_share=0.0
)
ROUTERS = ("prefill", *LEARNED, "cheapest", "oracle_router")
POINT_KEYS = {"accuracy", "cost", "gap_captured", "cost_savings"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(n: int = 300, seed: int = 0) -> tuple[RoutingDataset, FeatureSet]:
    """A dataset (every third row 'test') and its features; target j is right when latent factor j is high.

    The encoder features have layers (0, 1, 2) and the pooling "mean": layer 1 holds the three latent
    factors mixed into 16 dims, layers 0 and 2 are noise. The (N, 16) embeddings hold the same factors
    with more noise, L2-normalised.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    x = rng.normal(size=(n, 1, 3, HIDDEN)).astype(np.float32)
    x[:, 0, 1] = 0.3 * x[:, 0, 1] + z @ MIXING
    labels = (3 * (z + SKILL) + 0.5 * rng.logistic(size=z.shape) > 0).astype(np.float64)
    embed = z @ MIXING + 0.5 * rng.normal(size=(n, HIDDEN))
    embed /= np.linalg.norm(embed, axis=1, keepdims=True)
    targets = tuple(TargetInfo(name, *price, "unit-test") for name, price in zip(NAMES, PRICES, strict=True))
    dataset = RoutingDataset(
        [f"p{i}" for i in range(n)],
        [f"synthetic prompt {seed}-{i}" + " with some words" * (i % 4) for i in range(n)],
        [None] * n,
        ["test" if i % 3 == 2 else "train" for i in range(n)],
        labels,
        targets,
    )
    return dataset, FeatureSet([LayerFeatures(x, ("mean",), (0, 1, 2))], embed, [SYNTHETIC], EMBEDDER)


def halves(
    dataset: RoutingDataset, features: FeatureSet
) -> tuple[RoutingDataset, RoutingDataset, FeatureSet, FeatureSet]:
    """(train, test, train features, test features) by the dataset's splits."""
    train_rows, test_rows = (
        np.flatnonzero(dataset.splits == "train"),
        np.flatnonzero(dataset.splits == "test"),
    )
    return (
        dataset.take(train_rows),
        dataset.take(test_rows),
        features.rows(train_rows),
        features.rows(test_rows),
    )


def mean_auc(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(y.shape[1])]))


@pytest.fixture(scope="module")
def data() -> tuple[RoutingDataset, FeatureSet]:
    return planted()


@pytest.fixture(scope="module")
def router(data: tuple[RoutingDataset, FeatureSet]) -> Router:
    train, _, f_train, _ = halves(*data)
    fitted, _ = fit_router(train, f_train.encoder, SYNTHETIC, SETTINGS)
    return Router.of(fitted)


@pytest.fixture(scope="module")
def predicted(data: tuple[RoutingDataset, FeatureSet]) -> tuple[Predictions, list[str]]:
    """Every baseline, and the router fitted by predict_split itself; and the steps it announced."""
    steps: list[str] = []
    predictions = predict_split(None, *halves(*data), LEARNED, SETTINGS, on_step=steps.append)
    return predictions, steps


@pytest.fixture(scope="module")
def result(
    data: tuple[RoutingDataset, FeatureSet], predicted: tuple[Predictions, list[str]]
) -> dict[str, Any]:
    dataset, features = data
    _, test, _, _ = halves(dataset, features)
    return score(test, predicted[0], eval_costs(dataset, test), n_boot=200)


@pytest.fixture(scope="module")
def test_matrices(data: tuple[RoutingDataset, FeatureSet]) -> tuple[np.ndarray, np.ndarray]:
    """(Y, C) of the test rows."""
    dataset, features = data
    _, test, _, _ = halves(dataset, features)
    return test.labels, eval_costs(dataset, test)


# ------------------------------------------------------------------ predict_split
def test_predict_split_gives_every_router_probabilities_for_the_evaluation_rows(
    predicted: tuple[Predictions, list[str]],
) -> None:
    predictions, steps = predicted
    assert list(predictions.probabilities) == ["prefill", *LEARNED]
    for name, p in predictions.probabilities.items():
        assert p.shape == (100, 3), name
        assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all(), name
    assert len(predictions.knn_k) == 1 and predictions.knn_k[0] in KNN_KS
    assert steps == ["fitting the router", *(f"baseline {name}" for name in LEARNED)]


def test_the_router_learns_a_planted_signal_and_beats_random(
    predicted: tuple[Predictions, list[str]], test_matrices: tuple[np.ndarray, np.ndarray]
) -> None:
    p, y = predicted[0].probabilities, test_matrices[0]
    ours, chance = mean_auc(p["prefill"], y), mean_auc(p["random"], y)
    assert ours > 0.8 and ours > chance + 0.2, (ours, chance)
    # the embeddings hold the signal too; layer 0 is noise
    for name in ("knn-embed", "trunk-embed", "logreg-embed"):
        assert mean_auc(p[name], y) > 0.75, name
    assert mean_auc(p["layer0"], y) < 0.7


def test_without_a_router_predict_split_fits_one_on_the_training_rows(
    data: tuple[RoutingDataset, FeatureSet], predicted: tuple[Predictions, list[str]], router: Router
) -> None:
    _, _, _, f_test = halves(*data)
    assert np.array_equal(
        predicted[0].probabilities["prefill"], router.predict_proba_features(f_test.encoder)
    )


def test_a_given_router_is_applied_not_refitted(
    data: tuple[RoutingDataset, FeatureSet], router: Router
) -> None:
    train, test, f_train, f_test = halves(*data)
    steps: list[str] = []
    out = predict_split(router, train, test, f_train, f_test, (), SETTINGS, on_step=steps.append)
    assert list(out.probabilities) == ["prefill"] and steps == [] and out.knn_k == []
    assert np.array_equal(out.probabilities["prefill"], router.predict_proba_features(f_test.encoder))


def test_the_random_baseline_follows_the_seed(
    data: tuple[RoutingDataset, FeatureSet], predicted: tuple[Predictions, list[str]], router: Router
) -> None:
    assert np.array_equal(predicted[0].probabilities["random"], random_probabilities(100, 3, seed=0))
    again = predict_split(router, *halves(*data), ("random",), SETTINGS, seed=7)
    assert np.array_equal(again.probabilities["random"], random_probabilities(100, 3, seed=7))


def test_the_layer0_baseline_is_the_trunk_on_layer_0(
    data: tuple[RoutingDataset, FeatureSet], predicted: tuple[Predictions, list[str]]
) -> None:
    train, _, f_train, f_test = halves(*data)
    layer0, _ = fit_router(train, f_train.encoder, SYNTHETIC, replace(SETTINGS, layers=(0,)))
    expected = layer0.predict_proba_features(f_test.encoder)
    assert np.array_equal(predicted[0].probabilities["layer0"], expected)


def test_embedding_baselines_without_embeddings_are_a_data_error(
    data: tuple[RoutingDataset, FeatureSet], router: Router
) -> None:
    train, test, f_train, f_test = halves(*data)
    bare_train, bare_test = replace(f_train, embed=None), replace(f_test, embed=None)
    with pytest.raises(DataError, match=r"^embedding baselines need MiniLM embeddings; none were computed$"):
        predict_split(router, train, test, bare_train, bare_test, ("knn-embed",), SETTINGS)


def test_a_target_order_other_than_the_routers_is_followed(
    data: tuple[RoutingDataset, FeatureSet], router: Router, result: dict[str, Any]
) -> None:
    dataset, features = data
    train, test, f_train, f_test = halves(dataset, features)
    shuffled = test.take(np.arange(test.n_prompts), [2, 0, 1])
    assert shuffled.target_names == ["large", "small", "medium"]
    out = predict_split(router, train, shuffled, f_train, f_test, (), SETTINGS)
    expected = router.predict_proba_features(f_test.encoder)[:, [2, 0, 1]]
    assert np.array_equal(out.probabilities["prefill"], expected)
    again = score(shuffled, out, eval_costs(dataset, shuffled), n_boot=50)
    for name in NAMES:  # per-target metrics are keyed by name: the same whatever the column order
        assert again["prefill"]["targets"][name] == pytest.approx(result["prefill"]["targets"][name])
        assert again["singles"][name] == pytest.approx(result["singles"][name])
    for key in ("prefill", "cheapest", "oracle_router"):  # routing does not hinge on the column order
        for metric in ("accuracy", "cost"):
            assert again[key]["argmax"][metric] == pytest.approx(result[key]["argmax"][metric]), key


def test_baselines_follow_the_evaluation_target_order_too(
    data: tuple[RoutingDataset, FeatureSet], router: Router
) -> None:
    train, test, f_train, f_test = halves(*data)
    shuffled = test.take(np.arange(test.n_prompts), [2, 0, 1])
    same = predict_split(router, train, test, f_train, f_test, ("logreg-embed",), SETTINGS)
    other = predict_split(router, train, shuffled, f_train, f_test, ("logreg-embed",), SETTINGS)
    expected = same.probabilities["logreg-embed"][:, [2, 0, 1]]
    np.testing.assert_array_equal(other.probabilities["logreg-embed"], expected)


def test_other_targets_than_the_routers_are_a_data_error_naming_them(
    data: tuple[RoutingDataset, FeatureSet], router: Router
) -> None:
    train, test, f_train, f_test = halves(*data)
    fewer = test.select(targets=["small", "medium"])
    message = (
        r"^the data's targets differ from the router's \(not in both: large\); evaluate on data with "
        r"exactly the router's targets, or refit$"
    )
    with pytest.raises(DataError, match=message):
        predict_split(router, train, fewer, f_train, f_test, (), SETTINGS)
    renamed = RoutingDataset(
        test.prompt_ids, test.prompts, test.tasks, test.splits, test.labels,
        (*test.targets[:2], TargetInfo("huge", 10.0, 30.0)),
    )  # fmt: skip
    with pytest.raises(DataError, match=r"\(not in both: huge, large\)"):
        predict_split(router, train, renamed, f_train, f_test, (), SETTINGS)


# -------------------------------------------------------------------------- score
def test_score_has_the_contract_keys_and_is_strict_json(result: dict[str, Any]) -> None:
    assert {"n_rows", "n_routed", "oracle", "best_single", "most_expensive", "singles", "paired"} <= set(
        result
    )
    assert (result["n_rows"], result["n_routed"]) == (100, 100)
    assert set(result["singles"]) == set(NAMES)
    for key in ROUTERS:
        r = result[key]
        assert {"auc_mean", "argmax", "curve", "gap_captured_at_savings", "aiq"} <= set(r), key
        assert set(r["argmax"]) == POINT_KEYS | {"ci"}, key
        assert set(r["argmax"]["ci"]) == POINT_KEYS, key
        for low, high in r["argmax"]["ci"].values():
            assert low <= high, key
        assert r["curve"] and all(set(point) == POINT_KEYS for point in r["curve"]), key
        assert set(r["gap_captured_at_savings"]) == {"0.5", "0.7431"}, key
        assert isinstance(r["aiq"], float) and 0 <= r["aiq"] <= 1, key
    for key in ("prefill", *LEARNED):
        assert set(result[key]["targets"]) == set(NAMES), key
        assert set(result[key]["targets"]["small"]) == {"auc", "brier", "ece", "n"}, key
        assert 0.4 < result[key]["auc_mean"] < 1, key
    assert result["cheapest"]["auc_mean"] is None and result["oracle_router"]["auc_mean"] is None
    json.dumps(result, allow_nan=False)


def test_the_yardstick_is_computed_on_the_evaluation_rows(
    result: dict[str, Any], test_matrices: tuple[np.ndarray, np.ndarray]
) -> None:
    y, c = test_matrices
    accuracy, cost = y.mean(axis=0), c.mean(axis=0)
    best = int(np.argmax(accuracy))
    assert result["oracle"]["accuracy"] == pytest.approx(y.max(axis=1).mean())
    assert result["best_single"] == {
        "name": NAMES[best],
        "accuracy": pytest.approx(accuracy[best]),
        "cost": pytest.approx(cost[best]),
    }
    assert result["most_expensive"] == {"name": "large", "cost": pytest.approx(cost[2])}
    for j, name in enumerate(NAMES):
        single = result["singles"][name]
        assert single["accuracy"] == pytest.approx(accuracy[j]) and single["cost"] == pytest.approx(cost[j])
        assert single["cost_savings"] == pytest.approx(1 - cost[j] / cost[2])
    assert result["singles"][NAMES[best]]["gap_captured"] == 0


def test_the_oracle_router_captures_the_whole_gap(
    result: dict[str, Any], test_matrices: tuple[np.ndarray, np.ndarray]
) -> None:
    y, c = test_matrices
    # the cheapest correct target; the cheapest one where none is correct
    cheapest_correct = np.where(y == 1, c, np.inf).min(axis=1)
    expected_cost = np.where(np.isfinite(cheapest_correct), cheapest_correct, c.min(axis=1)).mean()
    oracle = result["oracle_router"]["argmax"]
    assert oracle["cost"] == pytest.approx(expected_cost, rel=1e-12)
    assert oracle["gap_captured"] == 1
    assert oracle["accuracy"] == result["oracle"]["accuracy"]
    assert oracle["cost"] == result["oracle"]["cost"]
    assert result["oracle_router"]["curve"] == [{k: oracle[k] for k in POINT_KEYS}]


def test_the_cheapest_router_pays_the_row_minimum(
    result: dict[str, Any], test_matrices: tuple[np.ndarray, np.ndarray]
) -> None:
    y, c = test_matrices
    cheapest = result["cheapest"]["argmax"]
    assert cheapest["cost"] == pytest.approx(c.min(axis=1).mean(), rel=1e-12)
    assert cheapest["accuracy"] == pytest.approx(y[np.arange(len(y)), c.argmin(axis=1)].mean())


def test_the_argmax_point_is_the_policy_at_mu_zero(
    result: dict[str, Any],
    predicted: tuple[Predictions, list[str]],
    test_matrices: tuple[np.ndarray, np.ndarray],
) -> None:
    y, c = test_matrices
    choice = choose(predicted[0].probabilities["prefill"], c, "budget", 0.0)
    accuracy, cost = y[np.arange(len(y)), choice].mean(), c[np.arange(len(c)), choice].mean()
    point = result["prefill"]["argmax"]
    best, oracle = result["best_single"]["accuracy"], result["oracle"]["accuracy"]
    assert point["accuracy"] == pytest.approx(accuracy) and point["cost"] == pytest.approx(cost)
    assert point["gap_captured"] == pytest.approx((accuracy - best) / (oracle - best))
    assert point["cost_savings"] == pytest.approx(1 - cost / result["most_expensive"]["cost"])
    assert point["ci"]["accuracy"][0] <= point["accuracy"] <= point["ci"]["accuracy"][1]


def test_the_curve_runs_from_the_cheapest_routing_to_the_argmax(
    result: dict[str, Any], test_matrices: tuple[np.ndarray, np.ndarray]
) -> None:
    curve = result["prefill"]["curve"]
    costs = [point["cost"] for point in curve]
    assert len(curve) > 3
    assert len({(p["accuracy"], p["cost"]) for p in curve}) == len(curve)  # distinct points
    assert min(costs) == pytest.approx(result["cheapest"]["argmax"]["cost"])
    argmax = result["prefill"]["argmax"]
    assert any(p["accuracy"] == argmax["accuracy"] and p["cost"] == argmax["cost"] for p in curve)
    for level in ("0.5", "0.7431"):
        gaps = [p["gap_captured"] for p in curve if p["cost_savings"] >= float(level) - 1e-9]
        assert result["prefill"]["gap_captured_at_savings"][level] == max(gaps)


def test_paired_differences_compare_the_router_with_each_baseline(result: dict[str, Any]) -> None:
    paired = result["paired"]
    assert set(paired) == set(LEARNED)
    for name, diff in paired.items():
        ours, theirs = result["prefill"], result[name]
        assert diff["auc_mean"]["mean"] == pytest.approx(ours["auc_mean"] - theirs["auc_mean"]), name
        gain = ours["argmax"]["accuracy"] - theirs["argmax"]["accuracy"]
        assert diff["argmax_accuracy"]["mean"] == pytest.approx(gain), name
        low, high = diff["auc_mean"]["ci"]
        assert low <= diff["auc_mean"]["mean"] <= high, name
        assert 0 < diff["auc_mean"]["resamples_used"] <= 200
    assert paired["random"]["auc_mean"]["ci"][0] > 0  # the router is surely better than chance


def test_without_the_router_there_is_nothing_to_pair(
    data: tuple[RoutingDataset, FeatureSet], predicted: tuple[Predictions, list[str]]
) -> None:
    dataset, features = data
    _, test, _, _ = halves(dataset, features)
    only = Predictions({"random": predicted[0].probabilities["random"]})
    out = score(test, only, eval_costs(dataset, test), n_boot=20)
    assert "paired" not in out and "prefill" not in out and "random" in out


def test_rows_missing_a_label_or_a_price_are_not_routed_but_still_count_for_auc(
    data: tuple[RoutingDataset, FeatureSet], predicted: tuple[Predictions, list[str]]
) -> None:
    dataset, features = data
    _, test, _, _ = halves(dataset, features)
    labels = test.labels.copy()
    labels[:10, 1] = np.nan
    holey = RoutingDataset(test.prompt_ids, test.prompts, test.tasks, test.splits, labels, test.targets)
    costs = eval_costs(dataset, test)
    costs[10:15, 0] = np.nan
    out = score(holey, predicted[0], costs, n_boot=20)
    assert (out["n_rows"], out["n_routed"]) == (100, 85)
    assert [out["prefill"]["targets"][name]["n"] for name in NAMES] == [100, 90, 100]
    assert out["oracle"]["accuracy"] == pytest.approx(labels[15:].max(axis=1).mean())


def test_no_complete_row_is_a_data_error(
    data: tuple[RoutingDataset, FeatureSet], predicted: tuple[Predictions, list[str]]
) -> None:
    dataset, features = data
    _, test, _, _ = halves(dataset, features)
    labels = test.labels.copy()
    labels[np.arange(100), np.arange(100) % 3] = np.nan  # every row misses one label
    holey = RoutingDataset(test.prompt_ids, test.prompts, test.tasks, test.splits, labels, test.targets)
    message = r"^no evaluation row has every target labelled and priced; nothing to route$"
    with pytest.raises(DataError, match=message):
        score(holey, predicted[0], eval_costs(dataset, test))
    unpriced = np.full((100, 3), np.nan)  # e.g. a target without a price
    with pytest.raises(DataError, match=message):
        score(test, predicted[0], unpriced)


# --------------------------------------------------------------------- eval_costs
def test_eval_costs_price_evaluation_rows_with_the_training_output_lengths() -> None:
    prompts = ["abcd", "abcde", "héllo wörld", "x" * 40]  # 1, 2, 4 (13 UTF-8 bytes) and 10 tokens
    output_tokens = np.array([[100.0, 10.0], [300.0, 30.0], [5000.0, 5000.0], [7000.0, 7000.0]])
    observed = np.array([[np.nan] * 2, [np.nan] * 2, [np.nan] * 2, [np.nan, 0.5]])
    dataset = RoutingDataset(
        ["a", "b", "c", "d"], prompts, [None] * 4, ["train", "train", "test", "test"],
        np.ones((4, 2)), (TargetInfo("x", 1.0, 2.0), TargetInfo("y", 3.0, 4.0)),
        costs_usd=observed, output_tokens=output_tokens,
    )  # fmt: skip
    test = dataset.select(split="test")
    # medians of the training rows: 200 and 20 output tokens (not the test rows' 5000+)
    expected = np.array([[4 * 1.0 + 200 * 2.0, 4 * 3.0 + 20 * 4.0], [10 * 1.0 + 200 * 2.0, 0.5e6]]) / 1e6
    np.testing.assert_allclose(eval_costs(dataset, test), expected, rtol=1e-12)


# ------------------------------------------------------------------ cross_validated
@pytest.fixture(scope="module")
def with_duplicates() -> tuple[RoutingDataset, FeatureSet]:
    """240 rows: rows 200-239 repeat rows 0-39 (same text up to case and spaces, same features);
    rows 160-199 have the features of rows 40-79 but texts of their own."""
    dataset, features = planted(n=240, seed=3)
    rows = np.arange(240)
    source = rows.copy()
    source[200:] = rows[:40]
    source[160:200] = rows[40:80]
    prompts = dataset.prompts.copy()
    prompts[200:] = [f"  {text.upper()}\n" for text in prompts[:40]]
    copied = RoutingDataset(
        dataset.prompt_ids, prompts, dataset.tasks, dataset.splits, dataset.labels[source], dataset.targets
    )
    return copied, features.rows(source)


@pytest.fixture(scope="module")
def cv(with_duplicates: tuple[RoutingDataset, FeatureSet]) -> tuple[Predictions, list[str]]:
    steps: list[str] = []
    dataset, features = with_duplicates
    out = cross_validated(dataset, features, ("knn-embed", "random"), SETTINGS, 3, on_step=steps.append)
    return out, steps


def test_cross_validation_predicts_every_row_out_of_fold(cv: tuple[Predictions, list[str]]) -> None:
    predictions, steps = cv
    assert list(predictions.probabilities) == ["prefill", "knn-embed", "random"]
    for name, p in predictions.probabilities.items():
        assert p.shape == (240, 3) and not np.isnan(p).any(), name
    assert len(predictions.knn_k) == 3 and set(predictions.knn_k) <= set(KNN_KS)
    assert steps == [
        f"fold {fold}/3: {text}"
        for fold in (1, 2, 3)
        for text in ("fitting the router", "baseline knn-embed", "baseline random")
    ]


def test_equal_prompts_share_a_fold(cv: tuple[Predictions, list[str]]) -> None:
    predictions, _ = cv
    for name in ("prefill", "knn-embed"):
        p = predictions.probabilities[name]
        # equal features and equal normalised text: the same fold model scored both rows (float32
        # matrix products may round a row differently at another position: ~1e-8)
        np.testing.assert_allclose(p[200:], p[:40], rtol=1e-6, atol=1e-6, err_msg=name)
        # equal features but different texts may fall in other folds, whose models differ
        differs = np.abs(p[160:200] - p[40:80]).max(axis=1) > 1e-4
        assert differs.sum() >= 10, name


def test_cross_validated_predictions_score_with_paired_differences(
    with_duplicates: tuple[RoutingDataset, FeatureSet], cv: tuple[Predictions, list[str]]
) -> None:
    dataset, _ = with_duplicates
    out = score(dataset, cv[0], eval_costs(dataset, dataset), n_boot=100)
    assert (out["n_rows"], out["n_routed"]) == (240, 240)
    assert set(out["paired"]) == {"knn-embed", "random"}
    assert out["prefill"]["auc_mean"] > 0.8 and out["prefill"]["auc_mean"] > out["random"]["auc_mean"]
    json.dumps(out, allow_nan=False)


def test_more_folds_than_rows_is_a_data_error() -> None:
    dataset, features = planted(n=120)
    with pytest.raises(ConfigError, match=r"between 2 and the number of distinct prompts \(\d+\); got 500"):
        cross_validated(dataset, features, ("random",), SETTINGS, 500)


def test_cross_validation_needs_two_folds(with_duplicates: tuple[RoutingDataset, FeatureSet]) -> None:
    with pytest.raises(
        ConfigError, match=r"The 'folds' parameter must be between 2 and .*; got 1 instead\.$"
    ):
        cross_validated(*with_duplicates, ("random",), SETTINGS, 1)


# ------------------------------------------------------------------ budget adherence
def test_budgets_solved_on_validation_rows_hold_on_the_evaluation_rows(
    data: tuple[RoutingDataset, FeatureSet], router: Router
) -> None:
    from prefill_router.evaluate.run import budget_adherence

    dataset, features = data
    train, test, f_train, f_test = halves(dataset, features)
    predictions = predict_split(router, train, test, f_train, f_test, (), SETTINGS)
    rows = budget_adherence(router, test, predictions, eval_costs(dataset, test), (0.2, 0.5), n_boot=300)
    assert [r["share_of_max"] for r in rows] == [0.2, 0.5]
    for row in rows:
        got = row["achieved"]
        assert got["cost_ci"][0] <= got["cost"] <= got["cost_ci"][1]
        # Solved out of sample: the achieved cost stays near the budget (within its interval or 25%).
        assert got["cost_ci"][0] <= row["budget_usd"] * 1.25
        assert row["cost"] <= row["budget_usd"] + 1e-15  # met exactly on the rows it was solved on
    assert rows[0]["budget_usd"] < rows[1]["budget_usd"]
    assert rows[0]["achieved"]["cost"] <= rows[1]["achieved"]["cost"]


def test_a_budget_below_the_cheapest_routing_is_left_out_not_an_error(
    data: tuple[RoutingDataset, FeatureSet], router: Router
) -> None:
    """Shares of the dearest target's cost below what the cheapest routing spends (two targets at
    $0.1 and $0.2: any share under one half) have no μ; `evaluate` must still finish."""
    import copy

    from prefill_router.evaluate.run import budget_adherence

    dataset, features = data
    train, test, f_train, f_test = halves(dataset, features)
    predictions = predict_split(router, train, test, f_train, f_test, (), SETTINGS)
    costs = eval_costs(dataset, test)
    narrow = copy.copy(router)  # every target priced within a factor of 1.5 of the others
    prices = [1.0 + 0.25 * j for j in range(len(router.target_info))]
    narrow.target_info = tuple(
        replace(t, input_usd_per_mtok=price, output_usd_per_mtok=price)
        for t, price in zip(router.target_info, prices, strict=True)
    )
    rows = budget_adherence(narrow, test, predictions, costs, (0.25, 0.5, 0.75), n_boot=50)
    assert [r["share_of_max"] for r in rows] == [0.75]  # 1.0 / 1.5 of the dearest is the floor


def test_a_router_without_calibration_rows_has_no_budget_rows(
    data: tuple[RoutingDataset, FeatureSet], router: Router
) -> None:
    from prefill_router.evaluate.run import budget_adherence

    dataset, features = data
    train, test, f_train, f_test = halves(dataset, features)
    bare = Router(
        encoder=router.encoder_identity, transform=router.transform, ensemble=router.ensemble,
        temperatures=router.temperatures, targets=router.target_info, output_tokens=router.output_tokens,
    )  # fmt: skip
    predictions = predict_split(bare, train, test, f_train, f_test, (), SETTINGS)
    assert budget_adherence(bare, test, predictions, eval_costs(dataset, test)) == []


def test_apgr_is_reported_for_two_target_pools_only(
    data: tuple[RoutingDataset, FeatureSet], result: dict[str, Any]
) -> None:
    assert result["prefill"]["apgr"] is None  # three targets
    dataset, _ = data
    two = dataset.select(targets=["small", "large"])
    complete = ~np.isnan(two.labels).any(axis=1)
    two = two.take(np.flatnonzero(complete))
    knowing = Predictions({"prefill": np.clip(two.labels, 0.05, 0.95)})  # knows every answer
    guessing = Predictions({"prefill": np.random.default_rng(0).random(two.labels.shape)})
    costs = eval_costs(two, two)
    good = score(two, knowing, costs, n_boot=50)["prefill"]["apgr"]
    blind = score(two, guessing, costs, n_boot=50)["prefill"]["apgr"]
    assert 0.0 <= blind < good <= 1.0
    assert good > 0.8
