"""Pieces every importer shares: safe file reading, label parsing, assembling the dataset."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, overload

import numpy as np
import pandas as pd

from prefill_router.data.costs import DEFAULT_OUTPUT_TOKENS, input_tokens
from prefill_router.data.dataset import RoutingDataset, TargetInfo, target_name_problem
from prefill_router.data.prices import PriceTable, fit_prices
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
    """Read a JSON-lines file of objects, line by line (never the whole file as one string).

    Raises:
        DataError: a missing file, invalid UTF-8 or a bad line (the message names the line).
    """
    rows = []
    for number, line in numbered_lines(path):
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


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each line of a UTF-8 file, read as a stream.

    Raises:
        DataError: a missing file, a folder, or invalid UTF-8 (naming the line and byte offset).
    """
    offset = 0
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"invalid UTF-8 at byte {offset + exc.start}; save the file as UTF-8",
                    source=str(path),
                    where=f"line {number}",
                ) from exc
            offset += len(raw)


def read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """Read a CSV as strings (no type guessing); malformed files raise :class:`DataError`.

    pandas reads the file itself, in blocks, so the file's text is never held as one string
    beside the table (a large file costs about the table, not three copies of it).
    """
    with _open_binary(path):
        pass  # the same clear errors as every other reader for a missing file or a folder
    try:
        frame: pd.DataFrame = pd.read_csv(
            path, dtype=str, keep_default_na=False, encoding="utf-8", encoding_errors="strict", **kwargs
        )
        return frame
    except UnicodeDecodeError:
        for _ in numbered_lines(path):  # find the line, for the message; raises DataError
            pass
        raise DataError("invalid UTF-8; save the file as UTF-8", source=str(path)) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"malformed CSV ({exc})", source=str(path)) from exc


def _open_binary(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError as exc:
        raise DataError("no such file", source=str(path)) from exc
    except IsADirectoryError as exc:
        raise DataError("expected a file, found a directory", source=str(path)) from exc


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
    """Target metadata for ``names``: ``overrides`` first, then the price table (may be unpriced).

    Raises:
        DataError: a name that :func:`target_name_problem` refuses (e.g. one holding CR/LF).
    """
    overrides = overrides or {}
    for name in names:
        problem = target_name_problem(name)
        if problem is not None:
            raise DataError(f"{problem}; rename the model in the source")
    return tuple(overrides.get(name) or prices.target_info(name) for name in names)


def price_from_costs(
    targets: Sequence[TargetInfo],
    prompts: Sequence[str],
    costs_usd: np.ndarray | None,
    output_tokens: np.ndarray | None,
) -> tuple[tuple[TargetInfo, ...], list[str]]:
    """Targets without a price, with prices fitted from their observed costs where they have any.

    A priced target (the price table's, a user's price file) keeps its price. Each fitted price
    records its source ("fitted from N observed costs (residual x%)", see
    :func:`~prefill_router.data.prices.fit_prices`); the note lists them for the import summary.

    Args:
        targets: the targets in column order. prompts: (N,) prompt texts (their estimated tokens
            are the input lengths). costs_usd, output_tokens: (N, M) observed values or None.
    """
    if costs_usd is None or all(t.has_price for t in targets):
        return tuple(targets), []
    tokens_in = input_tokens(prompts)
    out: list[TargetInfo] = []
    fitted: list[str] = []
    for j, target in enumerate(targets):
        lengths = None if output_tokens is None else output_tokens[:, j]
        fit = None
        if not target.has_price:
            fit = fit_prices(tokens_in, lengths, costs_usd[:, j], default_output_tokens=DEFAULT_OUTPUT_TOKENS)
        if fit is None:
            out.append(target)
            continue
        out.append(TargetInfo(target.name, fit.input_usd_per_mtok, fit.output_usd_per_mtok, fit.source))
        fitted.append(
            f"{target.name} {fit.input_usd_per_mtok:.3g}/{fit.output_usd_per_mtok:.3g} "
            f"(residual {fit.residual:.1%}{', blended' if fit.blended else ''})"
        )
    notes = []
    if fitted:
        notes.append(
            f"prices fitted from the observed costs for {len(fitted)} target(s), USD per M tokens in/out: "
            f"{'; '.join(fitted)} (a --prices file overrides them)"
        )
    return tuple(out), notes


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
