"""Shared test fixtures: paths to the committed fixtures and to the real datasets in ../shared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from prefill_router.data.dataset import RoutingDataset, TargetInfo

if TYPE_CHECKING:
    from tests.redis_support import RedisServer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

needs_shared = pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="../shared/datasets is not present")


@pytest.fixture
def fixtures() -> Path:
    """The folder of committed fixtures cut from the real datasets."""
    return FIXTURES


@pytest.fixture
def small_dataset() -> RoutingDataset:
    """Four prompts x three targets with a NaN, a graded label and prices."""
    return RoutingDataset(
        prompt_ids=["a", "b", "c", "d"],
        prompts=["What is 2+2?", "Name a colour.", "Prove Fermat.", "Say hi"],
        tasks=["math", "trivia", "math", None],
        splits=["train", "train", "test", "test"],
        labels=np.array([[1, 0, 1], [0, 0, 1], [0, 0, 0], [1, np.nan, 0.5]], dtype=float),
        targets=(
            TargetInfo("small", 0.1, 0.1, "test"),
            TargetInfo("medium", 0.5, 1.5, "test"),
            TargetInfo("large", 10.0, 30.0, "test"),
        ),
        provenance={"source": "unit-test"},
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight llama model directory with a chat template."""
    from tests.tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight bert model directory (raw view)."""
    from tests.tiny_models import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny nets train far faster on one thread, and a shared machine's cores thrash OpenMP.

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` in a test module.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_core() -> Iterator[None]:
    """Pin a module's tests to one core and one torch thread (torch sizes its pool from the cores only
    at start-up): tiny nets train far faster on one thread, and a shared machine's cores thrash OpenMP.

    Use with ``pytestmark = pytest.mark.usefixtures("one_core")`` in a test module.
    """
    import os

    import torch

    cores, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {min(cores)})
    torch.set_num_threads(1)
    yield
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test writes converted models and features under a temporary cache, never ~/.cache."""
    monkeypatch.setenv("PREFILL_ROUTER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free 127.0.0.1 port for the whole session (tests/redis_support.py).

    Tests that kill Redis start their own with ``tests.redis_support.redis_server()``.
    """
    from tests.redis_support import RedisServer

    with RedisServer() as server:
        yield server
