"""Leak-free, deterministic, task-stratified splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefill_router.data.splits import assign_splits, duplicated_across_splits, normalise_prompt


def corpus(n: int = 400) -> tuple[list[str], list[str]]:
    prompts = [f"Question {i % 300}:  what is {i % 300} squared?" for i in range(n)]  # 100 repeats
    prompts = [p.upper() if i % 7 == 0 else p for i, p in enumerate(prompts)]  # same text, other case
    tasks = ["math" if i % 3 else "trivia" for i in range(n)]
    return prompts, tasks


def test_normalise_prompt_ignores_case_and_whitespace() -> None:
    assert normalise_prompt("  What  is\n2+2? ") == normalise_prompt("what is 2+2?") == "what is 2+2?"


def test_split_is_deterministic_and_seeded() -> None:
    prompts, tasks = corpus()
    first = assign_splits(prompts, tasks, seed=3)
    assert first.tolist() == assign_splits(prompts, tasks, seed=3).tolist()
    assert first.tolist() != assign_splits(prompts, tasks, seed=4).tolist()


def test_split_never_puts_the_same_text_on_both_sides() -> None:
    prompts, tasks = corpus()
    splits = assign_splits(prompts, tasks)
    assert duplicated_across_splits(prompts, splits.tolist()) == 0


def test_split_is_stratified_by_task_and_near_the_fraction() -> None:
    prompts, tasks = corpus(1000)
    splits = assign_splits(prompts, tasks, test_fraction=0.25)
    test = splits == "test"
    assert 0.2 < test.mean() < 0.3
    for task in ("math", "trivia"):
        share = test[np.array(tasks) == task].mean()
        assert 0.18 < share < 0.32


def test_invalid_fraction_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"The 'test_fraction' parameter must be in \(0, 0\.5\]; got 0\.9 instead\."
    ):
        assign_splits(["a"], [None], test_fraction=0.9)


def test_too_few_distinct_prompts_all_go_to_train() -> None:
    assert assign_splits(["a", "A", "b"], [None] * 3).tolist() == ["train"] * 3


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "c", "A ", "d", "e", "f", "g"]), min_size=1, max_size=60),
    st.integers(0, 5),
)
def test_split_never_leaks_property(prompts: list[str], seed: int) -> None:
    splits = assign_splits(prompts, [None] * len(prompts), seed=seed)
    assert duplicated_across_splits(prompts, splits.tolist()) == 0
