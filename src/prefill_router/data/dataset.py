"""`RoutingDataset`: prompts x targets, with labels, optional observed costs and output lengths.

On disk a dataset is one Parquet file (DESIGN §3), readable by pandas, polars and DuckDB:

========================  =========  ===================================================
column                    type       meaning
========================  =========  ===================================================
``prompt_id``             string     unique id
``prompt``                string     the user text as the target model saw it
``task``                  string     benchmark or category (nullable)
``split``                 string     train / test / ... (nullable)
``label:<target>``        float64    1 correct, 0 wrong, fraction = graded, null = not evaluated
``cost_usd:<target>``     float64    observed cost in USD (optional block, null = unknown)
``output_tokens:<target>`` float64   observed output length in tokens (optional block)
========================  =========  ===================================================

The per-target metadata (prices and where they came from) and the provenance live as JSON under
the key ``prefill_router`` of the file's key-value metadata.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import ArrayLike

from prefill_router._files import atomic_path
from prefill_router.errors import DataError, UnknownTargetError

FORMAT_NAME = "prefill-router/routing-dataset"
FORMAT_VERSION = 1
METADATA_KEY = b"prefill_router"
BUNDLED_NAME = "bundled"
_BUNDLED_FILE = "llmrouter.parquet"

#: A label counts as correct at or above this: graded labels for AUC, class counts and agreement
#: zones. The one definition; training, probes, baselines, metrics and summaries import it.
LABEL_THRESHOLD = 0.5

LABEL_PREFIX = "label:"
COST_PREFIX = "cost_usd:"
OUTPUT_TOKENS_PREFIX = "output_tokens:"
BASE_COLUMNS = ("prompt_id", "prompt", "task", "split")


#: What a target name may be: it travels in HTTP headers (``x-router-target``), log lines and
#: file names, so CR/LF, other control characters, spaces and non-ASCII letters are refused.
TARGET_NAME = re.compile(r"[\w.:/@+-]{1,128}", re.ASCII)


def target_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a target name, in words, or ``None`` when it can.

    Example:
        >>> target_name_problem("meta/llama-2-70b-chat") is None
        True
        >>> target_name_problem("a b")
        "target name 'a b' is not allowed: use 1-128 ASCII letters, digits and _ . : / @ + -"
    """
    if isinstance(name, str) and TARGET_NAME.fullmatch(name):
        return None
    shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:77] + "...")
    return f"target name {shown} is not allowed: use 1-128 ASCII letters, digits and _ . : / @ + -"


@dataclass(frozen=True)
class TargetInfo:
    """A target model of the pool: its name and price in USD per million tokens.

    ``price_source`` says where the price came from; ``price_derived`` marks a price that no
    public list gives (estimated from the parameter count).
    """

    name: str
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    price_source: str | None = None
    price_derived: bool = False

    @property
    def has_price(self) -> bool:
        """Whether both prices are known."""
        return self.input_usd_per_mtok is not None and self.output_usd_per_mtok is not None

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the Parquet metadata."""
        return {
            "name": self.name,
            "input_usd_per_mtok": self.input_usd_per_mtok,
            "output_usd_per_mtok": self.output_usd_per_mtok,
            "price_source": self.price_source,
            "price_derived": self.price_derived,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TargetInfo:
        """Inverse of :meth:`to_json`."""
        return cls(
            name=str(obj["name"]),
            input_usd_per_mtok=_optional_float(obj.get("input_usd_per_mtok")),
            output_usd_per_mtok=_optional_float(obj.get("output_usd_per_mtok")),
            price_source=obj.get("price_source"),
            price_derived=bool(obj.get("price_derived", False)),
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, eq=False, init=False)
class RoutingDataset:
    """One row per prompt, one column block per target (DESIGN §3).

    Attributes:
        prompt_ids: (N,) unique strings.
        prompts: (N,) non-empty strings.
        tasks: (N,) strings or None.
        splits: (N,) strings or None.
        labels: (N, M) float64 in [0, 1]; NaN = not evaluated.
        targets: M target descriptions, in column order.
        costs_usd: (N, M) observed cost in USD, NaN = unknown; None when the source has none.
        output_tokens: (N, M) observed output lengths, NaN = unknown; None when the source has none.
        provenance: free-form JSON-able description of where the data came from.

    Construction validates every field and raises :class:`DataError` naming what is wrong.

    Example::

        ds = RoutingDataset.load("bundled").select(split="train", targets=["gemma-2-9b-it"])
    """

    prompt_ids: np.ndarray
    prompts: np.ndarray
    tasks: np.ndarray
    splits: np.ndarray
    labels: np.ndarray
    targets: tuple[TargetInfo, ...]
    costs_usd: np.ndarray | None
    output_tokens: np.ndarray | None
    provenance: dict[str, Any]

    def __init__(
        self,
        prompt_ids: Sequence[str] | np.ndarray,
        prompts: Sequence[str] | np.ndarray,
        tasks: Sequence[str | None] | np.ndarray,
        splits: Sequence[str | None] | np.ndarray,
        labels: ArrayLike,
        targets: Sequence[TargetInfo],
        costs_usd: ArrayLike | None = None,
        output_tokens: ArrayLike | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "prompt_ids": _object_array(prompt_ids),
            "prompts": _object_array(prompts),
            "tasks": _object_array(tasks),
            "splits": _object_array(splits),
            "labels": np.asarray(labels, dtype=np.float64),
            "targets": tuple(targets),
            "costs_usd": None if costs_usd is None else np.asarray(costs_usd, dtype=np.float64),
            "output_tokens": None if output_tokens is None else np.asarray(output_tokens, dtype=np.float64),
            "provenance": dict(provenance or {}),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen dataclass: set once, here
        _validate(self, source=self.provenance.get("path"))

    # ------------------------------------------------------------------ views
    @property
    def n_prompts(self) -> int:
        """Number of prompts (rows)."""
        return len(self.prompt_ids)

    @property
    def target_names(self) -> list[str]:
        """Target names in column order."""
        return [t.name for t in self.targets]

    def target(self, name: str) -> TargetInfo:
        """The :class:`TargetInfo` called ``name``; raises :class:`UnknownTargetError`."""
        return self.targets[self.target_index(name)]

    def target_index(self, name: str) -> int:
        """Column index of target ``name``; raises :class:`UnknownTargetError`."""
        names = self.target_names
        if name not in names:
            raise UnknownTargetError(name, names, source=self.provenance.get("path"))
        return names.index(name)

    def split_names(self) -> list[str]:
        """The distinct non-null split names, sorted."""
        return sorted({s for s in self.splits if s is not None})

    def task_names(self) -> list[str]:
        """The distinct non-null task names, sorted."""
        return sorted({t for t in self.tasks if t is not None})

    # -------------------------------------------------------------- selection
    def select(
        self,
        *,
        split: str | Sequence[str] | None = None,
        task: str | Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
    ) -> RoutingDataset:
        """A new dataset restricted to some splits, tasks and targets (None = keep all).

        Raises:
            DataError: a split or task name that no row has.
            UnknownTargetError: a target name that the dataset does not hold.
        """
        rows = np.ones(self.n_prompts, dtype=bool)
        if split is not None:
            rows &= self._rows_matching(self.splits, split, "split", self.split_names())
        if task is not None:
            rows &= self._rows_matching(self.tasks, task, "task", self.task_names())
        columns = list(range(len(self.targets)))
        if targets is not None:
            columns = [self.target_index(name) for name in targets]
        return self.take(np.flatnonzero(rows), columns)

    def take(self, rows: Sequence[int] | np.ndarray, columns: Sequence[int] | None = None) -> RoutingDataset:
        """A new dataset holding the given row indices (and target column indices)."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.arange(len(self.targets)) if columns is None else np.asarray(columns, dtype=np.int64)

        def cut(matrix: np.ndarray | None) -> np.ndarray | None:
            return None if matrix is None else matrix[np.ix_(rows, cols)]

        return replace(
            self,
            prompt_ids=self.prompt_ids[rows],
            prompts=self.prompts[rows],
            tasks=self.tasks[rows],
            splits=self.splits[rows],
            labels=self.labels[np.ix_(rows, cols)],
            targets=tuple(self.targets[c] for c in cols),
            costs_usd=cut(self.costs_usd),
            output_tokens=cut(self.output_tokens),
        )

    def with_targets(self, targets: Sequence[TargetInfo]) -> RoutingDataset:
        """A copy with new target metadata (same names, same order), e.g. after repricing."""
        if [t.name for t in targets] != self.target_names:
            raise DataError("new target metadata must keep the same names in the same order")
        return replace(self, targets=tuple(targets))

    def _rows_matching(
        self, column: np.ndarray, wanted: str | Sequence[str], what: str, known: list[str]
    ) -> np.ndarray:
        wanted_list = [wanted] if isinstance(wanted, str) else list(wanted)
        unknown = [w for w in wanted_list if w not in known]
        if unknown:
            raise DataError(
                f"no row has {what} {unknown[0]!r}; known {what}s: {', '.join(known) or '(none)'}",
                source=self.provenance.get("path"),
            )
        return np.isin(column, np.asarray(wanted_list, dtype=object))

    # ---------------------------------------------------------------- storage
    def to_arrow(self) -> pa.Table:
        """The Parquet table, with targets and provenance in the schema metadata."""
        columns: dict[str, pa.Array] = {
            "prompt_id": pa.array(self.prompt_ids.tolist(), type=pa.string()),
            "prompt": pa.array(self.prompts.tolist(), type=pa.string()),
            "task": pa.array(self.tasks.tolist(), type=pa.string()),
            "split": pa.array(self.splits.tolist(), type=pa.string()),
        }
        blocks = [(LABEL_PREFIX, self.labels), (COST_PREFIX, self.costs_usd)]
        blocks.append((OUTPUT_TOKENS_PREFIX, self.output_tokens))
        for prefix, matrix in blocks:
            if matrix is None:
                continue
            for j, target in enumerate(self.targets):
                column = matrix[:, j]
                columns[prefix + target.name] = pa.array(column, mask=np.isnan(column), type=pa.float64())
        metadata = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "targets": [t.to_json() for t in self.targets],
            "provenance": self.provenance,
        }
        table = pa.table(columns)
        return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})

    def save(self, path: str | Path) -> Path:
        """Write the dataset as one Parquet file, atomically; returns the path."""
        path = Path(path)
        with atomic_path(path) as tmp:
            pq.write_table(self.to_arrow(), tmp, compression="zstd")
        return path

    @classmethod
    def load(cls, path: str | Path) -> RoutingDataset:
        """Read a dataset written by :meth:`save`; ``"bundled"`` loads the bundled default.

        Raises:
            DataError: the file is missing, truncated, not a routing dataset, or holds bad values.
        """
        resolved = resolve_dataset_path(path)
        source = str(path)
        try:
            table = pq.read_table(resolved)
        except FileNotFoundError as exc:
            raise DataError("no such file", source=source) from exc
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"not a readable Parquet file ({exc})", source=source) from exc
        return cls.from_arrow(table, source=source)

    @classmethod
    def from_arrow(cls, table: pa.Table, *, source: str = "<table>") -> RoutingDataset:
        """Build a dataset from a table in the on-disk layout; validates it."""
        meta = _read_metadata(table, source)
        targets = tuple(TargetInfo.from_json(t) for t in meta["targets"])
        names = [t.name for t in targets]
        for column in BASE_COLUMNS:
            if column not in table.column_names:
                raise DataError(f"missing column {column!r}", source=source)

        def strings(column: str) -> np.ndarray:
            return _object_array(table.column(column).to_pylist())

        def block(prefix: str, required: bool) -> np.ndarray | None:
            present = [n for n in names if prefix + n in table.column_names]
            if not present and not required:
                return None
            missing = [n for n in names if prefix + n not in table.column_names]
            if missing:
                raise DataError(f"missing column {prefix + missing[0]!r}", source=source)
            return (
                np.column_stack([_float_column(table, prefix + n, source) for n in names])
                if names
                else np.zeros((table.num_rows, 0))
            )

        labels = block(LABEL_PREFIX, required=True)
        assert labels is not None
        provenance = {**meta.get("provenance", {}), "path": source}
        return cls(
            prompt_ids=strings("prompt_id"),
            prompts=strings("prompt"),
            tasks=strings("task"),
            splits=strings("split"),
            labels=labels,
            targets=targets,
            costs_usd=block(COST_PREFIX, required=False),
            output_tokens=block(OUTPUT_TOKENS_PREFIX, required=False),
            provenance=provenance,
        )

    def equals(self, other: RoutingDataset) -> bool:
        """Exact equality of every field (NaN equals NaN); provenance ``path`` is ignored."""

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))

        def strip(p: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in p.items() if k != "path"}

        return (
            self.prompt_ids.tolist() == other.prompt_ids.tolist()
            and self.prompts.tolist() == other.prompts.tolist()
            and self.tasks.tolist() == other.tasks.tolist()
            and self.splits.tolist() == other.splits.tolist()
            and self.targets == other.targets
            and same(self.labels, other.labels)
            and same(self.costs_usd, other.costs_usd)
            and same(self.output_tokens, other.output_tokens)
            and strip(self.provenance) == strip(other.provenance)
        )


# ---------------------------------------------------------------------- helpers
def resolve_dataset_path(path: str | Path) -> Path:
    """The file behind a dataset argument: ``"bundled"`` names the dataset shipped in the package."""
    if str(path) == BUNDLED_NAME:
        return Path(str(resources.files("prefill_router.data").joinpath("resources", _BUNDLED_FILE)))
    return Path(path)


def _object_array(values: Iterable[Any]) -> np.ndarray:
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _read_metadata(table: pa.Table, source: str) -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DataError(
            "not a prefill-router routing dataset (no 'prefill_router' metadata); "
            "convert it with `prefill-router data import`",
            source=source,
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"metadata is not valid JSON ({exc})", source=source) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DataError(f"metadata 'format' must be {FORMAT_NAME!r}", source=source)
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(
            f"dataset format version {version!r} is newer than this prefill-router reads "
            f"({FORMAT_VERSION}); upgrade prefill-router",
            source=source,
        )
    if not isinstance(meta.get("targets"), list) or not all(
        isinstance(t, dict) and "name" in t for t in meta["targets"]
    ):
        raise DataError("metadata 'targets' must be a list of objects with a 'name'", source=source)
    for target in meta["targets"]:
        problem = target_name_problem(target["name"])
        if problem:
            raise DataError(f"metadata: {problem}", source=source)
    return meta


def _float_column(table: pa.Table, name: str, source: str) -> np.ndarray:
    column = table.column(name)
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise DataError(f"column {name!r} must be numeric, got {column.type}", source=source)
    values: np.ndarray = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    return values


def _validate(ds: RoutingDataset, source: str | None) -> None:
    """Check every field of a dataset; raise :class:`DataError` naming the first problem."""
    n, names = len(ds.prompt_ids), [t.name for t in ds.targets]
    for attr in ("prompts", "tasks", "splits"):
        if len(getattr(ds, attr)) != n:
            raise DataError(f"{attr} has {len(getattr(ds, attr))} entries, prompt_ids has {n}", source=source)
    _check_unique(names, "target name", source)
    if any(not isinstance(name, str) or not name for name in names):
        raise DataError("every target needs a non-empty string name", source=source)
    for i, pid in enumerate(ds.prompt_ids):
        if not isinstance(pid, str) or not pid:
            raise DataError("prompt_id must be a non-empty string", source=source, where=f"row {i}")
    _check_unique(ds.prompt_ids.tolist(), "prompt_id", source)
    for i, prompt in enumerate(ds.prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(
                "empty prompt; every row needs prompt text",
                source=source,
                where=f"row {i} ({ds.prompt_ids[i]})",
            )
    for attr in ("tasks", "splits"):
        for i, value in enumerate(getattr(ds, attr)):
            if value is not None and not isinstance(value, str):
                raise DataError(f"{attr[:-1]} must be a string or null", source=source, where=f"row {i}")
    _check_matrix(ds.labels, "label", ds, source, upper=1.0)
    if ds.costs_usd is not None:
        _check_matrix(ds.costs_usd, "cost_usd", ds, source, upper=math.inf)
    if ds.output_tokens is not None:
        _check_matrix(ds.output_tokens, "output_tokens", ds, source, upper=math.inf)
    for t in ds.targets:
        for price in (t.input_usd_per_mtok, t.output_usd_per_mtok):
            if price is not None and not (math.isfinite(price) and price >= 0):
                raise DataError(
                    f"price of target {t.name!r} must be a finite number >= 0, got {price}", source=source
                )


def _check_unique(values: list[Any], what: str, source: str | None) -> None:
    seen: dict[Any, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            raise DataError(f"duplicate {what} {value!r} (rows {seen[value]} and {i})", source=source)
        seen[value] = i


def _check_matrix(
    matrix: np.ndarray, what: str, ds: RoutingDataset, source: str | None, upper: float
) -> None:
    expected = (len(ds.prompt_ids), len(ds.targets))
    if matrix.shape != expected:
        raise DataError(f"{what} matrix has shape {matrix.shape}, expected {expected}", source=source)
    finite = np.isnan(matrix) | (np.isfinite(matrix) & (matrix >= 0) & (matrix <= upper))
    if not finite.all():
        i, j = map(int, np.argwhere(~finite)[0])
        expected_range = "in [0, 1]" if upper == 1.0 else "finite and >= 0"
        raise DataError(
            f"{what} must be {expected_range} or null, got {matrix[i, j]!r}",
            source=source,
            where=f"row {i} ({ds.prompt_ids[i]}), column {what}:{ds.targets[j].name}",
        )
