"""Does the quality floor's guarantee hold on real data, and what does it cost? (issue 14)

    .venv/bin/python benchmarks/floor_coverage.py                      # llmrouter, mmlu-pro, routellm
    .venv/bin/python benchmarks/floor_coverage.py llmrouter --draws 100
    .venv/bin/python benchmarks/floor_coverage.py --table              # the README table of saved results

Under grouped 5-fold CV (the folds of ``benchmarks/recipe.py``), each fold's held-out rows are
scored by a router fitted on the other folds (the recipe study's cached out-of-fold
probabilities of the default recipe). A fold's held-out rows are the *population*: for each of
``--draws`` bootstrap draws, as many calibration rows as a default fit keeps (``calibration_share``
of the fold's training rows) are drawn from it with replacement, the floor is certified on them
exactly as ``Router.certify`` does (same losses, p-values and fixed-sequence test over a μ grid
fixed from the fold's training costs), and the certified μ's accuracy is measured on the whole
population. Floors are relative to the best single target of the fold's training rows: >= 95%,
98%, 99% and 100% of its accuracy, and within 1 point of it (the product's default); δ = 0.05 and
0.1.

The default floor is also certified on 1,000, 2,000 and 4,000 drawn rows: what labelled traffic
(``prefill-router calibrate``) buys; and with other p-values on the same draws (a mixture of fixed
bets, aGRAPA, and a normal approximation, which is not a finite-sample test). Every floor with
the same number of rows is certified on the same draws. Reported per dataset, floor and δ:
coverage (the share of folds x draws whose population accuracy stays at or above the floor; must
be >= 1 − δ), the share of draws that certified a μ at all, the mean savings against always using
the reference target, and the savings of the *oracle* μ (the cheapest μ of the grid whose
population accuracy keeps the floor, chosen with hindsight) — the difference is the price of the
guarantee.
Writes ``benchmarks/results/floor_coverage.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import RESULTS
from recipe import CHOSEN, load_dataset

from prefill_router.encode import default_cache_dir
from prefill_router.evaluate.run import cv_folds, eval_costs
from prefill_router.policy import QualityFloor, mu_grid
from prefill_router.policy.choice import _choose
from prefill_router.policy.floor import fixed_sequence, floor_losses, p_values
from prefill_router.policy.routing import FLOOR_GRID_POINTS
from prefill_router.train import TrainSettings

DATASETS = ("llmrouter", "mmlu-pro", "routellm")
#: The recipe variant whose out-of-fold probabilities are used: the default with calibration rows
#: held out (what a default fit ships), else the default without them.
VARIANTS = (f"{CHOSEN}+cal-0.1", CHOSEN)
SHARES = (0.95, 0.98, 0.99, 1.0)
DELTAS = (0.05, 0.1)
#: Calibration rows beyond the default share, for the default floor: what labelled traffic buys.
MORE_ROWS = (1000, 2000, 4000)
OUT = RESULTS / "floor_coverage.json"


def mixture_p_values(losses: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """Betting p-values from the average wealth of 12 fixed bets (a mixture martingale): valid."""
    gain = alpha - losses  # > 0 on average when the floor holds
    wealth = np.mean(
        [np.exp(np.cumsum(np.log1p(nu * gain), axis=1)) for nu in np.geomspace(0.02, 1, 12)], axis=0
    )
    out: np.ndarray = np.minimum(1.0, 1.0 / np.maximum(wealth.max(axis=1), 1.0))
    return out


def agrapa_p_values(losses: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """Betting p-values with aGRAPA's plug-in Kelly bet (Waudby-Smith & Ramdas 2023, §5.2): valid."""
    gain = alpha - losses
    k, n = gain.shape
    i = np.arange(1, n + 1)
    mean = np.cumsum(gain, axis=1) / i
    variance = np.cumsum((gain - mean) ** 2, axis=1) / i
    before_mean = np.concatenate([np.zeros((k, 1)), mean[:, :-1]], axis=1)
    before_var = np.concatenate([np.full((k, 1), 0.25), variance[:, :-1]], axis=1)
    nu = np.clip(before_mean / (before_var + before_mean**2 + 1e-12), 0, 0.95 / (1 - alpha))
    log_wealth = np.cumsum(np.log1p(nu * gain), axis=1)
    out: np.ndarray = np.minimum(1.0, np.exp(-np.maximum(log_wealth.max(axis=1), 0.0)))
    return out


def normal_p_values(losses: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """One-sided z-test p-values: NOT a finite-sample guarantee (shown for what it would give up)."""
    from scipy.stats import norm

    spread = losses.std(axis=1) / np.sqrt(losses.shape[1]) + 1e-12
    out: np.ndarray = norm.sf((alpha - losses.mean(axis=1)) / spread)
    return out


#: Other p-values for the default floor, against the product's WSR (same draws, same floor).
OTHER_TESTS = {"mixture": mixture_p_values, "agrapa": agrapa_p_values, "normal-approx": normal_p_values}


def floors(reference: str, delta: float) -> dict[str, QualityFloor]:
    """The floors of the study, by label, relative to ``reference``."""
    out = {
        f"{s:.0%} of best": QualityFloor(min_accuracy=s, relative_to=reference, delta=delta) for s in SHARES
    }
    out["within 1 pt of best"] = QualityFloor(within=0.01, relative_to=reference, delta=delta)
    return out


def oof_probabilities(dataset: str, folds: int, work: Path) -> tuple[np.ndarray, str]:
    """The cached out-of-fold probabilities of the first of :data:`VARIANTS` that has them."""
    for variant in VARIANTS:
        found = sorted(work.glob(f"{dataset}-{variant}-*-f{folds}.npz"))
        if found:
            return np.load(found[-1])["p"], variant
    raise SystemExit(f"no out-of-fold probabilities for {dataset}: run benchmarks/recipe.py {dataset} first")


def fold_study(
    p: np.ndarray, y: np.ndarray, c: np.ndarray, train: np.ndarray, test: np.ndarray, names: list[str],
    n_cal: int, draws: int, rng: np.random.Generator,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Coverage, certified share and savings of every floor and δ on one fold's held-out rows."""
    complete = test[~np.isnan(y[test]).any(axis=1)]
    reference = int(np.nanargmax(np.nanmean(y[train], axis=0)))
    grid = mu_grid(c[train], n=FLOOR_GRID_POINTS)  # fixed before any held-out label is seen
    mask = np.ones((len(complete), len(names)), dtype=bool)
    pt, yt, ct = p[complete], y[complete], c[complete]
    rows = np.arange(len(complete))
    choices = np.stack([_choose(pt, ct, "budget", float(mu), mask) for mu in grid])  # (K, n)
    correct, cost = yt[rows, choices], ct[rows, choices].mean(axis=1)  # (K, n), (K,)
    accuracy, ref_acc, ref_cost = (
        correct.mean(axis=1),
        float(yt[:, reference].mean()),
        float(ct[:, reference].mean()),
    )
    out: dict[str, dict[str, Any]] = {}
    plans = [
        (delta, label, floor, n_cal)
        for delta in DELTAS
        for label, floor in floors(names[reference], delta).items()
    ]
    default = QualityFloor(within=0.01, relative_to=names[reference])
    plans += [(0.05, f"within 1 pt of best, {rows:,} rows", default, rows) for rows in MORE_ROWS]
    plans += [(0.05, f"within 1 pt of best, test {test}", default, n_cal) for test in OTHER_TESTS]
    samples: dict[int, np.ndarray] = {}  # the same draws for every floor with n rows
    for delta, label, floor, n in plans:
        losses, alpha = floor_losses(correct, yt[:, reference], floor)
        keeps = accuracy >= floor.accuracy_given(ref_acc) - 1e-12
        oracle = 1 - cost[keeps].min() / ref_cost if keeps.any() else 0.0
        kept, certified, savings = 0, 0, []
        test = OTHER_TESTS.get(label.rpartition("test ")[2]) if ", test " in label else None
        for draw in samples.setdefault(n, rng.integers(0, len(complete), size=(draws, n))):
            pv = (
                p_values(losses[:, draw], alpha, delta, zero_one=False)[0]
                if test is None
                else test(losses[:, draw], alpha, delta)
            )
            accepted = fixed_sequence(pv, delta)
            if accepted:
                certified += 1
                kept += bool(keeps[accepted - 1])
                savings.append(1 - cost[accepted - 1] / ref_cost)
            else:  # the fallback: the reference target itself, which keeps any relative floor
                kept += 1
                savings.append(0.0)
        out[f"{label} | {delta}"] = {
            "kept": kept, "draws": draws, "certified": certified, "savings": float(np.mean(savings)),
            "oracle_savings": float(oracle), "reference": names[reference], "rows": n,
            "population": len(complete),
        }  # fmt: skip
    return out


def study(dataset_name: str, draws: int, folds: int, seed: int, work: Path) -> dict[str, Any]:
    dataset = load_dataset(dataset_name)
    p, variant = oof_probabilities(dataset_name, folds, work)
    y, c, names = dataset.labels, eval_costs(dataset, dataset), list(dataset.target_names)
    share = TrainSettings().calibration_share
    rng = np.random.default_rng(seed)
    per_fold = []
    for k, (train, test) in enumerate(cv_folds(dataset, folds, seed)):
        n_cal = round(share * len(train))
        started = time.perf_counter()
        per_fold.append(fold_study(p, y, c, train, test, names, n_cal, draws, rng))
        print(f"{dataset_name}: fold {k + 1}/{folds} ({n_cal} calibration rows per draw) "
              f"in {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    rows: dict[str, Any] = {}
    for key in per_fold[0]:
        label, delta = key.split(" | ")
        cells = [fold[key] for fold in per_fold]
        trials = sum(cell["draws"] for cell in cells)
        kept = sum(cell["kept"] for cell in cells)
        savings = float(np.mean([cell["savings"] for cell in cells]))
        oracle = float(np.mean([cell["oracle_savings"] for cell in cells]))
        rows[key] = {
            "floor": label, "delta": float(delta), "trials": trials, "calibration_rows": cells[0]["rows"],
            "coverage": kept / trials,
            "coverage_ok": kept / trials >= 1 - float(delta),
            "certified_share": sum(cell["certified"] for cell in cells) / trials,
            "savings": savings, "oracle_savings": oracle, "price_of_guarantee": oracle - savings,
            "references": sorted({cell["reference"] for cell in cells}),
        }  # fmt: skip
    return {
        "dataset": dataset_name, "n_prompts": dataset.n_prompts, "variant": variant, "folds": folds,
        "draws_per_fold": draws, "calibration_share": share, "seed": seed, "rows": rows,
    }  # fmt: skip


def markdown_table(blob: dict[str, Any]) -> str:
    """Coverage and savings per dataset, floor and δ."""
    lines = [
        "| dataset | floor | δ | calibration rows | coverage (trials) | certified | savings "
        "| oracle μ savings | price |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tests = []
    for name, result in blob["datasets"].items():
        for row in result["rows"].values():
            if ", test " in row["floor"]:
                tests.append((name, row))
                continue
            mark = "" if row["coverage_ok"] else " ✗"
            lines.append(
                f"| {name} | {row['floor'].split(',')[0]} | {row['delta']:g} | {row['calibration_rows']:,} | "
                f"{row['coverage']:.1%} ({row['trials']:,}){mark} | "
                f"{row['certified_share']:.0%} | {row['savings']:.1%} | {row['oracle_savings']:.1%} | "
                f"{row['price_of_guarantee'] * 100:+.1f} pt |"
            )
    lines += [
        "",
        "| dataset | test of the default floor (δ 0.05) | coverage | certified | savings |",
        "|---|---|---|---|---|",
    ]
    for name, result in blob["datasets"].items():
        wsr = result["rows"]["within 1 pt of best | 0.05"]
        for test, row in [
            ("WSR (the product's)", wsr),
            *((r["floor"].rpartition("test ")[2], r) for n, r in tests if n == name),
        ]:
            mark = "" if row["coverage_ok"] else " ✗"
            share, saved = f"{row['certified_share']:.0%}", f"{row['savings']:.1%}"
            lines.append(f"| {name} | {test} | {row['coverage']:.1%}{mark} | {share} | {saved} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # no `choices`: argparse checks an empty nargs="*" list against them and refuses it
    parser.add_argument("datasets", nargs="*", help=f"some of {', '.join(DATASETS)} (default: all)")
    parser.add_argument("--draws", type=int, default=200, help="calibration draws per fold")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(default_cache_dir()) / "recipe")
    parser.add_argument("--table", action="store_true", help="only print the README table of saved results")
    args = parser.parse_args()
    unknown = [name for name in args.datasets if name not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    args.datasets = args.datasets or list(DATASETS)
    if args.table:
        print(markdown_table(json.loads(OUT.read_text())))
        return
    results = {name: study(name, args.draws, args.folds, args.seed, args.work) for name in args.datasets}
    # read only now: another run may have written other datasets meanwhile
    blob = json.loads(OUT.read_text()) if OUT.exists() else {"datasets": {}}
    blob["datasets"] |= results
    blob["method"] = (
        "Learn-then-Test, fixed-sequence over the μ grid, WSR p-values (relative floors); per fold the "
        "held-out rows are the population, calibration rows are bootstrap draws from it"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(blob, indent=1))
    print(markdown_table(blob))
    print(OUT)


if __name__ == "__main__":
    main()
