"""The probe figure: per target, CV-AUC, J_lda, trace J and d_eff against layer depth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from prefill_router._files import atomic_path
from prefill_router.probe import ProbeReport


def plot_probes(reports: dict[str, ProbeReport], path: str | Path, *, title: str = "") -> Path:
    """Save a PNG with one panel per target; several encoders share each panel (compared by AUC).

    Left axis: CV-AUC (solid). Right axis, each scaled to [0, 1] over layers: out-of-fold J_lda
    (dashed), trace J (dotted) and d_eff (dash-dot), drawn for the first encoder.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(reports.values()))
    names = [n for n, t in first.targets.items() if t.layers]
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), dpi=110, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pairs = []
    for ax, name in zip(axes.flat, names, strict=False):
        twin = ax.twinx()
        pairs.append((ax, twin))
        for e, (encoder, report) in enumerate(reports.items()):
            target = report.targets.get(name)
            if target is None or not target.layers:
                continue
            layers = [p.layer for p in target.layers]
            ax.plot(
                layers,
                [p.cv_auc for p in target.layers],
                color=colours[e % 10],
                lw=2,
                label=f"{encoder} CV-AUC",
            )
            if e == 0:
                for key, style, label in (
                    ("fisher_j_lda", "--", "J_lda"),
                    ("fisher_j", ":", "trace J"),
                    ("d_eff", "-.", "d_eff"),
                ):
                    values = np.array([getattr(p, key) for p in target.layers])
                    span = np.ptp(values) or 1.0
                    twin.plot(
                        layers,
                        (values - values.min()) / span,
                        style,
                        color="grey",
                        lw=1,
                        label=f"{label} (scaled)",
                    )
        t0 = first.targets[name]
        rho = f"ρ(J_lda, AUC) {t0.spearman_j_lda_auc:+.2f}, ρ(J, AUC) {t0.spearman_j_auc:+.2f}"
        ax.set_title(f"{name}\n{rho}", fontsize=8)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("CV-AUC", fontsize=8)
        twin.set_ylim(-0.05, 1.05)
        twin.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles: list[Any] = []
    labels: list[str] = []
    for axis in pairs[0] if pairs else ():
        h, lab = axis.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title or "layer probes", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
