"""The single-target references of a routing dataset (DESIGN §8): the best single target and the
most expensive one.

One rule each, for ``data info``, the router ``fit`` records, the quality floor's reference and
``evaluate`` alike: every caller passes per-target means from :func:`target_means`, so a tie is a
tie everywhere (it goes to the more accurate target for cost, then to the lower column).
"""

from __future__ import annotations

import numpy as np

#: Mean costs this close (relative) count as a tie for "most expensive": equal prices summed in
#: another order differ in the last bits.
COST_TIE_RTOL = 1e-9


def target_means(matrix: np.ndarray) -> np.ndarray:
    """(M,) mean of each column of (N, M) ``matrix`` over its non-NaN rows (NaN for an empty column).

    Each column is summed as ``matrix[:, j].mean()`` sums it (pairwise), not row by row as
    ``matrix.mean(axis=0)`` does: the two differ in the last bits, which would give the best single
    target a gap captured of 1e-17 instead of 0, or break an exact tie the other way.

    Example::

        >>> target_means(np.array([[1.0, np.nan], [0.0, 1.0]])).tolist()
        [0.5, 1.0]
    """
    columns = np.ascontiguousarray(np.asarray(matrix, dtype=np.float64).T)  # (M, N)
    if not np.isnan(columns).any():
        out: np.ndarray = columns.mean(axis=1)
        return out
    return np.array([c[~np.isnan(c)].mean() if (~np.isnan(c)).any() else np.nan for c in columns])


def best_single(accuracy: np.ndarray) -> int:
    """The column of the best single target: the highest mean label (``accuracy``, from
    :func:`target_means`); ties go to the lower column, NaN (a target never labelled) never wins.

    Example::

        >>> best_single(np.array([0.25, 0.375, 0.375]))
        1
    """
    values = np.asarray(accuracy, dtype=np.float64)
    return int(np.argmax(np.where(np.isnan(values), -np.inf, values)))


def most_expensive(mean_costs: np.ndarray, accuracy: np.ndarray | None = None) -> int:
    """The column of the most expensive target: the highest mean cost per prompt.

    Targets within :data:`COST_TIE_RTOL` of the highest cost tie (LLMRouter prices three targets
    at the same $0.9/M); among them the most accurate one wins (``accuracy``, the targets' mean
    labels), then the first.

    Example::

        >>> most_expensive(np.array([0.9, 0.2, 0.9]), np.array([0.5, 0.7, 0.6]))
        2
    """
    costs = np.asarray(mean_costs, dtype=np.float64)
    top = np.flatnonzero(costs >= costs.max() * (1 - COST_TIE_RTOL))
    if accuracy is None:
        return int(top[0])
    return int(top[np.argmax(np.asarray(accuracy, dtype=np.float64)[top])])
