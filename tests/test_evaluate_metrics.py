"""The routing metrics of DESIGN §8 (evaluate/metrics.py), against values worked out by hand."""

# ruff: noqa: N803, N806 — Y, C, P are DESIGN's names for the label, cost and probability matrices.

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import roc_auc_score

from prefill_router import evaluate
from prefill_router.errors import ConfigError, DataError
from prefill_router.evaluate import (
    Yardstick,
    aiq,
    apgr,
    auc_difference,
    best_single,
    bootstrap_rows,
    cost_savings,
    curve_difference,
    curve_points,
    gap_captured,
    gap_captured_at_savings,
    interval,
    mean_auc,
    most_expensive,
    oracle,
    oracle_choice,
    outcome,
    paired_difference,
    routing_intervals,
    savings_at_accuracy,
    savings_intervals,
    target_quality,
)
from tests.conftest import ROOT

# Four prompts x three targets "a", "b", "c". Row by row, the oracle picks:
#   0: only a is correct                         -> a, $1
#   1: graded, b and c tie at 0.5 and at $3      -> b (cost tie: lower column), $3
#   2: nobody is correct                         -> the cheapest, b, $1
#   3: b and c are correct, c is cheaper         -> c, $4
# Oracle: accuracy (1 + 0.5 + 0 + 1) / 4 = 0.625, cost (1 + 3 + 1 + 4) / 4 = 2.25.
# Column means: accuracy a 0.25, b 0.375, c 0.375 (tie: b); cost a 1.25, b 2.75, c 3.75.
Y = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
C = np.array([[1.0, 2.0, 4.0], [1.0, 3.0, 3.0], [2.0, 1.0, 4.0], [1.0, 5.0, 4.0]])
TARGETS = ("a", "b", "c")
YARD = Yardstick(0.625, 2.25, "b", 0.375, 2.75, "c", 3.75)
# A choice as accurate as the oracle but dearer: accuracy 0.625, cost (1 + 3 + 2 + 5) / 4 = 2.75.
GOOD_CHOICE = np.array([0, 2, 0, 1])

METRICS_API = json.loads((ROOT / "tests" / "public_api.json").read_text())["prefill_router.evaluate"]


def test_the_package_exports_the_metrics_and_imports_no_heavy_library() -> None:
    assert set(METRICS_API) <= set(evaluate.__all__)
    assert all(hasattr(evaluate, name) for name in evaluate.__all__)
    code = (
        "import sys, prefill_router.evaluate;"
        "print(sorted({'torch', 'transformers', 'matplotlib', 'sklearn', 'scipy'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------- oracle, singles
def test_oracle_picks_the_cheapest_target_reaching_the_best_label() -> None:
    assert oracle_choice(Y, C).tolist() == [0, 1, 1, 2]
    assert oracle(Y, C) == (0.625, 2.25)


def test_oracle_breaks_cost_ties_towards_the_lower_column() -> None:
    y = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.25, 0.25]])
    c = np.array([[2.0, 1.0, 1.0], [3.0, 3.0, 3.0], [0.0, 2.0, 2.0]])
    assert oracle_choice(y, c).tolist() == [1, 0, 1]
    assert oracle(y, c) == pytest.approx(((1 + 0 + 0.25) / 3, (1 + 3 + 2) / 3))


def test_best_single_and_most_expensive() -> None:
    assert best_single(Y) == (1, 0.375)  # b and c tie at 0.375: the lower column
    assert most_expensive(C) == (2, 3.75)
    assert best_single(np.array([[0.0, 1.0], [0.0, 1.0]])) == (1, 1.0)


def test_outcome_is_the_mean_label_and_cost_of_a_choice() -> None:
    assert outcome(GOOD_CHOICE, Y, C) == (0.625, 2.75)
    assert outcome(np.zeros(4, dtype=int), Y, C) == (0.25, 1.25)


def test_gap_captured_and_cost_savings() -> None:
    assert gap_captured(0.5, 0.375, 0.625) == 0.5
    assert gap_captured(0.25, 0.375, 0.625) == -0.5
    assert math.isnan(gap_captured(0.5, 0.6, 0.6))
    assert cost_savings(1.5, 3.75) == pytest.approx(0.6)
    assert cost_savings(3.75, 3.75) == 0.0
    assert math.isnan(cost_savings(1.0, 0.0))


def test_yardstick_of_rows() -> None:
    yard = Yardstick.of(Y, C, TARGETS)
    assert yard == YARD
    assert yard.gap(0.625) == 1.0 and yard.gap(0.375) == 0.0 and yard.gap(0.25) == -0.5
    assert yard.savings(2.25) == pytest.approx(0.4) and yard.savings(1.25) == pytest.approx(2 / 3)
    assert yard.to_json() == {
        "oracle_accuracy": 0.625,
        "oracle_cost": 2.25,
        "best_single": "b",
        "best_single_accuracy": 0.375,
        "best_single_cost": 2.75,
        "max_cost_target": "c",
        "max_cost": 3.75,
    }


def test_yardstick_json_is_strict() -> None:
    blob = Yardstick(math.nan, 1.0, "a", 0.5, 1.0, "a", 1.0).to_json()
    assert blob["oracle_accuracy"] is None
    json.dumps(blob, allow_nan=False)


def test_yardstick_needs_one_name_per_column() -> None:
    with pytest.raises(DataError, match=re.escape("targets must name the 3 columns; got 2 names instead.")):
        Yardstick.of(Y, C, ["a", "b"])


# ----------------------------------------------------------------------- errors
NAN_ROWS = re.escape(
    "Y and C must be complete for routing metrics; got 2 of 4 rows with NaN. Drop those rows first."
)


@pytest.mark.parametrize(
    "call",
    [
        lambda y, c: oracle(y, c),
        lambda y, c: oracle_choice(y, c),
        lambda y, c: outcome(GOOD_CHOICE, y, c),
        lambda y, c: Yardstick.of(y, c, TARGETS),
        lambda y, c: routing_intervals(GOOD_CHOICE, y, c, YARD, bootstrap_rows(4, 5)),
    ],
)
def test_nan_rows_are_refused_with_their_count(call: object) -> None:
    y, c = Y.copy(), C.copy()
    y[0, 1] = np.nan
    c[2, 0] = np.nan
    c[0, 2] = np.nan  # a second NaN on row 0 counts once
    with pytest.raises(DataError, match=NAN_ROWS):
        call(y, c)  # type: ignore[operator]


def test_nan_in_one_matrix_names_that_matrix() -> None:
    y = Y.copy()
    y[3, 0] = np.nan
    with pytest.raises(DataError, match=re.escape("Y must be complete for routing metrics; got 1 of 4 rows")):
        best_single(y)
    with pytest.raises(DataError, match=re.escape("C must be complete for routing metrics; got 1 of 4 rows")):
        most_expensive(y)


def test_bad_shapes_and_choices_are_refused() -> None:
    with pytest.raises(DataError, match=re.escape("Y and C must have the same shape; got (4, 3) and (4, 2)")):
        oracle(Y, C[:, :2])
    with pytest.raises(DataError, match=re.escape("Y must be a 2-D (prompts, targets) array")):
        best_single(np.ones(3))
    with pytest.raises(
        DataError, match=re.escape("choice must be an (4,) int array of target columns; got float64")
    ):
        outcome(np.zeros(4), Y, C)
    with pytest.raises(DataError, match=re.escape("choice must hold target columns in [0, 3); got 0..3.")):
        outcome(np.array([0, 1, 2, 3]), Y, C)


# -------------------------------------------------------------------- the curve
def test_curve_points_carry_gap_and_savings() -> None:
    points = curve_points(np.array([0.25, 0.5]), np.array([1.25, 2.5]), YARD)
    assert points == [
        {"accuracy": 0.25, "cost": 1.25, "gap_captured": -0.5, "cost_savings": pytest.approx(2 / 3)},
        {"accuracy": 0.5, "cost": 2.5, "gap_captured": 0.5, "cost_savings": pytest.approx(1 / 3)},
    ]


def test_curve_points_turn_an_undefined_gap_into_none() -> None:
    flat = Yardstick(0.5, 1.0, "a", 0.5, 1.0, "a", 0.0)  # oracle == best single, max cost 0
    (point,) = curve_points(np.array([0.5]), np.array([1.0]), flat)
    assert point == {"accuracy": 0.5, "cost": 1.0, "gap_captured": None, "cost_savings": None}


def test_gap_captured_at_savings_takes_the_best_gap_at_or_above_each_level() -> None:
    points: list[dict[str, float | None]] = [
        {"gap_captured": 0.1, "cost_savings": 0.8},
        {"gap_captured": 0.4, "cost_savings": 0.6},
        {"gap_captured": 0.9, "cost_savings": 0.2},
        {"gap_captured": None, "cost_savings": 0.9},
        {"gap_captured": math.nan, "cost_savings": 0.95},
        {"gap_captured": 0.7, "cost_savings": None},
    ]
    result = gap_captured_at_savings(points)
    assert list(result) == ["0.5", "0.7431"]
    assert result == {"0.5": 0.4, "0.7431": 0.1}


def test_gap_captured_at_savings_is_none_when_no_point_saves_enough() -> None:
    assert gap_captured_at_savings([{"gap_captured": 0.9, "cost_savings": 0.3}]) == {
        "0.5": None,
        "0.7431": None,
    }
    assert gap_captured_at_savings([]) == {"0.5": None, "0.7431": None}
    assert gap_captured_at_savings([{"gap_captured": 0.2, "cost_savings": 0.3}], (0.25,)) == {"0.25": 0.2}


def test_gap_captured_at_savings_counts_a_level_missed_by_rounding_only() -> None:
    points = [
        {"gap_captured": 0.3, "cost_savings": 0.7431 - 1e-12},
        {"gap_captured": 0.5, "cost_savings": 0.74},
    ]
    assert gap_captured_at_savings(points) == {"0.5": 0.5, "0.7431": 0.3}


# -------------------------------------------------------------------------- AIQ
def test_aiq_of_a_single_point_is_its_accuracy_times_the_share_right_of_it() -> None:
    one = np.array([0.6])
    assert aiq(np.array([2.0]), one, (1.0, 5.0)) == pytest.approx(0.6 * 3 / 4)
    assert aiq(np.array([1.0]), one, (1.0, 5.0)) == pytest.approx(0.6)
    assert aiq(np.array([0.5]), one, (1.0, 5.0)) == pytest.approx(0.6)  # left of the range: flat from there
    assert aiq(np.array([5.0]), one, (1.0, 5.0)) == 0.0
    assert aiq(np.array([6.0]), one, (1.0, 5.0)) == 0.0  # right of the range


def test_aiq_of_two_points_is_the_area_under_the_segment_then_flat() -> None:
    # (1, .4)-(3, .8) rises over [1, 3] (area 1.2), then stays at .8 over [3, 5] (area 1.6): 2.8 / 4.
    assert aiq(np.array([1.0, 3.0]), np.array([0.4, 0.8]), (1.0, 5.0)) == pytest.approx(0.7)


def test_aiq_ignores_points_inside_the_hull_and_duplicates() -> None:
    cost = np.array([1.0, 3.0, 2.0, 4.0, 3.0, 1.0])
    accuracy = np.array([0.4, 0.8, 0.5, 0.7, 0.6, 0.1])  # (2, .5) below the chord; (4, .7) dearer and worse
    assert aiq(cost, accuracy, (1.0, 5.0)) == pytest.approx(0.7)


def test_aiq_makes_a_falling_hull_flat() -> None:
    # Hull (1, .4)-(2, .9)-(4, .5) becomes (1, .4)-(2, .9)-flat: .65 over [1, 2], .9 x 3 over [2, 5].
    assert aiq(np.array([1.0, 2.0, 4.0]), np.array([0.4, 0.9, 0.5]), (1.0, 5.0)) == pytest.approx(3.35 / 4)


def test_aiq_clips_a_curve_reaching_outside_the_cost_range() -> None:
    # Hull (0, .3)-(2, .7)-(6, .9): .5 at 1 and .85 at 5; area .6 over [1, 2] and 2.325 over [2, 5].
    cost, accuracy = np.array([0.0, 2.0, 6.0]), np.array([0.3, 0.7, 0.9])
    assert aiq(cost, accuracy, (1.0, 5.0)) == pytest.approx(2.925 / 4)


def test_aiq_is_zero_left_of_the_cheapest_point() -> None:
    # 0 over [1, 3], .85 over [3, 4], .9 over [4, 5].
    assert aiq(np.array([3.0, 4.0]), np.array([0.8, 0.9]), (1.0, 5.0)) == pytest.approx(1.75 / 4)


def test_aiq_of_an_empty_or_reversed_range() -> None:
    assert math.isnan(aiq(np.array([1.0]), np.array([0.5]), (2.0, 2.0)))
    with pytest.raises(
        DataError, match=re.escape("cost_range must be finite (c_lo, c_hi) with c_lo <= c_hi")
    ):
        aiq(np.array([1.0]), np.array([0.5]), (3.0, 2.0))
    with pytest.raises(
        DataError, match=re.escape("cost and accuracy must have the same length; got 2 and 1.")
    ):
        aiq(np.array([1.0, 2.0]), np.array([0.5]), (1.0, 2.0))


# ------------------------------------------------------------------------- APGR
def test_apgr_of_the_straight_line_from_weak_to_strong_is_one_half() -> None:
    share = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    assert apgr(share, 0.5 + 0.4 * share, 0.5, 0.9) == pytest.approx(0.5)
    assert apgr(np.array([0.5]), np.array([0.7]), 0.5, 0.9) == pytest.approx(0.5)  # endpoints added


def test_apgr_of_a_router_recovering_everything_without_strong_calls_is_one() -> None:
    assert apgr(np.array([0.0]), np.array([0.9]), 0.5, 0.9) == pytest.approx(1.0)


def test_apgr_keeps_the_best_pgr_and_makes_it_non_decreasing() -> None:
    # PGR .8 at .5 between (0, 0) and (1, 1): .2 + .45.
    assert apgr(np.array([0.5, 0.5]), np.array([0.82, 0.6]), 0.5, 0.9) == pytest.approx(0.65)
    # (0, 0), (.3, .9), (.6, .9 not .5), (1, 1): .135 + .27 + .38.
    assert apgr(np.array([0.3, 0.6]), np.array([0.86, 0.7]), 0.5, 0.9) == pytest.approx(0.785)


def test_apgr_edge_cases() -> None:
    assert math.isnan(apgr(np.array([0.5]), np.array([0.7]), 0.7, 0.7))
    with pytest.raises(DataError, match=re.escape("strong_share must lie in [0, 1]; got 0.5..1.5 instead.")):
        apgr(np.array([0.5, 1.5]), np.array([0.7, 0.8]), 0.5, 0.9)


# ------------------------------------------------------------ per-target quality
def test_target_quality_by_hand() -> None:
    P = np.array([[0.9, 0.3, 0.5], [0.2, 0.7, 0.5], [0.6, 0.1, 0.5], [0.4, 0.8, 0.5]])
    y = np.array([[1.0, np.nan, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, np.nan], [1.0, 1.0, 1.0]])
    quality = target_quality(P, y, TARGETS)
    # a: positives .9 and .4 against negatives .2 and .6 win 3 of 4 pairs; each p has its own ECE bin.
    assert quality["a"] == pytest.approx({"auc": 0.75, "brier": 0.77 / 4, "ece": 1.5 / 4, "n": 4})
    # b: row 0 unobserved; 0.5 counts as correct for the AUC and as 0.5 for Brier and ECE.
    assert quality["b"] == pytest.approx({"auc": 1.0, "brier": 0.09 / 3, "ece": 0.5 / 3, "n": 3})
    assert math.isnan(quality["c"]["auc"]) and quality["c"]["n"] == 3  # one class
    assert quality["c"]["brier"] == pytest.approx(0.25)
    assert mean_auc(quality) == pytest.approx(0.875)


def test_target_quality_threshold_and_refusals() -> None:
    P, y = np.array([[0.9], [0.6], [0.2]]), np.array([[1.0], [0.5], [0.0]])
    assert target_quality(P, y, ["a"])["a"]["auc"] == 1.0
    assert target_quality(P, y, ["a"], label_threshold=0.75)["a"]["auc"] == pytest.approx(1.0)
    assert target_quality(1 - P, y, ["a"], label_threshold=0.75)["a"]["auc"] == pytest.approx(0.0)
    with pytest.raises(
        DataError, match=re.escape("P must hold probabilities in [0, 1] wherever Y is observed")
    ):
        target_quality(np.array([[np.nan], [0.6], [0.2]]), y, ["a"])
    assert (
        target_quality(np.array([[np.nan], [0.6], [0.2]]), np.array([[np.nan], [1], [0]]), ["a"])["a"]["n"]
        == 2
    )


def test_mean_auc_without_a_finite_auc_is_nan() -> None:
    assert math.isnan(mean_auc({"a": {"auc": math.nan}}))
    assert math.isnan(mean_auc({}))


# -------------------------------------------------------------------- bootstrap
def test_bootstrap_rows_are_deterministic_for_a_seed() -> None:
    rows = bootstrap_rows(7, 50, seed=3)
    assert rows.shape == (50, 7) and rows.min() >= 0 and rows.max() < 7
    np.testing.assert_array_equal(rows, bootstrap_rows(7, 50, seed=3))
    assert not np.array_equal(rows, bootstrap_rows(7, 50, seed=4))
    with pytest.raises(
        ConfigError, match=re.escape("The 'n_boot' parameter must be at least 1; got 0 instead.")
    ):
        bootstrap_rows(7, 0)
    with pytest.raises(DataError, match=re.escape("bootstrap needs at least one row; got n=0.")):
        bootstrap_rows(0)


def test_interval_is_the_central_percentile_range_of_finite_samples() -> None:
    assert interval(np.arange(101.0), 0.9) == pytest.approx([5.0, 95.0])
    assert interval(np.array([np.nan, 1.0, 1.0, np.inf])) == [1.0, 1.0]
    assert all(math.isnan(v) for v in interval(np.array([np.nan])))
    with pytest.raises(
        ConfigError, match=re.escape("The 'level' parameter must be in (0, 1); got 1.0 instead.")
    ):
        interval(np.arange(3.0), 1.0)


def test_routing_intervals_collapse_to_the_point_on_identity_resamples() -> None:
    same = np.tile(np.arange(4), (3, 1))
    result = routing_intervals(GOOD_CHOICE, Y, C, YARD, same)
    expected = {"accuracy": 0.625, "cost": 2.75, "gap_captured": 1.0, "cost_savings": 4 / 15}
    assert list(result) == list(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx([value, value]), key


def test_routing_intervals_recompute_the_yardstick_on_each_resample() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice([0.0, 0.5, 1.0], size=(12, 3))
    c = rng.choice([1.0, 2.0, 3.0], size=(12, 3))
    choice = rng.integers(0, 3, size=12)
    resamples = bootstrap_rows(12, 60, seed=1)
    values: dict[str, list[float]] = {"accuracy": [], "cost": [], "gap_captured": [], "cost_savings": []}
    for rows in resamples:
        yard = Yardstick.of(y[rows], c[rows], TARGETS)
        accuracy, cost = outcome(choice[rows], y[rows], c[rows])
        for key, value in zip(values, (accuracy, cost, yard.gap(accuracy), yard.savings(cost)), strict=True):
            values[key].append(value)
    result = routing_intervals(choice, y, c, Yardstick.of(y, c, TARGETS), resamples)
    for key, samples in values.items():
        assert result[key] == pytest.approx(interval(np.array(samples)), abs=1e-12), key


def test_routing_intervals_drop_resamples_without_a_gap() -> None:
    # Rows [0, 0, 0, 0]: target a is both the oracle and the best single, so the gap is undefined.
    resamples = np.array([[0, 1, 2, 3], [0, 0, 0, 0]])
    assert routing_intervals(GOOD_CHOICE, Y, C, YARD, resamples)["gap_captured"] == [1.0, 1.0]


def test_routing_intervals_refuse_a_yardstick_of_other_rows() -> None:
    with pytest.raises(DataError, match=re.escape("yard was computed on other rows than Y")):
        routing_intervals(GOOD_CHOICE, Y, C, Yardstick.of(Y[:2], C[:2], TARGETS), bootstrap_rows(4, 5))
    with pytest.raises(DataError, match=re.escape("resamples must index rows in [0, 4); got 0..4.")):
        routing_intervals(GOOD_CHOICE, Y, C, YARD, np.array([[0, 4]]))


def test_paired_difference_by_hand() -> None:
    a, b = np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0])
    assert paired_difference(a, b, np.tile(np.arange(4), (2, 1))) == {"mean": 0.5, "ci": [0.5, 0.5]}
    # Resample means 1 (rows 0, 0, 3, 3) and 0 (rows 1, 1, 2, 2): percentiles 2.5 and 97.5 of {0, 1}.
    result = paired_difference(a, b, np.array([[0, 0, 3, 3], [1, 1, 2, 2]]))
    assert result == {"mean": 0.5, "ci": pytest.approx([0.025, 0.975])}
    with pytest.raises(
        DataError, match=re.escape("a_values and b_values must have the same length; got 4 and 3.")
    ):
        paired_difference(a, b[:3], np.zeros((1, 4), dtype=int))


def test_auc_difference_of_a_perfect_and_a_reversed_ranker() -> None:
    y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    good = np.where(y > 0, 0.8, 0.2)
    resamples = np.array([[0, 1, 2, 3], [0, 2, 1, 3], [0, 0, 0, 3]])  # the last leaves target b one class
    result = auc_difference(good, 1 - good, y, resamples)
    assert result == {"mean": 1.0, "ci": [1.0, 1.0], "resamples_used": 2}


def test_auc_difference_matches_roc_auc_score_on_each_resample() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((30, 3)) < 0.5).astype(float)
    y[rng.random((30, 3)) < 0.2] = np.nan
    P_a, P_b = np.round(rng.random((30, 3)), 1), rng.random((30, 3))  # P_a holds ties
    resamples = bootstrap_rows(30, 40, seed=2)

    def resampled_mean_auc(P: np.ndarray, rows: np.ndarray) -> float:
        labels, scores = y[rows], P[rows]
        seen = ~np.isnan(labels)
        return float(np.mean([roc_auc_score(labels[seen[:, j], j], scores[seen[:, j], j]) for j in range(3)]))

    expected = [resampled_mean_auc(P_a, rows) - resampled_mean_auc(P_b, rows) for rows in resamples]
    full = mean_auc(target_quality(P_a, y, TARGETS)) - mean_auc(target_quality(P_b, y, TARGETS))
    result = auc_difference(P_a, P_b, y, resamples)
    assert result["mean"] == pytest.approx(full, abs=1e-12)
    assert result["ci"] == pytest.approx(interval(np.array(expected)), abs=1e-12)
    assert result["resamples_used"] == 40


def test_auc_difference_draws_its_own_resamples_by_default() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((20, 2)) < 0.5).astype(float)
    P_a, P_b = rng.random((20, 2)), rng.random((20, 2))
    first = auc_difference(P_a, P_b, y)
    assert first == auc_difference(P_a, P_b, y, bootstrap_rows(20, 200, seed=0))
    assert 150 < first["resamples_used"] <= 200
    assert auc_difference(P_a, P_b, y, n_boot=10, seed=5)["resamples_used"] <= 10
    nothing = auc_difference(P_a, P_b, np.ones((20, 2)))  # every target has one class
    assert math.isnan(nothing["mean"]) and all(math.isnan(v) for v in nothing["ci"])
    assert nothing["resamples_used"] == 0


# ----------------------------------------------------------- property tests
@st.composite
def routing_data(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y, C, choice) with graded labels and many cost ties."""
    n, m = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    y = draw(hnp.arrays(np.float64, (n, m), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0])))
    c = draw(hnp.arrays(np.float64, (n, m), elements=st.sampled_from([0.0, 0.5, 1.0, 3.0])))
    choice = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, m - 1)))
    return y, c, choice


@settings(max_examples=60, deadline=None)
@given(routing_data())
def test_oracle_beats_every_single_target_and_every_choice(data: tuple[np.ndarray, ...]) -> None:
    y, c, choice = data
    accuracy, cost = oracle(y, c)
    assert all(accuracy >= y[:, j].mean() for j in range(y.shape[1]))
    assert accuracy >= outcome(choice, y, c)[0]
    # Row by row, the oracle pays the cheapest target reaching the row's best label (the cheapest
    # target when every label is 0): any other best-label choice (the dearest, the first) costs more.
    best = y.max(axis=1, keepdims=True)
    eligible = (y == best) | (best <= 0)
    cheapest_correct = np.where(eligible, c, np.inf).min(axis=1)
    picked = oracle_choice(y, c)
    assert eligible[np.arange(len(y)), picked].all()
    assert c[np.arange(len(y)), picked].tolist() == cheapest_correct.tolist()
    assert cost == pytest.approx(cheapest_correct.mean(), abs=1e-12)
    assert accuracy == pytest.approx(best.mean(), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(routing_data())
def test_gap_of_the_best_single_is_0_and_of_the_oracle_is_1(data: tuple[np.ndarray, ...]) -> None:
    y, c, _ = data
    names = [f"t{j}" for j in range(y.shape[1])]
    yard = Yardstick.of(y, c, names)
    best = names.index(yard.best_single)
    single_accuracy, single_cost = outcome(np.full(len(y), best), y, c)
    oracle_accuracy, _ = outcome(oracle_choice(y, c), y, c)
    if yard.oracle_accuracy > yard.best_single_accuracy:
        assert yard.gap(single_accuracy) == 0.0
        assert yard.gap(oracle_accuracy) == 1.0
    else:
        assert math.isnan(yard.gap(single_accuracy))
    assert single_cost == yard.best_single_cost


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(1, 8), elements=st.floats(0, 10)),
    st.data(),
    st.floats(0, 10),
    st.floats(0.01, 10),
)
def test_aiq_lies_between_0_and_the_best_accuracy(
    cost: np.ndarray, data: st.DataObject, lo: float, width: float
) -> None:
    accuracy = data.draw(hnp.arrays(np.float64, cost.shape, elements=st.floats(0, 1)))
    value = aiq(cost, accuracy, (lo, lo + width))
    assert -1e-12 <= value <= accuracy.max() + 1e-12


@settings(max_examples=40, deadline=None)
@given(routing_data(), st.integers(0, 2**16))
def test_bootstrap_intervals_hold_the_point_and_repeat_for_a_seed(
    data: tuple[np.ndarray, ...], seed: int
) -> None:
    y, c, choice = data
    yard = Yardstick.of(y, c, [f"t{j}" for j in range(y.shape[1])])
    result = routing_intervals(choice, y, c, yard, bootstrap_rows(len(y), 200, seed))
    accuracy, cost = outcome(choice, y, c)
    for key, value in (("accuracy", accuracy), ("cost", cost)):
        lo, hi = result[key]
        assert lo - 1e-12 <= value <= hi + 1e-12, key
    assert result == routing_intervals(choice, y, c, yard, bootstrap_rows(len(y), 200, seed))


# ------------------------------------------------------- savings at the best single's accuracy
def test_savings_at_accuracy_takes_the_cheapest_point_accurate_enough() -> None:
    accuracy, cost = np.array([0.30, 0.36, 0.375, 0.40]), np.array([1.0, 1.5, 2.2, 2.75])
    # YARD: best single b, accuracy 0.375 at $2.75
    assert savings_at_accuracy(accuracy, cost, 0.375, 2.75) == (2, pytest.approx(1 - 2.2 / 2.75))
    assert savings_at_accuracy(accuracy, cost, 0.375, 2.75, margin=0.02) == (1, pytest.approx(1 - 1.5 / 2.75))
    assert savings_at_accuracy(accuracy, cost, 0.5, 2.75) == (None, None)  # never accurate enough
    # at equal cost the more accurate point wins
    assert savings_at_accuracy(np.array([0.4, 0.5]), np.array([1.0, 1.0]), 0.4, 2.0)[0] == 1


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(0, 1)), st.floats(0, 1))
def test_a_wider_margin_never_saves_less(accuracy: np.ndarray, best: float) -> None:
    cost = np.linspace(1.0, 2.0, len(accuracy))
    savings = [savings_at_accuracy(accuracy, cost, best, 2.0, m)[1] for m in (0.0, 0.01, 0.02)]
    reached = [s for s in savings if s is not None]
    assert reached == sorted(reached)
    assert [s is None for s in savings] == sorted([s is None for s in savings], reverse=True)


def test_savings_intervals_of_the_best_single_itself_are_zero() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((300, 3)) < np.array([0.3, 0.9, 0.4])).astype(float)  # b is the best in every resample
    c = np.tile([1.0, 3.0, 2.0], (300, 1))
    out = savings_intervals(np.full((1, 300), 1), y, c, bootstrap_rows(300, 200, seed=1))
    assert set(out) == {0.0, 0.01, 0.02}
    for margin in out:
        assert out[margin]["ci"] == pytest.approx([0.0, 0.0], abs=1e-12) and out[margin]["reached"] == 1.0
    # "always a" never comes within 2 points of b
    assert (
        savings_intervals(np.full((1, 300), 0), y, c, bootstrap_rows(300, 200, seed=1))[0.02]["reached"] == 0
    )


def test_savings_intervals_hold_the_point_estimate_of_a_router() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random((400, 2)) < np.array([0.5, 0.8])).astype(float)
    c = np.tile([1.0, 10.0], (400, 1))
    # a router that sends the prompts the cheap target gets right to it, the rest to the dear one
    choices = np.stack([np.where(y[:, 0] == 1, 0, 1), np.ones(400, int)])
    rows = np.arange(400)
    accuracy, cost = y[rows, choices].mean(axis=1), c[rows, choices].mean(axis=1)
    _, saving = savings_at_accuracy(
        accuracy, cost, 0.8 if y[:, 1].mean() >= y[:, 0].mean() else 0.5, c[:, 1].mean()
    )
    out = savings_intervals(choices, y, c, bootstrap_rows(400, 300, seed=0))
    lo, hi = out[0.0]["ci"]
    assert saving is not None and lo <= saving <= hi and out[0.0]["reached"] == 1.0


def test_curve_difference_of_a_curve_with_itself_is_zero_and_a_better_curve_wins() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random((300, 2)) < np.array([0.5, 0.8])).astype(float)
    c = np.tile([1.0, 10.0], (300, 1))
    resamples = bootstrap_rows(300, 100, seed=0)
    cheap_first = np.stack([np.zeros(300, int), np.where(y[:, 0] == 1, 0, 1), np.ones(300, int)])
    singles = np.stack([np.zeros(300, int), np.ones(300, int)])
    same = curve_difference(singles, singles, y, c, resamples, (1.0, 10.0))
    assert same == {"mean": 0.0, "ci": [0.0, 0.0]}
    better = curve_difference(cheap_first, singles, y, c, resamples, (1.0, 10.0))
    assert better["mean"] > 0 and better["ci"][0] > 0
