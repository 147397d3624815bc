"""Stage 6: evaluation against the oracle, the best single target and the baselines (DESIGN §8).

Importing this package is cheap: the metrics are pure numpy; scikit-learn loads when an AUC is computed.
"""

from prefill_router.evaluate.intervals import (
    auc_difference,
    bootstrap_rows,
    curve_difference,
    interval,
    paired_difference,
    routing_intervals,
    savings_intervals,
)
from prefill_router.evaluate.metrics import (
    ACCURACY_MARGINS,
    AUC_BOOT,
    SAVINGS_LEVELS,
    Yardstick,
    aiq,
    apgr,
    best_single,
    cost_savings,
    curve_points,
    gap_captured,
    gap_captured_at_savings,
    mean_auc,
    most_expensive,
    oracle,
    oracle_choice,
    outcome,
    savings_at_accuracy,
    target_quality,
)

__all__ = [
    "ACCURACY_MARGINS",
    "AUC_BOOT",
    "SAVINGS_LEVELS",
    "Yardstick",
    "aiq",
    "apgr",
    "auc_difference",
    "best_single",
    "bootstrap_rows",
    "cost_savings",
    "curve_difference",
    "curve_points",
    "gap_captured",
    "gap_captured_at_savings",
    "interval",
    "mean_auc",
    "most_expensive",
    "oracle",
    "oracle_choice",
    "outcome",
    "paired_difference",
    "routing_intervals",
    "savings_at_accuracy",
    "savings_intervals",
    "target_quality",
]
