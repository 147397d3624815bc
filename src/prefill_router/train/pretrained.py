"""A pretrained routing trunk: a SharedTrunkNet trained jointly on the targets of several datasets.

Routing datasets share most of what makes a prompt hard (maths, long reasoning, niche facts), so a
trunk trained on every target of every dataset (one head per dataset x target, e.g.
``mmlu-pro/gemini-1.5-pro-002``) is a better starting point for a new pool than random weights,
above all when the new pool has few labelled prompts. A trunk is stored as an ordinary router
artifact (its blocks are the fixed feature transform, its targets the pretraining heads), so it is
validated like any router and needs no format of its own.

``fit --init pretrained`` starts from the trunk shipped in the package (built by
``scripts/build_pretrained_trunk.py``); ``--init PATH`` from any trunk folder. The new router reads
the trunk's blocks (no layer probes), its trunk layers start from the trunk's weights, and each
head starts from the pretrained heads of the same target name where there are some (a target seen
in pretraining, under any dataset) and from a fresh initialisation otherwise: new targets get new
heads, which is the point. Everything is then fine-tuned with the usual early stopping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prefill_router.data.dataset import RoutingDataset, TargetInfo
from prefill_router.errors import ConfigError
from prefill_router.train.net import NetSettings, TrunkEnsemble, initial_weights, train_head
from prefill_router.train.router import EncoderIdentity, RouterModel
from prefill_router.train.transform import BlockChoice, LayerFeatures

if TYPE_CHECKING:
    from prefill_router.train.fit import ProgressCallback, TrainSettings

#: The ``init`` setting's values besides a path: fresh weights, or the trunk shipped in the package.
INITS = ("random", "pretrained")
#: Separates the dataset from the target in a pretraining head's name.
HEAD_SEPARATOR = "/"


def shipped_trunk_path() -> Path:
    """The folder of the trunk shipped inside the package."""
    return Path(str(resources.files("prefill_router.train").joinpath("resources", "pretrained")))


def load_trunk(source: str) -> RouterModel:
    """The trunk named by an ``init`` setting: ``pretrained`` (the shipped one) or a trunk folder.

    Raises:
        ConfigError: ``random`` (there is no trunk), or a path that does not exist.
        DataError: a folder that is not a valid router artifact.
    """
    if source == "random":
        raise ConfigError("init 'random' has no pretrained trunk")
    path = shipped_trunk_path() if source == "pretrained" else Path(source)
    if not path.exists():
        where = (
            "the package has no pretrained trunk (reinstall prefill-router)" if source == "pretrained" else ""
        )
        raise ConfigError(
            f"The 'init' setting must be one of {', '.join(INITS)} or a trunk folder; {source!r} "
            f"does not exist{'; ' + where if where else ''}"
        )
    return RouterModel.load(path, check_encoder=False)


def head_name(dataset: str, target: str) -> str:
    """The pretraining head of ``target`` in ``dataset``."""
    return f"{dataset}{HEAD_SEPARATOR}{target}"


def known_targets(trunk: RouterModel) -> dict[str, list[int]]:
    """Target name -> the columns of the trunk's heads for it (one per dataset it was seen in)."""
    out: dict[str, list[int]] = {}
    for column, name in enumerate(trunk.targets):
        out.setdefault(name.split(HEAD_SEPARATOR, 1)[-1], []).append(column)
    return out


def initial_from_trunk(
    trunk: RouterModel,
    targets: Sequence[str],
    settings: NetSettings,
    seeds: Sequence[int],
    probe: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Stacked (S, ...) starting weights for ``targets``.

    The trunk layers of member s are the trunk's member s mod its size. A target the trunk knows
    starts from the mean of its pretrained heads. A new target's head is fitted on the frozen trunk
    first (a logistic regression on its outputs, as ``add-target`` does, on ``probe`` = (x_fit,
    y_fit, x_val, y_val) of the new targets' labels), so that fine-tuning starts from a head that
    already fits instead of a random one pulling the trunk around ("linear probe, then fine-tune");
    without ``probe`` it gets the usual fresh initialisation.
    """
    ensemble = trunk.ensemble
    d_in = int(ensemble.w1.shape[1])
    fresh = initial_weights(d_in, len(targets), settings, seeds)
    members = [s % ensemble.n_members for s in range(len(seeds))]
    out = {name: getattr(ensemble, name)[members] for name in ("w1", "b1", "w2", "b2")}
    w3, b3 = fresh["w3"].copy(), fresh["b3"].copy()
    known = known_targets(trunk)
    new = []
    for j, target in enumerate(targets):
        columns = known.get(target)
        if columns:
            w3[:, :, j] = ensemble.w3[members][:, :, columns].mean(axis=2)
            b3[:, j] = ensemble.b3[members][:, columns].mean(axis=1)
        else:
            new.append(j)
    if new and probe is not None:
        x_fit, y_fit, x_val, y_val = probe
        h_fit, h_val = ensemble.trunk(x_fit), ensemble.trunk(x_val)  # (S_trunk, n, h2)
        fitted: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # one probe per trunk member
        for s, member in enumerate(members):
            if member not in fitted:
                w, b, _ = train_head(h_fit[member], y_fit[:, new], h_val[member], y_val[:, new])
                fitted[member] = (w, b)
            w3[s][:, new], b3[s][new] = fitted[member]
    return out | {"w3": w3, "b3": b3}


def check_trunk_fits(trunk: RouterModel, d_in: int, hidden: tuple[int, int]) -> None:
    """Raise ConfigError unless the trunk's net has this input width and hidden sizes."""
    ensemble: TrunkEnsemble = trunk.ensemble
    shape = (int(ensemble.w1.shape[1]), (int(ensemble.w1.shape[2]), int(ensemble.w2.shape[2])))
    if shape != (d_in, tuple(hidden)):
        raise ConfigError(f"the pretrained trunk's net is {shape}; the router would need {(d_in, hidden)}")


def pooled_dataset(parts: Sequence[tuple[str, RoutingDataset]]) -> RoutingDataset:
    """Several datasets as one: rows stacked, one target column per dataset x target (its head),
    labels NaN where a dataset does not cover a head. Prompt ids are prefixed with the dataset."""
    names = [head_name(name, t) for name, ds in parts for t in ds.target_names]
    labels = np.full((sum(ds.n_prompts for _, ds in parts), len(names)), np.nan)
    row = column = 0
    for _, ds in parts:
        labels[row : row + ds.n_prompts, column : column + len(ds.target_names)] = ds.labels
        row, column = row + ds.n_prompts, column + len(ds.target_names)
    return RoutingDataset(
        [f"{name}:{pid}" for name, ds in parts for pid in ds.prompt_ids],
        np.concatenate([ds.prompts for _, ds in parts]),
        np.concatenate([ds.tasks for _, ds in parts]),
        [None] * len(labels),
        labels,
        tuple(TargetInfo(name) for name in names),
        provenance={"pooled": [{"dataset": name, "n_prompts": ds.n_prompts} for name, ds in parts]},
    )


def pretrain_trunk(
    parts: Sequence[tuple[str, RoutingDataset, Sequence[LayerFeatures]]],
    encoders: Sequence[EncoderIdentity],
    blocks: Sequence[BlockChoice] | None = None,
    settings: TrainSettings | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> RouterModel:
    """Train a trunk on every target of every dataset: one head per dataset x target.

    Args:
        parts: (dataset name, its rows, its features: one LayerFeatures per encoder) per dataset.
        encoders: the identities of the encoders the features came from (the same for every part).
        blocks: the fixed blocks every head reads, (encoder index, pooling, layers) each; a router
            started from this trunk reads exactly these. None: per encoder and pooling, the layer
            with the highest mean out-of-fold J_lda over every head (:func:`trunk_blocks`).
        settings: the training recipe (``layers``, ``pooling`` and ``init`` are not used).

    Returns:
        The trunk as a router (no calibration rows: it is a starting point, not a router to serve).
    """
    from prefill_router.train.fit import TrainSettings, fit_router

    settings = replace(settings or TrainSettings(), init="random")
    pooled = pooled_dataset([(name, ds) for name, ds, _ in parts])
    stacked = [
        LayerFeatures(
            np.concatenate([np.asarray(features[i].values) for _, _, features in parts]),
            parts[0][2][i].poolings,
            parts[0][2][i].layers,
        )
        for i in range(len(encoders))
    ]
    chosen = list(blocks) if blocks is not None else trunk_blocks(pooled, stacked, settings)
    trunk, _ = fit_router(pooled, stacked, list(encoders), settings, on_progress, blocks=chosen)
    trunk.calibration = None
    trunk.info["pretrained"] = {"datasets": pooled.provenance["pooled"], "heads": len(pooled.target_names)}
    return trunk


def trunk_blocks(
    pooled: RoutingDataset, features: Sequence[LayerFeatures], settings: TrainSettings, max_rows: int = 8000
) -> list[BlockChoice]:
    """Per encoder and pooling, the layer whose out-of-fold J_lda (relative to each head's best
    layer), averaged over every head, is the highest: the fixed blocks of a trunk (probed on at most
    ``max_rows`` rows, a seeded sample)."""
    from prefill_router.probe import ProbeSettings, probe_layers

    rng = np.random.default_rng(settings.seed)
    n = pooled.n_prompts
    rows = np.sort(rng.choice(n, max_rows, replace=False)) if n > max_rows else np.arange(n)
    out: list[BlockChoice] = []
    for index, feats in enumerate(features):
        for p, pooling in enumerate(feats.poolings):
            values = np.asarray(feats.values[rows, p], dtype=np.float32)
            probe = ProbeSettings(pca_k=settings.pca_k, seed=settings.seed, cv_auc=False)
            report = probe_layers(values, pooled.labels[rows], pooled.target_names, feats.layers, probe)
            table = np.array(
                [[lp.fisher_j_lda for lp in t.layers] for t in report.targets.values() if t.layers]
            )  # (heads, probed layers)
            probed = [lp.layer for lp in next(t for t in report.targets.values() if t.layers).layers]
            # each head's J_lda relative to its own best layer, so no head outweighs the others
            relative = table / np.nanmax(table, axis=1, keepdims=True)
            out.append((index, pooling, (int(probed[int(np.nanargmax(np.nanmean(relative, axis=0)))]),)))
    return out
