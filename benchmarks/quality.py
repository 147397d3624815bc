"""Routing quality on the real datasets: ours vs every baseline, under grouped K-fold CV.

    .venv/bin/python benchmarks/quality.py llmrouter            # bundled LLMRouter: CV + its own split
    .venv/bin/python benchmarks/quality.py mmlu-pro             # all 12,032 prompts
    .venv/bin/python benchmarks/quality.py routellm             # all 15,344 prompts
    .venv/bin/python benchmarks/quality.py mmlu-pro --limit 3000   # a seeded sample, for a quick look

Every prompt is scored out of fold (folds grouped by normalised prompt text); the router is refit
per fold with the default recipe (``TrainSettings()`` on ``DEFAULT_ENCODERS``) and the baselines
are trained on the same rows. ``--limit N`` takes a seeded random sample of N prompts
(stated in the results). Writes ``benchmarks/results/quality_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from prefill_router.cli._evaluate import print_headline
from prefill_router.data.dataset import RoutingDataset
from prefill_router.data.importers import import_dataset
from prefill_router.data.prices import builtin_prices
from prefill_router.encode import Encoder, FeatureStore, default_cache_dir
from prefill_router.evaluate import baselines as bl
from prefill_router.evaluate.report import LABELS, ORDER
from prefill_router.evaluate.run import cross_validated, eval_costs, feature_set, predict_rows, score
from prefill_router.train import ProbeCache, TrainSettings
from prefill_router.train.fit import DEFAULT_ENCODERS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "benchmarks" / "results"
SOURCES = {
    "mmlu-pro": ("mmlu-pro", SHARED / "mmlu_pro" / "eval_results"),
    "routellm": ("routellm", SHARED / "routellm"),
}


def load(name: str, work: Path) -> RoutingDataset:
    """The dataset: bundled for llmrouter, else imported once from ../shared into ``work``."""
    if name == "llmrouter":
        return RoutingDataset.load("bundled")
    kind, source = SOURCES[name]
    path = work / f"{name}.parquet"
    if not path.exists():
        import_dataset(kind, source, prices=builtin_prices()).dataset.save(path)
    return RoutingDataset.load(path)


def markdown_table(result: dict) -> str:
    """The README table of one evaluation: ours vs each baseline, with the paired AUC difference."""
    lines = [
        "| router | mean AUC | Δ AUC ours − it (95% CI) | argmax gap captured (95% CI) | cost savings | "
        "gap @ ≥50% savings | gap @ ≥74.31% savings | AIQ | savings at best single's accuracy | "
        "savings within 1 pt (calls to best) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    paired = result.get("paired", {})

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.1%}"

    for key in [k for k in ORDER if k in result]:
        r, argmax = result[key], result[key]["argmax"]
        ci = argmax.get("ci", {}).get("gap_captured") or [None, None]
        diff = paired.get(key, {}).get("auc_mean")
        delta = f"{diff['mean']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]" if diff else "–"
        auc = "–" if r["auc_mean"] is None else f"{r['auc_mean']:.3f}"
        name = f"**{LABELS[key]}**" if key == "prefill" else LABELS.get(key, key)
        at = r["gap_captured_at_savings"]
        best = r.get("savings_at_best_accuracy") or {}
        within = (r.get("savings_within") or {}).get("1") or {}
        to_best = "" if within.get("share_to_best") is None else f" ({pct(within['share_to_best'])})"
        lines.append(
            f"| {name} | {auc} | {delta} | {pct(argmax['gap_captured'])} [{pct(ci[0])}, {pct(ci[1])}] | "
            f"{pct(argmax['cost_savings'])} | {pct(at.get('0.5'))} | {pct(at.get('0.7431'))} | "
            f"{r['aiq']:.3f} | {pct(best.get('savings'))} | {pct(within.get('savings'))}{to_best} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["llmrouter", *SOURCES])
    parser.add_argument("--limit", type=int, help="seeded random sample of N prompts")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--baselines", default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(default_cache_dir()) / "datasets")
    parser.add_argument("--table", action="store_true", help="only print the README tables of saved results")
    args = parser.parse_args()
    if args.table:
        saved = json.loads((RESULTS / f"quality_{args.dataset}.json").read_text())
        for part in ("cv", "split"):
            if part in saved:
                print(f"\n{saved[part]['setup']['where']}:\n\n{markdown_table(saved[part])}")
        return
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = load(args.dataset, args.work)
    n_all = dataset.n_prompts
    if args.limit and args.limit < n_all:
        rows = np.sort(np.random.default_rng(args.seed).choice(n_all, args.limit, replace=False))
        dataset = dataset.take(rows)
    names = bl.parse_baselines(args.baselines)
    settings = TrainSettings(seed=args.seed)
    encoders = [Encoder(name) for name in DEFAULT_ENCODERS]
    store = FeatureStore(default_cache_dir())
    print(f"{args.dataset}: {dataset.n_prompts} of {n_all} prompts; encoding (cached)...", flush=True)
    features = feature_set(
        encoders, dataset.prompts.tolist(), store, need_embed=any(n.endswith("-embed") for n in names)
    )
    probes = ProbeCache(Path(default_cache_dir()) / "probes")
    out = {
        "dataset": args.dataset,
        "n_prompts": dataset.n_prompts,
        "n_available": n_all,
        "sampled": bool(args.limit and args.limit < n_all),
        "settings": settings.to_json(),
        "encoders": list(DEFAULT_ENCODERS),
    }
    step = lambda text: print(f"  {text}", flush=True)  # noqa: E731
    predictions = cross_validated(
        dataset, features, names, settings, args.folds, seed=args.seed, on_step=step, probe_cache=probes
    )
    cv = score(dataset, predictions, eval_costs(dataset, dataset), seed=args.seed)
    cv["setup"] = {
        "where": f"grouped {args.folds}-fold CV over {dataset.n_prompts} prompts",
        "knn_k": predictions.knn_k,
    }
    out["cv"] = cv
    print_headline(cv, cv["setup"]["where"])
    if args.dataset == "llmrouter":
        train_rows, test_rows = (
            np.flatnonzero(dataset.splits == "train"),
            np.flatnonzero(dataset.splits == "test"),
        )
        test, split = predict_rows(
            None, dataset, features, train_rows, test_rows, names, settings, seed=args.seed, on_step=step,
            probe_cache=probes,
        )  # fmt: skip
        out["split"] = score(test, split, eval_costs(dataset, test), seed=args.seed)
        out["split"]["setup"] = {
            "where": "LLMRouter's own split (cleaned test: 381 prompts)",
            "knn_k": split.knn_k,
        }
        print_headline(out["split"], out["split"]["setup"]["where"])
    out["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"quality_{args.dataset}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"{path} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
