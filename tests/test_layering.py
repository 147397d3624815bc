"""The package's layering: each pipeline stage imports only itself and earlier stages, and every
subpackage's public names are pinned.

The stages, in order (DESIGN §1): data < encode < probe < train < policy < evaluate < serve.
Below them the shared foundation (errors, file and JSON helpers, the bootstrap, the Ray helpers,
the version); on top the entry points (the package root, cli, route_batch, integrations), which
may import anything. Every import counts: module level, inside functions (the lazy imports that
keep start-up cheap) and under ``TYPE_CHECKING``; a later stage reached lazily is still a cycle in
the design.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = "prefill_router"
SOURCE = ROOT / "src" / PACKAGE
FOUNDATION = ("errors", "_files", "_json", "_bootstrap", "_ray", "_version")
STAGES = ("data", "encode", "probe", "train", "policy", "evaluate", "serve")
ON_TOP = ("", "cli", "route_batch", "integrations")  # "" = the package root
#: Modules that belong to a stage without being in its folder.
STAGE_OF_MODULE = {"probe_plot": "probe"}


def layer(module: str) -> tuple[int, str]:
    """(rank, name) of the layer ``module`` (a dotted name inside the package) belongs to."""
    parts = module.split(".")
    assert parts[0] == PACKAGE, module
    head = parts[1] if len(parts) > 1 else ""
    head = STAGE_OF_MODULE.get(head, head)
    if head in FOUNDATION:
        return 0, "foundation"
    if head in STAGES:
        return 1 + STAGES.index(head), head
    if head in ON_TOP:
        return 1 + len(STAGES), "entry points"
    raise AssertionError(f"{module}: not in any layer; add it to tests/test_layering.py")


def module_name(path: Path) -> str:
    relative = path.relative_to(SOURCE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) of every import of the package in ``source``, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, name) for line, name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import in ``source`` (the text of ``module``) of a later layer than its own."""
    rank, name = layer(module)
    out = []
    for line, target in imported_modules(source, module, is_package):
        their_rank, their_name = layer(target)
        if their_rank > rank:
            out.append(f"{module}:{line} ({name}) imports {target} ({their_name}), a later stage")
    return out


def test_no_module_imports_a_later_stage() -> None:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        found += violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert found == []


@pytest.mark.parametrize(
    ("module", "source", "bad"),
    [
        ("prefill_router.train.router", "from prefill_router.policy import Router", True),
        ("prefill_router.train.router", "def f():\n    from prefill_router.serve.app import App", True),
        ("prefill_router.train.router", "if TYPE_CHECKING:\n    import prefill_router.evaluate.run", True),
        ("prefill_router.data.dataset", "from .. import encode", True),
        ("prefill_router.errors", "from prefill_router.data import RoutingDataset", True),
        ("prefill_router.policy.routing", "from prefill_router.train.router import RouterModel", False),
        ("prefill_router.probe_plot", "from prefill_router.probe import ProbeReport", False),
        ("prefill_router.cli._serve", "from prefill_router.serve.app import create_app", False),
        ("prefill_router.serve.app", "from .config import ServeConfig", False),
    ],
)
def test_the_checker_tells_later_stages_from_earlier_ones(module: str, source: str, bad: bool) -> None:
    assert bool(violations(source, module, is_package=False)) == bad


def test_every_module_is_in_a_layer() -> None:
    for path in SOURCE.rglob("*.py"):
        layer(module_name(path))  # raises for a module no layer names


#: Each subpackage's public names (its ``__all__``), in tests/public_api.json: a change there is a
#: change of the public API, and shows in review as one.
PUBLIC_NAMES: dict[str, list[str]] = json.loads((ROOT / "tests" / "public_api.json").read_text())


@pytest.mark.parametrize("package", sorted(PUBLIC_NAMES))
def test_public_names_are_pinned(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(PUBLIC_NAMES[package])
    assert len(set(module.__all__)) == len(module.__all__)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def test_every_subpackage_pins_its_names() -> None:
    packages = {module_name(path.parent) for path in SOURCE.rglob("__init__.py")}
    assert packages == set(PUBLIC_NAMES)
