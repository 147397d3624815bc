"""Import RouterBench's wide table (Hu et al. 2024; github.com/withmartian/routerbench).

RouterBench publishes ``routerbench_0shot.pkl`` and ``routerbench_5shot.pkl`` on Hugging Face
(``withmartian/routerbench``): pickled pandas DataFrames with one row per prompt, built by
upstream's ``convertors/common.py`` (``convert_to_wide_format``, then the cost and oracle columns):

==============================  ==============================================================
column                          meaning
==============================  ==============================================================
``sample_id``                   unique id, e.g. ``mmlu-abstract-algebra.val.0``
``prompt``                      ``str()`` of a Python list of turns, e.g. ``"['What is ...']"``
``eval_name``                   the benchmark, e.g. ``mmlu-abstract-algebra``, ``grade-school-math``
``<model>``                     correctness in [0, 1]: mostly 0/1, graded for some benchmarks
``<model>|model_response``      ``str()`` of the list of the model's replies
``<model>|total_cost``          upstream's cost of prompt + reply for that model, in USD
``oracle_model_to_route_to``    upstream's oracle choice; ignored here
==============================  ==============================================================

Model names are upstream's (``gpt-4-1106-preview``, ``claude-instant-v1``,
``meta/llama-2-70b-chat``, ``mistralai/mixtral-8x7b-chat``, ...). The same table saved with
``DataFrame.to_csv(index=False)`` imports the same way. An empty cell means "not evaluated".

.. warning:: Loading a pickle runs code stored in it, so a pickle is read only with
   ``allow_pickle=True`` (``data import routerbench FILE.pkl --allow-pickle``): pass it only for
   files you trust, or convert the table to CSV where you trust it.
"""

from __future__ import annotations

import ast
import math
import pickle
from collections.abc import Callable, Sequence
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
from prefill_router.data.tokens import estimate_tokens
from prefill_router.errors import DataError

SOURCE_NAME = "routerbench"
REQUIRED_COLUMNS = ("sample_id", "prompt", "eval_name")
ORACLE_COLUMN = "oracle_model_to_route_to"
RESPONSE_SUFFIX = "|model_response"
COST_SUFFIX = "|total_cost"
PICKLE_SUFFIXES = (".pkl", ".pickle")
TURN_SEPARATOR = "\n\n"
PICKLE_NOTE = "read a pickle (--allow-pickle): pickles run code when loaded, so import only files you trust"
# What a broken or foreign pickle raises while loading (truncated, corrupt, missing classes).
_UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
)

_ColumnParser = Callable[[pd.Series, str], np.ndarray]
"""Parses one ``<model><suffix>`` column (the column, its name) into (N,) floats."""


def import_routerbench(
    src: Path, *, prices: PriceTable, split_seed: int = 0, allow_pickle: bool = False
) -> ImportResult:
    """Import a RouterBench wide table (``.pkl``/``.pickle`` or ``.csv``) as a routing dataset.

    Labels come from the ``<model>`` columns, observed costs from ``<model>|total_cost``, output
    lengths from ``<model>|model_response`` (estimated tokens). Splits are assigned by
    :func:`~prefill_router.data.splits.assign_splits`, grouped by prompt text.

    Args:
        src: the ``.pkl``, ``.pickle`` or ``.csv`` file.
        prices: where the targets' prices come from (RouterBench models are mostly unpriced;
            the observed costs are used then).
        split_seed: seed of the train/test split.
        allow_pickle: read a ``.pkl``/``.pickle`` file. A pickle runs code when loaded, so
            without this a pickle is refused before a byte of it is read.

    Returns:
        The dataset and the notes for the import summary.

    Raises:
        DataError: a pickle without ``allow_pickle``, a missing or malformed file, a missing
            column, a model without a correctness
            column, a duplicate or empty ``sample_id``, an empty prompt, a label outside [0, 1]
            or a negative or non-numeric cost; the message names the row and column.

    Example::

        result = import_routerbench(Path("routerbench_0shot.pkl"), prices=builtin_prices(), allow_pickle=True)
        result.dataset.target_names  # ['WizardLM/WizardLM-13B-V1.2', 'claude-instant-v1', ...]
    """
    source = str(src)
    frame, notes = _read_frame(src, allow_pickle)
    require_columns(frame, REQUIRED_COLUMNS, source)
    if frame.empty:
        raise DataError("the table has no rows", source=source)
    columns = list(frame.columns)
    models = model_columns(columns, source)
    notes += _column_notes(columns, models)

    prompt_ids = _sample_ids(frame["sample_id"], source)
    where = [f"row {i} (sample_id {pid!r})" for i, pid in enumerate(prompt_ids)]
    prompts, n_turn_lists = _prompts(frame["prompt"], where, source)
    tasks = [None if is_empty(v) else str(v).strip() for v in frame["eval_name"]]
    labels = np.column_stack([_labels(frame[m], m, where, source) for m in models])
    costs = _block(
        frame, models, COST_SUFFIX, lambda col, name: nonnegative_numbers(col, name, where, source)
    )
    output_tokens = _block(frame, models, RESPONSE_SUFFIX, lambda col, _: _output_tokens(col))

    notes.append(f"{len(prompt_ids)} prompts x {len(models)} models: {', '.join(models)}")
    if n_turn_lists:
        notes.append(f"{n_turn_lists} prompts stored as Python lists of turns: joined with a blank line")
    n_empty = int(np.isnan(labels).sum())
    if n_empty:
        notes.append(f"{n_empty} of {labels.size} label cells empty: left as not evaluated")
    if costs is not None:
        notes.append("costs are the observed '<model>|total_cost' values in USD")
    if output_tokens is not None:
        notes.append("output tokens estimated from '<model>|model_response' (ceil(UTF-8 bytes / 4))")
    targets, fitted = price_from_costs(make_targets(models, prices), prompts, costs, output_tokens)
    notes += fitted + unpriced_note(targets)
    notes.append(
        f"no split in the source: assigned a grouped, task-stratified 80/20 split (seed {split_seed})"
    )

    dataset = RoutingDataset(
        prompt_ids=np.array(prompt_ids, dtype=object),
        prompts=np.array(prompts, dtype=object),
        tasks=np.array(tasks, dtype=object),
        splits=assign_splits(prompts, tasks, seed=split_seed),
        labels=labels,
        targets=targets,
        costs_usd=costs,
        output_tokens=output_tokens,
        provenance={"source": SOURCE_NAME, "files": [src.name], "notes": list(notes)},
    )
    return ImportResult(dataset=dataset, notes=notes)


def model_columns(columns: Sequence[str], source: str) -> list[str]:
    """The model names of a RouterBench table, in the order of their correctness columns.

    A model is a name ``X`` for which ``X|total_cost`` or ``X|model_response`` is a column;
    ``X`` itself must then be a column (its correctness scores).

    Raises:
        DataError: a response or cost column without its correctness column, or no model at all.
    """
    models: list[str] = []
    for column in columns:
        for suffix in (RESPONSE_SUFFIX, COST_SUFFIX):
            if not column.endswith(suffix):
                continue
            model = column[: -len(suffix)]
            if model not in columns:
                raise DataError(
                    f"column {column!r} has no correctness column {model!r}; every model needs a "
                    "column of its own holding its scores in [0, 1]",
                    source=source,
                )
            if model not in models:
                models.append(model)
    if not models:
        raise DataError(
            f"no model columns: expected '<model>' with '<model>{COST_SUFFIX}' or "
            f"'<model>{RESPONSE_SUFFIX}'; found {', '.join(columns)}",
            source=source,
        )
    return sorted(models, key=columns.index)


def turns_text(value: object) -> tuple[str, bool]:
    """The text of a prompt or reply cell, and whether it was a list of turns.

    A list (or the ``str()`` of a list of strings, as RouterBench stores them) becomes its turns
    joined with a blank line; other text is returned as is; an empty cell gives ``""``.

    Example::

        >>> turns_text("['Hi.', 'And then?']")
        ('Hi.\\n\\nAnd then?', True)
    """
    if isinstance(value, list | tuple):
        return TURN_SEPARATOR.join(str(turn) for turn in value), True
    if is_empty(value):
        return "", False
    text = str(value)
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return text, False
    try:
        # literal_eval only builds Python literals: it never runs code from the cell.
        turns = ast.literal_eval(stripped)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text, False
    if not isinstance(turns, list) or not all(isinstance(turn, str) for turn in turns):
        return text, False
    return TURN_SEPARATOR.join(turns), True


def is_empty(value: object) -> bool:
    """Whether a cell is empty: None, NaN, NA or blank text."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float | np.floating) and math.isnan(value)


# ---------------------------------------------------------------------- reading
def _read_frame(src: Path, allow_pickle: bool) -> tuple[pd.DataFrame, list[str]]:
    """The table in ``src`` with string column names, and the notes about reading it."""
    suffix = src.suffix.lower()
    if suffix == ".csv":
        frame, notes = read_csv(src), []
    elif suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise DataError(
                "refusing to unpickle: loading a pickle runs any code stored in it. If you trust this "
                "file, pass --allow-pickle (allow_pickle=True); otherwise use upstream's table as CSV",
                source=str(src),
            )
        frame, notes = _read_pickle(src), [PICKLE_NOTE]
    else:
        raise DataError(
            f"expected a .csv, .pkl or .pickle file, got {src.suffix or 'no suffix'!r}", source=str(src)
        )
    return frame.rename(columns=str), notes


def _read_pickle(src: Path) -> pd.DataFrame:
    if src.is_dir():
        raise DataError("expected a file, found a directory", source=str(src))
    try:
        # Runs code stored in the file: the caller opted in with allow_pickle.
        obj = pd.read_pickle(src)
    except FileNotFoundError as exc:
        raise DataError("no such file", source=str(src)) from exc
    except _UNPICKLING_ERRORS as exc:
        raise DataError(f"not a readable pickle ({type(exc).__name__}: {exc})", source=str(src)) from exc
    if not isinstance(obj, pd.DataFrame):
        raise DataError(f"expected a pickled pandas DataFrame, got {type(obj).__name__}", source=str(src))
    return obj


def _column_notes(columns: Sequence[str], models: Sequence[str]) -> list[str]:
    known = {*REQUIRED_COLUMNS, ORACLE_COLUMN, *models}
    known |= {m + suffix for m in models for suffix in (RESPONSE_SUFFIX, COST_SUFFIX)}
    notes = []
    if ORACLE_COLUMN in columns:
        notes.append(f"ignored column {ORACLE_COLUMN!r}: upstream's routing choice, not a label")
    other = [c for c in columns if c not in known]
    if other:
        notes.append(f"ignored {len(other)} unknown column(s): {', '.join(other)}")
    return notes


# ---------------------------------------------------------------------- columns
def _sample_ids(column: pd.Series, source: str) -> list[str]:
    ids = ["" if is_empty(v) else str(v).strip() for v in column]
    for i, pid in enumerate(ids):
        if not pid:
            raise DataError("empty sample_id; every row needs a unique id", source=source, where=f"row {i}")
    duplicated = pd.Series(ids).duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = ids[int(np.flatnonzero(duplicated)[0])]
        rows = [i for i, pid in enumerate(ids) if pid == first]
        raise DataError(
            f"duplicate sample_id {first!r} (rows {rows[0]} and {rows[1]}); sample_id must be unique",
            source=source,
        )
    return ids


def _prompts(column: pd.Series, where: Sequence[str], source: str) -> tuple[list[str], int]:
    parsed = [turns_text(v) for v in column]
    for (text, _), location in zip(parsed, where, strict=True):
        if not text.strip():
            raise DataError("empty prompt; every row needs prompt text", source=source, where=location)
    return [text for text, _ in parsed], sum(1 for _, was_list in parsed if was_list)


def _labels(column: pd.Series, model: str, where: Sequence[str], source: str) -> np.ndarray:
    return np.array(
        [
            parse_label(value, source, f"{location}, column {model!r}")
            for value, location in zip(column, where, strict=True)
        ],
        dtype=np.float64,
    )


def _output_tokens(column: pd.Series) -> np.ndarray:
    """Estimated output tokens of each reply; NaN where the reply cell is empty."""
    return np.array(
        [math.nan if is_empty(v) else float(estimate_tokens(turns_text(v)[0])) for v in column],
        dtype=np.float64,
    )


def _block(
    frame: pd.DataFrame, models: Sequence[str], suffix: str, parse: _ColumnParser
) -> np.ndarray | None:
    """(N, M) values of the ``<model><suffix>`` columns, NaN for a model without one; None if none has."""
    if not any(m + suffix in frame.columns for m in models):
        return None
    nan_column = np.full(len(frame), math.nan)
    return np.column_stack(
        [parse(frame[m + suffix], m + suffix) if m + suffix in frame.columns else nan_column for m in models]
    )
