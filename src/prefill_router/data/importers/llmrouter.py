"""Importer for LLMRouter's dcrouter files (github ulab-uiuc/LLMRouter, MIT).

Reads ``dcrouter_preprocessed/{train,test}.json`` (question + per-model scores), takes each
question's task from ``query_data/default_query_{train,test}.jsonl`` and the prices from
``llm_candidates/default_llm.json``. Keeps the source's split, except that test questions that
also occur verbatim in train are dropped from test (119 in the upstream files).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from prefill_router._files import read_text
from prefill_router.data.dataset import RoutingDataset, TargetInfo
from prefill_router.data.importers._common import (
    ImportResult,
    find_file,
    make_targets,
    parse_json,
    parse_label,
    read_jsonl,
    unpriced_note,
)
from prefill_router.data.prices import PriceTable
from prefill_router.errors import DataError

SPLITS = ("train", "test")
_PREFERRED_TASK = "mmlu"  # a text listed under two tasks is counted as mmlu, as upstream's counts do


def import_llmrouter(src: Path, *, prices: PriceTable, split_seed: int = 0) -> ImportResult:
    """Import the LLMRouter folder ``src`` (or any folder holding its ``data/`` tree).

    Raises:
        DataError: a missing or malformed file, a row without a question or scores, a score
            outside [0, 1], or rows whose model sets differ.
    """
    del split_seed  # the source has its own split
    notes: list[str] = []
    rows: dict[str, list[dict[str, Any]]] = {}
    tasks: dict[str, dict[str, str]] = {}
    files: list[str] = []
    for split in SPLITS:
        path = find_file(src, f"dcrouter_preprocessed/{split}.json", required=True)
        rows[split] = _read_dcrouter(path)
        files.append(str(path.relative_to(src)))
        query_path = find_file(src, f"query_data/default_query_{split}.jsonl", required=False)
        if query_path is None:
            tasks[split] = {}
            notes.append(f"no default_query_{split}.jsonl found: {split} tasks are left empty")
        else:
            tasks[split] = _task_by_question(read_jsonl(query_path))
            files.append(str(query_path.relative_to(src)))

    names = _model_names(rows, src)
    train_questions = {row["question"] for row in rows["train"]}
    leaked = [row for row in rows["test"] if row["question"] in train_questions]
    rows["test"] = [row for row in rows["test"] if row["question"] not in train_questions]
    notes.append(
        f"dropped {len(leaked)} test questions that also occur verbatim in train "
        f"(kept {len(rows['test'])} of {len(rows['test']) + len(leaked)})"
    )

    candidates_path = find_file(src, "llm_candidates/default_llm.json", required=False)
    overrides: dict[str, TargetInfo] = {}
    if candidates_path is not None:
        overrides = _candidate_prices(candidates_path, names)
        files.append(str(candidates_path.relative_to(src)))
    targets = make_targets(names, prices, overrides)
    notes += unpriced_note(targets)

    ids, prompts, task_col, split_col, labels = [], [], [], [], []
    for split in SPLITS:
        for i, row in enumerate(rows[split]):
            ids.append(f"llmrouter-{split}-{i:05d}")
            prompts.append(row["question"])
            task_col.append(tasks[split].get(row["question"]))
            split_col.append(split)
            labels.append([row["scores"][name] for name in names])
    untasked = sum(t is None for t in task_col)
    if untasked and all(tasks.values()):
        notes.append(f"{untasked} questions have no task in the query files")
    graded = int(np.sum((np.asarray(labels) > 0) & (np.asarray(labels) < 1)))
    notes.append(f"kept {graded} graded (fractional) scores as soft labels")
    dataset = RoutingDataset(
        prompt_ids=ids,
        prompts=prompts,
        tasks=task_col,
        splits=split_col,
        labels=np.asarray(labels, dtype=np.float64).reshape(len(ids), len(names)),
        targets=targets,
        provenance={
            "source": "llmrouter",
            "files": files,
            "notes": notes,
            "license": "MIT (ulab-uiuc/LLMRouter)",
        },
    )
    return ImportResult(dataset, notes)


def _read_dcrouter(path: Path) -> list[dict[str, Any]]:
    """Rows of a dcrouter JSON array, each checked to hold a question and float scores."""
    data = parse_json(read_text(path), str(path))
    if not isinstance(data, list):
        raise DataError("expected a JSON array of {question, scores} objects", source=str(path))
    for i, row in enumerate(data):
        where = f"item {i}"
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise DataError("expected an object with a string 'question'", source=str(path), where=where)
        if not isinstance(row.get("scores"), dict) or not row["scores"]:
            raise DataError(
                "expected a non-empty object 'scores' of model -> score", source=str(path), where=where
            )
        row["scores"] = {
            str(m): parse_label(v, str(path), f"{where}, model {m!r}") for m, v in row["scores"].items()
        }
    return data


def _task_by_question(queries: list[dict[str, Any]]) -> dict[str, str]:
    """Map query text -> task name; a text under several tasks takes ``mmlu`` if among them."""
    seen: dict[str, set[str]] = {}
    for row in queries:
        if isinstance(row.get("query"), str) and isinstance(row.get("task_name"), str):
            seen.setdefault(row["query"], set()).add(row["task_name"])
    return {q: _PREFERRED_TASK if _PREFERRED_TASK in t else min(t) for q, t in seen.items()}


def _model_names(rows: dict[str, list[dict[str, Any]]], src: Path) -> list[str]:
    """The model names, which every row of every split must share; in train's first-row order."""
    first = list(rows["train"][0]["scores"]) if rows["train"] else []
    expected = set(first)
    for split, split_rows in rows.items():
        for i, row in enumerate(split_rows):
            if set(row["scores"]) != expected:
                diff = sorted(set(row["scores"]) ^ expected)
                raise DataError(
                    f"scores name different models than the first train row ({', '.join(diff)})",
                    source=f"{src}/{split}.json",
                    where=f"item {i}",
                )
    counts = Counter(first)
    assert all(c == 1 for c in counts.values())
    return first


def _candidate_prices(path: Path, names: list[str]) -> dict[str, TargetInfo]:
    """Prices of the scored models from LLMRouter's ``default_llm.json``."""
    data = parse_json(read_text(path), str(path))
    if not isinstance(data, dict):
        raise DataError("expected a JSON object of model -> description", source=str(path))
    out = {}
    for name in names:
        entry = data.get(name)
        if not isinstance(entry, dict):
            continue
        try:
            price_in, price_out = float(entry["input_price"]), float(entry["output_price"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                "expected numeric 'input_price' and 'output_price'", source=str(path), where=name
            ) from exc
        out[name] = TargetInfo(name, price_in, price_out, price_source="LLMRouter default_llm.json")
    return out
