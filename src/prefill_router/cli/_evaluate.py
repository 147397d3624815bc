"""`prefill-router evaluate` and `route`: the router against the oracle and the baselines; one decision."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from prefill_router._files import atomic_path, check_writable
from prefill_router.cli._app import (
    CacheOption,
    DatasetArg,
    RouterArg,
    app,
    console,
    encode_progress,
    err_console,
)

if TYPE_CHECKING:
    from prefill_router.data.dataset import RoutingDataset
    from prefill_router.evaluate.run import FeatureSet
    from prefill_router.policy import QualityFloor, Router


@app.command("evaluate")
def evaluate(
    router_path: RouterArg,
    data: DatasetArg,
    split: Annotated[str, typer.Option(help="Evaluate on this split (baselines train on 'train').")] = "test",
    baselines: Annotated[
        str, typer.Option(help="'all', 'none' or some of knn-embed,trunk-embed,logreg-embed,layer0,random.")
    ] = "all",
    cv: Annotated[
        int | None, typer.Option("--cv", help="Grouped K-fold CV over the whole dataset (refits per fold).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows of the dataset (CV).")] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write report.html (figures embedded) in this folder.")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every metric as JSON.")] = None,
    min_accuracy: Annotated[
        float | None,
        typer.Option(help="Also check this absolute quality floor (certified on the calibration rows)."),
    ] = None,
    within: Annotated[
        str | None,
        typer.Option(help="Also check this relative floor: '1pt[:TARGET]' or '99%[:TARGET]'."),
    ] = None,
    delta: Annotated[
        float | None, typer.Option(help="Risk of the floors' certificates, in (0, 0.5] (default 0.05).")
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.")] = 1000,
    seed: Annotated[
        int, typer.Option(help="Seed of the bootstrap, the random baseline and the CV folds.")
    ] = 0,
    cache: CacheOption = None,
) -> None:
    """Score the router and the baselines on the same rows with the same policy and cost code.

    On a split, budgets and quality floors (the default one, within 1 point of the best single
    target at delta 0.05, and any --min-accuracy / --within) are solved on the router's calibration
    rows and checked on the evaluation rows.
    """
    from prefill_router.data.dataset import RoutingDataset
    from prefill_router.encode import default_cache_dir
    from prefill_router.evaluate import baselines as bl
    from prefill_router.evaluate.run import (
        budget_adherence,
        cross_validated,
        eval_costs,
        floor_adherence,
        plan_evaluation,
        predict_rows,
        score,
    )
    from prefill_router.policy import BEST_SINGLE, Router
    from prefill_router.train import ProbeCache, TrainSettings

    started = time.perf_counter()
    # Everything that can fail without features fails here, before minutes of encoding.
    names = bl.parse_baselines(baselines)
    floors = _floors(min_accuracy, within, delta)
    if json_out is not None:
        check_writable(json_out, what="--json file")
    if report is not None:
        check_writable(report / "report.html", what="report")
    router = Router.load(router_path, cache_dir=cache)
    for floor in floors:  # an unknown reference fails now, not after the encoding
        if floor.relative_to not in (None, BEST_SINGLE):
            router.target_index(str(floor.relative_to))
    dataset = RoutingDataset.load(data)
    if limit is not None:
        dataset = dataset.take(range(min(limit, dataset.n_prompts)))
    plan = plan_evaluation(router, dataset, split=split, cv=cv, baselines=names, n_boot=bootstrap, seed=seed)
    features = _feature_set(router, dataset, need_embed=any(n.endswith("-embed") for n in names), cache=cache)
    settings = TrainSettings.from_json(router.info.get("settings") or {})
    with console.status("evaluating") as status:

        def step(text: str) -> None:
            status.update(f"evaluating: {text}")

        if cv is not None:
            evaluation, predictions = (
                dataset,
                cross_validated(
                    dataset,
                    features,
                    names,
                    settings,
                    cv,
                    seed=seed,
                    on_step=step,
                    probe_cache=ProbeCache(Path(cache or default_cache_dir()) / "probes"),
                ),
            )
            where = f"grouped {cv}-fold CV over {dataset.n_prompts} prompts of {data}"
        else:
            assert plan.train_rows is not None and plan.eval_rows is not None  # a split's plan
            evaluation, predictions = predict_rows(
                router, dataset, features, plan.train_rows, plan.eval_rows, names, settings, seed=seed,
                on_step=step,
            )  # fmt: skip
            where = (
                f"split {split!r} of {data} ({len(plan.eval_rows)} prompts; "
                f"baselines fit on {len(plan.train_rows)})"
            )
        costs = eval_costs(dataset, evaluation)
        result = score(evaluation, predictions, costs, n_boot=bootstrap, seed=seed)
        if cv is not None and (min_accuracy is not None or within is not None):
            err_console.print(
                "note: with --cv each fold refits the router; a floor's coverage under CV is measured by "
                "benchmarks/floor_coverage.py (evaluate on a split checks the router's own certificate)"
            )
        if cv is None:
            result["budgets"] = budget_adherence(
                router, evaluation, predictions, costs, n_boot=bootstrap, seed=seed
            )
            if router.calibration is None or router.calibration.labels is None:
                err_console.print("note: the router stores no labelled calibration rows; no floor is checked")
            else:
                result["floors"] = floor_adherence(
                    router, evaluation, predictions, costs, floors, n_boot=bootstrap, seed=seed
                )
    result["setup"] = {
        "where": where,
        "router": str(router_path),
        "cv": cv,
        "split": None if cv else split,
        "baselines": list(names),
        "knn_k": predictions.knn_k,
        "bootstrap": bootstrap,
        "seed": seed,
    }
    print_headline(result, where)
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        console.print(f"metrics: {json_out}")
    if report is not None:
        from prefill_router.evaluate.report import write_report

        page = write_report(result, predictions, evaluation, router, report)
        console.print(f"report: [bold]{page}[/]")
    console.print(f"time: {time.perf_counter() - started:.1f} s")


def print_headline(result: dict[str, Any], where: str) -> None:
    """The headline table: gap captured and cost savings of ours vs each baseline."""
    table = Table(
        "router",
        "mean AUC",
        "argmax acc",
        "gap captured",
        "cost savings",
        "gap @≥50% sav.",
        "gap @≥74.31% sav.",
        "AIQ",
        "sav. @ best acc.",
        "within 1 pt",
        "within 2 pt",
        title=f"routing on {where}",
    )
    from prefill_router.evaluate.report import LABELS, ORDER

    for key in [k for k in ORDER if k in result]:
        r = result[key]
        at = r["gap_captured_at_savings"]
        name = f"[bold]{LABELS[key]}[/]" if key == "prefill" else LABELS.get(key, key)
        table.add_row(
            name,
            _num(r["auc_mean"]),
            _num(r["argmax"]["accuracy"]),
            _pct(r["argmax"]["gap_captured"]),
            _pct(r["argmax"]["cost_savings"]),
            _pct(at.get("0.5")),
            _pct(at.get("0.7431")),
            _num(r["aiq"]),
            _pct(r["savings_at_best_accuracy"]["savings"]),
            _pct(r["savings_within"]["1"]["savings"]),
            _pct(r["savings_within"]["2"]["savings"]),
        )
    console.print(table)
    best, oracle = result["best_single"], result["oracle"]
    console.print(
        f"best single {best['name']} {best['accuracy']:.3f}; oracle {oracle['accuracy']:.3f} "
        f"(headroom {oracle['accuracy'] - best['accuracy']:+.3f}); "
        f"most expensive {result['most_expensive']['name']}"
    )
    if "prefill" in result:
        ours = result["prefill"]
        ci = ours["argmax"]["ci"]["gap_captured"]
        console.print(f"ours at argmax: gap captured 95% CI [{_pct(ci[0])}, {_pct(ci[1])}]")
        at, within = ours["savings_at_best_accuracy"], ours["savings_within"]["1"]
        console.print(
            f"ours at {best['name']}'s accuracy: saves {_pct(at['savings'])} 95% CI "
            f"[{_pct(at['ci'][0])}, {_pct(at['ci'][1])}] (reached in {at['reached']:.0%} of resamples); "
            f"within 1 point: saves {_pct(within['savings'])}, "
            f"{_pct(within.get('share_to_best'))} of calls still to {best['name']}"
        )
    for row in result.get("budgets", []):
        got, mu = row["achieved"], "inf" if row["mu"] is None else format(row["mu"], ".3g")
        console.print(
            f"budget {row['share_of_max']:.0%} of the dearest target = ${row['budget_usd']:.6f}/request "
            f"(μ {mu}, solved on the router's validation rows): achieved ${got['cost']:.6f} "
            f"[{got['cost_ci'][0]:.6f}, {got['cost_ci'][1]:.6f}], accuracy {got['accuracy']:.3f}"
        )

    for row in result.get("floors", []):
        console.print(_floor_line(row))


def _floor_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"floor {row['floor']}: {row['error']}"
    cert, got = row["certificate"], row["achieved"]
    mu = "inf" if cert["mu"] is None else format(cert["mu"], ".3g")
    how = f"μ {mu} certified" if cert["certified"] else f"nothing certified, all to {cert['fallback']}"
    colour = {"kept": "green", "within noise": "yellow"}.get(row["verdict"], "red")
    verdict = f"[{colour}]{row['verdict']}[/]"
    return (
        f"floor {cert['floor']} (δ {cert['delta']:g}, {cert['rows']:,} calibration rows): {how}; on the "
        f"{row['rows']:,} evaluation rows accuracy {got['accuracy']:.3f} [{got['accuracy_ci'][0]:.3f}, "
        f"{got['accuracy_ci'][1]:.3f}] vs floor {row['floor_accuracy']:.3f}: {verdict}, "
        f"saving {_pct(row['savings'])} against {cert['reference']}"
    )


# ----------------------------------------------------------------------- helpers
def _floors(min_accuracy: float | None, within: str | None, delta: float | None) -> list[QualityFloor]:
    """The default floor, and the ones the options name (checked before any work)."""
    from prefill_router.policy import QualityFloor
    from prefill_router.policy.floor import DEFAULT_DELTA, DEFAULT_WITHIN

    risk = DEFAULT_DELTA if delta is None else delta
    floors = [QualityFloor(within=DEFAULT_WITHIN, delta=risk)]
    if min_accuracy is not None:
        floors.append(QualityFloor(min_accuracy=min_accuracy, delta=risk))
    if within is not None:
        floors.append(QualityFloor.parse(within, delta=risk))
    return list(dict.fromkeys(floors))


def _feature_set(
    router: Router, dataset: RoutingDataset, *, need_embed: bool, cache: Path | None
) -> FeatureSet:
    from prefill_router.encode import FeatureStore, default_cache_dir
    from prefill_router.evaluate.run import feature_set

    with console.status(f"loading encoder {', '.join(e.name for e in router.encoders)}"):
        encoders = router.loaded_encoders()
    store = FeatureStore(cache or default_cache_dir())
    with encode_progress(dataset.n_prompts * len(encoders)) as advance:
        return feature_set(
            encoders, dataset.prompts.tolist(), store, need_embed=need_embed, on_progress=advance
        )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
