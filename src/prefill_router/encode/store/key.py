"""The store's keys: :class:`FeatureKey` (an encoder identity plus the poolings and layers kept)
and the digests that name a key's folder, a chunk's files and a prompt list's view.

The digests are the cache's addresses: any change to how they are computed makes every existing
cache under ``~/.cache/prefill-router`` unreachable, so they change only with
:data:`STORE_FORMAT_VERSION` (``tests/test_store.py`` pins them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from prefill_router.encode.identity import DEFAULT_STORAGE, STORAGE_DTYPES, EncoderIdentity
from prefill_router.errors import ConfigError

#: Bumped whenever the on-disk layout or the digests change; it is part of every key digest, so
#: files written by an older layout are simply never looked up again.
STORE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class FeatureKey:
    """Everything that changes the features, except the prompt texts: the encoder's identity
    (weights, view, truncation, compute and storage dtypes) plus the poolings and layers kept.

    Two runs share cached features exactly when their keys are equal. The store checks the
    structure of the fields (types, non-empty, sorted layers) but not their vocabulary: which
    views, dtypes and poolings exist is the encoder's business. On disk (``key.json``) and in the
    digest the key is flat, with the identity's ``name`` as ``encoder`` (:meth:`to_json`).

    Example::

        identity = EncoderIdentity("smollm2-135m", sha, "chat", 512, "float32")
        key = FeatureKey(identity, ("mean", "last"), (0, 15, 30))
    """

    encoder: EncoderIdentity  # which encoder, run how; its storage is the on-disk dtype
    poolings: tuple[str, ...]  # in the order of axis 1 of the features, e.g. ("mean", "last")
    layers: tuple[int, ...]  # sorted; 0 = embedding output, as in DESIGN.md §4

    def __post_init__(self) -> None:
        encoder = self.encoder
        _require(isinstance(encoder, EncoderIdentity), "encoder", "an EncoderIdentity", encoder)
        strings = {
            "encoder": encoder.name, "weights_sha256": encoder.weights_sha256, "view": encoder.view,
            "dtype": encoder.dtype,
        }  # fmt: skip
        for name, value in strings.items():  # named as in key.json, where the name is "encoder"
            _require(_is_nonempty_str(value), name, "a non-empty string", value)
        _require(
            _is_int(encoder.max_tokens) and encoder.max_tokens > 0,
            "max_tokens", "a positive int", encoder.max_tokens,
        )  # fmt: skip
        poolings = _as_tuple(self.poolings)
        _require(
            bool(poolings) and all(map(_is_nonempty_str, poolings)) and len(set(poolings)) == len(poolings),
            "poolings", "a non-empty tuple of distinct names", self.poolings,
        )  # fmt: skip
        storages = f"one of {', '.join(STORAGE_DTYPES)}"
        _require(encoder.storage in STORAGE_DTYPES, "storage", storages, encoder.storage)
        layers = _as_tuple(self.layers)
        layers_ok = all(_is_int(x) and x >= 0 for x in layers) and list(layers) == sorted(set(layers))
        _require(
            bool(layers) and layers_ok,
            "layers", "a non-empty, strictly increasing tuple of layer indices >= 0", self.layers,
        )  # fmt: skip
        # Plain Python values whatever the caller passed (lists, numpy ints), so the key stays
        # hashable and its JSON, hence its digest, never depends on the caller's container types.
        object.__setattr__(self, "encoder", replace(encoder, max_tokens=int(encoder.max_tokens)))
        object.__setattr__(self, "poolings", poolings)
        object.__setattr__(self, "layers", tuple(int(x) for x in layers))

    @property
    def disk_dtype(self) -> np.dtype[Any]:
        """The numpy dtype the features are stored in."""
        return STORAGE_DTYPES[self.encoder.storage]

    def to_json(self) -> dict[str, Any]:
        """The fields as a flat JSON-ready dict (tuples become lists), as ``key.json`` holds them.

        ``storage`` appears only when it is not the default float16, so keys (and digests) of
        float16 features are the same as before the field existed: existing caches stay valid.
        """
        encoder = self.encoder
        return {
            "encoder": encoder.name,
            "weights_sha256": encoder.weights_sha256,
            "view": encoder.view,
            "max_tokens": encoder.max_tokens,
            "dtype": encoder.dtype,
            "poolings": list(self.poolings),
            "layers": list(self.layers),
            **({} if encoder.storage == DEFAULT_STORAGE else {"storage": encoder.storage}),
        }

    @classmethod
    def from_json(cls, blob: Mapping[str, Any]) -> FeatureKey:
        """The key of a :meth:`to_json` dict (a ``key.json``'s ``key``, a Ray worker's argument).

        Raises:
            ConfigError: a field of the wrong type or value.
            KeyError, TypeError: a field missing, or one :meth:`to_json` never writes.
        """
        fields = dict(blob)
        poolings, layers, name = fields.pop("poolings"), fields.pop("layers"), fields.pop("encoder")
        return cls(EncoderIdentity(name, **fields), poolings, layers)

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
