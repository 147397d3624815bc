"""Choosing one target per prompt: the three policies, candidates, and their cost–accuracy curves.

Stage 5 — routing policies (DESIGN §7): turn probabilities and costs into one target per prompt.

Given ``p`` (N, M) calibrated probabilities that each target answers correctly and ``c`` (N, M)
costs in USD, a policy picks one column per row among that row's candidate targets:

- ``budget`` (Lagrangian): ``argmax_m p_m − μ·c_m``; μ >= 0 is the accuracy one dollar is worth,
  ``μ = inf`` means the cheapest candidate. Sweeping μ traces the cost–accuracy curve, and a budget
  (USD per request, a share of the most expensive target's cost, or a cap on the share of calls to
  expensive targets) is met by solving μ on calibration rows (:func:`solve_budget`).
- ``lambda`` (Switchyard-compatible): ``argmax_m λ·p_m − (1 − λ)·ĉ_m`` with ``ĉ`` the costs min–max
  normalised over the row's candidates; λ in [0, 1].
- ``tolerance`` (NVIDIA-toolkit-compatible): the cheapest candidate with ``p_m >= max_k p_k − τ``.

Ties go to the cheaper target, then to the more likely one, then to the lower column index. Scores
are compared with a tiny relative tolerance (:data:`_RTOL`), so a tie survives float rounding.

Candidates are the ``allowed`` targets whose cost fits under ``max_cost``; a row where none fits
falls back to its cheapest allowed target (:func:`candidate_mask` reports those rows).

Pure numpy: no torch, scikit-learn or scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefill_router._json import finite_or_none
from prefill_router.errors import ConfigError, DataError

POLICIES = ("budget", "lambda", "tolerance")
#: The knob of a policy named without one, on every path (route, route-batch, serve, evaluate):
#: μ = 0 (the most likely target), λ = 1 (probability only), τ = 0 (the most likely, cheapest on ties).
DEFAULT_KNOBS = {"budget": 0.0, "lambda": 1.0, "tolerance": 0.0}

#: Scores (and costs) closer than this share of their magnitude count as equal.
_RTOL = 1e-12
#: mu_grid's largest finite μ is this many times 1 / (smallest cost gap): every row then picks its cheapest.
_MU_MARGIN = 10.0
#: mu_grid's smallest positive μ trades at most this much probability for the widest cost spread.
_MU_FLOOR_P = 1e-4
#: mu_grid never goes above this finite μ (keeps μ·c finite).
_MU_CEILING = 1e300
#: Default knob sweeps of policy_curve for the lambda and tolerance policies.
_SWEEP_POINTS = 101

_KNOB_RULES = {
    "budget": ("a number >= 0 for the budget policy (μ, accuracy per USD; inf = cheapest)", 0.0, math.inf),
    "lambda": ("a number in [0, 1] for the lambda policy (λ, weight of p against cost)", 0.0, 1.0),
    "tolerance": ("a number >= 0 for the tolerance policy (τ, probability given up)", 0.0, math.inf),
}


# ---------------------------------------------------------------------------------------------------
# validation


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(
            f"The 'policy' parameter must be one of {', '.join(POLICIES)}; got {policy!r} instead."
        )


def check_knob(policy: str, knob: float) -> float:
    """The knob as a float after checking it suits ``policy``.

    Raises:
        ConfigError: unknown policy, or a knob that is NaN, not a number, or out of the policy's range
            (μ >= 0, λ in [0, 1], τ >= 0).

    Example:
        >>> check_knob("lambda", 1)
        1.0
    """
    _check_policy(policy)
    expected, low, high = _KNOB_RULES[policy]
    ok = isinstance(knob, int | float | np.floating | np.integer) and not isinstance(knob, bool)
    if not ok or math.isnan(knob) or not low <= knob <= high:
        raise ConfigError(f"The 'knob' parameter must be {expected}; got {knob!r} instead.")
    return float(knob)


def _check_costs(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=float)
    if c.ndim != 2 or c.shape[1] == 0:
        raise DataError(f"costs must be an (N, M) array with M >= 1; got shape {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise DataError("costs must be finite and >= 0 USD")
    return c


def _check_matrix(x: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.shape != shape:
        raise DataError(f"{name} must have the costs' shape {shape}; got {x.shape}")
    if np.isnan(x).any() or (x < 0).any() or (x > 1).any():
        raise DataError(f"{name} must lie in [0, 1] with no NaN")
    return x


# ---------------------------------------------------------------------------------------------------
# candidates and choice


def candidate_mask(
    c: np.ndarray, allowed: np.ndarray | None = None, max_cost: float | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Which targets each row may go to, and which rows fell back because of ``max_cost``.

    Args:
        c: (N, M) costs in USD.
        allowed: None (every target), an (M,) or an (N, M) bool mask of allowed targets.
        max_cost: None, one USD cap or (N,) caps; a candidate must cost at most the cap.

    Returns:
        ``(mask, fell_back)``: the (N, M) candidate mask and an (N,) bool array, True where no allowed
        target fits under ``max_cost`` so the row's candidates are its cheapest allowed target(s).

    Raises:
        ConfigError: a mask of the wrong shape, a row with no allowed target, a NaN or negative cap.

    Example:
        >>> mask, fell_back = candidate_mask(np.array([[1.0, 2.0]]), max_cost=0.5)
        >>> mask.tolist(), fell_back.tolist()
        ([[True, False]], [True])
    """
    c = _check_costs(c)
    n, m = c.shape
    allow = np.ones((n, m), dtype=bool) if allowed is None else _allowed_mask(allowed, (n, m))
    empty = np.flatnonzero(~allow.any(axis=1))
    if empty.size:
        raise ConfigError(
            f"The 'allowed' parameter must allow at least one target in every row; "
            f"row {int(empty[0])} allows none."
        )
    if max_cost is None:
        return allow, np.zeros(n, dtype=bool)
    cap = _cost_cap(max_cost, n)
    fits = allow & (c <= cap[:, None])
    fell_back = np.logical_not(fits.any(axis=1))
    cheapest = np.where(allow, c, np.inf).min(axis=1, keepdims=True)
    mask = np.where(fell_back[:, None], allow & (c <= cheapest), fits)
    return mask, fell_back


def _allowed_mask(allowed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    allow = np.asarray(allowed)
    if allow.dtype != bool or allow.shape not in (shape[1:], shape):
        raise ConfigError(
            f"The 'allowed' parameter must be a bool mask of shape {shape[1:]} or {shape}; "
            f"got {allow.dtype} of shape {allow.shape} instead."
        )
    return np.broadcast_to(allow, shape)


def _cost_cap(max_cost: float | np.ndarray, n: int) -> np.ndarray:
    cap = np.asarray(max_cost, dtype=float)
    if cap.ndim > 1 or (cap.ndim == 1 and cap.shape != (n,)) or np.isnan(cap).any() or (cap < 0).any():
        raise ConfigError(
            f"The 'max_cost' parameter must be a number >= 0 or ({n},) such numbers in USD; "
            f"got {max_cost!r} instead."
        )
    return np.broadcast_to(cap, (n,))


def choose(
    p: np.ndarray,
    c: np.ndarray,
    policy: str = "budget",
    knob: float = 0.0,
    *,
    allowed: np.ndarray | None = None,
    max_cost: float | np.ndarray | None = None,
) -> np.ndarray:
    """The column each row routes to under ``policy`` with its ``knob`` (μ, λ or τ).

    Args:
        p: (N, M) probabilities that each target answers correctly.
        c: (N, M) costs in USD (finite, >= 0).
        policy: ``budget``, ``lambda`` or ``tolerance``.
        knob: μ >= 0 (``math.inf`` = cheapest), λ in [0, 1], or τ >= 0.
        allowed, max_cost: restrict the candidates, see :func:`candidate_mask` (a row where nothing
            allowed fits under ``max_cost`` goes to its cheapest allowed target).

    Returns:
        (N,) int array of target columns.

    Raises:
        ConfigError: unknown policy, bad knob, bad ``allowed`` / ``max_cost``.
        DataError: p or c of the wrong shape or out of range.

    Example:
        >>> p = np.array([[0.9, 0.8]]); c = np.array([[0.2, 0.1]])
        >>> choose(p, c, "budget", 0.0).tolist(), choose(p, c, "budget", 1.0).tolist()
        ([0], [1])
    """
    knob = check_knob(policy, knob)
    c = _check_costs(c)
    p = _check_matrix(p, "probabilities", c.shape)
    mask, _ = candidate_mask(c, allowed, max_cost)
    return _choose(p, c, policy, knob, mask)


def _choose(p: np.ndarray, c: np.ndarray, policy: str, knob: float, mask: np.ndarray) -> np.ndarray:
    """choose() on validated arrays and a candidate mask with at least one candidate per row."""
    top_cost = np.where(mask, c, 0.0).max(axis=1)  # (N,)
    if policy == "tolerance":
        best = np.where(mask, p, -np.inf).max(axis=1, keepdims=True)
        mask = mask & (p >= best - knob - _RTOL)
        return _pick(-c, c, p, mask, top_cost)
    if policy == "lambda":
        return _pick(knob * p - (1.0 - knob) * _normalised_costs(c, mask), c, p, mask, np.ones(len(c)))
    if math.isinf(knob):
        return _pick(-c, c, p, mask, top_cost)
    return _pick(p - knob * c, c, p, mask, 1.0 + knob * top_cost)


def _normalised_costs(c: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ĉ: costs min–max normalised over each row's candidates (0 where they all cost the same)."""
    low = np.where(mask, c, np.inf).min(axis=1, keepdims=True)
    span = np.where(mask, c, -np.inf).max(axis=1, keepdims=True) - low
    out: np.ndarray = np.divide(c - low, span, out=np.zeros_like(c), where=span > 0)
    return out


def _pick(score: np.ndarray, c: np.ndarray, p: np.ndarray, mask: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per row, the candidate with the best score; near-ties go to the cheaper, then the likelier one.

    ``scale`` (N,) is the magnitude of the score terms: scores within ``_RTOL·scale`` are tied, so the
    outcome does not hinge on the rounding of ``p − μ·c``.
    """
    s = np.where(mask, score, -np.inf)
    near = mask & (s >= s.max(axis=1, keepdims=True) - _RTOL * scale[:, None])
    cost = np.where(near, c, np.inf)
    cheapest = cost.min(axis=1, keepdims=True)
    near &= cost <= cheapest + _RTOL * cheapest
    prob = np.where(near, p, -np.inf)
    near &= prob >= prob.max(axis=1, keepdims=True)
    choice: np.ndarray = np.argmax(near, axis=1)
    return choice


# ---------------------------------------------------------------------------------------------------
# cost-accuracy curves


def mu_grid(c: np.ndarray, n: int = 200) -> np.ndarray:
    """``n`` increasing μ values for sweeping the budget policy: 0, a geometric run, then ``inf``.

    The geometric run goes from a μ so small that it trades at most 1e-4 probability over the widest
    cost spread in ``c`` ("accuracy only") to 10 / (the smallest positive gap between two costs of a
    row), where every row picks its cheapest candidate (p differences are at most 1). When every row's
    costs are all equal, the grid is just ``[0, inf]``.

    Raises:
        ConfigError: ``n < 3``.

    Example:
        >>> g = mu_grid(np.array([[0.1, 0.2, 0.4]]), n=5)
        >>> g[0], g[-1], bool(np.all(np.diff(g) > 0))
        (np.float64(0.0), np.float64(inf), True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise ConfigError(f"The 'n' parameter must be an int >= 3; got {n!r} instead.")
    c = _check_costs(c)
    gaps = np.diff(np.sort(c, axis=1), axis=1)  # (N, M-1)
    gaps = np.where(gaps > _RTOL * c.max(axis=1, keepdims=True), gaps, np.inf)
    smallest_gap = float(gaps.min()) if gaps.size else math.inf
    if not math.isfinite(smallest_gap):
        return np.array([0.0, math.inf])
    widest_spread = float(np.ptp(c, axis=1).max())
    high = min(_MU_MARGIN / smallest_gap, _MU_CEILING)  # the ceiling only bites on subnormal gaps
    low = min(_MU_FLOOR_P / widest_spread, high)
    return np.concatenate([[0.0], np.geomspace(low, high, n - 2), [math.inf]])


@dataclass(frozen=True, eq=False)
class Curve:
    """A policy's cost–accuracy curve: one point per knob value (K points over N rows)."""

    knob: np.ndarray  # (K,) μ, λ or τ
    accuracy: np.ndarray  # (K,) mean over rows of y[i, choice_i]
    cost: np.ndarray  # (K,) mean USD per request
    choices: np.ndarray  # (K, N) int target columns

    def to_json(self) -> dict[str, Any]:
        """Knob, accuracy and cost as lists (inf becomes null); the choices are left out."""
        out: dict[str, Any] = finite_or_none(
            {"knob": self.knob.tolist(), "accuracy": self.accuracy.tolist(), "cost": self.cost.tolist()}
        )
        return out


def default_knobs(policy: str, c: np.ndarray) -> np.ndarray:
    """The knob sweep of :func:`policy_curve`: ``mu_grid(c)``, or 101 values from 0 to 1 (λ, τ)."""
    _check_policy(policy)
    return mu_grid(c) if policy == "budget" else np.linspace(0.0, 1.0, _SWEEP_POINTS)


def policy_curve(
    p: np.ndarray, c: np.ndarray, y: np.ndarray, policy: str = "budget", knobs: np.ndarray | None = None
) -> Curve:
    """Sweep ``policy``'s knob and record the mean accuracy and mean cost at each value.

    Along the budget curve, lowering μ never lowers the mean cost nor the mean *expected* accuracy
    (mean of ``p[i, choice_i]``); the realised accuracy against ``y`` need not be monotone.

    Args:
        p: (N, M) probabilities. c: (N, M) costs in USD. y: (N, M) labels in [0, 1], no NaN.
        policy: ``budget``, ``lambda`` or ``tolerance``.
        knobs: the values to sweep; default :func:`default_knobs`.

    Raises:
        ConfigError: unknown policy or a bad knob. DataError: malformed p, c or y.

    Example:
        >>> p = np.array([[0.9, 0.6]]); c = np.array([[1.0, 0.1]]); y = np.array([[1.0, 0.0]])
        >>> policy_curve(p, c, y, "lambda", np.array([0.0, 1.0])).cost.tolist()
        [0.1, 1.0]
    """
    c = _check_costs(c)
    p = _check_matrix(p, "probabilities", c.shape)
    y = _check_matrix(y, "labels", c.shape)
    grid = default_knobs(policy, c) if knobs is None else np.asarray(knobs, dtype=float)
    mask = np.ones(c.shape, dtype=bool)
    choices = np.stack([_choose(p, c, policy, check_knob(policy, float(k)), mask) for k in grid])
    rows = np.arange(len(c))
    return Curve(
        knob=grid,
        accuracy=y[rows, choices].mean(axis=1),
        cost=c[rows, choices].mean(axis=1),
        choices=choices,
    )
