"""Importers from public routing-data formats into :class:`RoutingDataset`.

Each importer is ``import_<kind>(src, *, prices, split_seed=0, ...) -> ImportResult`` in the
module of the same name; :data:`IMPORTERS` maps the CLI's ``KIND`` to that module, imported only
when used.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from prefill_router.data.dataset import TARGET_NAME, RoutingDataset, target_name_problem
from prefill_router.data.importers._common import ImportResult
from prefill_router.data.prices import PriceTable
from prefill_router.errors import ConfigError

IMPORTERS: dict[str, str] = {
    "llmrouter": "llmrouter",
    "mmlu-pro": "mmlu_pro",
    "routellm": "routellm",
    "routerbench": "routerbench",
    "long-csv": "long_csv",
}


def import_dataset(kind: str, src: str | Path, *, prices: PriceTable, **options: Any) -> ImportResult:
    """Run the importer for ``kind`` on ``src``; unknown kinds raise :class:`ConfigError`."""
    if kind not in IMPORTERS:
        raise ConfigError(f"unknown import kind {kind!r}; expected one of: {', '.join(IMPORTERS)}")
    module = importlib.import_module(f"{__name__}.{IMPORTERS[kind]}")
    importer = getattr(module, f"import_{IMPORTERS[kind]}")
    result: ImportResult = importer(Path(src), prices=prices, **options)
    return result


def reprice(dataset: RoutingDataset, prices: PriceTable) -> RoutingDataset:
    """A copy whose targets take their prices from ``prices`` where it knows them."""
    targets = [prices.target_info(t.name) if prices.lookup(t.name) else t for t in dataset.targets]
    return dataset.with_targets(targets)


__all__ = ["IMPORTERS", "TARGET_NAME", "ImportResult", "import_dataset", "reprice", "target_name_problem"]
