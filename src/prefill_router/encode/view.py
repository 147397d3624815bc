"""The prompt view (DESIGN §4): what token ids the encoder reads for a user prompt.

``chat``: the encoder's chat template with one user message and the generation prompt appended;
``raw``: the text with the tokenizer's own special tokens (e.g. [CLS] ... [SEP]). Either way the
ids are ``prefix + content + suffix``, where prefix and suffix are the same for every prompt; a
content longer than the ``max_tokens`` budget keeps its start and its end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefill_router.errors import ConfigError, DataError

VIEWS = ("auto", "chat", "raw")
_SENTINEL = "\u2063PREFILL_ROUTER_CONTENT\u2063"


@dataclass(frozen=True)
class TokenizedPrompts:
    """Token ids of a list of prompts under one view."""

    ids: list[list[int]]
    n_truncated: int
    n_empty: int
    prefix_len: int

    @property
    def n_tokens(self) -> int:
        """Total tokens over all prompts."""
        return sum(len(x) for x in self.ids)


@dataclass(frozen=True)
class PromptView:
    """The constant prefix and suffix around each prompt's content tokens."""

    name: str  # "chat" | "raw"
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    max_tokens: int

    @classmethod
    def build(cls, tokenizer: Any, view: str, max_tokens: int, context: int) -> PromptView:
        """Work out prefix and suffix ids for ``view`` ("auto" = chat when the tokenizer has a template).

        Raises:
            ConfigError: unknown view, chat view without a template, or ``max_tokens`` that leaves
                no room for content or exceeds the model's context.
        """
        if view not in VIEWS:
            raise ConfigError(
                f"The 'view' parameter must be one of {', '.join(VIEWS)}; got {view!r} instead."
            )
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if view == "auto":
            view = "chat" if has_template else "raw"
        if view == "chat" and not has_template:
            raise ConfigError("this encoder's tokenizer has no chat template; use the raw view")
        prefix, suffix = _chat_parts(tokenizer) if view == "chat" else _raw_parts(tokenizer)
        overhead = len(prefix) + len(suffix)
        if max_tokens > context:
            raise ConfigError(f"max_tokens {max_tokens} exceeds the encoder's context of {context} tokens")
        if max_tokens < overhead + 2:
            raise ConfigError(
                f"max_tokens {max_tokens} leaves no room for the prompt: "
                f"the {view} view adds {overhead} tokens"
            )
        return cls(view, tuple(prefix), tuple(suffix), max_tokens)

    def tokenize(self, tokenizer: Any, prompts: Sequence[str]) -> TokenizedPrompts:
        """Token ids of every prompt, truncated to ``max_tokens`` keeping start and end.

        Raises:
            DataError: a prompt that is not a string (empty strings are allowed and counted).
        """
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise DataError(f"prompt {i} is {type(prompt).__name__}, expected str")
        contents = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        budget = self.max_tokens - len(self.prefix) - len(self.suffix)
        ids, truncated = [], 0
        for content in contents:
            if len(content) > budget:
                head = (budget + 1) // 2
                content = content[:head] + content[len(content) - (budget - head) :]
                truncated += 1
            ids.append([*self.prefix, *content, *self.suffix])
        empty = sum(1 for p in prompts if not p.strip())
        return TokenizedPrompts(ids, truncated, empty, len(self.prefix))


def _chat_parts(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Prefix/suffix ids of the chat template around one user message (generation prompt added)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False
    )
    if text.count(_SENTINEL) != 1:
        raise ConfigError("the chat template does not place the user message exactly once")
    before, after = text.split(_SENTINEL)
    return _ids(tokenizer, before), _ids(tokenizer, after)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _raw_parts(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. BOS, or [CLS] and [SEP])."""
    bare = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello world", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    return [], []
