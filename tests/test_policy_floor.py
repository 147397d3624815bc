"""Quality floors (issue 14): the certified μ on hand-built rows, the p-values, coverage on a
simulated router over many calibration draws, fallbacks and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefill_router.errors import ConfigError, UnknownTargetError
from prefill_router.policy import BEST_SINGLE, QualityFloor, certify_floor, mu_grid
from prefill_router.policy.choice import _choose
from prefill_router.policy.floor import binomial_p_values, fixed_sequence, wsr_p_values

GRID = np.array([0.0, 0.5, 1.0, 100.0, math.inf])


def two_targets(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """'big' ($1, always right) and 'small' ($0.1, right on 90% of rows); the router is sure of
    small on exactly the rows it gets right (p 0.95) and doubts it elsewhere (p 0.2)."""
    good = np.arange(n) % 10 != 0
    y = np.stack([np.ones(n), good.astype(float)], axis=1)
    p = np.stack([np.full(n, 0.9), np.where(good, 0.95, 0.2)], axis=1)
    c = np.tile([1.0, 0.1], (n, 1))
    return p, c, y


# ------------------------------------------------------------------------------------------- by hand
def test_absolute_floor_certifies_the_cheapest_mu_that_keeps_every_answer_right() -> None:
    # μ 0 and 0.5 send the doubtful rows to big (accuracy 1.0, $0.19); μ >= 1 sends them to small
    # (accuracy 0.9 < 0.95), so 0.5 is the cheapest certifiable μ, and the exact binomial test is used.
    p, c, y = two_targets(1000)
    cert = certify_floor(p, c, y, ["big", "small"], QualityFloor(min_accuracy=0.95), GRID)
    assert cert.certified and cert.mu == 0.5 and cert.method == "binomial"
    assert cert.accuracy == 1.0 and cert.cost == pytest.approx(0.19)
    assert cert.reference == "big" and cert.savings == pytest.approx(0.81)
    assert cert.p_value == pytest.approx(0.95**1000)
    assert cert.rows == 1000 and "certified μ=0.5" in cert.message


def test_relative_floor_uses_the_paired_wsr_test_and_needs_enough_rows() -> None:
    floor = QualityFloor(within=0.01, relative_to="big")
    # Routing ties big on every row: each row is worth 0.005 of margin, so WSR needs about
    # log(1/δ) / 0.005 ≈ 600 rows of them.
    p, c, y = two_targets(1000)
    cert = certify_floor(p, c, y, ["big", "small"], floor, GRID)
    assert cert.certified and cert.mu == 0.5 and cert.method == "wsr"
    p, c, y = two_targets(300)
    cert = certify_floor(p, c, y, ["big", "small"], floor, GRID)
    assert not cert.certified and cert.mu is None and cert.fallback == "big"
    assert cert.savings == 0 and cert.accuracy == 1.0
    assert cert.rows_needed is not None and cert.rows_needed > 300
    assert "no μ certified" in cert.message and "every request goes to big" in cert.message


def test_best_single_is_the_default_reference_of_within() -> None:
    floor = QualityFloor(within=0.02)
    assert floor.relative_to == BEST_SINGLE
    p, c, y = two_targets(1000)
    cert = certify_floor(p, c, y, ["big", "small"], floor, GRID)
    assert cert.reference == "big" and cert.floor == "within 2 points of big"
    named = certify_floor(p, c, y, ["big", "small"], floor, GRID, best_single="small")
    assert named.reference == "small"


def test_a_share_of_the_reference_is_a_relative_floor() -> None:
    p, c, y = two_targets(2000)
    cert = certify_floor(p, c, y, ["big", "small"], QualityFloor(min_accuracy=0.8, relative_to="big"), GRID)
    assert cert.certified and cert.mu == math.inf  # everything to small: 0.9 >= 0.8 x 1.0
    assert cert.floor_accuracy == pytest.approx(0.8)


def test_rows_with_a_missing_label_are_left_out() -> None:
    p, c, y = two_targets(1000)
    y[:100, 1] = np.nan
    cert = certify_floor(p, c, y, ["big", "small"], QualityFloor(min_accuracy=0.95), GRID)
    assert cert.rows == 900


# ------------------------------------------------------------------------------------------- p-values
def test_binomial_p_value_is_the_lower_tail() -> None:
    losses = np.array([[1.0, 0.0, 0.0, 0.0]])
    # P(Binom(4, 0.5) <= 1) = 5/16
    assert binomial_p_values(losses, 0.5)[0] == pytest.approx(5 / 16)


def test_wsr_p_value_is_small_only_when_losses_sit_below_alpha() -> None:
    rng = np.random.default_rng(0)
    low = (rng.random((1, 2000)) < 0.2).astype(float)
    assert wsr_p_values(low, 0.3, 0.05)[0] < 1e-6
    assert wsr_p_values(low, 0.2, 0.05)[0] > 0.05  # at the true mean: no evidence
    assert wsr_p_values(low, 0.1, 0.05)[0] > 0.5


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.05, 0.95))
def test_wsr_p_values_are_valid_under_the_null(seed: int, alpha: float) -> None:
    """Under H (mean loss = alpha), P(p <= δ) <= δ: checked over 400 draws with binomial slack."""
    rng = np.random.default_rng(seed)
    losses = rng.random((400, 200)) < alpha  # mean exactly alpha
    rejected = float((wsr_p_values(losses.astype(float), alpha, 0.1) <= 0.1).mean())
    assert rejected <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / 400)


def test_fixed_sequence_stops_at_the_first_acceptance() -> None:
    assert fixed_sequence(np.array([0.01, 0.02, 0.2, 0.01]), 0.05) == 2
    assert fixed_sequence(np.array([0.3, 0.01]), 0.05) == 0
    assert fixed_sequence(np.array([0.01, 0.01]), 0.05) == 2


# ------------------------------------------------------------------------------------------- coverage
def population(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A simulated router over three targets (cheap, mid, dear): calibrated p, labels ~ Bernoulli(p)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=(n, 1))
    p = 1 / (1 + np.exp(-(np.array([-0.3, 0.4, 1.0]) - difficulty + 0.6 * rng.normal(size=(n, 3)))))
    y = (rng.random((n, 3)) < p).astype(float)
    c = np.tile([0.1, 0.4, 1.0], (n, 1)) * rng.uniform(0.5, 2.0, size=(n, 1))
    return p, c, y


def coverage(
    floor: QualityFloor, seed: int, trials: int, n_cal: int, certified_only: bool = True
) -> tuple[float, int]:
    """Share of calibration draws whose routing keeps the floor on the whole population, and how
    many draws certified a μ; ``certified_only=False`` replaces the test by the naive rule
    "the cheapest μ whose accuracy on the draw is above the floor" (to show the setup can fail)."""
    p, c, y = population(20_000, seed)
    names = ["cheap", "mid", "dear"]
    grid = mu_grid(c, n=60)  # from the population's costs: fixed before any draw's labels
    rows = np.arange(len(y))
    mask = np.ones(c.shape, dtype=bool)
    truth = np.array([y[rows, _choose(p, c, "budget", float(mu), mask)].mean() for mu in grid])
    floor_value = y[:, 2].mean() - floor.within if floor.within is not None else floor.min_accuracy
    rng = np.random.default_rng(seed + 1)
    kept = certified = 0
    for _ in range(trials):
        draw = rng.integers(0, len(y), n_cal)
        if certified_only:
            cert = certify_floor(p[draw], c[draw], y[draw], names, floor, grid, best_single="dear")
            accuracy = truth[list(grid).index(cert.mu)] if cert.certified else y[:, 2].mean()
            certified += cert.certified
        else:
            sample = np.array(
                [
                    y[draw][
                        np.arange(n_cal), _choose(p[draw], c[draw], "budget", float(mu), mask[draw])
                    ].mean()
                    for mu in grid
                ]
            )
            ok = np.flatnonzero(sample >= floor_value)
            accuracy = truth[ok.max()] if ok.size else y[:, 2].mean()
        kept += accuracy >= floor_value - 1e-12
    return kept / trials, certified


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 1000))
def test_certified_floors_hold_in_at_least_1_minus_delta_of_draws(seed: int) -> None:
    trials, delta = 150, 0.1
    slack = 3 * math.sqrt(delta * (1 - delta) / trials)
    for floor in (QualityFloor(within=0.01, delta=delta), QualityFloor(min_accuracy=0.65, delta=delta)):
        share, certified = coverage(floor, seed, trials, n_cal=600)
        assert share >= 1 - delta - slack, (floor, share)
        assert certified > 0, floor  # the test has power here: it is not the fallback that holds


def test_the_naive_uncertified_choice_misses_the_floor_often() -> None:
    # The same setup without the test: choosing the cheapest μ that looks fine on the draw breaks
    # the floor far more often than δ, so the coverage test above can fail.
    share, _ = coverage(QualityFloor(min_accuracy=0.65, delta=0.1), 7, 150, n_cal=600, certified_only=False)
    assert share < 0.8


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of 'min_accuracy' or 'within'"),
        ({"min_accuracy": 0.8, "within": 0.01}, "exactly one"),
        ({"min_accuracy": 1.2}, "must be a number in (0, 1]"),
        ({"within": -0.01}, "accuracy points in [0, 1)"),
        ({"min_accuracy": 0.8, "delta": 0.0}, "'delta' parameter must be in (0, 0.5]"),
        ({"min_accuracy": 0.8, "delta": 0.6}, "(0, 0.5]"),
    ],
)
def test_bad_floors_name_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        QualityFloor(**kwargs)


def test_parse_reads_the_command_line_forms() -> None:
    assert QualityFloor.parse("1pt:gpt-4") == QualityFloor(within=0.01, relative_to="gpt-4")
    assert QualityFloor.parse("2pts") == QualityFloor(within=0.02)
    assert QualityFloor.parse("99%:gpt-4", delta=0.1) == QualityFloor(
        min_accuracy=0.99, relative_to="gpt-4", delta=0.1
    )
    assert QualityFloor.parse("0.85") == QualityFloor(min_accuracy=0.85)
    with pytest.raises(ConfigError, match="must read '1pt"):
        QualityFloor.parse("one point")


def test_a_floor_above_anything_reachable_names_the_best_achievable() -> None:
    p, c, y = two_targets(1000)
    y[:, 0] = np.arange(1000) % 2  # big now right on the odd rows only: never where small is wrong
    with pytest.raises(
        ConfigError, match=r"above what any routing reaches on the 1,000 calibration rows: the best is 0\.9"
    ):
        certify_floor(p, c, y, ["big", "small"], QualityFloor(min_accuracy=0.99), GRID)


def test_an_unknown_reference_gets_a_did_you_mean() -> None:
    p, c, y = two_targets(100)
    with pytest.raises(UnknownTargetError, match="Did you mean 'small'"):
        certify_floor(p, c, y, ["big", "small"], QualityFloor(within=0.01, relative_to="smal"), GRID)


def test_no_complete_row_is_a_clear_error() -> None:
    p, c, y = two_targets(10)
    y[:, 1] = np.nan
    with pytest.raises(ConfigError, match="no calibration row has a label for every target"):
        certify_floor(p, c, y, ["big", "small"], QualityFloor(min_accuracy=0.5), GRID)
