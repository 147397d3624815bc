"""The default model path in the default suite: the real SmolLM2 and MiniLM on a handful of prompts.

Every other default test runs tiny random-weight models; this one runs what a user gets: SmolLM2's
package lookup and GGUF conversion (once per test session, into the isolated cache: most of this
test's time), MiniLM for the embedding baselines, and the commands a user types first, `encode`,
`fit --limit`, `evaluate --baselines all` and `route`, on the 86 shortest bundled prompts (70
train, 16 test) and two targets, on one core and one torch thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prefill_router import Router, RoutingDataset
from prefill_router.cli import run
from prefill_router.evaluate.baselines import LEARNED
from prefill_router.train.pretrained import load_trunk

TARGETS = ["gemma-2-9b-it", "llama-3.1-8b-instruct"]


pytestmark = pytest.mark.usefixtures("one_core")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 86 shortest bundled prompts (about 23 characters each), two targets, 70 train + 16 test."""
    bundled = RoutingDataset.load("bundled")
    shortest = np.argsort([len(p) for p in bundled.prompts], kind="stable")[:86]
    rows = bundled.take(shortest, [bundled.target_index(name) for name in TARGETS])
    splits = np.array(["train"] * 70 + ["test"] * 16, dtype=object)
    dataset = RoutingDataset(rows.prompt_ids, rows.prompts, rows.tasks, splits, rows.labels, rows.targets)
    return dataset.save(tmp_path_factory.mktemp("smoke") / "small.parquet")


@pytest.mark.timeout(480)
def test_encode_fit_evaluate_and_route_with_the_real_encoders(
    small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["encode", str(small), "--limit", "6", "--layers", "0,15,30"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "features 6 x 2 x 3 x 576" in out and "encoder smollm2-135m (chat view, bfloat16, cpu)" in out

    router_dir, fitted = tmp_path / "router", tmp_path / "fit.json"
    assert run(["fit", str(small), "-o", str(router_dir), "--limit", "60", "--json", str(fitted)]) == 0
    report = json.loads(fitted.read_text())
    assert report["n_fit"] + report["n_val"] + report["n_calibration"] == 60
    assert report["n_calibration"] > 0 and set(report["val_auc"]) == set(TARGETS)
    router = Router.load(router_dir)
    assert router.encoder_identity.name == "smollm2-135m" and router.ensemble.n_members == 5

    evaluated = tmp_path / "evaluation.json"
    command = ["evaluate", str(router_dir), str(small), "--baselines", "all", "--bootstrap", "200"]
    assert run([*command, "--json", str(evaluated)]) == 0
    result = json.loads(evaluated.read_text())
    assert {"prefill", *LEARNED} <= set(result)  # every baseline ran, MiniLM's included
    assert result["setup"]["split"] == "test" and result["n_rows"] == 16
    assert all(0.0 <= result[name]["argmax"]["accuracy"] <= 1.0 for name in ("prefill", *LEARNED))

    capsys.readouterr()
    assert run(["route", str(router_dir), "What is the capital of Peru?", "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["target"] in TARGETS and set(decision["probabilities"]) == set(TARGETS)
    assert all(0.0 < p < 1.0 for p in decision["probabilities"].values())
    assert decision["certificate"]["rows"] == report["n_calibration"]  # the default floor
    # a new pool started from the trunk shipped in the package: its blocks, no probes
    warm = tmp_path / "warm"
    assert run(["fit", str(small), "-o", str(warm), "--limit", "60", "--init", "pretrained"]) == 0
    started, trunk = Router.load(warm), load_trunk("pretrained")
    assert [b.name for b in started.transform.blocks] == [b.name for b in trunk.transform.blocks]
    assert started.info["settings"]["init"] == "pretrained" and started.targets == tuple(TARGETS)
