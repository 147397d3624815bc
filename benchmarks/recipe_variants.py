"""Which changes to the published recipe raise routing quality? Grouped 5-fold CV on the bundled data.

    .venv/bin/python benchmarks/recipe_variants.py [--variants default,all-mean,...]

Each variant refits the router per fold on cached SmolLM2 features (and MiniLM embeddings for the
fusion variant) and is scored out of fold with the same policy and cost code as ``evaluate``: mean
AUC and gap captured at argmax, with the paired AUC difference to the default recipe. Writes
``benchmarks/results/recipe_variants.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold

from prefill_router.data.dataset import RoutingDataset
from prefill_router.data.splits import prompt_groups
from prefill_router.encode import Encoder, FeatureStore, default_cache_dir
from prefill_router.evaluate.metrics import Yardstick, auc_difference, mean_auc, outcome, target_quality
from prefill_router.evaluate.run import eval_costs, feature_set
from prefill_router.policy import choose
from prefill_router.train import NetSettings, TrainSettings, fit_router
from prefill_router.train.calibration import apply_temperature
from prefill_router.train.fit import validation_split
from prefill_router.train.net import TrunkEnsemble, train_nets
from prefill_router.train.transform import fit_block

RESULTS = Path(__file__).parent / "results" / "recipe_variants.json"
BASE = TrainSettings()
VARIANTS = {
    "default": BASE,
    "all-mean": replace(BASE, layers="all-mean"),
    "fisher-2": replace(BASE, n_layers=2),
    "pca-64": replace(BASE, pca_k=64),
    "keep-10": replace(BASE, keep=10),
    "wide-512": replace(BASE, net=NetSettings(hidden=(512, 256))),
}


def fused(
    train: RoutingDataset, f_train, f_test, embed_train, embed_test, settings: TrainSettings
) -> np.ndarray:
    """Prefill blocks (the default recipe's) plus a PCA-128 block of MiniLM embeddings, one trunk."""
    router, _ = fit_router(train, f_train, f_train_identity(), settings)
    x_train = router.transform.transform(f_train)
    x_test = router.transform.transform(f_test)
    fit_rows, val_rows = validation_split(train.prompts, settings.val_share, settings.seed)
    block = fit_block(embed_train[fit_rows], "embed", (0,), settings.pca_k, settings.seed)
    x_train = np.concatenate([x_train, block.apply(embed_train)], axis=1).astype(np.float32)
    x_test = np.concatenate([x_test, block.apply(embed_test)], axis=1).astype(np.float32)
    y = train.labels
    seeds = [settings.seed + i for i in range(settings.seeds)]
    members = train_nets(x_train[fit_rows], y[fit_rows], x_train[val_rows], y[val_rows], settings.net, seeds)
    kept = np.argsort([m.val_loss for m in members])[: settings.keep]
    ensemble = TrunkEnsemble.stack([members[i] for i in kept])
    from prefill_router.train.calibration import fit_temperature

    p_val = ensemble.probabilities(x_train[val_rows])
    temps = np.array([fit_temperature(p_val[:, j], y[val_rows, j]) for j in range(y.shape[1])])
    return apply_temperature(ensemble.probabilities(x_test), temps)


def f_train_identity():
    from prefill_router.train import EncoderIdentity

    return EncoderIdentity("smollm2-135m", "x" * 64, "chat", 512, "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join([*VARIANTS, "fusion-embed"]))
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    names = args.variants.split(",")
    data = RoutingDataset.load("bundled")
    features = feature_set(
        Encoder("smollm2-135m"),
        data.prompts.tolist(),
        FeatureStore(default_cache_dir()),
        need_embed="fusion-embed" in names,
    )
    groups = prompt_groups(data.prompts)
    folds = list(
        GroupKFold(n_splits=args.folds, shuffle=True, random_state=0).split(
            np.zeros(data.n_prompts), groups=groups
        )
    )
    out_of_fold = {name: np.full(data.labels.shape, np.nan) for name in names}
    seconds = dict.fromkeys(names, 0.0)
    for k, (train_rows, test_rows) in enumerate(folds):
        train_rows, test_rows = np.sort(train_rows), np.sort(test_rows)
        train = data.take(train_rows)
        f_train, f_test = features.rows(train_rows), features.rows(test_rows)
        for name in names:
            started = time.perf_counter()
            if name == "fusion-embed":
                p = fused(train, f_train.encoder, f_test.encoder, f_train.embed, f_test.embed, BASE)
            else:
                router, _ = fit_router(train, f_train.encoder, f_train.identity, VARIANTS[name])
                p = router.predict_proba_features(f_test.encoder)
            out_of_fold[name][test_rows] = p
            seconds[name] += time.perf_counter() - started
            print(f"fold {k + 1}: {name} {time.perf_counter() - started:.0f} s", flush=True)
    costs = eval_costs(data, data)
    complete = ~np.isnan(data.labels).any(axis=1)
    y, c = data.labels[complete], costs[complete]
    yard = Yardstick.of(y, c, data.target_names)
    result = {}
    for name, p in out_of_fold.items():
        accuracy, cost = outcome(choose(p[complete], c, "budget", 0.0), y, c)
        result[name] = {
            "auc_mean": mean_auc(target_quality(p, data.labels, data.target_names)),
            "argmax_gap_captured": yard.gap(accuracy),
            "argmax_cost_savings": yard.savings(cost),
            "auc_vs_default": auc_difference(p[complete], out_of_fold["default"][complete], y)
            if name != "default" and "default" in out_of_fold
            else None,
            "seconds": seconds[name],
        }
        print(name, json.dumps(result[name]), flush=True)
    RESULTS.write_text(json.dumps({"folds": args.folds, "variants": result}, indent=1))
    print(RESULTS)


if __name__ == "__main__":
    main()
