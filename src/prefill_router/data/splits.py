"""Leak-free train/test splits: identical prompt texts never sit on both sides (DESIGN §3)."""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Sequence

import numpy as np

_WHITESPACE = re.compile(r"\s+")


def normalise_prompt(text: str) -> str:
    """The key under which two prompts count as the same text.

    NFKC-normalised, case-folded, whitespace collapsed to single spaces and stripped.

    Example::

        >>> normalise_prompt("  What is\\n2+2? ")
        'what is 2+2?'
    """
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def prompt_groups(prompts: Sequence[str] | np.ndarray) -> np.ndarray:
    """(N,) int group ids: rows with the same normalised text share an id."""
    keys: dict[str, int] = {}
    return np.array([keys.setdefault(normalise_prompt(p), len(keys)) for p in prompts], dtype=np.int64)


def assign_splits(
    prompts: Sequence[str],
    tasks: Sequence[str | None],
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> np.ndarray:
    """A deterministic train/test split, grouped by normalised prompt text and stratified by task.

    Uses scikit-learn's ``StratifiedGroupKFold`` with ``round(1 / test_fraction)`` folds and takes
    the first fold as test, so the same inputs and seed always give the same split.

    Args:
        prompts: the prompt texts.
        tasks: the task of each prompt (None is its own stratum).
        test_fraction: the share of prompts in the test split, in (0, 0.5].
        seed: the shuffling seed.

    Returns:
        (N,) object array of "train" / "test".
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < test_fraction <= 0.5:
        raise ValueError(f"The 'test_fraction' parameter must be in (0, 0.5]; got {test_fraction} instead.")
    n = len(prompts)
    splits = np.full(n, "train", dtype=object)
    groups = prompt_groups(prompts)
    n_folds = max(2, round(1.0 / test_fraction))
    if len(np.unique(groups)) < n_folds:
        return splits
    strata = _strata(tasks, n_folds)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A task with fewer prompts than folds is legitimate here; sklearn warns about it.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        _, test_rows = next(splitter.split(np.zeros(n), strata, groups))
    splits[test_rows] = "test"
    return splits


def _strata(tasks: Sequence[str | None], n_folds: int) -> np.ndarray:
    """Task labels for stratification; tasks with fewer prompts than folds share one stratum."""
    names, counts = np.unique(
        np.array(["" if t is None else t for t in tasks], dtype=object), return_counts=True
    )
    size = dict(zip(names.tolist(), counts.tolist(), strict=True))
    strata = np.array(
        [t if size[t] >= n_folds else "\0rare" for t in ("" if t is None else t for t in tasks)], dtype=object
    )
    if (np.unique(strata, return_counts=True)[1] < n_folds).all():
        strata[:] = ""  # nothing big enough to stratify on: a plain grouped split
    return strata


def duplicated_across_splits(prompts: Sequence[str], splits: Sequence[str | None]) -> int:
    """How many distinct normalised prompt texts occur in more than one split."""
    seen: dict[str, set[str | None]] = {}
    for prompt, split in zip(prompts, splits, strict=True):
        seen.setdefault(normalise_prompt(prompt), set()).add(split)
    return sum(1 for s in seen.values() if len(s) > 1)
