"""Tests of prefill_router.data.importers.long_csv on the fixture in tests/fixtures/long_csv.

``sample.csv`` holds 10 questions x 3 models in 30 rows: one (question, model) pair absent
(mixtral on the SQL question), one row repeating another exactly, a multi-line quoted question
(lines 8-13), a graded label, an ``output_tokens`` and a ``task`` column.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from prefill_router.data.importers.long_csv import import_long_csv, record_lines
from prefill_router.data.prices import PriceEntry, PriceTable
from prefill_router.data.splits import assign_splits
from prefill_router.errors import DataError

LLAMA, MIXTRAL, NEMOTRON = (
    "meta/llama-3.1-8b-instruct",
    "mistralai/mixtral-8x22b-instruct-v0.1",
    "nvidia/llama-3.1-nemotron-70b-instruct",
)
NO_PRICES = PriceTable([])
HEADER = "question,model,isCorrect,output_tokens\n"


@pytest.fixture
def sample(fixtures: Path) -> Path:
    return fixtures / "long_csv" / "sample.csv"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "long.csv"
    path.write_text(text, encoding="utf-8")
    return path


def raises(message: str, *parts: str) -> pytest.RaisesExc[DataError]:
    """``pytest.raises(DataError)`` matching the location parts and the message, literally."""
    return pytest.raises(DataError, match=".*".join(re.escape(p) for p in (*parts, message)))


# ------------------------------------------------------------------ happy path
def test_pivot_counts_ids_and_models(sample: Path) -> None:
    ds = import_long_csv(sample, prices=NO_PRICES).dataset
    assert ds.n_prompts == 10
    assert ds.target_names == [LLAMA, MIXTRAL, NEMOTRON]
    assert ds.prompt_ids.tolist() == [f"q{i:05d}" for i in range(10)]
    assert ds.prompts[0] == "What is 12 * 7?"
    assert ds.prompts[2] == "Solve for x:\n2x + 6 = 20"
    assert ds.tasks.tolist() == ["math"] * 3 + ["trivia"] * 3 + ["code"] * 3 + ["math"]


def test_labels_graded_and_nan_for_the_missing_pair(sample: Path) -> None:
    ds = import_long_csv(sample, prices=NO_PRICES).dataset
    assert ds.labels[1].tolist() == [0.0, 1.0, 1.0]
    assert ds.labels[8].tolist() == [0.5, 1.0, 1.0]
    assert np.isnan(ds.labels[7, 1])
    assert int(np.isnan(ds.labels).sum()) == 1


def test_output_tokens_pivoted_and_no_costs(sample: Path) -> None:
    ds = import_long_csv(sample, prices=NO_PRICES).dataset
    assert ds.output_tokens is not None
    assert ds.output_tokens[0].tolist() == [14.0, 9.0, 21.0]
    assert ds.output_tokens[6, 2] == 120.0
    assert np.isnan(ds.output_tokens[7, 1])
    assert ds.costs_usd is None


def test_notes_and_provenance(sample: Path) -> None:
    result = import_long_csv(sample, prices=NO_PRICES)
    assert result.notes[:3] == [
        "dropped 1 row(s) repeating an earlier row exactly",
        f"29 rows -> 10 questions x 3 models: {LLAMA}, {MIXTRAL}, {NEMOTRON}",
        "1 (question, model) pair(s) absent: left as not evaluated",
    ]
    assert result.notes[3].startswith("no price known for 3 target(s)")
    assert (
        result.notes[-1] == "no split in the source: assigned a grouped, task-stratified 80/20 split (seed 0)"
    )
    provenance = result.dataset.provenance
    assert provenance["source"] == "long-csv"
    assert provenance["files"] == ["sample.csv"]
    assert provenance["notes"] == result.notes


def test_splits_come_from_assign_splits_with_the_seed(sample: Path) -> None:
    ds = import_long_csv(sample, prices=NO_PRICES, split_seed=3).dataset
    expected = assign_splits(ds.prompts.tolist(), ds.tasks.tolist(), seed=3)
    assert ds.splits.tolist() == expected.tolist()


def test_prices_come_from_the_table(sample: Path) -> None:
    prices = PriceTable([PriceEntry(LLAMA, 0.2, 0.2, source="test list")])
    ds = import_long_csv(sample, prices=prices).dataset
    assert ds.target(LLAMA).output_usd_per_mtok == 0.2
    assert not ds.target(MIXTRAL).has_price


def test_optional_columns_are_used(tmp_path: Path) -> None:
    src = write(
        tmp_path,
        "prompt_id,question,model,isCorrect,cost_usd,split,task,comment\n"
        "p-1,Name a colour.,small,true,0.001,train,trivia,x\n"
        "p-1,Name a colour.,large,false,0.01,train,trivia,y\n"
        "p-2,What is 2+2?,large,1,0.02,test,,z\n",
    )
    result = import_long_csv(src, prices=NO_PRICES)
    ds = result.dataset
    assert ds.prompt_ids.tolist() == ["p-1", "p-2"]
    assert ds.splits.tolist() == ["train", "test"]
    assert ds.tasks.tolist() == ["trivia", None]
    assert ds.costs_usd is not None
    np.testing.assert_array_equal(ds.costs_usd, [[0.001, 0.01], [np.nan, 0.02]])
    assert ds.output_tokens is None
    assert "ignored 1 unknown column(s): comment" in result.notes
    assert result.notes[-1] == "splits from the 'split' column"
    # no output lengths: each model's observed costs give it one blended rate
    assert ds.target("small").price_source == (
        "fitted from 1 observed costs as one blended rate (no output lengths) (residual 0.0%)"
    )
    assert ds.target("small").input_usd_per_mtok == ds.target("small").output_usd_per_mtok > 0


def test_cost_usd_and_output_tokens_give_fitted_input_and_output_prices(tmp_path: Path) -> None:
    """cost = input tokens x 0.5 + output tokens x 1.5 per million, tokens as the cost formula counts them."""
    from prefill_router.data.tokens import estimate_tokens

    lines = ["question,model,isCorrect,output_tokens,cost_usd"]
    for i in range(12):
        question = f"Question number {i}: " + "why? " * (3 * i + 1)
        outputs = 40 + 17 * (i % 5)
        cost = (estimate_tokens(question) * 0.5 + outputs * 1.5) / 1e6
        lines += [
            f"{question},listed,1,{outputs},{cost!r}",
            f"{question},unlisted,{i % 2},{outputs},{cost!r}",
        ]
    src = write(tmp_path, "\n".join(lines) + "\n")
    prices = PriceTable([PriceEntry("listed", 9.0, 9.0, source="contract")])
    result = import_long_csv(src, prices=prices)
    listed, unlisted = result.dataset.targets
    assert (listed.input_usd_per_mtok, listed.price_source) == (9.0, "contract")  # a known price wins
    assert unlisted.input_usd_per_mtok == pytest.approx(0.5)
    assert unlisted.output_usd_per_mtok == pytest.approx(1.5)
    assert unlisted.price_source == "fitted from 12 observed costs (residual 0.0%)"
    assert any(n.startswith("prices fitted from the observed costs for 1 target(s)") for n in result.notes)


def test_empty_label_is_not_evaluated(tmp_path: Path) -> None:
    src = write(tmp_path, HEADER + "Q one,a,,\nQ one,b,True,3\n")
    result = import_long_csv(src, prices=NO_PRICES)
    assert np.isnan(result.dataset.labels[0, 0])
    assert "1 empty isCorrect cell(s): left as not evaluated" in result.notes


def test_record_lines_follow_quoted_newlines() -> None:
    text = 'a,b\n1,"x\ny"\n\n2,z\n'
    assert record_lines(text, 2) == ["line 2", "line 5"]
    assert record_lines(text, 3) == ["data row 1", "data row 2", "data row 3"]


# ------------------------------------------------------------------ bad input
def test_missing_file(tmp_path: Path) -> None:
    with raises("no such file", str(tmp_path / "absent.csv")):
        import_long_csv(tmp_path / "absent.csv", prices=NO_PRICES)


def test_malformed_csv(tmp_path: Path) -> None:
    src = write(tmp_path, HEADER + "Q,a,True,3\nQ,b,True,3,extra,fields\n")
    with raises(
        "malformed CSV (Error tokenizing data. C error: Expected 4 fields in line 3, saw 6", str(src)
    ):
        import_long_csv(src, prices=NO_PRICES)


def test_truncated_csv(sample: Path, tmp_path: Path) -> None:
    text = sample.read_text(encoding="utf-8")
    src = write(tmp_path, text[: text.index("2x + 6")])  # inside the quoted multi-line question
    with raises("malformed CSV", str(src)):
        import_long_csv(src, prices=NO_PRICES)


@pytest.mark.parametrize("missing", ["question", "model", "isCorrect"])
def test_missing_column(tmp_path: Path, missing: str) -> None:
    columns = ["question", "model", "isCorrect"]
    src = write(tmp_path, ",".join(c for c in columns if c != missing) + "\nx,y\n")
    with raises(f"missing column {missing!r}; found "):
        import_long_csv(src, prices=NO_PRICES)


def test_no_data_rows(tmp_path: Path) -> None:
    src = write(tmp_path, HEADER)
    with raises("the CSV has no data rows"):
        import_long_csv(src, prices=NO_PRICES)


@pytest.mark.parametrize(("cell", "shown"), [("1.5", "1.5"), ("-0.5", "-0.5"), ("2", "2.0")])
def test_label_outside_unit_interval(tmp_path: Path, cell: str, shown: str) -> None:
    src = write(tmp_path, HEADER + f"Q one,a,True,3\nQ one,b,{cell},3\n")
    with raises(f"label must be in [0, 1], got {shown}", "line 3, column 'isCorrect'"):
        import_long_csv(src, prices=NO_PRICES)


def test_non_numeric_label(tmp_path: Path) -> None:
    src = write(tmp_path, HEADER + "Q one,a,True,3\nQ one,b,perhaps,3\n")
    with raises("label must be true/false or a number in [0, 1], got 'perhaps'", "line 3"):
        import_long_csv(src, prices=NO_PRICES)


def test_error_lines_count_quoted_newlines(sample: Path, tmp_path: Path) -> None:
    text = sample.read_text(encoding="utf-8").replace(
        "Red Planet?,meta/llama-3.1-8b-instruct,True", "Red Planet?,x,9"
    )
    src = write(tmp_path, text)
    with raises("label must be in [0, 1], got 9.0", str(src), "line 14, column 'isCorrect'"):
        import_long_csv(src, prices=NO_PRICES)


@pytest.mark.parametrize("cell", ["-3", "many", "inf"])
def test_bad_output_tokens(tmp_path: Path, cell: str) -> None:
    src = write(tmp_path, HEADER + f"Q one,a,True,3\nQ two,a,False,{cell}\n")
    with raises(f"output_tokens must be a finite number >= 0 or empty, got {cell!r}", "line 3"):
        import_long_csv(src, prices=NO_PRICES)


def test_negative_cost(tmp_path: Path) -> None:
    src = write(tmp_path, "question,model,isCorrect,cost_usd\nQ one,a,True,-0.01\n")
    with raises("cost_usd must be a finite number >= 0 or empty, got '-0.01'", "line 2, column 'cost_usd'"):
        import_long_csv(src, prices=NO_PRICES)


def test_conflicting_duplicate_rows(tmp_path: Path) -> None:
    src = write(tmp_path, HEADER + "Q one,a,True,3\nQ two,a,True,3\nQ one,a,False,3\n")
    with raises(
        "conflicting rows for question 'Q one' and model 'a': isCorrect is 1.0 on line 2 but 0.0 on line 4",
        str(src),
        "lines 2 and 4",
    ):
        import_long_csv(src, prices=NO_PRICES)


def test_duplicate_rows_differing_in_output_tokens_conflict(tmp_path: Path) -> None:
    src = write(tmp_path, HEADER + "Q one,a,True,3\nQ one,a,True,4\n")
    with raises("output_tokens is 3.0 on line 2 but 4.0 on line 3"):
        import_long_csv(src, prices=NO_PRICES)


@pytest.mark.parametrize("question", ['""', '"   "'])
def test_empty_question(tmp_path: Path, question: str) -> None:
    src = write(tmp_path, HEADER + f"Q one,a,True,3\n{question},a,True,3\n")
    with raises("empty question; every row needs one", str(src), "line 3"):
        import_long_csv(src, prices=NO_PRICES)


def test_empty_model(tmp_path: Path) -> None:
    src = write(tmp_path, HEADER + "Q one,a,True,3\nQ one, ,True,3\n")
    with raises("empty model; every row needs one", "line 3"):
        import_long_csv(src, prices=NO_PRICES)


def test_question_with_two_tasks(tmp_path: Path) -> None:
    src = write(tmp_path, "question,model,isCorrect,task\nQ one,a,1,math\nQ one,b,1,logic\n")
    with raises("question 'Q one' has task 'math' on line 2 but 'logic' on line 3", "lines 2 and 3"):
        import_long_csv(src, prices=NO_PRICES)


def test_prompt_id_shared_by_two_questions(tmp_path: Path) -> None:
    src = write(tmp_path, "prompt_id,question,model,isCorrect\np1,Q one,a,1\np1,Q two,a,0\n")
    with raises("prompt_id 'p1' has question 'Q one' on line 2 but 'Q two' on line 3"):
        import_long_csv(src, prices=NO_PRICES)


def test_empty_prompt_id(tmp_path: Path) -> None:
    src = write(tmp_path, "prompt_id,question,model,isCorrect\np1,Q one,a,1\n,Q two,a,0\n")
    with raises("empty prompt_id; every row needs one", "line 3"):
        import_long_csv(src, prices=NO_PRICES)


def test_invalid_utf8(sample: Path, tmp_path: Path) -> None:
    data = sample.read_bytes()
    cut = data.index(b"Middlemarch")
    src = tmp_path / "long.csv"
    src.write_bytes(data[:cut] + b"\xc3\x28" + data[cut:])
    line = data[:cut].count(b"\n") + 1
    with raises(f"invalid UTF-8 at byte {cut}", str(src), f"line {line}"):
        import_long_csv(src, prices=NO_PRICES)
