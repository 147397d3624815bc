"""`prefill-router route` and `route-batch`: decisions for one prompt, or for a whole prompt file."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from prefill_router._ray import plan_workers
from prefill_router.cli._app import (
    CacheOption,
    RayOption,
    RouterArg,
    WorkerCpusOption,
    WorkersOption,
    app,
    console,
    encode_progress,
    err_console,
    ray_or_none,
)
from prefill_router.errors import ConfigError

BudgetOption = Annotated[
    str | None,
    typer.Option(
        help="Budget policy: '$0.0004' USD per request, '30%' of the most expensive target, or a μ."
    ),
]
LambdaOption = Annotated[float | None, typer.Option("--lambda", help="λ-utility policy, λ in [0, 1].")]
ToleranceOption = Annotated[
    float | None, typer.Option(help="Tolerance policy: cheapest within τ of the best p.")
]
AllowOption = Annotated[str | None, typer.Option(help="Comma-separated targets allowed for this request.")]
MaxCostOption = Annotated[float | None, typer.Option(help="Hard cap in USD for this request.")]


@app.command("route")
def route(
    router_path: RouterArg,
    prompt: Annotated[str, typer.Argument(help="The prompt to route.")],
    budget: BudgetOption = None,
    lambda_: LambdaOption = None,
    tolerance: ToleranceOption = None,
    allow: AllowOption = None,
    max_cost: MaxCostOption = None,
    json_flag: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
    cache: CacheOption = None,
) -> None:
    """One routing decision: the chosen target, every probability and cost, and why."""
    from prefill_router.data.costs import check_priced
    from prefill_router.train import Router

    policy, knob, spend = _policy_options(budget, lambda_, tolerance)
    router = Router.load(router_path, cache_dir=cache)
    check_priced(router.target_info, source=str(router_path))  # before the encoder loads
    allowed = _allowed(allow)
    with console.status(f"loading encoder {', '.join(e.name for e in router.encoders)}"):
        router.loaded_encoders()  # load now, so the spinner covers it
    decision = router.route(
        prompt, policy=policy, knob=knob, budget=spend, allowed=allowed, max_cost=max_cost
    )
    if json_flag:
        console.print_json(json.dumps(decision.to_json()))
        return
    table = Table("target", "P(correct)", "cost USD", title=f"route: {decision.reason}")
    for name in router.targets:
        mark = "[bold green]→ [/]" if name == decision.target else "  "
        cost = decision.costs_usd[name]
        table.add_row(mark + name, f"{decision.probabilities[name]:.3f}", f"{cost:.6f}")
    console.print(table)
    console.print(f"[bold]{decision.target}[/]")


def _policy_options(
    budget: str | None, lambda_: float | None, tolerance: float | None
) -> tuple[str, float | None, Any]:
    from prefill_router.policy import Budget

    chosen = [
        name
        for name, value in (("budget", budget), ("lambda", lambda_), ("tolerance", tolerance))
        if value is not None
    ]
    if len(chosen) > 1:
        raise ConfigError(f"choose one policy; got {' and '.join('--' + c for c in chosen)}")
    if lambda_ is not None:
        return "lambda", lambda_, None
    if tolerance is not None:
        return "tolerance", tolerance, None
    if budget is None:
        return "budget", 0.0, None
    text = budget.strip()
    try:
        if text.startswith("$"):
            return "budget", None, Budget(usd_per_request=float(text[1:]))
        if text.endswith("%"):
            return "budget", None, Budget(share_of_max=float(text[:-1]) / 100)
        return "budget", float(text), None
    except ValueError as exc:
        raise ConfigError(
            f"--budget must be '$USD' per request, 'N%' of the most expensive target, or a μ >= 0; "
            f"got {budget!r}"
        ) from exc


@app.command("route-batch")
def route_batch(
    router_path: RouterArg,
    prompts: Annotated[
        Path,
        typer.Argument(
            help="Prompt file (.parquet, .jsonl or .csv with a prompt column), or a folder of such shards.",
            metavar="PROMPTS",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="Decisions file (.parquet, .jsonl or .csv).", metavar="DECISIONS"
        ),
    ],
    budget: BudgetOption = None,
    lambda_: LambdaOption = None,
    tolerance: ToleranceOption = None,
    allow: AllowOption = None,
    max_cost: MaxCostOption = None,
    prompt_column: Annotated[str, typer.Option(help="Column holding the prompt text.")] = "prompt",
    id_column: Annotated[
        str | None,
        typer.Option(help="Column holding the prompt id (default: prompt_id or id, else row number)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts scored together.", min=1)] = 256,
    ray_address: RayOption = None,
    workers: WorkersOption = None,
    worker_cpus: WorkerCpusOption = None,
    cache: CacheOption = None,
) -> None:
    """Route every prompt of a file offline: prompt id, chosen target, its cost and every probability."""
    from prefill_router._files import check_writable
    from prefill_router.data.costs import check_priced
    from prefill_router.data.prompt_files import (
        check_prompt_file,
        count_rows,
        iter_prompt_file,
        prompt_format,
    )
    from prefill_router.route_batch import BatchPolicy, DecisionWriter, route_prompts, route_prompts_ray
    from prefill_router.train import Router

    # Everything that can fail without features fails here, before an encoder or Ray starts.
    policy, knob, spend = _policy_options(budget, lambda_, tolerance)
    session = ray_or_none(ray_address)  # before any work: a missing extra fails at once
    started = time.perf_counter()
    check_prompt_file(prompts, prompt_column, id_column)
    prompt_format(output)  # a decisions file of a known kind
    check_writable(output, what="decisions file")
    router = Router.load(router_path, cache_dir=cache)
    check_priced(router.target_info, source=str(router_path))
    if spend is not None:
        knob = router.solve_budget(spend).mu
    choice = BatchPolicy(policy, 0.0 if knob is None else knob, _allowed(allow), max_cost).check(
        router.targets
    )
    metadata = {"router": str(router_path), "prompts": str(prompts), **_choice_json(choice, budget)}
    with DecisionWriter(output, router.targets, metadata) as out:
        if session is None:
            batches = iter_prompt_file(prompts, batch_size, prompt_column, id_column)
            with console.status(f"loading encoder {', '.join(e.name for e in router.encoders)}"):
                router.loaded_encoders()  # load now, so the spinner covers it
            with _routing_progress(count_rows(prompts)) as advance:
                for batch in batches:
                    out.write(route_prompts(router, batch.ids, batch.prompts, choice))
                    advance(len(batch.ids))
        else:
            with session as ray:
                plan = plan_workers(ray, workers=workers, worker_cpus=worker_cpus)
                console.print(f"Ray: {plan.describe()} ({ray_address})")
                total, tables = route_prompts_ray(
                    ray, router_path, prompts, choice, plan, prompt_column=prompt_column,
                    id_column=id_column, batch_size=batch_size, cache_dir=cache,
                )  # fmt: skip
                with _routing_progress(total) as advance, contextlib.closing(tables):
                    for table in tables:
                        out.write(table)
                        advance(table.num_rows)
    _print_batch_summary(out.counts, out.rows, output, time.perf_counter() - started)


def _choice_json(choice: Any, budget: str | None) -> dict[str, Any]:
    return {
        "policy": choice.policy, "knob": choice.knob, "budget": budget,
        "allowed": None if choice.allowed is None else list(choice.allowed), "max_cost_usd": choice.max_cost,
    }  # fmt: skip


def _print_batch_summary(counts: dict[str, int], rows: int, output: Path, seconds: float) -> None:
    failed = counts.pop("error", 0)
    table = Table("target", "prompts", "share", title=f"{rows:,} prompts routed in {seconds:.1f} s")
    for name, n in sorted(counts.items(), key=lambda item: -item[1]):
        table.add_row(name, f"{n:,}", f"{n / max(rows, 1):.1%}")
    console.print(table)
    if failed:
        err_console.print(
            f"[yellow]{failed:,} prompt{'s' * (failed > 1)} could not be routed; "
            f"see the 'error' column in {output}[/]"
        )
    console.print(f"decisions: {output}")


def _routing_progress(total: int | None) -> Any:
    return encode_progress(total, label="routing")


def _allowed(allow: str | None) -> tuple[str, ...] | None:
    return tuple(a.strip() for a in allow.split(",") if a.strip()) if allow else None
