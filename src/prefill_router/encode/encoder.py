"""The encoder: one prefill pass over a batch of prompts, pooled at the requested layers (DESIGN §4).

Layer index convention: 0 = embedding output, ℓ = output of block ℓ, the last index carries the
final norm, as in transformers' ``hidden_states``. A pass runs only the blocks up to the deepest
requested layer. For causal encoders with a chat view, the template's constant prefix is run
once and its key/value cache reused for every batch.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from prefill_router.encode.models import DEFAULT_ENCODER, ResolvedEncoder, resolve_encoder
from prefill_router.encode.view import PromptView, TokenizedPrompts
from prefill_router.errors import ConfigError, EncodeError

if TYPE_CHECKING:
    import torch

POOLINGS = ("mean", "last")
DTYPES = ("float32", "bfloat16")
# bfloat16 is the default on evidence: on 1,000 bundled prompts its probe AUCs match float32's
# (mean over targets x layers: -0.00007; best layer per target: within 0.0006; feature cosine
# >= 0.9997) while extraction runs 2.5-4x faster on CPUs with bf16 matrix units.
# See benchmarks/dtype_auc.py and benchmarks/results/dtype_auc.json.
DEFAULT_DTYPE = "bfloat16"
DEFAULT_MAX_TOKENS = 512
# Tokens per batch (batch size x longest prompt). Measured on this 2-core CPU (benchmarks/
# encode_throughput.py): 2,048 keeps activations cache-resident and ran 2x faster than 8,192.
DEFAULT_TOKEN_BUDGET = 2048
_BIDIRECTIONAL = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta", "deberta-v2"}
# Where each architecture family keeps its blocks and final norm (None: no final norm).
_BLOCK_PATHS = (("layers", "norm"), ("encoder.layer", None), ("h", "ln_f"))
_PrefixKV = list[tuple["torch.Tensor", "torch.Tensor"]]  # per block: (keys, values) of the prefix


@dataclass(frozen=True)
class EncodedFeatures:
    """Pooled features of a list of prompts: ``features`` is float32 (N, n_poolings, n_layers, hidden)."""

    features: np.ndarray
    poolings: tuple[str, ...]
    layers: tuple[int, ...]
    n_tokens: int
    n_truncated: int
    n_empty: int


def parse_layers(spec: str | Sequence[int], n_layers: int) -> tuple[int, ...]:
    """Layer indices from ``"all"``, ``"5,10,22"``, ``"10-20"`` (inclusive) or a list; sorted, unique.

    Raises:
        ConfigError: a malformed spec or an index outside 0..n_layers.
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return tuple(range(n_layers + 1))
        indices: list[int] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            match = re.fullmatch(r"(-?\d+)(?:\s*-\s*(\d+))?", part)
            if not match:
                raise ConfigError(
                    f"The 'layers' parameter must be 'all', 'a,b,c' or 'a-b'; got {spec!r} instead."
                )
            first, last = int(match[1]), int(match[2] or match[1])
            indices.extend(range(first, last + 1))
    else:
        indices = [int(i) for i in spec]
    bad = [i for i in indices if not 0 <= i <= n_layers]
    if bad or not indices:
        raise ConfigError(
            f"layer {bad[0] if bad else spec!r} is out of range: this encoder has layers 0..{n_layers}"
        )
    return tuple(sorted(set(indices)))


def parse_poolings(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Poolings from ``"mean,last"`` or a list, in the canonical order; unknown ones raise ConfigError."""
    items = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [p for p in items if p not in POOLINGS]
    if unknown or not items:
        raise ConfigError(
            f"unknown pooling {unknown[0] if unknown else spec!r}; expected one of: {', '.join(POOLINGS)}"
        )
    return tuple(p for p in POOLINGS if p in items)


class Encoder:
    """A Hugging Face encoder LM that turns prompts into pooled per-layer features.

    Args:
        name: a registered encoder (``smollm2-135m``, ``minilm-l6``, ``gemma3-270m``) or a local
            model directory.
        view: ``auto`` (chat template when the tokenizer has one), ``chat`` or ``raw``.
        max_tokens: prompts longer than this keep their start and end (default: 512, or the
            model's context if shorter).
        dtype: ``bfloat16`` (default, much faster on CPUs with bf16 matrix units) or ``float32``
            (bit-for-bit the reference model).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threads: CPU threads for torch while encoding (default: the cores available to this
            process); torch's process-wide setting is restored after each :meth:`encode`.
        cache_dir: where converted models live (default: the user cache).
        storage: how the feature store keeps this encoder's features, ``float16`` or ``float32``
            (default: what the encoder needs: float32 for Gemma-3, whose activations exceed
            float16's range; float16 otherwise).

    Example::

        enc = Encoder("smollm2-135m", dtype="bfloat16")
        feats = enc.encode(["What is 2+2?"], layers="10-20", poolings="mean")
    """

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        *,
        view: str = "auto",
        max_tokens: int | None = None,
        dtype: str = DEFAULT_DTYPE,
        device: str = "auto",
        threads: int | None = None,
        cache_dir: os.PathLike[str] | str | None = None,
        storage: str | None = None,
    ) -> None:
        from pathlib import Path

        import torch

        from prefill_router.encode.identity import STORAGE_DTYPES

        if dtype not in DTYPES:
            raise ConfigError(
                f"The 'dtype' parameter must be one of {', '.join(DTYPES)}; got {dtype!r} instead."
            )
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"The 'device' parameter must be auto, cpu or cuda; got {device!r} instead.")
        if storage is not None and storage not in STORAGE_DTYPES:
            raise ConfigError(
                f"The 'storage' parameter must be one of {', '.join(STORAGE_DTYPES)}; "
                f"got {storage!r} instead."
            )
        # torch's thread count is process-wide: set for each encode() call and restored after it
        self.threads: int = threads or len(os.sched_getaffinity(0))
        self.resolved: ResolvedEncoder = resolve_encoder(name, Path(cache_dir) if cache_dir else None)
        self.dtype = dtype
        self.storage: str = storage or self.resolved.storage
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device cuda needs a CUDA GPU and a CUDA build of torch; this torch ({torch.__version__}) "
                "sees none. Use --device cpu, or auto (CUDA when present)"
            )
        self.device = (
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        self.tokenizer, self.model = _load(self.resolved, getattr(torch, dtype), self.device)
        self._blocks_path, self._norm_name = _find_blocks(self.model)
        self._blocks = _get(self.model, self._blocks_path)
        _install_output_hooks(self.model, self.pad_id, self.device)
        self.n_layers: int = len(self._blocks)
        self.hidden_size: int = int(self.model.config.hidden_size)
        self.causal = self.model.config.model_type not in _BIDIRECTIONAL
        context = int(getattr(self.model.config, "max_position_embeddings", None) or DEFAULT_MAX_TOKENS)
        limit = min(DEFAULT_MAX_TOKENS, context) if max_tokens is None else max_tokens
        self.view = PromptView.build(self.tokenizer, view, limit, context)
        self._prefix_cache: dict[tuple[int, ...], tuple[_PrefixKV, torch.Tensor]] = {}  # by layers

    # ----------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        """The registered name or the local path."""
        return self.resolved.name

    @property
    def weights_sha256(self) -> str:
        """sha256 of the weights the encoder was built from (GGUF file or safetensors)."""
        return self.resolved.weights_sha256

    @property
    def pad_id(self) -> int:
        """The id used for padding (the tokenizer's pad, else eos, else 0); never attended to."""
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, attr, None)
            if isinstance(value, int):
                return value
        return 0

    # ------------------------------------------------------------------ encoding
    def tokenize(self, prompts: Sequence[str]) -> TokenizedPrompts:
        """Token ids of ``prompts`` under this encoder's view and truncation."""
        return self.view.tokenize(self.tokenizer, prompts)

    def encode(
        self,
        prompts: Sequence[str],
        *,
        layers: str | Sequence[int] = "all",
        poolings: str | Sequence[str] = POOLINGS,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        use_prefix_cache: bool = True,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> EncodedFeatures:
        """Pooled features of ``prompts``: float32 (N, n_poolings, n_layers, hidden).

        Prompts are batched by length under ``token_budget`` (batch x longest prompt) and run
        only through the blocks up to the deepest requested layer. ``on_batch(n_prompts,
        n_tokens)`` is called after each batch.

        Raises:
            ConfigError: bad layers or poolings. EncodeError: the pass produced NaN or inf.
        """
        import torch

        layer_ids = parse_layers(layers, self.n_layers)
        pooling_ids = parse_poolings(poolings)
        tokens = self.tokenize(prompts)
        out = np.zeros((len(prompts), len(pooling_ids), len(layer_ids), self.hidden_size), dtype=np.float32)
        prefix = self.view.prefix if (use_prefix_cache and self.causal and self.view.prefix) else ()
        # Layer 0 alone still runs one block: transformers records the embedding output as a block's input.
        with torch.inference_mode(), _torch_threads(self.threads), self._truncated(max(*layer_ids, 1)):
            for rows in _length_batches([len(x) for x in tokens.ids], token_budget):
                batch = [tokens.ids[i][len(prefix) :] for i in rows]
                out[rows] = self._encode_batch(batch, layer_ids, pooling_ids, len(prefix))
                if on_batch is not None:
                    on_batch(len(rows), sum(len(tokens.ids[i]) for i in rows))
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out).reshape(len(prompts), -1).all(axis=1))[0])
            raise EncodeError(f"the encoder produced NaN or inf features for prompt {bad}")
        return EncodedFeatures(
            out, pooling_ids, layer_ids, tokens.n_tokens, tokens.n_truncated, tokens.n_empty
        )

    def _encode_batch(
        self, batch: list[list[int]], layers: tuple[int, ...], poolings: tuple[str, ...], prefix_len: int
    ) -> np.ndarray:
        """(B, P, L, H) pooled features of one batch of (prefix-stripped when cached) token ids."""
        import torch

        lengths = torch.tensor([len(x) for x in batch])
        width = int(lengths.max())
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = torch.tensor(row)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        kwargs: dict[str, Any] = {}
        prefix_sums = None
        if prefix_len:
            kv, prefix_sums = self._prefix(layers)
            kwargs = {
                "cache": self._batch_cache(kv, len(batch)),
                "use_cache": True,
                "position_ids": (torch.arange(width) + prefix_len)[None, :]
                .expand(len(batch), -1)
                .to(self.device),
            }
            mask = torch.cat([torch.ones(len(batch), prefix_len, dtype=torch.long), mask], dim=1)
        states = self._hidden_states(ids, mask, layers, **kwargs)  # L x (B, T, H)
        token_mask = (torch.arange(width)[None, :] < lengths[:, None]).to(self.device)
        pooled = pool_hidden_states(states, token_mask, poolings, prefix_sums, prefix_len)
        return pooled.cpu().numpy()

    def _hidden_states(
        self, ids: torch.Tensor, mask: torch.Tensor, layers: tuple[int, ...], **kwargs: Any
    ) -> list[torch.Tensor]:
        """The requested hidden states of one forward pass, (B, T, H) tensors in the model's dtype."""
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            # transformers 5 keeps only the listed states (4.x reads a non-empty list as True)
            output_hidden_states=list(layers),
            **kwargs,
        )
        states = out.hidden_states
        return [states[i] for i in layers]

    def _prefix(self, layers: tuple[int, ...]) -> tuple[_PrefixKV, torch.Tensor]:
        """The prefix's per-block (keys, values), batch 1, and per-layer hidden-state sums (L, H),
        computed once per layer set.

        Called inside :meth:`_truncated`, so the keys and values cover exactly the blocks the batch runs.
        """
        import torch

        if layers not in self._prefix_cache:
            ids = torch.tensor([self.view.prefix])
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=torch.ones_like(ids).to(self.device),
                use_cache=True,
                output_hidden_states=list(layers),
            )
            sums = torch.stack([out.hidden_states[i].float()[0].sum(0) for i in layers])
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            kv = [(layer.keys, layer.values) for layer in cache.layers if layer.is_initialized]
            self._prefix_cache[layers] = (kv, sums)
        return self._prefix_cache[layers]

    def _batch_cache(self, kv: _PrefixKV, batch: int) -> Any:
        """A fresh key/value cache holding the prefix for each of ``batch`` rows.

        Fresh per batch because the forward appends the batch's own keys and values to it; built
        from broadcast views of the stored prefix, not a deep copy of a cache object (a deep copy
        cost ~2.5 ms of Python per decision, more than the prefix saves on a short prompt).
        """
        from transformers import DynamicCache

        rows = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
        return DynamicCache(ddp_cache_data=rows, config=self.model.config)

    @contextlib.contextmanager
    def _truncated(self, depth: int) -> Iterator[None]:
        """Run only blocks 1..depth; below full depth the final norm is skipped (as in transformers)."""
        import torch

        parent_path, _, attr = self._blocks_path.rpartition(".")
        parent = _get(self.model, parent_path) if parent_path else self.model
        norm = getattr(self.model, self._norm_name) if self._norm_name else None
        setattr(parent, attr, torch.nn.ModuleList(list(self._blocks)[:depth]))
        if norm is not None and depth < self.n_layers:
            setattr(self.model, str(self._norm_name), torch.nn.Identity())
        try:
            yield
        finally:
            setattr(parent, attr, self._blocks)
            if norm is not None:
                setattr(self.model, str(self._norm_name), norm)


def pool_hidden_states(
    states: Sequence[torch.Tensor],
    mask: torch.Tensor,
    poolings: Sequence[str],
    prefix_sums: torch.Tensor | None = None,
    prefix_len: int = 0,
) -> torch.Tensor:
    """Pool per-layer hidden states over real tokens: (B, n_poolings, n_layers, H) float32.

    ``mask`` (B, T) marks real tokens and may pad on either side. ``mean`` averages real tokens;
    ``last`` takes the last real one. With a cached prefix, ``prefix_sums`` (L, H) holds the
    prefix tokens' per-layer sums, so the mean covers prefix + prompt exactly as without a cache.
    """
    import torch

    weights = mask.float()
    keep = mask[..., None]  # (B, T, 1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions[None, :] * mask.long()).argmax(dim=1)  # index of the last real token
    rows = torch.arange(mask.shape[0], device=mask.device)
    pooled = []
    for name in poolings:
        if name == "mean":
            # Zero the padding in the states' own dtype and accumulate in float32: exact, and no
            # full-size float32 copy of every bfloat16 state.
            sums = torch.stack([h.masked_fill(~keep, 0).sum(1, dtype=torch.float32) for h in states], dim=1)
            count = weights.sum(1)[:, None, None]
            if prefix_sums is not None:
                sums, count = sums + prefix_sums[None], count + prefix_len
            pooled.append(sums / count)
        else:
            pooled.append(torch.stack([h[rows, last].float() for h in states], dim=1))
    return torch.stack(pooled, dim=1)


def _length_batches(lengths: list[int], token_budget: int) -> Iterator[np.ndarray]:
    """Row indices in batches of similar length with batch size x longest length <= budget."""
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * lengths[order[stop]] <= token_budget:
            stop += 1
        yield order[start:stop]
        start = stop


def _install_output_hooks(model: Any, token_id: int, device: str) -> None:
    """One full-depth forward of one token, so that transformers (5.x) installs its hidden-state
    hooks on every block. It installs them on the first forward, on the blocks the model holds
    then: a first pass truncated to a few blocks would leave the deeper ones without, and a later,
    deeper pass would miss their states (an IndexError, or states shifted by a block)."""
    import torch

    with torch.inference_mode():
        model(input_ids=torch.tensor([[token_id]], device=device), output_hidden_states=True)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's (process-wide) intra-op thread count set to ``n`` for the block, then restored."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` while a model loads (no hub lookup, even on a first import of
    transformers), then the environment as it was."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _load(resolved: ResolvedEncoder, dtype: Any, device: str) -> tuple[Any, Any]:
    """Tokenizer and base model (no LM head) from a local directory, never the network."""
    with _offline():
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bar is the one users watch
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved.model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(resolved.model_dir, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise EncodeError(f"cannot load the encoder from {resolved.model_dir}: {exc}") from exc
    # The prompt view truncates to max_tokens itself; without this the tokenizer warns on every
    # long prompt it is asked to count before that truncation.
    tokenizer.model_max_length = 1 << 30
    if (
        hasattr(model, "get_decoder")
        and not hasattr(model, "layers")
        and hasattr(model.get_decoder(), "layers")
    ):
        model = model.get_decoder()
    return tokenizer, model.to(device).eval()


def _find_blocks(model: Any) -> tuple[str, str | None]:
    for blocks, norm in _BLOCK_PATHS:
        try:
            found = _get(model, blocks)
        except AttributeError:
            continue
        if len(found) > 0:
            return blocks, norm if norm and hasattr(model, norm) else None
    raise EncodeError(f"cannot find the transformer blocks of {type(model).__name__}")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
