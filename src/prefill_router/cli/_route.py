"""`prefill-router route` and `route-batch`: decisions for one prompt, or for a whole prompt file."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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

if TYPE_CHECKING:
    from prefill_router.policy import RoutePlan, Router, RouteRequest

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
MinAccuracyOption = Annotated[
    float | None,
    typer.Option(
        help="Quality floor: the cheapest routing whose accuracy stays >= this (e.g. 0.85) with "
        "probability >= 1 - delta, certified on the router's calibration rows."
    ),
]
WithinOption = Annotated[
    str | None,
    typer.Option(
        help="Quality floor relative to a target: '1pt:TARGET' (within 1 point of it), '99%:TARGET' (of "
        "its accuracy); no TARGET = the best single target. The default, without any policy option, "
        "is '1pt' at delta 0.05."
    ),
]
DeltaOption = Annotated[
    float | None,
    typer.Option(help="Risk of the quality floor's certificate, in (0, 0.5] (default 0.05)."),
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
    min_accuracy: MinAccuracyOption = None,
    within: WithinOption = None,
    delta: DeltaOption = None,
    allow: AllowOption = None,
    max_cost: MaxCostOption = None,
    json_flag: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
    cache: CacheOption = None,
) -> None:
    """One routing decision: the chosen target, every probability and cost, and why.

    Without a policy option the decision keeps the default quality floor: within 1 point of the
    best single target's accuracy, certified at delta 0.05 on the router's calibration rows.
    """
    from prefill_router.data.costs import check_priced
    from prefill_router.policy import Router

    request = policy_options(
        budget, lambda_, tolerance, min_accuracy, within, delta, _allowed(allow), max_cost
    )
    router = Router.load(router_path, cache_dir=cache)
    check_priced(router.target_info, source=str(router_path))  # before the encoder loads
    plan = _plan(router, request)  # a floor that cannot be met fails before the encoder loads
    with console.status(f"loading encoder {', '.join(e.name for e in router.encoders)}"):
        router.loaded_encoders()  # load now, so the spinner covers it
    decision = plan.decide(router.predict_proba([prompt])[0], router.costs([prompt])[0], router.targets)
    if json_flag:
        console.print_json(json.dumps(decision.to_json()))
        return
    table = Table("target", "P(correct)", "cost USD", title=f"route: {decision.reason}")
    for name in router.targets:
        mark = "[bold green]→ [/]" if name == decision.target else "  "
        cost = decision.costs_usd[name]
        table.add_row(mark + name, f"{decision.probabilities[name]:.3f}", f"{cost:.6f}")
    console.print(table)
    if decision.certificate is not None:
        console.print(certificate_line(decision.certificate))
    console.print(f"[bold]{decision.target}[/]")


NOT_INDEPENDENT = (
    "; these calibration rows were not held out of training (calibration_share 0), so the guarantee "
    "is not exact: refit with --calibration-share or run `prefill-router calibrate`"
)


def policy_options(
    budget: str | None,
    lambda_: float | None,
    tolerance: float | None,
    min_accuracy: float | None = None,
    within: str | None = None,
    delta: float | None = None,
    allowed: tuple[str, ...] | None = None,
    max_cost: float | None = None,
) -> RouteRequest:
    """The request the policy options name (one policy at most; ``--delta`` goes with a floor)."""
    from prefill_router.policy import QualityFloor, RouteRequest
    from prefill_router.policy.floor import DEFAULT_DELTA

    given = (
        ("budget", budget), ("lambda", lambda_), ("tolerance", tolerance), ("min-accuracy", min_accuracy),
        ("within", within),
    )  # fmt: skip
    chosen = [name for name, value in given if value is not None]
    if len(chosen) > 1:
        raise ConfigError(f"choose one policy; got {' and '.join('--' + c for c in chosen)}")
    if delta is not None and chosen and chosen[0] not in ("min-accuracy", "within"):
        raise ConfigError(f"--delta is the risk of a quality floor; it does not go with --{chosen[0]}")
    limits: dict[str, Any] = {"allowed": allowed, "max_cost": max_cost}
    risk = DEFAULT_DELTA if delta is None else delta
    if min_accuracy is not None:
        return RouteRequest(floor=QualityFloor(min_accuracy=min_accuracy, delta=risk), **limits)
    if within is not None:
        return RouteRequest(floor=QualityFloor.parse(within, delta=risk), **limits)
    if lambda_ is not None:
        return RouteRequest("lambda", lambda_, **limits)
    if tolerance is not None:
        return RouteRequest("tolerance", tolerance, **limits)
    if budget is None:
        return RouteRequest(delta=delta, **limits)  # the default floor (RouteRequest checks the delta)
    return _budget_request(budget, limits)


def _budget_request(budget: str, limits: dict[str, Any]) -> RouteRequest:
    from prefill_router.policy import Budget, RouteRequest

    text = budget.strip()
    try:
        if text.startswith("$"):
            return RouteRequest(budget=Budget(usd_per_request=float(text[1:])), **limits)
        if text.endswith("%"):
            return RouteRequest(budget=Budget(share_of_max=float(text[:-1]) / 100), **limits)
        return RouteRequest("budget", float(text), **limits)
    except ValueError as exc:
        raise ConfigError(
            f"--budget must be '$USD' per request, 'N%' of the most expensive target, or a μ >= 0; "
            f"got {budget!r}"
        ) from exc


def _plan(router: Router, request: RouteRequest) -> RoutePlan:
    """The router's plan for ``request``; says so when the default floor cannot be kept."""
    plan = router.plan(request)
    if plan.note is not None:
        err_console.print(f"[yellow]{plan.note}[/]")
    return plan


def certificate_line(certificate: dict[str, Any]) -> str:
    """The certificate of a floor for people: μ, savings, rows and δ, or why nothing was certified."""
    caveat = "" if certificate.get("independent", True) else NOT_INDEPENDENT
    return f"certificate: {certificate['message']}{caveat}"


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
    min_accuracy: MinAccuracyOption = None,
    within: WithinOption = None,
    delta: DeltaOption = None,
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
    """Route every prompt of a file offline: prompt id, chosen target, its cost and every probability.

    Without a policy option every prompt keeps the default quality floor (within 1 point of the
    best single target, delta 0.05); the certificate goes into the file's metadata.
    """
    from prefill_router._files import check_writable
    from prefill_router.data.costs import check_priced
    from prefill_router.data.prompt_files import (
        check_prompt_file,
        count_rows,
        iter_prompt_file,
        prompt_format,
    )
    from prefill_router.policy import Router
    from prefill_router.route_batch import DecisionWriter, route_prompts, route_prompts_ray

    # Everything that can fail without features fails here, before an encoder or Ray starts.
    request = policy_options(
        budget, lambda_, tolerance, min_accuracy, within, delta, _allowed(allow), max_cost
    )
    session = ray_or_none(ray_address)  # before any work: a missing extra fails at once
    started = time.perf_counter()
    check_prompt_file(prompts, prompt_column, id_column)
    prompt_format(output)  # a decisions file of a known kind
    check_writable(output, what="decisions file")
    router = Router.load(router_path, cache_dir=cache)
    check_priced(router.target_info, source=str(router_path))
    choice = _plan(router, request)
    if choice.certificate is not None:
        console.print(certificate_line(choice.certificate.to_json()))
    described = choice.to_json()
    metadata = {
        "router": str(router_path), "prompts": str(prompts), "policy": described.pop("policy"),
        "knob": described.pop("knob"), "budget": budget, **described,
    }  # fmt: skip
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
