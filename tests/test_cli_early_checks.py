"""Every check that can fail without features fails before any encoding or training starts.

Each case runs a command on data whose encoding takes minutes (the 5,989 bundled prompts: about
five minutes with SmolLM2 here) and must answer with its exact exit code and message within
seconds, with no feature chunk written to its (fresh) cache. A check that ran after the encoding
would blow the time limit (the per-test timeout stops it at 120 s) and leave chunks behind.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from prefill_router import RoutingDataset, TargetInfo
from prefill_router.cli import run
from tests.serve_support import build_tiny_router

#: The tiny router's targets (tests/test_route.py) and prices.
TARGETS = ("math-model", "poem-model", "code-model")
SECONDS = 15.0  # on a shared 2-core machine; each case takes 1-3 s


@pytest.fixture(scope="module")
def files(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Datasets of the 5,989 bundled prompts (SmolLM2's or the tiny router's targets), a prompt
    file, the tiny router and a copy of it that lacks a price."""
    folder = tmp_path_factory.mktemp("early")
    bundled = RoutingDataset.load("bundled")
    out: dict[str, Path] = {}

    def save(name: str, dataset: RoutingDataset) -> None:
        out[name] = dataset.save(folder / f"{name}.parquet")

    targets = list(bundled.targets)
    targets[1] = TargetInfo(targets[1].name)  # no price
    save("unpriced", bundled.with_targets(targets))
    labels = bundled.labels.copy()
    labels[:, 2] = 1.0  # every row correct: one class
    save("one_class", replace_labels(bundled, labels, bundled.targets))

    rng = np.random.default_rng(0)
    priced = [TargetInfo(name, 0.1 * (j + 1), 0.3 * (j + 1), "test") for j, name in enumerate(TARGETS)]
    big = replace_labels(bundled, (rng.random((bundled.n_prompts, 3)) < 0.5).astype(float), priced)
    save("big", big)
    save("no_train", replace(big, splits=np.array(["test"] * big.n_prompts, dtype=object)))
    rare = big.labels.copy()
    rare[8:, 2] = np.nan  # code-model labelled on 8 rows only: no fold can train it
    save("rare", replace_labels(big, rare, priced))
    extra = np.column_stack([big.labels, rng.random(big.n_prompts) < 0.5, big.labels[:, 0]])
    extra[8:, 4] = np.nan
    more = [*priced, TargetInfo("new-model", 0.2, 0.2, "test"), TargetInfo("few-model", 0.2, 0.2, "test")]
    save("extra", replace_labels(big, extra, more))
    unpriced_new = [*priced, TargetInfo("new-model"), more[4]]
    save("extra_unpriced", replace_labels(big, extra, unpriced_new))
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in bundled.prompts))
    out["prompts"] = prompts

    cache = tmp_path_factory.getbasetemp() / "cache"
    out["router"] = build_tiny_router(tiny_llama_dir, cache, folder)
    unpriced_router = Path(shutil.copytree(out["router"], folder / "unpriced_router"))
    meta = json.loads((unpriced_router / "router.json").read_text())
    meta["targets"][0]["input_usd_per_mtok"] = meta["targets"][0]["output_usd_per_mtok"] = None
    (unpriced_router / "router.json").write_text(json.dumps(meta))
    out["unpriced_router"] = unpriced_router
    out["a_file"] = folder / "a_file"
    out["a_file"].write_text("not a folder")
    return out


def replace_labels(dataset: RoutingDataset, labels: np.ndarray, targets: object) -> RoutingDataset:
    return RoutingDataset(
        dataset.prompt_ids,
        dataset.prompts,
        dataset.tasks,
        dataset.splits,
        labels,
        tuple(targets),  # type: ignore[arg-type]
    )


#: (arguments, with {name} for a file of the fixture and {tmp} for the test's folder; exit code;
#: what the one-line error says)
CASES: dict[str, tuple[str, int, str]] = {
    # ------------------------------------------------------------------ fit (SmolLM2, 5,608 rows)
    "fit: a target without a price": (
        "fit {unpriced} -o {tmp}/r",
        2,
        "1 target(s) without a price: qwen2.5-7b-instruct. Routing weighs each target's cost",
    ),
    "fit: too few training rows": (
        "fit bundled -o {tmp}/r --limit 20",
        2,
        "bundled: fitting needs at least 50 training rows; got 20",
    ),
    "fit: a target with one class": (
        "fit {one_class} -o {tmp}/r",
        2,
        "target 'llama3-chatqa-1.5-70b' needs at least 5 correct and 5 wrong labelled training rows; "
        "it has 5608 correct and 0 wrong",
    ),
    "fit: --pca 0": ("fit bundled -o {tmp}/r --pca 0", 3, "The 'pca_k' parameter must be an int >= 1; got 0"),
    "fit: --n-layers 0": (
        "fit bundled -o {tmp}/r --n-layers 0",
        3,
        "The 'n_layers' parameter must be an int >= 1; got 0",
    ),
    "fit: --val-share 0.7": (
        "fit bundled -o {tmp}/r --val-share 0.7",
        3,
        "The 'val_share' parameter must be in (0, 0.5); got 0.7",
    ),
    "fit: --depth-tolerance 1.5": (
        "fit bundled -o {tmp}/r --depth-tolerance 1.5",
        3,
        "The 'depth_tolerance' parameter must be in [0, 1); got 1.5",
    ),
    "fit: a --json path under a file": (
        "fit bundled -o {tmp}/r --json {a_file}/fit.json",
        3,
        "cannot write the --json file",
    ),
    "fit: an unknown second encoder": (
        "fit bundled -o {tmp}/r --encoder smollm2-135m --encoder minilm",
        3,
        "unknown encoder 'minilm'. Did you mean 'minilm-l6'?",
    ),
    "fit: an unknown target": (
        "fit bundled -o {tmp}/r --targets gemma-2-9b",
        2,
        "unknown target 'gemma-2-9b'. Did you mean 'gemma-2-9b-it'?",
    ),
    # ------------------------------------------------------------------ probe (SmolLM2, 5,608 rows)
    "probe: --folds 1": ("probe bundled --folds 1", 3, "The 'folds' parameter must be an int >= 2; got 1"),
    "probe: --pca-k 0": ("probe bundled --pca-k 0", 3, "The 'pca_k' parameter must be an int >= 1; got 0"),
    "probe: a --plot path under a file": (
        "probe bundled --plot {a_file}/p.png",
        3,
        "cannot write the --plot file",
    ),
    "probe: an unknown second encoder": (
        "probe bundled --encoder smollm2-135m --encoder minilm",
        3,
        "unknown encoder 'minilm'",
    ),
    # ---------------------------------------------------------- evaluate (tiny router, 5,989 rows)
    "evaluate: no such split": (
        "evaluate {router} {big} --split dev",
        2,
        "no split 'dev'; the splits are test, train (or use --cv K)",
    ),
    "evaluate: no train split for the baselines": (
        "evaluate {router} {no_train}",
        2,
        "the baselines train on the 'train' split, which this dataset lacks (use --cv K)",
    ),
    "evaluate: --cv 1": (
        "evaluate {router} {big} --cv 1",
        3,
        "The 'folds' parameter must be between 2 and the number of distinct prompts (5989); got 1",
    ),
    "evaluate: --bootstrap 0": (
        "evaluate {router} {big} --bootstrap 0",
        3,
        "The 'n_boot' parameter must be at least 1; got 0",
    ),
    "evaluate: a router without a price": (
        "evaluate {unpriced_router} {big}",
        2,
        "router: 1 target(s) without a price: math-model",
    ),
    "evaluate: folds that cannot train a target": (
        "evaluate {router} {rare} --cv 5",
        2,
        "fold 1 of 5's training rows: target 'code-model' needs at least 5 correct and 5 wrong",
    ),
    "evaluate: a --report folder under a file": (
        "evaluate {router} {big} --report {a_file}/r",
        3,
        "cannot write the report",
    ),
    "evaluate: a floor relative to an unknown target": (
        "evaluate {router} {big} --within 1pt:code-modle",
        2,
        "unknown target 'code-modle'. Did you mean 'code-model'?",
    ),
    "evaluate: a bad delta": (
        "evaluate {router} {big} --delta 0.9",
        3,
        "The 'delta' parameter must be in (0, 0.5]; got 0.9 instead.",
    ),
    "evaluate: other targets than the router's": (
        "evaluate {router} bundled",
        2,
        "the data's targets differ from the router's",
    ),
    # ---------------------------------------------------------- add-target (tiny router, 5,989 rows)
    "add-target: not in the data": (
        "add-target {router} {extra} --target new-modle -o {tmp}/r",
        2,
        "unknown target 'new-modle'. Did you mean 'new-model'?",
    ),
    "add-target: already routed": (
        "add-target {router} {extra} --target math-model -o {tmp}/r",
        3,
        "target 'math-model' is already in the router",
    ),
    "add-target: too few labels": (
        "add-target {router} {extra} --target few-model -o {tmp}/r",
        2,
        "fitting needs at least 50 training rows; got",
    ),
    "add-target: no price": (
        "add-target {router} {extra_unpriced} --target new-model -o {tmp}/r",
        2,
        "1 target(s) without a price: new-model",
    ),
    # -------------------------------------------------------- route-batch (tiny router, 5,989 rows)
    "route-batch: no such prompt column": (
        "route-batch {router} {prompts} -o {tmp}/d.parquet --prompt-column text",
        2,
        "no column 'text'; the file's columns are 'prompt'",
    ),
    "route-batch: no such id column": (
        "route-batch {router} {prompts} -o {tmp}/d.parquet --id-column uid",
        2,
        "no column 'uid'",
    ),
    "route-batch: a router without a price": (
        "route-batch {unpriced_router} {prompts} -o {tmp}/d.parquet",
        2,
        "1 target(s) without a price: math-model",
    ),
    "route-batch: an unknown decisions format": (
        "route-batch {router} {prompts} -o {tmp}/d.txt",
        2,
        "unknown prompt file type '.txt'",
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_fails_in_seconds_before_any_encoding(
    case: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    template, code, message = CASES[case]
    monkeypatch.setenv("PREFILL_ROUTER_ALLOW_LOCAL_ENCODERS", "1")  # the tiny router, in a fresh cache
    cache = tmp_path / "cache"
    args = [part.format(tmp=tmp_path, **files) for part in template.split()]
    started = time.perf_counter()
    assert run([*args, "--cache", str(cache)]) == code
    seconds = time.perf_counter() - started
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and message in err, err
    assert not list(cache.rglob("*.npy")), "a feature chunk was written before the check failed"
    assert seconds < SECONDS, f"{case}: {seconds:.1f} s"
