"""Rebuild the bundled default dataset from the LLMRouter copy in ../shared.

Run from the repository root: ``.venv/bin/python scripts/build_bundled_dataset.py``. The result,
``src/prefill_router/data/resources/llmrouter.parquet``, is committed with LLMRouter's MIT licence.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from prefill_router.data.importers.llmrouter import import_llmrouter
from prefill_router.data.prices import builtin_prices

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "datasets" / "llmrouter"
RESOURCES = ROOT / "src" / "prefill_router" / "data" / "resources"


def main() -> int:
    """Import LLMRouter, write the bundled Parquet file and copy the licence beside it."""
    if not SOURCE.is_dir():
        print(
            f"error: {SOURCE} not found; the shared datasets must sit beside the repository", file=sys.stderr
        )
        return 1
    result = import_llmrouter(SOURCE, prices=builtin_prices())
    dataset = result.dataset
    provenance = {
        **dataset.provenance,
        "files": [f"llmrouter/{f}" for f in dataset.provenance["files"]],
        "upstream": "github ulab-uiuc/LLMRouter, commit 4e7a796942ce26e9d5f2b93191c7c2585c99c2e3",
        "bundled": "prefill-router's default dataset; see LICENSE-llmrouter",
    }
    dataset = dataclasses.replace(dataset, provenance=provenance)
    dataset.save(RESOURCES / "llmrouter.parquet")
    shutil.copyfile(SOURCE / "LICENSE", RESOURCES / "LICENSE-llmrouter")
    print(
        f"wrote {RESOURCES / 'llmrouter.parquet'}: "
        f"{dataset.n_prompts} prompts x {len(dataset.targets)} targets"
    )
    for note in result.notes:
        print(f"  - {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
