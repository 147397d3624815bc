"""The llmrouter, mmlu-pro and routellm importers on fixtures cut from the real files, and bad input."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from prefill_router import ConfigError, DataError
from prefill_router.data.importers import import_dataset, reprice
from prefill_router.data.prices import PriceEntry, PriceTable, builtin_prices


def run(kind: str, src: Path, **options: object):  # type: ignore[no-untyped-def]
    return import_dataset(kind, src, prices=builtin_prices(), **options)


def copy_fixture(fixtures: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fixtures / name, tmp_path / name))


# -------------------------------------------------------------------- llmrouter
def test_llmrouter_keeps_split_and_drops_leaked_test_questions(fixtures: Path) -> None:
    result = run("llmrouter", fixtures / "llmrouter")
    ds = result.dataset
    assert ds.split_names() == ["test", "train"]
    assert (ds.splits == "test").sum() == 4
    assert "dropped 2 test questions that also occur verbatim in train (kept 4 of 6)" in result.notes
    train_texts = set(ds.prompts[ds.splits == "train"])
    assert not train_texts & set(ds.prompts[ds.splits == "test"])
    assert ds.prompt_ids[0] == "llmrouter-train-00000"


def test_llmrouter_tasks_prices_and_soft_labels(fixtures: Path) -> None:
    ds = run("llmrouter", fixtures / "llmrouter").dataset
    assert None not in ds.tasks.tolist()
    assert {"commongen", "gsm8k", "mmlu"} <= set(ds.task_names())
    commongen = ds.labels[ds.tasks == "commongen"]
    assert ((commongen > 0) & (commongen < 1)).any()
    gemma = ds.target("gemma-2-9b-it")
    assert (gemma.input_usd_per_mtok, gemma.price_source) == (0.1, "LLMRouter default_llm.json")


def test_llmrouter_ambiguous_text_counts_as_mmlu(fixtures: Path) -> None:
    from prefill_router.data.importers.llmrouter import _task_by_question

    rows = [{"query": "q", "task_name": "openbook_qa"}, {"query": "q", "task_name": "mmlu"}]
    assert _task_by_question(rows) == {"q": "mmlu"}


def test_llmrouter_missing_file(fixtures: Path, tmp_path: Path) -> None:
    src = copy_fixture(fixtures, "llmrouter", tmp_path)
    (src / "data/dcrouter_preprocessed/test.json").unlink()
    with pytest.raises(
        DataError, match=r"expected a file 'dcrouter_preprocessed/test\.json' inside this folder"
    ):
        run("llmrouter", src)


def test_llmrouter_truncated_json_names_line(fixtures: Path, tmp_path: Path) -> None:
    src = copy_fixture(fixtures, "llmrouter", tmp_path)
    path = src / "data/dcrouter_preprocessed/train.json"
    path.write_text(path.read_text()[:500])
    with pytest.raises(DataError, match=r"train\.json: line \d+, column \d+: malformed JSON"):
        run("llmrouter", src)


def test_llmrouter_score_outside_unit_interval(fixtures: Path, tmp_path: Path) -> None:
    src = copy_fixture(fixtures, "llmrouter", tmp_path)
    path = src / "data/dcrouter_preprocessed/train.json"
    rows = json.loads(path.read_text())
    rows[3]["scores"]["gemma-2-9b-it"] = 3.0
    path.write_text(json.dumps(rows))
    with pytest.raises(
        DataError, match=r"item 3, model 'gemma-2-9b-it': label must be in \[0, 1\], got 3\.0"
    ):
        run("llmrouter", src)


def test_llmrouter_rows_with_different_models(fixtures: Path, tmp_path: Path) -> None:
    src = copy_fixture(fixtures, "llmrouter", tmp_path)
    path = src / "data/dcrouter_preprocessed/test.json"
    rows = json.loads(path.read_text())
    del rows[1]["scores"]["gemma-2-9b-it"]
    path.write_text(json.dumps(rows))
    with pytest.raises(
        DataError, match=r"item 1: scores name different models than the first train row \(gemma-2-9b-it\)"
    ):
        run("llmrouter", src)


def test_llmrouter_invalid_utf8(fixtures: Path, tmp_path: Path) -> None:
    src = copy_fixture(fixtures, "llmrouter", tmp_path)
    path = src / "data/example_data/query_data/default_query_train.jsonl"
    path.write_bytes(b'{"query": "x"}\n{"query": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"default_query_train\.jsonl: line 2: invalid UTF-8 at byte 26"):
        run("llmrouter", src)


def test_llmrouter_empty_question(fixtures: Path, tmp_path: Path) -> None:
    src = copy_fixture(fixtures, "llmrouter", tmp_path)
    path = src / "data/dcrouter_preprocessed/train.json"
    rows = json.loads(path.read_text())
    rows[2]["question"] = " "
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"row 2 \(llmrouter-train-00002\): empty prompt"):
        run("llmrouter", src)


# --------------------------------------------------------------------- mmlu-pro
def test_mmlu_pro_labels_missing_cells_and_quirks(fixtures: Path) -> None:
    result = run("mmlu-pro", fixtures / "mmlu_pro")
    ds = result.dataset
    assert ds.target_names == ["DeepSeek-Coder-V2", "Llama-2-7b-hf", "gemini-1.5-pro-002"]
    assert ds.n_prompts == 14
    assert np.isnan(ds.labels[:, 0]).sum() == 3  # DeepSeek lacks three questions
    assert not np.isnan(ds.labels[:, 1:]).any()
    assert "DeepSeek-Coder-V2: skipped 2 stray non-record entries" in result.notes
    assert any("gemini-1.5-pro-002 2" in n for n in result.notes if n.startswith("answer keys"))
    assert ds.output_tokens is not None and (ds.output_tokens[:, 1] > 0).all()
    assert set(ds.split_names()) <= {"train", "test"}


def test_mmlu_pro_uses_each_files_own_answer_key(fixtures: Path, tmp_path: Path) -> None:
    """A file whose answer key differs is scored against its own key, not the majority's."""
    src = tmp_path / "mmlu"
    src.mkdir()
    record = {
        "question_id": 1,
        "question": "Q?",
        "options": ["a", "b"],
        "answer": "B",
        "category": "math",
        "pred": "B",
    }
    for model, answer in (("m1", "A"), ("m2", "A"), ("m3", "B")):
        write_zip(src, model, [dict(record, answer=answer)])
    ds = run("mmlu-pro", src).dataset
    assert ds.labels.tolist() == [[0.0, 0.0, 1.0]]
    assert ds.prompts[0] == "Q?\n\nA. a\nB. b"


def test_mmlu_pro_null_pred_is_wrong(tmp_path: Path) -> None:
    record = {
        "question_id": 5,
        "question": "Q?",
        "options": ["a"],
        "answer": "A",
        "category": "x",
        "pred": None,
    }
    write_zip(tmp_path, "m", [record])
    assert run("mmlu-pro", tmp_path).dataset.labels.tolist() == [[0.0]]


def test_mmlu_pro_bad_archive(tmp_path: Path) -> None:
    (tmp_path / "model_outputs_m_5shots.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"model_outputs_m_5shots\.zip: not a readable zip archive"):
        run("mmlu-pro", tmp_path)


def test_mmlu_pro_record_missing_field(tmp_path: Path) -> None:
    write_zip(tmp_path, "m", [{"question_id": 1, "question": "Q", "options": ["a"], "category": "x"}])
    with pytest.raises(DataError, match=r"item 0: record lacks a valid answer"):
        run("mmlu-pro", tmp_path)


def test_mmlu_pro_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no model_outputs_<model>_5shots\.zip archive in this folder"):
        run("mmlu-pro", tmp_path)


def write_zip(folder: Path, model: str, records: list[object]) -> None:
    with zipfile.ZipFile(folder / f"model_outputs_{model}_5shots.zip", "w") as archive:
        archive.writestr(f"model_outputs_{model}_5shots.json", json.dumps(records))


# --------------------------------------------------------------------- routellm
def test_routellm_reads_mmlu_and_gsm8k(fixtures: Path) -> None:
    result = run("routellm", fixtures / "routellm")
    ds = result.dataset
    assert ds.target_names == ["mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"]
    assert ds.task_names() == ["gsm8k", "mmlu_abstract_algebra", "mmlu_college_chemistry"]
    assert (ds.tasks == "gsm8k").sum() == 6
    assert ds.output_tokens is not None
    assert not np.isnan(ds.output_tokens[ds.tasks == "gsm8k"]).any()
    assert np.isnan(ds.output_tokens[ds.tasks != "gsm8k"]).all()
    assert ds.target("gpt-4-1106-preview").output_usd_per_mtok == 30.0


def test_routellm_drops_contaminated_unless_asked(fixtures: Path) -> None:
    dropped = run("routellm", fixtures / "routellm").dataset
    kept = run("routellm", fixtures / "routellm", keep_contaminated=True).dataset
    assert kept.n_prompts == dropped.n_prompts + 1


def test_routellm_bad_label_names_line_and_column(fixtures: Path, tmp_path: Path) -> None:
    src = copy_fixture(fixtures, "routellm", tmp_path)
    path = src / "evals/gsm8k/gsm8k_responses.csv"
    path.write_text("prompt,a,b\nhello,True,Maybe\n")
    with pytest.raises(
        DataError, match=r"gsm8k_responses\.csv: line 2, column 'b': label must be true/false"
    ):
        run("routellm", src)


def test_routellm_missing_prompt_column(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k/gsm8k_responses.csv").write_text("question,a\nx,True\n")
    with pytest.raises(DataError, match="missing column 'prompt'; found question, a"):
        run("routellm", tmp_path)


def test_routellm_files_naming_different_models(fixtures: Path, tmp_path: Path) -> None:
    src = copy_fixture(fixtures, "routellm", tmp_path)
    (src / "evals/mmlu/responses/mmlu_extra.csv").write_text("prompt,other-model\nx,True\n")
    with pytest.raises(DataError, match=r"mmlu_extra\.csv: models \['other-model'\] differ"):
        run("routellm", src)


def test_routellm_nothing_to_import(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"expected mmlu/responses/mmlu_<subject>\.csv files"):
        run("routellm", tmp_path)


# ------------------------------------------------------------------- registry
def test_unknown_kind_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown import kind 'csv'; expected one of: llmrouter, mmlu-pro"):
        import_dataset("csv", tmp_path, prices=builtin_prices())


def test_reprice_overrides_only_known_targets(fixtures: Path) -> None:
    ds = run("routellm", fixtures / "routellm").dataset
    table = PriceTable([PriceEntry("gpt-4-1106-preview", 1.0, 2.0, "price file x", False)])
    repriced = reprice(ds, table)
    assert repriced.target("gpt-4-1106-preview").output_usd_per_mtok == 2.0
    assert repriced.target("mistralai/Mixtral-8x7B-Instruct-v0.1") == ds.target(
        "mistralai/Mixtral-8x7B-Instruct-v0.1"
    )
