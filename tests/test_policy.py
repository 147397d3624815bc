"""Routing policies (DESIGN §7): hand-computed choices, ties, candidates, curves, budgets, decisions."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from prefill_router.errors import ConfigError, UnknownTargetError
from prefill_router.policy import (
    POLICIES,
    Budget,
    achieved,
    bootstrap_interval,
    candidate_mask,
    choose,
    decide,
    format_usd,
    mu_grid,
    policy_curve,
    solve_budget,
)

FAST = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------------------------- helpers
def simulated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated p, per-row costs and Bernoulli(p) labels for three targets (small, medium, large)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=(n, 1))
    skill = np.array([-0.5, 0.3, 1.0])
    p = 1.0 / (1.0 + np.exp(-(skill - difficulty + 0.5 * rng.normal(size=(n, 3)))))
    y = (rng.random((n, 3)) < p).astype(float)
    c = np.array([1e-4, 5e-4, 2.5e-3]) * rng.lognormal(0.0, 0.5, size=(n, 1))
    return p, c, y


def matrices(max_rows: int = 8, max_targets: int = 4) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """(p, c) pairs; values come from small grids so that ties are common."""

    def build(shape: tuple[int, int]) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
        probs = hnp.arrays(float, shape, elements=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0]))
        costs = hnp.arrays(float, shape, elements=st.sampled_from([0.0, 1e-5, 2e-5, 1e-4, 3e-4, 1e-3]))
        return st.tuples(probs, costs)

    shapes = st.tuples(st.integers(1, max_rows), st.integers(1, max_targets))
    return shapes.flatmap(build)


def knob_for(policy: str) -> st.SearchStrategy[float]:
    if policy == "budget":
        return st.one_of(st.just(0.0), st.just(math.inf), st.floats(0.0, 1e5))
    return st.floats(0.0, 1.0)


# ------------------------------------------------------------------------------------ hand examples
P3 = np.array([[0.9, 0.8, 0.5]])
C3 = np.array([[0.010, 0.002, 0.001]])


@pytest.mark.parametrize(("mu", "expected"), [(0.0, 0), (10.0, 0), (20.0, 1), (400.0, 2), (math.inf, 2)])
def test_budget_maximises_p_minus_mu_c(mu: float, expected: int) -> None:
    # scores at μ=20: 0.7, 0.76, 0.48; at μ=400: -3.1, 0.0, 0.1
    assert choose(P3, C3, "budget", mu).tolist() == [expected]


@pytest.mark.parametrize(("lam", "expected"), [(0.0, 2), (0.5, 2), (0.6, 1), (0.9, 0), (1.0, 0)])
def test_lambda_trades_p_against_normalised_cost(lam: float, expected: int) -> None:
    p = np.array([[0.9, 0.8, 0.3]])
    c = np.array([[1.0, 0.5, 0.0]])  # ĉ = 1, 0.5, 0; at λ=0.6: 0.14, 0.28, 0.18
    assert choose(p, c, "lambda", lam).tolist() == [expected]


def test_lambda_normalises_over_the_allowed_targets_only() -> None:
    p = np.array([[0.9, 0.85, 0.1]])
    c = np.array([[1.0, 0.9, 0.0]])
    # all three: ĉ = 1, 0.9, 0 -> 0.71, 0.675, 0.09; first two only: ĉ = 1, 0 -> 0.71, 0.765
    assert choose(p, c, "lambda", 0.9).tolist() == [0]
    assert choose(p, c, "lambda", 0.9, allowed=np.array([True, True, False])).tolist() == [1]


def test_lambda_with_equal_costs_ranks_by_p_alone() -> None:
    p = np.array([[0.4, 0.9, 0.6]])
    c = np.full((1, 3), 2e-4)
    assert choose(p, c, "lambda", 0.3).tolist() == [1]
    assert choose(p, c, "lambda", 0.0).tolist() == [1]  # all scores 0: same cost, then the likelier


@pytest.mark.parametrize(("tau", "expected"), [(0.0, 0), (0.04, 0), (0.05, 1), (0.2, 2), (math.inf, 2)])
def test_tolerance_picks_the_cheapest_within_tau_of_the_best(tau: float, expected: int) -> None:
    p = np.array([[0.86, 0.81, 0.70]])
    c = np.array([[5.4e-4, 1.2e-4, 0.5e-4]])
    assert choose(p, c, "tolerance", tau).tolist() == [expected]  # τ = 0.05 is inclusive


@pytest.mark.parametrize(("policy", "knob"), [("budget", 0.0), ("lambda", 1.0), ("tolerance", 0.0)])
def test_accuracy_only_knobs_pick_argmax_p(policy: str, knob: float) -> None:
    p, c, _ = simulated(50)
    assert choose(p, c, policy, knob).tolist() == np.argmax(p, axis=1).tolist()


@pytest.mark.parametrize(("policy", "knob"), [("budget", math.inf), ("lambda", 0.0), ("tolerance", 1.0)])
def test_cost_only_knobs_pick_the_cheapest(policy: str, knob: float) -> None:
    p, c, _ = simulated(50)
    assert choose(p, c, policy, knob).tolist() == np.argmin(c, axis=1).tolist()


# ---------------------------------------------------------------------------------------------- ties
@pytest.mark.parametrize(("policy", "knob"), [("budget", 0.0), ("lambda", 1.0), ("tolerance", 0.0)])
@pytest.mark.parametrize("order", [[0, 1, 2], [1, 0, 2], [2, 1, 0]])
def test_equal_p_goes_to_the_cheaper_target_in_every_policy(
    policy: str, knob: float, order: list[int]
) -> None:
    p = np.array([[0.8, 0.8, 0.5]])[:, order]
    c = np.array([[3e-4, 1e-4, 5e-5]])[:, order]
    assert choose(p, c, policy, knob).tolist() == [order.index(1)]


def test_a_budget_tie_survives_float_rounding() -> None:
    # 0.1 - 0.15 = -0.04999999999999999 > 0.05 - 0.1 = -0.05: an exact comparison picks the dearer one
    p, c = np.array([[0.1, 0.05]]), np.array([[0.15, 0.1]])
    assert choose(p, c, "budget", 1.0).tolist() == [1]
    assert choose(p[:, ::-1], c[:, ::-1], "budget", 1.0).tolist() == [0]


def test_mu_inf_breaks_cost_ties_by_higher_p() -> None:
    p, c = np.array([[0.3, 0.9, 0.6]]), np.array([[1e-4, 1e-4, 5e-4]])
    assert choose(p, c, "budget", math.inf).tolist() == [1]


def test_tolerance_breaks_cost_ties_by_higher_p() -> None:
    p, c = np.array([[0.7, 0.8, 0.9]]), np.array([[1e-4, 1e-4, 5e-4]])
    assert choose(p, c, "tolerance", 0.2).tolist() == [1]


@pytest.mark.parametrize("policy", POLICIES)
@FAST
@given(data=st.data())
def test_choice_does_not_depend_on_column_order(policy: str, data: st.DataObject) -> None:
    p, c = data.draw(matrices())
    knob = data.draw(knob_for(policy))
    perm = data.draw(st.permutations(range(p.shape[1])))
    rows = np.arange(len(p))
    first = choose(p, c, policy, knob)
    second = choose(p[:, perm], c[:, perm], policy, knob)
    # the same (p, c) pair is picked; only an exact duplicate column may differ by index
    assert np.array_equal(p[rows, first], p[:, perm][rows, second])
    assert np.array_equal(c[rows, first], c[:, perm][rows, second])


# -------------------------------------------------------------------------------- candidates / caps
P2 = np.array([[0.9, 0.8, 0.5], [0.6, 0.9, 0.5]])
C2 = np.array([[0.010, 0.002, 0.001], [0.010, 0.002, 0.001]])


def test_allowed_mask_per_target_and_per_row() -> None:
    assert choose(P2, C2, allowed=np.array([False, True, True])).tolist() == [1, 1]
    per_row = np.array([[True, False, True], [False, False, True]])
    assert choose(P2, C2, allowed=per_row).tolist() == [0, 2]


def test_max_cost_scalar_and_per_row() -> None:
    assert choose(P2, C2, max_cost=0.005).tolist() == [1, 1]
    assert choose(P2, C2, max_cost=np.array([0.005, 0.0015])).tolist() == [1, 2]
    assert choose(P2, C2, max_cost=0.002).tolist() == [1, 1]  # the cap is inclusive


def test_max_cost_below_every_allowed_target_falls_back_to_the_cheapest_allowed() -> None:
    allowed = np.array([True, True, False])
    mask, fell_back = candidate_mask(C2, allowed, max_cost=np.array([0.0005, 0.02]))
    assert mask.tolist() == [[False, True, False], [True, True, False]]
    assert fell_back.tolist() == [True, False]
    assert choose(P2, C2, allowed=allowed, max_cost=np.array([0.0005, 0.02])).tolist() == [1, 1]


def test_a_row_without_allowed_targets_is_an_error() -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "The 'allowed' parameter must allow at least one target in every row; row 1 allows none."
        ),
    ):
        choose(P2, C2, allowed=np.array([[True, False, False], [False, False, False]]))


def test_bad_allowed_and_max_cost_are_config_errors() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("bool mask of shape (3,) or (2, 3); got bool of shape (2,)")
    ):
        choose(P2, C2, allowed=np.array([True, False]))
    with pytest.raises(ConfigError, match=re.escape("The 'max_cost' parameter must be a number >= 0")):
        choose(P2, C2, max_cost=-1.0)


@pytest.mark.parametrize(
    ("policy", "knob", "message"),
    [
        ("budget", -1.0, "The 'knob' parameter must be a number >= 0 for the budget policy"),
        ("budget", math.nan, "The 'knob' parameter must be a number >= 0 for the budget policy"),
        ("lambda", 1.5, "The 'knob' parameter must be a number in [0, 1] for the lambda policy"),
        ("lambda", math.inf, "The 'knob' parameter must be a number in [0, 1] for the lambda policy"),
        ("tolerance", -0.1, "The 'knob' parameter must be a number >= 0 for the tolerance policy"),
    ],
)
def test_bad_knobs_are_config_errors(policy: str, knob: float, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message) + r".*; got .* instead\.$"):
        choose(P3, C3, policy, knob)


def test_knob_message_is_exact() -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "The 'knob' parameter must be a number in [0, 1] for the lambda policy "
            "(λ, weight of p against cost); got 1.5 instead."
        ),
    ):
        choose(P3, C3, "lambda", 1.5)


def test_unknown_policy_lists_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "The 'policy' parameter must be one of budget, lambda, tolerance; got 'cheap' instead."
        ),
    ):
        choose(P3, C3, "cheap", 0.0)


# ---------------------------------------------------------------------------------------------- curves
def test_mu_grid_spans_accuracy_only_to_cheapest() -> None:
    p, c, _ = simulated(200)
    grid = mu_grid(c, n=50)
    assert len(grid) == 50
    assert grid[0] == 0.0
    assert grid[-1] == math.inf
    assert np.all(np.diff(grid) > 0)
    assert choose(p, c, "budget", float(grid[-2])).tolist() == choose(p, c, "budget", math.inf).tolist()
    assert choose(p, c, "budget", float(grid[1])).tolist() == choose(p, c, "budget", 0.0).tolist()


def test_mu_grid_of_equal_costs_is_zero_and_inf() -> None:
    assert mu_grid(np.full((3, 2), 1e-4)).tolist() == [0.0, math.inf]
    with pytest.raises(ConfigError, match=re.escape("The 'n' parameter must be an int >= 3; got 2 instead.")):
        mu_grid(np.ones((1, 2)), n=2)


def test_policy_curve_records_accuracy_and_cost_of_each_knob() -> None:
    p = np.array([[0.9, 0.6], [0.5, 0.7]])
    c = np.array([[1.0, 0.1], [1.0, 0.1]])
    y = np.array([[1.0, 0.0], [0.0, 0.5]])
    curve = policy_curve(p, c, y, "lambda", np.array([0.0, 1.0]))
    assert curve.choices.tolist() == [[1, 1], [0, 1]]
    assert curve.accuracy.tolist() == pytest.approx([0.25, 0.75])
    assert curve.cost.tolist() == pytest.approx([0.1, 0.55])
    default = policy_curve(p, c, y, "tolerance")
    assert default.knob.tolist() == pytest.approx(np.linspace(0, 1, 101).tolist())
    assert default.choices.shape == (101, 2)
    assert json.dumps(policy_curve(p, c, y).to_json(), allow_nan=False)


@pytest.mark.parametrize("policy", POLICIES)
@FAST
@given(pc=matrices(), labels=st.integers(0, 2**32 - 1))
def test_spending_more_never_lowers_expected_accuracy(policy: str, pc: tuple, labels: int) -> None:
    p, c = pc
    y = np.random.default_rng(labels).random(p.shape)
    curve = policy_curve(p, c, y, policy)
    # the knob order that spends more: μ decreasing, λ increasing, τ decreasing
    order = slice(None, None, -1) if policy in ("budget", "tolerance") else slice(None)
    rows = np.arange(len(p))
    expected = p[rows, curve.choices].mean(axis=1)[order]
    assert np.all(np.diff(curve.cost[order]) >= -1e-12)
    assert np.all(np.diff(expected) >= -1e-12)


# ---------------------------------------------------------------------------------------------- budgets
def test_solve_budget_finds_the_smallest_mu() -> None:
    p = np.array([[0.9, 0.5], [0.8, 0.7]])
    c = np.array([[1.0, 0.1], [1.0, 0.1]])
    solution = solve_budget(p, c, Budget(usd_per_request=0.55))
    # row 1 switches to the cheap target at μ = 0.1 / 0.9, row 0 only at 0.4 / 0.9
    assert solution.mu == pytest.approx(1 / 9, rel=1e-9)
    assert solution.cost == pytest.approx(0.55)
    assert not solution.saturated
    assert solution.expensive_share is None
    assert solution.budget_usd == 0.55


def test_solved_budget_holds_on_its_rows_and_on_held_out_rows() -> None:
    p, c, y = simulated(4000, seed=1)
    cal, test = slice(0, 2000), slice(2000, None)
    solution = solve_budget(p[cal], c[cal], Budget(share_of_max=0.4))
    budget = 0.4 * c[cal].mean(axis=0).max()
    assert solution.budget_usd == pytest.approx(budget)
    assert 0.98 * budget <= solution.cost <= budget
    held_out = achieved(choose(p[test], c[test], "budget", solution.mu), y[test], c[test], n_boot=500)
    low, high = held_out["cost_ci"]
    assert low <= held_out["cost"] <= high
    # Both halves are samples, so their difference has √2 times the held-out interval's spread; over
    # 100 seeds this widened interval holds the budget ~95% of the time (the plain one ~83%).
    centre, half = held_out["cost"], math.sqrt(2) * (high - low) / 2
    assert centre - half <= budget <= centre + half


def test_budget_at_or_above_argmax_spend_is_saturated() -> None:
    p, c, _ = simulated(300)
    argmax_cost = float(c[np.arange(300), np.argmax(p, axis=1)].mean())
    for usd in (argmax_cost, 1.0):
        solution = solve_budget(p, c, Budget(usd_per_request=usd))
        assert solution.saturated
        assert solution.mu == 0.0
        assert solution.cost == pytest.approx(argmax_cost)


def test_budget_below_the_cheapest_routing_names_both_amounts() -> None:
    p = np.array([[0.9, 0.5], [0.8, 0.7]])
    c = np.array([[4e-5, 2e-5], [4e-5, 2e-5]])
    message = "budget $0.00001 per request is below the cheapest possible routing ($0.00002 per request)"
    with pytest.raises(ConfigError, match=re.escape(message)):
        solve_budget(p, c, Budget(usd_per_request=1e-5))


def test_expensive_share_cap_is_respected() -> None:
    p, c, _ = simulated(1000)
    names = ["small", "medium", "large"]
    solution = solve_budget(p, c, Budget(expensive_share=0.2, expensive=("large",)), names)
    share = float((choose(p, c, "budget", solution.mu) == 2).mean())
    assert solution.expensive_share == share
    assert 0.18 <= share <= 0.2
    assert solution.budget_usd is None
    two = solve_budget(p, c, Budget(expensive_share=0.3, expensive=("medium", "large")), names)
    assert float(np.isin(choose(p, c, "budget", two.mu), [1, 2]).mean()) <= 0.3


def test_expensive_share_errors() -> None:
    p, c, _ = simulated(20)
    budget = Budget(expensive_share=0.2, expensive=("larg",))
    with pytest.raises(UnknownTargetError, match=re.escape("unknown target 'larg'. Did you mean 'large'?")):
        solve_budget(p, c, budget, ["small", "medium", "large"])
    with pytest.raises(ConfigError, match="needs the 'targets' names"):
        solve_budget(p, c, budget)
    cheap_b = (
        np.array([[0.5, 0.9], [0.8, 0.7]]),
        np.array([[1e-4, 2e-4], [3e-4, 2e-4]]),
    )  # b is cheapest in row 1
    with pytest.raises(
        ConfigError,
        match=re.escape("expensive-share cap 0 is below the lowest possible share of calls to b (0.5,"),
    ):
        solve_budget(*cheap_b, Budget(expensive_share=0.0, expensive=("b",)), ["a", "b"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {},
            "A Budget needs exactly one of 'usd_per_request', 'share_of_max' or 'expensive_share'; "
            "got 0 instead.",
        ),
        (
            {"usd_per_request": 1.0, "share_of_max": 0.5},
            "A Budget needs exactly one of 'usd_per_request', 'share_of_max' or 'expensive_share'; "
            "got 2 (usd_per_request, share_of_max) instead.",
        ),
        (
            {"usd_per_request": -1.0},
            "The 'usd_per_request' parameter must be a finite number >= 0; got -1.0 instead.",
        ),
        (
            {"share_of_max": math.inf},
            "The 'share_of_max' parameter must be a finite number >= 0; got inf instead.",
        ),
        (
            {"expensive_share": 1.5, "expensive": ("a",)},
            "The 'expensive_share' parameter must be a number in [0, 1]; got 1.5 instead.",
        ),
        ({"expensive_share": 0.5}, "The 'expensive' parameter must name at least one target exactly when"),
        ({"usd_per_request": 1.0, "expensive": ("a",)}, "got expensive=('a',) with usd_per_request instead."),
    ],
)
def test_budget_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Budget(**kwargs)


def test_format_usd() -> None:
    assert [format_usd(x) for x in (1e-5, 2e-5, 0.000123456, 1.5, 0.0)] == [
        "$0.00001",
        "$0.00002",
        "$0.000123",
        "$1.5",
        "$0",
    ]


# ---------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_interval_contains_the_mean_and_narrows_with_rows() -> None:
    rng = np.random.default_rng(3)
    small = (rng.random(100) < 0.7).astype(float)
    large = (rng.random(10_000) < 0.7).astype(float)
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < 0.2 * (hi_s - lo_s)
    assert bootstrap_interval(small, seed=5) == bootstrap_interval(small, seed=5)
    with pytest.raises(
        ConfigError, match=re.escape("The 'level' parameter must be in (0, 1); got 1.0 instead.")
    ):
        bootstrap_interval(small, level=1.0)


def test_achieved_uses_the_same_resamples_for_accuracy_and_cost() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random((200, 2)) < 0.6).astype(float)
    choice = rng.integers(0, 2, 200)
    out = achieved(choice, y, y.copy(), n_boot=300)  # cost == label: identical intervals
    assert out["accuracy"] == pytest.approx(y[np.arange(200), choice].mean())
    assert out["cost"] == out["accuracy"]
    assert out["cost_ci"] == out["accuracy_ci"]
    assert out["accuracy_ci"][0] <= out["accuracy"] <= out["accuracy_ci"][1]
    assert sorted(out) == ["accuracy", "accuracy_ci", "cost", "cost_ci"]


# ---------------------------------------------------------------------------------------------- decide
NAMES = ["llama-70b", "qwen", "tiny"]
P1 = np.array([0.86, 0.81, 0.40])
C1 = np.array([5.4e-4, 1.2e-4, 0.3e-4])


@pytest.mark.parametrize("policy", POLICIES)
def test_decide_matches_choose(policy: str) -> None:
    p, c, _ = simulated(40, seed=7)
    names = ["small", "medium", "large"]
    knob = {"budget": 300.0, "lambda": 0.7, "tolerance": 0.1}[policy]
    expected = choose(p, c, policy, knob)
    for i in range(len(p)):
        decision = decide(p[i], c[i], names, policy, knob)
        assert decision.index == expected[i]
        assert decision.target == names[expected[i]]


def test_decide_reason_for_the_budget_policy() -> None:
    decision = decide(P1, C1, NAMES, "budget", 1000.0)  # scores 0.32, 0.69, 0.37
    assert decision.target == "qwen"
    assert decision.reason == (
        "budget policy, μ=1e+03: maximises p − μ·c over 3 allowed targets; "
        "picked qwen (p=0.81, $0.00012) over the most likely llama-70b (p=0.86, $0.00054)"
    )
    assert decision.probabilities == dict(zip(NAMES, P1.tolist(), strict=True))
    assert decision.costs_usd == dict(zip(NAMES, C1.tolist(), strict=True))
    assert decision.candidates == tuple(NAMES)


def test_decide_reason_for_tolerance_and_lambda() -> None:
    tolerance = decide(P1, C1, NAMES, "tolerance", 0.05)
    assert tolerance.target == "qwen"
    assert tolerance.reason.startswith(
        "tolerance policy, τ=0.05: cheapest of 3 allowed targets within 0.05 of the best p (0.86); "
        "picked qwen"
    )
    best = decide(P1, C1, NAMES, "lambda", 1.0)
    assert best.target == "llama-70b"
    assert best.reason.startswith("lambda policy, λ=1:")
    assert best.reason.endswith("picked llama-70b (p=0.86, $0.00054), the most likely")


def test_decide_with_allowed_names_and_the_max_cost_fallback() -> None:
    decision = decide(P1, C1, NAMES, "budget", 0.0, allowed=["qwen", "llama-70b"], max_cost=1e-5)
    assert decision.target == "qwen"
    assert decision.candidates == ("qwen",)
    assert "1 allowed target;" in decision.reason
    assert decision.reason.endswith(
        "; no allowed target costs at most $0.00001, so the cheapest allowed one was used"
    )
    capped = decide(P1, C1, NAMES, "budget", 0.0, max_cost=2e-4)
    assert (capped.target, capped.candidates) == ("qwen", ("qwen", "tiny"))
    assert "fell back" not in capped.reason and "cheapest allowed" not in capped.reason


def test_decide_rejects_unknown_allowed_names() -> None:
    with pytest.raises(UnknownTargetError, match=re.escape("unknown target 'qwn'. Did you mean 'qwen'?")):
        decide(P1, C1, NAMES, allowed=["qwn"])
    with pytest.raises(ConfigError, match=re.escape("The 'targets' parameter must hold 3 distinct names")):
        decide(P1, C1, ["a", "a", "b"])


def test_decision_to_json_is_strict_json() -> None:
    blob = decide(P1, C1, NAMES, "budget", math.inf).to_json()
    assert blob["target"] == "tiny"
    assert blob["knob"] is None
    assert blob["candidates"] == NAMES
    assert json.loads(json.dumps(blob, allow_nan=False)) == blob
