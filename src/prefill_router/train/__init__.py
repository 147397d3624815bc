"""Stage 4: feature transform, SharedTrunkNet ensemble, calibration and the router artifact (DESIGN §6).

Importing this package is cheap; torch and scikit-learn load when a router is fitted.
"""

from prefill_router.train.artifact import FORMAT_VERSION, check_destination, read_artifact, write_artifact
from prefill_router.train.calibration import apply_temperature, expected_calibration_error, fit_temperature
from prefill_router.train.fit import (
    FitReport,
    ProgressCallback,
    TrainSettings,
    add_target,
    check_new_target,
    check_training_data,
    fit_router,
    validation_split,
)
from prefill_router.train.net import NetSettings, TrunkEnsemble, masked_bce
from prefill_router.train.probe_cache import ProbeCache
from prefill_router.train.router import CalibrationRows, EncoderIdentity, RouterModel
from prefill_router.train.trainer import RouterTrainer
from prefill_router.train.transform import FeatureBlock, FeatureTransform, LayerFeatures, fit_transform

__all__ = [
    "FORMAT_VERSION",
    "CalibrationRows",
    "EncoderIdentity",
    "FeatureBlock",
    "FeatureTransform",
    "FitReport",
    "LayerFeatures",
    "NetSettings",
    "ProbeCache",
    "ProgressCallback",
    "RouterModel",
    "RouterTrainer",
    "TrainSettings",
    "TrunkEnsemble",
    "add_target",
    "apply_temperature",
    "check_destination",
    "check_new_target",
    "check_training_data",
    "expected_calibration_error",
    "fit_router",
    "fit_temperature",
    "fit_transform",
    "masked_bce",
    "read_artifact",
    "validation_split",
    "write_artifact",
]
