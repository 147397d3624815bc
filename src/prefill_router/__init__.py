"""prefill-router: route each LLM request to the cheapest model that will answer it correctly.

Importing this package is cheap: it never loads torch, transformers, FastAPI or Ray.
"""

from prefill_router._version import __version__
from prefill_router.data.dataset import RoutingDataset, TargetInfo
from prefill_router.errors import (
    ConfigError,
    DataError,
    EncodeError,
    MissingDependencyError,
    PrefillRouterError,
    UnknownTargetError,
)
from prefill_router.policy import Budget, QualityFloor, RoutePlan, Router, RouteRequest
from prefill_router.train.trainer import RouterTrainer

__all__ = [
    "Budget",
    "ConfigError",
    "DataError",
    "EncodeError",
    "MissingDependencyError",
    "PrefillRouterError",
    "QualityFloor",
    "RoutePlan",
    "RouteRequest",
    "Router",
    "RouterTrainer",
    "RoutingDataset",
    "TargetInfo",
    "UnknownTargetError",
    "__version__",
]
