"""Fitting a router: layer choice -> transform -> SharedTrunkNet ensemble -> calibration.

:func:`fit_router` takes a dataset's training rows and their pooled features (from the feature
store or an encoder) and returns a :class:`Router` plus a :class:`FitReport`. A grouped 15%
validation split (no prompt text on both sides) drives early stopping, the choice of the best
``keep`` of ``seeds`` members, and the per-target temperatures; the scaler and PCA never see it.
:func:`add_target` trains one more head on a router's frozen trunk.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prefill_router._json import finite_or_none
from prefill_router.data.costs import input_tokens, output_token_estimates
from prefill_router.data.dataset import RoutingDataset
from prefill_router.data.splits import prompt_groups
from prefill_router.errors import ConfigError, DataError, UnknownTargetError
from prefill_router.probe import STRATEGIES, ProbeReport, ProbeSettings, probe_layers, select_layers
from prefill_router.train.calibration import (
    apply_temperature,
    brier,
    expected_calibration_error,
    fit_temperature,
)
from prefill_router.train.net import NetSettings, TrainedMember, TrunkEnsemble, train_head, train_nets
from prefill_router.train.router import EncoderIdentity, Router
from prefill_router.train.transform import LayerFeatures, fit_transform

#: Fewer training rows than this cannot fit PCA, a net and a validation split sensibly.
MIN_ROWS = 50
#: Each target needs at least this many labelled rows of each class (correct / wrong).
MIN_PER_CLASS = 5
LABEL_THRESHOLD = 0.5  # graded labels count as correct at or above this (for AUC and class counts)


@dataclass(frozen=True)
class TrainSettings:
    """How a router is fitted; the defaults are the published recipe (DESIGN §6)."""

    layers: str | tuple[int, ...] = "fisher"  # fisher | auc | all-mean | explicit layer list
    n_layers: int = 1  # layers per target for fisher / auc
    pooling: str = "mean"
    pca_k: int = 128
    seeds: int = 10
    keep: int = 5
    seed: int = 0
    val_share: float = 0.15
    net: NetSettings = field(default_factory=NetSettings)

    def __post_init__(self) -> None:
        if isinstance(self.layers, str) and self.layers not in STRATEGIES:
            raise ConfigError(
                f"The 'layers' parameter must be one of {', '.join(STRATEGIES)} or a list of layers; "
                f"got {self.layers!r} instead."
            )
        if not 1 <= self.keep <= self.seeds:
            raise ConfigError(
                f"'keep' must be between 1 and 'seeds' ({self.seeds}); got {self.keep} instead."
            )
        if not 0 < self.val_share < 0.5:
            raise ConfigError(f"The 'val_share' parameter must be in (0, 0.5); got {self.val_share} instead.")

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> TrainSettings:
        """The settings a router.json records (its ``settings`` object)."""
        blob = dict(blob)
        net = dict(blob.pop("net", {}))
        for key in ("hidden", "dropout"):
            if key in net:
                net[key] = tuple(net[key])
        if isinstance(blob.get("layers"), list):
            blob["layers"] = tuple(blob["layers"])
        return cls(**blob, net=NetSettings(**net))

    def to_json(self) -> dict[str, Any]:
        """The ``settings`` object of router.json."""
        blob = asdict(self)
        blob["layers"] = self.layers if isinstance(self.layers, str) else list(self.layers)
        return blob


@dataclass
class FitReport:
    """What fitting did and how the router does on its validation rows."""

    n_fit: int
    n_val: int
    layer_choice: dict[str, list[int]]
    val_auc: dict[str, float]
    ece_before: dict[str, float]
    ece_after: dict[str, float]
    brier: dict[str, float]
    temperatures: dict[str, float]
    member_val_loss: list[float]
    kept_members: list[int]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (NaN becomes null)."""
        from prefill_router._json import finite_or_none

        out: dict[str, Any] = finite_or_none(asdict(self))
        return out


#: Called as (stage, done, total) while fitting: stage is "probe", "transform", "train" or "calibrate".
ProgressCallback = Callable[[str, int, int], None]


def fit_router(
    dataset: RoutingDataset,
    features: LayerFeatures,
    encoder: EncoderIdentity,
    settings: TrainSettings | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[Router, FitReport]:
    """Fit a router on every row of ``dataset`` (already restricted to the training split).

    Args:
        dataset: training rows with labels (NaN = not evaluated) and target prices.
        features: pooled features of exactly those rows, with the settings' pooling.
        encoder: identity of the encoder that produced ``features``.

    Raises:
        DataError: too few rows, a target without labels or with one class, bad features.
    """
    settings = settings or TrainSettings()
    notify = on_progress or (lambda stage, done, total: None)
    _check_training_data(dataset, features)
    seconds: dict[str, float] = {}
    fit_rows, val_rows = validation_split(dataset.prompts, settings.val_share, settings.seed)
    labels = dataset.labels

    started = time.perf_counter()
    notify("probe", 0, 1)
    choice, probe_summary = choose_layers(features, labels, dataset.target_names, fit_rows, settings)
    seconds["probe"] = time.perf_counter() - started

    started = time.perf_counter()
    notify("transform", 0, 1)
    transform = fit_transform(
        features,
        fit_rows,
        {t: (settings.pooling, layers) for t, layers in choice.items()},
        settings.pca_k,
        settings.seed,
    )
    x = transform.transform(features)
    seconds["transform"] = time.perf_counter() - started

    started = time.perf_counter()
    members = _train_members(x, labels, fit_rows, val_rows, settings, notify)
    losses = [m.val_loss for m in members]
    kept = sorted(np.argsort(losses, kind="stable")[: settings.keep].tolist())
    ensemble = TrunkEnsemble.stack([members[i] for i in kept])
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    notify("calibrate", 0, 1)
    p_val = ensemble.probabilities(x[val_rows])
    temperatures = np.array(
        [fit_temperature(p_val[:, j], labels[val_rows, j]) for j in range(labels.shape[1])]
    )
    seconds["calibrate"] = time.perf_counter() - started

    report = FitReport(
        n_fit=len(fit_rows), n_val=len(val_rows), layer_choice={t: list(v) for t, v in choice.items()},
        **validation_metrics(p_val, labels[val_rows], temperatures, dataset.target_names),
        member_val_loss=losses, kept_members=kept, seconds=seconds,
    )  # fmt: skip
    router = Router(
        encoder=encoder,
        transform=transform,
        ensemble=ensemble,
        temperatures=temperatures,
        targets=dataset.targets,
        output_tokens=output_token_estimates(dataset, split=None),
        info=_router_info(dataset, settings, report) | ({"probe": probe_summary} if probe_summary else {}),
        calibration_x=x[val_rows],
        calibration_tokens=input_tokens(dataset.prompts[val_rows]),
    )
    return router, report


def add_target(
    router: Router,
    dataset: RoutingDataset,
    target: str,
    features: LayerFeatures,
    settings: TrainSettings | None = None,
) -> tuple[Router, FitReport]:
    """A new router with a head for ``target`` trained on the frozen trunk; nothing else changes.

    ``dataset`` holds the training rows with the new target's labels; ``features`` are their
    features under the router's encoder (the transform's poolings and layers).

    Raises:
        UnknownTargetError: ``target`` is not in the dataset. ConfigError: it is already routed.
        DataError: too few labelled rows, or one class only.
    """
    settings = settings or TrainSettings()
    if target not in dataset.target_names:
        raise UnknownTargetError(target, dataset.target_names, source="data")
    if target in router.targets:
        raise ConfigError(f"target {target!r} is already in the router; fit a new router to retrain it")
    column = dataset.target_names.index(target)
    labelled = np.flatnonzero(~np.isnan(dataset.labels[:, column]))
    one = dataset.take(labelled, [column])
    _check_training_data(one, None)
    fit_rows, val_rows = validation_split(one.prompts, settings.val_share, settings.seed)
    started = time.perf_counter()
    x = router.transform.transform(
        LayerFeatures(np.asarray(features.values)[labelled], features.poolings, features.layers)
    )
    hidden = router.ensemble.trunk(x)  # (S, N, h2)
    y = one.labels
    heads = [
        train_head(hidden[s, fit_rows], y[fit_rows], hidden[s, val_rows], y[val_rows])
        for s in range(router.ensemble.n_members)
    ]
    w = np.stack([h[0] for h in heads])
    b = np.stack([h[1] for h in heads])
    logits = np.einsum("snh,sho->sno", hidden[:, val_rows], w) + b[:, None]
    p_val = (1.0 / (1.0 + np.exp(-logits))).mean(axis=0)
    temperature = fit_temperature(p_val[:, 0], y[val_rows, 0])
    block = _shared_block(router)
    new = router.with_target(
        one.targets[0], float(output_token_estimates(one, split=None)[0]), w, b, temperature, block
    )
    report = FitReport(
        n_fit=len(fit_rows), n_val=len(val_rows),
        layer_choice={target: list(router.transform.blocks[block].layers)},
        **validation_metrics(p_val, y[val_rows], np.array([temperature]), [target]),
        member_val_loss=[h[2] for h in heads], kept_members=list(range(len(heads))),
        seconds={"train": time.perf_counter() - started},
    )  # fmt: skip
    for key in ("val_auc", "ece_before", "ece_after", "brier", "temperatures"):
        value = finite_or_none(getattr(report, key)[target])
        new.info.setdefault("metrics", {}).setdefault(key, {})[target] = value
    new.info.setdefault("added_targets", []).append(
        {"name": target, "val_auc": report.val_auc[target], "n_rows": len(labelled)}
    )
    return new, report


# ----------------------------------------------------------------------- pieces
def validation_split(
    prompts: Sequence[str] | np.ndarray, share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows), sorted; grouped so equal normalised prompt texts stay together."""
    from sklearn.model_selection import GroupShuffleSplit

    groups = prompt_groups(prompts)
    splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
    fit_rows, val_rows = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return np.sort(fit_rows), np.sort(val_rows)


def choose_layers(
    features: LayerFeatures,
    labels: np.ndarray,
    target_names: Sequence[str],
    rows: np.ndarray,
    settings: TrainSettings,
) -> tuple[dict[str, tuple[int, ...]], dict[str, Any] | None]:
    """Layers per target: probed on ``rows`` (fisher / auc), every layer, or the explicit list; and
    a summary of the probes when they ran."""
    if settings.pooling not in features.poolings:
        raise ConfigError(
            f"The 'pooling' setting must be one of the features' poolings ({', '.join(features.poolings)}); "
            f"got {settings.pooling!r} instead."
        )
    if not isinstance(settings.layers, str):
        missing = [layer for layer in settings.layers if layer not in features.layers]
        if missing:
            raise ConfigError(f"layer {missing[0]} is not in the features (layers {list(features.layers)})")
        return {t: tuple(settings.layers) for t in target_names}, None
    if settings.layers == "all-mean":
        return {t: features.layers for t in target_names}, None
    pooled = features.values[:, features.poolings.index(settings.pooling)]
    probe = ProbeSettings(pca_k=settings.pca_k, seed=settings.seed, cv_auc=settings.layers == "auc")
    report = probe_layers(np.asarray(pooled[rows]), labels[rows], target_names, features.layers, probe)
    choice = {}
    for name in target_names:
        picked = select_layers(report.targets[name], settings.layers, settings.n_layers)
        choice[name] = tuple(picked) if picked else (features.layers[-1],)
    return choice, _probe_summary(report, features.layers, choice)


def _probe_summary(
    report: ProbeReport, layers: Sequence[int], choice: dict[str, tuple[int, ...]]
) -> dict[str, Any]:
    """What router.json keeps of the probes: J_lda and d_eff per layer, and the layers chosen."""
    j_lda = {}
    for name, target in report.targets.items():
        by_layer = {p.layer: p.fisher_j_lda for p in target.layers}
        j_lda[name] = [finite_or_none(by_layer.get(layer, float("nan"))) for layer in layers]
    return {"layers": list(layers), "fisher_j_lda": j_lda, "chosen": {k: list(v) for k, v in choice.items()}}


def validation_metrics(
    p_val: np.ndarray, y_val: np.ndarray, temperatures: np.ndarray, names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per-target AUC, ECE before and after temperature scaling, Brier (calibrated), temperature."""
    from sklearn.metrics import roc_auc_score

    calibrated = apply_temperature(p_val, temperatures)
    out: dict[str, dict[str, float]] = {
        k: {} for k in ("val_auc", "ece_before", "ece_after", "brier", "temperatures")
    }
    for j, name in enumerate(names):
        seen = ~np.isnan(y_val[:, j])
        truth = y_val[seen, j] >= LABEL_THRESHOLD
        auc = roc_auc_score(truth, p_val[seen, j]) if 0 < truth.sum() < truth.size else float("nan")
        out["val_auc"][name] = float(auc)
        out["ece_before"][name] = expected_calibration_error(p_val[:, j], y_val[:, j])
        out["ece_after"][name] = expected_calibration_error(calibrated[:, j], y_val[:, j])
        out["brier"][name] = brier(calibrated[:, j], y_val[:, j])
        out["temperatures"][name] = float(temperatures[j])
    return out


def _train_members(
    x: np.ndarray,
    labels: np.ndarray,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    settings: TrainSettings,
    notify: ProgressCallback,
) -> list[TrainedMember]:
    epochs = [0]

    def on_epoch() -> None:
        epochs[0] += 1
        notify("train", epochs[0], settings.net.max_epochs)

    seeds = [settings.seed + i for i in range(settings.seeds)]
    members = train_nets(
        x[fit_rows], labels[fit_rows], x[val_rows], labels[val_rows], settings.net, seeds, on_epoch
    )
    notify("train", settings.net.max_epochs, settings.net.max_epochs)
    return members


def _check_training_data(dataset: RoutingDataset, features: LayerFeatures | None) -> None:
    if dataset.n_prompts < MIN_ROWS:
        raise DataError(f"fitting needs at least {MIN_ROWS} training rows; got {dataset.n_prompts}")
    if features is not None and len(features.values) != dataset.n_prompts:
        raise DataError(f"{len(features.values)} feature rows for {dataset.n_prompts} prompts")
    for j, name in enumerate(dataset.target_names):
        y = dataset.labels[:, j]
        y = y[~np.isnan(y)]
        if y.size == 0:
            raise DataError(f"target {name!r} has no labels in the training rows")
        correct = int((y >= LABEL_THRESHOLD).sum())
        wrong = y.size - correct
        if min(correct, wrong) < MIN_PER_CLASS:
            raise DataError(
                f"target {name!r} needs at least {MIN_PER_CLASS} correct and {MIN_PER_CLASS} wrong labelled "
                f"training rows; it has {correct} correct and {wrong} wrong"
            )


def _shared_block(router: Router) -> int:
    """The block an added target is listed under: the most shared one (its head reads all blocks)."""
    counts = np.bincount(
        list(router.transform.target_blocks.values()), minlength=len(router.transform.blocks)
    )
    return int(np.argmax(counts))


def fingerprint(dataset: RoutingDataset) -> str:
    """sha256 over the training rows' ids, prompts and labels: which data a router saw."""
    digest = hashlib.sha256()
    for values in (dataset.prompt_ids, dataset.prompts):
        digest.update("\x1f".join(map(str, values)).encode())
    digest.update(np.ascontiguousarray(np.nan_to_num(dataset.labels, nan=-1.0)).tobytes())
    digest.update("\x1f".join(dataset.target_names).encode())
    return digest.hexdigest()


def _router_info(dataset: RoutingDataset, settings: TrainSettings, report: FitReport) -> dict[str, Any]:
    from datetime import UTC, datetime

    from prefill_router import __version__

    metrics = report.to_json()
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "created_by": f"prefill-router {__version__}",
        "settings": settings.to_json(),
        "training": {
            "n_rows": dataset.n_prompts,
            "n_fit": report.n_fit,
            "n_val": report.n_val,
            "fingerprint_sha256": fingerprint(dataset),
            "provenance": dataset.provenance,
        },
        "metrics": {k: metrics[k] for k in ("val_auc", "ece_before", "ece_after", "brier", "temperatures")}
        | {"member_val_loss": metrics["member_val_loss"], "kept_members": metrics["kept_members"]},
    }
