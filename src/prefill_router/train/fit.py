"""Fitting a router: layer choice -> transform -> SharedTrunkNet ensemble -> calibration.

:func:`fit_router` takes a dataset's training rows and their pooled features (from the feature
store or an encoder) and returns a :class:`~prefill_router.train.RouterModel` plus a
:class:`FitReport`. A grouped 15% validation split (no prompt text on both sides) drives early
stopping, the choice of the best ``keep`` of ``seeds`` members, and the per-target temperatures;
the scaler and PCA never see it.
:func:`add_target` trains one more head on a router's frozen trunk.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from prefill_router._json import finite_or_none
from prefill_router.data import singles
from prefill_router.data.costs import input_tokens, output_token_estimates
from prefill_router.data.dataset import LABEL_THRESHOLD, RoutingDataset
from prefill_router.data.splits import prompt_groups
from prefill_router.errors import ConfigError, DataError, UnknownTargetError
from prefill_router.probe import (
    STRATEGIES,
    ProbeReport,
    ProbeSettings,
    probe_layers,
    select_layers,
    shallowest_depth,
)
from prefill_router.train.calibration import apply_temperature, fit_temperature
from prefill_router.train.net import NetSettings, TrainedMember, TrunkEnsemble, train_head, train_nets
from prefill_router.train.pretrained import check_trunk_fits, initial_from_trunk, load_trunk
from prefill_router.train.probe_cache import ProbeCache
from prefill_router.train.quality import target_quality
from prefill_router.train.router import CalibrationRows, EncoderIdentity, RouterModel
from prefill_router.train.transform import (
    BlockChoice,
    EncoderFeatures,
    LayerFeatures,
    block_name,
    fit_transform,
    per_encoder,
)

#: The encoders a router reads unless told otherwise (registered names; the first is the primary).
DEFAULT_ENCODERS: tuple[str, ...] = ("smollm2-135m",)
#: The pooling settings: one pooling, the better of the two per target, or a block of each.
POOLING_CHOICES = ("mean", "last", "auto", "both")
#: What a router.json written before a setting existed meant by its absence (the v1 recipe), so an
#: old artifact is refit (``evaluate --cv``) as it was fitted, not with today's defaults.
SETTINGS_BEFORE_THEY_EXISTED: dict[str, Any] = {
    "aux_tasks": False,
    "depth_tolerance": 0.0,
    "calibration_share": 0.0,
}
#: A router class (add_target returns one of the class it is given).
R = TypeVar("R", bound=RouterModel)
#: Fewer training rows than this cannot fit PCA, a net and a validation split sensibly.
MIN_ROWS = 50
#: Each target needs at least this many labelled rows of each class (correct / wrong).
MIN_PER_CLASS = 5


@dataclass(frozen=True)
class TrainSettings:
    """How a router is fitted; the defaults are DESIGN §6's recipe with the changes the recipe
    study kept under grouped 5-fold CV (``benchmarks/recipe.py``; README, *Choosing the recipe*):
    a mean-pooled and a last-token block per target, auxiliary task heads, and a depth-aware
    layer choice (``depth_tolerance``)."""

    layers: str | tuple[int, ...] = "fisher"  # fisher | auc | all-mean | explicit layer list
    n_layers: int = 1  # layers per target for fisher / auc
    pooling: str = "both"  # mean | last | auto (the better one per target) | both (a block of each)
    pca_k: int = 128
    seeds: int = 10
    keep: int = 5
    seed: int = 0
    val_share: float = 0.15
    net: NetSettings = field(default_factory=NetSettings)
    init: str = "random"  # random | pretrained (the trunk shipped in the package) | a trunk folder
    # Train the trunk to also tell the data's tasks apart (one auxiliary head per task, dropped
    # after training): a clean signal that shapes the trunk when correctness labels are noisy.
    # Without task labels in the data there are no auxiliary heads and this changes nothing.
    aux_tasks: bool = True
    # The deepest layer any block reads sets every decision's latency: move the blocks to the
    # shallowest depth that loses at most this share of their J_lda on average (0: each target's
    # best layer, however deep). 0.01 took SmolLM2's deepest layer from 22 to 17 on LLMRouter
    # (decision p50 37 -> 28 ms) at a mean AUC change of -0.0004 / +0.0005 / -0.0014 (LLMRouter /
    # RouteLLM / MMLU-Pro, grouped 5-fold CV) and AIQ +0.0007 / 0.0000 / +0.0021; 0.02 moved the
    # AUC by up to -0.0029 for one more layer (benchmarks/recipe.py, benchmarks/route_latency.py).
    depth_tolerance: float = 0.01
    # Share of the prompts (grouped by normalised text) held out of every training step and kept
    # in the artifact, with their labels, to certify quality floors (policy/floor.py) and solve
    # budgets on. 0: the validation rows serve instead (they steered early stopping and the
    # temperatures, so a floor certified on them is not a finite-sample guarantee). Holding 10% out
    # cost -0.0022 / -0.0022 / -0.0019 mean AUC on LLMRouter / MMLU-Pro / RouteLLM under grouped
    # 5-fold CV (benchmarks/recipe.py, variant both+aux+depth-0.01+cal-0.1), within the 0.003 bound.
    calibration_share: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.layers, str) and self.layers not in STRATEGIES:
            raise ConfigError(
                f"The 'layers' parameter must be one of {', '.join(STRATEGIES)} or a list of layers; "
                f"got {self.layers!r} instead."
            )
        if self.pooling not in POOLING_CHOICES:
            raise ConfigError(
                f"The 'pooling' parameter must be one of {', '.join(POOLING_CHOICES)}; "
                f"got {self.pooling!r} instead."
            )
        if not 1 <= self.keep <= self.seeds:
            raise ConfigError(
                f"'keep' must be between 1 and 'seeds' ({self.seeds}); got {self.keep} instead."
            )
        if not 0 < self.val_share < 0.5:
            raise ConfigError(f"The 'val_share' parameter must be in (0, 0.5); got {self.val_share} instead.")
        if not 0 <= self.calibration_share < 0.5:
            raise ConfigError(
                "The 'calibration_share' parameter must be in [0, 0.5); "
                f"got {self.calibration_share} instead."
            )
        if not 0 <= self.depth_tolerance < 1:
            raise ConfigError(
                f"The 'depth_tolerance' parameter must be in [0, 1); got {self.depth_tolerance} instead."
            )
        for name in ("n_layers", "pca_k"):  # checked here, before any encoding, not deep in the fit
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"The '{name}' parameter must be an int >= 1; got {value!r} instead.")

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> TrainSettings:
        """The settings a router.json records (its ``settings`` object)."""
        blob = SETTINGS_BEFORE_THEY_EXISTED | dict(blob)
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
    layer_choice: dict[str, list[int]]  # the first encoder's layers each target reads
    val_auc: dict[str, float]
    ece_before: dict[str, float]
    ece_after: dict[str, float]
    brier: dict[str, float]
    temperatures: dict[str, float]
    member_val_loss: list[float]
    kept_members: list[int]
    seconds: dict[str, float] = field(default_factory=dict)
    blocks: dict[str, list[str]] = field(default_factory=dict)  # the blocks each target reads, by name
    n_calibration: int = 0  # rows held out of training for budgets and quality floors

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (NaN becomes null)."""
        from prefill_router._json import finite_or_none

        out: dict[str, Any] = finite_or_none(asdict(self))
        return out


#: Called as (stage, done, total) while fitting: stage is "probe", "transform", "train" or "calibrate".
ProgressCallback = Callable[[str, int, int], None]


def fit_router(
    dataset: RoutingDataset,
    features: EncoderFeatures,
    encoder: EncoderIdentity | Sequence[EncoderIdentity],
    settings: TrainSettings | None = None,
    on_progress: ProgressCallback | None = None,
    *,
    probe_cache: ProbeCache | None = None,
    blocks: Sequence[BlockChoice] | None = None,
) -> tuple[RouterModel, FitReport]:
    """Fit a router on every row of ``dataset`` (already restricted to the training split).

    Args:
        dataset: training rows with labels (NaN = not evaluated) and target prices.
        features: pooled features of exactly those rows: one LayerFeatures, or one per encoder of
            a fused router (every target then reads a block of each encoder).
        encoder: identity of the encoder that produced ``features`` (one per encoder).
        probe_cache: where the layer probes of earlier fits on the same rows are kept (refits
            then skip them); None runs them every time.
        blocks: the blocks every target reads, (encoder index, pooling, layers) each, instead of
            the probes' choice (``settings.layers`` and ``pooling`` are then not used).

    With ``settings.init`` other than ``random`` the router starts from a pretrained trunk
    (:mod:`prefill_router.train.pretrained`): it reads the trunk's blocks, and its net starts from
    the trunk's weights and the pretrained heads of the targets the trunk knows.

    Raises:
        DataError: too few rows, a target without labels or with one class, bad features.
        ConfigError: features and encoder identities that do not pair up.
    """
    settings = settings or TrainSettings()
    notify = on_progress or (lambda stage, done, total: None)
    by_encoder = per_encoder(features)
    identities = (encoder,) if isinstance(encoder, EncoderIdentity) else tuple(encoder)
    if len(identities) != len(by_encoder):
        raise ConfigError(f"features of {len(by_encoder)} encoders but {len(identities)} encoder identities")
    for feats in by_encoder:
        check_training_data(dataset, feats)
    seconds: dict[str, float] = {}
    fit_rows, val_rows, cal_rows = training_splits(dataset.prompts, settings)
    labels = dataset.labels

    trunk = None if settings.init == "random" else load_trunk(settings.init)
    started = time.perf_counter()
    notify("probe", 0, 1)
    probe_summary: list[dict[str, Any]] = []
    if trunk is not None:
        _check_trunk_encoders(trunk, identities)
        fixed = [(b.encoder, b.pooling, b.layers) for b in trunk.transform.blocks]
        choice: dict[str, list[BlockChoice]] = {name: list(fixed) for name in dataset.target_names}
    elif blocks is not None:
        choice = {name: list(blocks) for name in dataset.target_names}
    else:
        choice, probe_summary = choose_blocks(
            by_encoder, labels, dataset.target_names, fit_rows, settings,
            cache=None if probe_cache is None else (probe_cache, identities, dataset.prompts),
        )  # fmt: skip
    seconds["probe"] = time.perf_counter() - started

    started = time.perf_counter()
    notify("transform", 0, 1)
    if trunk is not None:
        every = tuple(range(len(trunk.transform.blocks)))
        transform = replace(trunk.transform, target_blocks={name: every for name in dataset.target_names})
    else:
        transform = fit_transform(by_encoder, fit_rows, choice, settings.pca_k, settings.seed)
    x = transform.transform(by_encoder)
    seconds["transform"] = time.perf_counter() - started

    started = time.perf_counter()
    initial = None
    if trunk is not None:
        check_trunk_fits(trunk, x.shape[1], settings.net.hidden)
        seeds = [settings.seed + i for i in range(settings.seeds)]
        probe = (x[fit_rows], labels[fit_rows], x[val_rows], labels[val_rows])
        initial = initial_from_trunk(trunk, dataset.target_names, settings.net, seeds, probe)
    targets = labels
    if settings.aux_tasks and initial is None:
        targets = np.concatenate([labels, task_targets(dataset.tasks, fit_rows)], axis=1)
    members = _train_members(x, targets, fit_rows, val_rows, settings, notify, initial)
    members = [_routing_heads(m, labels.shape[1]) for m in members]
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
        n_fit=len(fit_rows), n_val=len(val_rows), layer_choice=_first_encoder_layers(choice),
        n_calibration=len(cal_rows) if settings.calibration_share > 0 else 0,
        **validation_metrics(p_val, labels[val_rows], temperatures, dataset.target_names),
        member_val_loss=losses, kept_members=kept, seconds=seconds,
        blocks={t: [block_name(*b) for b in blocks] for t, blocks in choice.items()},
    )  # fmt: skip
    router = RouterModel(
        encoder=identities,
        transform=transform,
        ensemble=ensemble,
        temperatures=temperatures,
        targets=dataset.targets,
        output_tokens=output_token_estimates(dataset, split=None),
        info=_router_info(dataset, settings, report) | ({"probe": probe_summary} if probe_summary else {}),
        calibration=CalibrationRows(
            x=x[cal_rows],
            tokens=input_tokens(dataset.prompts[cal_rows]),
            labels=labels[cal_rows],
            independent=settings.calibration_share > 0,
            source="fit",
        ),
    )
    router.info["best_single"] = best_single(
        labels[np.concatenate([fit_rows, val_rows])], dataset.target_names
    )
    return router, report


def add_target(
    router: R,
    dataset: RoutingDataset,
    target: str,
    features: EncoderFeatures,
    settings: TrainSettings | None = None,
) -> tuple[R, FitReport]:
    """A new router with a head for ``target`` trained on the frozen trunk; nothing else changes.

    ``dataset`` holds the training rows with the new target's labels; ``features`` are their
    features under the router's encoders (the transform's poolings and layers, one per encoder).

    Raises:
        UnknownTargetError: ``target`` is not in the dataset. ConfigError: it is already routed.
        DataError: too few labelled rows, or one class only.
    """
    from scipy.special import expit

    settings = settings or TrainSettings()
    one = check_new_target(router, dataset, target)
    labelled = np.flatnonzero(~np.isnan(dataset.labels[:, dataset.target_index(target)]))
    fit_rows, val_rows = validation_split(one.prompts, settings.val_share, settings.seed)
    started = time.perf_counter()
    x = router.transform.transform(
        [LayerFeatures(np.asarray(f.values)[labelled], f.poolings, f.layers) for f in per_encoder(features)]
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
    p_val = expit(logits).mean(axis=0)  # overflow-free, however large the logits
    temperature = fit_temperature(p_val[:, 0], y[val_rows, 0])
    blocks = _shared_blocks(router)
    new = router.with_target(
        one.targets[0], float(output_token_estimates(one, split=None)[0]), w, b, temperature, blocks
    )
    chosen = [router.transform.blocks[i] for i in blocks]
    report = FitReport(
        n_fit=len(fit_rows), n_val=len(val_rows), n_calibration=0,
        layer_choice={target: sorted({layer for b in chosen if b.encoder == 0 for layer in b.layers})},
        **validation_metrics(p_val, y[val_rows], np.array([temperature]), [target]),
        member_val_loss=[h[2] for h in heads], kept_members=list(range(len(heads))),
        seconds={"train": time.perf_counter() - started}, blocks={target: [b.name for b in chosen]},
    )  # fmt: skip
    for key in ("val_auc", "ece_before", "ece_after", "brier", "temperatures"):
        value = finite_or_none(getattr(report, key)[target])
        new.info.setdefault("metrics", {}).setdefault(key, {})[target] = value
    new.info.setdefault("added_targets", []).append(
        {"name": target, "val_auc": report.val_auc[target], "n_rows": len(labelled)}
    )
    return new, report


# ----------------------------------------------------------------------- pieces
def training_splits(
    prompts: np.ndarray, settings: TrainSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit rows, validation rows, calibration rows), each sorted and grouped by normalised text.

    The calibration rows (``settings.calibration_share`` of the prompts) are held out first and
    never trained on; with a share of 0 they are the validation rows, and the fit and validation
    rows are exactly those of routers fitted before calibration rows existed.
    """
    if settings.calibration_share == 0:
        fit_rows, val_rows = validation_split(prompts, settings.val_share, settings.seed)
        return fit_rows, val_rows, val_rows
    train, cal_rows = validation_split(prompts, settings.calibration_share, settings.seed + 1)
    fit_sub, val_sub = validation_split(prompts[train], settings.val_share, settings.seed)
    return train[fit_sub], train[val_sub], cal_rows


def best_single(labels: np.ndarray, target_names: Sequence[str]) -> str:
    """The target with the highest mean label over its labelled rows (ties: the lower column)."""
    return str(target_names[singles.best_single(singles.target_means(labels))])


def validation_split(
    prompts: Sequence[str] | np.ndarray, share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows), sorted; grouped so equal normalised prompt texts stay together."""
    from sklearn.model_selection import GroupShuffleSplit

    groups = prompt_groups(prompts)
    splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
    fit_rows, val_rows = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return np.sort(fit_rows), np.sort(val_rows)


def choose_blocks(
    features: EncoderFeatures,
    labels: np.ndarray,
    target_names: Sequence[str],
    rows: np.ndarray,
    settings: TrainSettings,
    *,
    cache: tuple[ProbeCache, Sequence[EncoderIdentity], np.ndarray] | None = None,
) -> tuple[dict[str, list[BlockChoice]], list[dict[str, Any]]]:
    """The blocks each target reads, from every encoder, and a summary of the probes that ran.

    Per encoder and target: the layers of ``settings.layers`` (fisher / auc: the top ``n_layers``
    probed on ``rows``; all-mean: every layer; an explicit list: those layers of the first encoder,
    the other encoders probed by J_lda) in the pooling ``settings.pooling`` names (``auto``: the
    pooling whose chosen layers score higher, per target; ``both``: one block of each), none deeper
    than the depth ``settings.depth_tolerance`` allows (over all the encoder's targets and poolings:
    :func:`~prefill_router.probe.shallowest_depth`). ``cache`` (probe cache, encoder identities,
    every row's prompt) lets refits reuse probes.
    """
    by_encoder = per_encoder(features)
    choice: dict[str, list[BlockChoice]] = {name: [] for name in target_names}
    summaries: list[dict[str, Any]] = []
    for index, feats in enumerate(by_encoder):
        poolings = _poolings_for(settings.pooling, feats, index)
        strategy = settings.layers
        if not isinstance(strategy, str):
            if index == 0:
                missing = [layer for layer in strategy if layer not in feats.layers]
                if missing:
                    raise ConfigError(
                        f"layer {missing[0]} is not in the features (layers {list(feats.layers)})"
                    )
                for name in target_names:
                    choice[name] += [(0, pooling, tuple(strategy)) for pooling in poolings]
                continue
            strategy = "fisher"
        if strategy == "all-mean":
            for name in target_names:
                choice[name] += [(index, pooling, feats.layers) for pooling in poolings]
            continue
        scored: dict[str, list[tuple[float, BlockChoice]]] = {name: [] for name in target_names}
        probes = [
            _Probe(feats, labels, target_names, rows, settings, strategy, pooling) for pooling in poolings
        ]
        for probe in probes:
            if cache is not None:
                store, identities, prompts = cache
                key = store.key(
                    identities[index].to_json(), probe.pooling, feats.layers, asdict(probe.settings),
                    prompts[rows].tolist(), labels[rows], target_names,
                )  # fmt: skip
                probe.report = store.get_or_run(key, probe.run)
            else:
                probe.report = probe.run()
        depth = (
            shallowest_depth(
                [p.report.targets[name] for p in probes if p.report for name in target_names],
                strategy, settings.depth_tolerance,
            )
            if settings.depth_tolerance > 0
            else None
        )  # fmt: skip
        for probe in probes:
            picked, summary = probe.pick(max_layer=depth)
            pooling = probe.pooling
            summaries.append({"encoder": index, "pooling": pooling, **summary})
            for name in target_names:
                layers, score = picked[name]
                scored[name].append((score, (index, pooling, layers)))
        for name in target_names:
            options = scored[name]
            if settings.pooling == "auto":  # the better pooling wins; ties go to the first (mean)
                options = [max(options, key=lambda item: item[0])]
            choice[name] += [block for _, block in options]
    return choice, summaries


def _poolings_for(setting: str, features: LayerFeatures, encoder: int) -> tuple[str, ...]:
    """The poolings to consider for one encoder under the ``pooling`` setting."""
    if setting in ("auto", "both"):
        return features.poolings
    if setting not in features.poolings:
        raise ConfigError(
            f"The 'pooling' setting must be one of the features' poolings ({', '.join(features.poolings)}) "
            f"or auto / both; got {setting!r} instead (encoder {encoder})."
        )
    return (setting,)


@dataclass
class _Probe:
    """The probes of one encoder's features in one pooling, and the layers a strategy picks."""

    features: LayerFeatures
    labels: np.ndarray
    target_names: Sequence[str]
    rows: np.ndarray
    train: TrainSettings
    strategy: str
    pooling: str
    report: ProbeReport | None = None

    @property
    def settings(self) -> ProbeSettings:
        return ProbeSettings(pca_k=self.train.pca_k, seed=self.train.seed, cv_auc=self.strategy == "auc")

    def run(self) -> ProbeReport:
        pooled = self.features.values[:, self.features.poolings.index(self.pooling)]
        return probe_layers(
            np.asarray(pooled[self.rows]), self.labels[self.rows], self.target_names, self.features.layers,
            self.settings,
        )  # fmt: skip

    def pick(
        self, max_layer: int | None = None
    ) -> tuple[dict[str, tuple[tuple[int, ...], float]], dict[str, Any]]:
        """Per target: (the layers the strategy picks, none deeper than ``max_layer``, and their mean
        score); and the summary router.json keeps (J_lda per layer, the layers chosen)."""
        report = self.report or self.run()
        picked = {}
        for name in self.target_names:
            target = report.targets[name]
            chosen = select_layers(target, self.strategy, self.train.n_layers, max_layer=max_layer)
            layers = tuple(chosen) or (
                max((x for x in self.features.layers if max_layer is None or x <= max_layer), default=0),
            )
            by_layer = {
                p.layer: (p.cv_auc if self.strategy == "auc" else p.fisher_j_lda) for p in target.layers
            }
            scores = [by_layer.get(layer, float("nan")) for layer in layers]
            score = float(np.nanmean(scores)) if np.isfinite(scores).any() else -np.inf
            picked[name] = (layers, score)
        return picked, _probe_summary(report, self.features.layers, {k: v[0] for k, v in picked.items()})


def task_targets(tasks: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(N, T) one-hot of each row's task among the tasks seen in ``rows`` (NaN where a row has no task
    or one not seen there): the auxiliary targets of ``aux_tasks``."""
    names = sorted({str(t) for t in tasks[rows] if t is not None})
    out = np.full((len(tasks), len(names)), np.nan)
    index = {name: i for i, name in enumerate(names)}
    for row, task in enumerate(tasks):
        if task is not None and str(task) in index:
            out[row] = 0.0
            out[row, index[str(task)]] = 1.0
    return out


def _routing_heads(member: TrainedMember, n_targets: int) -> TrainedMember:
    """The member without the auxiliary heads (the first ``n_targets`` heads are the targets)."""
    if member.weights["w3"].shape[1] == n_targets:
        return member
    weights = member.weights | {
        "w3": member.weights["w3"][:, :n_targets],
        "b3": member.weights["b3"][:n_targets],
    }
    return replace(member, weights=weights)


def _check_trunk_encoders(trunk: RouterModel, identities: Sequence[EncoderIdentity]) -> None:
    """A pretrained trunk reads its own encoders' features: the fit must be given exactly those."""
    if tuple(identities) != trunk.encoders:
        theirs = ", ".join(f"{e.name} ({e.dtype})" for e in trunk.encoders)
        ours = ", ".join(f"{e.name} ({e.dtype})" for e in identities)
        raise ConfigError(
            f"the pretrained trunk reads the features of {theirs}; this fit was given {ours}. "
            "Fit with the trunk's encoders (the CLI does so with --init)."
        )


def _first_encoder_layers(choice: dict[str, list[BlockChoice]]) -> dict[str, list[int]]:
    """Per target, the first encoder's layers it reads (the report's ``layer_choice``)."""
    return {
        name: sorted({layer for encoder, _, layers in blocks if encoder == 0 for layer in layers})
        for name, blocks in choice.items()
    }


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
    """Per-target AUC, ECE before and after temperature scaling, Brier (calibrated), temperature:
    :func:`~prefill_router.train.quality.target_quality` of the raw and the calibrated probabilities."""
    raw = target_quality(p_val, y_val, names)
    calibrated = target_quality(apply_temperature(p_val, temperatures), y_val, names)
    return {
        "val_auc": {name: raw[name]["auc"] for name in names},
        "ece_before": {name: raw[name]["ece"] for name in names},
        "ece_after": {name: calibrated[name]["ece"] for name in names},
        "brier": {name: calibrated[name]["brier"] for name in names},
        "temperatures": {name: float(t) for name, t in zip(names, temperatures, strict=True)},
    }


def _train_members(
    x: np.ndarray,
    labels: np.ndarray,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    settings: TrainSettings,
    notify: ProgressCallback,
    initial: dict[str, np.ndarray] | None = None,
) -> list[TrainedMember]:
    epochs = [0]

    def on_epoch() -> None:
        epochs[0] += 1
        notify("train", epochs[0], settings.net.max_epochs)

    seeds = [settings.seed + i for i in range(settings.seeds)]
    members = train_nets(
        x[fit_rows], labels[fit_rows], x[val_rows], labels[val_rows], settings.net, seeds, on_epoch, initial
    )
    notify("train", settings.net.max_epochs, settings.net.max_epochs)
    return members


def check_new_target(router: RouterModel, dataset: RoutingDataset, target: str) -> RoutingDataset:
    """The rows of ``dataset`` labelled for ``target`` (its column alone), if :func:`add_target`
    can train a head for it; needs no features, so it runs before any encoding.

    Raises:
        UnknownTargetError: ``target`` is not in the dataset. ConfigError: it is already routed.
        DataError: too few labelled rows, or too few of one class.
    """
    if target not in dataset.target_names:
        raise UnknownTargetError(target, dataset.target_names, source="data")
    if target in router.targets:
        raise ConfigError(f"target {target!r} is already in the router; fit a new router to retrain it")
    column = dataset.target_names.index(target)
    one = dataset.take(np.flatnonzero(~np.isnan(dataset.labels[:, column])), [column])
    check_training_data(one)
    return one


def check_training_data(dataset: RoutingDataset, features: LayerFeatures | None = None) -> None:
    """Raise unless ``dataset`` (training rows) can fit a router: at least :data:`MIN_ROWS` rows,
    and every target with :data:`MIN_PER_CLASS` correct and wrong labels; needs no features, so it
    runs before any encoding (with ``features``, their row count is checked too).

    Raises:
        DataError: naming the first problem.
    """
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


def _shared_blocks(router: RouterModel) -> tuple[int, ...]:
    """The blocks an added target is listed under: the most common choice among the router's
    targets (its head reads the whole trunk, so this is for reports only)."""
    from collections import Counter

    return Counter(router.transform.target_blocks.values()).most_common(1)[0][0]


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

    from prefill_router._version import __version__

    metrics = report.to_json()
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "created_by": f"prefill-router {__version__}",
        "settings": settings.to_json(),
        "training": {
            "n_rows": dataset.n_prompts,
            "n_fit": report.n_fit,
            "n_val": report.n_val,
            "n_calibration": report.n_calibration,
            "fingerprint_sha256": fingerprint(dataset),
            "provenance": dataset.provenance,
        },
        "metrics": {k: metrics[k] for k in ("val_auc", "ece_before", "ece_after", "brier", "temperatures")}
        | {"member_val_loss": metrics["member_val_loss"], "kept_members": metrics["kept_members"]},
    }
