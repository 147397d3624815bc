"""`prefill-router data ...`: import, inspect and price routing datasets."""

from __future__ import annotations

import json
import time
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from prefill_router.cli._app import (
    DatasetArg,
    console,
    data_app,
    money,
    split_text,
)
from prefill_router.errors import ConfigError


class ImportKind(StrEnum):
    """The source formats ``data import`` understands."""

    llmrouter = "llmrouter"
    mmlu_pro = "mmlu-pro"
    routellm = "routellm"
    routerbench = "routerbench"
    long_csv = "long-csv"


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
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="routerbench: read a .pkl/.pickle file. Unpickling runs code stored in the file: "
            "only for files you trust.",
        ),
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
    if kind is ImportKind.routerbench:
        options["allow_pickle"] = allow_pickle
    elif allow_pickle:
        raise ConfigError(f"--allow-pickle applies to routerbench only (no {kind.value} file is a pickle)")
    started = time.perf_counter()
    result = import_dataset(kind.value, src, prices=builtin_prices(), **options)
    dataset = result.dataset
    if prices is not None:
        dataset = reprice(dataset, load_price_file(prices))
    dataset.save(out)
    splits = split_text(Counter(s or "(none)" for s in dataset.splits))
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
    data: Annotated[
        str | None,
        typer.Argument(
            help="A routing dataset (or 'bundled'): show its targets' prices instead of the table."
        ),
    ] = None,
    prices: Annotated[Path | None, typer.Option(help="A price file layered over the built-in table.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the price table (built-in, or with your file over it), or the prices a dataset's targets
    carry (with --prices, as that file would reprice them), and where each price came from."""
    rows = _price_rows(data, prices)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    title = f"{len(rows)} prices" + (f" of the targets of {data}" if data is not None else "")
    out = Table("target", "$/M in", "$/M out", "source", title=title)
    for row in rows:
        if row["input_usd_per_mtok"] is None or row["output_usd_per_mtok"] is None:
            out.add_row(row["name"], "-", "-", "[red]no price[/] (pass --prices FILE to data import)")
            continue
        source = (row["source"] or "-") + (" [yellow](derived)[/]" if row["derived"] else "")
        out.add_row(
            row["name"], f"{row['input_usd_per_mtok']:.3g}", f"{row['output_usd_per_mtok']:.3g}", source
        )
    console.print(out)


def _price_rows(data: str | None, prices: Path | None) -> list[dict[str, Any]]:
    """One row per price: the table's entries, or the dataset's targets (repriced by ``prices``)."""
    from prefill_router.data.prices import load_price_file, price_table

    if data is None:
        return [
            {"name": e.name, "input_usd_per_mtok": e.input_usd_per_mtok,
             "output_usd_per_mtok": e.output_usd_per_mtok, "source": e.source, "derived": e.derived}
            for e in price_table(prices).entries
        ]  # fmt: skip
    from prefill_router.data.dataset import RoutingDataset
    from prefill_router.data.importers import reprice

    dataset = RoutingDataset.load(data)
    if prices is not None:
        dataset = reprice(dataset, load_price_file(prices))
    return [
        {"name": t.name, "input_usd_per_mtok": t.input_usd_per_mtok,
         "output_usd_per_mtok": t.output_usd_per_mtok, "source": t.price_source, "derived": t.price_derived}
        for t in dataset.targets
    ]  # fmt: skip


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
            name, f"{t.accuracy:.3f}", str(t.n_labeled), price_in, price_out, money(t.mean_cost_usd)
        )
    console.print(table)
    if any(t.price_derived for t in summary.targets):
        console.print("  * price derived from the parameter count (no public list price)")
    zones = summary.agreement
    savings = summary.oracle_cost_savings
    lines = [
        f"prompts: {summary.n_prompts} ({split_text(summary.splits)}); "
        f"complete rows (every target labelled): {summary.n_complete}",
        f"oracle accuracy: [bold]{summary.oracle_accuracy:.3f}[/] "
        f"at {money(summary.oracle_cost_usd)} per 1k prompts"
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
