"""The feature transform (DESIGN §6): chosen layers -> StandardScaler -> PCA-k, per block.

A *block* is one (encoder, pooling, layers) choice: its layers' pooled features concatenated,
standardised per feature and projected on the top-k principal components, all fitted on training
rows only. A router may read several encoders (a fused router); ``encoder`` is the index of the
block's encoder in the router's encoder list, and features come as one :class:`LayerFeatures` per
encoder, in that order. Each target names the blocks its layers came from; targets that chose the
same layers share one block, so the net's input is every distinct block once, concatenated.

Fitting is :func:`prefill_router.probe.fit_pca` (scikit-learn), the helper the layer probes use, so
layers are chosen on the features the router is trained on; applying is two numpy lines
(:func:`~prefill_router.probe.apply_pca`), so a loaded router needs no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from prefill_router.errors import ConfigError, DataError
from prefill_router.probe import apply_pca, fit_pca


@dataclass(frozen=True)
class LayerFeatures:
    """Pooled encoder features and the axes they are indexed by.

    ``values`` is (N, n_poolings, n_layers, hidden): a feature-store memmap or an encoder's output.
    """

    values: np.ndarray
    poolings: tuple[str, ...]
    layers: tuple[int, ...]

    def block(self, pooling: str, layers: Sequence[int], rows: np.ndarray | None = None) -> np.ndarray:
        """(n, len(layers) * hidden) float32: the named layers of one pooling, side by side."""
        if pooling not in self.poolings:
            raise ConfigError(
                f"the features hold poolings {', '.join(self.poolings)}; {pooling!r} is missing"
            )
        missing = [layer for layer in layers if layer not in self.layers]
        if missing:
            raise ConfigError(f"the features hold layers {list(self.layers)}; layer {missing[0]} is missing")
        p = self.poolings.index(pooling)
        index = slice(None) if rows is None else rows
        parts = [
            np.asarray(self.values[index, p, self.layers.index(layer)], dtype=np.float32) for layer in layers
        ]
        return np.concatenate(parts, axis=1)


#: Features of every encoder a transform reads, in the router's encoder order; a bare
#: LayerFeatures stands for a router with one encoder.
EncoderFeatures = LayerFeatures | Sequence[LayerFeatures]
#: One block choice: (encoder index, pooling, layers).
BlockChoice = tuple[int, str, tuple[int, ...]]


def per_encoder(features: EncoderFeatures) -> tuple[LayerFeatures, ...]:
    """``features`` as one LayerFeatures per encoder."""
    return (features,) if isinstance(features, LayerFeatures) else tuple(features)


@dataclass(frozen=True)
class FeatureBlock:
    """One fitted block: ``x -> ((x - mean) / scale) @ components.T``."""

    pooling: str
    layers: tuple[int, ...]
    mean: np.ndarray  # (D,) feature means on training rows
    scale: np.ndarray  # (D,) feature standard deviations (1 for constant features)
    components: np.ndarray  # (k, D) principal axes of the standardised training rows
    encoder: int = 0  # index of the block's encoder in the router's encoder list

    @property
    def n_out(self) -> int:
        """k, the block's output width."""
        return int(self.components.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) raw block features -> (N, k) float32."""
        if x.shape[1] != self.mean.shape[0]:
            raise DataError(
                f"block {self.name} expects {self.mean.shape[0]} features per prompt; got {x.shape[1]}"
            )
        return apply_pca(x, self.mean, self.scale, self.components)

    @property
    def name(self) -> str:
        """``mean:L7`` / ``last:L13+L22`` (``e1:mean:L6`` for a second encoder's block): how reports
        and error messages name the block."""
        return block_name(self.encoder, self.pooling, self.layers)


def block_name(encoder: int, pooling: str, layers: Sequence[int]) -> str:
    """The name of a block choice (see :attr:`FeatureBlock.name`)."""
    prefix = f"e{encoder}:" if encoder else ""
    return f"{prefix}{pooling}:" + "+".join(f"L{layer}" for layer in layers)


def fit_block(
    x: np.ndarray, pooling: str, layers: Sequence[int], pca_k: int, seed: int = 0, encoder: int = 0
) -> FeatureBlock:
    """Fit standardisation and PCA-``pca_k`` on training rows ``x`` (N, D).

    k is capped at min(pca_k, N - 1, D). Raises DataError on NaN/inf features.
    """
    if not np.isfinite(x).all():
        raise DataError(
            f"block {block_name(encoder, pooling, layers)} has NaN or inf features; re-encode the dataset"
        )
    mean, scale, components = fit_pca(x, pca_k, seed)
    return FeatureBlock(
        pooling=pooling,
        layers=tuple(int(layer) for layer in layers),
        mean=mean,
        scale=scale,
        components=components,
        encoder=encoder,
    )


@dataclass(frozen=True)
class FeatureTransform:
    """Every distinct block, and which blocks each target's layers came from."""

    blocks: tuple[FeatureBlock, ...]
    target_blocks: Mapping[str, tuple[int, ...]]  # target name -> indices into ``blocks``

    @property
    def n_features(self) -> int:
        """The net's input width: the sum of the blocks' k."""
        return sum(block.n_out for block in self.blocks)

    @property
    def n_encoders(self) -> int:
        """How many encoders the blocks read (1 + the highest encoder index)."""
        return 1 + max(block.encoder for block in self.blocks)

    @property
    def poolings(self) -> tuple[str, ...]:
        """Poolings the first encoder must produce, in a fixed order (see :meth:`poolings_of`)."""
        return self.poolings_of(0)

    @property
    def layers(self) -> tuple[int, ...]:
        """Layers the first encoder must produce (see :meth:`layers_of`)."""
        return self.layers_of(0)

    def poolings_of(self, encoder: int) -> tuple[str, ...]:
        """Poolings encoder ``encoder`` must produce, in a fixed order."""
        return tuple(sorted({b.pooling for b in self.blocks if b.encoder == encoder}))

    def layers_of(self, encoder: int) -> tuple[int, ...]:
        """Layers encoder ``encoder`` must produce (its forward pass stops at the deepest)."""
        return tuple(sorted({layer for b in self.blocks if b.encoder == encoder for layer in b.layers}))

    def transform(self, features: EncoderFeatures) -> np.ndarray:
        """(N, n_features) float32 net input from every encoder's features (in the router's order)."""
        by_encoder = per_encoder(features)
        if len(by_encoder) < self.n_encoders:
            raise DataError(
                f"the transform reads {self.n_encoders} encoders; features of {len(by_encoder)} were given"
            )
        parts = [
            block.apply(by_encoder[block.encoder].block(block.pooling, block.layers)) for block in self.blocks
        ]
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def fit_transform(
    features: EncoderFeatures,
    rows: np.ndarray,
    block_choice: Mapping[str, Sequence[BlockChoice]],
    pca_k: int,
    seed: int = 0,
) -> FeatureTransform:
    """Fit one block per distinct (encoder, pooling, layers) in ``block_choice`` on ``rows`` only.

    Args:
        features: pooled features of every prompt, one LayerFeatures per encoder.
        rows: the training row indices (sorted) the scaler and PCA see.
        block_choice: target name -> its blocks, each (encoder index, pooling, layers).
        pca_k: PCA dimensions per block.
    """
    if pca_k < 1:
        raise ConfigError(f"The 'pca_k' parameter must be >= 1; got {pca_k} instead.")
    by_encoder = per_encoder(features)
    keys: list[BlockChoice] = []
    target_blocks: dict[str, tuple[int, ...]] = {}
    for target, choices in block_choice.items():
        indices = []
        for encoder, pooling, layers in choices:
            key = (int(encoder), pooling, tuple(sorted(int(layer) for layer in layers)))
            if not key[2]:
                raise ConfigError(f"no layers chosen for target {target!r}")
            if not 0 <= key[0] < len(by_encoder):
                raise ConfigError(f"target {target!r} reads encoder {key[0]}; there are {len(by_encoder)}")
            if key not in keys:
                keys.append(key)
            indices.append(keys.index(key))
        if not indices:
            raise ConfigError(f"no blocks chosen for target {target!r}")
        target_blocks[target] = tuple(dict.fromkeys(indices))
    blocks = tuple(
        fit_block(by_encoder[encoder].block(pooling, layers, rows), pooling, layers, pca_k, seed, encoder)
        for encoder, pooling, layers in keys
    )
    return FeatureTransform(blocks, target_blocks)
