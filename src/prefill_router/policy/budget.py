"""Budgets: solve the budget policy's μ on calibration rows, and bootstrap what a choice achieves."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prefill_router._bootstrap import check_level, percentile_interval, resampled_means
from prefill_router._json import finite_or_none
from prefill_router.errors import ConfigError, DataError, UnknownTargetError
from prefill_router.policy.choice import _RTOL, _check_costs, _check_matrix, _choose, mu_grid

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
    # By hand: scipy's bisect wants a continuous sign change and halves arithmetically; μ spans decades.
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


def _check_boot(values: np.ndarray, level: float) -> None:
    if len(values) == 0:
        raise DataError("cannot bootstrap the mean of zero rows")
    check_level(level)


def bootstrap_interval(
    values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (N,), resampling rows
    (:mod:`prefill_router._bootstrap`, as every interval of ``evaluate``).

    Raises:
        ConfigError: ``n_boot < 1`` or ``level`` outside (0, 1). DataError: no rows.

    Example:
        >>> low, high = bootstrap_interval(np.array([0.0, 1.0, 1.0, 0.0]), n_boot=200)
        >>> 0.0 <= low <= 0.5 <= high <= 1.0
        True
    """
    values = np.asarray(values, dtype=float)
    _check_boot(values, level)
    low, high = percentile_interval(resampled_means(values[:, None], n_boot, seed)[:, 0], level)
    return low, high


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
    _check_boot(values, 0.95)
    means = resampled_means(values, n_boot, seed)
    return {
        "accuracy": float(values[:, 0].mean()),
        "accuracy_ci": percentile_interval(means[:, 0]),
        "cost": float(values[:, 1].mean()),
        "cost_ci": percentile_interval(means[:, 1]),
    }
