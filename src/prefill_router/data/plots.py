"""The dataset figure: each target's cost and accuracy beside the oracle's."""

from __future__ import annotations

from pathlib import Path

from prefill_router._files import atomic_path
from prefill_router.data.summary import DatasetSummary


def plot_summary(summary: DatasetSummary, path: str | Path, *, title: str = "") -> Path:
    """Save a PNG: targets as points on the cost-accuracy plane, the oracle as a star.

    Accuracies are on each target's own labelled rows; the oracle on the complete rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    priced = [(t, t.mean_cost_usd * 1000) for t in summary.targets if t.mean_cost_usd is not None]
    for t, cost_per_1k in priced:
        ax.scatter(cost_per_1k, t.accuracy, s=40, color="tab:blue", marker="s" if t.price_derived else "o")
        ax.annotate(
            t.name,
            (cost_per_1k, t.accuracy),
            fontsize=7,
            xytext=(4, 2),
            textcoords="offset points",
        )
    if summary.oracle_cost_usd is not None:
        ax.scatter(
            summary.oracle_cost_usd * 1000,
            summary.oracle_accuracy,
            s=160,
            marker="*",
            color="tab:red",
            label="oracle",
        )
    ax.axhline(
        summary.best_single["accuracy"],
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"best single ({summary.best_single['name']})",
    )
    ax.axhline(summary.oracle_accuracy, color="tab:red", linestyle=":", linewidth=1, label="oracle accuracy")
    ax.set_xlabel("mean cost, USD per 1,000 prompts")
    ax.set_ylabel("accuracy")
    headline = f"oracle {summary.oracle_accuracy:.3f} vs best single {summary.best_single['accuracy']:.3f}"
    ax.set_title(f"{title}: {headline}" if title else headline, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
