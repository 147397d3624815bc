"""The feature transform (DESIGN §6): chosen layers -> StandardScaler -> PCA-k, per block.

A *block* is one (pooling, layers) choice: its layers' pooled features concatenated, standardised
per feature and projected on the top-k principal components, all fitted on training rows only.
Each target names the block its layers came from; targets that chose the same layers share one
block, so the net's input is every distinct block once, concatenated.

Fitting uses scikit-learn; applying is two numpy lines, so a loaded router needs no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from prefill_router.errors import ConfigError, DataError

#: A standard deviation below this counts as a constant feature (scaled by 1, as scikit-learn does).
_CONSTANT_STD = 1e-8


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


@dataclass(frozen=True)
class FeatureBlock:
    """One fitted block: ``x -> ((x - mean) / scale) @ components.T``."""

    pooling: str
    layers: tuple[int, ...]
    mean: np.ndarray  # (D,) feature means on training rows
    scale: np.ndarray  # (D,) feature standard deviations (1 for constant features)
    components: np.ndarray  # (k, D) principal axes of the standardised training rows

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
        out: np.ndarray = ((x - self.mean) / self.scale) @ self.components.T
        return out

    @property
    def name(self) -> str:
        """``mean:L7`` / ``last:L13+L22``: how reports and the artifact name the block."""
        return f"{self.pooling}:" + "+".join(f"L{layer}" for layer in self.layers)


def fit_block(x: np.ndarray, pooling: str, layers: Sequence[int], pca_k: int, seed: int = 0) -> FeatureBlock:
    """Fit standardisation and PCA-``pca_k`` on training rows ``x`` (N, D).

    k is capped at min(pca_k, N - 1, D). Raises DataError on NaN/inf features.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    if not np.isfinite(x).all():
        block = f"{pooling}:" + "+".join(f"L{layer}" for layer in layers)
        raise DataError(f"block {block} has NaN or inf features; re-encode the dataset")
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ < _CONSTANT_STD, 1.0, scaler.scale_)
    k = max(1, min(pca_k, x.shape[0] - 1, x.shape[1]))
    pca = PCA(n_components=k, random_state=seed).fit((x - scaler.mean_) / scale)
    # After standardisation the training mean is 0, so PCA's own centring is a no-op we can drop.
    return FeatureBlock(
        pooling=pooling,
        layers=tuple(int(layer) for layer in layers),
        mean=scaler.mean_.astype(np.float32),
        scale=scale.astype(np.float32),
        components=pca.components_.astype(np.float32),
    )


@dataclass(frozen=True)
class FeatureTransform:
    """Every distinct block, and which block each target's layers came from."""

    blocks: tuple[FeatureBlock, ...]
    target_blocks: Mapping[str, int]  # target name -> index into ``blocks``

    @property
    def n_features(self) -> int:
        """The net's input width: the sum of the blocks' k."""
        return sum(block.n_out for block in self.blocks)

    @property
    def poolings(self) -> tuple[str, ...]:
        """Poolings the encoder must produce, in a fixed order."""
        return tuple(sorted({block.pooling for block in self.blocks}))

    @property
    def layers(self) -> tuple[int, ...]:
        """Layers the encoder must produce (its forward pass stops at the deepest)."""
        return tuple(sorted({layer for block in self.blocks for layer in block.layers}))

    def transform(self, features: LayerFeatures) -> np.ndarray:
        """(N, n_features) float32 net input."""
        parts = [block.apply(features.block(block.pooling, block.layers)) for block in self.blocks]
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def fit_transform(
    features: LayerFeatures,
    rows: np.ndarray,
    layer_choice: Mapping[str, tuple[str, Sequence[int]]],
    pca_k: int,
    seed: int = 0,
) -> FeatureTransform:
    """Fit one block per distinct (pooling, layers) in ``layer_choice`` on ``rows`` only.

    Args:
        features: pooled features of every prompt.
        rows: the training row indices (sorted) the scaler and PCA see.
        layer_choice: target name -> (pooling, layers).
        pca_k: PCA dimensions per block.
    """
    if pca_k < 1:
        raise ConfigError(f"The 'pca_k' parameter must be >= 1; got {pca_k} instead.")
    keys: list[tuple[str, tuple[int, ...]]] = []
    target_blocks: dict[str, int] = {}
    for target, (pooling, layers) in layer_choice.items():
        key = (pooling, tuple(sorted(int(layer) for layer in layers)))
        if not key[1]:
            raise ConfigError(f"no layers chosen for target {target!r}")
        if key not in keys:
            keys.append(key)
        target_blocks[target] = keys.index(key)
    blocks = tuple(
        fit_block(features.block(pooling, layers, rows), pooling, layers, pca_k, seed)
        for pooling, layers in keys
    )
    return FeatureTransform(blocks, target_blocks)
