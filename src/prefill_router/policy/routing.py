"""Deciding for a router: the one seam between scoring and choosing a target.

:class:`Router` is the train stage's :class:`~prefill_router.train.RouterModel` (which scores
prompts) plus this stage: costs from list prices, budgets solved and quality floors certified on
its calibration rows, and one path from what a request asks to a target that ``route``,
``route-batch``, ``serve`` and ``evaluate`` all take:

- a :class:`RouteRequest` (a floor, a budget, or a policy and knob, plus candidate limits; nothing
  set = the default floor, within 1 point of the best single target at δ 0.05) is resolved once by
  :meth:`Router.plan` into
- a :class:`RoutePlan` (a concrete policy, knob and candidates, with the floor's certificate or the
  budget's solution), which decides one prompt (:meth:`RoutePlan.decide`) or a batch
  (:meth:`RoutePlan.choose`, the same choice row by row).

A policy named without its knob takes :data:`~prefill_router.policy.choice.DEFAULT_KNOBS`, the
same everywhere.

Example::

    router = Router.load("router/")
    router.route("Prove that sqrt(2) is irrational.").target
    plan = router.plan(RouteRequest(floor=QualityFloor(within=0.02)))  # certified once
    plan.choose(router.predict_proba(prompts), router.costs(prompts), router.targets)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from prefill_router.data.costs import input_tokens, price_costs_from_tokens
from prefill_router.errors import ConfigError
from prefill_router.policy.budget import Budget, BudgetSolution, solve_budget
from prefill_router.policy.choice import DEFAULT_KNOBS, check_knob, choose, mu_grid
from prefill_router.policy.decision import Decision, allowed_mask, decide
from prefill_router.policy.floor import (
    DEFAULT_DELTA,
    DEFAULT_WITHIN,
    FloorCertificate,
    QualityFloor,
    certify_floor,
    floor_plan,
)
from prefill_router.train.router import RouterModel

__all__ = ["NO_FLOOR_NOTE", "RoutePlan", "RouteRequest", "Router"]

#: Certificates a router keeps (oldest out first): requests may name floors, so it stays bounded.
CERTIFICATES_KEPT = 64
#: How many μ values a quality floor is tested over (a fixed-sequence test pays nothing for more).
FLOOR_GRID_POINTS = 400
#: Why a request without a policy is routed by argmax instead of the default floor.
NO_FLOOR_NOTE = (
    "this router stores no labelled calibration rows, so it routes to the most likely target (μ = 0); "
    "run `prefill-router calibrate ROUTER DATA` for the certified default"
)


@dataclass(frozen=True)
class RouteRequest:
    """What a request (or a batch run) asks for: a floor, else a budget, else a policy and its knob
    (the first one set wins); none of them = the router's default floor (at ``delta`` when given).

    Raises:
        ConfigError: ``delta`` with anything but the default floor, a negative ``max_cost``.
    """

    policy: str | None = None  # budget | lambda | tolerance
    knob: float | None = None  # μ / λ / τ; None: DEFAULT_KNOBS[policy]
    budget: Budget | None = None  # solved to μ on the calibration rows
    floor: QualityFloor | None = None
    delta: float | None = None  # the default floor at this δ
    allowed: tuple[str, ...] | None = None  # the targets this request may use (None = all)
    max_cost: float | None = None  # a USD cap for this request

    def __post_init__(self) -> None:
        if self.allowed is not None:
            object.__setattr__(self, "allowed", tuple(self.allowed))
        if self.delta is not None:
            if not self.wants_default:
                raise ConfigError(
                    "'delta' is the risk of the default floor; give a floor its own delta instead"
                )
            QualityFloor(within=DEFAULT_WITHIN, delta=self.delta)  # checks it
        if self.max_cost is not None and not self.max_cost >= 0:
            raise ConfigError(
                f"The 'max_cost' option must be a USD amount >= 0; got {self.max_cost!r} instead."
            )

    @property
    def wants_default(self) -> bool:
        """Nothing asked for: the router's default floor decides."""
        return self.floor is None and self.budget is None and self.policy is None and self.knob is None


@dataclass(frozen=True)
class RoutePlan:
    """A request resolved against a router: the policy, knob and candidates every prompt is chosen
    by, and what they came from (a floor's certificate, a budget's solution)."""

    policy: str = "budget"
    knob: float = 0.0
    allowed: tuple[str, ...] | None = None
    max_cost: float | None = None
    certificate: FloorCertificate | None = None  # the floor kept, when one is
    solution: BudgetSolution | None = None  # the budget met, when one is
    head: str | None = None  # the floor's part of every decision's reason
    note: str | None = None  # why the default floor is not kept, for people

    @classmethod
    def keeping(
        cls,
        certificate: FloorCertificate,
        allowed: Sequence[str] | None = None,
        max_cost: float | None = None,
    ) -> RoutePlan:
        """The plan that keeps a certified floor: its μ, or its reference target when nothing was
        certified. ``allowed`` / ``max_cost`` narrow the candidates, which the certificate (of the
        unrestricted routing) then no longer covers exactly."""
        mu, candidates, head = floor_plan(certificate, allowed)
        narrowed = None if candidates is None else tuple(candidates)
        return cls("budget", mu, narrowed, max_cost, certificate=certificate, head=head)

    def check(self, targets: Sequence[str]) -> RoutePlan:
        """Validate against the router's targets; returns self.

        Raises:
            ConfigError: a bad policy or knob, a negative ``max_cost``. UnknownTargetError: an
                allowed name that is not a target.
        """
        check_knob(self.policy, self.knob)
        allowed_mask(self.allowed, list(targets))
        if self.max_cost is not None and not self.max_cost >= 0:
            raise ConfigError(
                f"The 'max_cost' option must be a USD amount >= 0; got {self.max_cost!r} instead."
            )
        return self

    def decide(self, p: np.ndarray, c: np.ndarray, targets: Sequence[str]) -> Decision:
        """One prompt's decision from its (M,) probabilities and costs, with the reason (and the
        floor's certificate, when the plan keeps one)."""
        decision = decide(p, c, targets, self.policy, self.knob, allowed=self.allowed, max_cost=self.max_cost)
        if self.certificate is None:
            return decision
        return replace(
            decision, reason=f"{self.head}; {decision.reason}", certificate=self.certificate.to_json()
        )

    def choose(self, p: np.ndarray, c: np.ndarray, targets: Sequence[str]) -> np.ndarray:
        """(N,) the column each of N prompts routes to: :meth:`decide`'s choice, row by row."""
        mask = allowed_mask(self.allowed, list(targets))
        return choose(p, c, self.policy, self.knob, allowed=mask, max_cost=self.max_cost)

    def to_json(self) -> dict[str, Any]:
        """Policy, knob, candidates and the certificate (what a batch run records in its metadata)."""
        return {
            "policy": self.policy, "knob": self.knob,
            "allowed": None if self.allowed is None else list(self.allowed), "max_cost_usd": self.max_cost,
            **({"certificate": self.certificate.to_json()} if self.certificate is not None else {}),
        }  # fmt: skip


class Router(RouterModel):
    """A router that decides: :class:`~prefill_router.train.RouterModel`'s calibrated
    probabilities, plus costs, budgets, quality floors and the policies (see the module docstring).

    Example::

        router = Router.load("router/")
        decision = router.route("Write a python function that reverses a linked list")
        decision.target, decision.reason
    """

    def __init__(self, **parts: Any) -> None:
        super().__init__(**parts)
        self._certificates: dict[QualityFloor, FloorCertificate] = {}

    # ------------------------------------------------------------------ costs
    def costs(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, M) USD of each prompt on each target from the list prices (DESIGN §3).

        Raises:
            ConfigError: a target has no price (routing by cost needs every price).
        """
        return self.costs_from_tokens(input_tokens(list(prompts)))

    def costs_from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """(N, M) USD of prompts of ``tokens`` input tokens on each target."""
        unpriced = [t.name for t in self.target_info if not t.has_price]
        if unpriced:
            raise ConfigError(
                f"targets without a price: {', '.join(unpriced)}; "
                "add their prices to the dataset (a price file when importing) and refit"
            )
        return price_costs_from_tokens(tokens, self.target_info, self.output_tokens)

    # ------------------------------------------------------- budgets and floors
    def solve_budget(self, budget: Budget) -> BudgetSolution:
        """μ of the budget policy that meets ``budget`` on the router's held-out calibration rows."""
        p = self.calibration_proba()
        if p is None or self.calibration is None:
            raise ConfigError(
                "this router stores no calibration rows; pass a μ (--budget 0.0 ...) instead of a budget"
            )
        return solve_budget(p, self.costs_from_tokens(self.calibration.tokens), budget, self.targets)

    @property
    def floors_available(self) -> bool:
        """Does the router hold labelled calibration rows to certify floors on?"""
        return self.calibration is not None and self.calibration.labels is not None

    def default_floor(self) -> QualityFloor | None:
        """The floor a decision keeps when no policy is given: within 1 point of the best single
        target at δ 0.05, when the router holds labelled calibration rows (else None: argmax)."""
        return QualityFloor(within=DEFAULT_WITHIN, delta=DEFAULT_DELTA) if self.floors_available else None

    def floor_grid(self) -> np.ndarray:
        """The μ values a quality floor is certified over: :func:`~prefill_router.policy.mu_grid` of
        the costs of prompts of 1 to 100,000 tokens, so it is fixed before any label is seen."""
        return mu_grid(self.costs_from_tokens(np.geomspace(1, 100_000, 11)), n=FLOOR_GRID_POINTS)

    def certify(self, floor: QualityFloor) -> FloorCertificate:
        """The cheapest μ that keeps ``floor`` with probability >= 1 − δ on the calibration rows
        (:func:`~prefill_router.policy.certify_floor`), remembered per floor.

        Raises:
            ConfigError: no labelled calibration rows (the message says how to add them), a floor no
                routing reaches on them. UnknownTargetError: an unknown reference target.
        """
        if floor not in self._certificates:
            rows, p = self.calibration, self.calibration_proba()
            if rows is None or rows.labels is None or p is None:
                raise ConfigError(
                    "this router stores no labelled calibration rows to certify a quality floor on; "
                    "run `prefill-router calibrate ROUTER DATA` with labelled prompts, or refit"
                )
            certificate = certify_floor(
                p, self.costs_from_tokens(rows.tokens), rows.labels, self.targets, floor, self.floor_grid(),
                best_single=self.best_single,
            )  # fmt: skip
            if len(self._certificates) >= CERTIFICATES_KEPT:
                del self._certificates[next(iter(self._certificates))]
            self._certificates[floor] = replace(certificate, independent=rows.independent)
        return self._certificates[floor]

    # ------------------------------------------------------------------ deciding
    def plan(self, request: RouteRequest | None = None) -> RoutePlan:
        """Resolve ``request`` (None: the default) into the plan every prompt is then chosen by:
        certify its floor, solve its budget, or take its policy's knob (default
        :data:`~prefill_router.policy.choice.DEFAULT_KNOBS`). Needs no encoder.

        Raises:
            ConfigError: a floor no routing reaches, a budget below the cheapest routing, a bad
                knob, no calibration rows for a budget. UnknownTargetError: an unknown target.
        """
        request = request or RouteRequest()
        floor, note = request.floor, None
        if request.wants_default:
            floor = self.default_floor()
            note = NO_FLOOR_NOTE if floor is None else None
            if floor is not None and request.delta is not None:
                floor = replace(floor, delta=request.delta)
        if floor is not None:
            plan = RoutePlan.keeping(self.certify(floor), request.allowed, request.max_cost)
        elif request.budget is not None:
            solution = self.solve_budget(request.budget)
            plan = RoutePlan("budget", solution.mu, request.allowed, request.max_cost, solution=solution)
        else:
            policy = request.policy or "budget"
            knob = DEFAULT_KNOBS.get(policy, 0.0) if request.knob is None else request.knob
            plan = RoutePlan(policy, knob, request.allowed, request.max_cost, note=note)
        return plan.check(self.targets)

    def route(
        self,
        prompt: str,
        *,
        policy: str | None = None,
        knob: float | None = None,
        budget: Budget | None = None,
        floor: QualityFloor | None = None,
        allowed: Sequence[str] | None = None,
        max_cost: float | None = None,
    ) -> Decision:
        """One decision: the chosen target, every probability and cost, and the reason.

        ``floor`` keeps a quality floor (the certified μ, or its reference target when nothing is
        certified); ``budget`` is met on the calibration rows; ``policy`` is ``budget`` (knob μ),
        ``lambda`` (knob λ) or ``tolerance`` (knob τ), a missing knob taking
        :data:`~prefill_router.policy.choice.DEFAULT_KNOBS`. With none of them, the default floor
        (:meth:`default_floor`) is kept. ``allowed`` and ``max_cost`` restrict the candidates.
        """
        request = RouteRequest(
            policy,
            knob,
            budget,
            floor,
            allowed=None if allowed is None else tuple(allowed),
            max_cost=max_cost,
        )
        plan = self.plan(request)
        return plan.decide(self.predict_proba([prompt])[0], self.costs([prompt])[0], self.targets)
