"""The Ray encode worker's own checks, run in-process (the Ray tests proper are in test_scale_ray.py)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from prefill_router._ray import WorkerPlan
from prefill_router.encode import Encoder, feature_key
from prefill_router.encode.distributed import _EncodeWorker
from prefill_router.errors import EncodeError
from tests.tiny_models import build_tiny_llama


def test_a_worker_whose_encoder_hashes_differently_refuses_to_start(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """A node with other weights under the encoder's name must stop the run, not mix its features in."""
    driver = Encoder(str(tiny_llama_dir), dtype="float32", threads=1)
    key = feature_key(driver, (1, 2), ("mean",))
    plan = WorkerPlan(workers=1, cpus=1, gpus=0, device="cpu")
    other = build_tiny_llama(tmp_path / "other", poison="é")  # the same model but one poisoned embedding
    # the driver's key, but its encoder's name leads this worker to the poisoned weights
    elsewhere = dataclasses.replace(key, encoder=dataclasses.replace(key.encoder, name=str(other)))
    message = (
        re.escape(f"this Ray worker's encoder {other} differs from the driver's (weights sha256 ")
        + "[0-9a-f]{16}"
        + re.escape(f"… vs {key.encoder.weights_sha256[:16]}…); install the same model package on every node")
    )
    with pytest.raises(EncodeError, match=f"^{message}$"):
        _EncodeWorker(elsewhere.to_json(), None, 2048, plan)
    same = _EncodeWorker(key.to_json(), None, 2048, plan)  # the driver's own: accepted
    assert same.key == key
