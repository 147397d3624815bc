"""What the probes' move onto the router's PCA changed (probe.fit_pca since issue 18).

The layer probes used to standardise each layer with torch (ddof 1) and project it on the top-k
eigenvectors of a float32 ``eigh``; the router's feature transform uses scikit-learn's
StandardScaler + PCA (its randomised solver on these 5,608 x 576 rows). Since both call
``probe.fit_pca``, layers are chosen on the features the router is trained on. This script runs the
probes both ways on the bundled training rows (SmolLM2 bf16, cached features of every layer, mean
and last pooling, CV-AUC on) and writes ``benchmarks/results/probe_pca.json``: per target the layer
J_lda picks, the best layer by CV-AUC, the Spearman correlation of J_lda with CV-AUC and the AUC
the pick loses, the largest changes of J, J_lda, d_eff and CV-AUC, and the seconds each way.

Run (one core, as the committed figures): ``taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python
benchmarks/probe_pca.py`` after ``prefill-router encode bundled`` (it never encodes new prompts
when the features are cached).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefill_router import RoutingDataset, probe
from prefill_router.encode import Encoder, FeatureStore, default_cache_dir, extract_features
from prefill_router.probe import ProbeReport, ProbeSettings, probe_layers

RESULTS = Path(__file__).resolve().parent / "results" / "probe_pca.json"
QUANTITIES = ("fisher_j", "fisher_j_lda", "d_eff", "cv_auc")


def eigh_reduction(
    train: torch.Tensor, test: torch.Tensor, k: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's reduction before it shared the router's PCA (``seed`` unused: eigh is exact)."""
    mean = train.mean(dim=1, keepdim=True)
    std = train.std(dim=1, keepdim=True).clamp(min=1e-6)
    a, b = (train - mean) / std, (test - mean) / std
    k = min(k, a.shape[1] - 1, a.shape[2])
    _, vectors = torch.linalg.eigh(a.transpose(1, 2) @ a)  # ascending
    top = vectors[..., -k:]
    return a @ top, b @ top


def summary(report: ProbeReport) -> dict[str, Any]:
    """Per target: the J_lda pick, the best layer by CV-AUC, Spearman(J_lda, AUC), the AUC lost."""
    targets = {
        name: {
            "chosen": t.chosen,
            "best_by_auc": t.best_by_auc,
            "best_cv_auc": max(p.cv_auc for p in t.layers),
            "spearman_j_lda_auc": t.spearman_j_lda_auc,
            "auc_lost": t.auc_lost,
        }
        for name, t in report.targets.items()
    }
    values = list(targets.values())
    return {
        "seconds": report.seconds,
        "mean_best_cv_auc": float(np.mean([v["best_cv_auc"] for v in values])),
        "median_spearman_j_lda_auc": float(np.median([v["spearman_j_lda_auc"] for v in values])),
        "auc_lost_mean": float(np.mean([v["auc_lost"] for v in values])),
        "auc_lost_max": float(max(v["auc_lost"] for v in values)),
        "targets": targets,
    }


def changes(new: ProbeReport, old: ProbeReport) -> dict[str, Any]:
    """Largest and mean absolute (and relative) change of each probe quantity over layers x targets."""
    out: dict[str, Any] = {}
    for quantity in QUANTITIES:
        pairs = np.array(
            [
                (getattr(a, quantity), getattr(b, quantity))
                for name in new.targets
                for a, b in zip(new.targets[name].layers, old.targets[name].layers, strict=True)
            ]
        )
        diff = np.abs(pairs[:, 0] - pairs[:, 1])
        out[quantity] = {
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
            "max_rel": float((diff / np.abs(pairs[:, 1])).max()),
        }
    out["same_pick"] = sum(new.targets[n].chosen == old.targets[n].chosen for n in new.targets)
    out["n_targets"] = len(new.targets)
    return out


def main() -> None:
    train = RoutingDataset.load("bundled").select(split="train")
    stored = extract_features(Encoder(), train.prompts.tolist(), FeatureStore(default_cache_dir()))
    out: dict[str, Any] = {
        "n_rows": train.n_prompts,
        "layers": list(stored.key.layers),
        "settings": "ProbeSettings()",
    }
    for pooling in ("mean", "last"):
        x = np.asarray(stored.pooled(pooling), dtype=np.float32)
        started = time.perf_counter()
        new = probe_layers(x, train.labels, train.target_names, stored.key.layers, ProbeSettings())
        new.seconds = time.perf_counter() - started
        shared = probe._standardise_pca
        probe._standardise_pca = eigh_reduction  # type: ignore[assignment]
        try:
            started = time.perf_counter()
            old = probe_layers(x, train.labels, train.target_names, stored.key.layers, ProbeSettings())
            old.seconds = time.perf_counter() - started
        finally:
            probe._standardise_pca = shared
        out[pooling] = {"router_pca": summary(new), "eigh": summary(old), "changes": changes(new, old)}
        print(pooling, json.dumps(out[pooling]["changes"]), flush=True)
    RESULTS.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
