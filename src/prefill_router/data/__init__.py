"""Stage 1 — routing datasets: the format, importers, prices, splits, costs and summaries."""

from prefill_router.data.dataset import RoutingDataset, TargetInfo

__all__ = ["RoutingDataset", "TargetInfo"]
