"""Pieces every importer shares: safe file reading, label parsing, assembling the dataset."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import pandas as pd

from prefill_router._files import read_text
from prefill_router.data.dataset import RoutingDataset, TargetInfo
from prefill_router.data.prices import PriceTable
from prefill_router.errors import DataError


@dataclass
class ImportResult:
    """What an importer returns: the dataset and the notes for the import summary."""

    dataset: RoutingDataset
    notes: list[str] = field(default_factory=list)


def parse_json(text: str, source: str) -> Any:
    """Parse JSON, naming the line and column of a syntax error (e.g. a truncated file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"malformed JSON ({exc.msg})", source=source, where=f"line {exc.lineno}, column {exc.colno}"
        ) from exc


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file of objects; a bad line raises :class:`DataError` naming it."""
    rows = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON ({exc.msg})", source=str(path), where=f"line {number}") from exc
        if not isinstance(row, dict):
            raise DataError("expected a JSON object", source=str(path), where=f"line {number}")
        rows.append(row)
    return rows


def read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """Read a CSV as strings (no type guessing); malformed files raise :class:`DataError`."""
    text = read_text(path)

    try:
        frame: pd.DataFrame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, **kwargs)
        return frame
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"malformed CSV ({exc})", source=str(path)) from exc


def require_columns(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Raise :class:`DataError` naming the first missing column and the columns present."""
    for column in columns:
        if column not in frame.columns:
            raise DataError(
                f"missing column {column!r}; found {', '.join(map(str, frame.columns))}", source=source
            )


_TRUE = {"true", "1", "1.0", "yes", "correct"}
_FALSE = {"false", "0", "0.0", "no", "wrong", "incorrect"}


def parse_label(value: Any, source: str, where: str) -> float:
    """A correctness cell as a float in [0, 1]; empty = NaN (not evaluated).

    Accepts booleans, "True"/"False" (any case), 0/1 and fractions in [0, 1].
    """
    if value is None:
        return math.nan
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
    else:
        text = str(value).strip()
        if text == "" or text.lower() in {"nan", "none", "null"}:
            return math.nan
        if text.lower() in _TRUE:
            return 1.0
        if text.lower() in _FALSE:
            return 0.0
        try:
            number = float(text)
        except ValueError as exc:
            raise DataError(
                f"label must be true/false or a number in [0, 1], got {text!r}", source=source, where=where
            ) from exc
    if math.isnan(number):
        return math.nan
    if not 0.0 <= number <= 1.0:
        raise DataError(f"label must be in [0, 1], got {number!r}", source=source, where=where)
    return number


def make_targets(
    names: Sequence[str], prices: PriceTable, overrides: dict[str, TargetInfo] | None = None
) -> tuple[TargetInfo, ...]:
    """Target metadata for ``names``: ``overrides`` first, then the price table (may be unpriced)."""
    overrides = overrides or {}
    return tuple(overrides.get(name) or prices.target_info(name) for name in names)


def unpriced_note(targets: Sequence[TargetInfo]) -> list[str]:
    """A summary note listing targets without a price, if any."""
    missing = [t.name for t in targets if not t.has_price]
    if not missing:
        return []
    return [f"no price known for {len(missing)} target(s): {', '.join(missing)} (pass --prices FILE)"]


@overload
def find_file(src: Path, relative: str, *, required: Literal[True]) -> Path: ...
@overload
def find_file(src: Path, relative: str, *, required: bool) -> Path | None: ...
def find_file(src: Path, relative: str, *, required: bool) -> Path | None:
    """Find ``relative`` (a path suffix such as ``gsm8k/gsm8k_responses.csv``) under folder ``src``.

    ``src`` may itself be that file. Raises :class:`DataError` when a required file is missing
    or the suffix matches more than one file.
    """
    if src.is_file() and src.as_posix().endswith(relative):
        return src
    if not src.exists():
        raise DataError("no such file or folder", source=str(src))
    name = relative.rsplit("/", 1)[-1]
    matches = sorted(
        p for p in src.rglob(name) if p.as_posix().endswith("/" + relative) or p.name == relative
    )
    if len(matches) > 1:
        raise DataError(
            f"found {len(matches)} files matching {relative!r}; point at one folder", source=str(src)
        )
    if not matches:
        if required:
            raise DataError(f"expected a file {relative!r} inside this folder", source=str(src))
        return None
    return matches[0]


def nonnegative_numbers(column: pd.Series, name: str, where: Sequence[str], source: str) -> np.ndarray:
    """Finite numbers >= 0 from a text column, NaN where empty; ``where[i]`` locates row i in errors."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    filled = (column.astype(str).str.strip() != "").to_numpy(dtype=bool) & column.notna().to_numpy(dtype=bool)
    bad = (filled & ~np.isfinite(values)) | (values < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{name} must be a finite number >= 0 or empty, got {column.iloc[i]!r}",
            source=source,
            where=f"{where[i]}, column {name!r}",
        )
    return values
