"""Import a long CSV: one row per (prompt, model) pair, as the NVIDIA Model Router Toolkit writes.

==================  =========  ==============================================================
column              required   meaning
==================  =========  ==============================================================
``question``        yes        the prompt text
``model``           yes        the target model
``isCorrect``       yes        correctness: true/false, 0/1 or a fraction in [0, 1]; empty =
                               not evaluated
``output_tokens``   no         the observed output length in tokens
``cost_usd``        no         the observed cost in USD
``task``            no         benchmark or category of the question
``split``           no         train / test / ...; assigned by prompt text when absent
``prompt_id``       no         the question's id; ``q00000``, ``q00001``, ... in order of first
                               appearance when absent
==================  =========  ==============================================================

The rows are pivoted to one row per distinct question. A (question, model) pair that no row
holds is "not evaluated" (NaN). Rows repeating another row exactly are dropped; two rows for one
pair that disagree are an error naming both lines.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from prefill_router.data.dataset import RoutingDataset
from prefill_router.data.importers._common import (
    ImportResult,
    make_targets,
    nonnegative_numbers,
    parse_label,
    price_from_costs,
    read_csv,
    require_columns,
    unpriced_note,
)
from prefill_router.data.prices import PriceTable
from prefill_router.data.splits import assign_splits
from prefill_router.errors import DataError

SOURCE_NAME = "long-csv"
QUESTION, MODEL, LABEL = "question", "model", "isCorrect"
REQUIRED_COLUMNS = (QUESTION, MODEL, LABEL)
NUMERIC_COLUMNS = ("output_tokens", "cost_usd")
TEXT_COLUMNS = ("task", "split", "prompt_id")
_LINE = "line"  # the working column holding each row's CSV line number


def import_long_csv(src: Path, *, prices: PriceTable, split_seed: int = 0) -> ImportResult:
    """Import a long CSV (one row per question x model) as a routing dataset.

    Args:
        src: the CSV file (UTF-8, with a header row).
        prices: where the targets' prices come from.
        split_seed: seed of the train/test split, used when the file has no ``split`` column.

    Returns:
        The dataset (one row per distinct question, models in order of first appearance) and
        the notes for the import summary.

    Raises:
        DataError: a missing or malformed file, a missing column, an empty question or model, a
            label outside [0, 1], a negative or non-numeric ``output_tokens`` or ``cost_usd``, two
            rows for one (question, model) pair that disagree, or a question given two different
            tasks, splits or ids; the message names the CSV line(s).

    Example::

        result = import_long_csv(Path("router_results.csv"), prices=builtin_prices())
        result.dataset.labels  # (n_questions, n_models), NaN where a pair is missing
    """
    source = str(src)
    frame = read_csv(src)
    require_columns(frame, REQUIRED_COLUMNS, source)
    if frame.empty:
        raise DataError("the CSV has no data rows", source=source)
    notes = _column_notes(list(frame.columns))
    with open(src, encoding="utf-8", newline="") as handle:  # streamed: the text is never held whole
        lines = record_lines(handle, len(frame))
    rows = _parse_rows(frame, lines, source)
    rows, n_dropped = _drop_exact_duplicates(rows)
    if n_dropped:
        notes.append(f"dropped {n_dropped} row(s) repeating an earlier row exactly")
    _check_no_conflicts(rows, source)
    present = [c for c in TEXT_COLUMNS if c in rows.columns]
    for column in present:
        _check_one_value_per_key(rows, QUESTION, column, source)
    if "prompt_id" in rows.columns:
        _check_one_value_per_key(rows, "prompt_id", QUESTION, source)
    return _assemble(src, rows, prices, split_seed, notes)


def record_lines(text: str | Iterable[str], n_rows: int) -> list[str]:
    """Where each data record of a CSV text (or of its lines, e.g. an open file) starts:
    ``"line N"``, 1-based, blank lines skipped.

    Quoted fields may span lines, so the record number alone does not give the line. Falls back
    to ``"data row N"`` if the standard ``csv`` module and pandas disagree on the record count.
    """
    starts: list[int] = []
    try:
        reader = csv.reader(io.StringIO(text) if isinstance(text, str) else text)
        end = 0
        for record in reader:
            if record:  # a blank line holds no record (pandas skips it too)
                starts.append(end + 1)
            end = reader.line_num
    except csv.Error:
        starts = []
    data_starts = starts[1:]  # the first record is the header
    if len(data_starts) != n_rows:
        return [f"data row {i + 1}" for i in range(n_rows)]
    return [f"line {n}" for n in data_starts]


# ---------------------------------------------------------------------- parsing
def _column_notes(columns: Sequence[str]) -> list[str]:
    known = {*REQUIRED_COLUMNS, *NUMERIC_COLUMNS, *TEXT_COLUMNS}
    other = [c for c in columns if c not in known]
    return [f"ignored {len(other)} unknown column(s): {', '.join(other)}"] if other else []


def _parse_rows(frame: pd.DataFrame, lines: Sequence[str], source: str) -> pd.DataFrame:
    """The typed working table: one row per CSV row, with its line, label and optional columns."""
    text = frame.fillna("")
    _check_not_blank(text[QUESTION], QUESTION, lines, source)
    rows = pd.DataFrame(
        {
            QUESTION: text[QUESTION].astype(object),
            MODEL: text[MODEL].str.strip().astype(object),
            LABEL: [
                parse_label(value, source, f"{where}, column {LABEL!r}")
                for value, where in zip(frame[LABEL], lines, strict=True)
            ],
            _LINE: list(lines),
        }
    )
    _check_not_blank(rows[MODEL], MODEL, lines, source)
    for column in NUMERIC_COLUMNS:
        if column in frame.columns:
            rows[column] = nonnegative_numbers(text[column], column, lines, source)
    for column in TEXT_COLUMNS:
        if column in frame.columns:
            rows[column] = text[column].str.strip().astype(object)
    if "prompt_id" in rows.columns:
        _check_not_blank(rows["prompt_id"], "prompt_id", lines, source)
    return rows


def _check_not_blank(column: pd.Series, name: str, lines: Sequence[str], source: str) -> None:
    blank = (column.astype(str).str.strip() == "").to_numpy(dtype=bool)
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise DataError(f"empty {name}; every row needs one", source=source, where=lines[i])


def _value_columns(rows: pd.DataFrame) -> list[str]:
    return [c for c in rows.columns if c not in (QUESTION, MODEL, _LINE)]


def _drop_exact_duplicates(rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``rows`` without the rows that repeat an earlier one in every column, and how many went."""
    repeated = rows.duplicated(subset=[QUESTION, MODEL, *_value_columns(rows)], keep="first")
    return rows[~repeated].reset_index(drop=True), int(repeated.sum())


def _check_no_conflicts(rows: pd.DataFrame, source: str) -> None:
    """Raise naming both lines if two rows for one (question, model) pair disagree."""
    clash = rows.duplicated(subset=[QUESTION, MODEL], keep=False)
    if not clash.any():
        return
    first = rows[clash].iloc[0]
    pair = rows[(rows[QUESTION] == first[QUESTION]) & (rows[MODEL] == first[MODEL])]
    a, b = pair.iloc[0], pair.iloc[1]
    column = next(c for c in _value_columns(rows) if not _same(a[c], b[c]))
    raise DataError(
        f"conflicting rows for question {_short(a[QUESTION])!r} and model {a[MODEL]!r}: {column} is "
        f"{_show(a[column])} on {a[_LINE]} but {_show(b[column])} on {b[_LINE]}; keep one of them",
        source=source,
        where=_both(a[_LINE], b[_LINE]),
    )


def _check_one_value_per_key(rows: pd.DataFrame, key: str, column: str, source: str) -> None:
    """Raise naming two lines if one ``key`` (a question or prompt_id) has two ``column`` values."""
    counts = rows.groupby(key, sort=False)[column].nunique()
    if not (counts > 1).any():
        return
    group = rows[rows[key] == counts[counts > 1].index[0]]
    a = group.iloc[0]
    b = group[group[column] != a[column]].iloc[0]
    raise DataError(
        f"{key} {_short(a[key])!r} has {column} {_short(a[column])!r} on {a[_LINE]} but "
        f"{_short(b[column])!r} on {b[_LINE]}; each {key} needs one {column}",
        source=source,
        where=_both(a[_LINE], b[_LINE]),
    )


def _same(a: object, b: object) -> bool:
    return bool(a == b) or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def _show(value: object) -> str:
    """A cell value as the message shows it: ``1.0``, not ``np.float64(1.0)``."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _both(a: str, b: str) -> str:
    """``"lines 2 and 4"`` from ``"line 2"`` and ``"line 4"``."""
    if a.startswith("line ") and b.startswith("line "):
        return f"lines {a.removeprefix('line ')} and {b.removeprefix('line ')}"
    return f"{a} and {b}"


def _short(text: object, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------- assembly
def _assemble(
    src: Path, rows: pd.DataFrame, prices: PriceTable, split_seed: int, notes: list[str]
) -> ImportResult:
    """Pivot the checked rows to one row per question and build the dataset."""
    q_codes, questions = pd.factorize(rows[QUESTION])
    m_codes, models = pd.factorize(rows[MODEL])
    rows = rows.assign(q=q_codes, m=m_codes)
    shape = (len(questions), len(models))

    def matrix(column: str) -> np.ndarray:
        table = rows.pivot(index="q", columns="m", values=column)
        return table.reindex(index=range(shape[0]), columns=range(shape[1])).to_numpy(dtype=np.float64)

    per_question = rows.drop_duplicates("q").set_index("q").sort_index()
    prompts = [str(q) for q in questions]
    tasks = _nullable(per_question, "task")
    if "prompt_id" in rows.columns:
        prompt_ids = per_question["prompt_id"].astype(str).tolist()
    else:
        prompt_ids = [f"q{i:05d}" for i in range(shape[0])]
    if "split" in rows.columns:
        splits = _nullable(per_question, "split")
        split_note = "splits from the 'split' column"
    else:
        splits = assign_splits(prompts, tasks, seed=split_seed).tolist()
        split_note = (
            f"no split in the source: assigned a grouped, task-stratified 80/20 split (seed {split_seed})"
        )

    labels = matrix(LABEL)
    n_absent = labels.size - len(rows)
    notes.append(f"{len(rows)} rows -> {shape[0]} questions x {shape[1]} models: {', '.join(models)}")
    if n_absent:
        notes.append(f"{n_absent} (question, model) pair(s) absent: left as not evaluated")
    n_empty = int(np.isnan(labels).sum()) - n_absent
    if n_empty:
        notes.append(f"{n_empty} empty {LABEL} cell(s): left as not evaluated")
    costs = matrix("cost_usd") if "cost_usd" in rows.columns else None
    output_tokens = matrix("output_tokens") if "output_tokens" in rows.columns else None
    targets, fitted = price_from_costs(
        make_targets([str(m) for m in models], prices), prompts, costs, output_tokens
    )
    notes += fitted + unpriced_note(targets)
    notes.append(split_note)

    dataset = RoutingDataset(
        prompt_ids=np.array(prompt_ids, dtype=object),
        prompts=np.array(prompts, dtype=object),
        tasks=np.array(tasks, dtype=object),
        splits=np.array(splits, dtype=object),
        labels=labels,
        targets=targets,
        costs_usd=costs,
        output_tokens=output_tokens,
        provenance={"source": SOURCE_NAME, "files": [src.name], "notes": list(notes)},
    )
    return ImportResult(dataset=dataset, notes=notes)


def _nullable(per_question: pd.DataFrame, column: str) -> list[str | None]:
    """One value per question from a text column; empty or absent = None."""
    if column not in per_question.columns:
        return [None] * len(per_question)
    return [str(v) if v else None for v in per_question[column]]
