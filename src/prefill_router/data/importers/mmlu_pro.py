"""Importer for MMLU-Pro's published model outputs (github TIGER-AI-Lab/MMLU-Pro, Apache-2.0).

Reads every ``model_outputs_<model>_5shots.zip`` of a folder (each holds one JSON array of
question records). A model's label for a question is ``pred == answer`` using that file's own
answer key (a null pred counts as wrong); questions a model lacks are NaN. The prompt is the
question followed by its lettered options. Quirks of the upstream files (stray non-record entries,
answer keys and texts that drift between runs, duplicated questions) are handled and reported.
"""

from __future__ import annotations

import re
import string
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefill_router._files import decode_utf8
from prefill_router.data.dataset import RoutingDataset
from prefill_router.data.importers._common import (
    ImportResult,
    make_targets,
    parse_json,
    unpriced_note,
)
from prefill_router.data.prices import PriceTable
from prefill_router.data.splits import assign_splits, normalise_prompt
from prefill_router.data.tokens import estimate_tokens
from prefill_router.errors import DataError

_ZIP_NAME = re.compile(r"model_outputs_(?P<model>.+)_5shots\.zip$")
_LETTERS = string.ascii_uppercase
#: The most bytes one archive's JSON may hold once decompressed (upstream's largest is ~23 MB): a
#: zip bomb (a small archive that inflates to gigabytes) is refused instead of filling memory.
MAX_MEMBER_BYTES = 512 * 1024 * 1024


@dataclass
class _ModelFile:
    """The parsed content of one model's archive."""

    model: str
    correct: dict[int, float] = field(default_factory=dict)
    output_tokens: dict[int, float] = field(default_factory=dict)
    answers: dict[int, str] = field(default_factory=dict)
    texts: dict[int, tuple[str, tuple[str, ...], str]] = field(default_factory=dict)
    stray: int = 0
    null_pred: int = 0
    empty_output: int = 0


def import_mmlu_pro(
    src: Path,
    *,
    prices: PriceTable,
    split_seed: int = 0,
    progress: bool = False,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> ImportResult:
    """Import a folder of MMLU-Pro ``eval_results`` zips.

    ``max_member_bytes`` caps the decompressed size of each archive's JSON (see
    :data:`MAX_MEMBER_BYTES`).

    Raises:
        DataError: no archive found, an unreadable, truncated or oversized archive, malformed
            JSON, or a record without the expected fields (or with more than 26 options).
    """
    archives = _find_archives(src)
    iterator: Any = archives
    if progress:
        from rich.console import Console
        from rich.progress import track

        iterator = track(
            archives, description="reading MMLU-Pro archives", console=Console(stderr=True), transient=True
        )
    files = [_read_archive(path, model, max_member_bytes) for model, path in iterator]
    notes: list[str] = []
    qids = sorted(set().union(*(f.correct for f in files)))
    prompts, tasks, text_drift = _canonical_prompts(files, qids)
    names = [f.model for f in files]
    labels = np.full((len(qids), len(files)), np.nan)
    out_tokens = np.full_like(labels, np.nan)
    row_of = {qid: i for i, qid in enumerate(qids)}
    for j, f in enumerate(files):
        rows = np.array([row_of[q] for q in f.correct], dtype=np.int64)
        labels[rows, j] = list(f.correct.values())
        out_tokens[np.array([row_of[q] for q in f.output_tokens], dtype=np.int64), j] = list(
            f.output_tokens.values()
        )
    notes += _quirk_notes(files, qids, text_drift, prompts)
    targets = make_targets(names, prices)
    notes += unpriced_note(targets)
    splits = assign_splits(prompts, tasks, seed=split_seed)
    notes.append(
        f"no split in the source: assigned a grouped, task-stratified 80/20 split (seed {split_seed})"
    )
    dataset = RoutingDataset(
        prompt_ids=[f"mmlu-pro-{q}" for q in qids],
        prompts=prompts,
        tasks=tasks,
        splits=splits,
        labels=labels,
        targets=targets,
        output_tokens=out_tokens,
        provenance={
            "source": "mmlu-pro",
            "files": [p.name for _, p in archives],
            "notes": notes,
            "license": "Apache-2.0 (TIGER-AI-Lab/MMLU-Pro)",
        },
    )
    return ImportResult(dataset, notes)


def format_prompt(question: str, options: list[str] | tuple[str, ...]) -> str:
    """The question followed by its options lettered A, B, C, ... one per line.

    Raises:
        DataError: more than 26 options (there is no letter for the 27th).
    """
    if len(options) > len(_LETTERS):
        raise DataError(f"{len(options)} options; at most {len(_LETTERS)} can be lettered A-Z")
    lines = [question.strip(), ""] + [f"{_LETTERS[k]}. {opt}" for k, opt in enumerate(options)]
    return "\n".join(lines)


def _find_archives(src: Path) -> list[tuple[str, Path]]:
    if not src.is_dir():
        raise DataError("expected the folder of model_outputs_<model>_5shots.zip archives", source=str(src))
    found = []
    for path in sorted(src.rglob("*.zip")):
        match = _ZIP_NAME.search(path.name)
        if match:
            found.append((match["model"], path))
    if not found:
        raise DataError("no model_outputs_<model>_5shots.zip archive in this folder", source=str(src))
    models = [m for m, _ in found]
    duplicated = [m for m, c in Counter(models).items() if c > 1]
    if duplicated:
        raise DataError(f"two archives for model {duplicated[0]!r}; keep one", source=str(src))
    return found


def _read_archive(path: Path, model: str, max_bytes: int = MAX_MEMBER_BYTES) -> _ModelFile:
    """Parse one archive into labels, output lengths, answer keys and texts per question id."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".json")]
            if len(members) != 1:
                raise DataError(f"expected one .json inside, found {len(members)}", source=str(path))
            raw = _read_member(archive, members[0], max_bytes, str(path))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as exc:
        raise DataError(f"not a readable zip archive ({exc})", source=str(path)) from exc
    source = f"{path}:{members[0].filename}"
    records = parse_json(decode_utf8(raw, source), source)
    if not isinstance(records, list):
        raise DataError("expected a JSON array of question records", source=source)
    parsed = _ModelFile(model)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            parsed.stray += 1  # upstream mixes category names and totals into some arrays
            continue
        _add_record(parsed, record, source, f"item {i}")
    return parsed


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int, source: str) -> bytes:
    """The member's bytes, refusing more than ``max_bytes`` whatever its header claims."""
    too_big = (
        f"{info.filename} inflates to more than {max_bytes:,} bytes (a zip bomb, or not an MMLU-Pro "
        "archive); nothing was read past the limit"
    )
    if info.file_size > max_bytes:
        raise DataError(f"{too_big} (its header says {info.file_size:,})", source=source)
    parts, total = [], 0
    with archive.open(info) as member:
        while block := member.read(1 << 20):
            total += len(block)
            if total > max_bytes:
                raise DataError(too_big, source=source)
            parts.append(block)
    return b"".join(parts)


def _add_record(parsed: _ModelFile, record: dict[str, Any], source: str, where: str) -> None:
    try:
        qid = int(record["question_id"])
        question, options, answer = str(record["question"]), record["options"], str(record["answer"])
        category = str(record["category"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"record lacks a valid {exc.args[0] if isinstance(exc, KeyError) else 'field'}; expected "
            "question_id, question, options, answer, category",
            source=source,
            where=where,
        ) from exc
    if not isinstance(options, list) or not options:
        raise DataError("'options' must be a non-empty list", source=source, where=where)
    if len(options) > len(_LETTERS):
        raise DataError(
            f"'options' has {len(options)} entries; a question is lettered A-Z, so at most "
            f"{len(_LETTERS)} (MMLU-Pro has 10)",
            source=source,
            where=where,
        )
    pred = record.get("pred")
    parsed.null_pred += pred is None
    parsed.correct[qid] = float(pred is not None and str(pred) == answer)
    parsed.answers[qid] = answer
    parsed.texts[qid] = (question, tuple(str(o) for o in options), category)
    output = record.get("generated_text", record.get("model_outputs"))
    if isinstance(output, str):
        parsed.empty_output += output.strip() == ""
        parsed.output_tokens[qid] = float(estimate_tokens(output))


def _canonical_prompts(files: list[_ModelFile], qids: list[int]) -> tuple[list[str], list[str], int]:
    """Per question: the most common (question, options, category) across files; and how many drift."""
    prompts, tasks, drift = [], [], 0
    for qid in qids:
        versions = Counter(f.texts[qid] for f in files if qid in f.texts)
        drift += len(versions) > 1
        (question, options, category), _ = versions.most_common(1)[0]
        prompts.append(format_prompt(question, options))
        tasks.append(category)
    return prompts, tasks, drift


def _quirk_notes(files: list[_ModelFile], qids: list[int], text_drift: int, prompts: list[str]) -> list[str]:
    notes = [f"{len(files)} models, {len(qids)} questions; label = the file's own pred == its own answer"]
    common = sum(all(q in f.correct for f in files) for q in qids)
    notes.append(f"{common} questions are answered by every model; missing (question, model) cells are null")
    for f in files:
        if f.stray:
            notes.append(f"{f.model}: skipped {f.stray} stray non-record entries")
        if len(f.correct) < len(qids):
            notes.append(f"{f.model}: lacks {len(qids) - len(f.correct)} questions")
        if f.empty_output:
            notes.append(f"{f.model}: {f.empty_output} empty outputs (0 output tokens)")
    majority = {q: Counter(f.answers[q] for f in files if q in f.answers).most_common(1)[0][0] for q in qids}
    drifted = {f.model: sum(a != majority[q] for q, a in f.answers.items()) for f in files}
    drifted = {m: n for m, n in drifted.items() if n}
    if drifted:
        listed = ", ".join(f"{m} {n}" for m, n in sorted(drifted.items()))
        notes.append(f"answer keys that differ from the majority (each file's own key used): {listed}")
    if text_drift:
        notes.append(f"{text_drift} questions have differing text/options across files (majority text used)")
    null_preds = ", ".join(
        f"{f.model} {f.null_pred / max(len(f.correct), 1):.1%}" for f in files if f.null_pred
    )
    if null_preds:
        notes.append(f"null preds (no answer extracted, counted wrong): {null_preds}")
    texts = Counter(normalise_prompt(p) for p in prompts)
    duplicated = sum(1 for c in texts.values() if c > 1)
    if duplicated:
        notes.append(
            f"{duplicated} prompt texts occur under more than one question id (kept; grouped in the split)"
        )
    notes.append("output tokens estimated from each model's generated text (ceil(UTF-8 bytes / 4))")
    return notes
