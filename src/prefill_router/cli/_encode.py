"""`prefill-router encode`, `probe` and `cache`: prefill features and layer probes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from prefill_router._files import atomic_path, check_writable
from prefill_router._ray import plan_workers
from prefill_router.cli._app import (
    CacheOption,
    DatasetArg,
    RayOption,
    WorkerCpusOption,
    WorkersOption,
    app,
    cache_app,
    console,
    encode_progress,
    layer_text,
    ray_or_none,
)
from prefill_router.encode.encoder import DEFAULT_DTYPE
from prefill_router.errors import ConfigError, DataError


# ------------------------------------------------------------------------- encode
@app.command("encode")
def encode(
    data: DatasetArg,
    encoder: Annotated[
        str, typer.Option(help="Registered encoder name or a local model directory.")
    ] = "smollm2-135m",
    layers: Annotated[str, typer.Option(help="'all', a list '5,10,22' or a range '10-20'.")] = "all",
    pooling: Annotated[str, typer.Option(help="'mean', 'last' or 'mean,last'.")] = "mean,last",
    max_tokens: Annotated[
        int | None,
        typer.Option(help="Longer prompts keep their start and end (default: 512 or the context)."),
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="bfloat16 (fast; AUCs equal to float32's) or float32.")
    ] = DEFAULT_DTYPE,
    view: Annotated[str, typer.Option(help="auto (chat template if any), chat or raw.")] = "auto",
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    storage: Annotated[
        str | None,
        typer.Option(
            help="On-disk dtype: float16 or float32 (default: float32 for gemma3-270m, else float16)."
        ),
    ] = None,
    cache: CacheOption = None,
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Only the first N prompts, in the dataset's order.")
    ] = None,
    token_budget: Annotated[int, typer.Option(help="Tokens per batch (batch size x longest prompt).")] = 2048,
    export: Annotated[
        Path | None, typer.Option(help="Also write the features as a plain NumPy .npz.")
    ] = None,
    ray_address: RayOption = None,
    workers: WorkersOption = None,
    worker_cpus: WorkerCpusOption = None,
) -> None:
    """Extract pooled prefill features of a dataset's prompts into the feature cache."""
    from prefill_router.data.dataset import RoutingDataset
    from prefill_router.encode import Encoder, FeatureStore, default_cache_dir, export_npz, extract_features

    session = ray_or_none(ray_address)  # before any work: a missing extra fails at once
    if export is not None:
        check_writable(export, what="--export file")
    dataset = RoutingDataset.load(data)
    if split is not None:
        dataset = dataset.select(split=split)
    if limit is not None:
        dataset = dataset.take(range(min(limit, dataset.n_prompts)))
    started = time.perf_counter()
    with console.status(f"loading encoder {encoder} ({dtype})"):
        model = Encoder(
            encoder, view=view, max_tokens=max_tokens, dtype=dtype,
            device="cpu" if session else device, cache_dir=cache, storage=storage,
        )  # fmt: skip
    store = FeatureStore(cache or default_cache_dir())
    if session is None:
        with encode_progress(dataset.n_prompts) as advance:
            stored = extract_features(
                model, dataset.prompts.tolist(), store, layers=layers, poolings=pooling,
                token_budget=token_budget, on_progress=advance,
            )  # fmt: skip
    else:
        from prefill_router.encode.distributed import extract_features_ray

        with session as ray:
            plan = plan_workers(ray, workers=workers, worker_cpus=worker_cpus, device=device)
            console.print(f"Ray: {plan.describe()} ({ray_address})")
            with encode_progress(dataset.n_prompts) as advance:
                stored = extract_features_ray(
                    ray, model, dataset.prompts.tolist(), store, plan, layers=layers, poolings=pooling,
                    token_budget=token_budget, cache_dir=cache, prompt_ids=dataset.prompt_ids.tolist(),
                    on_progress=advance,
                )  # fmt: skip
    elapsed = time.perf_counter() - started
    shape = " x ".join(map(str, stored.features.shape))
    console.print(
        f"[bold green]features[/] {shape} (prompts x poolings x layers x hidden, {model.storage}) "
        f"in {elapsed:.1f} s"
    )
    console.print(f"  stored at {stored.path}")
    where = model.device if session is None else f"Ray, {plan.describe()}"
    console.print(
        f"  encoder {model.name} ({model.view.name} view, {model.dtype}, {where}), "
        f"layers {layer_text(stored.key.layers)}, poolings {', '.join(stored.key.poolings)}"
    )
    console.print(
        f"  {stored.n_tokens:,} tokens; "
        f"{stored.n_truncated} prompts truncated to {model.view.max_tokens} tokens; "
        f"{stored.n_empty} empty; chunks computed {stored.computed_chunks}, reused {stored.reused_chunks}"
    )
    if export is not None:
        export_npz(stored, dataset.prompt_ids.tolist(), export)
        console.print(f"  exported {export}")


# -------------------------------------------------------------------------- probe
@app.command("probe")
def probe(
    data: DatasetArg,
    encoder: Annotated[
        list[str] | None, typer.Option(help="Encoder name or model folder; repeat to compare encoders.")
    ] = None,
    pooling: Annotated[str, typer.Option(help="mean or last.")] = "mean",
    targets: Annotated[str | None, typer.Option(help="Comma-separated target names (default: all).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N training prompts.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Save the per-target probe figure (PNG).")] = None,
    pca_k: Annotated[int, typer.Option(help="PCA dimensions after standardisation.")] = 128,
    folds: Annotated[int, typer.Option(help="Cross-validation folds.")] = 5,
    shrinkage: Annotated[
        float, typer.Option(help="J_lda shrinkage (share of the mean S_W eigenvalue).")
    ] = 0.1,
    dtype: Annotated[str, typer.Option(help="Encoder dtype: bfloat16 or float32.")] = DEFAULT_DTYPE,
    max_tokens: Annotated[int | None, typer.Option(help="Encoder truncation (default: 512).")] = None,
    cache: CacheOption = None,
) -> None:
    """Fisher separability, d_eff and CV-AUC of every layer for every target (training rows only)."""
    from prefill_router.data.dataset import RoutingDataset
    from prefill_router.encode import (
        Encoder,
        FeatureStore,
        default_cache_dir,
        extract_features,
        parse_poolings,
    )
    from prefill_router.encode.models import check_encoder_exists
    from prefill_router.probe import ProbeSettings, probe_layers

    # Everything that can fail without features fails here, before minutes of encoding.
    pooling_name = parse_poolings(pooling)
    if len(pooling_name) != 1:
        raise ConfigError("probe takes one pooling at a time: --pooling mean or --pooling last")
    settings = ProbeSettings(pca_k=pca_k, folds=folds, shrinkage=shrinkage)
    for path, what in ((json_out, "--json file"), (plot, "--plot file")):
        if path is not None:
            check_writable(path, what=what)
    dataset = RoutingDataset.load(data)
    train = dataset.select(split="train") if "train" in dataset.split_names() else dataset
    if targets:
        train = train.select(targets=[t.strip() for t in targets.split(",")])
    if limit is not None:
        train = train.take(range(min(limit, train.n_prompts)))
    if train.n_prompts < folds:
        raise DataError(
            f"{folds}-fold probes need at least {folds} training prompts; got {train.n_prompts}", source=data
        )
    names = encoder or ["smollm2-135m"]
    for name in names:  # every encoder known and installed before the first one encodes
        check_encoder_exists(name)
    store = FeatureStore(cache or default_cache_dir())
    reports = {}
    for name in names:
        with console.status(f"loading encoder {name} ({dtype})"):
            model = Encoder(name, dtype=dtype, max_tokens=max_tokens, cache_dir=cache)
        with encode_progress(train.n_prompts) as advance:
            stored = extract_features(model, train.prompts.tolist(), store, on_progress=advance)
        with console.status(f"probing {len(stored.key.layers)} layers x {len(train.targets)} targets"):
            report = probe_layers(
                stored.pooled(pooling_name[0]), train.labels, train.target_names, stored.key.layers, settings
            )
        report.settings.update(
            {"pooling": pooling_name[0], "encoder": model.name, "dtype": dtype, "n_rows": train.n_prompts}
        )
        reports[model.name] = report
        _print_probe(report, model.name)
    if len(reports) > 1:
        _print_encoder_comparison(reports)
    if json_out is not None:
        first = next(iter(reports.values())).to_json()
        if len(reports) > 1:
            first["encoders"] = {name: r.to_json() for name, r in reports.items()}
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(first, indent=1))
        console.print(f"report: {json_out}")
    if plot is not None:
        from prefill_router.probe_plot import plot_probes

        plot_probes(
            reports, plot, title=f"{data}: {pooling_name[0]} pooling, {train.n_prompts} training prompts"
        )
        console.print(f"figure: {plot}")


def _print_probe(report: Any, encoder: str) -> None:
    table = Table(
        "target", "best by AUC", "by J_lda (AUC, lost)", "by trace J (AUC, lost)", "ρ J_lda~AUC", "ρ J~AUC",
        "d_eff @best", "chosen",
        title=f"{encoder}: {report.settings['pooling']} pooling, PCA-{report.settings['pca_k']}, "
        f"{report.settings['folds']}-fold, {report.seconds:.1f} s",
    )  # fmt: skip
    for name, t in report.targets.items():
        if t.skipped:
            table.add_row(name, f"[yellow]skipped: {t.skipped}[/]", "", "", "", "", "", "")
            continue
        auc = {p.layer: p.cv_auc for p in t.layers}
        deff = {p.layer: p.d_eff for p in t.layers}
        table.add_row(
            name, f"L{t.best_by_auc} {auc[t.best_by_auc]:.3f}",
            f"L{t.best_by_j_lda} {auc[t.best_by_j_lda]:.3f} (-{t.auc_lost:.3f})",
            f"L{t.best_by_j} {auc[t.best_by_j]:.3f} (-{t.auc_lost_trace_j:.3f})",
            f"{t.spearman_j_lda_auc:+.2f}", f"{t.spearman_j_auc:+.2f}", f"{deff[t.best_by_auc]:.1f}",
            ",".join(map(str, t.chosen)),
        )  # fmt: skip
    console.print(table)
    for layer, reason in report.skipped_layers.items():
        console.print(f"  layer {layer} skipped: {reason}")


def _print_encoder_comparison(reports: dict[str, Any]) -> None:
    names = list(reports)
    table = Table("target", *[f"{n} best AUC" for n in names], "best encoder", title="encoder comparison")
    first = reports[names[0]]
    for target in first.targets:
        cells, best = [], ("", -1.0)
        for name in names:
            t = reports[name].targets.get(target)
            if t is None or not t.layers:
                cells.append("-")
                continue
            value = max(p.cv_auc for p in t.layers)
            cells.append(f"{value:.3f} (L{t.best_by_auc})")
            best = max(best, (name, value), key=lambda b: b[1])
        table.add_row(target, *cells, best[0])
    console.print(table)


@cache_app.command("info")
def cache_info(cache: CacheOption = None) -> None:
    """Where the feature cache is and how much disk it takes."""
    from prefill_router.encode import FeatureStore, default_cache_dir

    store = FeatureStore(cache or default_cache_dir())
    keys = sorted(store.features_dir.glob("*/key.json")) if store.features_dir.is_dir() else []
    console.print(f"{store.features_dir}: {store.size_bytes() / 1e6:,.1f} MB in {len(keys)} feature keys")
    for path in keys:
        key = json.loads(path.read_text())["key"]
        console.print(
            f"  {path.parent.name}: {key['encoder']} ({key['view']} view, {key['dtype']}, "
            f"max_tokens {key['max_tokens']}), layers {layer_text(tuple(key['layers']))}, "
            f"poolings {', '.join(key['poolings'])}"
        )


@cache_app.command("clear")
def cache_clear(cache: CacheOption = None) -> None:
    """Delete every cached feature (converted models stay)."""
    from prefill_router.encode import FeatureStore, default_cache_dir

    freed = FeatureStore(cache or default_cache_dir()).clear()
    console.print(f"freed {freed / 1e6:,.1f} MB")
