"""Per-target quality of predicted probabilities (DESIGN §8): ROC-AUC, Brier score and ECE.

One definition for the fit's validation table, the evaluation and its baselines. Labels may be
graded and may be NaN (not evaluated): each target is scored on its observed rows only; the AUC
ranks against labels binarised at :data:`~prefill_router.data.dataset.LABEL_THRESHOLD`, while the
Brier score and ECE compare probabilities with the labels as given.
"""

# ruff: noqa: N803, N806 — Y and P are DESIGN's names for the label and probability matrices.

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from prefill_router.data.dataset import LABEL_THRESHOLD
from prefill_router.errors import DataError
from prefill_router.train.calibration import brier, expected_calibration_error


def as_matrix(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` as a float64 (prompts, targets) matrix with at least one row and one column.

    Raises:
        DataError: any other shape.
    """
    out = np.asarray(a, dtype=np.float64)
    if out.ndim != 2 or 0 in out.shape:
        raise DataError(
            f"{name} must be a 2-D (prompts, targets) array with at least one row and one column; "
            f"got shape {out.shape} instead."
        )
    return out


def check_scores(P: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P and Y as float matrices of one shape, P a probability wherever Y is observed.

    Raises:
        DataError: not matrices, shapes differ, or P is NaN or outside [0, 1] at an observed label.
    """
    P, Y = as_matrix("P", P), as_matrix("Y", Y)
    if P.shape != Y.shape:
        raise DataError(f"P and Y must have the same shape; got {P.shape} and {Y.shape} instead.")
    bad = ~np.isnan(Y) & ~((P >= 0) & (P <= 1))  # NaN fails both comparisons
    if bad.any():
        raise DataError(
            "P must hold probabilities in [0, 1] wherever Y is observed; "
            f"got {int(bad.sum())} entries outside."
        )
    return P, Y


def check_names(targets: Sequence[str], n_targets: int) -> list[str]:
    """``targets`` as a list of one name per column.

    Raises:
        DataError: not ``n_targets`` names.
    """
    names = list(targets)
    if len(names) != n_targets:
        raise DataError(f"targets must name the {n_targets} columns; got {len(names)} names instead.")
    return names


def target_quality(
    P: np.ndarray, Y: np.ndarray, targets: Sequence[str], label_threshold: float = LABEL_THRESHOLD
) -> dict[str, dict[str, float]]:
    """Per target: ``auc``, ``brier``, ``ece`` and ``n`` (observed rows), NaN labels ignored per target.

    ``auc`` is the ROC-AUC against labels binarised at ``label_threshold`` (NaN when the observed
    rows hold one class); ``brier`` and ``ece`` compare P with the labels as given (graded labels
    included).

    Args:
        P: (N, M) probabilities; Y: (N, M) labels in [0, 1], NaN = not evaluated.
        targets: the M target names, the keys of the result.
    Raises:
        DataError: shapes differ, not one name per column, or P is no probability at an observed label.

    Example::

        >>> q = target_quality(np.array([[0.9], [0.2]]), np.array([[1.0], [0.0]]), ["a"])
        >>> q["a"]["auc"], q["a"]["n"]
        (1.0, 2)
    """
    from sklearn.metrics import roc_auc_score

    P, Y = check_scores(P, Y)
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(check_names(targets, Y.shape[1])):
        seen = ~np.isnan(Y[:, j])
        truth = Y[seen, j] >= label_threshold
        auc = float(roc_auc_score(truth, P[seen, j])) if 0 < truth.sum() < truth.size else math.nan
        out[name] = {
            "auc": auc,
            "brier": brier(P[:, j], Y[:, j]),
            "ece": expected_calibration_error(P[:, j], Y[:, j]),
            "n": int(seen.sum()),
        }
    return out


def mean_auc(quality: Mapping[str, Mapping[str, float]]) -> float:
    """Mean ``auc`` over the targets of :func:`target_quality` with a finite AUC (NaN if none)."""
    aucs = [q["auc"] for q in quality.values() if math.isfinite(q["auc"])]
    return float(np.mean(aucs)) if aucs else math.nan
