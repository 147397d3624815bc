"""Quality floors: the cheapest budget-policy μ whose accuracy stays above a floor, with a guarantee.

A floor is absolute ("accuracy >= 0.85") or relative to a reference target ("within 1 point of
gpt-4", ">= 99% of gpt-4's accuracy"; the reference defaults to the best single target). The
certificate is Learn-then-Test (Angelopoulos, Bates, Candès, Jordan, Lei, "Learn then Test:
Calibrating Predictive Algorithms to Achieve Risk Control", arXiv 2110.01052) with a
fixed-sequence test over the μ grid:

- each μ of the grid is a hypothesis H_μ: "routing with μ violates the floor" (its expected loss is
  above a level α, see :func:`floor_losses`), tested on held-out labelled calibration rows;
- the grid is tested in a fixed order, from μ = 0 (most accurate, dearest) towards μ = inf
  (cheapest), each at level δ; testing stops at the first μ that cannot be rejected;
- the cheapest rejected μ is returned. The family-wise error of a fixed-sequence test is at most δ,
  so with probability >= 1 − δ over the calibration rows, the certified μ's accuracy on new rows
  from the same distribution is above the floor.

The p-value of one hypothesis is the exact binomial tail (Clopper–Pearson) when the loss is a 0/1
error (an absolute floor on correct/wrong labels), and otherwise the Waudby-Smith–Ramdas betting
p-value (WSR; LTT §3, from Waudby-Smith & Ramdas, "Estimating means of bounded random variables by
betting", JRSS-B 2023): valid for any loss in [0, 1] and adaptive to its variance, which matters for
a relative floor, where routing and reference agree on most rows. No kept library computes the WSR
p-value, so it is written out in :func:`wsr_p_values` (a dozen numpy lines).

Validity needs calibration rows the router was not trained, early-stopped or temperature-scaled
on (``fit --calibration-share``; ``prefill-router calibrate`` replaces them with new labelled
rows), a grid fixed without their labels, and new traffic from the same distribution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from prefill_router._json import finite_or_none
from prefill_router.data import singles
from prefill_router.errors import ConfigError, DataError, UnknownTargetError
from prefill_router.policy.budget import format_usd
from prefill_router.policy.choice import _check_costs, _check_matrix, _choose

#: ``relative_to`` naming the best single target (highest accuracy on the router's training rows).
BEST_SINGLE = "best-single"
#: The default floor of route, route-batch, evaluate and serve (issue 14): within 1 point of the
#: best single target, certified at δ = 0.05.
DEFAULT_WITHIN = 0.01
DEFAULT_DELTA = 0.05

_WITHIN_TEXT = re.compile(
    r"^\s*(?P<amount>[0-9.]+)\s*(?P<unit>pts?|points?|%)\s*(?::\s*(?P<target>.+?))?\s*$"
)


@dataclass(frozen=True)
class QualityFloor:
    """An accuracy the routing must keep with probability >= 1 − ``delta``; set exactly one amount.

    - ``min_accuracy``: an absolute accuracy (0.85), or with ``relative_to`` a share of the
      reference target's accuracy (0.99 = 99% of it);
    - ``within``: at most this many accuracy points (0.01 = 1 point) below the reference target.

    ``relative_to`` names the reference target; :data:`BEST_SINGLE` (the default for ``within``)
    is the target with the highest accuracy on the router's training rows.

    Raises:
        ConfigError: none or both amounts, an amount out of range, ``delta`` outside (0, 0.5].

    Example:
        >>> QualityFloor(within=0.01, relative_to="gpt-4").describe()
        'within 1 point of gpt-4'
    """

    min_accuracy: float | None = None
    within: float | None = None
    relative_to: str | None = None
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        given = [name for name in ("min_accuracy", "within") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ConfigError(
                "A QualityFloor needs exactly one of 'min_accuracy' or 'within'; "
                f"got {' and '.join(given) if given else 'neither'}."
            )
        if self.within is not None and self.relative_to is None:
            object.__setattr__(self, "relative_to", BEST_SINGLE)
        name = given[0]
        value = getattr(self, name)
        low_open = name == "min_accuracy"
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not ((0 < value <= 1) if low_open else (0 <= value < 1)):
            expected = "a number in (0, 1]" if low_open else "a number of accuracy points in [0, 1)"
            raise ConfigError(f"The {name!r} parameter must be {expected}; got {value!r} instead.")
        delta = self.delta
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta <= 0.5:
            raise ConfigError(f"The 'delta' parameter must be in (0, 0.5]; got {delta!r} instead.")

    @classmethod
    def parse(cls, text: str, *, delta: float = DEFAULT_DELTA) -> QualityFloor:
        """A floor from the command-line forms ``1pt``, ``1pt:TARGET``, ``99%``, ``99%:TARGET``
        (relative; no target = the best single one) or ``0.85`` (absolute).

        Example:
            >>> QualityFloor.parse("99%:gpt-4").min_accuracy
            0.99
        """
        match = _WITHIN_TEXT.match(text)
        try:
            if match:
                amount, target = float(match["amount"]), match["target"] or BEST_SINGLE
                if match["unit"] == "%":
                    return cls(min_accuracy=amount / 100, relative_to=target, delta=delta)
                return cls(within=amount / 100, relative_to=target, delta=delta)
            return cls(min_accuracy=float(text), delta=delta)
        except ValueError as exc:
            raise ConfigError(
                f"a quality floor must read '1pt[:TARGET]' (within 1 point), '99%[:TARGET]' (of the "
                f"target's accuracy) or an accuracy such as '0.85'; got {text!r}"
            ) from exc

    @property
    def relative(self) -> bool:
        """True when the floor is measured against a reference target."""
        return self.relative_to is not None

    def describe(self, reference: str | None = None) -> str:
        """One phrase, e.g. ``within 1 point of gpt-4`` (``reference`` resolves the best single)."""
        name = reference or (
            "the best single target" if self.relative_to == BEST_SINGLE else self.relative_to
        )
        if self.within is not None:
            points = self.within * 100
            return f"within {points:g} point{'s' if points != 1 else ''} of {name}"
        assert self.min_accuracy is not None  # guaranteed by __post_init__
        if self.relative:
            return f">= {self.min_accuracy * 100:g}% of {name}'s accuracy"
        return f"accuracy >= {self.min_accuracy:g}"

    def accuracy_given(self, reference_accuracy: float) -> float:
        """The floor as an accuracy, given the reference target's accuracy on the same rows."""
        if self.within is not None:
            return reference_accuracy - self.within
        assert self.min_accuracy is not None
        return self.min_accuracy * reference_accuracy if self.relative else self.min_accuracy

    def to_json(self) -> dict[str, Any]:
        """The floor as given."""
        return asdict(self)


@dataclass(frozen=True)
class FloorCertificate:
    """What certifying a floor found on the calibration rows, and where it routes."""

    floor: str  # the floor in words, reference resolved
    certified: bool  # a μ was certified; False: every request goes to ``fallback``
    mu: float | None  # the certified μ of the budget policy (None when nothing was certified)
    fallback: str | None  # the target routed to when nothing was certified
    reference: str | None  # the reference target of a relative floor; the best single of an absolute one
    delta: float
    rows: int  # calibration rows the certificate used
    method: str  # binomial | wsr
    p_value: float | None  # of the certified μ (the largest rejected p-value is below delta)
    accuracy: float  # on the calibration rows, of what is routed (certified μ or the fallback)
    reference_accuracy: float  # the reference target's accuracy on the calibration rows
    floor_accuracy: float  # the floor as an accuracy on the calibration rows
    cost: float  # mean USD per request on the calibration rows
    reference_cost: float  # mean USD per request of always using the reference target
    savings: float  # 1 - cost / reference_cost
    rows_needed: int | None  # about how many rows would certify μ = 0, when nothing was certified
    message: str  # one line for people
    independent: bool = True  # the rows were never trained on (False: the guarantee is not exact)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (inf becomes null)."""
        out: dict[str, Any] = finite_or_none(asdict(self))
        return out


# ---------------------------------------------------------------------------------------------------
# p-values


def binomial_p_values(losses: np.ndarray, alpha: float) -> np.ndarray:
    """(K,) exact p-values of H: "the mean 0/1 loss is >= alpha" from (K, n) 0/1 losses.

    The number of errors is Binomial(n, r) with r >= alpha under H, so P(Binom(n, alpha) <= errors)
    bounds the chance of seeing this few (Clopper–Pearson). Uses ``scipy.stats.binom``.
    """
    from scipy.stats import binom

    errors = np.rint(losses.sum(axis=1))
    out: np.ndarray = binom.cdf(errors, losses.shape[1], alpha)
    return out


def wsr_p_values(losses: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """(K,) WSR betting p-values of H: "the mean loss is >= alpha" from (K, n) losses in [0, 1].

    The wealth ``K_i = prod_j (1 − ν_j (L_j − alpha))`` is a non-negative supermartingale under H
    (each factor has mean <= 1 and ν_j <= 1 keeps it >= alpha > 0), so by Ville's inequality
    ``1 / max_i K_i`` is a valid p-value. The bet ``ν_j`` is WSR's predictable plug-in: it uses only
    rows before j (LTT, Proposition 6 / Appendix; Waudby-Smith & Ramdas 2023, §5).
    """
    k, n = losses.shape
    i = np.arange(1, n + 1)
    mean = (0.5 + np.cumsum(losses, axis=1)) / (1 + i)
    variance = (0.25 + np.cumsum((losses - mean) ** 2, axis=1)) / (1 + i)
    before = np.concatenate([np.full((k, 1), 0.25), variance[:, :-1]], axis=1)
    nu = np.minimum(1.0, np.sqrt(2 * math.log(1 / delta) / (n * before)))
    log_wealth = np.cumsum(np.log1p(-nu * (losses - alpha)), axis=1)
    out: np.ndarray = np.minimum(1.0, np.exp(-np.maximum(log_wealth.max(axis=1), 0.0)))
    return out


# ---------------------------------------------------------------------------------------------------
# losses


def floor_losses(
    correct: np.ndarray, reference: np.ndarray | None, floor: QualityFloor
) -> tuple[np.ndarray, float]:
    """Per-row losses in [0, 1] and the level α such that "the floor holds" = "mean loss < α".

    Args:
        correct: (K, n) label of the target each μ routes row i to.
        reference: (n,) the reference target's labels (relative floors), else None.

    - absolute floor a: loss = 1 − correct, α = 1 − a;
    - within m points of the reference: loss = (reference − correct + 1) / 2, α = (1 + m) / 2;
    - a share r of the reference: loss = (r·reference − correct + 1) / (1 + r), α = 1 / (1 + r).
    """
    if not floor.relative:
        assert floor.min_accuracy is not None
        return 1.0 - correct, 1.0 - floor.min_accuracy
    assert reference is not None
    if floor.within is not None:
        return (reference[None, :] - correct + 1.0) / 2.0, (1.0 + floor.within) / 2.0
    assert floor.min_accuracy is not None
    share = floor.min_accuracy
    return (share * reference[None, :] - correct + 1.0) / (1.0 + share), 1.0 / (1.0 + share)


def p_values(losses: np.ndarray, alpha: float, delta: float, *, zero_one: bool) -> tuple[np.ndarray, str]:
    """(K,) p-values and the method's name: exact binomial for 0/1 losses, WSR otherwise."""
    if zero_one:
        return binomial_p_values(losses, alpha), "binomial"
    return wsr_p_values(losses, alpha, delta), "wsr"


def fixed_sequence(p: np.ndarray, delta: float) -> int:
    """How many hypotheses, in order, a fixed-sequence test at level ``delta`` rejects (0 = none)."""
    above = np.flatnonzero(p > delta)
    return int(above[0]) if above.size else len(p)


# ---------------------------------------------------------------------------------------------------
# certification


def resolve_reference(floor: QualityFloor, targets: Sequence[str], best_single: str) -> str:
    """The reference target's name: ``relative_to``, or ``best_single`` for :data:`BEST_SINGLE`.

    Raises:
        UnknownTargetError: ``relative_to`` names no target (with a did-you-mean).
    """
    name = best_single if floor.relative_to in (None, BEST_SINGLE) else floor.relative_to
    assert name is not None
    if name not in targets:
        raise UnknownTargetError(name, targets, source="quality floor")
    return name


def certify_floor(
    p: np.ndarray,
    c: np.ndarray,
    y: np.ndarray,
    targets: Sequence[str],
    floor: QualityFloor,
    grid: np.ndarray,
    *,
    best_single: str | None = None,
) -> FloorCertificate:
    """The cheapest μ of ``grid`` whose routing keeps ``floor`` with probability >= 1 − δ.

    Args:
        p: (n, M) calibrated probabilities of the calibration rows. c: (n, M) their costs in USD.
        y: (n, M) their labels in [0, 1]; rows with a missing (NaN) label are left out.
        targets: the M target names. floor: the floor and its δ.
        grid: increasing μ values, fixed without looking at the labels (:func:`mu_grid` of
            costs that do not depend on them).
        best_single: the reference of :data:`BEST_SINGLE` (default: the best target on these rows).

    Returns:
        A certificate; when no μ is certified, ``fallback`` is the reference target (the best
        single one for an absolute floor) and ``rows_needed`` says about how many rows would do.

    Raises:
        ConfigError: an absolute floor above what every routing and every target reach on these
            rows (the message names the best achievable); no complete calibration row.
        UnknownTargetError: a reference that is not a target.
        DataError: malformed arrays.
    """
    p, c, y = _complete_rows(p, c, y)
    names = list(targets)
    if len(names) != c.shape[1]:
        raise ConfigError(f"The 'targets' parameter must hold {c.shape[1]} names; got {len(names)}.")
    n = len(y)
    single = singles.target_means(y)
    best = best_single if best_single in names else names[singles.best_single(single)]
    reference = resolve_reference(floor, names, best) if floor.relative else best
    ref = names.index(reference)
    mask = np.ones(c.shape, dtype=bool)
    grid = np.asarray(grid, dtype=float)
    choices = np.stack([_choose(p, c, "budget", float(mu), mask) for mu in grid])  # (K, n)
    rows = np.arange(n)
    correct = y[rows, choices]
    losses, alpha = floor_losses(correct, y[:, ref] if floor.relative else None, floor)
    zero_one = not floor.relative and bool(np.isin(y, (0.0, 1.0)).all())
    pv, method = p_values(losses, alpha, floor.delta, zero_one=zero_one)
    accepted = fixed_sequence(pv, floor.delta)
    floor_accuracy = floor.accuracy_given(float(single[ref]))
    ref_cost = float(c[:, ref].mean())
    text = floor.describe(reference if floor.relative else None)
    if accepted:
        k = accepted - 1  # the largest certified μ: the cheapest (cost never rises with μ)
        cost = float(c[rows, choices[k]].mean())
        return FloorCertificate(
            floor=text, certified=True, mu=float(grid[k]), fallback=None, reference=reference,
            delta=floor.delta, rows=n, method=method, p_value=float(pv[k]),
            accuracy=float(correct[k].mean()), reference_accuracy=float(single[ref]),
            floor_accuracy=floor_accuracy, cost=cost, reference_cost=ref_cost,
            savings=_savings(cost, ref_cost), rows_needed=None,
            message=(
                f"certified μ={grid[k]:.3g} for {text} (δ={floor.delta:g}, {n:,} calibration rows, "
                f"{method}): accuracy {correct[k].mean():.3f} on them at {format_usd(cost)} per request, "
                f"{_savings(cost, ref_cost):.0%} below {reference}"
            ),
        )  # fmt: skip
    if not floor.relative:
        _check_reachable(floor, correct.mean(axis=1), single, names, n)
    needed = rows_needed(losses[0], alpha, floor.delta)
    why = (
        f"no μ certified for {text} at δ={floor.delta:g} on {n:,} calibration rows"
        + (f" (about {needed:,} rows would certify the most accurate routing)" if needed else
           " (the most accurate routing does not reach the floor on these rows)")
        + f"; every request goes to {reference}"
    )  # fmt: skip
    return FloorCertificate(
        floor=text, certified=False, mu=None, fallback=reference, reference=reference, delta=floor.delta,
        rows=n, method=method, p_value=float(pv[0]), accuracy=float(single[ref]),
        reference_accuracy=float(single[ref]), floor_accuracy=floor_accuracy, cost=ref_cost,
        reference_cost=ref_cost, savings=0.0, rows_needed=needed, message=why,
    )  # fmt: skip


def _complete_rows(p: np.ndarray, c: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The checked arrays of the rows with a label for every target (at least one such row)."""
    c = _check_costs(c)
    p = _check_matrix(p, "probabilities", c.shape)
    y = np.asarray(y, dtype=float)
    if y.shape != c.shape:
        raise DataError(f"labels must have the costs' shape {c.shape}; got {y.shape}")
    complete = ~np.isnan(y).any(axis=1)
    if not complete.any():
        raise ConfigError(
            "no calibration row has a label for every target; certify with labelled rows "
            "(`prefill-router calibrate ROUTER DATA`)"
        )
    labels = _check_matrix(y[complete], "labels", (int(complete.sum()), c.shape[1]))
    return p[complete], c[complete], labels


def _savings(cost: float, reference_cost: float) -> float:
    return 1.0 - cost / reference_cost if reference_cost > 0 else 0.0


def _check_reachable(
    floor: QualityFloor, routed: np.ndarray, single: np.ndarray, names: list[str], n: int
) -> None:
    """An absolute floor above every routing's and every target's accuracy cannot be met at all."""
    assert floor.min_accuracy is not None
    best_target = singles.best_single(single)
    if max(float(routed.max()), float(single[best_target])) >= floor.min_accuracy:
        return
    raise ConfigError(
        f"accuracy floor {floor.min_accuracy:g} is above what any routing reaches on the {n:,} "
        f"calibration rows: the best is {max(float(routed.max()), float(single.max())):.3f} "
        f"(routing at μ=0: {routed[0]:.3f}; best single {names[best_target]}: {single[best_target]:.3f}); "
        "lower the floor"
    )


def rows_needed(losses: np.ndarray, alpha: float, delta: float) -> int | None:
    """About how many rows like these would reject "mean loss >= alpha" at level δ (normal
    approximation); None when their mean loss is not below alpha (no number of rows would do)."""
    margin = alpha - float(losses.mean())
    if margin <= 0:
        return None
    from scipy.stats import norm

    spread = max(float(losses.std()), 1e-12)
    return max(len(losses) + 1, math.ceil((float(norm.ppf(1 - delta)) * spread / margin) ** 2))


# ---------------------------------------------------------------------------------------------------
# one request


def floor_plan(
    certificate: FloorCertificate, allowed: Sequence[str] | None = None
) -> tuple[float, Sequence[str] | None, str]:
    """The budget policy's μ, the allowed targets and the head of the reason for one request.

    Certified: μ, ``allowed`` as given. Not certified: μ 0 among the fallback target only (or
    among ``allowed`` when the request excludes the fallback: the most accurate allowed target).
    """
    c = certificate
    if c.certified:
        assert c.mu is not None
        head = f"quality floor {c.floor} (δ={c.delta:g}, certified on {c.rows:,} calibration rows)"
        return c.mu, allowed, head
    assert c.fallback is not None
    head = f"quality floor {c.floor}: no μ certified on {c.rows:,} calibration rows (δ={c.delta:g})"
    if allowed is None or c.fallback in allowed:
        return 0.0, [c.fallback], f"{head}, so its reference {c.fallback}"
    return 0.0, allowed, f"{head}; the request excludes {c.fallback}, so the most likely allowed target"
