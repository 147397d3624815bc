"""The :class:`Router`: encoder identity + feature transform + SharedTrunkNet ensemble + calibration.

A router turns prompts into calibrated P(target answers correctly), one column per target. It owns
its encoder (built on first use, running only the blocks its layers need) and saves to / loads from
the artifact folder of :mod:`prefill_router.train.artifact`.

Example::

    router = Router.load("router/")
    P = router.predict_proba(["What is the capital of Peru?"])  # (1, M)
    dict(zip(router.targets, P[0]))
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefill_router.data.costs import input_tokens, price_costs_from_tokens
from prefill_router.data.dataset import TargetInfo, target_name_problem
from prefill_router.encode.identity import EncoderIdentity as EncoderIdentity  # re-exported: its old home
from prefill_router.errors import ConfigError, DataError, EncodeError, UnknownTargetError
from prefill_router.train.artifact import read_artifact, write_artifact
from prefill_router.train.calibration import apply_temperature
from prefill_router.train.net import TrunkEnsemble
from prefill_router.train.transform import EncoderFeatures, FeatureBlock, FeatureTransform, LayerFeatures

if TYPE_CHECKING:
    from prefill_router.encode import Encoder
    from prefill_router.policy import Budget, BudgetSolution, Decision, FloorCertificate, QualityFloor

#: Missing calibration labels are stored as this value (safetensors arrays must be finite).
MISSING_LABEL = -1.0


@dataclass(frozen=True, eq=False)
class CalibrationRows:
    """Held-out labelled rows kept in the artifact: budgets are solved and floors certified on them."""

    x: np.ndarray  # (n, d_in) the net's input
    tokens: np.ndarray  # (n,) input tokens of each prompt (its cost on each target)
    labels: np.ndarray | None = None  # (n, M) labels, NaN where missing; None before floors existed
    independent: bool = False  # never trained, early-stopped or temperature-scaled on
    source: str = "fit"  # fit, or the labelled data `prefill-router calibrate` read

    def __len__(self) -> int:
        return len(self.x)

    def to_json(self) -> dict[str, Any]:
        """The ``calibration`` object of router.json."""
        return {
            "rows": len(self.x), "labels": self.labels is not None, "independent": self.independent,
            "source": self.source,
        }  # fmt: skip


class Router:
    """Calibrated per-target correctness probabilities from a prompt's prefill activations.

    Built by :func:`prefill_router.train.fit_router` or :meth:`Router.load`; ``targets`` are the
    target names in column order. A fused router reads several encoders (``encoders``, the first
    is the primary one); each runs only up to the deepest layer its blocks need.
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
        self._certificates: dict[QualityFloor, FloorCertificate] = {}
        self._loaded: list[Encoder | None] = [None] * len(self.encoders)
        self._cache_dir: str | Path | None = None  # where the encoders' converted models live
        self._allow_local_encoders = True  # False once loaded: a router.json from elsewhere names them
        self._encoder_lock = threading.Lock()

    @property
    def encoder_identity(self) -> EncoderIdentity:
        """The primary (first) encoder's identity."""
        return self.encoders[0]

    # ------------------------------------------------------------------ identity
    @property
    def targets(self) -> tuple[str, ...]:
        """Target names, in the column order of :meth:`predict_proba`."""
        return tuple(t.name for t in self.target_info)

    def target_index(self, name: str) -> int:
        """Column of target ``name``; raises UnknownTargetError with the valid names."""
        if name not in self.targets:
            raise UnknownTargetError(name, self.targets, source="router")
        return self.targets.index(name)

    # ---------------------------------------------------------------- prediction
    @property
    def encoder(self) -> Encoder:
        """The router's primary encoder, loaded on first use (no conversion if it is already cached)."""
        return self.loaded_encoders()[0]

    def loaded_encoders(self) -> list[Encoder]:
        """Every encoder of the router, each loaded on first use.

        Raises:
            MissingDependencyError: an encoder's model package is not installed (the message
                names the pip command).
        """
        with self._encoder_lock:
            for index, encoder in enumerate(self._loaded):
                if encoder is None:
                    self._attach(index, self._build(index))
            return [encoder for encoder in self._loaded if encoder is not None]

    def use_encoder(self, encoder: Encoder) -> None:
        """Use an already loaded encoder (e.g. shared with a fit); it must be one of the router's."""
        identity = EncoderIdentity.of(encoder)
        if identity not in self.encoders:
            raise EncodeError(
                f"the encoder {identity} is not one this router was trained with "
                f"({', '.join(map(str, self.encoders))})"
            )
        with self._encoder_lock:
            self._attach(self.encoders.index(identity), encoder)

    def _attach(self, index: int, encoder: Encoder) -> None:
        for block in self.transform.blocks:
            if block.encoder == index and block.mean.shape[0] != len(block.layers) * encoder.hidden_size:
                raise EncodeError(
                    f"block {block.name} expects {block.mean.shape[0]} features but encoder "
                    f"{encoder.name} has hidden size {encoder.hidden_size}"
                )
        self._loaded[index] = encoder

    def features(self, prompts: Sequence[str]) -> list[LayerFeatures]:
        """The pooled features the transform needs, one LayerFeatures per encoder, rounded to the
        dtype the feature store keeps them in (so a router scores a prompt exactly as it saw it in
        training). Each encoder runs only up to the deepest layer its blocks read."""
        from prefill_router.encode.store import STORAGE_DTYPES

        _check_prompts(prompts)
        out = []
        for index, (identity, encoder) in enumerate(zip(self.encoders, self.loaded_encoders(), strict=True)):
            encoded = encoder.encode(
                list(prompts),
                layers=self.transform.layers_of(index),
                poolings=self.transform.poolings_of(index),
            )
            values = encoded.features.astype(STORAGE_DTYPES[identity.storage])
            out.append(LayerFeatures(values, encoded.poolings, encoded.layers))
        return out

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

    # ------------------------------------------------------------------- routing
    def costs(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, M) USD of each prompt on each target from the list prices (DESIGN §3).

        Raises:
            ConfigError: a target has no price (routing by cost needs every price).
        """
        return self._costs_from_tokens(input_tokens(list(prompts)))

    def _costs_from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        unpriced = [t.name for t in self.target_info if not t.has_price]
        if unpriced:
            raise ConfigError(
                f"targets without a price: {', '.join(unpriced)}; "
                "add their prices to the dataset (a price file when importing) and refit"
            )
        return price_costs_from_tokens(tokens, self.target_info, self.output_tokens)

    @property
    def calibration_x(self) -> np.ndarray | None:
        """The calibration rows' net input (None: the router stores none)."""
        return None if self.calibration is None else self.calibration.x

    @property
    def calibration_tokens(self) -> np.ndarray | None:
        """The calibration rows' input-token counts (None: the router stores none)."""
        return None if self.calibration is None else self.calibration.tokens

    def solve_budget(self, budget: Budget) -> BudgetSolution:
        """μ of the budget policy that meets ``budget`` on the router's held-out calibration rows."""
        from prefill_router.policy import solve_budget

        if self.calibration is None:
            raise ConfigError(
                "this router stores no calibration rows; pass a μ (--budget 0.0 ...) instead of a budget"
            )
        p = apply_temperature(self.ensemble.probabilities(self.calibration.x), self.temperatures)
        return solve_budget(p, self._costs_from_tokens(self.calibration.tokens), budget, self.targets)

    @property
    def best_single(self) -> str | None:
        """The target with the highest accuracy on the training rows (None: not recorded)."""
        name = self.info.get("best_single")
        return name if name in self.targets else None

    def floor_grid(self) -> np.ndarray:
        """The μ values a quality floor is certified over: :func:`~prefill_router.policy.mu_grid` of
        the costs of prompts of 1 to 100,000 tokens, so it is fixed before any label is seen."""
        from prefill_router.policy import mu_grid

        return mu_grid(self._costs_from_tokens(np.geomspace(1, 100_000, 11)), n=FLOOR_GRID_POINTS)

    def certify(self, floor: QualityFloor) -> FloorCertificate:
        """The cheapest μ that keeps ``floor`` with probability >= 1 − δ on the calibration rows
        (:func:`~prefill_router.policy.certify_floor`), remembered per floor.

        Raises:
            ConfigError: no labelled calibration rows (the message says how to add them), a floor no
                routing reaches on them. UnknownTargetError: an unknown reference target.
        """
        from prefill_router.policy import certify_floor

        if floor not in self._certificates:
            if self.calibration is None or self.calibration.labels is None:
                raise ConfigError(
                    "this router stores no labelled calibration rows to certify a quality floor on; "
                    "run `prefill-router calibrate ROUTER DATA` with labelled prompts, or refit"
                )
            rows = self.calibration
            p = apply_temperature(self.ensemble.probabilities(rows.x), self.temperatures)
            assert rows.labels is not None
            certificate = certify_floor(
                p, self._costs_from_tokens(rows.tokens), rows.labels, self.targets, floor,
                self.floor_grid(), best_single=self.best_single,
            )  # fmt: skip
            if len(self._certificates) >= CERTIFICATES_KEPT:  # requests may name floors: stay bounded
                del self._certificates[next(iter(self._certificates))]
            self._certificates[floor] = replace(certificate, independent=rows.independent)
        return self._certificates[floor]

    def default_floor(self) -> QualityFloor | None:
        """The floor a decision keeps when no policy is given: within 1 point of the best single
        target at δ 0.05, when the router holds labelled calibration rows (else None: argmax)."""
        from prefill_router.policy import QualityFloor
        from prefill_router.policy.floor import DEFAULT_DELTA, DEFAULT_WITHIN

        if self.calibration is None or self.calibration.labels is None:
            return None
        return QualityFloor(within=DEFAULT_WITHIN, delta=DEFAULT_DELTA)

    def route(
        self,
        prompt: str,
        *,
        policy: str | None = None,
        knob: float | None = None,
        budget: Budget | None = None,
        floor: QualityFloor | None = None,
        allowed: Sequence[str] | None = None,
        max_cost: float | None = None,
    ) -> Decision:
        """One decision: the chosen target, every probability and cost, and the reason.

        ``floor`` keeps a quality floor (the certified μ, or its reference target when nothing is
        certified); ``policy`` is ``budget`` (knob μ, or a ``Budget`` solved on the calibration
        rows), ``lambda`` (knob λ) or ``tolerance`` (knob τ). With none of them, the default floor
        (:meth:`default_floor`: within 1 point of the best single target, δ 0.05) is kept.
        ``allowed`` and ``max_cost`` restrict the candidates of this request.
        """
        from prefill_router.policy import decide, floor_decision

        if policy is None and knob is None and budget is None and floor is None:
            floor = self.default_floor()
        p = self.predict_proba([prompt])[0]
        c = self.costs([prompt])[0]
        if floor is not None:
            return floor_decision(p, c, self.targets, self.certify(floor), allowed=allowed, max_cost=max_cost)
        if budget is not None:
            policy, knob = "budget", self.solve_budget(budget).mu
        return decide(p, c, self.targets, policy or "budget", knob or 0.0, allowed=allowed, max_cost=max_cost)

    # --------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the artifact folder (router.json + router.safetensors) atomically."""
        return write_artifact(path, self.to_json(), self._arrays())

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        check_encoder: bool = True,
        cache_dir: str | Path | None = None,
        allow_local_encoders: bool = False,
    ) -> Router:
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
            router = cls._from_artifact(meta, arrays)
        except DataError as exc:
            raise DataError(str(exc), source=str(path)) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"router.json is malformed: {exc!r}", source=str(path)) from exc
        router._allow_local_encoders = allow_local_encoders
        if check_encoder:
            router.check_encoder(cache_dir)
        router._cache_dir = cache_dir
        return router

    def check_encoder(self, cache_dir: str | Path | None = None) -> None:
        """Raise unless every installed encoder has the weights this router was trained on.

        Raises:
            MissingDependencyError: an encoder's model package is not installed (the message
                names the pip command). EncodeError: an installed encoder has other weights.
                ConfigError: a loaded router names an unregistered encoder that is not allowed.
        """
        from prefill_router.encode import resolve_encoder
        from prefill_router.encode.models import check_encoder_name

        cache = Path(cache_dir) if cache_dir else None
        for identity in self.encoders:
            resolved = resolve_encoder(identity.name, cache, remember=False)  # hashes, loads nothing
            if resolved.weights_sha256 != identity.weights_sha256:
                raise EncodeError(
                    f"this router was trained on encoder {identity.name} with weights sha256 "
                    f"{identity.weights_sha256[:16]}…, but the installed one has "
                    f"{resolved.weights_sha256[:16]}…; install the encoder it was trained on or refit"
                )
            check_encoder_name(identity.name, cache, allow_local=self._allow_local_encoders)

    def to_json(self) -> dict[str, Any]:
        """The router.json document (without the format fields the writer adds)."""
        ensemble = self.ensemble
        return {
            "encoders": [identity.to_json() for identity in self.encoders],
            "targets": [
                {
                    **t.to_json(),
                    "output_tokens": float(self.output_tokens[j]),
                    "blocks": list(self.transform.target_blocks[t.name]),
                }
                for j, t in enumerate(self.target_info)
            ],
            "blocks": [
                {
                    "encoder": b.encoder,
                    "pooling": b.pooling,
                    "layers": list(b.layers),
                    "n_in": int(b.mean.shape[0]),
                    "n_out": b.n_out,
                }
                for b in self.transform.blocks
            ],
            "net": {
                "d_in": int(ensemble.w1.shape[1]),
                "hidden": [int(ensemble.w1.shape[2]), int(ensemble.w2.shape[2])],
                "n_targets": ensemble.n_targets,
                "members": ensemble.n_members,
            },
            **({"calibration": self.calibration.to_json()} if self.calibration is not None else {}),
            **self.info,
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {"calibration.temperature": self.temperatures}
        for i, block in enumerate(self.transform.blocks):
            arrays |= {
                f"block.{i}.mean": block.mean,
                f"block.{i}.scale": block.scale,
                f"block.{i}.components": block.components,
            }
        arrays |= {f"net.{name}": getattr(self.ensemble, name) for name in TrunkEnsemble.ARRAYS}
        if self.calibration is not None:
            arrays |= {
                "calibration.x": self.calibration.x.astype(np.float32),
                "calibration.input_tokens": self.calibration.tokens.astype(np.float32),  # exact below 2**24
            }
            if self.calibration.labels is not None:
                labels = np.nan_to_num(self.calibration.labels, nan=MISSING_LABEL)
                arrays["calibration.labels"] = labels.astype(np.float32)
        return arrays

    @classmethod
    def _from_artifact(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Router:
        shapes = _ShapeCheck(arrays)
        # Format 1 had one encoder ("encoder") and one block per target ("block").
        encoders = [
            EncoderIdentity(**e) for e in (meta["encoders"] if "encoders" in meta else [meta["encoder"]])
        ]
        blocks = []
        for i, spec in enumerate(meta["blocks"]):
            n_in, n_out, encoder = int(spec["n_in"]), int(spec["n_out"]), int(spec.get("encoder", 0))
            if not 0 <= encoder < len(encoders):
                raise DataError(f"router.json: block {i} reads encoder {encoder}; there are {len(encoders)}")
            blocks.append(
                FeatureBlock(
                    pooling=str(spec["pooling"]),
                    layers=tuple(int(layer) for layer in spec["layers"]),
                    mean=shapes.get(f"block.{i}.mean", (n_in,)),
                    scale=shapes.get(f"block.{i}.scale", (n_in,)),
                    components=shapes.get(f"block.{i}.components", (n_out, n_in)),
                    encoder=encoder,
                )
            )
        targets = [_target_info(t) for t in meta["targets"]]
        names = [t.name for t in targets]
        for name in names:
            if problem := target_name_problem(name):
                raise DataError(f"router.json: {problem}")
        if len(set(names)) != len(names):
            raise DataError(f"router.json names a target twice: {names}")
        target_blocks = {
            t["name"]: tuple(int(b) for b in t["blocks"]) if "blocks" in t else (int(t["block"]),)
            for t in meta["targets"]
        }
        bad = [n for n, b in target_blocks.items() if not b or not all(0 <= i < len(blocks) for i in b)]
        if bad:
            raise DataError(f"router.json: target {bad[0]!r} points at a block that does not exist")
        net, m = meta["net"], len(targets)
        s, d_in, (h1, h2) = int(net["members"]), sum(b.n_out for b in blocks), (int(h) for h in net["hidden"])
        ensemble = TrunkEnsemble(
            w1=shapes.get("net.w1", (s, d_in, h1)), b1=shapes.get("net.b1", (s, h1)),
            w2=shapes.get("net.w2", (s, h1, h2)), b2=shapes.get("net.b2", (s, h2)),
            w3=shapes.get("net.w3", (s, h2, m)), b3=shapes.get("net.b3", (s, m)),
        )  # fmt: skip
        temperatures = shapes.get("calibration.temperature", (m,))
        if (temperatures <= 0).any():
            raise DataError("router.safetensors: calibration temperatures must be > 0")
        calibration = _calibration_rows(meta.get("calibration"), shapes, d_in, m)
        shapes.no_extras()
        info = {k: v for k, v in meta.items() if k not in _STRUCTURE_KEYS}
        return cls(
            encoder=encoders,
            transform=FeatureTransform(tuple(blocks), target_blocks),
            ensemble=ensemble,
            temperatures=temperatures,
            targets=targets,
            output_tokens=np.array([float(t["output_tokens"]) for t in meta["targets"]]),
            info=info,
            calibration=calibration,
        )

    # ------------------------------------------------------------------ editing
    def with_target(
        self,
        target: TargetInfo,
        output_tokens: float,
        w: np.ndarray,
        b: np.ndarray,
        temperature: float,
        blocks: tuple[int, ...],
    ) -> Router:
        """A new router with one more head (``w`` (S, h2, 1), ``b`` (S, 1)) sharing everything else;
        ``blocks`` are the blocks the new target is listed under (its head reads the whole trunk)."""
        if target.name in self.targets:
            raise ConfigError(f"target {target.name!r} is already in the router")
        transform = replace(
            self.transform, target_blocks={**self.transform.target_blocks, target.name: tuple(blocks)}
        )
        router = Router(
            encoder=self.encoders,
            transform=transform,
            ensemble=self.ensemble.with_head(w, b),
            temperatures=np.append(self.temperatures, temperature),
            targets=(*self.target_info, target),
            output_tokens=np.append(self.output_tokens, output_tokens),
            info=copy.deepcopy(self.info),
            calibration=None if self.calibration is None else replace(self.calibration, labels=None),
        )
        router._loaded = list(self._loaded)
        router._cache_dir = self._cache_dir
        router._allow_local_encoders = self._allow_local_encoders
        return router

    def with_calibration(
        self, features: EncoderFeatures, prompts: Sequence[str], labels: np.ndarray, source: str
    ) -> Router:
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
        if ((labels < 0) | (labels > 1)).any():
            raise DataError("calibration labels must lie in [0, 1] (NaN = missing)")
        rows = CalibrationRows(
            x=self.transform.transform(features), tokens=input_tokens(list(prompts)), labels=labels,
            independent=True, source=source,
        )  # fmt: skip
        router = Router(
            encoder=self.encoders, transform=self.transform, ensemble=self.ensemble,
            temperatures=self.temperatures, targets=self.target_info, output_tokens=self.output_tokens,
            info=copy.deepcopy(self.info), calibration=rows,
        )  # fmt: skip
        router._loaded = list(self._loaded)
        router._cache_dir = self._cache_dir
        router._allow_local_encoders = self._allow_local_encoders
        return router

    def build_encoder(self, *, device: str = "auto", threads: int | None = None) -> Encoder:
        """A new primary encoder as this router was trained with (not attached: see
        :meth:`use_encoder`; :meth:`build_encoders` builds every encoder of a fused router)."""
        return self._build(0, device=device, threads=threads)

    def build_encoders(self, *, device: str = "auto", threads: int | None = None) -> list[Encoder]:
        """New encoders, one per encoder of the router (not attached: see :meth:`use_encoder`)."""
        return [self._build(i, device=device, threads=threads) for i in range(len(self.encoders))]

    def _build(self, index: int, *, device: str = "auto", threads: int | None = None) -> Encoder:
        from prefill_router.encode import Encoder
        from prefill_router.encode.models import check_encoder_name

        identity = self.encoders[index]
        cache = Path(self._cache_dir) if self._cache_dir else None
        check_encoder_name(identity.name, cache, allow_local=self._allow_local_encoders)
        return Encoder(
            identity.name,
            view=identity.view,
            max_tokens=identity.max_tokens,
            dtype=identity.dtype,
            device=device,
            threads=threads,
            cache_dir=self._cache_dir,
            storage=identity.storage,
        )

    def __repr__(self) -> str:
        return (
            f"Router(encoders={[e.name for e in self.encoders]!r}, targets={list(self.targets)}, "
            f"blocks={[b.name for b in self.transform.blocks]}, members={self.ensemble.n_members})"
        )


#: Certificates a router keeps (oldest out first).
CERTIFICATES_KEPT = 64
#: How many μ values a quality floor is tested over (a fixed-sequence test pays nothing for more).
FLOOR_GRID_POINTS = 400

_STRUCTURE_KEYS = frozenset(
    {"format", "format_version", "encoder", "encoders", "targets", "blocks", "net", "calibration"}
)


class _ShapeCheck:
    """Hands out arrays by name after checking their shape; remembers which were used."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays, self.used = arrays, set[str]()

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.arrays:
            raise DataError(f"router.safetensors lacks the array {name!r}")
        array = self.arrays[name]
        if array.shape != shape:
            raise DataError(
                f"router.safetensors: array {name!r} has shape {array.shape}; router.json implies {shape}"
            )
        self.used.add(name)
        return array.astype(np.float32, copy=False)

    def no_extras(self) -> None:
        extra = sorted(set(self.arrays) - self.used)
        if extra:
            raise DataError(f"router.safetensors holds arrays router.json does not describe: {extra}")


def _calibration_rows(
    spec: dict[str, Any] | None, shapes: _ShapeCheck, d_in: int, m: int
) -> CalibrationRows | None:
    """The calibration rows router.json describes (format 2 routers hold no labels)."""
    if spec is None:
        return None
    rows = int(spec["rows"])
    labels = None
    if spec.get("labels"):
        labels = shapes.get("calibration.labels", (rows, m)).astype(np.float64)
        if (((labels < 0) & (labels != MISSING_LABEL)) | (labels > 1)).any():
            raise DataError("router.safetensors: calibration labels must lie in [0, 1] (or -1 = missing)")
        labels[labels == MISSING_LABEL] = np.nan
    return CalibrationRows(
        x=shapes.get("calibration.x", (rows, d_in)),
        tokens=shapes.get("calibration.input_tokens", (rows,)),
        labels=labels,
        independent=bool(spec.get("independent", False)),
        source=str(spec.get("source", "fit")),
    )


def _target_info(spec: dict[str, Any]) -> TargetInfo:
    return TargetInfo(
        name=str(spec["name"]),
        input_usd_per_mtok=spec.get("input_usd_per_mtok"),
        output_usd_per_mtok=spec.get("output_usd_per_mtok"),
        price_source=spec.get("price_source"),
        price_derived=bool(spec.get("price_derived", False)),
    )


def _check_prompts(prompts: Sequence[str]) -> None:
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise DataError(f"prompt {i} is a {type(prompt).__name__}, not a string")
        if not prompt.strip():
            raise DataError(f"prompt {i} is empty; a router needs text to score")
