"""Costs (DESIGN §3) and the dataset headline: oracle, best single, headroom, agreement zones."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from prefill_router import RoutingDataset, TargetInfo
from prefill_router.data.costs import DEFAULT_OUTPUT_TOKENS, cost_matrix, output_token_estimates
from prefill_router.data.summary import agreement_zones, summarise


def test_cost_uses_prices_and_default_output_length(small_dataset: RoutingDataset) -> None:
    costs = cost_matrix(small_dataset)
    tokens_in = 3  # "What is 2+2?" is 12 bytes -> 3 tokens
    expected_large = (tokens_in * 10.0 + DEFAULT_OUTPUT_TOKENS * 30.0) / 1e6
    assert costs[0, 2] == pytest.approx(expected_large)


def test_cost_uses_median_observed_output_on_train_rows(small_dataset: RoutingDataset) -> None:
    tokens = np.array([[10, 100, 1000], [30, 300, np.nan], [999, 999, 999], [999, 999, 999]], dtype=float)
    ds = RoutingDataset(**{**vars(small_dataset), "output_tokens": tokens})
    assert output_token_estimates(ds).tolist() == [20.0, 200.0, 1000.0]


def test_observed_cost_wins_over_the_estimate(small_dataset: RoutingDataset) -> None:
    observed = np.full((4, 3), np.nan)
    observed[1, 1] = 0.5
    ds = RoutingDataset(**{**vars(small_dataset), "costs_usd": observed})
    costs = cost_matrix(ds)
    assert costs[1, 1] == 0.5
    assert costs[0, 0] == cost_matrix(small_dataset)[0, 0]


def test_unpriced_target_without_observed_cost_is_nan() -> None:
    ds = RoutingDataset(["a"], ["p"], [None], [None], np.array([[1.0]]), (TargetInfo("t"),))
    assert np.isnan(cost_matrix(ds)).all()
    assert summarise(ds).oracle_cost_usd is None


def test_summary_on_a_hand_computed_example(small_dataset: RoutingDataset) -> None:
    summary = summarise(small_dataset)
    # complete rows: a, b, c (row d has a NaN)
    assert summary.n_complete == 3
    assert summary.oracle_accuracy == pytest.approx(2 / 3)
    assert summary.best_single == {"name": "large", "accuracy": pytest.approx(2 / 3)}
    assert summary.headroom == pytest.approx(0.0)
    assert summary.agreement == {
        "all_correct": 0.0,
        "disagree": pytest.approx(2 / 3),
        "all_wrong": pytest.approx(1 / 3),
    }
    medium = next(t for t in summary.targets if t.name == "medium")
    assert (medium.n_labeled, medium.accuracy) == (3, 0.0)
    costs = cost_matrix(small_dataset)[:3]
    # row a: small is correct and cheapest; row b: only large; row c: nobody -> cheapest (small)
    assert summary.oracle_cost_usd == pytest.approx((costs[0, 0] + costs[1, 2] + costs[2, 0]) / 3)
    assert summary.most_expensive is not None and summary.most_expensive["name"] == "large"


def test_summary_json_is_strict_and_has_the_contract_keys(small_dataset: RoutingDataset) -> None:
    import json

    blob = json.loads(json.dumps(summarise(small_dataset).to_json(), allow_nan=False))
    assert {"n_prompts", "targets", "oracle_accuracy", "best_single", "agreement"} <= set(blob)
    assert {"name", "accuracy", "n_labeled"} <= set(blob["targets"][0])
    assert set(blob["agreement"]) == {"all_correct", "disagree", "all_wrong"}


label_matrices = arrays(
    np.float64, st.tuples(st.integers(1, 30), st.integers(1, 6)), elements=st.sampled_from([0.0, 0.25, 1.0])
)


@settings(max_examples=80, deadline=None)
@given(labels=label_matrices)
def test_oracle_beats_every_single_target(labels: np.ndarray) -> None:
    n, m = labels.shape
    ds = RoutingDataset(
        [f"p{i}" for i in range(n)],
        ["x"] * n,
        [None] * n,
        [None] * n,
        labels,
        tuple(TargetInfo(f"t{j}", float(j), float(j)) for j in range(m)),
    )
    summary = summarise(ds)
    assert all(summary.oracle_accuracy >= t.accuracy - 1e-12 for t in summary.targets)
    assert summary.headroom >= -1e-12
    assert sum(summary.agreement.values()) == pytest.approx(1.0)
    zones = agreement_zones(labels)
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in zones.values())


def test_agreement_shares_are_never_negative() -> None:
    """1 - 1/3 - 2/3 is -1e-16 in floating point; the disagree share is counted instead."""
    zones = agreement_zones(np.array([[1.0], [0.0], [0.0]]))
    assert zones == {"all_correct": 1 / 3, "disagree": 0.0, "all_wrong": 2 / 3}


def test_data_info_and_evaluate_name_the_same_most_expensive_target() -> None:
    """Two targets at one price (LLMRouter prices three at $0.9/M): both name the more accurate one."""
    from prefill_router.evaluate.metrics import Yardstick

    prompts = ["What is 2+2?", "Name a colour.", "Prove Fermat.", "Say hi"]
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 0]], dtype=float)  # c: 0.75, a: 0.5
    targets = (TargetInfo("a", 0.9, 0.9), TargetInfo("b", 0.1, 0.1), TargetInfo("c", 0.9, 0.9))
    ds = RoutingDataset(list("pqrs"), prompts, [None] * 4, [None] * 4, labels, targets)
    yard = Yardstick.of(ds.labels, cost_matrix(ds), ds.target_names)
    assert summarise(ds).most_expensive["name"] == yard.max_cost_target == "c"  # type: ignore[index]


def test_the_shared_definitions_are_defined_once() -> None:
    """One LABEL_THRESHOLD, one bootstrap, one 'most expensive' rule (the first review found three,
    two and two), one per-target AUC (fit, evaluate and the kNN baseline had one each): every other
    module imports them; and no module picks a best single target or binarises labels by hand."""
    import re

    from tests.conftest import ROOT

    sources = {p: p.read_text() for p in (ROOT / "src" / "prefill_router").rglob("*.py")}
    patterns = {
        "LABEL_THRESHOLD": r"^LABEL_THRESHOLD\s*=",
        "the row resampling": r"default_rng\(seed\)\.integers|rng\.integers\(0, n",
        "the row counts per resample": r"np\.bincount\(flat",
        "a percentile interval": r"np\.(percentile|quantile)\([^)]*(tail|level|0\.025)",
        "the cost tie rule": r"1 - 1e-9|COST_TIE_RTOL\s*=",
        "the per-target AUC": r"roc_auc_score\(truth, ",
    }
    for what, pattern in patterns.items():
        defining = sorted(p.name for p, text in sources.items() if re.search(pattern, text, re.M))
        assert len(defining) == 1, f"{what} is defined in {defining}"
    sources |= {p: p.read_text() for p in (ROOT / "benchmarks").glob("*.py")}
    by_hand = {
        "a best single target": r"argmax\(\w+\.mean\(axis=0\)\)|argmax\(np\.nanmean\(labels",
        "a 0.5 label threshold": r"labels\s*>=\s*0\.5|\[seen, j\]\s*>=\s*0\.5",
    }
    for what, pattern in by_hand.items():
        found = sorted(p.name for p, text in sources.items() if re.search(pattern, text))
        assert not found, f"{what} by hand in {found}"
