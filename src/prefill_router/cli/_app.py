"""The shared pieces of the command line: the typer app, consoles, common options and helpers."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from prefill_router._ray import LOCAL, ray_session, require_ray
from prefill_router._version import __version__
from prefill_router.errors import PrefillRouterError

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
RouterArg = Annotated[
    Path,
    typer.Argument(help="A router artifact folder (router.json + router.safetensors).", metavar="ROUTER"),
]
RayOption = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        help="Run on Ray: a cluster address (auto, ray://host:10001), or no value for a local Ray "
        "instance sized to this machine. Needs the ray extra.",
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(help="Ray workers, one encoder each (default: one per GPU, else CPUs / --worker-cpus)."),
]
WorkerCpusOption = Annotated[
    int | None, typer.Option(help="CPUs (torch threads) per Ray worker on CPU clusters (default: 1).")
]
# typer has no option with an optional value, so a bare `--ray` becomes `--ray=local` before parsing.
_OPTIONAL_VALUES = {"--ray": LOCAL}


def with_optional_values(argv: list[str]) -> list[str]:
    """``argv`` with each bare optional-value option (``--ray`` last, or before another option)
    given its default value, e.g. ``[..., "--ray", "-o", "x"]`` -> ``[..., "--ray=local", "-o", "x"]``."""
    out = []
    for i, token in enumerate(argv):
        bare = token in _OPTIONAL_VALUES and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
        out.append(f"{token}={_OPTIONAL_VALUES[token]}" if bare else token)
    return out


def ray_or_none(address: str | None) -> contextlib.AbstractContextManager[Any] | None:
    """The Ray session ``--ray`` asks for (not entered yet), or ``None`` without ``--ray``.

    Raises:
        MissingDependencyError: ``--ray`` without the ray extra (checked now, before any work).
    """
    if address is None:
        return None
    require_ray()
    return ray_session(address)


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


def layer_text(layers: tuple[int, ...]) -> str:
    if list(layers) == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


@contextlib.contextmanager
def encode_progress(total: int | None, label: str = "encoding") -> Iterator[Callable[..., None]]:
    """A rich progress bar with prompts/s, tokens/s and ETA; yields its advance(n_prompts, n_tokens=0).

    ``total=None`` (a count not known in advance) shows a bar without an end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err_console, transient=True,
    )  # fmt: skip
    task = progress.add_task("encode", total=total, rate="")
    started, counts = time.perf_counter(), {"prompts": 0, "tokens": 0}

    def advance(n_prompts: int, n_tokens: int = 0) -> None:
        counts["prompts"] += n_prompts
        counts["tokens"] += n_tokens
        seconds = max(time.perf_counter() - started, 1e-9)
        rate = f"{counts['prompts'] / seconds:.1f} prompts/s"
        if counts["tokens"]:
            rate += f", {counts['tokens'] / seconds:,.0f} tokens/s"
        progress.update(task, advance=n_prompts, rate=rate)

    with progress:
        yield advance


# ------------------------------------------------------------------------ printing
def split_text(counts: dict[str, int]) -> str:
    """'test 381, train 5608' from split name -> row count."""
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


def money(value: float | None) -> str:
    return "-" if value is None else f"${value * 1000:.4f}"


# ---------------------------------------------------------------------------- entry
def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (errors of ours become one line)."""
    argv = with_optional_values(sys.argv[1:] if argv is None else argv)
    _state["debug"] = "--debug" in argv
    try:
        # Standalone mode: typer prints usage errors itself and raises SystemExit with their code.
        app(args=argv, prog_name="prefill-router")
    except PrefillRouterError as exc:
        if _state["debug"]:
            raise
        # escaped: messages hold brackets such as pip install 'prefill-router[serve]'
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
