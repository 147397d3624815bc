"""Stage 5 — routing policies (DESIGN §7): turn probabilities and costs into one target per prompt.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prefill_router._json import finite_or_none
from prefill_router.errors import ConfigError, DataError, UnknownTargetError

POLICIES = ("budget", "lambda", "tolerance")

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
#: Bootstrap resamples are drawn in chunks of about this many indices (memory bound).
_BOOT_CHUNK = 1_000_000

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


# ---------------------------------------------------------------------------------------------------
# budgets


@dataclass(frozen=True)
class Budget:
    """What the budget policy must not exceed on average; set exactly one of the three amounts.

    - ``usd_per_request``: mean USD per request;
    - ``share_of_max``: a share of the mean cost of the most expensive target (the target with the
      highest mean cost over the rows), e.g. 0.5 for "half of always using the top model";
    - ``expensive_share`` with ``expensive``: the largest share of calls that may go to those targets.

    Raises:
        ConfigError: none or several amounts set, an amount out of range, ``expensive`` without
            ``expensive_share`` or the other way round.

    Example:
        >>> Budget(expensive_share=0.2, expensive=("gpt-4o",)).expensive
        ('gpt-4o',)
    """

    usd_per_request: float | None = None
    share_of_max: float | None = None
    expensive_share: float | None = None
    expensive: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "expensive", tuple(self.expensive))
        amounts = {"usd_per_request": self.usd_per_request, "share_of_max": self.share_of_max}
        amounts["expensive_share"] = self.expensive_share
        given = [name for name, value in amounts.items() if value is not None]
        if len(given) != 1:
            raise ConfigError(
                "A Budget needs exactly one of 'usd_per_request', 'share_of_max' or 'expensive_share'; "
                f"got {len(given)}{' (' + ', '.join(given) + ')' if given else ''} instead."
            )
        name, value = given[0], amounts[given[0]]
        high = 1.0 if name == "expensive_share" else math.inf
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= high:
            expected = "a number in [0, 1]" if high == 1.0 else "a finite number >= 0"
            raise ConfigError(f"The {name!r} parameter must be {expected}; got {value!r} instead.")
        if not math.isfinite(value):
            raise ConfigError(f"The {name!r} parameter must be a finite number >= 0; got {value!r} instead.")
        if (name == "expensive_share") != bool(self.expensive):
            raise ConfigError(
                "The 'expensive' parameter must name at least one target exactly when 'expensive_share' "
                f"is set; got expensive={self.expensive!r} with {name} instead."
            )


@dataclass(frozen=True)
class BudgetSolution:
    """The μ that meets a budget on the calibration rows, and what it spends there."""

    mu: float  # the smallest μ >= 0 that meets the budget (0 when saturated)
    cost: float  # mean USD per request at mu on the rows solved on
    expensive_share: float | None  # share of calls to Budget.expensive at mu; None for USD budgets
    saturated: bool  # the budget is at or above what μ = 0 (accuracy only) spends
    budget_usd: float | None  # the USD budget solved for; None for an expensive-share cap

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (inf becomes null)."""
        out: dict[str, Any] = finite_or_none(asdict(self))
        return out


def solve_budget(
    p: np.ndarray,
    c: np.ndarray,
    budget: Budget,
    targets: Sequence[str] | None = None,
    *,
    iterations: int = 60,
) -> BudgetSolution:
    """The smallest μ >= 0 whose budget-policy choices meet ``budget`` on these (calibration) rows.

    μ is bracketed on :func:`mu_grid` and refined by ``iterations`` bisection steps; the returned μ
    always meets the budget on these rows. A budget at or above what μ = 0 spends is *saturated*:
    μ = 0, not an error. The share of calls to ``expensive`` targets is assumed to fall as μ rises
    (true when they are the costliest targets of each row); the returned μ meets the cap regardless.

    Args:
        p: (N, M) probabilities. c: (N, M) costs in USD.
        budget: the amount to meet.
        targets: the M target names in column order; required for an ``expensive_share`` budget.
        iterations: bisection steps between the two bracketing grid points.

    Raises:
        ConfigError: a budget below what the cheapest routing (μ = inf) spends, missing ``targets``.
        UnknownTargetError: a name in ``budget.expensive`` that is not in ``targets``.

    Example:
        >>> p = np.array([[0.9, 0.5], [0.8, 0.7]]); c = np.array([[1.0, 0.1], [1.0, 0.1]])
        >>> solve_budget(p, c, Budget(usd_per_request=0.55)).cost
        0.55
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"The 'iterations' parameter must be an int >= 1; got {iterations!r} instead.")
    c = _check_costs(c)
    p = _check_matrix(p, "probabilities", c.shape)
    mask = np.ones(c.shape, dtype=bool)
    expensive = _expensive_columns(budget, targets, c.shape[1])
    limit = _budget_limit(budget, c)

    def measure(mu: float) -> tuple[float, float | None]:
        choice = _choose(p, c, "budget", mu, mask)
        share = None if expensive is None else float(np.isin(choice, expensive).mean())
        return float(c[np.arange(len(c)), choice].mean()), share

    def meets(mu: float) -> bool:
        cost, share = measure(mu)
        return (cost if share is None else share) <= limit * (1 + _RTOL)

    if meets(0.0):
        return BudgetSolution(0.0, *measure(0.0), saturated=True, budget_usd=_usd_or_none(budget, limit))
    if not meets(math.inf):
        raise ConfigError(_below_cheapest(budget, limit, *measure(math.inf)))
    mu = _bisect(meets, mu_grid(c), iterations)
    return BudgetSolution(mu, *measure(mu), saturated=False, budget_usd=_usd_or_none(budget, limit))


def _expensive_columns(budget: Budget, targets: Sequence[str] | None, m: int) -> np.ndarray | None:
    if budget.expensive_share is None:
        return None
    if targets is None:
        raise ConfigError(
            "An 'expensive_share' budget needs the 'targets' names to find its expensive targets."
        )
    names = list(targets)
    if len(names) != m:
        raise ConfigError(f"The 'targets' parameter must hold {m} names (one per column); got {len(names)}.")
    for name in budget.expensive:
        if name not in names:
            raise UnknownTargetError(name, names)
    return np.array([names.index(name) for name in budget.expensive])


def _budget_limit(budget: Budget, c: np.ndarray) -> float:
    """The budget in USD per request, or the expensive-share cap."""
    if budget.usd_per_request is not None:
        return float(budget.usd_per_request)
    if budget.share_of_max is not None:
        return float(budget.share_of_max) * float(c.mean(axis=0).max())
    assert budget.expensive_share is not None  # guaranteed by Budget.__post_init__
    return float(budget.expensive_share)


def _usd_or_none(budget: Budget, limit: float) -> float | None:
    return None if budget.expensive_share is not None else limit


def _below_cheapest(budget: Budget, limit: float, cost: float, share: float | None) -> str:
    if share is None:
        return (
            f"budget {format_usd(limit)} per request is below the cheapest possible routing "
            f"({format_usd(cost)} per request); raise the budget or allow cheaper targets."
        )
    return (
        f"expensive-share cap {limit:g} is below the lowest possible share of calls to "
        f"{', '.join(budget.expensive)} ({share:.3g}, when every request goes to its cheapest target)."
    )


def _bisect(meets: Callable[[float], bool], grid: np.ndarray, iterations: int) -> float:
    """The smallest μ that ``meets``: bracket it between grid points, then bisect (geometrically if > 0)."""
    finite = grid[np.isfinite(grid)]
    lo_i, hi_i = 0, len(finite) - 1  # meets(finite[0] = 0) is False
    if not meets(float(finite[hi_i])):
        return math.inf
    while hi_i - lo_i > 1:
        mid_i = (lo_i + hi_i) // 2
        lo_i, hi_i = (lo_i, mid_i) if meets(float(finite[mid_i])) else (mid_i, hi_i)
    lo, hi = float(finite[lo_i]), float(finite[hi_i])
    for _ in range(iterations):
        mid = math.sqrt(lo * hi) if lo > 0 else 0.5 * hi
        if not lo < mid < hi:
            break
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return hi


def format_usd(amount: float) -> str:
    """Dollars with three significant digits and no trailing zeros, e.g. ``$0.00001``, ``$1.5``."""
    if amount == 0 or not math.isfinite(amount):
        return f"${amount:g}"
    decimals = min(15, max(2, 2 - math.floor(math.log10(abs(amount)))))
    text = f"{amount:.{decimals}f}".rstrip("0").rstrip(".")
    return f"${text}"


# ---------------------------------------------------------------------------------------------------
# achieved cost and accuracy


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, K) means of (N, K) ``values`` over rows resampled with replacement."""
    rng = np.random.default_rng(seed)
    n = len(values)
    chunk = max(1, _BOOT_CHUNK // n)
    out = [
        values[rng.integers(0, n, size=(min(chunk, n_boot - i), n))].mean(axis=1)
        for i in range(0, n_boot, chunk)
    ]
    return np.concatenate(out)


def _check_boot(values: np.ndarray, n_boot: int, level: float) -> None:
    if len(values) == 0:
        raise DataError("cannot bootstrap the mean of zero rows")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ConfigError(f"The 'n_boot' parameter must be an int >= 1; got {n_boot!r} instead.")
    if not 0 < level < 1:
        raise ConfigError(f"The 'level' parameter must be in (0, 1); got {level!r} instead.")


def bootstrap_interval(
    values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (N,), resampling rows.

    Raises:
        ConfigError: ``n_boot < 1`` or ``level`` outside (0, 1). DataError: no rows.

    Example:
        >>> low, high = bootstrap_interval(np.array([0.0, 1.0, 1.0, 0.0]), n_boot=200)
        >>> 0.0 <= low <= 0.5 <= high <= 1.0
        True
    """
    values = np.asarray(values, dtype=float)
    _check_boot(values, n_boot, level)
    means = _bootstrap_means(values[:, None], n_boot, seed)[:, 0]
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def achieved(
    choice: np.ndarray, y: np.ndarray, c: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Mean accuracy and mean USD cost of routing row i to ``choice[i]``, with 95% bootstrap intervals.

    Both intervals come from the same resamples of rows. Returns ``{"accuracy", "accuracy_ci",
    "cost", "cost_ci"}`` with each interval a 2-list.

    Example:
        >>> out = achieved(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]), np.ones((2, 2)))
        >>> out["accuracy"], out["cost"]
        (1.0, 1.0)
    """
    c = _check_costs(c)
    y = _check_matrix(y, "labels", c.shape)
    choice = np.asarray(choice)
    if choice.shape != (len(c),) or not np.issubdtype(choice.dtype, np.integer):
        raise DataError(f"choice must be ({len(c)},) ints; got {choice.dtype} of shape {choice.shape}")
    rows = np.arange(len(c))
    values = np.stack([y[rows, choice], c[rows, choice]], axis=1)  # (N, 2)
    _check_boot(values, n_boot, 0.95)
    means = _bootstrap_means(values, n_boot, seed)
    low, high = np.quantile(means, [0.025, 0.975], axis=0)
    return {
        "accuracy": float(values[:, 0].mean()),
        "accuracy_ci": [float(low[0]), float(high[0])],
        "cost": float(values[:, 1].mean()),
        "cost_ci": [float(low[1]), float(high[1])],
    }


# ---------------------------------------------------------------------------------------------------
# one request


@dataclass(frozen=True)
class Decision:
    """Where one request goes, and why."""

    target: str
    index: int  # column of target in the router's targets
    policy: str
    knob: float
    probabilities: dict[str, float]  # every target
    costs_usd: dict[str, float]  # every target
    candidates: tuple[str, ...]  # the targets the policy chose among
    reason: str  # one human-readable line

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (an infinite knob becomes null)."""
        out: dict[str, Any] = finite_or_none(asdict(self))
        return out


def decide(
    p: np.ndarray,
    c: np.ndarray,
    targets: Sequence[str],
    policy: str = "budget",
    knob: float = 0.0,
    *,
    allowed: Sequence[str] | None = None,
    max_cost: float | None = None,
) -> Decision:
    """Route one request: :func:`choose` on one row, by target name, with a one-line reason.

    Args:
        p: (M,) probabilities. c: (M,) costs in USD. targets: the M names in column order.
        policy, knob: as in :func:`choose`.
        allowed: names of the targets this request may use (None = all).
        max_cost: a USD cap; when no allowed target fits, the cheapest allowed one is used.

    Raises:
        UnknownTargetError: a name in ``allowed`` not in ``targets``.
        ConfigError: bad policy or knob, an empty ``allowed``, duplicate or miscounted ``targets``.

    Example:
        >>> d = decide(np.array([0.86, 0.81]), np.array([5e-4, 1e-4]), ["big", "small"], "tolerance", 0.05)
        >>> d.target
        'small'
    """
    names = list(targets)
    p, c = np.asarray(p, dtype=float), np.asarray(c, dtype=float)
    if p.ndim != 1 or c.ndim != 1:
        raise DataError(f"p and c must be (M,) arrays for one request; got shapes {p.shape} and {c.shape}")
    costs = _check_costs(c[None, :])  # (1, M)
    probs = _check_matrix(p[None, :], "probabilities", costs.shape)
    if len(names) != costs.shape[1] or len(set(names)) != len(names):
        raise ConfigError(
            f"The 'targets' parameter must hold {costs.shape[1]} distinct names; got {names!r} instead."
        )
    knob = check_knob(policy, knob)
    mask, fell_back = candidate_mask(costs, _names_mask(allowed, names), max_cost)
    index = int(_choose(probs, costs, policy, knob, mask)[0])
    candidates = tuple(name for name, ok in zip(names, mask[0], strict=True) if ok)
    reason = _reason(probs[0], costs[0], names, policy, knob, mask[0], index)
    if fell_back[0]:
        assert max_cost is not None  # only max_cost makes a row fall back
        reason += (
            f"; no allowed target costs at most {format_usd(max_cost)}, so the cheapest allowed one was used"
        )
    return Decision(
        target=names[index],
        index=index,
        policy=policy,
        knob=knob,
        probabilities=dict(zip(names, map(float, probs[0]), strict=True)),
        costs_usd=dict(zip(names, map(float, costs[0]), strict=True)),
        candidates=candidates,
        reason=reason,
    )


def _names_mask(allowed: Sequence[str] | None, names: list[str]) -> np.ndarray | None:
    if allowed is None:
        return None
    if isinstance(allowed, str):
        allowed = [allowed]
    for name in allowed:
        if name not in names:
            raise UnknownTargetError(name, names)
    return np.isin(np.array(names), np.array(list(allowed), dtype=str))


def _reason(
    p: np.ndarray, c: np.ndarray, names: list[str], policy: str, knob: float, mask: np.ndarray, index: int
) -> str:
    """The one-line why of a decision, e.g. "budget policy, μ=1.2e+04: maximises p − μ·c over ..."."""
    count = int(mask.sum())
    pool = f"{count} allowed target{'s' if count != 1 else ''}"
    best = int(np.argmax(np.where(mask, p, -np.inf)))
    picked = f"{names[index]} (p={p[index]:.2f}, {format_usd(float(c[index]))})"
    if policy == "tolerance":
        head = (
            f"tolerance policy, τ={knob:g}: cheapest of {pool} within {knob:g} of the best p ({p[best]:.2f})"
        )
    elif policy == "lambda":
        head = f"lambda policy, λ={knob:g}: maximises λ·p − (1 − λ)·ĉ over {pool}"
    else:
        head = f"budget policy, μ={knob:.2g}: maximises p − μ·c over {pool}"
    if p[index] >= p[best]:
        return f"{head}; picked {picked}, the most likely"
    runner = f"{names[best]} (p={p[best]:.2f}, {format_usd(float(c[best]))})"
    return f"{head}; picked {picked} over the most likely {runner}"
