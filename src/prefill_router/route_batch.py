"""Offline routing of a prompt file: one decision per prompt, locally or on a Ray cluster.

Each batch of prompts is scored by the router, priced, and routed by a vectorised policy that
makes exactly the choice :meth:`Router.route` makes for one prompt (both take a
:class:`~prefill_router.policy.RoutePlan`). A prompt that cannot be
routed (missing, empty, or one the encoder fails on) gets an ``error`` and no target; the other
prompts of its batch are routed as usual. Decisions stream to the output file (Parquet, JSON Lines
or CSV by suffix), which appears atomically when the run completes.

Output columns: ``prompt_id``, ``target``, ``cost_usd`` (the chosen target's estimated cost),
``p_<target>`` for every target, and ``error``. In a CSV file, a text cell that a spreadsheet would
run as a formula (one starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return: ids
and error messages come from the input) is written with a leading ``'`` (OWASP's advice); Parquet
and JSON Lines keep every value exactly.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa

from prefill_router._files import atomic_path
from prefill_router._ray import WorkerPlan
from prefill_router.data.prompt_files import (
    PromptColumns,
    as_text,
    prompt_format,
    prompt_sources,
    resolve_columns,
)
from prefill_router.errors import DataError
from prefill_router.policy import RoutePlan, Router

__all__ = ["DecisionWriter", "decision_schema", "route_prompts", "route_prompts_ray"]

DEFAULT_BATCH_SIZE = 256
_ARTIFACT_FILES = ("router.json", "router.safetensors")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets evaluate (CSV injection)


def decision_schema(targets: Sequence[str]) -> pa.Schema:
    """The columns of a decisions file."""
    return pa.schema(
        [("prompt_id", pa.string()), ("target", pa.string()), ("cost_usd", pa.float64())]
        + [(f"p_{name}", pa.float64()) for name in targets]
        + [("error", pa.string())]
    )


# --- One batch ---------------------------------------------------------------------------------


def route_prompts(
    router: Router, ids: Sequence[str], prompts: Sequence[str | None], choice: RoutePlan
) -> pa.Table:
    """Decisions for one batch of prompts, as a table of :func:`decision_schema`.

    Rows that cannot be routed keep their id, get an ``error`` and nulls elsewhere.
    """
    n, names = len(prompts), list(router.targets)
    errors: list[str | None] = [_prompt_problem(p) for p in prompts]
    p = np.full((n, len(names)), np.nan)
    good = [i for i in range(n) if errors[i] is None]
    texts = [str(prompts[i]) for i in good]
    for i, p_row in zip(good, _probabilities(router, texts, errors, good), strict=True):
        p[i] = p_row
    rows = [i for i in good if errors[i] is None]  # good prompts the encoder did not fail on
    target: list[str | None] = [None] * n
    cost = np.full(n, np.nan)
    if rows:
        c = router.costs([str(prompts[i]) for i in rows])
        columns = choice.choose(p[rows], c, names)
        for k, (row, column) in enumerate(zip(rows, columns.tolist(), strict=True)):
            target[row], cost[row] = names[column], c[k, column]
    arrays = [pa.array(list(ids), pa.string()), pa.array(target, pa.string()), _nullable(cost)]
    arrays += [_nullable(p[:, j]) for j in range(len(names))]
    arrays.append(pa.array(errors, pa.string()))
    return pa.Table.from_arrays(arrays, schema=decision_schema(names))


def _probabilities(
    router: Router, texts: list[str], errors: list[str | None], rows: list[int]
) -> list[np.ndarray]:
    """P for ``texts``; when the batch fails, prompt by prompt, so only the bad ones get an error."""
    if not texts:
        return []
    try:
        return list(router.predict_proba(texts))
    except Exception:  # any failure: find the prompts at fault, route the rest
        out = []
        for row, text in zip(rows, texts, strict=True):
            try:
                out.append(router.predict_proba([text])[0])
            except Exception as exc:  # reported in the row's error column, never raised
                errors[row] = f"{type(exc).__name__}: {exc}"
                out.append(np.full(len(router.targets), np.nan))
        return out


def _prompt_problem(prompt: object) -> str | None:
    if prompt is None:
        return "missing prompt (null)"
    if not isinstance(prompt, str):
        return f"prompt is a {type(prompt).__name__}, not text"
    if not prompt.strip():
        return "empty prompt"
    return None


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.float64(), mask=np.isnan(values))


# --- The output file ---------------------------------------------------------------------------


class DecisionWriter:
    """Streams decision tables to a Parquet, JSON Lines or CSV file that appears atomically on close.

    Example::

        with DecisionWriter("decisions.parquet", router.targets, {"policy": "budget"}) as out:
            out.write(route_prompts(router, ids, prompts, RoutePlan()))
    """

    def __init__(self, path: str | Path, targets: Sequence[str], metadata: dict[str, Any]) -> None:
        self.path = Path(path)
        self.kind = prompt_format(self.path)  # the same three formats as prompt files
        self.schema = decision_schema(targets).with_metadata({"prefill_router": json.dumps(metadata)})
        self.rows = 0
        self.counts: dict[str, int] = {}  # decisions per target, "error" for failed rows
        self._stack = contextlib.ExitStack()
        self._writer: Any = None

    def __enter__(self) -> DecisionWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        if self.kind == "parquet":
            import pyarrow.parquet

            self._writer = pyarrow.parquet.ParquetWriter(tmp, self.schema)
        elif self.kind == "csv":
            import pyarrow.csv

            self._writer = pyarrow.csv.CSVWriter(tmp, self.schema)
        else:
            self._writer = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
        return self

    def write(self, table: pa.Table) -> None:
        """Append one batch of decisions."""
        table = table.cast(self.schema)
        if self.kind == "csv":
            table = _defuse_formulas(table)
        if self.kind == "jsonl":
            for row in table.to_pylist():
                self._writer.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            self._writer.write_table(table)
        self.rows += table.num_rows
        for name in table.column("target").to_pylist():
            key = "error" if name is None else name
            self.counts[key] = self.counts.get(key, 0) + 1

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.kind != "jsonl" and self._writer is not None:
            self._writer.close()  # before the rename that atomic_path makes on a clean exit
        self._stack.__exit__(kind, exc, trace)


def _defuse_formulas(table: pa.Table) -> pa.Table:
    """``table`` with a ``'`` before every text cell a spreadsheet would evaluate as a formula.

    Example:
        >>> _defuse_formulas(pa.table({"id": ["=1+1", "ok", None]})).column("id").to_pylist()
        ["'=1+1", 'ok', None]
    """
    for index, column in enumerate(table.schema):
        if pa.types.is_string(column.type):
            values = [
                "'" + v if isinstance(v, str) and v.startswith(_FORMULA_STARTS) else v
                for v in table.column(index).to_pylist()
            ]
            table = table.set_column(index, column, pa.array(values, pa.string()))
    return table


# --- On Ray ------------------------------------------------------------------------------------


def route_prompts_ray(
    ray: Any,
    router_path: str | Path,
    prompts_path: str | Path,
    choice: RoutePlan,
    plan: WorkerPlan,
    *,
    prompt_column: str = "prompt",
    id_column: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache_dir: str | Path | None = None,
) -> tuple[int | None, Generator[pa.Table, None, None]]:
    """Route a prompt file on Ray: Ray Data reads it, an actor pool (one router each) routes it.

    Returns the number of prompts when the file says so cheaply (Parquet metadata), else ``None``,
    and the decision tables in the file's order (prompts without an id column are numbered here,
    as they stream back, exactly as the local reader numbers them).
    """
    kind, shards = prompt_sources(prompts_path)
    files = _artifact_files(Path(router_path))
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # decisions come back in the file's order
    reader = {"parquet": ray.data.read_parquet, "jsonl": ray.data.read_json, "csv": ray.data.read_csv}[kind]
    # num_cpus=0: reading is I/O; the CPUs are the routers'. Without it, actors holding every CPU
    # would leave the read tasks unscheduled forever.
    options: dict[str, Any] = {"lines": True} if kind == "jsonl" else {}
    dataset = reader([str(shard) for shard in shards], num_cpus=0, **options)  # in name order
    columns = resolve_columns(dataset.columns(), str(prompts_path), prompt_column, id_column)
    total = dataset.count() if kind == "parquet" else None
    cache = None if cache_dir is None else str(cache_dir)
    routed = dataset.map_batches(
        _RouteWorker,
        fn_constructor_args=(files, cache, choice, plan, columns),
        batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.workers),
        num_cpus=plan.cpus, num_gpus=plan.gpus,
    )  # fmt: skip
    return total, _numbered(routed.iter_batches(batch_format="pyarrow", batch_size=None), columns)


def _artifact_files(folder: Path) -> dict[str, bytes]:
    """The artifact's files, sent to every worker (which validates them as Router.load does)."""
    try:
        return {name: (folder / name).read_bytes() for name in _ARTIFACT_FILES}
    except OSError as exc:
        raise DataError(f"not a router artifact: {exc.strerror}: {exc.filename}", source=str(folder)) from exc


def _numbered(batches: Iterator[pa.Table], columns: PromptColumns) -> Generator[pa.Table, None, None]:
    start = 0
    for batch in batches:
        if columns.prompt_id is None:
            ids = pa.array([str(i) for i in range(start, start + batch.num_rows)], pa.string())
            batch = batch.set_column(0, "prompt_id", ids)
        start += batch.num_rows
        yield batch


class _RouteWorker:
    """One Ray actor: loads the router (from the artifact's bytes) and its encoder once."""

    def __init__(
        self, files: dict[str, bytes], cache_dir: str | None, choice: RoutePlan, plan: WorkerPlan,
        columns: PromptColumns,
    ) -> None:  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            for name, data in files.items():
                (Path(folder) / name).write_bytes(data)
            self.router = Router.load(folder, cache_dir=cache_dir)  # validated as any artifact is
        for encoder in self.router.build_encoders(device=plan.device, threads=plan.threads):
            self.router.use_encoder(encoder)
        self.choice = choice
        self.columns = columns

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = [as_text(v) for v in batch.column(self.columns.prompt).to_pylist()]
        if self.columns.prompt_id is None:
            ids = [""] * batch.num_rows  # numbered by the driver, which sees the file's order
        else:
            ids = [str(v) for v in batch.column(self.columns.prompt_id).to_pylist()]
        return route_prompts(self.router, ids, prompts, self.choice)
