"""The encoders a router reads: their identities, each built on first use, and the features they give.

A router scores with one or more encoders (a fused router reads several). :class:`RouterEncoders`
builds each one lazily (thread-safe: a server's first requests may race), checks an encoder handed
in or installed against the weights the router was trained on, and extracts exactly the layers
and poolings the router's blocks read, rounded as the feature store keeps them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prefill_router.encode.identity import EncoderIdentity
from prefill_router.errors import DataError, EncodeError
from prefill_router.train.transform import FeatureTransform, LayerFeatures

if TYPE_CHECKING:
    from prefill_router.encode import Encoder


class RouterEncoders:
    """The encoders of one router, by index: identities fixed, models built on first use."""

    def __init__(self, identities: Sequence[EncoderIdentity], transform: FeatureTransform) -> None:
        self.identities = tuple(identities)
        self.transform = transform
        self.cache_dir: str | Path | None = None  # where the encoders' converted models live
        self.allow_local = True  # False once loaded: a router.json from elsewhere names them
        self._loaded: list[Encoder | None] = [None] * len(self.identities)
        self._lock = threading.Lock()

    def loaded(self) -> list[Encoder]:
        """Every encoder, each built on first use."""
        with self._lock:
            for index, encoder in enumerate(self._loaded):
                if encoder is None:
                    self._attach(index, self.build(index))
            return [encoder for encoder in self._loaded if encoder is not None]

    def use(self, encoder: Encoder) -> None:
        """Use an already loaded encoder; it must be one of the router's."""
        identity = EncoderIdentity.of(encoder)
        if identity not in self.identities:
            raise EncodeError(
                f"the encoder {identity} is not one this router was trained with "
                f"({', '.join(map(str, self.identities))})"
            )
        with self._lock:
            self._attach(self.identities.index(identity), encoder)

    def _attach(self, index: int, encoder: Encoder) -> None:
        for block in self.transform.blocks:
            if block.encoder == index and block.mean.shape[0] != len(block.layers) * encoder.hidden_size:
                raise EncodeError(
                    f"block {block.name} expects {block.mean.shape[0]} features but encoder "
                    f"{encoder.name} has hidden size {encoder.hidden_size}"
                )
        self._loaded[index] = encoder

    def build(self, index: int, *, device: str = "auto", threads: int | None = None) -> Encoder:
        """A new encoder as the router was trained with (not attached: see :meth:`use`)."""
        from prefill_router.encode import Encoder
        from prefill_router.encode.models import check_encoder_name

        identity = self.identities[index]
        cache = Path(self.cache_dir) if self.cache_dir else None
        check_encoder_name(identity.name, cache, allow_local=self.allow_local)
        return Encoder(
            identity.name, view=identity.view, max_tokens=identity.max_tokens, dtype=identity.dtype,
            device=device, threads=threads, cache_dir=self.cache_dir, storage=identity.storage,
        )  # fmt: skip

    def check_installed(self, cache_dir: str | Path | None = None) -> None:
        """Raise unless every installed encoder has the weights the router was trained on.

        Raises:
            MissingDependencyError: an encoder's model package is not installed (the message
                names the pip command). EncodeError: an installed encoder has other weights.
                ConfigError: a loaded router names an unregistered encoder that is not allowed.
        """
        from prefill_router.encode import resolve_encoder
        from prefill_router.encode.models import check_encoder_name

        cache = Path(cache_dir) if cache_dir else None
        for identity in self.identities:
            resolved = resolve_encoder(identity.name, cache, remember=False)  # hashes, loads nothing
            if resolved.weights_sha256 != identity.weights_sha256:
                raise EncodeError(
                    f"this router was trained on encoder {identity.name} with weights sha256 "
                    f"{identity.weights_sha256[:16]}…, but the installed one has "
                    f"{resolved.weights_sha256[:16]}…; install the encoder it was trained on or refit"
                )
            check_encoder_name(identity.name, cache, allow_local=self.allow_local)

    def features(self, prompts: Sequence[str]) -> list[LayerFeatures]:
        """The pooled features the transform needs, one LayerFeatures per encoder, rounded to the
        dtype the feature store keeps them in (so a router scores a prompt exactly as it saw it in
        training). Each encoder runs only up to the deepest layer its blocks read.

        Raises:
            DataError: a prompt that is not a string or is empty.
        """
        from prefill_router.encode.identity import STORAGE_DTYPES

        _check_prompts(prompts)
        out = []
        for index, encoder in enumerate(self.loaded()):
            encoded = encoder.encode(
                list(prompts),
                layers=self.transform.layers_of(index),
                poolings=self.transform.poolings_of(index),
            )
            values = encoded.features.astype(STORAGE_DTYPES[self.identities[index].storage])
            out.append(LayerFeatures(values, encoded.poolings, encoded.layers))
        return out


def _check_prompts(prompts: Sequence[str]) -> None:
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise DataError(f"prompt {i} is a {type(prompt).__name__}, not a string")
        if not prompt.strip():
            raise DataError(f"prompt {i} is empty; a router needs text to score")
