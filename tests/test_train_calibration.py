"""Temperature scaling and the calibration metrics (train/calibration.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from prefill_router.train import apply_temperature, expected_calibration_error, fit_temperature
from prefill_router.train.calibration import bce, brier, logit, reliability


def sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return out


def miscalibrated(scale: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn with P(y = 1) = σ(z) and predictions σ(scale · z): over-confident when scale > 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=n)
    y = (rng.random(n) < sigmoid(z)).astype(np.float64)
    return sigmoid(scale * z), y


# ------------------------------------------------------------------ temperature
def test_over_confident_probabilities_get_t_above_1_and_better_calibration() -> None:
    p, y = miscalibrated(3.0)
    t = fit_temperature(p, y)
    assert t > 1 and t == pytest.approx(3.0, rel=0.15)  # dividing the logit by ~3 undoes the 3z
    fixed = apply_temperature(p, t)
    assert expected_calibration_error(fixed, y) < 0.5 * expected_calibration_error(p, y)
    assert bce(fixed, y) < bce(p, y)


def test_under_confident_probabilities_get_t_below_1() -> None:
    p, y = miscalibrated(1 / 3)
    t = fit_temperature(p, y)
    assert t < 1 and t == pytest.approx(1 / 3, rel=0.15)
    fixed = apply_temperature(p, t)
    assert expected_calibration_error(fixed, y) < expected_calibration_error(p, y)
    assert bce(fixed, y) < bce(p, y)


def test_calibrated_probabilities_keep_t_near_1() -> None:
    p, y = miscalibrated(1.0)
    assert fit_temperature(p, y) == pytest.approx(1.0, abs=0.1)


def test_temperature_keeps_the_ranking_so_the_auc() -> None:
    p, y = miscalibrated(3.0, n=500)
    for t in (0.25, 2.7, 10.0):
        assert roc_auc_score(y, apply_temperature(p, t)) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_apply_temperature_is_sigmoid_of_logit_over_t() -> None:
    p = np.array([0.1, 0.5, 0.8])
    np.testing.assert_allclose(apply_temperature(p, 2.0), sigmoid(np.log(p / (1 - p)) / 2.0), rtol=1e-12)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, rtol=1e-12)


def test_apply_temperature_broadcasts_one_t_per_column() -> None:
    p = np.array([[0.1, 0.9], [0.7, 0.4]])
    out = apply_temperature(p, np.array([2.0, 0.5]))
    np.testing.assert_allclose(out[:, 0], apply_temperature(p[:, 0], 2.0))
    np.testing.assert_allclose(out[:, 1], apply_temperature(p[:, 1], 0.5))


def test_logit_is_finite_at_0_and_1() -> None:
    assert np.isfinite(logit(np.array([0.0, 1.0]))).all()


def test_fit_temperature_ignores_nan_labels() -> None:
    p, y = miscalibrated(3.0, n=600)
    with_nan = np.concatenate([p, [0.999, 0.001, 0.5]])
    y_nan = np.concatenate([y, [np.nan, np.nan, np.nan]])
    assert fit_temperature(with_nan, y_nan) == pytest.approx(fit_temperature(p, y), rel=1e-9)


@pytest.mark.parametrize(
    "y",
    [np.ones(50), np.zeros(50), np.full(50, np.nan), np.array([1.0] + [np.nan] * 49)],
    ids=["all-correct", "all-wrong", "no-labels", "one-label"],
)
def test_labels_that_say_nothing_give_t_1(y: np.ndarray) -> None:
    p = np.linspace(0.01, 0.99, 50)
    assert fit_temperature(p, y) == 1.0


# ---------------------------------------------------------------------- metrics
def test_ece_by_hand() -> None:
    # 5 bins of width 0.2: 0.1 -> bin 0; 0.3 and 0.35 -> bin 1; 0.9 and 1.0 -> bin 4
    p = np.array([0.1, 0.3, 0.35, 0.9, 1.0])
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    # bin 0: 1 row, |0.1 - 0| = 0.1; bin 1: 2 rows, |0.325 - 0.5| = 0.175; bin 4: 2 rows, |0.95 - 1| = 0.05
    expected = (1 * 0.1 + 2 * 0.175 + 2 * 0.05) / 5
    assert expected_calibration_error(p, y, bins=5) == pytest.approx(expected, abs=1e-12)


def test_ece_of_perfect_and_worst_predictions() -> None:
    y = np.array([0.0, 1.0, 1.0, 0.0])
    assert expected_calibration_error(y, y) == 0.0
    assert expected_calibration_error(1 - y, y) == pytest.approx(1.0)


def test_ece_and_brier_ignore_nan_labels() -> None:
    p = np.array([0.1, 0.3, 0.35, 0.9])
    y = np.array([0.0, 1.0, 0.0, 1.0])
    p_more, y_more = np.append(p, [0.99, 0.02]), np.append(y, [np.nan, np.nan])
    assert expected_calibration_error(p_more, y_more) == expected_calibration_error(p, y)
    assert brier(p_more, y_more) == pytest.approx(brier(p, y))
    assert brier(p, y) == pytest.approx(np.mean((p - y) ** 2))
    assert bce(p_more, y_more) == pytest.approx(bce(p, y))


def test_metrics_without_labels_are_nan() -> None:
    p, y = np.array([0.2, 0.7]), np.full(2, np.nan)
    assert np.isnan(expected_calibration_error(p, y)) and np.isnan(brier(p, y)) and np.isnan(bce(p, y))


def test_reliability_bins() -> None:
    p = np.array([0.05, 0.15, 0.12, 0.95])
    y = np.array([0.0, 1.0, 0.0, 1.0])
    mean_p, rate, counts = reliability(p, y, bins=10)
    assert counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert mean_p[1] == pytest.approx(0.135) and rate[1] == pytest.approx(0.5)
    assert np.isnan(mean_p[2]) and np.isnan(rate[2])


# ------------------------------------------- scikit-learn's versions, and why they are not used
def test_brier_equals_scikit_learns_on_binary_labels_which_refuses_graded_ones() -> None:
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(0)
    p, y = rng.random(200), (rng.random(200) < 0.4).astype(float)
    assert brier(p, y) == pytest.approx(brier_score_loss(y, p), abs=1e-15)
    y_nan = np.where(rng.random(200) < 0.2, np.nan, y)  # NaN = not evaluated: those rows left out
    seen = ~np.isnan(y_nan)
    assert brier(p, y_nan) == pytest.approx(brier_score_loss(y[seen], p[seen]), abs=1e-15)
    graded = np.array([1.0, 0.5, 0.0, 0.25])
    with pytest.raises(ValueError, match="continuous"):
        brier_score_loss(graded, np.array([0.9, 0.4, 0.1, 0.3]))
    assert brier(np.array([0.9, 0.4, 0.1, 0.3]), graded) == pytest.approx((0.01 + 0.01 + 0.01 + 0.0025) / 4)


def test_reliability_matches_calibration_curve_off_bin_edges_which_refuses_graded_labels() -> None:
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(1)
    p = rng.random(500)
    p = p[np.abs(p * 10 - np.round(p * 10)) > 1e-6]  # off the bin edges, where the two rules differ
    y = (rng.random(p.size) < p).astype(float)
    mean_p, rate, counts = reliability(p, y, bins=10)
    rate_sk, mean_sk = calibration_curve(y, p, n_bins=10)
    filled = counts > 0  # calibration_curve drops empty bins
    np.testing.assert_allclose(mean_p[filled], mean_sk, rtol=1e-12)
    np.testing.assert_allclose(rate[filled], rate_sk, rtol=1e-12)
    with pytest.raises(ValueError, match="pos_label"):
        calibration_curve(np.array([1.0, 0.5, 0.0]), np.array([0.9, 0.5, 0.1]), n_bins=10)
