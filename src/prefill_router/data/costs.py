"""The cost of sending a prompt to a target (DESIGN §3).

Observed cost when the dataset has one; otherwise
``input_tokens_i x input_price_m + est_output_tokens_m x output_price_m`` (prices per million
tokens), where the output estimate is the target's median observed output length on the
training rows, or :data:`DEFAULT_OUTPUT_TOKENS` when the data has none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prefill_router.data.dataset import RoutingDataset, TargetInfo
from prefill_router.data.tokens import estimate_tokens
from prefill_router.errors import DataError

DEFAULT_OUTPUT_TOKENS = 256.0
"""Output length assumed for a target with no observed output lengths (a typical short answer)."""

TOKENS_PER_MILLION = 1e6


def check_priced(targets: Sequence[TargetInfo], *, source: str | None = None) -> None:
    """Raise unless every target has an input and an output price (every routing decision weighs
    cost, so a router needs them all); called before long work (encoding, training) starts.

    Raises:
        DataError: naming the targets without a price and the ways to give them one.
    """
    unpriced = [t.name for t in targets if not t.has_price]
    if unpriced:
        raise DataError(
            f"{len(unpriced)} target(s) without a price: {', '.join(unpriced)}. Routing weighs each "
            "target's cost: import the data again with --prices FILE (YAML, USD per million tokens, "
            "e.g. 'my-model: {input: 0.5, output: 1.5}'; importers fit prices from observed costs "
            "where the source has them), or leave these targets out (--targets)",
            source=source,
        )


def output_token_estimates(dataset: RoutingDataset, *, split: str | None = "train") -> np.ndarray:
    """(M,) median observed output tokens per target on ``split`` rows (all rows if it is absent).

    Targets with no observation get :data:`DEFAULT_OUTPUT_TOKENS`.
    """
    estimates = np.full(len(dataset.targets), DEFAULT_OUTPUT_TOKENS)
    if dataset.output_tokens is None:
        return estimates
    rows = (
        dataset.splits == split if split in dataset.split_names() else np.ones(dataset.n_prompts, dtype=bool)
    )
    observed = dataset.output_tokens[rows]
    for j in range(observed.shape[1]):
        column = observed[:, j][~np.isnan(observed[:, j])]
        if column.size:
            estimates[j] = float(np.median(column))
    return estimates


def input_tokens(prompts: np.ndarray | Sequence[str]) -> np.ndarray:
    """(N,) estimated input tokens of each prompt."""
    return np.array([estimate_tokens(p) for p in prompts], dtype=np.float64)


def price_costs_from_tokens(
    tokens_in: np.ndarray, targets: Sequence[TargetInfo], output_tokens: np.ndarray
) -> np.ndarray:
    """(N, M) USD from list prices: input tokens x input price + estimated output tokens x output
    price (DESIGN §3); NaN for a target without a price."""
    price_in = np.array([np.nan if t.input_usd_per_mtok is None else t.input_usd_per_mtok for t in targets])
    price_out = np.array(
        [np.nan if t.output_usd_per_mtok is None else t.output_usd_per_mtok for t in targets]
    )
    costs: np.ndarray = (
        tokens_in[:, None] * price_in[None, :] + np.asarray(output_tokens)[None, :] * price_out[None, :]
    ) / TOKENS_PER_MILLION
    return costs


def cost_matrix(dataset: RoutingDataset, output_tokens_per_target: np.ndarray | None = None) -> np.ndarray:
    """(N, M) cost in USD of each prompt on each target.

    Observed costs win; elsewhere the price formula above; NaN where neither is known (a target
    without a price and no observed cost).
    """
    out_tokens = (
        output_token_estimates(dataset) if output_tokens_per_target is None else output_tokens_per_target
    )
    estimated = price_costs_from_tokens(input_tokens(dataset.prompts), dataset.targets, out_tokens)
    if dataset.costs_usd is None:
        return estimated
    costs: np.ndarray = np.where(np.isnan(dataset.costs_usd), estimated, dataset.costs_usd)
    return costs
