"""The recipe study: which routing recipe to ship, decided under grouped 5-fold CV on all prompts.

    .venv/bin/python benchmarks/recipe.py llmrouter                 # every variant, all 5,989 prompts
    .venv/bin/python benchmarks/recipe.py mmlu-pro --variants pool-both,both+aux
    .venv/bin/python benchmarks/recipe.py routellm --table          # print the README table of saved results

Each variant is a full router recipe (encoders, poolings, layers, PCA, net, ensemble) refit per
fold of a grouped 5-fold split of the whole dataset (folds grouped by normalised prompt text), so
every prompt is scored out of fold; kNN on MiniLM embeddings (the paper's baseline) and the same
net on MiniLM (trunk-embed) are scored on the same folds. Each variant is compared with the v1
recipe (the default before this study; :data:`V1`) on the same prompts: mean AUC and AIQ with
paired bootstrap 95% intervals, argmax gap captured, gap captured at 50% / 74.31% savings, and the
savings against the best single target at its accuracy and within 1 / 2 points of it.

Out-of-fold probabilities are cached per variant (``--work``, default the user cache), and the fit's
layer probes per fold, so an interrupted study resumes and a new variant costs only its own fits.
A variant that cannot run on a dataset (an encoder not installed, too few rows) is skipped with the
reason in the JSON. Writes ``benchmarks/results/recipe_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import RESULTS, load

from prefill_router.data.dataset import RoutingDataset
from prefill_router.encode import Encoder, FeatureStore, default_cache_dir, extract_features
from prefill_router.errors import PrefillRouterError
from prefill_router.evaluate import baselines as bl
from prefill_router.evaluate.run import FeatureSet, Predictions, cross_validated, cv_folds, eval_costs, score
from prefill_router.train import EncoderIdentity, LayerFeatures, NetSettings, ProbeCache, TrainSettings

SMOL, MINILM, GEMMA = "smollm2-135m", "minilm-l6", "gemma3-270m"
#: A pool like the one where a higher AUC did not give a better curve: one strong, dear model
#: (gemini-1.5-pro-002, $1.25 / $5 per M tokens, the best single) and ten open ones 2-25x cheaper.
DOMINANT = (
    "gemini-1.5-pro-002", "Meta-Llama-3_1-70B-Instruct", "Mixtral-8x7B-Instruct-v0.1", "Yi-34B",
    "Qwen1.5-72B-Chat", "Meta-Llama-3_1-8B-Instruct", "Mistral-7B-Instruct-v0.2", "gemma-7b",
    "Phi-3-mini-4k-instruct", "mathstral-7B", "Llama-2-13b-hf",
)  # fmt: skip
DATASETS = ("llmrouter", "mmlu-pro", "routellm", "mmlu-pro-dominant")
BASELINES = ("knn-embed", "trunk-embed")


@dataclass(frozen=True)
class Variant:
    """One recipe: the encoders it reads (name, compute dtype) and its training settings."""

    name: str
    description: str
    encoders: tuple[tuple[str, str], ...] = ((SMOL, "bfloat16"),)
    settings: dict[str, Any] = field(default_factory=dict)

    def train_settings(self, seed: int) -> TrainSettings:
        """The TrainSettings of this variant: the v1 recipe (:data:`V1`) where it says nothing, so a
        variant means the same whatever today's defaults are."""
        blob = V1 | dict(self.settings)
        net = blob.pop("net", {})
        return TrainSettings(seed=seed, **blob, net=replace(NetSettings(), **net))

    def digest(self, seed: int) -> str:
        """What the cached out-of-fold probabilities depend on."""
        settings = self.train_settings(seed).to_json()
        for key, value in DIGEST_OMITS.items():  # cached results stay valid when a setting is added
            if settings.get(key) == value:
                del settings[key]
        blob = {"encoders": self.encoders, "settings": settings}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


#: The v1 recipe's settings that this study changes (the defaults before it); every other setting is
#: TrainSettings' default.
V1: dict[str, Any] = {"pooling": "mean", "aux_tasks": False, "depth_tolerance": 0.0, "calibration_share": 0.0}
#: Settings added after this study's first results, at the value that means "as before": left out
#: of a variant's digest, so the out-of-fold probabilities already cached still count.
DIGEST_OMITS: dict[str, Any] = {"depth_tolerance": 0.0, "calibration_share": 0.0}
#: The recipe shipped as the default after this study (bold in the tables).
CHOSEN = "both+aux+depth-0.01"

SMOL_MINILM = ((SMOL, "bfloat16"), (MINILM, "bfloat16"))
SMOL_GEMMA = ((SMOL, "bfloat16"), (GEMMA, "bfloat16"))
VARIANTS = [
    Variant("v1", "the v1 default: SmolLM2 mean, fisher n=1, PCA-128, 256-128 trunk, keep 5 of 10"),
    Variant("pool-last", "last-token pooling", settings={"pooling": "last"}),
    Variant("pool-auto", "per target, the pooling with the higher J_lda", settings={"pooling": "auto"}),
    Variant("pool-both", "per target, a mean and a last-token block", settings={"pooling": "both"}),
    Variant("layers-2", "top-2 layers per target (mean)", settings={"n_layers": 2}),
    Variant("layers-3", "top-3 layers per target (mean)", settings={"n_layers": 3}),
    Variant("all-mean", "every layer, concatenated, PCA-128 (Switchyard)", settings={"layers": "all-mean"}),
    Variant("pca-64", "PCA-64 per block", settings={"pca_k": 64}),
    Variant("pca-256", "PCA-256 per block", settings={"pca_k": 256}),
    Variant("trunk-512", "a wider trunk: 512-256", settings={"net": {"hidden": (512, 256)}}),
    Variant("trunk-128", "a narrower trunk: 128-64", settings={"net": {"hidden": (128, 64)}}),
    Variant("keep-10", "keep all 10 nets", settings={"keep": 10}),
    Variant("keep-2", "keep the best 2 of 10 nets", settings={"keep": 2}),
    Variant("float32", "SmolLM2 run in float32, not bfloat16", encoders=((SMOL, "float32"),)),
    Variant("fuse-minilm", "SmolLM2 mean block + a MiniLM block per target", encoders=SMOL_MINILM),
    Variant("gemma", "Gemma-3-270M alone (mean)", encoders=((GEMMA, "bfloat16"),)),
    Variant("fuse-gemma", "SmolLM2 + Gemma-3-270M blocks per target", encoders=SMOL_GEMMA),
    Variant("both+minilm", "SmolLM2 mean+last + MiniLM", encoders=SMOL_MINILM, settings={"pooling": "both"}),
    Variant("aux-tasks", "v1 + auxiliary task heads", settings={"aux_tasks": True}),
    Variant("both+aux", "mean + last + auxiliary tasks", settings={"pooling": "both", "aux_tasks": True}),
    Variant("auto+minilm", "auto pooling + MiniLM", encoders=SMOL_MINILM, settings={"pooling": "auto"}),
    Variant("both-pca64", "mean + last blocks, PCA-64", settings={"pooling": "both", "pca_k": 64}),
    Variant("both+minilm-pca64", "mean + last + MiniLM, PCA-64", encoders=SMOL_MINILM,
            settings={"pooling": "both", "pca_k": 64}),
    Variant("pairwise", "v1 + a pairwise ranking term (weight 1)", settings={"net": {"pairwise": 1.0}}),
    Variant("both+aux+pair", "mean + last + auxiliary tasks + pairwise ranking",
            settings={"pooling": "both", "aux_tasks": True, "net": {"pairwise": 1.0}}),
    Variant("both+minilm+aux", "mean + last + MiniLM + auxiliary tasks", encoders=SMOL_MINILM,
            settings={"pooling": "both", "aux_tasks": True}),
    # Depth-aware layer choice (issue 15): the deepest block sets every decision's latency.
    Variant("both+aux+depth-0.01", "both+aux, blocks no deeper than 1% mean J_lda loss allows",
            settings={"pooling": "both", "aux_tasks": True, "depth_tolerance": 0.01}),
    Variant("both+aux+depth-0.02", "both+aux, blocks no deeper than 2% mean J_lda loss allows",
            settings={"pooling": "both", "aux_tasks": True, "depth_tolerance": 0.02}),
    Variant("both+aux+depth-0.03", "both+aux, blocks no deeper than 3% mean J_lda loss allows",
            settings={"pooling": "both", "aux_tasks": True, "depth_tolerance": 0.03}),
    Variant("both+aux+depth-0.05", "both+aux, blocks no deeper than 5% mean J_lda loss allows",
            settings={"pooling": "both", "aux_tasks": True, "depth_tolerance": 0.05}),
    # Calibration rows held out of all training (issue 14): what they cost the router.
    Variant("both+aux+depth-0.01+cal-0.1", "the default recipe with 10% of prompts held out for floors",
            settings={"pooling": "both", "aux_tasks": True, "depth_tolerance": 0.01,
                      "calibration_share": 0.1}),
]  # fmt: skip
BY_NAME = {v.name: v for v in VARIANTS}
#: Post-hoc decision rules applied to a recipe's out-of-fold probabilities, to test whether the
#: policy's argmax over many noisy probabilities chases estimation noise: shrink each target's
#: probabilities toward its base rate (on the fold's training rows), or blend them with kNN's.
DECISION_RULES = {"shrink-0.7": ("shrink", 0.7), "knn-blend-0.3": ("knn", 0.3)}


class Features:
    """Every encoder's features of the dataset (loaded once, memory-mapped from the store)."""

    def __init__(self, dataset: RoutingDataset, store: FeatureStore) -> None:
        self.dataset, self.store = dataset, store
        self.loaded: dict[tuple[str, str], tuple[LayerFeatures, EncoderIdentity]] = {}

    def get(self, name: str, dtype: str) -> tuple[LayerFeatures, EncoderIdentity]:
        if (name, dtype) not in self.loaded:
            encoder = Encoder(name, dtype=dtype)
            print(f"  features: {name} ({dtype}), {self.dataset.n_prompts} prompts (cached)", flush=True)
            stored = extract_features(encoder, self.dataset.prompts.tolist(), self.store)
            features = LayerFeatures(stored.features, stored.key.poolings, stored.key.layers)
            self.loaded[(name, dtype)] = (features, EncoderIdentity.of(encoder))
        return self.loaded[(name, dtype)]

    def embed(self) -> np.ndarray:
        """L2-normalised MiniLM sentence embeddings, as the baselines use them."""
        embedder = Encoder(bl.EMBED_ENCODER, dtype="float32")
        stored = extract_features(
            embedder, self.dataset.prompts.tolist(), self.store, layers=[6], poolings="mean"
        )
        e = np.asarray(stored.features[:, 0, 0], dtype=np.float32)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def run_variant(
    variant: Variant, dataset: RoutingDataset, features: Features, args: argparse.Namespace, work: Path
) -> tuple[np.ndarray, float]:
    """Out-of-fold probabilities of one variant (cached) and the seconds its fits took."""
    path = work / f"{args.dataset}-{variant.name}-{variant.digest(args.seed)}-f{args.folds}.npz"
    if path.exists():
        cached = np.load(path)
        return cached["p"], float(cached["seconds"])
    pairs = [features.get(name, dtype) for name, dtype in variant.encoders]
    feature_set = FeatureSet([f for f, _ in pairs], None, [i for _, i in pairs])
    started = time.perf_counter()
    predictions = cross_validated(
        dataset, feature_set, (), variant.train_settings(args.seed), args.folds, seed=args.seed,
        on_step=lambda text: print(f"    {variant.name}: {text}", flush=True),
        probe_cache=ProbeCache(Path(default_cache_dir()) / "probes"),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    p = predictions.probabilities["prefill"]
    np.savez(path, p=p, seconds=seconds)
    return p, seconds


def run_baselines(dataset: RoutingDataset, features: Features, args: argparse.Namespace, work: Path) -> dict:
    settings = TrainSettings(seed=args.seed, **V1)
    tag = hashlib.sha256(json.dumps(settings.to_json(), sort_keys=True).encode()).hexdigest()[:16]
    path = work / f"{args.dataset}-baselines-{tag}-f{args.folds}.npz"
    if path.exists():
        cached = np.load(path)
        return {name: cached[name] for name in BASELINES}
    smol, identity = features.get(SMOL, "bfloat16")
    embed = features.embed()
    feature_set = FeatureSet([smol], embed, [identity], bl.embed_identity(bl.EMBED_ENCODER, "recipe-study"))
    predictions = cross_validated(
        dataset, feature_set, BASELINES, settings, args.folds, seed=args.seed,
        on_step=lambda text: print(f"    baselines: {text}", flush=True) if "baseline" in text else None,
        probe_cache=ProbeCache(Path(default_cache_dir()) / "probes"),
    )  # fmt: skip
    out = {name: predictions.probabilities[name] for name in BASELINES}
    np.savez(path, **out)
    return out


def decision_variants(
    dataset: RoutingDataset, probabilities: dict[str, np.ndarray], knn: np.ndarray, args: argparse.Namespace
) -> dict[str, np.ndarray]:
    """Each :data:`DECISION_RULES` rule applied to v1's and the chosen recipe's probabilities."""
    base_rate = np.empty_like(knn)
    for train_rows, test_rows in cv_folds(dataset, args.folds, args.seed):
        base_rate[test_rows] = np.nanmean(dataset.labels[train_rows], axis=0)
    out = {}
    for base in ("v1", CHOSEN):
        if base not in probabilities:
            continue
        p = probabilities[base]
        for rule, (kind, weight) in DECISION_RULES.items():
            if kind == "shrink":
                out[f"{base}:{rule}"] = base_rate + weight * (p - base_rate)
            else:
                out[f"{base}:{rule}"] = (1 - weight) * p + weight * knn
    return out


def flipped(difference: dict | None) -> dict | None:
    """A paired difference "v1 − variant" as "variant − v1"."""
    if not difference or difference.get("mean") is None:
        return difference
    lo, hi = difference["ci"]
    return difference | {
        "mean": -difference["mean"],
        "ci": [None if hi is None else -hi, None if lo is None else -lo],
    }


def summary(result: dict, key: str) -> dict[str, Any]:
    """The figures of one router in the study's JSON; differences are this router minus v1."""
    r = result[key]
    paired = result.get("paired", {}).get(key, {})
    return {
        "auc_mean": r["auc_mean"],
        "delta_auc_vs_v1": flipped(paired.get("auc_mean")),
        "delta_aiq_vs_v1": flipped(paired.get("aiq")),
        "delta_argmax_accuracy_vs_v1": flipped(paired.get("argmax_accuracy")),
        "argmax": {k: r["argmax"][k] for k in ("accuracy", "gap_captured", "cost_savings")}
        | {"gap_captured_ci": r["argmax"]["ci"]["gap_captured"]},
        "aiq": r["aiq"],
        "gap_captured_at_savings": r["gap_captured_at_savings"],
        "apgr": r.get("apgr"),
        "savings_at_best_accuracy": r["savings_at_best_accuracy"],
        "savings_within": r["savings_within"],
    }


def markdown_table(blob: dict) -> str:
    """The README table: one row per variant (and the baselines), v1 first."""

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.1%}"

    def diff(d: dict | None, digits: int = 3) -> str:
        if not d or d.get("mean") is None:
            return "–"
        lo, hi = d["ci"]
        return f"{d['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"

    lines = [
        "| recipe | mean AUC | Δ AUC vs v1 (95% CI) | AIQ | Δ AIQ vs v1 (95% CI) | argmax gap | "
        "gap @ ≥50% savings | savings at best single's accuracy | within 1 pt | within 2 pt |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in blob["variants"].items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} |||||||||")
            continue
        at = row["savings_at_best_accuracy"]
        within = row["savings_within"]
        bold = f"**{name}**" if name == blob.get("chosen") else name
        lines.append(
            f"| {bold} | {row['auc_mean']:.4f} | {diff(row['delta_auc_vs_v1'])} | {row['aiq']:.4f} | "
            f"{diff(row['delta_aiq_vs_v1'], 4)} | {pct(row['argmax']['gap_captured'])} | "
            f"{pct(row['gap_captured_at_savings'].get('0.5'))} | {pct(at['savings'])} | "
            f"{pct(within['1']['savings'])} | {pct(within['2']['savings'])} |"
        )
    return "\n".join(lines)


def load_dataset(name: str) -> RoutingDataset:
    """One of :data:`DATASETS`; ``mmlu-pro-dominant`` is MMLU-Pro restricted to :data:`DOMINANT`."""
    work = Path(default_cache_dir()) / "datasets"
    if name == "mmlu-pro-dominant":
        return load("mmlu-pro", work).select(targets=list(DOMINANT))
    return load(name, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--variants", default="all", help="comma-separated names (default: all)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path(default_cache_dir()) / "recipe")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--table", action="store_true", help="only print the README table of saved results")
    args = parser.parse_args()
    out_path = RESULTS / f"recipe_{args.dataset}.json"
    if args.table:
        print(markdown_table(json.loads(out_path.read_text())))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v.name for v in VARIANTS] if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(BY_NAME)}")
    if "v1" not in names:
        names.insert(0, "v1")
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.dataset)
    features = Features(dataset, FeatureStore(default_cache_dir()))
    previous = json.loads(out_path.read_text()) if out_path.exists() else {}
    blob: dict[str, Any] = {
        "dataset": args.dataset, "n_prompts": dataset.n_prompts, "folds": args.folds, "seed": args.seed,
        "where": f"grouped {args.folds}-fold CV over all {dataset.n_prompts} prompts",
        "chosen": CHOSEN, "variants": {}, "seconds": {},
    }  # fmt: skip
    probabilities: dict[str, np.ndarray] = {}
    for name in names:
        variant = BY_NAME[name]
        print(f"{args.dataset}: {name} — {variant.description}", flush=True)
        try:
            probabilities[name], blob["seconds"][name] = run_variant(
                variant, dataset, features, args, args.work
            )
        except PrefillRouterError as exc:
            print(f"  skipped: {exc}", flush=True)
            blob["variants"][name] = {"skipped": str(exc), "description": variant.description}
    baselines = run_baselines(dataset, features, args, args.work)
    decisions = decision_variants(dataset, probabilities, baselines["knn-embed"], args)
    ordered = {"prefill": probabilities.pop("v1"), **probabilities, **decisions, **baselines}
    result = score(
        dataset,
        Predictions(probabilities=ordered),
        eval_costs(dataset, dataset),
        n_boot=args.bootstrap,
        seed=args.seed,
    )
    for name in names:
        if name in blob["variants"]:
            continue
        key = "prefill" if name == "v1" else name
        blob["variants"][name] = {"description": BY_NAME[name].description} | summary(result, key)
    for name in decisions:
        base, rule = name.split(":")
        description = f"decision rule on {base}: {rule} ({DECISION_RULES[rule][0]})"
        blob["variants"][name] = {"description": description} | summary(result, name)
    for name in BASELINES:
        blob["variants"][name] = {"description": f"baseline: {name}"} | summary(result, name)
    blob["yardstick"] = {k: result[k] for k in ("oracle", "best_single", "most_expensive")}
    # keep variants a partial run did not recompute
    for name, row in previous.get("variants", {}).items():
        blob["variants"].setdefault(name, row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(blob, indent=1))
    print(markdown_table(blob))
    print(out_path)


if __name__ == "__main__":
    main()
