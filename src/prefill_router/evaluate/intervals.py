"""95% bootstrap intervals for the routing metrics, and paired differences between two routers.

Rows are resampled with replacement; every resample recomputes the yardstick (oracle, best single,
most expensive) so an interval covers the uncertainty of the denominator too. The resampling, the
row counts per resample and the percentile interval are :mod:`prefill_router._bootstrap`'s, shared
with the policy stage.
"""

# ruff: noqa: N803, N806 — Y, C, P are DESIGN's names for the label, cost and probability matrices.
from __future__ import annotations

import math
from typing import Any

import numpy as np

from prefill_router._bootstrap import bootstrap_rows
from prefill_router._bootstrap import percentile_interval as interval
from prefill_router._bootstrap import resample_counts as _counts
from prefill_router.data.dataset import LABEL_THRESHOLD
from prefill_router.errors import DataError
from prefill_router.evaluate.metrics import (
    ACCURACY_MARGINS,
    AUC_BOOT,
    Yardstick,
    _choice,
    _curve,
    _routing,
)
from prefill_router.train.quality import check_scores

__all__ = [
    "auc_difference",
    "bootstrap_rows",
    "curve_difference",
    "interval",
    "paired_difference",
    "routing_intervals",
    "savings_intervals",
]


def routing_intervals(
    choice: np.ndarray,
    Y: np.ndarray,
    C: np.ndarray,
    yard: Yardstick,
    resamples: np.ndarray,
    *,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Bootstrap intervals of ``accuracy``, ``cost``, ``gap_captured`` and ``cost_savings`` of one choice.

    Each resample of rows recomputes the whole yardstick on those rows (the oracle, which target is
    the best single one, which is the most expensive), as the point estimates do on the full rows.
    Resamples where gap captured is undefined (oracle == best single) are dropped from its interval.

    Args:
        choice: (N,) target columns; Y, C: (N, M) complete labels and costs.
        yard: the yardstick of the same rows (checked: one of other rows raises DataError).
        resamples: (B, n) row indices, e.g. from :func:`bootstrap_rows`.
    Returns:
        ``{metric: [lo, hi]}``; a bound may be NaN.
    """
    Y, C = _routing(Y, C)
    choice = _choice(choice, *Y.shape)
    if not math.isclose(float(Y.max(axis=1).mean()), yard.oracle_accuracy, rel_tol=1e-9, abs_tol=1e-12):
        raise DataError("yard was computed on other rows than Y (its oracle accuracy differs).")
    weights = _counts(resamples, len(Y)) / np.asarray(resamples).shape[1]  # (B, N), rows sum to 1
    rows = np.arange(len(Y))
    accuracy, cost = weights @ Y[rows, choice], weights @ C[rows, choice]  # (B,)
    oracle_accuracy = weights @ Y.max(axis=1)
    best = (weights @ Y).max(axis=1)
    top = (weights @ C).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(oracle_accuracy != best, (accuracy - best) / (oracle_accuracy - best), np.nan)
        savings = np.where(top != 0, 1.0 - cost / top, np.nan)
    return {
        "accuracy": interval(accuracy, level),
        "cost": interval(cost, level),
        "gap_captured": interval(gap, level),
        "cost_savings": interval(savings, level),
    }


def savings_intervals(
    choices: np.ndarray,
    Y: np.ndarray,
    C: np.ndarray,
    resamples: np.ndarray,
    margins: tuple[float, ...] = ACCURACY_MARGINS,
    *,
    level: float = 0.95,
) -> dict[float, dict[str, Any]]:
    """Bootstrap intervals of the savings at (and within ``margin`` of) the best single's accuracy.

    Each resample of rows recomputes every curve point's accuracy and cost, which target is the
    best single one and its accuracy and cost, then the largest saving among the points accurate
    enough (as :func:`~prefill_router.evaluate.metrics.savings_at_accuracy`). A resample where no
    point is accurate enough has no saving: ``reached`` is the share of resamples that had one.

    Args:
        choices: (K, N) the target column of every row at each curve point; Y, C: (N, M) complete.
        resamples: (B, n) row indices.
    Returns:
        ``{margin: {"ci": [lo, hi], "reached": share}}``.
    """
    Y, C = _routing(Y, C)
    choices = np.asarray(choices)
    weights = _counts(resamples, len(Y)) / np.asarray(resamples).shape[1]  # (B, N)
    rows = np.arange(len(Y))
    accuracy = weights @ Y[rows, choices].T  # (B, K)
    cost = weights @ C[rows, choices].T
    singles_accuracy, singles_cost = weights @ Y, weights @ C
    best = singles_accuracy.argmax(axis=1)  # (B,)
    best_accuracy = singles_accuracy[np.arange(len(best)), best][:, None]
    best_cost = singles_cost[np.arange(len(best)), best][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        savings = np.where(best_cost > 0, 1.0 - cost / best_cost, np.nan)  # (B, K)
    out = {}
    for margin in margins:
        ok = accuracy >= best_accuracy - margin - 1e-9  # sums in another order: a tie must stay a tie
        top = np.where(ok, savings, -np.inf).max(axis=1)
        reached = np.isfinite(top)
        out[margin] = {
            "ci": interval(np.where(reached, top, np.nan), level),
            "reached": float(reached.mean()),
        }
    return out


def curve_difference(
    choices_a: np.ndarray,
    choices_b: np.ndarray,
    Y: np.ndarray,
    C: np.ndarray,
    resamples: np.ndarray,
    cost_range: tuple[float, float],
    *,
    level: float = 0.95,
) -> dict[str, Any]:
    """``{"mean", "ci"}`` of AIQ of curve a minus AIQ of curve b, paired over the same resampled rows.

    Every resample recomputes each curve point's accuracy and cost on its rows, then both AIQs over
    the fixed ``cost_range`` (the full rows' cheapest-to-dearest single-target range).

    Args:
        choices_a, choices_b: (K_a, N) and (K_b, N) target columns at each point of two curves.
        Y, C: (N, M) complete labels and costs. resamples: (B, n) row indices.
    """
    from prefill_router.evaluate.metrics import aiq

    Y, C = _routing(Y, C)
    weights = _counts(resamples, len(Y)) / np.asarray(resamples).shape[1]
    rows = np.arange(len(Y))

    def aiqs(choices: np.ndarray) -> np.ndarray:
        accuracy, cost = weights @ Y[rows, choices].T, weights @ C[rows, choices].T  # (B, K)
        return np.array([aiq(cost[b], accuracy[b], cost_range) for b in range(len(weights))])

    def point(choices: np.ndarray) -> float:
        return aiq(C[rows, choices].mean(axis=1), Y[rows, choices].mean(axis=1), cost_range)

    difference = aiqs(np.asarray(choices_a)) - aiqs(np.asarray(choices_b))
    return {
        "mean": point(np.asarray(choices_a)) - point(np.asarray(choices_b)),
        "ci": interval(difference, level),
    }


def paired_difference(
    a_values: np.ndarray, b_values: np.ndarray, resamples: np.ndarray, *, level: float = 0.95
) -> dict[str, Any]:
    """``{"mean", "ci"}`` of the per-row difference ``a − b`` of two routers on the same rows.

    E.g. ``a_values = Y[rows, choice_a]``: the mean difference in accuracy with its bootstrap interval.

    Raises:
        DataError: the arrays differ in length or hold NaN.
    """
    a, b = _curve("a_values", a_values, "b_values", b_values)
    difference = a - b
    weights = _counts(resamples, len(difference)) / np.asarray(resamples).shape[1]
    return {"mean": float(difference.mean()), "ci": interval(weights @ difference, level)}


def _weighted_auc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) ROC-AUC of one target under B row weightings (B, N); NaN where a class has no weight.

    The Mann–Whitney form with ties counted half, which equals scikit-learn's ``roc_auc_score``
    with ``sample_weight``; vectorised across resamples.
    """
    # By hand: roc_auc_score scores one weighting per call (B x M calls); this sorts once for all B.
    order = np.argsort(score, kind="stable")
    score, positive, weights = score[order], positive[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])  # one group per distinct score
    pos = np.add.reduceat(weights * positive, starts, axis=1)  # (B, G)
    neg = np.add.reduceat(weights * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each group
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    out: np.ndarray = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    return out


def auc_difference(
    P_a: np.ndarray,
    P_b: np.ndarray,
    Y: np.ndarray,
    resamples: np.ndarray | None = None,
    *,
    n_boot: int = AUC_BOOT,
    seed: int = 0,
    level: float = 0.95,
    label_threshold: float = LABEL_THRESHOLD,
) -> dict[str, Any]:
    """``{"mean", "ci", "resamples_used"}`` of mean AUC of ``P_a`` minus mean AUC of ``P_b``, paired.

    Both AUCs are recomputed on every resample of rows (NaN labels ignored per target). Targets with
    one class on the full rows are left out (as :func:`mean_auc` does); a resample where a remaining
    target has one class is skipped, and ``resamples_used`` counts the others.

    Args:
        P_a, P_b: (N, M) probabilities of two routers; Y: (N, M) labels, NaN allowed.
        resamples: (B, n) row indices; None draws ``bootstrap_rows(N, n_boot, seed)``.
    Raises:
        DataError: shapes differ or P is no probability at an observed label.
    """
    P_a, Y = check_scores(P_a, Y)
    P_b, _ = check_scores(P_b, Y)
    rows = bootstrap_rows(len(Y), n_boot, seed) if resamples is None else resamples
    # Row 0 weighs every row once (the point estimate); rows 1.. are the resamples' counts.
    weights = np.vstack([np.ones(len(Y)), _counts(rows, len(Y))])  # (1 + B, N)
    differences = []
    for j in range(Y.shape[1]):
        seen = ~np.isnan(Y[:, j])
        positive = Y[seen, j] >= label_threshold
        if 0 < positive.sum() < positive.size:
            auc_a = _weighted_auc(P_a[seen, j], positive, weights[:, seen])
            differences.append(auc_a - _weighted_auc(P_b[seen, j], positive, weights[:, seen]))
    if not differences:
        return {"mean": math.nan, "ci": [math.nan, math.nan], "resamples_used": 0}
    mean = np.mean(differences, axis=0)  # (1 + B,); NaN where a target had one class
    return {
        "mean": float(mean[0]),
        "ci": interval(mean[1:], level),
        "resamples_used": int(np.isfinite(mean[1:]).sum()),
    }
