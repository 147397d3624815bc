"""The per-target quality table (train/quality.py), and that it gives the numbers of the three
copies it replaced (fit's validation table, evaluate's target_quality, the kNN baseline's mean AUC)."""

# ruff: noqa: N803, N806 — Y and P are DESIGN's names for the label and probability matrices.

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from prefill_router.data.dataset import LABEL_THRESHOLD, RoutingDataset
from prefill_router.data.importers import import_dataset
from prefill_router.data.prices import builtin_prices
from prefill_router.errors import DataError
from prefill_router.evaluate import baselines, metrics
from prefill_router.train.calibration import apply_temperature, brier, expected_calibration_error
from prefill_router.train.fit import validation_metrics
from prefill_router.train.quality import check_names, check_scores, mean_auc, target_quality


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(P, Y, names) on the LLMRouter fixture (18 prompts x 9 targets, graded commongen labels), a
    few labels NaN, P a noisy function of the label (so every AUC is between chance and 1)."""
    fixture = Path(__file__).parent / "fixtures" / "llmrouter"
    ds: RoutingDataset = import_dataset("llmrouter", fixture, prices=builtin_prices()).dataset
    Y = ds.labels.copy()
    Y[::4, 1] = np.nan
    Y[1::5, 6] = np.nan
    rng = np.random.default_rng(0)
    P = np.clip(0.5 * np.nan_to_num(Y, nan=0.5) + 0.5 * rng.random(Y.shape), 0.0, 1.0)
    return P, Y, ds.target_names


# What the three copies computed before one function replaced them (commit e5cee0b), written out
# independently: observed rows first, then each number from its definition.
def _old_evaluate_quality(P: np.ndarray, Y: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for j, name in enumerate(names):
        keep = np.isfinite(Y[:, j])
        p, y = P[keep, j], Y[keep, j]
        both = np.unique(y >= LABEL_THRESHOLD).size == 2
        out[name] = {
            "auc": float(roc_auc_score(y >= LABEL_THRESHOLD, p)) if both else math.nan,
            "brier": float(np.mean((p - y) ** 2)) if keep.any() else math.nan,
            "ece": expected_calibration_error(p, y),
            "n": int(keep.sum()),
        }
    return out


def _old_validation_metrics(
    p_val: np.ndarray, y_val: np.ndarray, temperatures: np.ndarray, names: list[str]
) -> dict[str, dict[str, float]]:
    calibrated = apply_temperature(p_val, temperatures)
    out: dict[str, dict[str, float]] = {
        k: {} for k in ("val_auc", "ece_before", "ece_after", "brier", "temperatures")
    }
    for j, name in enumerate(names):
        seen = ~np.isnan(y_val[:, j])
        truth = y_val[seen, j] >= LABEL_THRESHOLD
        auc = roc_auc_score(truth, p_val[seen, j]) if 0 < truth.sum() < truth.size else float("nan")
        out["val_auc"][name] = float(auc)
        out["ece_before"][name] = expected_calibration_error(p_val[:, j], y_val[:, j])
        out["ece_after"][name] = expected_calibration_error(calibrated[:, j], y_val[:, j])
        out["brier"][name] = brier(calibrated[:, j], y_val[:, j])
        out["temperatures"][name] = float(temperatures[j])
    return out


def _old_baseline_mean_auc(p: np.ndarray, y: np.ndarray) -> float:
    values = []
    for j in range(y.shape[1]):
        seen = ~np.isnan(y[:, j])
        truth = y[seen, j] >= LABEL_THRESHOLD
        if 0 < truth.sum() < truth.size:
            values.append(roc_auc_score(truth, p[seen, j]))
    return float(np.mean(values)) if values else 0.5


def _same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN, recursively through dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def test_one_function_gives_the_numbers_of_the_three_copies_on_real_labels(
    real: tuple[np.ndarray, np.ndarray, list[str]],
) -> None:
    P, Y, names = real
    assert _same(target_quality(P, Y, names), _old_evaluate_quality(P, Y, names))
    assert metrics.target_quality is target_quality  # evaluate re-exports it
    temperatures = np.linspace(0.7, 1.6, len(names))
    assert _same(
        validation_metrics(P, Y, temperatures, names), _old_validation_metrics(P, Y, temperatures, names)
    )
    assert baselines._mean_auc(P, Y) == _old_baseline_mean_auc(P, Y)
    one_class = np.where(np.isnan(Y), np.nan, 1.0)  # no target with both classes: chance
    assert baselines._mean_auc(P, one_class) == _old_baseline_mean_auc(P, one_class) == 0.5


def test_graded_labels_count_as_correct_from_the_threshold_for_auc_only() -> None:
    P = np.array([[0.8], [0.6], [0.3], [0.1]])
    Y = np.array([[1.0], [0.5], [0.4], [0.0]])  # 0.5 is correct for the AUC, 0.4 is wrong
    quality = target_quality(P, Y, ["a"])["a"]
    assert quality["auc"] == 1.0
    assert quality["brier"] == pytest.approx((0.04 + 0.01 + 0.01 + 0.01) / 4)
    assert target_quality(P, Y, ["a"], label_threshold=0.45)["a"]["auc"] == 1.0
    assert target_quality(P, Y, ["a"], label_threshold=0.35)["a"]["auc"] == 1.0  # 0.4 now correct too
    assert target_quality(1 - P, Y, ["a"])["a"]["auc"] == 0.0


def test_mean_auc_skips_targets_without_a_verdict() -> None:
    assert mean_auc({"a": {"auc": 0.7}, "b": {"auc": math.nan}, "c": {"auc": 0.9}}) == pytest.approx(0.8)
    assert math.isnan(mean_auc({"a": {"auc": math.nan}}))


def test_bad_input_is_refused_with_the_shapes_received() -> None:
    with pytest.raises(DataError, match=re.escape("P and Y must have the same shape; got (2, 1) and (2, 2)")):
        check_scores(np.zeros((2, 1)), np.zeros((2, 2)))
    with pytest.raises(DataError, match=re.escape("P must be a 2-D (prompts, targets) array")):
        check_scores(np.zeros(3), np.zeros(3))
    with pytest.raises(DataError, match=re.escape("got 1 entries outside")):
        check_scores(np.array([[1.5], [0.5]]), np.array([[1.0], [0.0]]))
    assert check_scores(np.array([[1.5], [0.5]]), np.array([[np.nan], [0.0]]))[0].shape == (2, 1)
    with pytest.raises(DataError, match=re.escape("targets must name the 2 columns; got 1 names instead.")):
        check_names(["a"], 2)
