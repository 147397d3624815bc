"""Prompt files for offline routing: Parquet, JSON Lines or CSV with a prompt column (one file, or a
folder of shards of one format).

A prompt file holds one prompt per row in a ``prompt`` column (or one named by the user) and,
optionally, an id column (``prompt_id`` or ``id``); without one, prompts are numbered from 0.
The same rules serve the local reader here and Ray Data's readers in :mod:`prefill_router.route_batch`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from prefill_router.errors import DataError

__all__ = [
    "FORMATS",
    "PromptColumns",
    "PromptFile",
    "as_text",
    "check_prompt_file",
    "count_rows",
    "iter_prompt_file",
    "prompt_format",
    "prompt_sources",
    "read_prompt_file",
    "resolve_columns",
]

#: file suffix -> format
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
ID_COLUMNS = ("prompt_id", "id")  # looked for, in this order, when no id column is named


@dataclass(frozen=True)
class PromptColumns:
    """Which column holds the prompt text and which (if any) the prompt id."""

    prompt: str
    prompt_id: str | None


@dataclass(frozen=True)
class PromptFile:
    """The prompts of a file: ids as strings (row numbers when the file has none), texts as read
    (``None`` for a missing value; routing reports those rows instead of failing)."""

    ids: list[str]
    prompts: list[str | None]


def prompt_format(path: str | Path) -> str:
    """``parquet``, ``jsonl`` or ``csv`` from the file suffix.

    Raises:
        DataError: any other suffix (the message lists the accepted ones).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(
            f"unknown prompt file type {suffix or '(no suffix)'!r}; use one of {', '.join(FORMATS)}",
            source=str(path),
        )
    return FORMATS[suffix]


def prompt_sources(path: str | Path) -> tuple[str, list[Path]]:
    """The format and files of a prompt file, or of a folder of shards read in name order.

    Raises:
        DataError: nothing at ``path``, an unknown suffix, a folder with no prompt files or with
            files of several formats.
    """
    path = Path(path)
    if path.is_file():
        return prompt_format(path), [path]
    if not path.is_dir():
        raise DataError("no such file or folder", source=str(path))
    shards = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
    kinds = sorted({FORMATS[p.suffix.lower()] for p in shards})
    if not shards:
        raise DataError(f"the folder holds no prompt files ({', '.join(FORMATS)})", source=str(path))
    if len(kinds) > 1:
        raise DataError(
            f"the folder mixes prompt file formats ({', '.join(kinds)}); keep one", source=str(path)
        )
    return kinds[0], shards


def resolve_columns(
    names: Sequence[str], source: str, prompt_column: str = "prompt", id_column: str | None = None
) -> PromptColumns:
    """Check that the file has the prompt column (and the id column, if one is named).

    Raises:
        DataError: a named column is missing (the message lists the file's columns).
    """
    present = list(names)
    for wanted in [prompt_column, id_column]:
        if wanted is not None and wanted not in present:
            raise DataError(
                f"no column {wanted!r}; the file's columns are {', '.join(map(repr, present)) or 'none'} "
                "(choose others with --prompt-column / --id-column)",
                source=source,
            )
    found_id = id_column or next((name for name in ID_COLUMNS if name in present), None)
    return PromptColumns(prompt_column, found_id)


def read_prompt_file(
    path: str | Path, prompt_column: str = "prompt", id_column: str | None = None
) -> PromptFile:
    """Read a whole prompt file (see :func:`iter_prompt_file` for the checks)."""
    ids: list[str] = []
    prompts: list[str | None] = []
    for batch in iter_prompt_file(path, prompt_column=prompt_column, id_column=id_column):
        ids += batch.ids
        prompts += batch.prompts
    return PromptFile(ids, prompts)


def iter_prompt_file(
    path: str | Path, batch_size: int = 4096, prompt_column: str = "prompt", id_column: str | None = None
) -> Iterator[PromptFile]:
    """Stream a prompt file (or a folder of shards, in name order) in batches of at most
    ``batch_size`` rows, so memory stays flat; row numbers run on across shards.

    Raises:
        DataError: missing file, unknown suffix, unreadable content, missing columns, duplicate ids,
            no rows at all (raised when it is found, so a writer consuming the batches aborts).
    """
    kind, files = prompt_sources(path)
    seen: set[str] = set()
    rows = 0
    for file in files:
        columns: PromptColumns | None = None  # resolved once per file, from its first batch
        for table in _read_batches(file, kind, batch_size):
            columns = columns or resolve_columns(table.column_names, str(file), prompt_column, id_column)
            prompts = [as_text(value) for value in table.column(columns.prompt).to_pylist()]
            if columns.prompt_id is None:
                ids = [str(i) for i in range(rows, rows + table.num_rows)]
            else:
                ids = [str(value) for value in table.column(columns.prompt_id).to_pylist()]
                _check_unique_ids(ids, seen, rows, str(file))
            rows += table.num_rows
            if table.num_rows:
                yield PromptFile(ids, prompts)
    if rows == 0:
        raise DataError("no prompts to route: the input holds no rows", source=str(path))


def check_prompt_file(path: str | Path, prompt_column: str = "prompt", id_column: str | None = None) -> None:
    """Check what can be checked before routing starts: the file (or every shard) exists, has a
    known suffix, can be read, and has the prompt column (and the id column, if one is named).
    Reads one batch of each file; duplicate ids and empty prompts are found while routing.

    Raises:
        DataError: as :func:`iter_prompt_file` would, on its first batch of each file.
    """
    kind, files = prompt_sources(path)
    for file in files:
        batches = _read_batches(file, kind, 1)
        first = next(batches, None)
        batches.close()
        if first is not None:
            resolve_columns(first.column_names, str(file), prompt_column, id_column)


def count_rows(path: str | Path) -> int | None:
    """Rows of a prompt file or folder when that is cheap to know (Parquet metadata, JSON Lines'
    lines); ``None`` for CSV (quoted fields may span lines) or an unreadable file."""
    kind, files = prompt_sources(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet

            return sum(int(pyarrow.parquet.ParquetFile(f).metadata.num_rows) for f in files)
        if kind == "jsonl":
            total = 0
            for file in files:
                with open(file, "rb") as handle:
                    total += sum(1 for line in handle if line.strip())
            return total
    except (OSError, pa.ArrowInvalid):
        return None  # the reader reports the problem
    return None


def _read_batches(path: Path, kind: str, batch_size: int) -> Generator[pa.Table, None, None]:
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    try:
        if kind == "parquet":
            for batch in pyarrow.parquet.ParquetFile(path).iter_batches(batch_size=batch_size):
                yield pa.Table.from_batches([batch])
            return
        if kind == "jsonl":
            reader = pyarrow.json.open_json(path)
        else:
            # CSV: every column read as text, so ids like 007 and prompts like 42 stay as written.
            names = pyarrow.csv.open_csv(path).schema.names
            options = pyarrow.csv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
            reader = pyarrow.csv.open_csv(path, convert_options=options)
        for batch in reader:
            table = pa.Table.from_batches([batch])
            for start in range(0, table.num_rows, batch_size):
                yield table.slice(start, batch_size)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read this {kind} file: {exc}", source=str(path)) from exc


def as_text(value: object) -> str | None:
    """A prompt cell as text: ``None`` stays ``None`` (reported later), numbers become strings."""
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _check_unique_ids(ids: list[str], seen: set[str], first_row: int, source: str) -> None:
    for row, value in enumerate(ids, start=first_row):
        if value in seen:
            raise DataError(f"prompt id {value!r} appears twice (again at row {row})", source=source)
        seen.add(value)
