"""The encoder identity: one record of everything that fixes the features an encoder produces.

:class:`EncoderIdentity` is the encoder part of a feature store key
(:class:`~prefill_router.encode.store.FeatureKey`), one ``encoders`` object of a router's
``router.json``, and what a Ray worker rebuilds the driver's encoder from. The dtypes the
feature store may keep features in (:data:`STORAGE_DTYPES`) live here with the field that
names one.

Example::

    identity = EncoderIdentity.of(Encoder("smollm2-135m"))
    identity.to_json()  # {"name": "smollm2-135m", "weights_sha256": "…", "view": "chat", …}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from prefill_router.encode.encoder import Encoder

__all__ = ["DEFAULT_STORAGE", "STORAGE_DTYPES", "EncoderIdentity"]

#: How features may be kept on disk. float16 halves the size and is precise enough for encoders
#: whose activations stay well under its 65,504 maximum; Gemma-3-270M's residual stream grows to
#: several 10^4 (33,000 on 32 bundled prompts, ~60,700 seen on larger sets), at the edge of that
#: range, so its features are kept as float32.
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
DEFAULT_STORAGE = "float16"


@dataclass(frozen=True)
class EncoderIdentity:
    """Everything that fixes the features an encoder produces.

    A plain record: :class:`~prefill_router.encode.store.FeatureKey` checks its fields when it
    becomes part of a key; a router artifact records them as they were at fit time.
    """

    name: str  # registered name or local model folder
    weights_sha256: str  # hash of the weights actually loaded, so a changed model is a new identity
    view: str  # "chat" | "raw"
    max_tokens: int  # truncation length
    dtype: str  # "float32" | "bfloat16": compute dtype, not the storage dtype
    storage: str = DEFAULT_STORAGE  # how the feature store keeps its features (what the router rounds to)

    @classmethod
    def of(cls, encoder: Encoder) -> EncoderIdentity:
        """The identity of a loaded encoder."""
        return cls(
            encoder.name, encoder.weights_sha256, encoder.view.name, encoder.view.max_tokens, encoder.dtype,
            encoder.storage,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """One ``encoders`` object of router.json."""
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "view": self.view,
            "max_tokens": self.max_tokens,
            "dtype": self.dtype,
            "storage": self.storage,
        }
