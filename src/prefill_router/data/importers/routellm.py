"""Importer for RouteLLM's MMLU and GSM8K response files (github lm-sys/RouteLLM, Apache-2.0).

Reads the 57 ``mmlu/responses/mmlu_<subject>.csv`` files and ``gsm8k/gsm8k_responses.csv``
under a folder: one prompt per row, one "True"/"False" correctness column per model, and for
GSM8K each model's response (whose length gives the output tokens). Rows whose prompt upstream
lists in ``contaminated_prompts.jsonl`` are dropped unless ``keep_contaminated``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prefill_router.data.dataset import RoutingDataset
from prefill_router.data.importers._common import (
    ImportResult,
    find_file,
    make_targets,
    parse_label,
    read_csv,
    read_jsonl,
    require_columns,
    unpriced_note,
)
from prefill_router.data.prices import PriceTable
from prefill_router.data.splits import assign_splits
from prefill_router.data.tokens import estimate_tokens
from prefill_router.errors import DataError

_RESPONSE_SUFFIX = "_response"


def import_routellm(
    src: Path, *, prices: PriceTable, split_seed: int = 0, keep_contaminated: bool = False
) -> ImportResult:
    """Import RouteLLM's ``evals`` tree (MMLU responses folder + GSM8K responses CSV) under ``src``.

    Raises:
        DataError: no response file found, a malformed CSV, a missing column, files that name
            different models, or a correctness cell that is not True/False.
    """
    notes: list[str] = []
    mmlu_files = sorted(src.rglob("mmlu_*.csv")) if src.is_dir() else []
    gsm8k_file = find_file(src, "gsm8k/gsm8k_responses.csv", required=False)
    if not mmlu_files and gsm8k_file is None:
        raise DataError(
            "expected mmlu/responses/mmlu_<subject>.csv files or gsm8k/gsm8k_responses.csv", source=str(src)
        )
    frames = [_read_responses(path, task=path.stem) for path in mmlu_files]
    if gsm8k_file is not None:
        frames.append(_read_responses(gsm8k_file, task="gsm8k"))
    models = _shared_models(frames)
    frame = pd.concat(frames, ignore_index=True)
    notes.append(
        f"{len(mmlu_files)} MMLU subject files, {'1' if gsm8k_file else 'no'} GSM8K file, {len(frame)} rows"
    )
    if not keep_contaminated:
        frame, dropped = _drop_contaminated(frame, src)
        notes.append(
            f"dropped {dropped} rows whose prompt upstream lists as contaminated (keep: --keep-contaminated)"
        )
    labels = np.column_stack([frame[f"label:{m}"].to_numpy(dtype=np.float64) for m in models])
    output_tokens = np.column_stack([frame[f"tokens:{m}"].to_numpy(dtype=np.float64) for m in models])
    duplicated = int(frame["prompt"].duplicated(keep=False).sum())
    if duplicated:
        notes.append(
            f"{duplicated} rows share their prompt text with another row (kept; grouped in the split)"
        )
    targets = make_targets(models, prices)
    notes += unpriced_note(targets)
    splits = assign_splits(frame["prompt"].tolist(), frame["task"].tolist(), seed=split_seed)
    notes.append(
        f"no split in the source: assigned a grouped, task-stratified 80/20 split (seed {split_seed})"
    )
    dataset = RoutingDataset(
        prompt_ids=frame["prompt_id"].tolist(),
        prompts=frame["prompt"].tolist(),
        tasks=frame["task"].tolist(),
        splits=splits,
        labels=labels,
        targets=targets,
        output_tokens=output_tokens,
        provenance={
            "source": "routellm",
            "files": [str(p.relative_to(src)) for p in mmlu_files]
            + ([str(gsm8k_file.relative_to(src))] if gsm8k_file else []),
            "notes": notes,
            "license": "Apache-2.0 (lm-sys/RouteLLM)",
        },
    )
    return ImportResult(dataset, notes)


def _read_responses(path: Path, task: str) -> pd.DataFrame:
    """One file as columns prompt_id, prompt, task, label:<model>, tokens:<model>."""
    raw = read_csv(path, skipinitialspace=True)
    raw.columns = [str(c).strip() for c in raw.columns]
    require_columns(raw, ["prompt"], str(path))
    models = [c for c in raw.columns if c != "prompt" and not c.endswith(_RESPONSE_SUFFIX)]
    if not models:
        raise DataError("no model correctness column besides 'prompt'", source=str(path))
    out = pd.DataFrame(
        {"prompt_id": [f"{task}-{i:05d}" for i in range(len(raw))], "prompt": raw["prompt"], "task": task}
    )
    for model in models:
        out[f"label:{model}"] = [
            parse_label(v, str(path), f"line {i + 2}, column {model!r}") for i, v in enumerate(raw[model])
        ]
        response = raw.get(model + _RESPONSE_SUFFIX)
        out[f"tokens:{model}"] = np.nan if response is None else [float(estimate_tokens(r)) for r in response]
    out.attrs["models"] = models
    out.attrs["source"] = str(path)
    return out


def _shared_models(frames: list[pd.DataFrame]) -> list[str]:
    models: list[str] = frames[0].attrs["models"]
    for frame in frames[1:]:
        if frame.attrs["models"] != models:
            raise DataError(
                f"models {frame.attrs['models']} differ from {models} in {frames[0].attrs['source']}",
                source=frame.attrs["source"],
            )
    return models


def _drop_contaminated(frame: pd.DataFrame, src: Path) -> tuple[pd.DataFrame, int]:
    """Drop rows whose prompt is an ``eval_prompt`` of the benchmark's contaminated_prompts.jsonl."""
    keep = np.ones(len(frame), dtype=bool)
    for benchmark, is_row in (("mmlu", frame["task"] != "gsm8k"), ("gsm8k", frame["task"] == "gsm8k")):
        path = (
            find_file(src, f"{benchmark}/contaminated_prompts.jsonl", required=False)
            if src.is_dir()
            else None
        )
        if path is None:
            continue
        contaminated = {row.get("eval_prompt") for row in read_jsonl(path)}
        keep &= ~(is_row.to_numpy() & frame["prompt"].isin(contaminated).to_numpy())
    return frame[keep].reset_index(drop=True), int((~keep).sum())
