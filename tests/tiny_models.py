"""Tiny random-weight encoders built from a config, for fast unit tests of the encode stage."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "What is two plus two? The answer is four.",
    "Name a colour of the sky: blue, grey or orange.",
    "Write a python function that returns the square of a number.",
    "You are a tiny test model. system user assistant",
] * 20


def build_tiny_llama(path: Path, *, layers: int = 4, poison: str | None = None) -> Path:
    """A 4-block llama (hidden 32) with a byte-level BPE tokenizer and a chat template.

    ``poison``: text whose tokens get NaN embeddings, so the real encoder fails on exactly the
    prompts that contain it (the corpus is ASCII, so a non-ASCII character touches no other prompt).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=fast.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
    )  # fmt: skip
    model = LlamaModel(config)
    if poison is not None:
        with torch.no_grad():
            model.embed_tokens.weight[fast(poison, add_special_tokens=False)["input_ids"]] = float("nan")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def build_tiny_bert(path: Path) -> Path:
    """A 3-block bert (hidden 32) with a word-piece vocabulary and no chat template."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w.strip(".,:?").lower() for line in CORPUS for w in line.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words) + 5, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
