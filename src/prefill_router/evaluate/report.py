"""The evaluation report: one self-contained HTML file with its figures embedded as PNG.

Figures: the cost-accuracy plane (the router's curve, every baseline's, the single targets, the
oracle), per-target ROC-AUC, reliability of the router's probabilities, and the layer probes the
router was fitted with. The headline table repeats the numbers of the JSON.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefill_router._files import atomic_path
from prefill_router.data.dataset import RoutingDataset
from prefill_router.train.calibration import reliability

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from prefill_router.evaluate.run import Predictions
    from prefill_router.policy import Router

ORDER = (
    "prefill",
    "knn-embed",
    "trunk-embed",
    "logreg-embed",
    "layer0",
    "random",
    "cheapest",
    "oracle_router",
)
LABELS = {"prefill": "prefill (ours)", "oracle_router": "oracle"}
PER_1K = 1000.0  # costs are shown per 1,000 prompts


def write_report(
    result: dict[str, Any],
    predictions: Predictions,
    evaluation: RoutingDataset,
    router: Router,
    folder: str | Path,
) -> Path:
    """Write ``folder/report.html`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    figures = [
        ("Cost and accuracy", _plane(result)),
        ("Per-target ROC-AUC", _auc_bars(result, evaluation.target_names)),
        ("Reliability of the router's probabilities", _reliability(predictions, evaluation)),
    ]
    probe = router.info.get("probe")
    if probe:
        figures.append(("Layer probes the router was fitted with", _probe(probe)))
    page = Path(folder) / "report.html"
    with atomic_path(page) as tmp:
        tmp.write_text(_html(result, figures), encoding="utf-8")
    return page


def headline_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per router in :data:`ORDER`: the numbers of the headline table."""
    rows = []
    for key in [k for k in ORDER if k in result]:
        r = result[key]
        rows.append(
            {
                "router": LABELS.get(key, key),
                "auc_mean": r["auc_mean"],
                "accuracy": r["argmax"]["accuracy"],
                "gap_captured": r["argmax"]["gap_captured"],
                "cost_savings": r["argmax"]["cost_savings"],
                "gap_at_50": r["gap_captured_at_savings"].get("0.5"),
                "gap_at_7431": r["gap_captured_at_savings"].get("0.7431"),
                "aiq": r["aiq"],
                "savings_at_best": r["savings_at_best_accuracy"]["savings"],
                "savings_within_1": r["savings_within"]["1"]["savings"],
                "savings_within_2": r["savings_within"]["2"]["savings"],
                "share_to_best_within_1": r["savings_within"]["1"].get("share_to_best"),
            }
        )
    return rows


# ---------------------------------------------------------------------- figures
def _plane(result: dict[str, Any]) -> Figure:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.6), dpi=110)
    for key in [k for k in ORDER if k in result and k not in ("cheapest", "oracle_router")]:
        curve = sorted(result[key]["curve"], key=lambda p: p["cost"])
        ours = key == "prefill"
        x, y = [p["cost"] * PER_1K for p in curve], [p["accuracy"] for p in curve]
        ax.plot(x, y, lw=2.6 if ours else 1.2, label=LABELS.get(key, key), zorder=3 if ours else 2)
    for name, single in result["singles"].items():
        ax.scatter(single["cost"] * PER_1K, single["accuracy"], color="grey", s=22, zorder=4)
        ax.annotate(
            name,
            (single["cost"] * PER_1K, single["accuracy"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    oracle = result["oracle"]
    ax.scatter(
        oracle["cost"] * PER_1K,
        oracle["accuracy"],
        marker="*",
        s=160,
        color="gold",
        edgecolor="black",
        zorder=5,
        label="oracle",
    )
    ax.axhline(
        result["best_single"]["accuracy"],
        color="grey",
        ls=":",
        lw=1,
        label=f"best single ({result['best_single']['name']})",
    )
    ax.set_xscale("log")
    ax.set_xlabel("cost per 1,000 prompts (USD, log scale)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _auc_bars(result: dict[str, Any], targets: list[str]) -> Figure:
    import matplotlib.pyplot as plt

    keys = [k for k in ORDER if k in result and result[k].get("targets")]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(targets) + 3), 4.6), dpi=110)
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        values = [_nan_if_none(result[key]["targets"][t]["auc"]) for t in targets]
        ax.bar(np.arange(len(targets)) + i * width, values, width, label=LABELS.get(key, key))
    ax.set_xticks(np.arange(len(targets)) + 0.4 - width / 2, targets, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0.45, 1.0)
    ax.set_ylabel("ROC-AUC")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _reliability(predictions: Predictions, evaluation: RoutingDataset) -> Figure:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    p_all = predictions.probabilities.get("prefill")
    if p_all is not None:
        for j, name in enumerate(evaluation.target_names):
            mean_p, rate, counts = reliability(p_all[:, j], evaluation.labels[:, j], bins=10)
            keep = counts >= 5
            ax.plot(mean_p[keep], rate[keep], marker="o", ms=3, lw=1, label=name)
    ax.set_xlabel("predicted P(correct)")
    ax.set_ylabel("observed rate correct")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _probe(probe: dict[str, Any] | list[dict[str, Any]]) -> Figure:
    """One panel per (encoder, pooling) the fit probed; routers of format 1 kept a single probe."""
    import matplotlib.pyplot as plt

    probes = probe if isinstance(probe, list) else [probe]
    fig, axes = plt.subplots(1, len(probes), figsize=(9 * min(len(probes), 2), 4.6), dpi=110, squeeze=False)
    for ax, one in zip(axes[0], probes, strict=True):
        layers = one["layers"]
        for name, values in one["fisher_j_lda"].items():
            line = ax.plot(layers, values, lw=1.2, label=name)[0]
            for layer in one["chosen"].get(name, []):
                ax.scatter(layer, values[layers.index(layer)], color=line.get_color(), s=40, zorder=3)
        ax.set_title(f"encoder e{one.get('encoder', 0)}, {one.get('pooling', 'mean')} pooling", fontsize=9)
        ax.set_xlabel("layer (0 = token embeddings)")
        ax.set_ylabel("out-of-fold Fisher J_lda (dots: chosen)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- html
def _png(fig: Figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _html(result: dict[str, Any], figures: list[tuple[str, Figure]]) -> str:
    setup = result.get("setup", {})
    columns: list[tuple[str, bool]] = [("auc_mean", False), ("accuracy", False), ("gap_captured", True)]
    columns += [("cost_savings", True), ("gap_at_50", True), ("gap_at_7431", True), ("aiq", False)]
    columns += [("savings_at_best", True), ("savings_within_1", True), ("savings_within_2", True)]
    columns += [("share_to_best_within_1", True)]
    rows = "".join(
        f"<tr><td>{html.escape(r['router'])}</td>"
        + "".join(f"<td>{_fmt(r[k], pct)}</td>" for k, pct in columns)
        + "</tr>"
        for r in headline_rows(result)
    )
    best, oracle = result["best_single"], result["oracle"]
    images = "".join(
        f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{_png(fig)}'>"
        for t, fig in figures
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>prefill-router evaluation</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>prefill-router evaluation</h1>
<p>{html.escape(str(setup.get("where", "")))}; {result["n_routed"]} prompts with every target
labelled are routed. Best single: <b>{html.escape(best["name"])}</b> {best["accuracy"]:.3f};
oracle {oracle["accuracy"]:.3f} (headroom {oracle["accuracy"] - best["accuracy"]:+.3f}).
Gap captured = (accuracy − best single) / (oracle − best single); cost savings = 1 − cost / cost of
always using {html.escape(result["most_expensive"]["name"])}. Savings at the best single's accuracy
(and within 1 / 2 points of it) = the largest saving against always using
{html.escape(best["name"])} among the router's curve points at least that accurate ("–": none is);
"calls to best" is the share of calls still sent to it at the within-1-point point.</p>
<table id="headline"><tr><th>router</th><th>mean AUC</th><th>argmax accuracy</th><th>gap captured</th>
<th>cost savings</th><th>gap @ ≥50% savings</th><th>gap @ ≥74.31% savings</th><th>AIQ</th>
<th>savings at best's accuracy</th><th>within 1 pt</th><th>within 2 pt</th><th>calls to best</th></tr>
{rows}</table>
{_budget_table(result.get("budgets", []))}
{_floor_table(result.get("floors", []))}
{images}</body></html>
"""


def _budget_table(budgets: list[dict[str, Any]]) -> str:
    """Budgets solved on the router's validation rows and what they achieved on the evaluation rows."""
    if not budgets:
        return ""
    rows = ""
    for b in budgets:
        got = b["achieved"]
        rows += (
            f"<tr><td>{b['share_of_max']:.0%}</td><td>${b['budget_usd']:.6f}</td>"
            f"<td>${got['cost']:.6f} [{got['cost_ci'][0]:.6f}, {got['cost_ci'][1]:.6f}]</td>"
            f"<td>{got['accuracy']:.3f} [{got['accuracy_ci'][0]:.3f}, {got['accuracy_ci'][1]:.3f}]</td></tr>"
        )
    return (
        "<h2>Budgets: solved on the router's calibration rows, achieved on these</h2><table id='budgets'>"
        "<tr><th>share of the dearest target</th><th>budget per request</th><th>achieved cost (95% CI)</th>"
        f"<th>accuracy (95% CI)</th></tr>{rows}</table>"
    )


def _floor_table(floors: list[dict[str, Any]]) -> str:
    """Quality floors certified on the router's calibration rows, and kept or not on these."""
    rows = ""
    for f in floors:
        if "error" in f:
            name, error = html.escape(str(f["floor"])), html.escape(f["error"])
            rows += f"<tr><td>{name}</td><td colspan='5'>{error}</td></tr>"
            continue
        cert, got = f["certificate"], f["achieved"]
        mu = "∞" if cert["mu"] is None else f"{cert['mu']:.3g}"
        how = f"μ {mu}" if cert["certified"] else f"none: all to {html.escape(str(cert['fallback']))}"
        rows += (
            f"<tr><td>{html.escape(cert['floor'])} (δ {cert['delta']:g})</td>"
            f"<td>{how} ({cert['rows']:,} rows)</td><td>{f['floor_accuracy']:.3f}</td>"
            f"<td>{got['accuracy']:.3f} [{got['accuracy_ci'][0]:.3f}, {got['accuracy_ci'][1]:.3f}]</td>"
            f"<td>{f['verdict']}</td><td>{f['savings']:.1%}</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<h2>Quality floors: certified on the router's calibration rows, kept on these?</h2>"
        "<table id='floors'><tr><th>floor</th><th>certified</th><th>floor here</th>"
        f"<th>accuracy (95% CI)</th><th>kept</th><th>savings vs reference</th></tr>{rows}</table>"
    )


def _nan_if_none(value: float | None) -> float:
    return np.nan if value is None else value


def _fmt(value: float | None, percent: bool) -> str:
    if value is None:
        return "–"
    return f"{value:.1%}" if percent else f"{value:.3f}"
