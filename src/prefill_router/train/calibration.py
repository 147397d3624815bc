"""Per-target temperature calibration and the calibration metrics (ECE, Brier).

Temperature scaling divides a target's logit by T > 0 fitted on held-out rows: it keeps the
ranking (so ROC-AUC) unchanged and fixes over- or under-confidence, which the budget policy relies
on because it trades probabilities against dollars.
"""

from __future__ import annotations

import numpy as np

#: Temperatures are searched in [exp(-_LOG_T_BOUND), exp(_LOG_T_BOUND)].
_LOG_T_BOUND = 4.0
_EPS = 1e-6
DEFAULT_BINS = 15


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p clipped away from 0 and 1."""
    q = np.clip(p, _EPS, 1 - _EPS)
    out: np.ndarray = np.log(q) - np.log1p(-q)
    return out


def apply_temperature(p: np.ndarray, temperature: np.ndarray | float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logit(p) / T)``; T broadcasts over the last axis."""
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * logit(p) / temperature))
    return out


def bce(p: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy over observed (non-NaN) labels of one target."""
    seen = ~np.isnan(y)
    q = np.clip(p[seen], _EPS, 1 - _EPS)
    t = y[seen]
    return float(-(t * np.log(q) + (1 - t) * np.log1p(-q)).mean()) if seen.any() else float("nan")


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the BCE of ``sigmoid(logit(p) / T)`` against labels ``y`` (NaN ignored).

    Returns 1.0 when the labels cannot say anything (fewer than two observed or one class).
    """
    from scipy.optimize import minimize_scalar

    seen = ~np.isnan(y)
    if seen.sum() < 2 or np.ptp(y[seen]) == 0:
        return 1.0
    q, t = p[seen], y[seen]

    def loss(log_t: float) -> float:
        return bce(apply_temperature(q, np.exp(log_t)), t)

    result = minimize_scalar(loss, bounds=(-_LOG_T_BOUND, _LOG_T_BOUND), method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """ECE: Σ_b (n_b / n) · |mean p_b − mean y_b| over equal-width probability bins (NaN labels ignored)."""
    # By hand: scikit-learn has no ECE, and its calibration_curve refuses graded labels (below).
    seen = ~np.isnan(y)
    p, y = p[seen], y[seen]
    if p.size == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, p, bins) - np.bincount(which, y, bins))
    return float(gap.sum() / counts.sum())


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (mean predicted, observed rate, count) for a reliability diagram; empty bins are NaN."""
    # Not sklearn.calibration.calibration_curve: it refuses graded labels (0.5 is neither class),
    # drops empty bins and returns no counts, and puts a p on a bin edge (0.1, 0.3) in the bin below.
    seen = ~np.isnan(y)
    p, y = p[seen], y[seen]
    which = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(which, p, bins) / counts
        rate = np.bincount(which, y, bins) / counts
    return mean_p, rate, counts


def brier(p: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error of probabilities against observed labels (graded labels as they are)."""
    # Not sklearn.metrics.brier_score_loss: it refuses graded labels ("continuous" targets); on 0/1
    # labels the two agree (tests/test_train_calibration.py).
    seen = ~np.isnan(y)
    return float(((p[seen] - y[seen]) ** 2).mean()) if seen.any() else float("nan")
