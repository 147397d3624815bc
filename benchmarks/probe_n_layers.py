"""Evidence for how many layers the ``fisher`` strategy should pick (n), and for ``all-mean``.

On the bundled training rows (SmolLM2, cached features), per target: the CV-AUC of a logistic
regression on the top-n layers by out-of-fold J_lda (each layer standardised and PCA-reduced
inside the folds, then concatenated), for n = 1..3, beside the single best-by-AUC layer and the
``all-mean`` recipe (every layer standardised, concatenated, PCA-128: all 31 of SmolLM2-135M's
layers, 0 = the embedding output to 30, as the trainer's ``all-mean``; ``all_mean_layers`` in the
output lists them). Needs the probe reports
``docs/probes/bundled_{mean,last}.json`` (``prefill-router probe bundled --json ...``).
Writes ``benchmarks/results/probe_n_layers.json``.

Run: ``.venv/bin/python benchmarks/probe_n_layers.py``
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

from prefill_router import RoutingDataset
from prefill_router.data.dataset import LABEL_THRESHOLD
from prefill_router.encode import Encoder, FeatureStore, default_cache_dir, extract_features

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "probe_n_layers.json"
POOLINGS = ("mean",)  # mean pooling only: the last-token run doubles the ~5 minutes


def cv_auc(blocks: list[np.ndarray], y: np.ndarray, k: int = 128, seed: int = 0) -> float:
    """5-fold CV-AUC of logistic regression on the concatenation of per-block standardised PCA-k."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    scores = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(blocks[0], y):
        parts_train, parts_test = [], []
        for block in blocks:
            scaler = StandardScaler().fit(block[train])
            solver = "randomized" if block.shape[1] > 4 * k else "auto"
            pca = PCA(min(k, block.shape[1]), svd_solver=solver, random_state=seed)
            pca.fit(scaler.transform(block[train]))
            parts_train.append(pca.transform(scaler.transform(block[train])))
            parts_test.append(pca.transform(scaler.transform(block[test])))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(max_iter=2000).fit(np.hstack(parts_train), y[train])
        scores.append(roc_auc_score(y[test], model.decision_function(np.hstack(parts_test))))
    return float(np.mean(scores))


def main() -> None:
    train = RoutingDataset.load("bundled").select(split="train")
    stored = extract_features(Encoder(), train.prompts.tolist(), FeatureStore(default_cache_dir()))
    labels = (train.labels >= LABEL_THRESHOLD).astype(int)
    out: dict[str, object] = {"n_rows": train.n_prompts, "pca_k": 128, "folds": 5}
    for pooling in POOLINGS:
        report = json.loads((ROOT / "docs" / "probes" / f"bundled_{pooling}.json").read_text())
        x = np.asarray(stored.pooled(pooling), dtype=np.float32)  # (N, L, H)
        started = time.perf_counter()
        # Every stored layer, layer 0 included, as the trainer's all-mean. (Layer 0 used to be skipped,
        # a leftover from when "last" ran too: there it is constant, so standardised to zeros anyway.)
        all_mean = x.reshape(len(x), -1)
        all_mean_layers = [int(layer) for layer in stored.key.layers]
        rows = {}
        for j, name in enumerate(train.target_names):
            layers = report["targets"][name]["layers"]
            by_lda = [r["layer"] for r in sorted(layers, key=lambda r: -r["fisher_j_lda"])]
            best_auc = max(layers, key=lambda r: r["cv_auc"])
            row = {
                f"fisher_n{n}": cv_auc([x[:, layer] for layer in by_lda[:n]], labels[:, j]) for n in (1, 2, 3)
            }
            row["probe_best_auc_layer"] = best_auc["cv_auc"]
            row["all_mean"] = cv_auc([all_mean], labels[:, j])
            rows[name] = row
            print(pooling, name, {k: round(v, 4) for k, v in row.items()}, flush=True)
        means = {key: float(np.mean([r[key] for r in rows.values()])) for key in next(iter(rows.values()))}
        out[pooling] = {
            "per_target": rows,
            "mean": means,
            "seconds": time.perf_counter() - started,
            "all_mean_n_layers": len(all_mean_layers),
            "all_mean_layers": all_mean_layers,
        }
        print(pooling, "mean", {k: round(v, 4) for k, v in means.items()}, flush=True)
        print(pooling, f"all-mean read {len(all_mean_layers)} layers: {all_mean_layers}", flush=True)
    RESULTS.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
