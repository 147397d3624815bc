"""Tests of prefill_router.data.importers.routerbench on the fixture in tests/fixtures/routerbench.

The fixture (written by tests/fixtures/make_routerbench_fixture.py) copies upstream's wide layout:
12 prompts x 4 models, one empty cell (mixtral on mmlu-abstract-algebra.val.2), graded MT-Bench
labels, a two-turn prompt, a plain-text prompt and a bracketed prompt that is not a list.
"""

from __future__ import annotations

import math
import pickle
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefill_router.data.dataset import RoutingDataset
from prefill_router.data.importers.routerbench import PICKLE_NOTE, import_routerbench, turns_text
from prefill_router.data.prices import PriceEntry, PriceTable
from prefill_router.data.splits import assign_splits
from prefill_router.data.tokens import estimate_tokens
from prefill_router.errors import DataError

MODELS = ["gpt-4-1106-preview", "claude-instant-v1", "meta/llama-2-70b-chat", "mistralai/mixtral-8x7b-chat"]
NO_PRICES = PriceTable([])


@pytest.fixture
def csv_path(fixtures: Path) -> Path:
    return fixtures / "routerbench" / "sample.csv"


@pytest.fixture
def pkl_path(fixtures: Path) -> Path:
    return fixtures / "routerbench" / "sample.pkl"


@pytest.fixture
def table(csv_path: Path) -> pd.DataFrame:
    """The fixture as strings, to edit and write back for the bad-input tests."""
    return pd.read_csv(csv_path, dtype=str, keep_default_na=False)


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False, lineterminator="\n")
    return path


def raises(message: str, *parts: str) -> pytest.RaisesExc[DataError]:
    """``pytest.raises(DataError)`` matching the location parts and the message, literally."""
    return pytest.raises(DataError, match=".*".join(re.escape(p) for p in (*parts, message)))


# ------------------------------------------------------------------ happy path
def test_csv_counts_targets_and_tasks(csv_path: Path) -> None:
    ds = import_routerbench(csv_path, prices=NO_PRICES).dataset
    assert ds.n_prompts == 12
    assert ds.target_names == MODELS
    assert ds.prompt_ids[0] == "mmlu-abstract-algebra.val.0"
    assert ds.task_names() == [
        "grade-school-math",
        "hellaswag",
        "mmlu-abstract-algebra",
        "mtbench",
        "winogrande",
    ]
    assert set(ds.splits) <= {"train", "test"}


def test_labels_keep_graded_scores_and_nan_for_empty_cells(csv_path: Path) -> None:
    ds = import_routerbench(csv_path, prices=NO_PRICES).dataset
    assert ds.labels.shape == (12, 4)
    assert ds.labels[0].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert ds.labels[8].tolist() == [1.0, 0.75, 0.5, 0.75]
    assert np.isnan(ds.labels[2, 3])
    assert int(np.isnan(ds.labels).sum()) == 1


def test_costs_are_the_observed_total_cost(csv_path: Path, table: pd.DataFrame) -> None:
    ds = import_routerbench(csv_path, prices=NO_PRICES).dataset
    assert ds.costs_usd is not None
    expected = pd.to_numeric(table["gpt-4-1106-preview|total_cost"]).to_numpy()
    np.testing.assert_array_equal(ds.costs_usd[:, 0], expected)
    assert ds.costs_usd[0, 1] == pytest.approx(2.32e-05, rel=0, abs=1e-15)
    assert np.isnan(ds.costs_usd[2, 3])


def test_output_tokens_are_estimated_from_the_joined_replies(csv_path: Path) -> None:
    ds = import_routerbench(csv_path, prices=NO_PRICES).dataset
    assert ds.output_tokens is not None
    assert ds.output_tokens[0, 0] == estimate_tokens("B") == 1
    two_turns = "Aloha! Hawaii is ...\n\nA trip to Hawaii is ..."
    assert ds.output_tokens[8, 0] == estimate_tokens(two_turns)
    assert np.isnan(ds.output_tokens[2, 3])


def test_prompts_lists_are_joined_and_other_text_kept(csv_path: Path) -> None:
    ds = import_routerbench(csv_path, prices=NO_PRICES).dataset
    assert ds.prompts[0].startswith(
        "Find the degree for the given field extension Q(sqrt(2)) over Q.\nA. 0\n"
    )
    assert ds.prompts[8] == (
        "Compose a short travel blog post about Hawaii.\n\nRewrite it so that every sentence starts with A."
    )
    assert ds.prompts[5] == "Tom reads 12 pages a day. How many pages does he read in a week?"
    assert ds.prompts[7] == "[header] How to clean a grill [title] Heat the grill first. [step]"


def test_notes_and_provenance(csv_path: Path) -> None:
    result = import_routerbench(csv_path, prices=NO_PRICES)
    notes = result.notes
    assert "ignored column 'oracle_model_to_route_to': upstream's routing choice, not a label" in notes
    assert "12 prompts x 4 models: " + ", ".join(MODELS) in notes
    assert "10 prompts stored as Python lists of turns: joined with a blank line" in notes
    assert "1 of 48 label cells empty: left as not evaluated" in notes
    assert "costs are the observed '<model>|total_cost' values in USD" in notes
    assert "output tokens estimated from '<model>|model_response' (ceil(UTF-8 bytes / 4))" in notes
    assert any(n.startswith("prices fitted from the observed costs for 4 target(s)") for n in notes)
    assert not any(n.startswith("no price known") for n in notes)
    assert PICKLE_NOTE not in notes
    provenance = result.dataset.provenance
    assert provenance["source"] == "routerbench"
    assert provenance["files"] == ["sample.csv"]
    assert provenance["notes"] == notes


def test_pickle_gives_the_same_dataset_as_the_csv(csv_path: Path, pkl_path: Path) -> None:
    from_csv = import_routerbench(csv_path, prices=NO_PRICES).dataset
    result = import_routerbench(pkl_path, prices=NO_PRICES, allow_pickle=True)
    assert PICKLE_NOTE in result.notes
    assert result.dataset.provenance["files"] == ["sample.pkl"]
    assert result.notes == [PICKLE_NOTE, *from_csv.provenance["notes"]]
    assert result.dataset.equals(replace(from_csv, provenance=result.dataset.provenance))


def test_prices_come_from_the_table(csv_path: Path) -> None:
    prices = PriceTable([PriceEntry("gpt-4-1106-preview", 10.0, 30.0, source="test list")])
    result = import_routerbench(csv_path, prices=prices)
    gpt4 = result.dataset.target("gpt-4-1106-preview")
    assert (gpt4.input_usd_per_mtok, gpt4.output_usd_per_mtok, gpt4.price_source) == (10.0, 30.0, "test list")
    claude = result.dataset.target("claude-instant-v1")  # no list price: fitted from its costs
    assert claude.has_price and claude.price_source == "fitted from 12 observed costs (residual 1.8%)"
    assert any(n.startswith("prices fitted from the observed costs for 3 target(s)") for n in result.notes)


def test_prices_fitted_from_the_costs_are_close_to_the_list_prices(csv_path: Path) -> None:
    """The fixture's costs are upstream's list prices times ~4-character tokens of the raw cells;
    ours count the joined turns, so the fit absorbs that difference: close, not equal."""
    from tests.fixtures.make_routerbench_fixture import PRICES

    ds = import_routerbench(csv_path, prices=NO_PRICES).dataset
    for target in ds.targets:
        price_in, price_out = PRICES[target.name]
        assert target.input_usd_per_mtok == pytest.approx(price_in, rel=0.08)
        assert target.output_usd_per_mtok == pytest.approx(price_out, rel=0.15)
        assert re.fullmatch(
            r"fitted from 1[12] observed costs \(residual [0-2]\.\d%\)", str(target.price_source)
        )


def test_a_model_without_a_cost_column_stays_unpriced(table: pd.DataFrame, tmp_path: Path) -> None:
    src = write(table.drop(columns=["claude-instant-v1|total_cost"]), tmp_path / "no_claude_costs.csv")
    result = import_routerbench(src, prices=NO_PRICES)
    assert not result.dataset.target("claude-instant-v1").has_price
    assert result.dataset.target("meta/llama-2-70b-chat").has_price
    assert "no price known for 1 target(s): claude-instant-v1 (pass --prices FILE)" in result.notes


def test_splits_come_from_assign_splits_with_the_seed(csv_path: Path) -> None:
    ds = import_routerbench(csv_path, prices=NO_PRICES, split_seed=7).dataset
    expected = assign_splits(ds.prompts.tolist(), ds.tasks.tolist(), seed=7)
    assert ds.splits.tolist() == expected.tolist()


def test_save_and_load_round_trip(csv_path: Path, tmp_path: Path) -> None:
    ds = import_routerbench(csv_path, prices=NO_PRICES).dataset
    assert RoutingDataset.load(ds.save(tmp_path / "rb.parquet")).equals(ds)


def test_model_without_cost_column_gets_nan_costs(table: pd.DataFrame, tmp_path: Path) -> None:
    src = write(table.drop(columns=["claude-instant-v1|total_cost"]), tmp_path / "rb.csv")
    ds = import_routerbench(src, prices=NO_PRICES).dataset
    assert ds.costs_usd is not None
    assert np.isnan(ds.costs_usd[:, 1]).all()
    assert not np.isnan(ds.costs_usd[:, 0]).any()


def test_no_cost_columns_means_no_cost_block(table: pd.DataFrame, tmp_path: Path) -> None:
    src = write(table.drop(columns=[f"{m}|total_cost" for m in MODELS]), tmp_path / "rb.csv")
    ds = import_routerbench(src, prices=NO_PRICES).dataset
    assert ds.costs_usd is None
    assert ds.output_tokens is not None


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("['one turn']", ("one turn", True)),
        ("['first', 'second']", ("first\n\nsecond", True)),
        (["first", "second"], ("first\n\nsecond", True)),
        ("plain text", ("plain text", False)),
        ("[1, 2, 3]", ("[1, 2, 3]", False)),
        ("[not python]", ("[not python]", False)),
        ("", ("", False)),
        (math.nan, ("", False)),
        (None, ("", False)),
    ],
)
def test_turns_text(cell: object, expected: tuple[str, bool]) -> None:
    assert turns_text(cell) == expected


# ------------------------------------------------------------------ bad input
def test_missing_csv(tmp_path: Path) -> None:
    with raises("no such file", str(tmp_path / "absent.csv")):
        import_routerbench(tmp_path / "absent.csv", prices=NO_PRICES)


def test_missing_pickle(tmp_path: Path) -> None:
    with raises("no such file", str(tmp_path / "absent.pkl")):
        import_routerbench(tmp_path / "absent.pkl", prices=NO_PRICES, allow_pickle=True)


def test_unsupported_suffix(tmp_path: Path) -> None:
    with raises("expected a .csv, .pkl or .pickle file, got '.json'"):
        import_routerbench(tmp_path / "routerbench.json", prices=NO_PRICES)


def test_malformed_csv(csv_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "rb.csv"
    src.write_text(
        csv_path.read_text(encoding="utf-8") + "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s\n", encoding="utf-8"
    )
    with raises("malformed CSV (Error tokenizing data", str(src)):
        import_routerbench(src, prices=NO_PRICES)


def test_truncated_csv(csv_path: Path, tmp_path: Path) -> None:
    text = csv_path.read_text(encoding="utf-8")
    src = tmp_path / "rb.csv"
    src.write_text(text[: text.index("Let p = (1, 2, 5, 4)")], encoding="utf-8")  # inside a quoted prompt
    with raises("malformed CSV", str(src)):
        import_routerbench(src, prices=NO_PRICES)


def test_truncated_pickle(pkl_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "rb.pkl"
    src.write_bytes(pkl_path.read_bytes()[:1000])
    with raises("not a readable pickle", str(src)):
        import_routerbench(src, prices=NO_PRICES, allow_pickle=True)


def test_pickle_of_something_else(tmp_path: Path) -> None:
    src = tmp_path / "rb.pkl"
    src.write_bytes(pickle.dumps({"sample_id": ["a"]}))
    with raises("expected a pickled pandas DataFrame, got dict"):
        import_routerbench(src, prices=NO_PRICES, allow_pickle=True)


def test_missing_column(table: pd.DataFrame, tmp_path: Path) -> None:
    src = write(table.drop(columns=["eval_name"]), tmp_path / "rb.csv")
    with raises("missing column 'eval_name'; found sample_id, prompt, gpt-4-1106-preview"):
        import_routerbench(src, prices=NO_PRICES)


def test_no_rows(table: pd.DataFrame, tmp_path: Path) -> None:
    src = write(table.iloc[:0], tmp_path / "rb.csv")
    with raises("the table has no rows"):
        import_routerbench(src, prices=NO_PRICES)


def test_no_model_columns(table: pd.DataFrame, tmp_path: Path) -> None:
    src = write(table[["sample_id", "prompt", "eval_name", "gpt-4-1106-preview"]], tmp_path / "rb.csv")
    with raises("no model columns: expected '<model>' with '<model>|total_cost'"):
        import_routerbench(src, prices=NO_PRICES)


def test_response_column_without_correctness_column(table: pd.DataFrame, tmp_path: Path) -> None:
    src = write(table.assign(**{"claude-v2|model_response": "['A']"}), tmp_path / "rb.csv")
    with raises("column 'claude-v2|model_response' has no correctness column 'claude-v2'"):
        import_routerbench(src, prices=NO_PRICES)


def test_label_above_one(table: pd.DataFrame, tmp_path: Path) -> None:
    table.loc[3, "claude-instant-v1"] = "2.0"
    src = write(table, tmp_path / "rb.csv")
    with raises(
        "label must be in [0, 1], got 2.0",
        "row 3 (sample_id 'grade-school-math.dev.0')",
        "'claude-instant-v1'",
    ):
        import_routerbench(src, prices=NO_PRICES)


def test_negative_label(table: pd.DataFrame, tmp_path: Path) -> None:
    table.loc[0, "gpt-4-1106-preview"] = "-1"
    src = write(table, tmp_path / "rb.csv")
    with raises("label must be in [0, 1], got -1.0", "row 0 (sample_id 'mmlu-abstract-algebra.val.0')"):
        import_routerbench(src, prices=NO_PRICES)


def test_non_numeric_label(table: pd.DataFrame, tmp_path: Path) -> None:
    table.loc[5, "meta/llama-2-70b-chat"] = "maybe"
    src = write(table, tmp_path / "rb.csv")
    with raises(
        "label must be true/false or a number in [0, 1], got 'maybe'", "row 5", "'meta/llama-2-70b-chat'"
    ):
        import_routerbench(src, prices=NO_PRICES)


def test_duplicate_sample_id(table: pd.DataFrame, tmp_path: Path) -> None:
    table.loc[4, "sample_id"] = table.loc[1, "sample_id"]
    src = write(table, tmp_path / "rb.csv")
    with raises("duplicate sample_id 'mmlu-abstract-algebra.val.1' (rows 1 and 4); sample_id must be unique"):
        import_routerbench(src, prices=NO_PRICES)


def test_empty_sample_id(table: pd.DataFrame, tmp_path: Path) -> None:
    table.loc[6, "sample_id"] = " "
    src = write(table, tmp_path / "rb.csv")
    with raises("empty sample_id; every row needs a unique id", "row 6"):
        import_routerbench(src, prices=NO_PRICES)


@pytest.mark.parametrize("prompt", ["", "   ", "['']"])
def test_empty_prompt(table: pd.DataFrame, tmp_path: Path, prompt: str) -> None:
    table.loc[4, "prompt"] = prompt
    src = write(table, tmp_path / "rb.csv")
    with raises(
        "empty prompt; every row needs prompt text", str(src), "row 4 (sample_id 'grade-school-math.dev.1')"
    ):
        import_routerbench(src, prices=NO_PRICES)


@pytest.mark.parametrize("cost", ["-0.001", "free", "inf"])
def test_bad_cost(table: pd.DataFrame, tmp_path: Path, cost: str) -> None:
    table.loc[9, "mistralai/mixtral-8x7b-chat|total_cost"] = cost
    src = write(table, tmp_path / "rb.csv")
    with raises(
        f"mistralai/mixtral-8x7b-chat|total_cost must be a finite number >= 0 or empty, got {cost!r}",
        "row 9 (sample_id 'mtbench.test.82'), column 'mistralai/mixtral-8x7b-chat|total_cost'",
    ):
        import_routerbench(src, prices=NO_PRICES)


def test_invalid_utf8(csv_path: Path, tmp_path: Path) -> None:
    data = csv_path.read_bytes()
    src = tmp_path / "rb.csv"
    cut = data.index(b"Janet")
    src.write_bytes(data[:cut] + b"\xff\xfe" + data[cut:])
    line = data[:cut].count(b"\n") + 1
    with raises(f"invalid UTF-8 at byte {cut}", str(src), f"line {line}"):
        import_routerbench(src, prices=NO_PRICES)
