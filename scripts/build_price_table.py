"""Regenerate the built-in price table and its documentation from the dataset copies in ../shared.

Writes ``src/prefill_router/data/resources/prices.json`` and ``docs/prices.md`` (both atomically),
so that every built-in price can be traced to a file and re-derived:

* LLMRouter's 14 models: LLMRouter's own ``input_price``/``output_price`` (the paper's setting).
* MMLU-Pro's 29 and RouteLLM's 2 models: the litellm 1.110.2 price file, under the keys chosen in
  ``shared/datasets/README.md`` section 4 (:data:`LITELLM_KEYS`); Gemini 1.5 from Google's list
  prices; models without any public price from a power law in the parameter count, fitted to the
  open models of this table whose litellm price is the same for input and output.

Usage::

    .venv/bin/python scripts/build_price_table.py [--shared DIR] [--json PATH] [--docs PATH]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# A script in a checkout, not part of the package: make `prefill_router` importable without installing it.
sys.path.insert(0, str(REPO / "src"))

from prefill_router._files import atomic_path  # noqa: E402
from prefill_router.data.prices import normalise_model_name  # noqa: E402

DEFAULT_SHARED = REPO.parent / "shared" / "datasets"
DEFAULT_JSON = REPO / "src" / "prefill_router" / "data" / "resources" / "prices.json"
DEFAULT_DOCS = REPO / "docs" / "prices.md"

LITELLM_VERSION = "1.110.2"
LITELLM_FILE = "prices/litellm/model_prices_and_context_window_backup.json"
LLMROUTER_FILE = "llmrouter/data/example_data/llm_candidates/default_llm.json"
MMLU_PRO_DIR = "mmlu_pro/eval_results"
ROUTELLM_CSV = "routellm/routellm/evals/mmlu/responses/mmlu_abstract_algebra.csv"

_FW = "fireworks_ai/accounts/fireworks/models/"
# Dataset model -> (litellm key, exact). The keys are those of shared/datasets/README.md section 4;
# exact=False marks a close but different model (another context length, an API version, ...).
LITELLM_KEYS: dict[str, tuple[str, bool]] = {
    "gpt-4-1106-preview": ("gpt-4-1106-preview", True),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": ("together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1", True),
    "Mixtral-8x7B-Instruct-v0.1": ("together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1", True),
    "Meta-Llama-3_1-8B-Instruct": ("deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct", True),
    "Meta-Llama-3_1-70B-Instruct": ("deepinfra/meta-llama/Meta-Llama-3.1-70B-Instruct", True),
    "Meta-Llama-3_1-70B": ("cerebras/llama-3.1-70b", True),
    "Meta-Llama-3_1-8B": ("together_ai/meta-llama/Meta-Llama-3.1-8B", True),
    "Meta-Llama-3-70B": ("replicate/meta/llama-3-70b", True),
    "Meta-Llama-3-8B": ("replicate/meta/llama-3-8b", True),
    "Llama-2-70b-hf": ("replicate/meta/llama-2-70b", True),
    "Llama-2-13b-hf": ("replicate/meta/llama-2-13b", True),
    "Llama-2-7b-hf": ("replicate/meta/llama-2-7b", True),
    "Mistral-7B-Instruct-v0.1": ("anyscale/mistralai/Mistral-7B-Instruct-v0.1", True),
    "Mistral-7B-Instruct-v0.2": ("replicate/mistralai/mistral-7b-instruct-v0.2", True),
    "Mistral-7B-v0.1": ("replicate/mistralai/mistral-7b-v0.1", True),
    "Mistral-7B-v0.2-hf": (_FW + "mistral-7b-v0p2", True),
    "Mixtral-8x7B-v0.1": (_FW + "mixtral-8x7b", True),
    "Qwen1.5-72B-Chat": (_FW + "qwen1p5-72b-chat", True),
    "Yi-34B": (_FW + "yi-34b", True),
    "Yi-6B": (_FW + "yi-6b", True),
    "gemma-7b": (_FW + "gemma-7b", True),
    "jamba-1.5-large": ("jamba-1.5-large", True),
    "DeepSeek-Coder-V2": (_FW + "deepseek-coder-v2-instruct", False),
    "Phi-3-mini-4k-instruct": (_FW + "phi-3-mini-128k-instruct", False),
    "c4ai-command-r-v01": ("vercel_ai_gateway/cohere/command-r", False),
}

# Google's published pay-as-you-go prices after the October 2024 cut (prompts up to 128k tokens).
GOOGLE_LIST_PRICES: dict[str, tuple[float, float]] = {
    "gemini-1.5-pro-002": (1.25, 5.00),
    "gemini-1.5-flash-002": (0.075, 0.30),
}
GOOGLE_SOURCE = "Google list price, Oct 2024"

# Nominal parameter counts (billions) from the model names and cards; total, not active, for MoE
# models. None = weights not published. LLMRouter's `size` field agrees except for Mixtral-8x7B
# (45B there; Mistral AI states 46.7B).
PARAMS_B: dict[str, float | None] = {
    # LLMRouter
    "qwen2.5-7b-instruct": 7,
    "codegemma-7b": 7,
    "gemma-2-9b-it": 9,
    "llama-3.1-8b-instruct": 8,
    "llama3-chatqa-1.5-8b": 8,
    "mistral-7b-instruct-v0.3": 7,
    "llama-3.3-nemotron-super-49b-v1": 49,
    "llama-3.1-nemotron-51b-instruct": 51,
    "llama3-chatqa-1.5-70b": 70,
    "llama3-70b-instruct": 70,
    "mixtral-8x7b-instruct-v0.1": 46.7,
    "mixtral-8x22b-instruct-v0.1": 141,
    "palmyra-creative-122b": 122,
    "mistral-nemo-12b-instruct": 12,
    # MMLU-Pro
    "DeepSeek-Coder-V2": 236,
    "Llama-2-13b-hf": 13,
    "Llama-2-70b-hf": 70,
    "Llama-2-7b-hf": 7,
    "Meta-Llama-3-70B": 70,
    "Meta-Llama-3-8B": 8,
    "Meta-Llama-3_1-70B-Instruct": 70,
    "Meta-Llama-3_1-70B": 70,
    "Meta-Llama-3_1-8B-Instruct": 8,
    "Meta-Llama-3_1-8B": 8,
    "Mistral-7B-Instruct-v0.1": 7,
    "Mistral-7B-Instruct-v0.2": 7,
    "Mistral-7B-v0.1": 7,
    "Mistral-7B-v0.2-hf": 7,
    "Mixtral-8x7B-Instruct-v0.1": 46.7,
    "Mixtral-8x7B-v0.1": 46.7,
    "Phi-3-mini-4k-instruct": 3.8,
    "Qwen1.5-110B": 110,
    "Qwen1.5-72B-Chat": 72,
    "Qwen1.5-7B-Chat": 7,
    "Yi-34B": 34,
    "Yi-6B": 6,
    "Yi-6b-Chat": 6,
    "c4ai-command-r-v01": 35,
    "gemini-1.5-flash-002": None,
    "gemini-1.5-pro-002": None,
    "gemma-7b": 7,
    "jamba-1.5-large": 398,
    "mathstral-7B": 7,
    # RouteLLM
    "gpt-4-1106-preview": None,
    "mistralai/Mixtral-8x7B-Instruct-v0.1": 46.7,
}


@dataclass
class Entry:
    """One model of the table while it is being built."""

    name: str
    input_usd_per_mtok: float | None
    output_usd_per_mtok: float | None
    source: str
    params_b: float | None
    aliases: list[str] = field(default_factory=list)
    derived: bool = False
    litellm_exact: bool = False  # the price is litellm's for this very model (candidate for the fit)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": self.aliases,
            "input_usd_per_mtok": self.input_usd_per_mtok,
            "output_usd_per_mtok": self.output_usd_per_mtok,
            "source": self.source,
            "derived": self.derived,
            "params_b": self.params_b,
        }


# ---------------------------------------------------------------------- reading the sources
def usd(value: float) -> float:
    """A price with float noise removed (4e-7 * 1e6 = 0.39999999999999997 -> 0.4)."""
    return float(f"{value:.10g}")


def round_sig(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits."""
    return float(f"{value:.{digits}g}")


def llmrouter_entries(shared: Path) -> list[Entry]:
    candidates = json.loads((shared / LLMROUTER_FILE).read_text(encoding="utf-8"))
    entries = []
    for name, info in candidates.items():
        model_id = str(info["model"])
        entries.append(
            Entry(
                name=name,
                input_usd_per_mtok=usd(float(info["input_price"])),
                output_usd_per_mtok=usd(float(info["output_price"])),
                source=f"LLMRouter default_llm.json ({info['service']} API catalogue)",
                params_b=PARAMS_B[name],
                aliases=[model_id] if model_id != name else [],
            )
        )
    return entries


def mmlu_pro_names(shared: Path) -> list[str]:
    pattern = re.compile(r"model_outputs_(.+)_5shots\.zip")
    names = [m.group(1) for p in (shared / MMLU_PRO_DIR).iterdir() if (m := pattern.fullmatch(p.name))]
    return sorted(names)


def routellm_names(shared: Path) -> list[str]:
    with open(shared / ROUTELLM_CSV, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    return [column.strip() for column in header[1:]]


def priced_entry(name: str, litellm: dict[str, Any]) -> Entry:
    """A MMLU-Pro or RouteLLM model: litellm, then Google's list, else left for the derivation."""
    params_b = PARAMS_B[name]
    if name in LITELLM_KEYS:
        key, exact = LITELLM_KEYS[name]
        costs = litellm[key]
        kind = "key" if exact else "close match"
        return Entry(
            name=name,
            input_usd_per_mtok=usd(costs["input_cost_per_token"] * 1e6),
            output_usd_per_mtok=usd(costs["output_cost_per_token"] * 1e6),
            source=f"litellm {LITELLM_VERSION} {kind} {key}",
            params_b=params_b,
            aliases=[key] if exact and key != name else [],
            litellm_exact=exact,
        )
    if name in GOOGLE_LIST_PRICES:
        price_in, price_out = GOOGLE_LIST_PRICES[name]
        return Entry(name, price_in, price_out, GOOGLE_SOURCE, params_b)
    if params_b is None:
        raise SystemExit(f"{name}: no litellm key, no list price and no parameter count; add one")
    return Entry(name, None, None, "", params_b, derived=True)


def merge(entries: list[Entry]) -> list[Entry]:
    """Fold entries that name the same model (same normalised name) into the first of them.

    Their prices must agree; the later names become aliases and their sources are noted.
    """
    merged: dict[str, Entry] = {}
    for entry in entries:
        key = normalise_model_name(entry.name)
        first = merged.get(key)
        if first is None:
            merged[key] = entry
            continue
        if (first.input_usd_per_mtok, first.output_usd_per_mtok, first.derived) != (
            entry.input_usd_per_mtok,
            entry.output_usd_per_mtok,
            entry.derived,
        ):
            raise SystemExit(f"{first.name} and {entry.name} are one model with two prices; resolve by hand")
        for alias in [entry.name, *entry.aliases]:
            if alias != first.name and alias not in first.aliases:
                first.aliases.append(alias)
        if entry.source != first.source and entry.source not in first.source:
            first.source += f"; same as {entry.source}"
        first.litellm_exact = first.litellm_exact or entry.litellm_exact
    return list(merged.values())


# ---------------------------------------------------------------------- the derivation
def fit_power_law(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of price = a * params_b ** b, least squares on log(price) against log(params_b)."""
    xs = [math.log(p) for p, _ in points]
    ys = [math.log(c) for _, c in points]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - x_mean) ** 2 for x in xs
    )
    return math.exp(y_mean - b * x_mean), b


def derive_prices(entries: list[Entry]) -> dict[str, Any]:
    """Fill in the derived prices; returns the derivation's description for ``_about``."""
    fit_set = [
        e
        for e in entries
        if e.litellm_exact and e.params_b is not None and e.input_usd_per_mtok == e.output_usd_per_mtok
    ]
    points = [(e.params_b, e.input_usd_per_mtok) for e in fit_set]
    a_raw, b_raw = fit_power_law([(p, c) for p, c in points if p is not None and c is not None])
    a, b = round_sig(a_raw), round_sig(b_raw)
    for entry in entries:
        if entry.derived:
            assert entry.params_b is not None
            price = round_sig(a * entry.params_b**b)
            entry.input_usd_per_mtok = entry.output_usd_per_mtok = price
            entry.source = f"derived from {entry.params_b:g}B parameters (power law, see _about)"
    return {
        "formula": (
            "input_usd_per_mtok = output_usd_per_mtok = a * params_b ** b, rounded to 3 significant digits"
        ),
        "a": a,
        "b": b,
        "fit": (
            "ordinary least squares of log(price) on log(params_b); a and b rounded to 3 significant "
            "digits, and the rounded values used"
        ),
        "fit_set_rule": (
            "open-weight models of this table priced from an exact litellm key whose input and output "
            "prices are equal (close matches and LLMRouter's own prices excluded)"
        ),
        "fit_set": [
            {"name": e.name, "params_b": e.params_b, "usd_per_mtok": e.input_usd_per_mtok} for e in fit_set
        ],
        "derived": [e.name for e in entries if e.derived],
    }


# ---------------------------------------------------------------------- the outputs
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_table(shared: Path) -> dict[str, Any]:
    litellm = json.loads((shared / LITELLM_FILE).read_text(encoding="utf-8"))
    found = mmlu_pro_names(shared) + routellm_names(shared)
    unused = set(LITELLM_KEYS) - set(found)
    if unused:
        raise SystemExit(f"LITELLM_KEYS names models no dataset holds: {sorted(unused)}")
    entries = merge(llmrouter_entries(shared) + [priced_entry(name, litellm) for name in found])
    derivation = derive_prices(entries)
    entries.sort(key=lambda e: e.name.casefold())
    check_unambiguous(entries)
    about = {
        "description": (
            "Built-in prices of every model of the LLMRouter, MMLU-Pro and RouteLLM datasets, in USD per "
            "million tokens. Generated by scripts/build_price_table.py; do not edit by hand."
        ),
        "units": "USD per million tokens (litellm's per-token cost x 1e6)",
        "litellm_version": LITELLM_VERSION,
        "sources": {
            "llmrouter": {
                "file": LLMROUTER_FILE,
                "sha256": sha256(shared / LLMROUTER_FILE),
                "rule": "LLMRouter's own input_price/output_price for its 14 models (the paper's setting)",
            },
            "litellm": {
                "file": LITELLM_FILE,
                "sha256": sha256(shared / LITELLM_FILE),
                "rule": (
                    "MMLU-Pro and RouteLLM models: the key chosen in shared/datasets/README.md section 4; "
                    "'close match' marks a key for a related but different model"
                ),
            },
            "google": {
                "rule": (
                    "gemini-1.5-pro-002 and gemini-1.5-flash-002: Google's pay-as-you-go list prices after "
                    "the October 2024 cut, prompts up to 128k tokens"
                ),
            },
        },
        "merging": (
            "models that several datasets spell alike (same name after dropping the provider prefix, "
            "lowercasing and keeping [a-z0-9]) are one entry; the other spellings are aliases"
        ),
        "params_b": "nominal parameter count in billions (total for MoE models); null for closed models",
        "derivation": derivation,
    }
    return {"_about": about, "models": [e.to_json() for e in entries]}


def check_unambiguous(entries: list[Entry]) -> None:
    """No name or alias of one entry may normalise to a name or alias of another."""
    owner: dict[str, str] = {}
    for entry in entries:
        for name in {normalise_model_name(n) for n in [entry.name, *entry.aliases]}:
            if owner.setdefault(name, entry.name) != entry.name:
                raise SystemExit(f"{entry.name} and {owner[name]} both answer to {name!r}")


def render_json(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=2, ensure_ascii=False) + "\n"


DOCS_TEMPLATE = """\
# Built-in prices

<!-- Generated by scripts/build_price_table.py from src/prefill_router/data/resources/prices.json;
     do not edit by hand: change the script and rerun it. -->

prefill-router ships a price for each of the {n_models} models of the LLMRouter, MMLU-Pro and RouteLLM
datasets, in USD per million tokens. A target's cost is
`input_tokens * input_usd_per_mtok / 1e6 + output_tokens * output_usd_per_mtok / 1e6`.

## Where the prices come from

- **LLMRouter's 14 models**: LLMRouter's own `input_price`/`output_price` from `default_llm.json`
  (NVIDIA API catalogue prices), the setting of the LLMRouter paper.
- **MMLU-Pro and RouteLLM models**: the litellm {litellm_version} price file, one key per model (named
  in the source column; per-token cost x 1e6). A *close match* is the price of a related but different
  model, used because no key exists for the model itself: the instruct DeepSeek-Coder-V2, the
  128k-context Phi-3-mini, Cohere's hosted Command R.
- **Gemini 1.5 (002)**: Google's published pay-as-you-go prices after the October 2024 cut (prompts
  up to 128k tokens).
- **Derived** (bold in the table): {derived}.
  No public price was found, so the price comes from a power law in the parameter count,
  `price = {a:g} * params_b ** {b:g}` USD per million tokens for
  input and output alike, rounded to 3 significant digits (a and b are rounded to 3 significant
  digits too, and the rounded values are used). It is fitted by least squares on log(price) against
  log(params_b) over the open-weight models of this table priced from an exact litellm key with equal
  input and output prices ({n_fit} models; parameters in billions, USD per million tokens):
{fit_rows}

Prices are a snapshot of one host each; hosts differ. For your own deployment, supply your own
prices (below). Names match leniently: the provider prefix (up to the last `/`), case and
punctuation are ignored, so `mistralai/Mixtral-8x7B-Instruct-v0.1` finds `mixtral-8x7b-instruct-v0.1`.

## Table

| model | also known as | input $/M | output $/M | params (B) | source |
|---|---|---:|---:|---:|---|
{table_rows}

## Your own prices

Write a YAML (or JSON, with a `.json` suffix) file that maps each target to its prices in USD per
million tokens. Its entries replace the built-in ones for the same model (under any spelling);
every other model keeps its built-in price.

```yaml
# my_prices.yaml: USD per million tokens
gpt-4-1106-preview:
  input: 10.0
  output: 30.0
my-org/my-finetune-8b: {{input: 0.05, output: 0.08}}
mistralai/Mixtral-8x7B-Instruct-v0.1: 0.45        # one number: the same for input and output
llama-3.1-8b-instruct: {{input_usd_per_mtok: 0.03, output_usd_per_mtok: 0.05}}
```

```python
from prefill_router.data.prices import price_table

table = price_table("my_prices.yaml")    # the built-in table with the file layered over it
info = table.target_info("my-org/my-finetune-8b")
info.input_usd_per_mtok, info.output_usd_per_mtok, info.price_source
# (0.05, 0.08, 'price file my_prices.yaml')
```

Each entry is a mapping with `input` and `output` (or `input_usd_per_mtok` and
`output_usd_per_mtok`), or one number for both. Prices must be finite, non-negative numbers: quoted
strings are rejected, and so is `1e-3` (YAML reads it as text; write `1.0e-3`). A missing file,
invalid UTF-8, malformed YAML/JSON (reported with its line), a top level that is not a mapping, or
a missing, unknown or invalid price raises `DataError` naming the file and the entry.
"""


def render_docs(table: dict[str, Any]) -> str:
    about, models = table["_about"], table["models"]
    derivation = about["derivation"]
    fit_rows = [
        f"  - `{m['name']}`: {m['params_b']:g}B, {m['usd_per_mtok']:g}" for m in derivation["fit_set"]
    ]
    table_rows = []
    for m in models:
        aliases = ", ".join(f"`{a}`" for a in m["aliases"]) or "-"
        params = "-" if m["params_b"] is None else f"{m['params_b']:g}"
        source = f"**{m['source']}**" if m["derived"] else m["source"]
        table_rows.append(
            f"| `{m['name']}` | {aliases} | {m['input_usd_per_mtok']:g} | {m['output_usd_per_mtok']:g} | "
            f"{params} | {source} |"
        )
    return DOCS_TEMPLATE.format(
        n_models=len(models),
        litellm_version=about["litellm_version"],
        derived=", ".join(f"`{name}`" for name in derivation["derived"]),
        a=derivation["a"],
        b=derivation["b"],
        n_fit=len(fit_rows),
        fit_rows="\n".join(fit_rows),
        table_rows="\n".join(table_rows),
    )


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared datasets folder")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the price table")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="where to write the Markdown table")
    args = parser.parse_args(argv)
    table = build_table(args.shared)
    write_atomic(args.json, render_json(table))
    write_atomic(args.docs, render_docs(table))
    derivation = table["_about"]["derivation"]
    print(
        f"wrote {args.json} ({len(table['models'])} models) and {args.docs}; "
        f"power law a={derivation['a']:g}, b={derivation['b']:g} over {len(derivation['fit_set'])} models"
    )


if __name__ == "__main__":
    main()
