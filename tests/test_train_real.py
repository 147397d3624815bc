"""(slow) A router fitted with the real SmolLM2 encoder: save, load in a fresh process, score a prompt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prefill_router import RoutingDataset
from prefill_router.cli import run
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

PROMPTS = ["What is the derivative of x**3?", "Write a haiku about routers."]

SCORE = """
import json, sys
from prefill_router import Router
router = Router.load(sys.argv[1])
p = router.predict_proba(json.loads(sys.argv[2]))
print(json.dumps({"p": p.tolist(), "targets": list(router.targets)}))
"""


def _model_dirs(cache: Path) -> dict[str, float]:
    models = cache / "models"
    return {p.name: p.stat().st_mtime for p in models.iterdir()} if models.is_dir() else {}


def test_fit_save_load_in_fresh_process_scores_like_training(tmp_path: Path) -> None:
    data = tmp_path / "small.parquet"
    full = RoutingDataset.load("bundled").select(split="train")
    full.take(range(300)).save(data)
    router_dir = tmp_path / "router"
    code = run(["fit", str(data), "-o", str(router_dir), "--seeds", "2", "--keep", "1", "--layers", "15"])
    assert code == 0
    cache = Path(os.environ["PREFILL_ROUTER_CACHE"])
    before = _model_dirs(cache)
    assert before, "the fit converted the GGUF into the cache"

    done = subprocess.run(
        [sys.executable, "-c", SCORE, str(router_dir), json.dumps(PROMPTS)],
        capture_output=True, text=True, check=True, cwd=ROOT, env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    scored = json.loads(done.stdout)
    assert _model_dirs(cache) == before, "loading and scoring must not re-convert the encoder"

    from prefill_router import Router

    router = Router.load(router_dir)
    in_process = router.predict_proba(PROMPTS)
    assert scored["targets"] == list(router.targets)
    np.testing.assert_allclose(np.array(scored["p"]), in_process, atol=1e-6)
    assert np.all((in_process > 0) & (in_process < 1))
