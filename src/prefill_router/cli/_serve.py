"""`prefill-router serve`: the OpenAI-compatible routing proxy (FastAPI + uvicorn)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any

import typer

from prefill_router.cli._app import CacheOption, RouterArg, app, err_console
from prefill_router.errors import ConfigError, MissingDependencyError

_SERVE_PACKAGES = ("fastapi", "pydantic", "uvicorn", "httpx", "prometheus_client")


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
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            envvar="PREFILL_ROUTER_STATE",
            help="Keep the decision cache, sessions and solved budgets in Redis, shared by every replica: "
            "redis://[:PASSWORD@]HOST:PORT/DB (overrides `state` in serve.yaml). Without it: in-process.",
        ),
    ] = None,
    state_required: Annotated[
        bool,
        typer.Option(
            "--state-required",
            help="Refuse to start when the Redis state is unreachable or refuses the "
            "password (without it: one warning line, then in-process state until Redis answers).",
        ),
    ] = False,
    allow_local_encoder: Annotated[
        bool,
        typer.Option(
            "--allow-local-encoder",
            help="Load a router whose encoder is a local model folder this machine has not encoded with "
            "(only for routers you trust).",
        ),
    ] = False,
) -> None:
    """Serve the router as an OpenAI-compatible proxy: /v1/chat/completions, /v1/route, /metrics.

    Unless the config names a floor or a policy, model "router" keeps the default quality floor:
    within 1 point of the best single target, certified at delta 0.05 on the calibration rows.

    With ``--state redis://HOST:PORT/DB`` several replicas share one decision cache, session table
    and budgets; when Redis fails, requests go on with in-process state (``/health`` says degraded).

    On SIGTERM it drains: /ready turns 503 and new requests get 503 for ``drain_s`` seconds while
    those in flight finish; then it stops. A second signal stops it at once.
    """
    check_serve_dependencies()
    if (config is None) == (upstream is None):
        raise ConfigError("pass exactly one of --config FILE or --upstream URL")
    import uvicorn

    from prefill_router.policy import Router
    from prefill_router.serve.app import create_app
    from prefill_router.serve.config import ServeConfig, check_state_url, redact_password

    check_state_url(state, "--state")  # before the router loads: a typo fails at once
    router = Router.load(router_path, cache_dir=cache, allow_local_encoders=allow_local_encoder)
    if config is not None:
        settings = ServeConfig.load(config, router.targets)
    else:
        assert upstream is not None
        settings = ServeConfig.quick(router.targets, upstream)
    settings = _with_state(settings, state, state_required)
    shared = f", state in Redis at {redact_password(settings.state)}" if settings.state else ""
    err_console.print(
        f"[bold]prefill-router[/] serving {router_path} ({len(router.targets)} targets) on "
        f"http://{host}:{port}{shared}"
    )
    app = create_app(router, settings, decision_log=log_decisions)
    server = draining_server(uvicorn.Config(app, host=host, port=port, log_level="info"), settings.drain_s)
    server.run()


def _with_state(settings: Any, url: str | None, required: bool) -> Any:
    """``settings`` with ``--state`` / ``--state-required`` applied; with a state that must be there,
    check now that Redis answers.

    Raises:
        ConfigError: a URL that is not a Redis URL, or a required state that cannot be used.
        MissingDependencyError: a Redis URL without the ``redis`` package.
    """
    from dataclasses import replace

    from prefill_router.serve.config import check_state_url

    if url is not None:
        settings = replace(settings, state=check_state_url(url, "--state"))
    if required:
        settings = replace(settings, state_required=True)
    if settings.state is None:
        if settings.state_required:
            raise ConfigError("--state-required needs a state: pass --state redis://HOST:PORT/DB")
        return settings
    if importlib.util.find_spec("redis") is None:
        raise MissingDependencyError(
            "--state needs the redis client; install it with: pip install 'prefill-router[redis]'"
        )
    if settings.state_required:
        from prefill_router.serve.redis_state import probe

        problem = probe(settings.state, settings.state_timeout_s)
        if problem is not None:
            raise ConfigError(f"state: {problem}; not starting (--state-required)")
    return settings


def draining_server(config: Any, drain_s: float) -> Any:
    """A ``uvicorn.Server`` for the proxy app of ``config`` that drains on its first SIGTERM/SIGINT.

    During the ``drain_s`` seconds after the signal the app answers new requests with 503 (and
    /ready with 503) while the requests in flight finish; then uvicorn's graceful shutdown runs
    (it waits for responses still being sent). A second signal shuts down at once.
    """
    import time

    import uvicorn

    service = config.app.state.service

    class DrainingServer(uvicorn.Server):
        drain_until: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.drain_until is None and drain_s > 0 and not self.should_exit:
                service.start_draining()
                self.drain_until = time.monotonic() + drain_s
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.drain_until is not None and time.monotonic() >= self.drain_until:
                self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer(config)
