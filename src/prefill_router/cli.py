"""The ``prefill-router`` command line: thin typer commands, one group per pipeline stage.

Errors of ours become one line on stderr and the exit code of their class
(:mod:`prefill_router.errors`); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from prefill_router import __version__
from prefill_router._files import atomic_path
from prefill_router.errors import ConfigError, PrefillRouterError

app = typer.Typer(
    name="prefill-router",
    help="Route each LLM request to the cheapest model that will answer it correctly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Import, inspect and price routing datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
cache_app = typer.Typer(help="Inspect or empty the feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

# Piped output keeps full model names: rich would otherwise assume 80 columns.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 140
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)
_state = {"debug": False}

DatasetArg = Annotated[str, typer.Argument(help="A routing dataset (.parquet), or the word 'bundled'.")]
CacheOption = Annotated[
    Path | None,
    typer.Option(help="Cache folder (default: $PREFILL_ROUTER_CACHE or ~/.cache/prefill-router)."),
]


class ImportKind(StrEnum):
    """The source formats ``data import`` understands."""

    llmrouter = "llmrouter"
    mmlu_pro = "mmlu-pro"
    routellm = "routellm"
    routerbench = "routerbench"
    long_csv = "long-csv"


def _version(value: bool) -> None:
    if value:
        console.print(f"prefill-router {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _state["debug"] = debug


# --------------------------------------------------------------------------- data
@data_app.command("import")
def data_import(
    kind: Annotated[ImportKind, typer.Argument(help="The source format.")],
    src: Annotated[Path, typer.Argument(help="The source file or folder.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output Parquet file.")],
    prices: Annotated[
        Path | None, typer.Option(help="YAML/JSON price table (target -> input/output USD per M tokens).")
    ] = None,
    split_seed: Annotated[int, typer.Option(help="Seed of the split assigned to sources without one.")] = 0,
    keep_contaminated: Annotated[
        bool, typer.Option(help="routellm: keep rows upstream lists as contaminated.")
    ] = False,
) -> None:
    """Convert a public routing dataset into prefill-router's Parquet format."""
    from prefill_router.data.importers import import_dataset, reprice
    from prefill_router.data.prices import builtin_prices, load_price_file

    options: dict[str, Any] = {"split_seed": split_seed}
    if kind is ImportKind.routellm:
        options["keep_contaminated"] = keep_contaminated
    if kind is ImportKind.mmlu_pro:
        options["progress"] = True
    started = time.perf_counter()
    result = import_dataset(kind.value, src, prices=builtin_prices(), **options)
    dataset = result.dataset
    if prices is not None:
        dataset = reprice(dataset, load_price_file(prices))
    dataset.save(out)
    splits = _split_text(Counter(s or "(none)" for s in dataset.splits))
    console.print(
        f"[bold green]wrote[/] {out}: {dataset.n_prompts} prompts x {len(dataset.targets)} targets "
        f"({splits}) in {time.perf_counter() - started:.1f} s"
    )
    for note in result.notes:
        console.print(f"  - {note}")


@data_app.command("info")
def data_info(
    data: DatasetArg,
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also save a cost-accuracy figure (PNG).")] = None,
) -> None:
    """Per-target accuracy and cost, oracle, best single, headroom and agreement zones."""
    from prefill_router.data.dataset import RoutingDataset
    from prefill_router.data.summary import summarise

    dataset = RoutingDataset.load(data)
    if split is not None:
        dataset = dataset.select(split=split)
    summary = summarise(dataset)
    if plot is not None:
        from prefill_router.data.plots import plot_summary

        plot_summary(summary, plot, title=f"{data}{f' ({split})' if split else ''}")
    if as_json:
        print(json.dumps(summary.to_json(), indent=2))
        return
    _print_summary(summary, title=f"{data}" + (f" — split {split}" if split else ""))
    if plot is not None:
        console.print(f"figure: {plot}")


@data_app.command("prices")
def data_prices(
    prices: Annotated[Path | None, typer.Option(help="A price file layered over the built-in table.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the price table (built-in, or with your file over it) and where each price came from."""
    from prefill_router.data.prices import price_table

    table = price_table(prices)
    rows: list[dict[str, Any]] = [
        {
            "name": e.name,
            "input_usd_per_mtok": e.input_usd_per_mtok,
            "output_usd_per_mtok": e.output_usd_per_mtok,
            "source": e.source,
            "derived": e.derived,
        }
        for e in table.entries
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    out = Table("target", "$/M in", "$/M out", "source", title=f"{len(rows)} prices")
    for row in rows:
        source = row["source"] + (" [yellow](derived)[/]" if row["derived"] else "")
        out.add_row(
            row["name"], f"{row['input_usd_per_mtok']:.3g}", f"{row['output_usd_per_mtok']:.3g}", source
        )
    console.print(out)


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
        typer.Option(help="Longer prompts keep their start and end [default: 512 or the context]."),
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="bfloat16 (fast; AUCs equal to float32's) or float32.")
    ] = "bfloat16",
    view: Annotated[str, typer.Option(help="auto (chat template if any), chat or raw.")] = "auto",
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    cache: CacheOption = None,
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Only the first N prompts, in the dataset's order.")
    ] = None,
    token_budget: Annotated[int, typer.Option(help="Tokens per batch (batch size x longest prompt).")] = 2048,
    export: Annotated[
        Path | None, typer.Option(help="Also write the features as a plain NumPy .npz.")
    ] = None,
) -> None:
    """Extract pooled prefill features of a dataset's prompts into the feature cache."""
    from prefill_router.data.dataset import RoutingDataset
    from prefill_router.encode import Encoder, FeatureStore, default_cache_dir, export_npz, extract_features

    dataset = RoutingDataset.load(data)
    if split is not None:
        dataset = dataset.select(split=split)
    if limit is not None:
        dataset = dataset.take(range(min(limit, dataset.n_prompts)))
    started = time.perf_counter()
    with console.status(f"loading encoder {encoder} ({dtype})"):
        model = Encoder(
            encoder, view=view, max_tokens=max_tokens, dtype=dtype, device=device, cache_dir=cache
        )
    store = FeatureStore(cache or default_cache_dir())
    with _encode_progress(dataset.n_prompts) as advance:
        stored = extract_features(
            model, dataset.prompts.tolist(), store, layers=layers, poolings=pooling,
            token_budget=token_budget, on_progress=advance,
        )  # fmt: skip
    elapsed = time.perf_counter() - started
    shape = " x ".join(map(str, stored.features.shape))
    console.print(
        f"[bold green]features[/] {shape} (prompts x poolings x layers x hidden, float16) in {elapsed:.1f} s"
    )
    console.print(f"  stored at {stored.path}")
    console.print(
        f"  encoder {model.name} ({model.view.name} view, {model.dtype}, {model.device}), "
        f"layers {_layer_text(stored.key.layers)}, poolings {', '.join(stored.key.poolings)}"
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
    dtype: Annotated[str, typer.Option(help="Encoder dtype: bfloat16 or float32.")] = "bfloat16",
    max_tokens: Annotated[int | None, typer.Option(help="Encoder truncation [default: 512].")] = None,
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
    from prefill_router.probe import ProbeSettings, probe_layers

    pooling_name = parse_poolings(pooling)
    if len(pooling_name) != 1:
        raise ConfigError("probe takes one pooling at a time: --pooling mean or --pooling last")
    dataset = RoutingDataset.load(data)
    train = dataset.select(split="train") if "train" in dataset.split_names() else dataset
    if targets:
        train = train.select(targets=[t.strip() for t in targets.split(",")])
    if limit is not None:
        train = train.take(range(min(limit, train.n_prompts)))
    settings = ProbeSettings(pca_k=pca_k, folds=folds, shrinkage=shrinkage)
    store = FeatureStore(cache or default_cache_dir())
    reports = {}
    for name in encoder or ["smollm2-135m"]:
        with console.status(f"loading encoder {name} ({dtype})"):
            model = Encoder(name, dtype=dtype, max_tokens=max_tokens, cache_dir=cache)
        with _encode_progress(train.n_prompts) as advance:
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
            f"max_tokens {key['max_tokens']}), layers {_layer_text(tuple(key['layers']))}, "
            f"poolings {', '.join(key['poolings'])}"
        )


@cache_app.command("clear")
def cache_clear(cache: CacheOption = None) -> None:
    """Delete every cached feature (converted models stay)."""
    from prefill_router.encode import FeatureStore, default_cache_dir

    freed = FeatureStore(cache or default_cache_dir()).clear()
    console.print(f"freed {freed / 1e6:,.1f} MB")


def _layer_text(layers: tuple[int, ...]) -> str:
    if list(layers) == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


@contextlib.contextmanager
def _encode_progress(total: int) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar with prompts/s, tokens/s and ETA; yields its advance(n_prompts, n_tokens)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]encoding"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err_console, transient=True,
    )  # fmt: skip
    task = progress.add_task("encode", total=total, rate="")
    started, counts = time.perf_counter(), {"prompts": 0, "tokens": 0}

    def advance(n_prompts: int, n_tokens: int) -> None:
        counts["prompts"] += n_prompts
        counts["tokens"] += n_tokens
        seconds = max(time.perf_counter() - started, 1e-9)
        rate = f"{counts['prompts'] / seconds:.1f} prompts/s, {counts['tokens'] / seconds:,.0f} tokens/s"
        progress.update(task, advance=n_prompts, rate=rate)

    with progress:
        yield advance


# ------------------------------------------------------------------------ printing
def _split_text(counts: dict[str, int]) -> str:
    """'test 381, train 5608' from split name -> row count."""
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value * 1000:.4f}"


def _print_summary(summary: Any, title: str) -> None:
    table = Table("target", "accuracy", "labelled", "$/M in", "$/M out", "$ per 1k prompts", title=title)
    best = summary.best_single["name"]
    for t in sorted(summary.targets, key=lambda t: -t.accuracy):
        price_in = (
            "-"
            if t.input_usd_per_mtok is None
            else f"{t.input_usd_per_mtok:.3g}" + ("*" if t.price_derived else "")
        )
        price_out = "-" if t.output_usd_per_mtok is None else f"{t.output_usd_per_mtok:.3g}"
        name = f"[bold]{t.name}[/]" if t.name == best else t.name
        table.add_row(
            name, f"{t.accuracy:.3f}", str(t.n_labeled), price_in, price_out, _money(t.mean_cost_usd)
        )
    console.print(table)
    if any(t.price_derived for t in summary.targets):
        console.print("  * price derived from the parameter count (no public list price)")
    zones = summary.agreement
    savings = summary.oracle_cost_savings
    lines = [
        f"prompts: {summary.n_prompts} ({_split_text(summary.splits)}); "
        f"complete rows (every target labelled): {summary.n_complete}",
        f"oracle accuracy: [bold]{summary.oracle_accuracy:.3f}[/] "
        f"at {_money(summary.oracle_cost_usd)} per 1k prompts"
        + (
            f" ({savings:.1%} cheaper than always {summary.most_expensive['name']})"
            if savings is not None
            else ""
        ),
        f"best single: [bold]{best}[/] {summary.best_single['accuracy']:.3f}   "
        f"headroom (oracle - best single): [bold]{summary.headroom:+.3f}[/]",
        f"agreement: all correct {zones['all_correct']:.1%} | disagree {zones['disagree']:.1%} "
        f"(where routing can help) | all wrong {zones['all_wrong']:.1%}",
        f"prompts duplicated across splits: {summary.duplicated_across_splits}",
    ]
    for line in lines:
        console.print(line)


# ---------------------------------------------------------------------------- entry
def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (errors of ours become one line)."""
    _state["debug"] = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        # Standalone mode: typer prints usage errors itself and raises SystemExit with their code.
        app(args=argv, prog_name="prefill-router")
    except PrefillRouterError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
