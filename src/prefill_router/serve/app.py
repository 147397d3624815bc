# ruff: noqa: TID253  (this module owns the FastAPI app)
"""The OpenAI-compatible routing proxy: ``create_app(router, config)`` (DESIGN §9).

Endpoints: ``POST /v1/chat/completions`` (routes, forwards, streams), ``POST /v1/route`` (the
decision only), ``GET /v1/models``, ``GET /health``, ``GET /ready``, ``GET /metrics`` and
``GET /openapi.json`` (the request and response bodies, the ``router`` field's options). State lives
on ``app.state.service`` (a :class:`RoutingService`), with one shared ``httpx.AsyncClient``.

Limits, all from :class:`ServeConfig`: the body is read as a stream and refused past
``max_body_bytes``; ``/v1/route`` takes at most ``max_prompts`` prompts; scoring waits at most
``score_timeout_s`` and ``max_queue`` prompts (then the fallback target); all upstream attempts of
a request share ``deadline_s``. What a client token may ask (pin a target, which ``router``
fields) comes from ``client_rights`` / ``clients``; session affinity is kept per client.

This module assembles the app and checks that a router can be served; the parts live in
``service`` (:class:`RoutingService`: state and decisions), ``routes`` (the HTTP handlers, an
``APIRouter`` reading ``app.state``) and ``middleware`` (request counting, error handlers).

Example::

    app = create_app(Router.load("router/"), ServeConfig.quick(targets, "http://localhost:4000/v1"))
    uvicorn.run(app, port=8000)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from prefill_router._version import __version__
from prefill_router.errors import ConfigError, DataError
from prefill_router.serve.config import DEFAULT_PROFILE, ROUTER_MODEL, ServeConfig
from prefill_router.serve.middleware import CountRequests, add_error_handlers
from prefill_router.serve.protocol import Routed, openapi_schemas
from prefill_router.serve.routes import endpoints
from prefill_router.serve.service import RoutingService

if TYPE_CHECKING:
    from prefill_router.policy import Router

__all__ = ["Routed", "RoutingService", "check_servable", "create_app"]

log = logging.getLogger("prefill_router.serve")


def create_app(router: Router, config: ServeConfig, *, decision_log: Path | None = None) -> FastAPI:
    """The proxy app; its lifespan starts the batcher and client and warms the encoder.

    Raises:
        ConfigError: the config's targets do not match the router's, a target name that could
            break a header, a target without a price, or an ``api_key_env`` that is not set.
    """
    check_servable(router, config)
    service = RoutingService(router, config, decision_log)
    app = _ProxyApp(
        title="prefill-router", version=__version__, lifespan=_lifespan, docs_url=None, redoc_url=None,
        description=_DESCRIPTION,
    )  # fmt: skip
    app.state.service = service
    add_error_handlers(app)
    app.include_router(endpoints)
    app.add_middleware(CountRequests, metrics=service.metrics)
    return app


_DESCRIPTION = (
    "An OpenAI-compatible proxy that routes each request to the cheapest target predicted to answer it "
    "correctly. Send model 'router' (or a profile); the optional `router` field sets this request's "
    "routing options."
)


class _ProxyApp(FastAPI):
    """The proxy's FastAPI app; its /openapi.json also holds the request bodies the handlers read
    themselves (the routes refer to them in ``openapi_extra``)."""

    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema, with :func:`~prefill_router.serve.protocol.openapi_schemas` in its components."""
        if self.openapi_schema is None:
            schema = super().openapi()  # kept as self.openapi_schema
            schema.setdefault("components", {}).setdefault("schemas", {}).update(openapi_schemas())
            return schema
        return self.openapi_schema


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the app's service (batcher, upstream client, warm-up) and stop it at shutdown."""
    service: RoutingService = app.state.service
    await service.start()
    try:
        yield
    finally:
        await service.stop()


def check_servable(router: Router, config: ServeConfig) -> None:
    """Everything checked before the proxy starts (see :func:`create_app`)."""
    from prefill_router.data.importers import target_name_problem

    for name in (*router.targets, *config.targets):
        problem = target_name_problem(name)
        if problem is not None:
            raise ConfigError(f"cannot serve: the {problem}; rename the target and refit (or fix serve.yaml)")
    missing = [t for t in router.targets if t not in config.targets]
    if missing:
        raise ConfigError(f"the serve config has no upstream for the router's target {missing[0]!r}")
    unpriced = [t.name for t in router.target_info if not t.has_price]
    if unpriced:
        raise ConfigError(
            f"cannot serve: the router's targets {', '.join(unpriced)} have no price, and every decision "
            "weighs cost; add their prices to the dataset (data import --prices FILE) and refit"
        )
    config.check_environment()
    _check_floors(router, config)


def _check_floors(router: Router, config: ServeConfig) -> None:
    """Certify every floor of the config now (kept by the router), so none fails a request later;
    the default floor on a router without labelled calibration rows becomes argmax, with a warning."""
    for name, profile in [(ROUTER_MODEL, config.default), *config.profiles.items()]:
        if profile.floor is None:
            continue
        if not router.floors_available and profile == DEFAULT_PROFILE:
            log.warning(
                "the router stores no labelled calibration rows: model %r routes to the most likely target "
                "(run `prefill-router calibrate` for the certified default)",
                name,
            )
            continue
        try:
            certificate = router.certify(profile.floor)
        except (ConfigError, DataError) as exc:
            raise ConfigError(f"cannot serve model {name!r}: {exc}") from exc
        log.info("model %r: %s", name, certificate.message)
