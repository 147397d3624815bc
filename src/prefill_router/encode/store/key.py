"""The store's keys: :class:`FeatureKey` (everything that changes the features) and the digests
that name a key's folder, a chunk's files and a prompt list's view.

The digests are the cache's addresses: any change to how they are computed makes every existing
cache under ``~/.cache/prefill-router`` unreachable, so they change only with
:data:`STORE_FORMAT_VERSION` (``tests/test_store.py`` pins them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefill_router.errors import ConfigError

#: Bumped whenever the on-disk layout or the digests change; it is part of every key digest, so
#: files written by an older layout are simply never looked up again.
STORE_FORMAT_VERSION = 1

#: How features may be kept on disk. float16 halves the size and is precise enough for encoders
#: whose activations stay well under its 65,504 maximum; Gemma-3-270M's residual stream grows to
#: several 10^4 (33,000 on 32 bundled prompts, ~60,700 seen on larger sets), at the edge of that
#: range, so its features are kept as float32.
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
DEFAULT_STORAGE = "float16"


@dataclass(frozen=True)
class FeatureKey:
    """Everything that changes the features, except the prompt texts.

    Two runs share cached features exactly when their keys are equal. The store checks the
    structure of the fields (types, non-empty, sorted layers) but not their vocabulary: which
    views, dtypes and poolings exist is the encoder's business.

    Example::

        key = FeatureKey("smollm2-135m", sha, "chat", 512, "float32", ("mean", "last"), (0, 15, 30))
    """

    encoder: str  # registered name or local path
    weights_sha256: str  # hash of the weights actually loaded, so a changed model is a new key
    view: str  # "chat" | "raw"
    max_tokens: int  # truncation length
    dtype: str  # "float32" | "bfloat16": compute dtype, not the storage dtype
    poolings: tuple[str, ...]  # in the order of axis 1 of the features, e.g. ("mean", "last")
    layers: tuple[int, ...]  # sorted; 0 = embedding output, as in DESIGN.md §4
    storage: str = DEFAULT_STORAGE  # on-disk dtype: "float16" | "float32" (see STORAGE_DTYPES)

    def __post_init__(self) -> None:
        for name in ("encoder", "weights_sha256", "view", "dtype"):
            _require(_is_nonempty_str(getattr(self, name)), name, "a non-empty string", getattr(self, name))
        _require(
            _is_int(self.max_tokens) and self.max_tokens > 0, "max_tokens", "a positive int", self.max_tokens
        )
        poolings = _as_tuple(self.poolings)
        _require(
            bool(poolings) and all(map(_is_nonempty_str, poolings)) and len(set(poolings)) == len(poolings),
            "poolings", "a non-empty tuple of distinct names", self.poolings,
        )  # fmt: skip
        _require(
            self.storage in STORAGE_DTYPES, "storage", f"one of {', '.join(STORAGE_DTYPES)}", self.storage
        )
        layers = _as_tuple(self.layers)
        layers_ok = all(_is_int(x) and x >= 0 for x in layers) and list(layers) == sorted(set(layers))
        _require(
            bool(layers) and layers_ok,
            "layers", "a non-empty, strictly increasing tuple of layer indices >= 0", self.layers,
        )  # fmt: skip
        # Plain Python values whatever the caller passed (lists, numpy ints), so the key stays
        # hashable and its JSON, hence its digest, never depends on the caller's container types.
        object.__setattr__(self, "max_tokens", int(self.max_tokens))
        object.__setattr__(self, "poolings", poolings)
        object.__setattr__(self, "layers", tuple(int(x) for x in layers))

    @property
    def disk_dtype(self) -> np.dtype[Any]:
        """The numpy dtype the features are stored in."""
        return STORAGE_DTYPES[self.storage]

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples become lists).

        ``storage`` appears only when it is not the default float16, so keys (and digests) of
        float16 features are the same as before the field existed: existing caches stay valid.
        """
        return {
            "encoder": self.encoder,
            "weights_sha256": self.weights_sha256,
            "view": self.view,
            "max_tokens": self.max_tokens,
            "dtype": self.dtype,
            "poolings": list(self.poolings),
            "layers": list(self.layers),
            **({} if self.storage == DEFAULT_STORAGE else {"storage": self.storage}),
        }

    def digest(self) -> str:
        """The sha256 hex digest of a canonical JSON of every field and the store format version."""
        payload = {"store_format": STORE_FORMAT_VERSION, **self.to_json()}
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _chunk_digest(key_digest: str, prompts: Sequence[str]) -> str:
    """sha256 over the key digest and each prompt, length-prefixed so boundaries are unambiguous."""
    digest = hashlib.sha256(key_digest.encode("ascii"))
    for prompt in prompts:
        # surrogatepass: any Python str hashes, even one with lone surrogates from bad JSON.
        data = prompt.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _order_digest(key_digest: str, chunk_digests: Sequence[str]) -> str:
    """sha256 over the key digest and every chunk digest, in order: one per prompt list."""
    return hashlib.sha256("\n".join([key_digest, *chunk_digests]).encode("ascii")).hexdigest()


# --- Field checks, shared by the store's modules ------------------------------------------------


def _as_tuple(value: object) -> tuple[Any, ...]:
    """``value`` as a tuple; a str or a non-iterable gives ``()`` (caught by the caller's check)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return ()
    return tuple(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_nonempty_str(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _require(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"The {name!r} parameter must be {expected}; got {got!r} instead.")
