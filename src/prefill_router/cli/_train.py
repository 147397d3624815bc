"""`prefill-router fit`, `inspect` and `add-target`: build, read and extend router artifacts."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
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
    layer_text,
)
from prefill_router.encode.encoder import DEFAULT_DTYPE
from prefill_router.errors import ConfigError, DataError, PrefillRouterError
from prefill_router.train.fit import DEFAULT_ENCODERS, TrainSettings

DEFAULTS = TrainSettings()

if TYPE_CHECKING:
    import numpy as np

    from prefill_router.data.dataset import RoutingDataset
    from prefill_router.encode import Encoder
    from prefill_router.policy import Router
    from prefill_router.train import FitReport, LayerFeatures, ProgressCallback

SplitOption = Annotated[str, typer.Option(help="Train on this split (all rows when the data has no splits).")]
LimitOption = Annotated[int | None, typer.Option(help="Only the first N rows of the split, in file order.")]


@app.command("fit")
def fit(
    data: DatasetArg,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the router artifact folder.")
    ],
    encoder: Annotated[
        list[str] | None,
        typer.Option(
            help="Registered encoder name or a local model folder (default: "
            f"{' + '.join(DEFAULT_ENCODERS)}); repeat it to fuse encoders: each target reads blocks of each."
        ),
    ] = None,
    layers: Annotated[
        str, typer.Option(help="fisher (top J_lda per target), auc, all-mean, or a list '7,15,22'.")
    ] = str(DEFAULTS.layers),
    n_layers: Annotated[int, typer.Option(help="Layers per target for fisher / auc.")] = DEFAULTS.n_layers,
    pooling: Annotated[
        str, typer.Option(help="mean, last, auto (the better one per target) or both (a block of each).")
    ] = DEFAULTS.pooling,
    pca: Annotated[int, typer.Option("--pca", help="PCA dimensions per feature block.")] = DEFAULTS.pca_k,
    depth_tolerance: Annotated[
        float,
        typer.Option(
            help="Move every block to the shallowest layer that loses at most this share of J_lda on "
            "average (0: each target's best layer): the deepest layer read sets each decision's latency."
        ),
    ] = DEFAULTS.depth_tolerance,
    seeds: Annotated[int, typer.Option(help="Nets trained (one per seed).")] = DEFAULTS.seeds,
    keep: Annotated[
        int, typer.Option(help="Nets kept (lowest validation loss) and averaged.")
    ] = DEFAULTS.keep,
    seed: Annotated[
        int, typer.Option(help="First seed; everything is deterministic given it.")
    ] = DEFAULTS.seed,
    val_share: Annotated[
        float,
        typer.Option(
            help="Share of training prompts held out (grouped) for early stopping and temperature scaling."
        ),
    ] = DEFAULTS.val_share,
    calibration_share: Annotated[
        float,
        typer.Option(
            help="Share of prompts held out (grouped) of all training and kept with their labels: budgets "
            "are solved and quality floors certified on them (0: reuse the validation rows, no guarantee)."
        ),
    ] = DEFAULTS.calibration_share,
    init: Annotated[
        str,
        typer.Option(
            help="random, pretrained (start from the routing trunk shipped in the package: its blocks, "
            "its trunk and the heads of the targets it knows) or a trunk folder."
        ),
    ] = DEFAULTS.init,
    split: SplitOption = "train",
    limit: LimitOption = None,
    targets: Annotated[str | None, typer.Option(help="Comma-separated targets (default: all).")] = None,
    dtype: Annotated[str, typer.Option(help="Encoder dtype: bfloat16 or float32.")] = DEFAULT_DTYPE,
    max_tokens: Annotated[int | None, typer.Option(help="Encoder truncation (default: 512).")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the fit report as JSON.")
    ] = None,
    cache: CacheOption = None,
) -> None:
    """Fit a router: encode (cached), choose layers, transform, train the ensemble, calibrate, save."""
    from prefill_router.train import check_destination
    from prefill_router.train.trainer import RouterTrainer

    started = time.perf_counter()
    # Everything that can fail without features fails here, before minutes of encoding.
    settings = TrainSettings(
        layers=_parse_layer_option(layers), n_layers=n_layers, pooling=pooling, pca_k=pca,
        seeds=seeds, keep=keep, seed=seed, val_share=val_share, init=init, depth_tolerance=depth_tolerance,
        calibration_share=calibration_share,
    )  # fmt: skip
    check_destination(output)
    if json_out is not None:
        check_writable(json_out, what="--json file")
    trainer = RouterTrainer(encoder, settings=settings, dtype=dtype, max_tokens=max_tokens, cache_dir=cache)
    train = _training_rows(data, split, limit, targets)
    trainer.check(train, source=data)
    with console.status(f"loading encoders {', '.join(name for name, _ in trainer.encoders)}"):
        models = trainer.load_encoders()
    features = [_features(model, train, cache) for model in models]
    fit_started = time.perf_counter()
    with _fit_progress() as notify:
        trainer.on_progress = notify
        router, report = trainer.fit_features(train, features, models)
    fit_seconds = time.perf_counter() - fit_started
    router.save(output)
    _print_fit(
        report,
        f"{train.n_prompts} training rows of {data} ({report.n_fit} fit + {report.n_val} validation"
        f" + {report.n_calibration} calibration)",
    )
    console.print(
        f"[bold green]router[/] {output}  ({len(router.targets)} targets, blocks "
        f"{', '.join(b.name for b in router.transform.blocks)}, {router.ensemble.n_members} nets)"
    )
    total = time.perf_counter() - started
    console.print(f"time: {total:.1f} s in all; {fit_seconds:.1f} s fitting ({_stage_text(report.seconds)})")
    if json_out is not None:
        blob = report.to_json() | {"seconds_total": total, "seconds_fit": fit_seconds, "router": str(output)}
        _write_json(json_out, blob)


@app.command("add-target")
def add_target_command(
    router_path: RouterArg,
    data: DatasetArg,
    target: Annotated[str, typer.Option(help="The new target: a label column of DATA.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here instead of replacing ROUTER (atomically)."),
    ] = None,
    split: SplitOption = "train",
    limit: LimitOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the new head.")] = 0,
    cache: CacheOption = None,
) -> None:
    """Add a target to a router without retraining: one new head on the frozen trunk."""
    from prefill_router.data.costs import check_priced
    from prefill_router.train import RouterModel, add_target, check_destination, check_new_target

    check_destination(output or router_path)
    router = RouterModel.load(router_path, cache_dir=cache)
    train = _training_rows(data, split, limit, None)
    check_priced(check_new_target(router, train, target).targets, source=data)  # before any encoding
    with console.status(f"loading encoders {', '.join(e.name for e in router.encoders)}"):
        models = router.loaded_encoders()
    features = [_features(model, train, cache) for model in models]
    with console.status(f"training a head for {target} on {router.ensemble.n_members} frozen trunks"):
        new, report = add_target(router, train, target, features, TrainSettings(seed=seed))
    destination = output or router_path
    new.save(destination)
    _print_fit(report, f"new head for {target}: {report.n_fit} fit + {report.n_val} validation rows")
    console.print(f"[bold green]router[/] {destination}  ({len(new.targets)} targets)")


@app.command("inspect")
def inspect(
    router_path: RouterArg,
    json_flag: Annotated[bool, typer.Option("--json", help="Print router.json instead of tables.")] = False,
    cache: CacheOption = None,
) -> None:
    """What a router artifact holds: encoder, targets, layers, net, calibration, training data."""
    from prefill_router.policy import Router

    router = Router.load(router_path, check_encoder=False)
    document = json.loads((router_path / "router.json").read_text(encoding="utf-8"))
    if json_flag:
        console.print_json(json.dumps(document))
        return
    try:
        router.check_encoder(cache)
        encoder_state = "[green]installed encoders match[/]"
    except PrefillRouterError as exc:
        encoder_state = f"[red]{exc}[/]"
    info = router.info
    version = document["format_version"]
    created = f"{info.get('created_by', '?')}, {info.get('created', '?')}"
    console.print(f"[bold]{router_path}[/]  format version {version}, {created}")
    for index, identity in enumerate(router.encoders):
        label = "encoder" if len(router.encoders) == 1 else f"encoder e{index}"
        console.print(
            f"{label}: {identity.name} (sha256 {identity.weights_sha256[:16]}…, {identity.view} view, "
            f"{identity.dtype}, max_tokens {identity.max_tokens}), runs layers "
            f"{layer_text(router.transform.layers_of(index))}"
        )
    console.print(encoder_state)
    _print_targets(router)
    net = router.to_json()["net"]
    console.print(
        "blocks: " + ", ".join(f"{b.name} ({b.mean.shape[0]} -> {b.n_out})" for b in router.transform.blocks)
    )  # fmt: skip
    console.print(
        f"net: {net['d_in']} -> {' -> '.join(map(str, net['hidden']))} -> {net['n_targets']} "
        f"(SharedTrunkNet), ensemble of {net['members']}"
    )
    training = info.get("training", {})
    if training:
        console.print(
            f"training: {training.get('n_rows')} rows ({training.get('n_fit')} fit + {training.get('n_val')} "
            f"validation + {training.get('n_calibration', 0)} calibration), "
            f"data sha256 {str(training.get('fingerprint_sha256'))[:16]}…"
        )
    _print_calibration(router)
    settings = info.get("settings")
    if settings:
        console.print("settings: " + json.dumps(settings, separators=(", ", ": ")), soft_wrap=True)
    for added in info.get("added_targets", []):
        console.print(f"added without retraining: {added['name']} (validation AUC {added['val_auc']:.3f})")


def _print_calibration(router: Router) -> None:
    """Where the calibration rows come from, and what the default floor certifies on them."""
    rows = router.calibration
    if rows is None:
        console.print("calibration rows: none (budgets and quality floors need `prefill-router calibrate`)")
        return
    labels = "labelled" if rows.labels is not None else "no labels (run `prefill-router calibrate`)"
    held = "held out of training" if rows.independent else "the validation rows (not held out)"
    console.print(f"calibration rows: {len(rows):,} from {rows.source}, {held}, {labels}")
    floor = router.default_floor()
    if floor is not None:
        try:
            console.print(f"default floor: {router.certify(floor).message}")
        except PrefillRouterError as exc:
            console.print(f"default floor: [red]{exc}[/]")


# ----------------------------------------------------------------------- helpers
def _parse_layer_option(value: str) -> str | tuple[int, ...]:
    from prefill_router.probe import STRATEGIES

    if value in STRATEGIES:
        return value
    try:
        layers = tuple(int(part) for part in value.split(","))
    except ValueError as exc:
        raise ConfigError(
            f"--layers must be one of {', '.join(STRATEGIES)} or a comma-separated list of layers; "
            f"got {value!r}"
        ) from exc
    return layers


@app.command("calibrate")
def calibrate_command(
    router_path: RouterArg,
    data: DatasetArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here instead of replacing ROUTER (atomically)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="The split of DATA to calibrate on (required when DATA has splits)."),
    ] = None,
    limit: LimitOption = None,
    cache: CacheOption = None,
) -> None:
    """Replace a router's calibration rows with labelled prompts, without retraining.

    Quality floors are certified, and budgets solved, on these rows: labels of your own traffic
    (prompts the router was never trained on) are the best calibration set.
    """
    from prefill_router.cli._route import certificate_line
    from prefill_router.data.costs import check_priced
    from prefill_router.policy import Router
    from prefill_router.train import check_destination
    from prefill_router.train.trainer import stored_features

    check_destination(output or router_path)
    router = Router.load(router_path, cache_dir=cache)
    check_priced(router.target_info, source=str(router_path))
    rows = _calibration_rows(data, split, limit)
    labels = _router_labels(rows, router.targets, data)  # before any encoding
    with console.status(f"loading encoders {', '.join(e.name for e in router.encoders)}"):
        models = router.loaded_encoders()
    features = []
    for index, model in enumerate(models):
        with encode_progress(rows.n_prompts) as advance:
            features.append(
                stored_features(
                    model,
                    rows.prompts.tolist(),
                    cache,
                    layers=router.transform.layers_of(index),
                    poolings=router.transform.poolings_of(index),
                    on_encode=advance,
                )
            )
    new = router.with_calibration(features, rows.prompts.tolist(), labels, source=f"{data}:{split or 'all'}")
    destination = output or router_path
    new.save(destination)
    complete = int((labels == labels).all(axis=1).sum())  # NaN != NaN: rows with every label
    console.print(
        f"calibration rows: {rows.n_prompts:,} prompts of {data} ({complete:,} labelled for every target)"
    )
    floor = new.default_floor()
    if floor is not None:
        console.print(certificate_line(new.certify(floor).to_json()))
    console.print(f"[bold green]router[/] {destination}")


def _calibration_rows(data: str, split: str | None, limit: int | None) -> RoutingDataset:
    from prefill_router.data.dataset import RoutingDataset

    dataset = RoutingDataset.load(data)
    names = dataset.split_names()
    if split is None and names:
        raise ConfigError(
            f"{data} has splits ({', '.join(names)}): name the one to calibrate on with --split "
            "(rows the router was not trained on)"
        )
    if split is not None:
        if split not in names:
            raise DataError(f"no split {split!r}; the splits are {', '.join(names) or 'none'}", source=data)
        dataset = dataset.select(split=split)
    if limit is not None:
        dataset = dataset.take(range(min(limit, dataset.n_prompts)))
    return dataset


def _router_labels(rows: RoutingDataset, targets: Sequence[str], data: str) -> np.ndarray:
    """(N, M) labels of ``rows`` in the router's target order; every target must be a column."""
    missing = [t for t in targets if t not in rows.target_names]
    if missing:
        raise DataError(f"no labels for the router's targets {', '.join(missing)}", source=data)
    return rows.labels[:, [rows.target_index(t) for t in targets]]


def _training_rows(data: str, split: str, limit: int | None, targets: str | None) -> RoutingDataset:
    from prefill_router.data.dataset import RoutingDataset

    dataset = RoutingDataset.load(data)
    names = dataset.split_names()
    if split in names:
        dataset = dataset.select(split=split)
    elif names:
        raise DataError(f"no split {split!r}; the splits are {', '.join(names)}", source=data)
    else:
        err_console.print(f"note: {data} has no splits; training on all {dataset.n_prompts} rows")
    if targets:
        dataset = dataset.select(targets=[t.strip() for t in targets.split(",")])
    if limit is not None:
        dataset = dataset.take(range(min(limit, dataset.n_prompts)))
    return dataset


def _load_encoder(name: str, *, dtype: str, max_tokens: int | None, cache: Path | None) -> Encoder:
    from prefill_router.encode import Encoder

    with console.status(f"loading encoder {name} ({dtype})"):
        return Encoder(name, dtype=dtype, max_tokens=max_tokens, cache_dir=cache)


def _features(model: Encoder, dataset: RoutingDataset, cache: Path | None) -> LayerFeatures:
    """Every layer, both poolings (the ``encode`` defaults, so its cache is reused)."""
    from prefill_router.train.trainer import stored_features

    console.print(f"features of {model.name} ({model.dtype})")
    with encode_progress(dataset.n_prompts) as advance:
        return stored_features(model, dataset.prompts.tolist(), cache, on_encode=advance)


@contextlib.contextmanager
def _fit_progress() -> Iterator[ProgressCallback]:
    """A rich progress bar over the fit's stages; training advances per epoch."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {
        "probe": "choosing layers (Fisher J_lda probes)",
        "transform": "standardising + PCA",
        "train": "training the ensemble",
        "calibrate": "calibrating",
    }
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), console=err_console, transient=True,
    )  # fmt: skip
    task = progress.add_task("fitting", total=1)

    def notify(stage: str, done: int, total: int) -> None:
        progress.update(task, description=labels.get(stage, stage), completed=done, total=max(total, 1))

    with progress:
        yield notify


def _print_fit(report: FitReport, title: str) -> None:
    table = Table("target", "blocks", "val AUC", "ECE before", "ECE after", "T", "Brier", title=title)
    for name, auc in report.val_auc.items():
        table.add_row(
            name, ", ".join(report.blocks.get(name, [])) or "-",
            f"{auc:.3f}", f"{report.ece_before[name]:.3f}", f"{report.ece_after[name]:.3f}",
            f"{report.temperatures[name]:.2f}", f"{report.brier[name]:.3f}",
        )  # fmt: skip
    console.print(table)
    aucs = [v for v in report.val_auc.values() if v == v]
    if len(aucs) > 1:
        before = sum(report.ece_before.values()) / len(report.ece_before)
        after = sum(report.ece_after.values()) / len(report.ece_after)
        console.print(
            f"mean validation AUC [bold]{sum(aucs) / len(aucs):.3f}[/]; mean ECE {before:.3f} -> {after:.3f}"
        )


def _print_targets(router: Router) -> None:
    metrics = router.info.get("metrics", {})
    table = Table(
        "target", "$/M in", "$/M out", "out tokens", "blocks", "val AUC", "ECE", "T", title="targets"
    )
    for j, t in enumerate(router.target_info):
        block = ", ".join(router.transform.blocks[i].name for i in router.transform.target_blocks[t.name])
        auc = metrics.get("val_auc", {}).get(t.name)
        ece = metrics.get("ece_after", {}).get(t.name)
        table.add_row(
            t.name, _price(t.input_usd_per_mtok), _price(t.output_usd_per_mtok),
            f"{router.output_tokens[j]:.0f}", block,
            "-" if auc is None else f"{auc:.3f}", "-" if ece is None else f"{ece:.3f}",
            f"{router.temperatures[j]:.2f}",
        )  # fmt: skip
    console.print(table)


def _price(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _stage_text(seconds: dict[str, float]) -> str:
    return ", ".join(f"{stage} {value:.1f} s" for stage, value in seconds.items())


def _write_json(path: Path, blob: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(blob, indent=1))
    console.print(f"report: {path}")
