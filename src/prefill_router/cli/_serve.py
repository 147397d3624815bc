"""`prefill-router serve`: the OpenAI-compatible routing proxy (FastAPI + uvicorn)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from prefill_router.cli._app import CacheOption, RouterArg, app, err_console
from prefill_router.errors import ConfigError, MissingDependencyError

_SERVE_PACKAGES = ("fastapi", "uvicorn", "httpx", "prometheus_client")


def check_serve_dependencies() -> None:
    """Raise MissingDependencyError with the pip command when the serve extra is not installed."""
    missing = [name for name in _SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(
            f"serving needs {', '.join(missing)}; install them with: pip install 'prefill-router[serve]'"
        )


@app.command("serve")
def serve(
    router_path: RouterArg,
    config: Annotated[Path | None, typer.Option("--config", help="The serve.yaml settings file.")] = None,
    upstream: Annotated[
        str | None,
        typer.Option(help="Quick start: send every target to this OpenAI-compatible base URL, by name."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    log_decisions: Annotated[
        Path | None,
        typer.Option("--log-decisions", help="Append one JSONL line per decision (hashes, no text)."),
    ] = None,
    cache: CacheOption = None,
) -> None:
    """Serve the router as an OpenAI-compatible proxy: /v1/chat/completions, /v1/route, /metrics."""
    check_serve_dependencies()
    if (config is None) == (upstream is None):
        raise ConfigError("pass exactly one of --config FILE or --upstream URL")
    import uvicorn

    from prefill_router.serve.app import create_app
    from prefill_router.serve.config import ServeConfig
    from prefill_router.train import Router

    router = Router.load(router_path, cache_dir=cache)
    if config is not None:
        settings = ServeConfig.load(config, router.targets)
    else:
        assert upstream is not None
        settings = ServeConfig.quick(router.targets, upstream)
    err_console.print(
        f"[bold]prefill-router[/] serving {router_path} ({len(router.targets)} targets) on http://{host}:{port}"
    )
    uvicorn.run(
        create_app(router, settings, decision_log=log_decisions), host=host, port=port, log_level="info"
    )
