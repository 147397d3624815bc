"""Tests of prefill_router.data.prices: the built-in table, name lookup, user price files."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from prefill_router.data.dataset import TargetInfo
from prefill_router.data.prices import (
    PriceEntry,
    PriceTable,
    builtin_prices,
    fit_prices,
    load_price_file,
    normalise_model_name,
    price_table,
)
from prefill_router.errors import DataError

REPO = Path(__file__).resolve().parents[1]
BUILTIN_JSON = REPO / "src" / "prefill_router" / "data" / "resources" / "prices.json"
DOCS = REPO / "docs" / "prices.md"
BUILD_SCRIPT = REPO / "scripts" / "build_price_table.py"
SHARED = REPO.parent / "shared" / "datasets"

LLMROUTER_MODELS = [
    "qwen2.5-7b-instruct",
    "codegemma-7b",
    "gemma-2-9b-it",
    "llama-3.1-8b-instruct",
    "llama3-chatqa-1.5-8b",
    "mistral-7b-instruct-v0.3",
    "llama-3.3-nemotron-super-49b-v1",
    "llama-3.1-nemotron-51b-instruct",
    "llama3-chatqa-1.5-70b",
    "llama3-70b-instruct",
    "mixtral-8x7b-instruct-v0.1",
    "mixtral-8x22b-instruct-v0.1",
    "palmyra-creative-122b",
    "mistral-nemo-12b-instruct",
]
MMLU_PRO_MODELS = [
    "DeepSeek-Coder-V2",
    "Llama-2-13b-hf",
    "Llama-2-70b-hf",
    "Llama-2-7b-hf",
    "Meta-Llama-3-70B",
    "Meta-Llama-3-8B",
    "Meta-Llama-3_1-70B-Instruct",
    "Meta-Llama-3_1-70B",
    "Meta-Llama-3_1-8B-Instruct",
    "Meta-Llama-3_1-8B",
    "Mistral-7B-Instruct-v0.1",
    "Mistral-7B-Instruct-v0.2",
    "Mistral-7B-v0.1",
    "Mistral-7B-v0.2-hf",
    "Mixtral-8x7B-Instruct-v0.1",
    "Mixtral-8x7B-v0.1",
    "Phi-3-mini-4k-instruct",
    "Qwen1.5-110B",
    "Qwen1.5-72B-Chat",
    "Qwen1.5-7B-Chat",
    "Yi-34B",
    "Yi-6B",
    "Yi-6b-Chat",
    "c4ai-command-r-v01",
    "gemini-1.5-flash-002",
    "gemini-1.5-pro-002",
    "gemma-7b",
    "jamba-1.5-large",
    "mathstral-7B",
]
ROUTELLM_MODELS = ["gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"]
DERIVED = {"Qwen1.5-110B", "Qwen1.5-7B-Chat", "Yi-6b-Chat", "mathstral-7B"}
CLOSE_MATCHES = {"DeepSeek-Coder-V2", "Phi-3-mini-4k-instruct", "c4ai-command-r-v01"}


def source_of(table: PriceTable, name: str) -> str:
    entry = table.lookup(name)
    assert entry is not None, name
    return entry.source


# ---------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral8x7binstructv01"),
        ("Mixtral-8x7B-Instruct-v0.1", "mixtral8x7binstructv01"),
        ("fireworks_ai/accounts/fireworks/models/yi-34b", "yi34b"),
        ("Meta-Llama-3_1-8B", "metallama318b"),
        ("gpt-4-1106-preview", "gpt41106preview"),
        ("", ""),
    ],
)
def test_normalise_model_name(name: str, expected: str) -> None:
    assert normalise_model_name(name) == expected


# ---------------------------------------------------------------------- the built-in table
def test_builtin_entries_have_finite_non_negative_prices_and_a_source() -> None:
    table = builtin_prices()
    assert len(table) == 43  # 14 + 29 + 2 models, the three Mixtral-8x7B-Instruct spellings as one
    for entry in table.entries:
        for price in (entry.input_usd_per_mtok, entry.output_usd_per_mtok):
            assert math.isfinite(price)
            assert price >= 0
        assert entry.source.strip()


def test_builtin_prices_is_cached() -> None:
    assert builtin_prices() is builtin_prices()


@pytest.mark.parametrize("name", LLMROUTER_MODELS + MMLU_PRO_MODELS + ROUTELLM_MODELS)
def test_every_dataset_model_has_a_builtin_price(name: str) -> None:
    assert name in builtin_prices()
    info = builtin_prices().target_info(name)
    assert info.name == name
    assert info.has_price


@pytest.mark.parametrize("name", LLMROUTER_MODELS)
def test_llmrouter_models_keep_llmrouters_own_prices(name: str) -> None:
    entry = builtin_prices().lookup(name)
    assert entry is not None
    assert entry.source.startswith("LLMRouter default_llm.json")


@pytest.mark.parametrize(
    ("name", "price_in", "price_out", "source"),
    [
        ("gpt-4-1106-preview", 10.0, 30.0, "litellm 1.110.2 key gpt-4-1106-preview"),
        ("qwen2.5-7b-instruct", 0.2, 0.2, "LLMRouter default_llm.json (NVIDIA API catalogue)"),
        ("gemini-1.5-pro-002", 1.25, 5.0, "Google list price, Oct 2024"),
        ("gemini-1.5-flash-002", 0.075, 0.3, "Google list price, Oct 2024"),
        ("jamba-1.5-large", 2.0, 8.0, "litellm 1.110.2 key jamba-1.5-large"),
        (
            "Meta-Llama-3_1-70B-Instruct",
            0.4,
            0.4,
            "litellm 1.110.2 key deepinfra/meta-llama/Meta-Llama-3.1-70B-Instruct",
        ),
        ("Llama-2-70b-hf", 0.65, 2.75, "litellm 1.110.2 key replicate/meta/llama-2-70b"),
    ],
)
def test_known_builtin_prices(name: str, price_in: float, price_out: float, source: str) -> None:
    entry = builtin_prices().lookup(name)
    assert entry is not None
    assert (entry.input_usd_per_mtok, entry.output_usd_per_mtok) == (price_in, price_out)
    assert entry.source == source
    assert not entry.derived


def test_derived_entries_are_marked_and_follow_the_stated_power_law() -> None:
    about = json.loads(BUILTIN_JSON.read_text(encoding="utf-8"))["_about"]["derivation"]
    a, b = about["a"], about["b"]
    derived = {e.name for e in builtin_prices().entries if e.derived}
    assert derived == DERIVED
    assert set(about["derived"]) == DERIVED
    for name in DERIVED:
        entry = builtin_prices().lookup(name)
        assert entry is not None
        assert entry.params_b is not None
        assert entry.input_usd_per_mtok == entry.output_usd_per_mtok == float(f"{a * entry.params_b**b:.3g}")
        assert entry.source.startswith(f"derived from {entry.params_b:g}B parameters")
        assert builtin_prices().target_info(name).price_derived


def test_close_matches_are_marked_in_the_source() -> None:
    for entry in builtin_prices().entries:
        assert ("close match" in entry.source) == (entry.name in CLOSE_MATCHES), entry.name


# ---------------------------------------------------------------------- lookup
def test_lookup_by_normalised_name_and_alias() -> None:
    table = builtin_prices()
    mixtral = table.lookup("mixtral-8x7b-instruct-v0.1")
    assert mixtral is not None
    assert table.lookup("mistralai/Mixtral-8x7B-Instruct-v0.1") is mixtral
    assert table.lookup("Mixtral 8x7B Instruct v0.1") is mixtral
    assert table.lookup("together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1") is mixtral
    assert table.lookup("cerebras/llama-3.1-70b") is table.lookup("Meta-Llama-3_1-70B")  # by alias
    # one model, two datasets, two prices: the spellings stay apart
    assert table.lookup("llama-3.1-8b-instruct") is not table.lookup("Meta-Llama-3_1-8B-Instruct")


def test_target_info_for_unknown_and_known_names() -> None:
    table = builtin_prices()
    assert table.lookup("no-such-model") is None
    assert "no-such-model" not in table
    assert table.target_info("no-such-model") == TargetInfo("no-such-model")
    assert not table.target_info("no-such-model").has_price
    info = table.target_info("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert info.name == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert (info.input_usd_per_mtok, info.output_usd_per_mtok) == (0.6, 0.6)
    assert info.price_source is not None
    assert info.price_source.startswith("LLMRouter")
    assert not info.price_derived


def test_price_table_first_entry_wins_and_exact_name_beats_normalised() -> None:
    table = PriceTable(
        [
            PriceEntry("org/Model-A", 1.0, 1.0, source="first"),
            PriceEntry("model-a", 2.0, 2.0, source="second"),
        ]
    )
    assert len(table) == 2
    assert [e.source for e in table] == ["first", "second"]
    assert source_of(table, "model-a") == "second"
    assert source_of(table, "other/MODEL_A") == "first"


def test_merged_over_overrides_every_spelling_of_a_model() -> None:
    base = PriceTable(
        [
            PriceEntry("mixtral-8x7b-instruct-v0.1", 0.6, 0.6, "base", aliases=("together/mixtral-8x7b",)),
            PriceEntry("other", 1.0, 1.0, "base"),
        ]
    )
    mine = PriceTable([PriceEntry("mixtral-8x7b", 0.1, 0.2, "mine")])
    merged = mine.merged_over(base)
    assert [e.name for e in merged.entries] == ["mixtral-8x7b", "mixtral-8x7b-instruct-v0.1", "other"]
    assert source_of(merged, "together/mixtral-8x7b") == "mine"
    assert source_of(merged, "mixtral-8x7b-instruct-v0.1") == "base"
    assert source_of(merged, "other") == "base"
    overriding = PriceTable([PriceEntry("Mixtral-8x7B-Instruct-v0.1", 0.1, 0.2, "mine")]).merged_over(base)
    assert source_of(overriding, "mixtral-8x7b-instruct-v0.1") == "mine"
    assert len(overriding) == 2


# ---------------------------------------------------------------------- price files
def test_yaml_price_file_overrides_the_builtin_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "gpt-4-1106-preview:\n  input: 1\n  output: 2.5\n"
        "my-org/my-model: {input_usd_per_mtok: 0.05, output_usd_per_mtok: 0.08}\n"
        "mistralai/Mixtral-8x7B-Instruct-v0.1: 0.45\n",
        encoding="utf-8",
    )
    own = load_price_file(path)
    assert len(own) == 3
    table = price_table(path)
    assert len(table) == len(builtin_prices()) + 1
    gpt4 = table.target_info("gpt-4-1106-preview")
    assert (gpt4.input_usd_per_mtok, gpt4.output_usd_per_mtok) == (1.0, 2.5)
    assert gpt4.price_source == f"price file {path}"
    assert not gpt4.price_derived
    mine = table.target_info("my-model")
    assert (mine.input_usd_per_mtok, mine.output_usd_per_mtok) == (0.05, 0.08)
    for spelling in ("mixtral-8x7b-instruct-v0.1", "Mixtral-8x7B-Instruct-v0.1"):
        mixtral = table.target_info(spelling)
        assert (mixtral.input_usd_per_mtok, mixtral.output_usd_per_mtok) == (0.45, 0.45)
    assert table.target_info("gemini-1.5-pro-002").input_usd_per_mtok == 1.25  # untouched


def test_json_price_file_overrides_the_builtin_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    prices = {"jamba-1.5-large": {"input": 1.5, "output": 6}, "Yi-6b-Chat": 0}
    path.write_text(json.dumps(prices), encoding="utf-8")
    table = price_table(str(path))
    jamba = table.lookup("jamba-1.5-large")
    assert jamba is not None
    assert (jamba.input_usd_per_mtok, jamba.output_usd_per_mtok) == (1.5, 6.0)
    assert jamba.source == f"price file {path}"
    yi = table.target_info("Yi-6b-Chat")
    assert (yi.input_usd_per_mtok, yi.output_usd_per_mtok, yi.price_derived) == (0.0, 0.0, False)


def test_price_table_without_a_file_is_the_builtin_table() -> None:
    assert price_table(None) is builtin_prices()


def test_docs_yaml_example_is_a_valid_price_file(tmp_path: Path) -> None:
    example = re.search(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert example is not None
    path = tmp_path / "my_prices.yaml"
    path.write_text(example.group(1), encoding="utf-8")
    info = price_table(path).target_info("my-org/my-finetune-8b")
    assert (info.input_usd_per_mtok, info.output_usd_per_mtok) == (0.05, 0.08)


BAD_FILES = [  # (file name, content, expected message)
    (
        "bad.yaml",
        b"a: [1, 2\nb: 3\n",
        r"line 2, column 2: malformed YAML \(expected ',' or ']', but got ':'\)",
    ),
    ("bad.json", b'{"a": 1,\n "b": }', r"line 2, column 7: malformed JSON \(Expecting value\)"),
    ("dup.json", b'{"a": 1, "a": 2}', r"key 'a' appears twice"),
    ("list.yaml", b"- a\n- b\n", r"must map each target name to its prices .*; got a list instead"),
    ("empty.yaml", b"", r"got an empty file instead"),
    ("scalar.json", b"3", r"got a number instead"),
    ("no_output.yaml", b"m: {input: 1}\n", r"target 'm': missing the 'output' price"),
    ("no_input.json", b'{"m": {"output_usd_per_mtok": 1}}', r"target 'm': missing the 'input' price"),
    ("typo.yaml", b"m: {input: 1, ouput: 2}\n", r"target 'm': unknown key\(s\) 'ouput'; expected 'input'"),
    ("both.yaml", b"m: {input: 1, input_usd_per_mtok: 1}\n", r"give 'input' or 'input_usd_per_mtok', not"),
    ("negative.yaml", b"m: {input: -1, output: 1}\n", r"target 'm', 'input': a price must not be negative"),
    ("nan.yaml", b"m: .nan\n", r"target 'm': a price must be finite; got nan"),
    ("inf.json", b'{"m": {"input": 1, "output": Infinity}}', r"'output': a price must be finite; got inf"),
    ("text.yaml", b"m: {input: cheap, output: 1}\n", r"USD per million tokens; got 'cheap' \(str\)$"),
    ("exp.yaml", b"m: 1e-3\n", r"got '1e-3' \(str\) \(YAML reads a number like 1e-3 as text: write 1.0e-3"),
    ("bool.yaml", b"m: true\n", r"got True \(bool\)"),
    ("null.yaml", b"m:\n", r"got None \(NoneType\)"),
    ("key.yaml", b"7: 0.5\n", r"target names must be non-empty strings; got 7 \(int\)"),
    ("latin1.yaml", b"a: 1\nm\xe9: 2\n", r"line 2: invalid UTF-8 at byte 6; save the price file as UTF-8"),
]


@pytest.mark.parametrize(("filename", "content", "message"), BAD_FILES, ids=[f[0] for f in BAD_FILES])
def test_bad_price_files_raise_data_error(
    tmp_path: Path, filename: str, content: bytes, message: str
) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_price_file(path)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_price_file_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(DataError, match=r"nope\.yaml: no such price file$"):
        price_table(path)


def test_directory_as_price_file_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"expected a price file, found a directory"):
        load_price_file(tmp_path)


# ---------------------------------------------------------------------- reproducibility
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the dataset copies in ../shared/datasets")
def test_build_script_reproduces_the_committed_table_and_docs(tmp_path: Path) -> None:
    out_json, out_docs = tmp_path / "prices.json", tmp_path / "prices.md"
    command = [sys.executable, str(BUILD_SCRIPT), "--shared", str(SHARED)]
    subprocess.run(
        [*command, "--json", str(out_json), "--docs", str(out_docs)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert out_json.read_bytes() == BUILTIN_JSON.read_bytes()
    assert out_docs.read_bytes() == DOCS.read_bytes()


def test_committed_json_and_docs_agree() -> None:
    document = json.loads(BUILTIN_JSON.read_text(encoding="utf-8"))
    docs = DOCS.read_text(encoding="utf-8")
    assert document["_about"]["litellm_version"] == "1.110.2"
    assert len(document["models"]) == len(builtin_prices())
    for model in document["models"]:
        assert f"| `{model['name']}` |" in docs
    assert yaml.safe_load(BUILTIN_JSON.read_text(encoding="utf-8")) == document  # plain JSON, no NaN


# ------------------------------------------------------------ prices from costs
def costs_at(price_in: float, price_out: float, tokens_in: np.ndarray, tokens_out: np.ndarray) -> np.ndarray:
    """DESIGN §3's cost formula: what a provider bills for these token counts."""
    return (tokens_in * price_in + tokens_out * price_out) / 1e6


def test_fit_prices_recovers_the_prices_that_made_the_costs() -> None:
    rng = np.random.default_rng(0)
    tokens_in, tokens_out = rng.integers(20, 2000, 300).astype(float), rng.integers(1, 800, 300).astype(float)
    fit = fit_prices(
        tokens_in, tokens_out, costs_at(2.5, 10.0, tokens_in, tokens_out), default_output_tokens=256
    )
    assert fit is not None and not fit.blended
    assert (fit.input_usd_per_mtok, fit.output_usd_per_mtok) == (pytest.approx(2.5), pytest.approx(10.0))
    assert fit.n_costs == 300 and fit.residual < 1e-9
    assert fit.source == "fitted from 300 observed costs (residual 0.0%)"


def test_fit_prices_tolerates_noise_and_missing_cells() -> None:
    rng = np.random.default_rng(1)
    tokens_in, tokens_out = rng.integers(20, 2000, 500).astype(float), rng.integers(1, 800, 500).astype(float)
    costs = costs_at(0.6, 0.6, tokens_in, tokens_out) * rng.normal(1, 0.03, 500)  # rounding, retries
    costs[::7], tokens_out[::5] = np.nan, np.nan  # not evaluated; reply lost
    fit = fit_prices(tokens_in, tokens_out, costs, default_output_tokens=256)
    assert fit is not None and fit.n_costs == int((~np.isnan(costs) & ~np.isnan(tokens_out)).sum())
    assert fit.input_usd_per_mtok == pytest.approx(0.6, rel=0.05)
    assert fit.output_usd_per_mtok == pytest.approx(0.6, rel=0.05)
    assert 0.01 < fit.residual < 0.05


def test_prices_are_never_negative() -> None:
    """Costs that fall with the output length would want a negative output price: it is 0 instead."""
    tokens_in, tokens_out = np.array([100.0, 200, 300, 400]), np.array([400.0, 300, 200, 100])
    fit = fit_prices(tokens_in, tokens_out, tokens_in * 1e-6 - tokens_out * 1e-7, default_output_tokens=256)
    assert fit is not None and fit.output_usd_per_mtok == 0.0 and fit.input_usd_per_mtok > 0


@pytest.mark.parametrize("lengths", [None, np.array([np.nan, np.nan, np.nan]), np.array([10.0, 20.0, 30.0])])
def test_one_blended_rate_when_output_lengths_cannot_tell_the_prices_apart(
    lengths: np.ndarray | None,
) -> None:
    """No output lengths, or lengths proportional to the prompts (one ratio): one rate for both,
    fitted with the output length the cost formula assumes where none is known."""
    tokens_in = np.array([100.0, 200.0, 300.0])
    out = np.full(3, 256.0) if lengths is None or np.isnan(lengths).all() else lengths
    costs = costs_at(1.5, 1.5, tokens_in, out)
    fit = fit_prices(tokens_in, lengths, costs, default_output_tokens=256)
    assert fit is not None and fit.blended
    assert fit.input_usd_per_mtok == fit.output_usd_per_mtok == pytest.approx(1.5)
    assert (
        fit.source == "fitted from 3 observed costs as one blended rate (no output lengths) (residual 0.0%)"
    )


def test_no_observed_cost_fits_nothing() -> None:
    assert fit_prices(np.array([10.0]), None, np.array([np.nan]), default_output_tokens=256) is None
