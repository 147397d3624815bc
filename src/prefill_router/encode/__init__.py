"""Stage 2: encoders, prompt views, pooled features and the on-disk feature store (DESIGN.md §4).

Importing this package is cheap; torch and transformers load when an :class:`Encoder` is built,
Ray only when :func:`extract_features_ray` is handed a Ray session.
"""

from prefill_router.encode.distributed import extract_features_ray
from prefill_router.encode.encoder import POOLINGS, EncodedFeatures, Encoder, parse_layers, parse_poolings
from prefill_router.encode.extract import export_npz, extract_features, feature_key
from prefill_router.encode.identity import EncoderIdentity
from prefill_router.encode.models import DEFAULT_ENCODER, ENCODERS, resolve_encoder
from prefill_router.encode.store import FeatureKey, FeatureStore, StoredFeatures, default_cache_dir

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "POOLINGS",
    "EncodedFeatures",
    "Encoder",
    "EncoderIdentity",
    "FeatureKey",
    "FeatureStore",
    "StoredFeatures",
    "default_cache_dir",
    "export_npz",
    "extract_features",
    "extract_features_ray",
    "feature_key",
    "parse_layers",
    "parse_poolings",
    "resolve_encoder",
]
