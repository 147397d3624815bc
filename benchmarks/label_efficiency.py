"""Label efficiency of a pretrained routing trunk: few labelled prompts, with and without it.

    .venv/bin/python benchmarks/label_efficiency.py                  # all three datasets
    .venv/bin/python benchmarks/label_efficiency.py --datasets llmrouter --sizes 100,300
    .venv/bin/python benchmarks/label_efficiency.py --table

For each dataset D, a trunk is pretrained on the *other* datasets only (leave-one-dataset-out, so D
is never seen in pretraining; its blocks are chosen by the probes on those datasets too). Then, on
each fold of a grouped 5-fold split of D, a router is fitted
on N training prompts of that fold (a seeded sample; N = 100, 300, 1,000 and all) twice: with the
default recipe (random init, blocks chosen by the probes) and with ``--init`` the trunk (its
blocks, its weights, known heads, new heads probed on the frozen trunk, then fine-tuned); both are
scored on the fold's held-out prompts. Out-of-fold probabilities over all prompts give the mean AUC
and the savings against the best single target at its accuracy (and within 1 point), with paired
bootstrap intervals of the AUC difference. Writes ``benchmarks/results/label_efficiency.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import RESULTS, load

from prefill_router.data.dataset import RoutingDataset
from prefill_router.data.splits import prompt_groups
from prefill_router.encode import Encoder, FeatureStore, default_cache_dir, extract_features
from prefill_router.evaluate.run import Predictions, eval_costs, score
from prefill_router.train import EncoderIdentity, LayerFeatures, ProbeCache, TrainSettings, fit_router
from prefill_router.train.fit import DEFAULT_ENCODERS
from prefill_router.train.pretrained import load_trunk, pretrain_trunk

DATASETS = ("llmrouter", "mmlu-pro", "routellm")
OUT = RESULTS / "label_efficiency.json"


def features_of(
    dataset: RoutingDataset, store: FeatureStore
) -> tuple[list[LayerFeatures], list[EncoderIdentity]]:
    """Every layer of each default encoder, as ``encode`` caches them."""
    feats, ids = [], []
    for name in DEFAULT_ENCODERS:
        encoder = Encoder(name)
        stored = extract_features(encoder, dataset.prompts.tolist(), store)
        feats.append(LayerFeatures(stored.features, stored.key.poolings, stored.key.layers))
        ids.append(EncoderIdentity.of(encoder))
    return feats, ids


def trunk_without(held_out: str, data: dict, work: Path, seed: int) -> Path:
    """A trunk pretrained on every dataset but ``held_out`` (cached in ``work``)."""
    path = work / f"trunk-without-{held_out}"
    if (path / "router.json").exists():
        return path
    parts = [(name, ds, feats) for name, (ds, feats, _) in data.items() if name != held_out]
    identities = next(iter(data.values()))[2]
    started = time.perf_counter()
    trunk = pretrain_trunk(parts, identities, None, TrainSettings(seed=seed))
    trunk.save(path)
    blocks = ", ".join(b.name for b in trunk.transform.blocks)
    print(f"  trunk without {held_out} ({blocks}): {time.perf_counter() - started:.0f} s", flush=True)
    return path


def folds(dataset: RoutingDataset, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    groups = prompt_groups(dataset.prompts)
    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(dataset.n_prompts), groups=groups)]


def out_of_fold(
    dataset: RoutingDataset, feats: list[LayerFeatures], ids: list[EncoderIdentity], size: int | None,
    settings: TrainSettings, split: list[tuple[np.ndarray, np.ndarray]], probes: ProbeCache,
) -> np.ndarray:  # fmt: skip
    """Out-of-fold probabilities of routers fitted on ``size`` training prompts of each fold."""
    p = np.full(dataset.labels.shape, np.nan)
    for fold, (train, test) in enumerate(split):
        rng = np.random.default_rng(settings.seed + fold)
        rows = (
            train if size is None or size >= len(train) else np.sort(rng.choice(train, size, replace=False))
        )
        sub = [LayerFeatures(np.asarray(f.values[rows]), f.poolings, f.layers) for f in feats]
        router, _ = fit_router(dataset.take(rows), sub, ids, settings, probe_cache=probes)
        test_feats = [LayerFeatures(np.asarray(f.values[test]), f.poolings, f.layers) for f in feats]
        p[test] = router.predict_proba_features(test_feats)
    return p


def figures(result: dict, key: str) -> dict[str, Any]:
    r = result[key]
    return {
        "auc_mean": r["auc_mean"],
        "aiq": r["aiq"],
        "savings_at_best_accuracy": r["savings_at_best_accuracy"]["savings"],
        "savings_within_1": r["savings_within"]["1"]["savings"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--sizes", default="100,300,1000,all")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(default_cache_dir()) / "label-efficiency")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(OUT.read_text())))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(default_cache_dir())
    data = {}
    for name in DATASETS:  # every dataset: each one's trunk is pretrained on the others
        ds = load(name, Path(default_cache_dir()) / "datasets")
        feats, ids = features_of(ds, store)
        data[name] = (ds, feats, ids)
    blob = json.loads(OUT.read_text()) if OUT.exists() else {}
    blob |= {"folds": args.folds, "seed": args.seed, "encoders": list(DEFAULT_ENCODERS)}
    sizes = [None if s == "all" else int(s) for s in args.sizes.split(",")]
    probes = ProbeCache(args.work / "probes")
    for name in args.datasets.split(","):
        ds, feats, ids = data[name]
        trunk = trunk_without(name, data, args.work, args.seed)
        split = folds(ds, args.folds, args.seed)
        blob.setdefault("trunk_blocks", {})[name] = [b.name for b in load_trunk(str(trunk)).transform.blocks]
        rows = blob.setdefault("datasets", {}).setdefault(name, {})
        for size in sizes:
            label = "all" if size is None else str(size)
            started = time.perf_counter()
            arms = {}
            for arm, settings in (
                ("default", TrainSettings(seed=args.seed)),
                ("pretrained", TrainSettings(seed=args.seed, init=str(trunk))),
            ):
                cache = args.work / f"{name}-{label}-{arm}-f{args.folds}-s{args.seed}.npy"
                if cache.exists():
                    arms[arm] = np.load(cache)
                else:
                    arms[arm] = out_of_fold(ds, feats, ids, size, settings, split, probes)
                    np.save(cache, arms[arm])
            predictions = Predictions(
                probabilities={"prefill": arms["pretrained"], "default": arms["default"]}
            )
            result = score(ds, predictions, eval_costs(ds, ds), n_boot=500, seed=args.seed)
            rows[label] = {
                "train_prompts_per_fold": size or int(np.mean([len(t) for t, _ in split])),
                "default": figures(result, "default"),
                "pretrained": figures(result, "prefill"),
                "delta_auc": result["paired"]["default"]["auc_mean"],
                "delta_aiq": result["paired"]["default"]["aiq"],
                "seconds": time.perf_counter() - started,
            }
            print(f"{name} N={label}: {json.dumps(rows[label])}", flush=True)
            OUT.write_text(json.dumps(blob, indent=1))
    print(markdown_table(blob))


def markdown_table(blob: dict) -> str:
    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.1%}"

    lines = [
        "| dataset | training prompts | mean AUC: default → pretrained | Δ AUC (95% CI) | "
        "savings at best's accuracy: default → pretrained | within 1 pt: default → pretrained |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in blob.get("datasets", {}).items():
        for label, row in rows.items():
            d, p, delta = row["default"], row["pretrained"], row["delta_auc"]
            lines.append(
                f"| {name} | {label} | {d['auc_mean']:.3f} → {p['auc_mean']:.3f} | "
                f"{delta['mean']:+.3f} [{delta['ci'][0]:+.3f}, {delta['ci'][1]:+.3f}] | "
                f"{pct(d['savings_at_best_accuracy'])} → {pct(p['savings_at_best_accuracy'])} | "
                f"{pct(d['savings_within_1'])} → {pct(p['savings_within_1'])} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
