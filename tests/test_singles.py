"""The single-target references (data/singles.py): one best-single and one most-expensive rule for
``data info``, ``fit``, the quality floor and ``evaluate``."""

# ruff: noqa: N803, N806 — Y, C are DESIGN's names for the label and cost matrices.

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from prefill_router.data.costs import cost_matrix
from prefill_router.data.importers import import_dataset
from prefill_router.data.prices import builtin_prices
from prefill_router.data.singles import best_single, most_expensive, target_means
from prefill_router.data.summary import summarise
from prefill_router.evaluate.metrics import Yardstick
from prefill_router.train.fit import best_single as fit_best_single


def test_best_single_ties_go_to_the_lower_column_and_nan_never_wins() -> None:
    assert best_single(np.array([0.25, 0.375, 0.375])) == 1
    assert best_single(np.array([np.nan, 0.1, 0.0])) == 1
    assert most_expensive(np.array([0.9, 0.2, 0.9])) == 0
    assert most_expensive(np.array([0.9, 0.2, 0.9 * (1 + 1e-12)]), np.array([0.5, 0.7, 0.6])) == 2


def test_target_means_sum_each_column_as_its_own_mean_does() -> None:
    Y = np.random.default_rng(0).random((1001, 4)) / 3
    assert target_means(Y).tolist() == [Y[:, j].mean() for j in range(4)]  # exactly, not approx
    Y[::3, 2] = np.nan
    Y[:, 3] = np.nan
    means = target_means(Y)
    assert means[2] == Y[~np.isnan(Y[:, 2]), 2].mean() and np.isnan(means[3])


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float64, st.tuples(st.integers(1, 8), st.integers(1, 5)), elements=st.sampled_from([0.0, 0.5, 1.0])
    )
)
def test_the_best_single_has_the_highest_mean_and_the_lowest_column_among_ties(Y: np.ndarray) -> None:
    means = target_means(Y)
    best = best_single(means)
    assert means[best] == means.max()
    assert (means[:best] < means[best]).all()


def test_data_info_fit_and_evaluate_name_the_same_targets_on_real_labels() -> None:
    """On the LLMRouter fixture (graded commongen labels; three targets priced at $0.9/M): the one
    rule names what each of the formulas it replaced named."""
    ds = import_dataset(
        "llmrouter", Path(__file__).parent / "fixtures" / "llmrouter", prices=builtin_prices()
    )
    Y, C, names = ds.dataset.labels, cost_matrix(ds.dataset), ds.dataset.target_names
    before = names[int(np.nanargmax(np.nanmean(Y, axis=0)))]  # fit's and data info's formula
    assert before == names[int(np.argmax(Y.mean(axis=0)))]  # the floor's and APGR's
    summary, yard = summarise(ds.dataset), Yardstick.of(Y, C, names)
    assert summary.best_single["name"] == yard.best_single == fit_best_single(Y, names) == before
    assert summary.best_single["accuracy"] == yard.best_single_accuracy
    assert summary.most_expensive is not None
    assert summary.most_expensive["name"] == yard.max_cost_target
