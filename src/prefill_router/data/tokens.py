"""Token-count estimates for costing prompts and outputs when no tokenizer of the target is at hand."""

from __future__ import annotations

import math

BYTES_PER_TOKEN = 4.0
"""OpenAI's published rule of thumb (~4 characters of English per token), applied to UTF-8 bytes."""


def estimate_tokens(text: str | None) -> int:
    """Estimated token count of ``text`` for a target whose tokenizer we do not have.

    Uses ceil(UTF-8 bytes / 4); empty or missing text counts as 0 tokens.

    Example::

        >>> estimate_tokens("Hello, world!")
        4
    """
    if not text:
        return 0
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)
