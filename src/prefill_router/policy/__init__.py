"""Stage 5: routing policies (DESIGN §7): numpy, and scipy (imported when used) for the floors' tests.

``choice`` picks one target per prompt (budget / lambda / tolerance, candidates, curves);
``budget`` solves μ for a budget and bootstraps what a choice achieves; ``floor`` certifies the
cheapest μ that keeps a quality floor with probability >= 1 − δ; ``decision`` explains one;
``routing`` is the :class:`Router` that puts them together for route, route-batch, serve and evaluate.
"""

from prefill_router.policy.budget import (
    Budget,
    BudgetSolution,
    achieved,
    bootstrap_interval,
    format_usd,
    solve_budget,
)
from prefill_router.policy.choice import (
    DEFAULT_KNOBS,
    POLICIES,
    Curve,
    candidate_mask,
    check_knob,
    choose,
    default_knobs,
    mu_grid,
    policy_curve,
)
from prefill_router.policy.decision import Decision, decide
from prefill_router.policy.floor import (
    BEST_SINGLE,
    FloorCertificate,
    QualityFloor,
    certify_floor,
    floor_plan,
)
from prefill_router.policy.routing import RoutePlan, Router, RouteRequest

__all__ = [
    "BEST_SINGLE",
    "DEFAULT_KNOBS",
    "POLICIES",
    "Budget",
    "BudgetSolution",
    "Curve",
    "Decision",
    "FloorCertificate",
    "QualityFloor",
    "RoutePlan",
    "RouteRequest",
    "Router",
    "achieved",
    "bootstrap_interval",
    "candidate_mask",
    "certify_floor",
    "check_knob",
    "choose",
    "decide",
    "default_knobs",
    "floor_plan",
    "format_usd",
    "mu_grid",
    "policy_curve",
    "solve_budget",
]
