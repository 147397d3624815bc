"""What routing could gain on a dataset: per-target accuracy and cost, oracle, headroom, agreement."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from prefill_router._json import finite_or_none
from prefill_router.data.costs import cost_matrix
from prefill_router.data.dataset import LABEL_THRESHOLD, RoutingDataset
from prefill_router.data.singles import best_single, most_expensive, target_means
from prefill_router.data.splits import duplicated_across_splits


@dataclass(frozen=True)
class TargetSummary:
    """One target's accuracy (on its own labelled rows), prices and mean cost per prompt."""

    name: str
    accuracy: float
    n_labeled: int
    input_usd_per_mtok: float | None
    output_usd_per_mtok: float | None
    price_source: str | None
    price_derived: bool
    mean_cost_usd: float | None


@dataclass(frozen=True)
class DatasetSummary:
    """The headline of a routing dataset.

    Oracle, best single, headroom and agreement zones are computed on the *complete* rows (every
    target labelled) so that they compare like with like; ``n_complete`` says how many.
    """

    n_prompts: int
    n_complete: int
    splits: dict[str, int]
    tasks: dict[str, int]
    targets: list[TargetSummary]
    oracle_accuracy: float
    oracle_cost_usd: float | None
    best_single: dict[str, Any]
    headroom: float
    most_expensive: dict[str, Any] | None
    oracle_cost_savings: float | None
    agreement: dict[str, float]
    duplicated_across_splits: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (``data info --json``)."""
        blob: dict[str, Any] = finite_or_none(asdict(self))
        return blob


def summarise(dataset: RoutingDataset) -> DatasetSummary:
    """Compute the :class:`DatasetSummary` of ``dataset``.

    Raises:
        DataError: via the dataset, never here; a dataset without complete rows gives NaN headline
            figures (reported as null in JSON).
    """
    labels, costs = dataset.labels, cost_matrix(dataset)
    targets = [_target_summary(dataset, j, costs[:, j]) for j in range(len(dataset.targets))]
    complete = ~np.isnan(labels).any(axis=1) if labels.shape[1] else np.zeros(dataset.n_prompts, dtype=bool)
    y, c = labels[complete], costs[complete]
    oracle = float(y.max(axis=1).mean()) if y.size else float("nan")
    single = target_means(y) if y.size else np.full(labels.shape[1], np.nan)
    best = best_single(single) if single.size else 0
    mean_cost = target_means(c) if c.size and not np.isnan(c).any() else None
    oracle_cost = _oracle_cost(y, c)
    expensive: dict[str, Any] | None = None
    if mean_cost is not None and mean_cost.max() > 0:
        k = most_expensive(mean_cost, single)
        expensive = {"name": dataset.targets[k].name, "mean_cost_usd": float(mean_cost[k])}
    savings = (
        None if expensive is None or oracle_cost is None else 1.0 - oracle_cost / expensive["mean_cost_usd"]
    )
    return DatasetSummary(
        n_prompts=dataset.n_prompts,
        n_complete=int(complete.sum()),
        splits=_counts(dataset.splits),
        tasks=_counts(dataset.tasks),
        targets=targets,
        oracle_accuracy=oracle,
        oracle_cost_usd=oracle_cost,
        best_single={
            "name": dataset.targets[best].name if dataset.targets else None,
            "accuracy": float(single[best]) if single.size else float("nan"),
        },
        headroom=oracle - (float(single[best]) if single.size else float("nan")),
        most_expensive=expensive,
        oracle_cost_savings=savings,
        agreement=agreement_zones(y),
        duplicated_across_splits=duplicated_across_splits(dataset.prompts.tolist(), dataset.splits.tolist()),
    )


def agreement_zones(labels: np.ndarray) -> dict[str, float]:
    """Shares of rows where every target is correct, where they disagree, and where all are wrong.

    Graded labels count as correct at :data:`~prefill_router.data.dataset.LABEL_THRESHOLD` or above;
    rows must be complete.
    """
    if labels.size == 0:
        return {"all_correct": float("nan"), "disagree": float("nan"), "all_wrong": float("nan")}
    correct = labels >= LABEL_THRESHOLD
    all_correct, all_wrong = correct.all(axis=1), (~correct).all(axis=1)
    return {
        "all_correct": float(all_correct.mean()),
        "disagree": float((~all_correct & ~all_wrong).mean()),  # counted, not 1 - a - b, so never < 0
        "all_wrong": float(all_wrong.mean()),
    }


def _oracle_cost(labels: np.ndarray, costs: np.ndarray) -> float | None:
    """Mean cost of the cheapest target reaching each row's best label (cheapest overall if all wrong)."""
    if labels.size == 0 or np.isnan(costs).all(axis=0).any():
        return None
    best = labels.max(axis=1, keepdims=True)
    reaching = np.where(labels >= best, costs, np.inf)
    cheapest_correct = reaching.min(axis=1)
    cheapest = costs.min(axis=1)
    return float(np.where(best[:, 0] > 0, cheapest_correct, cheapest).mean())


def _target_summary(dataset: RoutingDataset, j: int, costs: np.ndarray) -> TargetSummary:
    target, column = dataset.targets[j], dataset.labels[:, j]
    labeled = ~np.isnan(column)
    known_cost = costs[~np.isnan(costs)]
    return TargetSummary(
        name=target.name,
        accuracy=float(column[labeled].mean()) if labeled.any() else float("nan"),
        n_labeled=int(labeled.sum()),
        input_usd_per_mtok=target.input_usd_per_mtok,
        output_usd_per_mtok=target.output_usd_per_mtok,
        price_source=target.price_source,
        price_derived=target.price_derived,
        mean_cost_usd=float(known_cost.mean()) if known_cost.size else None,
    )


def _counts(values: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(
        np.array(["(none)" if v is None else v for v in values], dtype=object), return_counts=True
    )
    return {str(n): int(c) for n, c in zip(names, counts, strict=True)}
