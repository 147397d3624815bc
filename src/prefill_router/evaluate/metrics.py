"""Stage 6 — the routing metrics of DESIGN §8, as pure functions of label, cost and choice matrices.

Shapes and units, as everywhere in this package:

- ``Y`` (N, M) labels in [0, 1] (1 correct, 0 wrong, fractions for graded scores);
- ``C`` (N, M) cost in USD of sending prompt i to target m;
- ``P`` (N, M) predicted probabilities that target m answers prompt i correctly;
- a *choice* is an (N,) int array of target columns; target names are strings.

The routing metrics (oracle, best single, gap captured, cost savings, their bootstrap intervals)
compare every target on the same prompts, so they take complete rows only: a NaN in ``Y`` or ``C``
raises :class:`~prefill_router.errors.DataError`. The per-target quality metrics (AUC, Brier, ECE)
ignore NaN labels target by target; they are :mod:`prefill_router.train.quality`'s, which the fit's
validation table uses too, re-exported here. Every tie is broken towards the lower column index.
"""

# ruff: noqa: N803, N806 — Y, C, P are DESIGN's names for the label, cost and probability matrices.

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from prefill_router._json import finite_or_none
from prefill_router.data import singles
from prefill_router.errors import DataError
from prefill_router.train.quality import as_matrix as _matrix
from prefill_router.train.quality import check_names as _names
from prefill_router.train.quality import mean_auc as mean_auc
from prefill_router.train.quality import target_quality as target_quality

#: Cost savings at which gap captured is reported (50% and 74.31%, DESIGN §8).
SAVINGS_LEVELS = (0.5, 0.7431)
#: Accuracy margins (points below the best single target) of :func:`savings_at_accuracy`: 0 is
#: "savings at the best single's accuracy", 0.01 and 0.02 are "savings within 1 / 2 points".
ACCURACY_MARGINS = (0.0, 0.01, 0.02)
#: Resamples :func:`auc_difference` draws when given none (fewer than the routing bootstrap's 1000).
AUC_BOOT = 200
# A point whose savings fall short of a level by float rounding only still qualifies for it.
_SAVINGS_TOL = 1e-9


# ------------------------------------------------------------------- validation
def _require_complete(name: str, *arrays: np.ndarray) -> None:
    bad = np.zeros(len(arrays[0]), dtype=bool)
    for a in arrays:
        bad |= np.isnan(a).any(axis=1)
    if bad.any():
        raise DataError(
            f"{name} must be complete for routing metrics; got {int(bad.sum())} of {len(bad)} rows with NaN. "
            "Drop those rows first."
        )


def _routing(Y: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Y and C as float matrices of one shape without NaN."""
    Y, C = _matrix("Y", Y), _matrix("C", C)
    if Y.shape != C.shape:
        raise DataError(f"Y and C must have the same shape; got {Y.shape} and {C.shape} instead.")
    _require_complete("Y and C", Y, C)
    return Y, C


def _choice(choice: np.ndarray, n_rows: int, n_targets: int) -> np.ndarray:
    out = np.asarray(choice)
    if out.shape != (n_rows,) or not np.issubdtype(out.dtype, np.integer):
        raise DataError(
            f"choice must be an ({n_rows},) int array of target columns; "
            f"got {out.dtype} of shape {out.shape} instead."
        )
    if ((out < 0) | (out >= n_targets)).any():
        raise DataError(f"choice must hold target columns in [0, {n_targets}); got {out.min()}..{out.max()}.")
    return out


def _vector(name: str, a: np.ndarray) -> np.ndarray:
    out = np.asarray(a, dtype=np.float64)
    if out.ndim != 1 or out.size == 0 or not np.isfinite(out).all():
        raise DataError(f"{name} must be a non-empty 1-D array of finite numbers; got shape {out.shape}.")
    return out


def _curve(name_x: str, x: np.ndarray, name_y: str, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(name_x, x), _vector(name_y, y)
    if x.shape != y.shape:
        raise DataError(f"{name_x} and {name_y} must have the same length; got {x.size} and {y.size}.")
    return x, y


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ------------------------------------------------------------ oracle and singles
def oracle_choice(Y: np.ndarray, C: np.ndarray) -> np.ndarray:
    """The oracle's target per prompt: the cheapest one reaching the row's best label.

    When no target scores above 0 on a row, the row's cheapest target. Cost ties go to the lower
    column.

    Args:
        Y: (N, M) labels; C: (N, M) costs in USD; both without NaN.
    Returns:
        (N,) int target columns.
    Raises:
        DataError: shapes differ or a row holds NaN.

    >>> oracle_choice(np.array([[1, 1], [0, 0]]), np.array([[2.0, 1.0], [3.0, 4.0]])).tolist()
    [1, 0]
    """
    Y, C = _routing(Y, C)
    best = Y.max(axis=1, keepdims=True)  # (N, 1)
    eligible = (best == Y) | (best <= 0)  # an all-zero row: every target
    out: np.ndarray = np.where(eligible, C, np.inf).argmin(axis=1)
    return out


def outcome(choice: np.ndarray, Y: np.ndarray, C: np.ndarray) -> tuple[float, float]:
    """(mean accuracy, mean cost in USD per prompt) of sending prompt i to target ``choice[i]``.

    Raises:
        DataError: bad shapes, NaN rows, or a choice outside [0, M).
    """
    Y, C = _routing(Y, C)
    choice = _choice(choice, *Y.shape)
    rows = np.arange(len(Y))
    return float(Y[rows, choice].mean()), float(C[rows, choice].mean())


def oracle(Y: np.ndarray, C: np.ndarray) -> tuple[float, float]:
    """(accuracy, cost) of the oracle: mean of max_m Y[i, m], at the cost of the cheapest correct target.

    "Cheapest correct" is the cheapest target reaching the row's best label (graded labels included);
    a row where every label is 0 costs its cheapest target. See :func:`oracle_choice`.

    >>> oracle(np.array([[1.0, 0.5], [0.0, 0.0]]), np.array([[2.0, 1.0], [3.0, 4.0]]))
    (0.5, 2.5)
    """
    return outcome(oracle_choice(Y, C), Y, C)


def best_single(Y: np.ndarray) -> tuple[int, float]:
    """(column, mean accuracy) of the target with the highest mean label; ties go to the lower column:
    :func:`prefill_router.data.singles.best_single`, as ``data info`` and ``fit``.

    Raises:
        DataError: Y is not a matrix or holds NaN.
    """
    Y = _matrix("Y", Y)
    _require_complete("Y", Y)
    means = singles.target_means(Y)
    column = singles.best_single(means)
    return column, float(means[column])


def most_expensive(C: np.ndarray, Y: np.ndarray | None = None) -> tuple[int, float]:
    """(column, mean cost in USD per prompt) of the target with the highest mean cost.

    Ties (mean costs within 1e-9, relative) go to the most accurate target when ``Y`` is given,
    then to the lower column: :func:`prefill_router.data.singles.most_expensive`, as ``data info``.

    Raises:
        DataError: C (or Y) is not a matrix or holds NaN.
    """
    C = _matrix("C", C)
    _require_complete("C", C)
    means = singles.target_means(C)
    accuracy = None
    if Y is not None:
        Y = _matrix("Y", Y)
        _require_complete("Y", Y)
        accuracy = singles.target_means(Y)
    column = singles.most_expensive(means, accuracy)
    return column, float(means[column])


def gap_captured(accuracy: float, best: float, oracle: float) -> float:
    """``(accuracy − best) / (oracle − best)``: 0 at the best single target, 1 at the oracle.

    NaN when ``oracle == best`` (there is no gap to capture).

    >>> gap_captured(0.75, 0.5, 1.0)
    0.5
    """
    if oracle == best:
        return math.nan
    return (accuracy - best) / (oracle - best)


def cost_savings(cost: float, max_cost: float) -> float:
    """``1 − cost / max_cost``: the share saved against always calling the most expensive target.

    NaN when ``max_cost == 0``.

    >>> cost_savings(0.25, 1.0)
    0.75
    """
    if max_cost == 0:
        return math.nan
    return 1.0 - cost / max_cost


@dataclass(frozen=True)
class Yardstick:
    """The references every router on one set of rows is measured against (costs in USD per prompt)."""

    oracle_accuracy: float
    oracle_cost: float
    best_single: str  # name of the target with the highest mean accuracy
    best_single_accuracy: float
    best_single_cost: float
    max_cost_target: str  # name of the target with the highest mean cost
    max_cost: float

    @classmethod
    def of(cls, Y: np.ndarray, C: np.ndarray, targets: Sequence[str]) -> Yardstick:
        """The yardstick of complete rows ``Y``, ``C`` whose columns are named ``targets``.

        Raises:
            DataError: bad shapes, NaN rows, or not one name per column.
        """
        Y, C = _routing(Y, C)
        names = _names(targets, Y.shape[1])
        accuracy, cost = oracle(Y, C)
        best, best_accuracy = best_single(Y)
        top, top_cost = most_expensive(C, Y)
        best_cost = outcome(np.full(len(Y), best), Y, C)[1]
        return cls(accuracy, cost, names[best], best_accuracy, best_cost, names[top], top_cost)

    def gap(self, accuracy: float) -> float:
        """Gap captured by a router reaching ``accuracy`` (NaN when oracle == best single)."""
        return gap_captured(accuracy, self.best_single_accuracy, self.oracle_accuracy)

    def savings(self, cost: float) -> float:
        """Cost savings of a router spending ``cost`` USD per prompt."""
        return cost_savings(cost, self.max_cost)

    def to_json(self) -> dict[str, Any]:
        """The fields as plain JSON (NaN becomes null)."""
        result: dict[str, Any] = finite_or_none(asdict(self))
        return result


# ------------------------------------------------------------------ the curve
def curve_points(accuracy: np.ndarray, cost: np.ndarray, yard: Yardstick) -> list[dict[str, float | None]]:
    """One ``{"accuracy", "cost", "gap_captured", "cost_savings"}`` dict per point of a cost–accuracy curve.

    Values are not rounded; an undefined gap or savings (NaN) becomes None so the list is strict JSON.

    Raises:
        DataError: the arrays are not 1-D of one length, or hold NaN.
    """
    cost, accuracy = _curve("cost", cost, "accuracy", accuracy)
    return [
        {
            "accuracy": float(a),
            "cost": float(c),
            "gap_captured": _finite(yard.gap(float(a))),
            "cost_savings": _finite(yard.savings(float(c))),
        }
        for a, c in zip(accuracy, cost, strict=True)
    ]


def gap_captured_at_savings(
    points: Sequence[Mapping[str, float | None]], savings_levels: Sequence[float] = SAVINGS_LEVELS
) -> dict[str, float | None]:
    """For each level s (key ``str(s)``), the best gap captured among points saving at least s.

    None for a level no point reaches. Points whose gap or savings is None or NaN are ignored; a
    shortfall of up to 1e-9 (float rounding) still counts as reaching the level.

    >>> gap_captured_at_savings([{"gap_captured": 0.2, "cost_savings": 0.6}])
    {'0.5': 0.2, '0.7431': None}
    """
    out: dict[str, float | None] = {}
    for level in savings_levels:
        gaps = []
        for point in points:
            gap, savings = point["gap_captured"], point["cost_savings"]
            if gap is None or savings is None or math.isnan(gap):
                continue
            if savings >= level - _SAVINGS_TOL:
                gaps.append(gap)
        out[str(level)] = max(gaps) if gaps else None
    return out


def _upper_hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the upper concave hull of points (x, y), by increasing x (Andrew's monotone chain)."""
    # By hand, not scipy.spatial.ConvexHull: Qhull refuses the one-, two- and collinear-point curves
    # routers often draw, and would still need the upper chain picked out.
    order = np.lexsort((-y, x))  # by x, the highest y first within one x
    x, y = x[order], y[order]
    first = np.r_[True, x[1:] != x[:-1]]  # keep the highest y at each x
    x, y = x[first], y[first]
    hull: list[int] = []
    for i in range(len(x)):
        # Drop the last vertex while it lies on or below the chord from the one before it to point i.
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            if (x[a] - x[o]) * (y[i] - y[o]) - (y[a] - y[o]) * (x[i] - x[o]) < 0:
                break
            hull.pop()
        hull.append(i)
    return x[hull], y[hull]


def aiq(cost: np.ndarray, accuracy: np.ndarray, cost_range: tuple[float, float]) -> float:
    """RouterBench's Average Improvement in Quality: the normalised area under a router's curve.

    With the router's points (cost_j, accuracy_j) and ``cost_range = (c_lo, c_hi)``:

    1. take the upper concave hull of the points (at equal cost the higher accuracy);
    2. make it non-decreasing: a running maximum of the hull's accuracy from left to right (a router
       can always spend more for the same accuracy), linear between hull vertices;
    3. extend it flat to the right of its last vertex, and set it to 0 left of its first vertex
       (a router cannot spend less than its cheapest point);
    4. integrate that function over [c_lo, c_hi] (exactly: it is piecewise linear) and divide by
       ``c_hi − c_lo``.

    Pass the mean costs of the cheapest and the most expensive single target as ``cost_range`` so
    that routers on the same rows are comparable. A single point (c, a) gives
    ``a · (c_hi − max(c, c_lo)) / (c_hi − c_lo)`` (0 when c > c_hi): its accuracy times the share of
    the interval at or right of its cost. The result lies in [0, max accuracy].

    Args:
        cost: (K,) mean cost in USD per prompt of each curve point; accuracy: (K,) their accuracy.
        cost_range: (c_lo, c_hi) with c_lo <= c_hi.
    Returns:
        The AIQ; NaN when c_lo == c_hi (an empty interval).
    Raises:
        DataError: the arrays are empty, of different lengths or not finite, or c_lo > c_hi.

    >>> aiq(np.array([1.0, 3.0]), np.array([0.5, 0.7]), (1.0, 3.0))
    0.6
    """
    cost, accuracy = _curve("cost", cost, "accuracy", accuracy)
    lo, hi = float(cost_range[0]), float(cost_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise DataError(
            f"cost_range must be finite (c_lo, c_hi) with c_lo <= c_hi; got {cost_range} instead."
        )
    if lo == hi:
        return math.nan
    xs, ys = _upper_hull(cost, accuracy)
    ys = np.maximum.accumulate(ys)
    start = max(lo, float(xs[0]))
    if start >= hi:
        return 0.0
    grid = np.concatenate(([start], xs[(xs > start) & (xs < hi)], [hi]))
    area = np.trapezoid(np.interp(grid, xs, ys), grid)  # interp extends the last vertex flat
    return float(area / (hi - lo))


def savings_at_accuracy(
    accuracy: np.ndarray, cost: np.ndarray, best_accuracy: float, best_cost: float, margin: float = 0.0
) -> tuple[int | None, float | None]:
    """The curve point that saves the most against the best single target while keeping its accuracy.

    Among the points with ``accuracy >= best_accuracy − margin``, the one with the largest saving
    ``1 − cost / best_cost`` (the cheapest; ties go to the more accurate, then the earlier point).
    ``margin`` 0 gives "savings at the best single's accuracy", 0.01 "within 1 point of it".

    Args:
        accuracy, cost: (K,) the curve's points. best_accuracy, best_cost: the best single target's.
    Returns:
        (index of that point, its saving), or (None, None) when no point is accurate enough or
        the best single target costs nothing.
    Raises:
        DataError: the arrays are empty, of different lengths or not finite.

    >>> savings_at_accuracy(np.array([0.7, 0.8, 0.9]), np.array([1.0, 2.0, 4.0]), 0.8, 4.0)
    (1, 0.5)
    """
    cost, accuracy = _curve("cost", cost, "accuracy", accuracy)
    qualifies = np.flatnonzero(accuracy >= best_accuracy - margin - _SAVINGS_TOL)
    if qualifies.size == 0 or best_cost <= 0:
        return None, None
    order = np.lexsort((qualifies, -accuracy[qualifies], cost[qualifies]))
    index = int(qualifies[order[0]])
    return index, 1.0 - float(cost[index]) / best_cost


def apgr(
    strong_share: np.ndarray, accuracy: np.ndarray, weak_accuracy: float, strong_accuracy: float
) -> float:
    """RouteLLM's average performance gap recovered, for a pool of one weak and one strong target.

    At each curve point, PGR = (accuracy − weak) / (strong − weak) and x = the share of calls sent to
    the strong target. The endpoints (0, 0) and (1, 1) are added when no point sits at x = 0 or x = 1;
    at each x the best PGR is kept, then a running maximum makes the envelope non-decreasing in x, and
    the envelope is integrated over [0, 1] by the trapezoid rule.

    The straight line from the weak to the strong target gives 0.5; a router recovering the whole gap
    with no strong call gives 1.

    Args:
        strong_share: (K,) share of calls to the strong target in [0, 1]; accuracy: (K,) accuracy.
        weak_accuracy, strong_accuracy: accuracy of always calling the weak / the strong target.
    Returns:
        The APGR; NaN when strong_accuracy == weak_accuracy.
    Raises:
        DataError: the arrays are empty, of different lengths, not finite, or a share is outside [0, 1].

    >>> apgr(np.array([0.5]), np.array([0.75]), 0.5, 1.0)
    0.5
    """
    x, accuracy = _curve("strong_share", strong_share, "accuracy", accuracy)
    if ((x < 0) | (x > 1)).any():
        raise DataError(f"strong_share must lie in [0, 1]; got {x.min()}..{x.max()} instead.")
    if strong_accuracy == weak_accuracy:
        return math.nan
    pgr = (accuracy - weak_accuracy) / (strong_accuracy - weak_accuracy)
    for end in (0.0, 1.0):
        if not (x == end).any():
            x, pgr = np.append(x, end), np.append(pgr, end)
    order = np.lexsort((-pgr, x))  # by x, the best PGR first within one x
    x, pgr = x[order], pgr[order]
    first = np.r_[True, x[1:] != x[:-1]]
    return float(np.trapezoid(np.maximum.accumulate(pgr[first]), x[first]))
