"""A disk cache of the layer probes a fit runs, so refits on the same rows skip them.

Choosing layers by Fisher J_lda is the slowest step of a fit on cached features (a minute on
10,000 prompts x 29 targets). Cross-validated evaluation refits the router once per fold, and a
recipe study refits it once per fold per variant: the probes of a fold depend only on the encoder,
the pooling, the layers, the probe settings, the prompts and their labels, so they are computed
once and read back as JSON. Entries are written atomically; an unreadable entry is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefill_router._files import atomic_path
from prefill_router.probe import ProbeReport

#: Bumped when the probe's maths or report changes: older entries are then never looked up.
#: 2: each layer standardised and PCA-reduced by probe.fit_pca, the router transform's helper.
PROBE_CACHE_VERSION = 2


class ProbeCache:
    """Probe reports under ``root`` (one JSON file per key digest).

    Example::

        cache = ProbeCache(default_cache_dir() / "probes")
        key = cache.key(encoder_json, "mean", layers, settings, prompts, labels, names)
        report = cache.get_or_run(key, run)
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(
        encoder: dict[str, Any],
        pooling: str,
        layers: Sequence[int],
        settings: dict[str, Any],
        prompts: Sequence[str],
        labels: np.ndarray,
        target_names: Sequence[str],
    ) -> str:
        """sha256 over everything that changes a probe report."""
        digest = hashlib.sha256()
        head = {
            "version": PROBE_CACHE_VERSION, "encoder": encoder, "pooling": pooling,
            "layers": [int(x) for x in layers], "settings": settings, "targets": list(target_names),
        }  # fmt: skip
        digest.update(json.dumps(head, sort_keys=True).encode())
        for prompt in prompts:
            data = prompt.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        digest.update(np.ascontiguousarray(np.nan_to_num(labels, nan=-1.0), dtype=np.float64).tobytes())
        return digest.hexdigest()

    def get_or_run(self, key: str, run: Callable[[], ProbeReport]) -> ProbeReport:
        """The cached report of ``key``, or ``run()``'s, stored for next time."""
        path = self.root / f"{key[:32]}.json"
        try:
            return ProbeReport.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: compute it
        report = run()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(report.to_json()), encoding="utf-8")
        return report
