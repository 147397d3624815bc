"""Adding a target without retraining vs a full retrain, on the bundled dataset.

For each held-out target t: fit a router on the other targets, add t with ``add_target`` (one new
head on the frozen trunk), and compare t's ROC-AUC on the test split with the router fitted on all
targets at once. Also times the fit on cached features (the 60 s figure of the training issue).

Run: ``.venv/bin/python benchmarks/add_target.py [--targets a,b]`` (needs the bundled features in
the cache: ``prefill-router encode bundled``). Writes ``benchmarks/results/add_target.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from prefill_router.data.dataset import RoutingDataset
from prefill_router.encode import Encoder, FeatureStore, default_cache_dir, extract_features
from prefill_router.train import EncoderIdentity, LayerFeatures, TrainSettings, add_target, fit_router
from prefill_router.train.quality import target_quality

RESULTS = Path(__file__).parent / "results" / "add_target.json"


def test_auc(router, features: LayerFeatures, labels: np.ndarray, names: list[str]) -> dict[str, float]:
    """ROC-AUC per target on the test rows."""
    p = router.predict_proba_features(features)[:, [router.targets.index(name) for name in names]]
    return {name: quality["auc"] for name, quality in target_quality(p, labels, names).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", help="comma-separated held-out targets (default: all)")
    args = parser.parse_args()
    data = RoutingDataset.load("bundled")
    train, test = data.select(split="train"), data.select(split="test")
    encoder = Encoder("smollm2-135m")
    store = FeatureStore(default_cache_dir())
    features = {}
    for name, part in (("train", train), ("test", test)):
        stored = extract_features(encoder, part.prompts.tolist(), store)
        features[name] = LayerFeatures(np.asarray(stored.features), stored.key.poolings, stored.key.layers)
    identity = EncoderIdentity.of(encoder)
    settings = TrainSettings()

    started = time.perf_counter()
    full, full_report = fit_router(train, features["train"], identity, settings)
    fit_seconds = time.perf_counter() - started
    full_auc = test_auc(full, features["test"], test.labels, train.target_names)
    print(f"full fit on cached features: {fit_seconds:.1f} s ({full_report.seconds})")

    held_out = args.targets.split(",") if args.targets else train.target_names
    rows = []
    for target in held_out:
        others = [t for t in train.target_names if t != target]
        base, _ = fit_router(train.select(targets=others), features["train"], identity, settings)
        started = time.perf_counter()
        added, _ = add_target(base, train, target, features["train"], settings)
        add_seconds = time.perf_counter() - started
        auc = test_auc(added, features["test"], test.labels, train.target_names)
        rows.append(
            {
                "target": target,
                "auc_added": auc[target],
                "auc_full_retrain": full_auc[target],
                "delta": auc[target] - full_auc[target],
                "add_seconds": add_seconds,
                "others_unchanged_max_abs_diff": float(
                    np.abs(
                        added.predict_proba_features(features["test"])[:, : len(others)]
                        - base.predict_proba_features(features["test"])
                    ).max()
                ),
            }
        )
        print(json.dumps(rows[-1]))
    deltas = [r["delta"] for r in rows]
    result = {
        "dataset": "bundled (LLMRouter), train split -> test split (381 prompts)",
        "settings": settings.to_json(),
        "fit_seconds_cached_features": fit_seconds,
        "fit_stage_seconds": full_report.seconds,
        "full_retrain_test_auc_mean": float(np.mean(list(full_auc.values()))),
        "targets": rows,
        "mean_delta": float(np.mean(deltas)),
        "min_delta": float(np.min(deltas)),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"mean AUC change from adding instead of retraining: {result['mean_delta']:+.4f} -> {RESULTS}")


if __name__ == "__main__":
    main()
