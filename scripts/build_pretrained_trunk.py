"""Rebuild the pretrained routing trunk shipped in the package (``fit --init pretrained``).

Run from the repository root: ``.venv/bin/python scripts/build_pretrained_trunk.py``. It reads the
bundled LLMRouter data and MMLU-Pro and RouteLLM from ../shared (imported once into the cache),
their default-encoder features (encoded once into the feature cache: ~1 hour on 2 cores when
nothing is cached), trains one SharedTrunkNet on every target of the three (one head per dataset x
target; blocks chosen by the probes over every head), and writes it, without calibration rows and
with float16 arrays to keep the package small, to ``src/prefill_router/train/resources/pretrained``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality import load  # noqa: E402 (the quality benchmarks' dataset loader)

from prefill_router.encode import Encoder, FeatureStore, default_cache_dir, extract_features  # noqa: E402
from prefill_router.train import EncoderIdentity, LayerFeatures, TrainSettings  # noqa: E402
from prefill_router.train.fit import DEFAULT_ENCODERS  # noqa: E402
from prefill_router.train.pretrained import pretrain_trunk, shipped_trunk_path  # noqa: E402

DATASETS = ("llmrouter", "mmlu-pro", "routellm")
#: Members shipped (of the usual 10 trained): enough for a starting point, a third of the bytes.
MEMBERS = 3


def main() -> int:
    """Pretrain on the three datasets and write the trunk into the package."""
    store = FeatureStore(default_cache_dir())
    encoders = [Encoder(name) for name in DEFAULT_ENCODERS]
    parts = []
    for name in DATASETS:
        dataset = load(name, Path(default_cache_dir()) / "datasets")
        features = []
        for encoder in encoders:
            stored = extract_features(encoder, dataset.prompts.tolist(), store)
            features.append(LayerFeatures(stored.features, stored.key.poolings, stored.key.layers))
        parts.append((name, dataset, features))
        print(f"{name}: {dataset.n_prompts} prompts x {len(dataset.target_names)} targets", flush=True)
    started = time.perf_counter()
    settings = TrainSettings(keep=MEMBERS)
    trunk = pretrain_trunk(parts, [EncoderIdentity.of(e) for e in encoders], None, settings)
    trunk.info["pretrained"]["built_by"] = "scripts/build_pretrained_trunk.py"
    path = trunk.save(shipped_trunk_path())
    as_float16(path)
    size = sum(f.stat().st_size for f in path.iterdir())
    blocks = ", ".join(b.name for b in trunk.transform.blocks)
    seconds = time.perf_counter() - started
    print(f"trunk ({blocks}; {len(trunk.targets)} heads) in {seconds:.0f} s: {path}, {size:,} bytes")
    return 0


def as_float16(path: Path) -> None:
    """Store the trunk's arrays as float16 (the loader reads them back as float32)."""
    from prefill_router.train import read_artifact, write_artifact

    meta, arrays = read_artifact(path)
    write_artifact(path, meta, {k: v.astype(np.float16) for k, v in arrays.items()})


if __name__ == "__main__":
    sys.exit(main())
