"""The :class:`RouterModel`: encoder identity + feature transform + SharedTrunkNet ensemble + calibration.

A router model turns prompts into calibrated P(target answers correctly), one column per target.
It owns its encoders (each built on first use, running only the blocks its layers need) and its
held-out calibration rows; :mod:`prefill_router.train.artifact` writes and reads it. Deciding
(costs, budgets, quality floors, policies) is the policy stage's :class:`prefill_router.Router`,
a RouterModel that also routes.

Example::

    model = RouterModel.load("router/")
    P = model.predict_proba(["What is the capital of Peru?"])  # (1, M)
    dict(zip(model.targets, P[0]))
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from prefill_router.data.costs import input_tokens
from prefill_router.data.dataset import TargetInfo
from prefill_router.encode.identity import EncoderIdentity as EncoderIdentity  # re-exported: its old home
from prefill_router.errors import DataError, UnknownTargetError
from prefill_router.train.artifact import (
    CalibrationRows,
    read_artifact,
    router_document,
    router_parts,
    write_artifact,
)
from prefill_router.train.calibration import apply_temperature
from prefill_router.train.encoders import RouterEncoders
from prefill_router.train.net import TrunkEnsemble
from prefill_router.train.transform import EncoderFeatures, FeatureTransform, LayerFeatures

if TYPE_CHECKING:
    from prefill_router.data.dataset import RoutingDataset
    from prefill_router.encode import Encoder

__all__ = ["CalibrationRows", "EncoderIdentity", "RouterModel"]


class RouterModel:
    """Calibrated per-target correctness probabilities from a prompt's prefill activations.

    Built by :meth:`fit`, :func:`prefill_router.train.fit_router` or :meth:`load`; ``targets`` are
    the target names in column order. A fused router reads several encoders (``encoders``, the
    first is the primary one); each runs only up to the deepest layer its blocks need.
    """

    def __init__(
        self,
        *,
        encoder: EncoderIdentity | Sequence[EncoderIdentity],
        transform: FeatureTransform,
        ensemble: TrunkEnsemble,
        temperatures: np.ndarray,
        targets: Sequence[TargetInfo],
        output_tokens: np.ndarray,
        info: dict[str, Any] | None = None,
        calibration: CalibrationRows | None = None,
    ) -> None:
        self.encoders: tuple[EncoderIdentity, ...] = (
            (encoder,) if isinstance(encoder, EncoderIdentity) else tuple(encoder)
        )
        if not self.encoders or transform.n_encoders > len(self.encoders):
            raise DataError(
                f"the transform reads {transform.n_encoders} encoders; {len(self.encoders)} identities given"
            )
        self.transform = transform
        self.ensemble = ensemble
        self.temperatures = np.asarray(temperatures, dtype=np.float32)
        self.target_info = tuple(targets)
        self.output_tokens = np.asarray(output_tokens, dtype=np.float64)
        # settings, training fingerprint, validation metrics: carried into router.json as they are
        self.info: dict[str, Any] = dict(info or {})
        # Held-out rows on which a budget's μ is solved and a quality floor certified.
        self.calibration = calibration
        self._encoders = RouterEncoders(self.encoders, transform)

    # ------------------------------------------------------------------ identity
    @property
    def encoder_identity(self) -> EncoderIdentity:
        """The primary (first) encoder's identity."""
        return self.encoders[0]

    @property
    def targets(self) -> tuple[str, ...]:
        """Target names, in the column order of :meth:`predict_proba`."""
        return tuple(t.name for t in self.target_info)

    def target_index(self, name: str) -> int:
        """Column of target ``name``; raises UnknownTargetError with the valid names."""
        if name not in self.targets:
            raise UnknownTargetError(name, self.targets, source="router")
        return self.targets.index(name)

    @property
    def best_single(self) -> str | None:
        """The target with the highest accuracy on the training rows (None: not recorded)."""
        name = self.info.get("best_single")
        return name if name in self.targets else None

    # ---------------------------------------------------------------- encoders
    @property
    def encoder(self) -> Encoder:
        """The router's primary encoder, loaded on first use (no conversion if it is already cached)."""
        return self.loaded_encoders()[0]

    def loaded_encoders(self) -> list[Encoder]:
        """Every encoder of the router, each loaded on first use (MissingDependencyError names the
        pip command of a model package that is not installed)."""
        return self._encoders.loaded()

    def use_encoder(self, encoder: Encoder) -> None:
        """Use an already loaded encoder (e.g. shared with a fit); it must be one of the router's."""
        self._encoders.use(encoder)

    def build_encoder(self, *, device: str = "auto", threads: int | None = None) -> Encoder:
        """A new primary encoder as this router was trained with (not attached: see
        :meth:`use_encoder`; :meth:`build_encoders` builds every encoder of a fused router)."""
        return self._encoders.build(0, device=device, threads=threads)

    def build_encoders(self, *, device: str = "auto", threads: int | None = None) -> list[Encoder]:
        """New encoders, one per encoder of the router (not attached: see :meth:`use_encoder`)."""
        return [self._encoders.build(i, device=device, threads=threads) for i in range(len(self.encoders))]

    def check_encoder(self, cache_dir: str | Path | None = None) -> None:
        """Raise unless every installed encoder has the weights this router was trained on (see
        :meth:`prefill_router.train.encoders.RouterEncoders.check_installed`)."""
        self._encoders.check_installed(cache_dir)

    # ---------------------------------------------------------------- prediction
    def features(self, prompts: Sequence[str]) -> list[LayerFeatures]:
        """The pooled features the transform needs, one LayerFeatures per encoder, as the feature
        store keeps them (DataError for a prompt that is not a string or is empty)."""
        return self._encoders.features(prompts)

    def predict_proba(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, M) calibrated probabilities that each target answers each prompt correctly.

        Raises:
            DataError: a prompt that is not a string or is empty.
        """
        if len(prompts) == 0:
            return np.zeros((0, len(self.targets)))
        return self.predict_proba_features(self.features(prompts))

    def predict_proba_features(self, features: EncoderFeatures) -> np.ndarray:
        """(N, M) calibrated probabilities from already extracted features (one per encoder)."""
        return apply_temperature(self.predict_uncalibrated(features), self.temperatures).astype(np.float64)

    def predict_uncalibrated(self, features: EncoderFeatures) -> np.ndarray:
        """(N, M) the ensemble's averaged probabilities before temperature scaling."""
        return self.ensemble.probabilities(self.transform.transform(features))

    def calibration_proba(self) -> np.ndarray | None:
        """(n, M) calibrated probabilities on the calibration rows (None: the router stores none)."""
        if self.calibration is None:
            return None
        return apply_temperature(self.ensemble.probabilities(self.calibration.x), self.temperatures)

    # --------------------------------------------------------------- persistence
    @classmethod
    def fit(cls, dataset: RoutingDataset | str | Path, **options: Any) -> Self:
        """A router fitted on every row of ``dataset`` (a RoutingDataset or a dataset folder).

        ``options`` are :class:`~prefill_router.train.trainer.RouterTrainer`'s: ``encoder`` (a
        name, a local model folder, or a list of them to fuse), ``settings`` (a TrainSettings),
        ``dtype``, ``max_tokens``, ``cache_dir``, ``on_progress``, ``on_encode``, and any
        :class:`~prefill_router.train.TrainSettings` field by name (``pca_k=64``, ``seeds=5``).
        Features go through the feature store, so a refit on the same prompts encodes nothing;
        :class:`~prefill_router.train.trainer.RouterTrainer` also keeps the fit report.

        Example: ``Router.fit(RoutingDataset.load("bundled").select(split="train"), seeds=5)``
        """
        from prefill_router.train.trainer import RouterTrainer

        trainer = RouterTrainer(router_class=cls, **options).fit(dataset)
        return trainer.router_  # type: ignore[return-value]

    def save(self, path: str | Path) -> Path:
        """Write the artifact folder (router.json + router.safetensors) atomically."""
        return write_artifact(path, *router_document(self))

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        check_encoder: bool = True,
        cache_dir: str | Path | None = None,
        allow_local_encoders: bool = False,
    ) -> Self:
        """Load and validate an artifact folder.

        With ``check_encoder`` the installed encoder's weights hash must equal the artifact's
        (this resolves the encoder, which never re-converts a model already in the cache). An
        encoder name that is not registered is a local folder: it is accepted only when this user
        has encoded with that folder before, or with ``allow_local_encoders`` (see
        :func:`prefill_router.encode.models.check_encoder_name`).

        Raises:
            DataError: a missing, truncated, tampered or newer-format artifact (the message names
                what is wrong). EncodeError: the installed encoder is not the one it was trained on.
                ConfigError: an unregistered encoder name that is not allowed.
        """
        meta, arrays = read_artifact(path)
        try:
            router = cls(**router_parts(meta, arrays))
        except DataError as exc:
            raise DataError(str(exc), source=str(path)) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"router.json is malformed: {exc!r}", source=str(path)) from exc
        router._encoders.allow_local = allow_local_encoders
        if check_encoder:
            router.check_encoder(cache_dir)
        router._encoders.cache_dir = cache_dir
        return router

    def to_json(self) -> dict[str, Any]:
        """The router.json document (without the format fields the writer adds)."""
        return router_document(self)[0]

    # ------------------------------------------------------------------ editing
    def with_target(
        self,
        target: TargetInfo,
        output_tokens: float,
        w: np.ndarray,
        b: np.ndarray,
        temperature: float,
        blocks: tuple[int, ...],
    ) -> Self:
        """A new router with one more head (``w`` (S, h2, 1), ``b`` (S, 1)) sharing everything else;
        ``blocks`` are the blocks the new target is listed under (its head reads the whole trunk)."""
        from prefill_router.errors import ConfigError

        if target.name in self.targets:
            raise ConfigError(f"target {target.name!r} is already in the router")
        transform = replace(
            self.transform, target_blocks={**self.transform.target_blocks, target.name: tuple(blocks)}
        )
        return self._edited(
            transform=transform, ensemble=self.ensemble.with_head(w, b),
            temperatures=np.append(self.temperatures, temperature), targets=(*self.target_info, target),
            output_tokens=np.append(self.output_tokens, output_tokens),
            calibration=None if self.calibration is None else replace(self.calibration, labels=None),
        )  # fmt: skip

    def with_calibration(
        self, features: EncoderFeatures, prompts: Sequence[str], labels: np.ndarray, source: str
    ) -> Self:
        """A new router whose calibration rows are these labelled prompts (nothing else changes).

        Args:
            features: the prompts' features under the router's encoders (one per encoder).
            labels: (N, M) labels in the router's target order, NaN where missing.
            source: where the rows come from (recorded in router.json).

        Raises:
            DataError: labels of the wrong shape or out of [0, 1].
        """
        labels = np.asarray(labels, dtype=np.float64)
        if labels.shape != (len(prompts), len(self.targets)):
            raise DataError(
                f"calibration labels must be ({len(prompts)}, {len(self.targets)}); got {labels.shape}"
            )
        rows = CalibrationRows(
            x=self.transform.transform(features), tokens=input_tokens(list(prompts)), labels=labels,
            independent=True, source=source,
        )  # fmt: skip
        return self._edited(calibration=rows)

    @classmethod
    def of(cls, model: RouterModel, **changes: Any) -> Self:
        """``model`` as this class (e.g. the policy stage's Router, which also routes), with
        ``changes`` to its parts, sharing its loaded encoders (the blocks they feed never change)."""
        parts: dict[str, Any] = {
            "encoder": model.encoders, "transform": model.transform, "ensemble": model.ensemble,
            "temperatures": model.temperatures, "targets": model.target_info,
            "output_tokens": model.output_tokens, "info": copy.deepcopy(model.info),
            "calibration": model.calibration,
        }  # fmt: skip
        router = cls(**(parts | changes))
        router._encoders = model._encoders
        return router

    def _edited(self, **changes: Any) -> Self:
        return type(self).of(self, **changes)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(encoders={[e.name for e in self.encoders]!r}, "
            f"targets={list(self.targets)}, blocks={[b.name for b in self.transform.blocks]}, "
            f"members={self.ensemble.n_members})"
        )
