"""Tests of prefill_router.encode.identity: the one encoder identity record."""

from __future__ import annotations

import json
from pathlib import Path

from prefill_router.encode.identity import DEFAULT_STORAGE, EncoderIdentity

IDENTITY = EncoderIdentity("smollm2-135m", "ab" * 32, "chat", 512, "float32")


def test_every_old_import_path_names_the_same_class() -> None:
    import prefill_router.encode as encode
    import prefill_router.encode.store as store
    import prefill_router.train as train
    import prefill_router.train.router as router

    assert train.EncoderIdentity is router.EncoderIdentity is encode.EncoderIdentity is EncoderIdentity
    assert store.EncoderIdentity is EncoderIdentity


def test_the_router_json_encoders_object_is_unchanged() -> None:
    """One ``encoders`` object of router.json, as artifacts written before the move hold it."""
    assert json.dumps(IDENTITY.to_json()) == (
        '{"name": "smollm2-135m", "weights_sha256": "' + "ab" * 32 + '", "view": "chat", '
        '"max_tokens": 512, "dtype": "float32", "storage": "float16"}'
    )
    assert IDENTITY.storage == DEFAULT_STORAGE == "float16"  # artifacts without the field load as before
    assert EncoderIdentity(**IDENTITY.to_json()) == IDENTITY


def test_a_feature_key_and_a_router_share_the_encoders_identity(tiny_llama_dir: Path) -> None:
    from prefill_router.encode import Encoder, feature_key

    encoder = Encoder(str(tiny_llama_dir), dtype="float32", threads=1)
    identity = EncoderIdentity.of(encoder)
    assert identity == EncoderIdentity(
        str(tiny_llama_dir), encoder.weights_sha256, "chat", encoder.view.max_tokens, "float32", "float16"
    )
    assert feature_key(encoder, (1, 2), ("mean",)).encoder == identity
