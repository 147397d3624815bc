# ruff: noqa: TID253  (this module owns the FastAPI app)
"""The OpenAI-compatible routing proxy: ``create_app(router, config)`` (DESIGN §9).

Endpoints: ``POST /v1/chat/completions`` (routes, forwards, streams), ``POST /v1/route`` (the
decision only), ``GET /v1/models``, ``GET /health``, ``GET /ready``, ``GET /metrics``. State lives
on ``app.state.service`` (a :class:`RoutingService`), with one shared ``httpx.AsyncClient``.

Example::

    app = create_app(Router.load("router/"), ServeConfig.quick(targets, "http://localhost:4000/v1"))
    uvicorn.run(app, port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from prefill_router.errors import ConfigError, UnknownTargetError
from prefill_router.policy import Budget, Decision, decide
from prefill_router.serve.batcher import MicroBatcher
from prefill_router.serve.cache import LruCache, TextHasher
from prefill_router.serve.config import ROUTER_MODEL, Profile, ServeConfig
from prefill_router.serve.metrics import Metrics
from prefill_router.serve.protocol import (
    ApiError,
    Overrides,
    check_messages,
    parse_overrides,
    routing_text,
)
from prefill_router.serve.upstream import forward, new_client

if TYPE_CHECKING:
    from prefill_router.train.router import Router

log = logging.getLogger("prefill_router.serve")
_DEFAULT_KNOBS = {"budget": 0.0, "lambda": 1.0, "tolerance": 0.0}
_ASCII = str.maketrans({"μ": "mu", "λ": "lambda", "τ": "tau", "−": "-", "·": "*", "ĉ": "c_norm", "…": "..."})
_ENDPOINTS = ("/v1/chat/completions", "/v1/route", "/v1/models", "/health", "/ready", "/metrics")


@dataclass(frozen=True)
class Routed:
    """One routing outcome: the decision, where it came from and whether the cache answered."""

    decision: Decision
    source: str  # policy / session / pinned / fallback
    cached: bool = False

    def headers(self) -> dict[str, str]:
        """The x-router-* decision headers (ASCII only)."""
        d = self.decision
        out = {"x-router-reason": d.reason.translate(_ASCII).encode("ascii", "replace").decode()}
        if d.probabilities:
            out["x-router-probabilities"] = ",".join(f"{t}={p:.3f}" for t, p in d.probabilities.items())
        if d.target in d.costs_usd:
            out["x-router-estimated-cost"] = f"{d.costs_usd[d.target]:.6g}"
        out["x-router-cache"] = "hit" if self.cached else "miss"
        return out

    def to_json(self) -> dict[str, Any]:
        """The decision with its source, for /v1/route."""
        return {
            "object": "router.decision",
            **self.decision.to_json(),
            "source": self.source,
            "cached": self.cached,
        }


class RoutingService:
    """The proxy's state: router, config, micro-batcher, caches, metrics, upstream client."""

    def __init__(self, router: Router, config: ServeConfig, decision_log: Path | None = None) -> None:
        self.router = router
        self.config = config
        self.metrics = Metrics()
        self.hash = TextHasher(config.cache_key)
        self.cache: LruCache[np.ndarray] = LruCache(config.cache_size)
        self.sessions: LruCache[str] = LruCache(100_000)
        self.batcher = MicroBatcher(
            router.predict_proba, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
            on_batch=self.metrics.on_batch,
        )  # fmt: skip
        self.client: httpx.AsyncClient | None = None
        self.ready = False
        self.warm_error: str | None = None
        self._mus: dict[float, float] = {}
        self._log_path = decision_log
        self._log_lock = threading.Lock()

    # ------------------------------------------------------------------ routing
    async def route(self, text: str, profile: Profile, overrides: Overrides) -> Routed:
        """Score (cached, micro-batched) and decide; a scoring failure goes to the fallback target."""
        started = time.perf_counter()
        key = self.hash(text)
        p, cached = self.cache.get(key), True
        try:
            if p is None:
                cached = False
                self.metrics.cache_misses.inc()
                p = await self.batcher.score(text)
                if not np.all(np.isfinite(p)):
                    raise ValueError("the router produced non-finite probabilities")
                self.cache.put(key, p)
            else:
                self.metrics.cache_hits.inc()
        except Exception as exc:  # encoder or scoring failure: the configured fallback target
            return self._fallback(text, overrides, exc)
        c = self.router.costs([text])[0]
        policy, knob = self._policy(profile, overrides)
        try:
            decision = decide(
                p,
                c,
                self.router.targets,
                policy,
                knob,
                allowed=overrides.allowed,
                max_cost=overrides.max_cost_usd,
            )
        except (ConfigError, UnknownTargetError) as exc:
            raise ApiError(400, str(exc), param="router") from exc
        self.metrics.score_seconds.observe(time.perf_counter() - started)
        return Routed(decision, "policy", cached)

    def _policy(self, profile: Profile, overrides: Overrides) -> tuple[str, float]:
        if overrides.budget_usd is not None:
            budget = overrides.budget_usd
            if budget not in self._mus:
                try:
                    self._mus[budget] = self.router.solve_budget(Budget(usd_per_request=budget)).mu
                except ConfigError as exc:
                    raise ApiError(400, f"router.budget_usd: {exc}", param="router.budget_usd") from exc
            return "budget", self._mus[budget]
        policy = overrides.policy or profile.policy
        if overrides.knob is not None:
            knob = overrides.knob
        else:
            knob = profile.knob if policy == profile.policy else _DEFAULT_KNOBS[policy]
        try:
            from prefill_router.policy import check_knob

            return policy, check_knob(policy, knob)
        except ConfigError as exc:
            raise ApiError(400, f"router.knob: {exc}", param="router.knob") from exc

    def _fallback(self, text: str, overrides: Overrides, exc: Exception) -> Routed:
        chain = self.chain(None, overrides)
        if not chain:
            raise ApiError(
                503, f"the router could not score this request ({type(exc).__name__}) and no fallback "
                "target is configured", type="server_error", code="router_unavailable",
            ) from exc  # fmt: skip
        log.warning("scoring failed (%s); using the fallback target %s", type(exc).__name__, chain[0])
        self.metrics.fallbacks.labels("encoder").inc()
        return self.fixed(chain[0], "fallback", f"scoring failed ({type(exc).__name__}); the fallback target")

    def fixed(self, target: str, source: str, reason: str) -> Routed:
        """A decision not made by the policy (pinned, session, fallback)."""
        index = self.router.targets.index(target)
        decision = Decision(target, index, source, 0.0, {}, {}, (target,), reason)
        return Routed(decision, source)

    def chain(self, first: str | None, overrides: Overrides) -> list[str]:
        """``first`` then the fallback chain, within the request's allowed targets."""
        names = ([first] if first else []) + [t for t in self.config.fallback if t != first]
        if overrides.allowed is not None:
            names = [t for t in names if t == first or t in overrides.allowed]
        return names

    # ------------------------------------------------------------------ logging
    def log_decision(self, record: dict[str, Any]) -> None:
        """Append one JSONL line (hashes, never text) when a decision log is configured."""
        if self._log_path is None:
            return
        line = json.dumps({"time": round(time.time(), 3), **record}, separators=(",", ":"))
        with self._log_lock, self._log_path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    async def warm(self) -> None:
        """Load the encoder and run one forward; /ready turns true when it succeeds."""
        try:
            await self.batcher.run_in_thread(lambda: self.router.predict_proba(["Warm up the encoder."]))
        except Exception as exc:
            self.warm_error = f"{type(exc).__name__}: {exc}"
            log.error("encoder warm-up failed: %s", self.warm_error)
            return
        self.ready = True


# ---------------------------------------------------------------------- the app
def create_app(router: Router, config: ServeConfig, *, decision_log: Path | None = None) -> FastAPI:
    """The proxy app; its lifespan starts the batcher and client and warms the encoder.

    Raises:
        ConfigError: the config's targets do not match the router's.
    """
    missing = [t for t in router.targets if t not in config.targets]
    if missing:
        raise ConfigError(f"the serve config has no upstream for the router's target {missing[0]!r}")
    service = RoutingService(router, config, decision_log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.client = new_client()
        service.batcher.start()
        warming = asyncio.get_running_loop().create_task(service.warm())
        try:
            yield
        finally:
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warming
            await service.batcher.stop()
            await service.client.aclose()

    app = FastAPI(title="prefill-router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _add_error_handlers(app)
    _add_routes(app, service)
    app.add_middleware(_CountRequests, metrics=service.metrics)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(
            ApiError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        error = ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return JSONResponse(error.body(), status_code=500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _add_routes(app: FastAPI, service: RoutingService) -> None:
    config = service.config

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        if service.ready:
            return JSONResponse({"status": "ready", "targets": list(service.router.targets)})
        status = "failed" if service.warm_error else "warming"
        return JSONResponse({"status": status, "error": service.warm_error}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _authorize(request, config)
        names = [ROUTER_MODEL, *config.profiles, *service.router.targets]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "prefill-router"} for n in names]
        return {"object": "list", "data": data}

    @app.post("/v1/route")
    async def route(request: Request) -> dict[str, Any]:
        _authorize(request, config)
        body = await _json_body(request, config)
        profile = _profile(body.get("model", ROUTER_MODEL), service, pin=False)
        assert profile is not None  # pin=False never returns None
        overrides = parse_overrides(body.get("router"))
        texts = _route_texts(body, config.routing_text)
        routed = await asyncio.gather(*(service.route(text, profile, overrides) for text in texts))
        for r in routed:
            service.metrics.decisions.labels(r.decision.target, r.source).inc()
        if "prompts" in body:
            return {"object": "list", "data": [r.to_json() for r in routed]}
        return routed[0].to_json()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        _authorize(request, config)
        body = await _json_body(request, config)
        return await _chat(service, request, body)


async def _chat(service: RoutingService, request: Request, body: dict[str, Any]) -> Response:
    config = service.config
    model = body.get("model")
    profile = _profile(model, service, pin=True)
    messages = check_messages(body)
    overrides = parse_overrides(body.get("router"))
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    session = request.headers.get("x-session-id") or (
        body.get("user") if isinstance(body.get("user"), str) else None
    )
    session_key = service.hash("session\0" + session) if session and overrides.session else None
    text = routing_text(messages, config.routing_text)
    if profile is None:  # the model names a target: pinned, no fallback
        assert isinstance(model, str)
        routed, chain = service.fixed(model, "pinned", f"pinned by model {model!r}"), [model]
    else:
        previous = service.sessions.get(session_key) if session_key else None
        if previous is not None and (overrides.allowed is None or previous in overrides.allowed):
            routed = service.fixed(previous, "session", "session affinity: this session's earlier target")
        else:
            routed = await service.route(text, profile, overrides)
        chain = service.chain(routed.decision.target, overrides)
    service.metrics.decisions.labels(routed.decision.target, routed.source).inc()
    upstreams = [config.targets[name] for name in chain]
    assert service.client is not None, "the app's lifespan has not started"
    record: dict[str, Any] = {
        "text_hash": service.hash(text), "session_hash": session_key, "model": model,
        "source": routed.source, "target": routed.decision.target, "policy": routed.decision.policy,
        "knob": routed.decision.knob, "probabilities": routed.decision.probabilities,
        "estimated_cost_usd": routed.decision.costs_usd.get(routed.decision.target),
    }  # fmt: skip
    try:
        forwarded = await forward(
            service.client, upstreams, body, stream=bool(body.get("stream")), headers=routed.headers(),
            metrics=service.metrics,
        )  # fmt: skip
    except ApiError as exc:
        service.log_decision(record | {"answered_by": None, "status": exc.status})
        raise
    if forwarded.failed:
        service.metrics.fallbacks.labels("upstream").inc(len(forwarded.failed))
    if session_key and forwarded.response.status_code < 400:
        service.sessions.put(session_key, forwarded.target)
    service.log_decision(
        record | {"answered_by": forwarded.target, "fallback_from": forwarded.failed,
                  "status": forwarded.response.status_code}
    )  # fmt: skip
    return forwarded.response


# ---------------------------------------------------------------------- helpers
def _authorize(request: Request, config: ServeConfig) -> None:
    if not config.client_tokens:
        return
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not token:
        raise ApiError(401, "missing client token: send 'Authorization: Bearer <token>'",
                       type="authentication_error", code="missing_api_key")  # fmt: skip
    if not any(hmac.compare_digest(token.encode(), t.encode()) for t in config.client_tokens):
        raise ApiError(401, "invalid client token", type="authentication_error", code="invalid_api_key")


async def _json_body(request: Request, config: ServeConfig) -> dict[str, Any]:
    limit = config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    raw = await request.body()
    if len(raw) > limit:
        raise _too_large(len(raw), limit)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(
            400, f"the request body must be a JSON object; got {type(body).__name__}", code="invalid_json"
        )
    return body


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, f"the request body has {size} bytes; the limit is {limit}", code="request_too_large")


def _profile(model: Any, service: RoutingService, *, pin: bool) -> Profile | None:
    """The profile of ``model``; None when it names a target (and ``pin`` allows that)."""
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' must be 'router', a profile or a target name", param="model")
    profile = service.config.profile(model)
    if profile is not None:
        return profile
    if pin and model in service.router.targets:
        return None
    known = [ROUTER_MODEL, *service.config.profiles, *(service.router.targets if pin else ())]
    import difflib

    close = difflib.get_close_matches(model, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ApiError(
        404, f"unknown model {model!r}.{hint} Known models: {', '.join(known)}", param="model",
        code="model_not_found",
    )  # fmt: skip


def _route_texts(body: Mapping[str, Any], mode: str) -> list[str]:
    if "prompts" in body:
        prompts = body["prompts"]
        if (
            not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(p, str) and p.strip() for p in prompts)
        ):
            raise ApiError(400, "'prompts' must be a non-empty list of non-empty strings", param="prompts")
        return list(prompts)
    if "prompt" in body:
        prompt = body["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(400, "'prompt' must be a non-empty string", param="prompt")
        return [prompt]
    if "messages" in body:
        return [routing_text(check_messages(body), mode)]
    raise ApiError(400, "send 'prompt', 'prompts' or 'messages'", param="prompt")


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _CountRequests:
    """ASGI middleware: requests by endpoint and status (streaming-safe, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
        status = {"code": 500}

        async def counting_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
