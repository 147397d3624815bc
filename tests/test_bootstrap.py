"""The one bootstrap (_bootstrap.py): the policy stage's intervals and evaluate's come from the same
resamples for one seed, whether the means are gathered (policy) or counted (evaluate)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from prefill_router._bootstrap import bootstrap_rows, percentile_interval, resample_counts, resampled_means
from prefill_router.errors import DataError
from prefill_router.evaluate.intervals import routing_intervals
from prefill_router.evaluate.metrics import Yardstick
from prefill_router.policy.budget import achieved


def test_counted_means_equal_gathered_means() -> None:
    values = np.random.default_rng(0).random((37, 2))
    rows = bootstrap_rows(37, 300, seed=4)
    counts = resample_counts(rows, 37)
    assert counts.shape == (300, 37) and (counts.sum(axis=1) == 37).all()
    np.testing.assert_allclose(counts @ values / 37, resampled_means(values, 300, seed=4), rtol=1e-12)


def test_policy_and_evaluate_report_the_same_interval_for_one_seed() -> None:
    rng = np.random.default_rng(1)
    y, c = (rng.random((60, 3)) < 0.6).astype(float), rng.random((60, 3))
    choice = rng.integers(0, 3, 60)
    by_policy = achieved(choice, y, c, n_boot=500, seed=7)
    yard = Yardstick.of(y, c, ["a", "b", "c"])
    by_evaluate = routing_intervals(choice, y, c, yard, bootstrap_rows(60, 500, seed=7))
    np.testing.assert_allclose(by_policy["accuracy_ci"], by_evaluate["accuracy"], rtol=1e-12)
    np.testing.assert_allclose(by_policy["cost_ci"], by_evaluate["cost"], rtol=1e-12)


def test_resample_counts_refuse_what_is_not_row_indices() -> None:
    with pytest.raises(DataError, match=re.escape("resamples must index rows in [0, 3); got 0..3.")):
        resample_counts(np.array([[0, 3]]), 3)
    with pytest.raises(DataError, match="2-D int array"):
        resample_counts(np.array([0.0, 1.0]), 3)
    assert percentile_interval(np.array([np.nan, np.inf])) == [pytest.approx(np.nan, nan_ok=True)] * 2
