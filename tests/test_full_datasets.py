"""The importers on the full real files in ../shared reproduce the documented counts and accuracies.

Figures are those of ../shared/datasets/README.md (computed there from the same files).
"""

from __future__ import annotations

import numpy as np
import pytest

from prefill_router.data.dataset import RoutingDataset
from prefill_router.data.importers import import_dataset
from prefill_router.data.prices import builtin_prices
from prefill_router.data.summary import summarise
from tests.conftest import SHARED_DATASETS, needs_shared

pytestmark = needs_shared


@pytest.fixture(scope="module")
def llmrouter() -> RoutingDataset:
    return import_dataset("llmrouter", SHARED_DATASETS / "llmrouter", prices=builtin_prices()).dataset


@pytest.fixture(scope="module")
def mmlu_pro() -> RoutingDataset:
    return import_dataset("mmlu-pro", SHARED_DATASETS / "mmlu_pro", prices=builtin_prices()).dataset


@pytest.fixture(scope="module")
def routellm() -> RoutingDataset:
    return import_dataset("routellm", SHARED_DATASETS / "routellm", prices=builtin_prices()).dataset


LLMROUTER_TRAIN_MEAN = {
    "llama-3.1-nemotron-51b-instruct": 0.621,
    "llama-3.3-nemotron-super-49b-v1": 0.579,
    "llama-3.1-8b-instruct": 0.561,
    "gemma-2-9b-it": 0.535,
    "qwen2.5-7b-instruct": 0.520,
    "mistral-7b-instruct-v0.3": 0.371,
    "codegemma-7b": 0.303,
    "llama3-chatqa-1.5-70b": 0.194,
    "llama3-chatqa-1.5-8b": 0.175,
}


def test_llmrouter_counts_tasks_and_accuracies(llmrouter: RoutingDataset) -> None:
    train = llmrouter.select(split="train")
    assert train.n_prompts == 5608
    assert llmrouter.select(split="test").n_prompts == 500 - 119
    tasks = dict(zip(*np.unique(train.tasks.astype(str), return_counts=True), strict=True))
    assert tasks["math"] == 504 and tasks["mmlu"] == 500 and tasks["openbook_qa"] == 496
    assert tasks["commongen"] == 150 and len(tasks) == 14
    for name, accuracy in LLMROUTER_TRAIN_MEAN.items():
        assert train.labels[:, train.target_index(name)].mean() == pytest.approx(accuracy, abs=5e-4)
    assert summarise(train).oracle_accuracy == pytest.approx(0.802, abs=5e-4)


MMLU_PRO_OWN_ROWS = {
    "gemini-1.5-pro-002": (12020, 0.702),
    "DeepSeek-Coder-V2": (10351, 0.636),
    "Meta-Llama-3_1-70B-Instruct": (12032, 0.628),
    "Qwen1.5-72B-Chat": (12032, 0.471),
    "Llama-2-7b-hf": (12032, 0.183),
}


def test_mmlu_pro_counts_and_accuracies(mmlu_pro: RoutingDataset) -> None:
    assert mmlu_pro.n_prompts == 12032 and len(mmlu_pro.targets) == 29
    summary = summarise(mmlu_pro)
    by_name = {t.name: t for t in summary.targets}
    for name, (rows, accuracy) in MMLU_PRO_OWN_ROWS.items():
        assert by_name[name].n_labeled == rows
        assert by_name[name].accuracy == pytest.approx(accuracy, abs=5e-4)
    assert summary.n_complete == 10326
    assert summary.oracle_accuracy == pytest.approx(0.949, abs=5e-4)
    assert summary.best_single == {"name": "gemini-1.5-pro-002", "accuracy": pytest.approx(0.718, abs=5e-4)}
    assert all(t.has_price for t in mmlu_pro.targets)


def test_routellm_counts_and_accuracies(routellm: RoutingDataset) -> None:
    mmlu = routellm.tasks != "gsm8k"
    assert mmlu.sum() == 14037 and (~mmlu).sum() == 1307
    assert routellm.labels[mmlu].mean(axis=0) == pytest.approx([0.681, 0.806], abs=5e-4)
    assert routellm.labels[~mmlu].mean(axis=0) == pytest.approx([0.637, 0.858], abs=5e-4)


@pytest.mark.parametrize("name", ["llmrouter", "mmlu_pro", "routellm"])
def test_imported_splits_do_not_leak(name: str, request: pytest.FixtureRequest) -> None:
    dataset: RoutingDataset = request.getfixturevalue(name)
    assert summarise(dataset).duplicated_across_splits == 0


def test_bundled_dataset_is_the_llmrouter_import(llmrouter: RoutingDataset) -> None:
    bundled = RoutingDataset.load("bundled")
    assert bundled.prompts.tolist() == llmrouter.prompts.tolist()
    assert np.array_equal(bundled.labels, llmrouter.labels)
