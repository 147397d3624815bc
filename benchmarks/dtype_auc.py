"""Evidence for the default compute dtype: do bfloat16 features predict as well as float32 ones?

Encodes the same random sample of the bundled training prompts with SmolLM2 in float32 and in
bfloat16 (all layers, mean and last pooling), then compares, per target x pooling x layer, the
5-fold cross-validated ROC-AUC of a logistic regression (standardised, PCA to 64 dims), and the
cosine similarity of the two feature sets. Writes ``benchmarks/results/dtype_auc.json``.

Timing: each dtype's features are extracted into a fresh, empty temporary feature store, so every
chunk is computed and ``timing`` holds encoding times (``extract_features``, chunking and the
store's writes included; the encoder's load is not), never reads of features cached by an earlier
run; ``timing_is_encoding`` and each dtype's ``computed_chunks`` / ``reused_chunks`` record it.
The AUCs and cosines use the features that timed run produced (copied out before the temporary
store goes), so the default feature cache is neither read nor written.

Run: ``.venv/bin/python benchmarks/dtype_auc.py [--n 1000]``
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from prefill_router import RoutingDataset
from prefill_router.data.dataset import LABEL_THRESHOLD
from prefill_router.encode import Encoder, FeatureStore, extract_features

RESULTS = Path(__file__).resolve().parent / "results" / "dtype_auc.json"


def cv_auc(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """5-fold stratified CV ROC-AUC of standardise -> PCA(64) -> logistic regression."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), PCA(64, random_state=seed), LogisticRegression(max_iter=2000, C=0.1)
    )
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cross_val_score(model, x, y, cv=folds, scoring="roc_auc").mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--n", type=int, default=1000, help="training prompts sampled from the bundled dataset"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layer-step", type=int, default=3, help="probe every k-th layer (0, k, 2k, ...)")
    args = parser.parse_args()
    train = RoutingDataset.load("bundled").select(split="train")
    rows = np.sort(np.random.default_rng(args.seed).choice(train.n_prompts, size=args.n, replace=False))
    sample = train.take(rows)
    prompts = sample.prompts.tolist()
    features, timing = {}, {}
    for dtype in ("float32", "bfloat16"):
        encoder = Encoder("smollm2-135m", dtype=dtype)
        # An empty store: every chunk is encoded, so the time is encoding, not a cache read.
        with tempfile.TemporaryDirectory(prefix="dtype_auc_") as scratch:
            started = time.perf_counter()
            stored = extract_features(encoder, prompts, FeatureStore(scratch))
            seconds = time.perf_counter() - started
            features[dtype] = np.array(stored.features, dtype=np.float32)  # a copy: the store goes
            timing[dtype] = {
                "seconds": seconds,
                "tokens": stored.n_tokens,
                "computed_chunks": stored.computed_chunks,
                "reused_chunks": stored.reused_chunks,
                "is_encoding_time": stored.reused_chunks == 0,
                "threads": encoder.threads,
                "prompts_per_s": len(prompts) / seconds,
                "tokens_per_s": stored.n_tokens / seconds,
            }
            del stored  # its memmap lives in the temporary store
        print(dtype, timing[dtype], flush=True)
    a, b = features["float32"], features["bfloat16"]
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    labels = (sample.labels >= LABEL_THRESHOLD).astype(int)
    per: list[dict[str, object]] = []
    for j, target in enumerate(sample.target_names):
        y = labels[:, j]
        if y.min() == y.max():
            continue
        for p, pooling in enumerate(("mean", "last")):
            for layer in range(0, a.shape[2], args.layer_step):
                auc = {d: cv_auc(features[d][:, p, layer], y, args.seed) for d in features}
                per.append({"target": target, "pooling": pooling, "layer": layer, **auc})
        print(target, "done", flush=True)
    diffs = np.array([r["bfloat16"] - r["float32"] for r in per])  # type: ignore[operator]
    summary = {
        "n_prompts": args.n,
        "seed": args.seed,
        "layers_probed": list(range(0, a.shape[2], args.layer_step)),
        "machine": platform.processor() or platform.machine(),
        "timing": timing,
        "timing_is_encoding": all(t["is_encoding_time"] for t in timing.values()),
        "timing_note": "extract_features into an empty temporary feature store: every chunk encoded",
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "auc_diff_max_abs": float(np.abs(diffs).max()),
        "auc_diff_mean": float(diffs.mean()),
        "mean_auc": {d: float(np.mean([r[d] for r in per])) for d in features},
        "best_layer_auc": {
            pooling: {
                d: float(
                    np.mean(
                        [
                            max(r[d] for r in per if r["target"] == t and r["pooling"] == pooling)
                            for t in {r["target"] for r in per}
                        ]
                    )
                )
                for d in features
            }
            for pooling in ("mean", "last")
        },
        "per_target_layer": per,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_target_layer"}, indent=1))


if __name__ == "__main__":
    main()
