"""The plain percentile bootstrap over rows, shared by the policy stage and the evaluation.

One definition of how rows are resampled (``numpy``'s default generator under a seed, ``n`` draws
with replacement per resample), of the means over them (gathered rows, or row counts for the
vectorised metrics of ``evaluate``) and of the percentile interval, so that an interval ``policy``
reports and one ``evaluate`` reports come from the same resamples for the same seed.

Example::

    means = resampled_means(values[:, None], n_boot=1000, seed=0)[:, 0]
    low, high = percentile_interval(means)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from prefill_router.errors import ConfigError, DataError

#: Resamples are drawn in chunks of about this many row indices (memory bound). Chunked draws
#: equal one big draw: the generator hands out the same indices in the same order.
CHUNK_INDICES = 1_000_000


def bootstrap_rows(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n) row indices: ``n_boot`` resamples of ``n`` rows with replacement, fixed by ``seed``.

    Raises:
        DataError: n < 1.  ConfigError: n_boot < 1.
    """
    return np.concatenate(list(_resamples(n, n_boot, seed)))


def resampled_means(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, K) column means of (N, K) ``values`` over the resamples of :func:`bootstrap_rows`
    (the same rows for the same seed), drawn in chunks so memory stays bounded for large N.

    Raises:
        DataError: no rows.  ConfigError: n_boot < 1.
    """
    values = np.asarray(values, dtype=np.float64)
    return np.concatenate([values[rows].mean(axis=1) for rows in _resamples(len(values), n_boot, seed)])


def resample_counts(resamples: np.ndarray, n: int) -> np.ndarray:
    """(B, n) float: how often each of ``n`` rows appears in each of the B resamples (B, n_draws),
    e.g. from :func:`bootstrap_rows`; ``counts @ values / n_draws`` are the resampled means.

    Raises:
        DataError: ``resamples`` is not a 2-D int array of row indices in [0, n).
    """
    rows = np.asarray(resamples)
    if rows.ndim != 2 or rows.shape[1] == 0 or not np.issubdtype(rows.dtype, np.integer):
        raise DataError(f"resamples must be a 2-D int array of row indices; got {rows.dtype} {rows.shape}.")
    if ((rows < 0) | (rows >= n)).any():
        raise DataError(f"resamples must index rows in [0, {n}); got {rows.min()}..{rows.max()}.")
    flat = (rows + n * np.arange(len(rows))[:, None]).ravel()
    return np.bincount(flat, minlength=len(rows) * n).reshape(len(rows), n).astype(np.float64)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """The central percentile interval ``[lo, hi]`` holding ``level`` of the finite samples.

    Non-finite samples (a resample where a metric is undefined) are dropped; ``[nan, nan]`` if none
    is left.

    Raises:
        ConfigError: level is not in (0, 1).
    """
    check_level(level)
    values = np.asarray(samples, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [math.nan, math.nan]
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def check_n_boot(n_boot: int) -> None:
    """Raise ConfigError unless ``n_boot`` is an int >= 1."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ConfigError(f"The 'n_boot' parameter must be at least 1; got {n_boot} instead.")


def check_level(level: float) -> None:
    """Raise ConfigError unless ``level`` is in (0, 1)."""
    if not 0 < level < 1:
        raise ConfigError(f"The 'level' parameter must be in (0, 1); got {level} instead.")


def _resamples(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The (k, n) chunks of row indices that together make the ``n_boot`` resamples."""
    if n < 1:
        raise DataError(f"bootstrap needs at least one row; got n={n}.")
    check_n_boot(n_boot)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_INDICES // n)
    for start in range(0, int(n_boot), chunk):
        yield rng.integers(0, n, size=(min(chunk, int(n_boot) - start), n))
