# ruff: noqa: TID253  (this module owns the FastAPI app)
"""The OpenAI-compatible routing proxy: ``create_app(router, config)`` (DESIGN §9).

Endpoints: ``POST /v1/chat/completions`` (routes, forwards, streams), ``POST /v1/route`` (the
decision only), ``GET /v1/models``, ``GET /health``, ``GET /ready``, ``GET /metrics``. State lives
on ``app.state.service`` (a :class:`RoutingService`), with one shared ``httpx.AsyncClient``.

Limits, all from :class:`ServeConfig`: the body is read as a stream and refused past
``max_body_bytes``; ``/v1/route`` takes at most ``max_prompts`` prompts; scoring waits at most
``score_timeout_s`` and ``max_queue`` prompts (then the fallback target); all upstream attempts of
a request share ``deadline_s``. What a client token may ask (pin a target, which ``router``
fields) comes from ``client_rights`` / ``clients``; session affinity is kept per client.

Example::

    app = create_app(Router.load("router/"), ServeConfig.quick(targets, "http://localhost:4000/v1"))
    uvicorn.run(app, port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from prefill_router.errors import ApiError, ConfigError, DataError, UnknownTargetError
from prefill_router.policy import Budget, Decision, FloorCertificate, QualityFloor, decide, floor_decision
from prefill_router.serve.batcher import MicroBatcher, QueueFullError, WorkerThread
from prefill_router.serve.cache import LruCache, TextHasher
from prefill_router.serve.config import (
    DEFAULT_PROFILE,
    OVERRIDE_FIELDS,
    ROUTER_MODEL,
    Client,
    Profile,
    ServeConfig,
)
from prefill_router.serve.decision_log import DecisionLog
from prefill_router.serve.metrics import Metrics
from prefill_router.serve.protocol import (
    Overrides,
    check_messages,
    check_model,
    check_unicode,
    parse_overrides,
    routing_text,
)
from prefill_router.serve.upstream import forward, new_client

if TYPE_CHECKING:
    from prefill_router.train.router import Router

log = logging.getLogger("prefill_router.serve")
_DEFAULT_KNOBS = {"budget": 0.0, "lambda": 1.0, "tolerance": 0.0}
_ASCII = str.maketrans(
    {"μ": "mu", "λ": "lambda", "τ": "tau", "δ": "delta", "−": "-", "·": "*", "ĉ": "c_norm", "…": "..."}
)
_ENDPOINTS = ("/v1/chat/completions", "/v1/route", "/v1/models", "/health", "/ready", "/metrics")
_WARM_RETRY_S = 30.0  # after a failed warm-up, how long requests go straight to the fallback
_BUDGETS_KEPT = 1024  # solved μ per distinct budget_usd, least recently used out


@dataclass(frozen=True)
class Routed:
    """One routing outcome: the decision, where it came from and whether the cache answered."""

    decision: Decision
    source: str  # policy / session / pinned / fallback
    cached: bool = False

    def headers(self) -> dict[str, str]:
        """The x-router-* decision headers (printable ASCII only)."""
        d = self.decision
        out = {"x-router-reason": header_safe(d.reason.translate(_ASCII))}
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


class _UnscoredError(Exception):
    """Scoring did not give probabilities: ``kind`` labels the fallback metric."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


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
            max_queue=config.max_queue, on_batch=self.metrics.on_batch,
        )  # fmt: skip
        self.client: httpx.AsyncClient | None = None
        self.ready = False
        self.draining = False
        self.warm_error: str | None = None
        self._warm_at = -_WARM_RETRY_S
        self._warm_task: asyncio.Task[None] | None = None
        self._mus: LruCache[float] = LruCache(_BUDGETS_KEPT)
        self._certificates: LruCache[FloorCertificate] = LruCache(_BUDGETS_KEPT)
        self._solver = WorkerThread("prefill-router-budget")  # μ solves: off the loop, one at a time
        self._clients = [(client.token_sha256, client) for client in config.all_clients()]
        self._anonymous = Client("anonymous", "", config.client_rights)
        self.decision_log: DecisionLog | None = None
        if decision_log is not None:
            self.decision_log = DecisionLog(
                decision_log, max_bytes=config.decision_log_max_bytes, backups=config.decision_log_backups,
                on_drop=self.metrics.decision_log_dropped.inc,
            )  # fmt: skip

    # ------------------------------------------------------------------ clients
    def authorize(self, request: Request) -> Client:
        """The client a request's bearer token belongs to (anonymous when no token is configured).

        Raises:
            ApiError: 401 for a missing or unknown token.
        """
        if not self._clients:
            return self._anonymous
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token:
            raise ApiError(401, "missing client token: send 'Authorization: Bearer <token>'",
                           type="authentication_error", code="missing_api_key")  # fmt: skip
        # Digest against digest, every token compared: neither its length nor its rank leaks.
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for known, client in self._clients:
            if hmac.compare_digest(digest, known) and found is None:
                found = client
        if found is None:
            raise ApiError(401, "invalid client token", type="authentication_error", code="invalid_api_key")
        return found

    # ------------------------------------------------------------------ routing
    async def route(self, text: str, profile: Profile, overrides: Overrides) -> Routed:
        """Score (cached, micro-batched) and decide; a scoring failure goes to the fallback target."""
        started = time.perf_counter()
        key = self.hash(text)
        p, cached = self.cache.get(key), True
        if p is None:
            cached = False
            self.metrics.cache_misses.inc()
            try:
                p = await self._score(text)
            except _UnscoredError as exc:
                return self._fallback(overrides, exc)
            self.cache.put(key, p)
        else:
            self.metrics.cache_hits.inc()
        c = self.router.costs([text])[0]
        floor = self._floor(profile, overrides)
        try:
            if floor is not None:
                certificate = await self._certificate(floor, overrides)
                decision = floor_decision(
                    p, c, self.router.targets, certificate, allowed=overrides.allowed,
                    max_cost=overrides.max_cost_usd,
                )  # fmt: skip
            else:
                policy, knob = await self._policy(profile, overrides)
                decision = decide(
                    p, c, self.router.targets, policy, knob, allowed=overrides.allowed,
                    max_cost=overrides.max_cost_usd,
                )  # fmt: skip
        except (ConfigError, UnknownTargetError) as exc:
            raise ApiError(400, str(exc), param="router") from exc
        self.metrics.score_seconds.observe(time.perf_counter() - started)
        return Routed(decision, "policy", cached)

    async def _score(self, text: str) -> np.ndarray:
        """The text's probabilities within the scoring deadline, or :class:`_UnscoredError`."""
        if self.warm_error is not None:  # the encoder did not load: no batch reloads it
            self._retry_warm_up()
            raise _UnscoredError("encoder", "scoring failed (the encoder did not warm up)")
        self.metrics.encoder_queue.set(self.batcher.waiting)
        try:
            async with asyncio.timeout(self.config.score_timeout_s):
                p = await self.batcher.score(text)
        except TimeoutError:
            raise _UnscoredError(
                "deadline", f"scoring failed (no score within {self.config.score_timeout_s:g} s)"
            ) from None
        except QueueFullError:
            raise _UnscoredError(
                "overloaded", f"scoring failed ({self.batcher.max_queue} prompts already waiting)"
            ) from None
        except Exception as exc:  # the encoder failed on this text
            raise _UnscoredError("encoder", f"scoring failed ({type(exc).__name__})") from exc
        if not np.all(np.isfinite(p)):
            raise _UnscoredError("encoder", "scoring failed (non-finite probabilities)")
        return p

    def _floor(self, profile: Profile, overrides: Overrides) -> QualityFloor | None:
        """The floor this request keeps: its own, else its profile's (at a request's ``delta``)
        unless it asks for a policy, knob or budget of its own."""
        if overrides.floor is not None:
            return overrides.floor
        asks_policy = overrides.policy is not None or overrides.knob is not None
        if profile.floor is None or asks_policy or overrides.budget_usd is not None:
            if overrides.delta is not None:
                raise ApiError(
                    400, "router.delta is the risk of a quality floor; this request keeps none",
                    param="router.delta",
                )  # fmt: skip
            return None
        if profile.floor == DEFAULT_PROFILE.floor and not self.floors_available:
            return None  # a router without labelled calibration rows: argmax, as it said at start
        return profile.floor if overrides.delta is None else replace(profile.floor, delta=overrides.delta)

    @property
    def floors_available(self) -> bool:
        """Does the router hold labelled calibration rows to certify floors on?"""
        rows = self.router.calibration
        return rows is not None and rows.labels is not None

    async def _certificate(self, floor: QualityFloor, overrides: Overrides) -> FloorCertificate:
        """The floor's certificate (certified off the event loop once, then kept)."""
        key = repr(floor)
        certificate = self._certificates.get(key)
        if certificate is None:
            param = "router.within" if overrides.floor is not None else "model"
            try:
                certify = self.router.certify
                certificate = await self._solver.run(lambda: certify(floor))
            except (ConfigError, DataError) as exc:
                raise ApiError(400, f"{param}: {exc}", param=param) from exc
            self._certificates.put(key, certificate)
        return certificate

    async def _policy(self, profile: Profile, overrides: Overrides) -> tuple[str, float]:
        if overrides.budget_usd is not None:
            budget = overrides.budget_usd
            mu = self._mus.get(repr(budget))
            if mu is None:
                try:
                    solve = self.router.solve_budget
                    mu = await self._solver.run(lambda: solve(Budget(usd_per_request=budget)).mu)
                except (ConfigError, DataError) as exc:
                    raise ApiError(400, f"router.budget_usd: {exc}", param="router.budget_usd") from exc
                self._mus.put(repr(budget), mu)
            return "budget", mu
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

    def _fallback(self, overrides: Overrides, failure: _UnscoredError) -> Routed:
        chain = self.chain(None, overrides)
        if not chain:
            raise ApiError(
                503, f"the router could not score this request ({failure.reason}) and no fallback "
                "target is configured", type="server_error", code="router_unavailable",
            ) from failure  # fmt: skip
        log.warning("%s; using the fallback target %s", failure.reason, chain[0])
        self.metrics.fallbacks.labels(failure.kind).inc()
        return self.fixed(chain[0], "fallback", f"{failure.reason}; the fallback target")

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

    def session_fits(self, target: str, text: str, overrides: Overrides) -> bool:
        """Whether a session's earlier target is within this request's allowed targets and cost cap."""
        if overrides.allowed is not None and target not in overrides.allowed:
            return False
        if overrides.max_cost_usd is None:
            return True
        cost = float(self.router.costs([text])[0][self.router.targets.index(target)])
        return cost <= overrides.max_cost_usd

    # ------------------------------------------------------------------ lifecycle
    def log_decision(self, record: dict[str, Any]) -> None:
        """Queue one JSONL line (hashes, never text) when a decision log is configured."""
        if self.decision_log is not None:
            self.decision_log.write(record)

    async def warm(self) -> None:
        """Load the encoder and run one forward; /ready turns true when it succeeds."""
        self._warm_at = time.monotonic()
        try:
            await self.batcher.run_in_thread(lambda: self.router.predict_proba(["Warm up the encoder."]))
        except Exception as exc:
            self.warm_error = f"{type(exc).__name__}: {exc}"
            log.error("encoder warm-up failed: %s", self.warm_error)
            return
        self.warm_error = None
        self.ready = True

    def _retry_warm_up(self) -> None:
        running = self._warm_task is not None and not self._warm_task.done()
        if not running and time.monotonic() - self._warm_at >= _WARM_RETRY_S:
            self._warm_task = asyncio.get_running_loop().create_task(self.warm())

    def start_draining(self) -> None:
        """Stop taking requests (503) while those in flight finish; /ready says so."""
        self.draining = True
        self.ready = False

    async def start(self) -> None:
        """Open the upstream client, start the batcher, warm the encoder (in the background)."""
        self.client = new_client()
        self.batcher.start()
        self._warm_task = asyncio.get_running_loop().create_task(self.warm())

    async def stop(self) -> None:
        """Stop the warm-up, the batcher, the client and the decision log."""
        if self._warm_task is not None:
            self._warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm_task
        await self.batcher.stop()
        self._solver.stop()
        if self.client is not None:
            await self.client.aclose()
        if self.decision_log is not None:
            self.decision_log.close()


# ---------------------------------------------------------------------- the app
def create_app(router: Router, config: ServeConfig, *, decision_log: Path | None = None) -> FastAPI:
    """The proxy app; its lifespan starts the batcher and client and warms the encoder.

    Raises:
        ConfigError: the config's targets do not match the router's, a target name that could
            break a header, a target without a price, or an ``api_key_env`` that is not set.
    """
    check_servable(router, config)
    service = RoutingService(router, config, decision_log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="prefill-router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _add_error_handlers(app, service.metrics)
    _add_routes(app, service)
    app.add_middleware(_CountRequests, metrics=service.metrics)
    return app


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
    labelled = router.calibration is not None and router.calibration.labels is not None
    for name, profile in [(ROUTER_MODEL, config.default), *config.profiles.items()]:
        if profile.floor is None:
            continue
        if not labelled and profile == DEFAULT_PROFILE:
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


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def answer(error: ApiError) -> Response:
        metrics.errors.labels(str(error.status), error.code or error.type).inc()
        return JSONResponse(error.body(), status_code=error.status)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return answer(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else None
        return answer(ApiError(exc.status_code, str(exc.detail), code=code))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return answer(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

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
        status = "draining" if service.draining else "failed" if service.warm_error else "warming"
        return JSONResponse({"status": status, "error": service.warm_error}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        service.metrics.encoder_queue.set(service.batcher.waiting)
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _admit(service)
        service.authorize(request)
        names = [ROUTER_MODEL, *config.profiles, *service.router.targets]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "prefill-router"} for n in names]
        return {"object": "list", "data": data}

    @app.post("/v1/route")
    async def route(request: Request) -> dict[str, Any]:
        _admit(service)
        client = service.authorize(request)
        body = await _json_body(request, config)
        profile = _profile(check_model(body.get("model", ROUTER_MODEL)), service, pin=False)
        assert profile is not None  # pin=False never returns None
        _check_rights(client, body.get("router"), pinned=None)
        overrides = parse_overrides(body.get("router"))
        texts = _route_texts(body, config)
        routed = await asyncio.gather(*(service.route(text, profile, overrides) for text in texts))
        for r in routed:
            service.metrics.decisions.labels(r.decision.target, r.source).inc()
        if "prompts" in body:
            return {"object": "list", "data": [r.to_json() for r in routed]}
        return routed[0].to_json()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        _admit(service)
        client = service.authorize(request)
        body = await _json_body(request, config)
        return await _chat(service, request, body, client)


async def _chat(service: RoutingService, request: Request, body: dict[str, Any], client: Client) -> Response:
    config = service.config
    model = check_model(body.get("model"))
    profile = _profile(model, service, pin=True)
    messages = check_messages(body)
    _check_rights(client, body.get("router"), pinned=model if profile is None else None)
    overrides = parse_overrides(body.get("router"))
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    session = request.headers.get("x-session-id") or (
        body.get("user") if isinstance(body.get("user"), str) else None
    )
    # Scoped by client: one client's session id never reads or writes another client's affinity.
    session_key = (
        service.hash(f"session\0{client.name}\0{session}") if session and overrides.session else None
    )
    text = routing_text(messages, config.routing_text)
    if profile is None:  # the model names a target: pinned, no fallback
        routed, chain = service.fixed(model, "pinned", f"pinned by model {model!r}"), [model]
    else:
        previous = service.sessions.get(session_key) if session_key else None
        if previous is not None and service.session_fits(previous, text, overrides):
            routed = service.fixed(previous, "session", "session affinity: this session's earlier target")
        else:
            routed = await service.route(text, profile, overrides)
        chain = service.chain(routed.decision.target, overrides)
    service.metrics.decisions.labels(routed.decision.target, routed.source).inc()
    upstreams = [config.targets[name] for name in chain]
    assert service.client is not None, "the app's lifespan has not started"
    record: dict[str, Any] = {
        "text_hash": service.hash(text), "session_hash": session_key, "client": client.name, "model": model,
        "source": routed.source, "target": routed.decision.target, "policy": routed.decision.policy,
        "knob": routed.decision.knob, "probabilities": routed.decision.probabilities,
        "estimated_cost_usd": routed.decision.costs_usd.get(routed.decision.target),
        "floor": None if routed.decision.certificate is None else routed.decision.certificate["floor"],
    }  # fmt: skip
    answered: dict[str, Any] = {}

    def stream_ended(outcome: str) -> None:
        service.log_decision(record | answered | {"stream": outcome})

    try:
        forwarded = await forward(
            service.client, upstreams, body, stream=bool(body.get("stream")), headers=routed.headers(),
            metrics=service.metrics, deadline_s=config.deadline_s, on_stream_end=stream_ended,
        )  # fmt: skip
    except ApiError as exc:
        service.log_decision(record | {"answered_by": None, "status": exc.status})
        raise
    if forwarded.failed:
        service.metrics.fallbacks.labels("upstream").inc(len(forwarded.failed))
    if session_key and forwarded.response.status_code < 400:
        service.sessions.put(session_key, forwarded.target)
    answered.update(
        answered_by=forwarded.target, fallback_from=forwarded.failed, status=forwarded.response.status_code
    )
    if not body.get("stream"):
        service.log_decision(record | answered)
    return forwarded.response


# ---------------------------------------------------------------------- helpers
def header_safe(text: str) -> str:
    """``text`` as a header value: printable ASCII, anything else (CR, LF, é ...) as ``?``."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _admit(service: RoutingService) -> None:
    if service.draining:
        raise ApiError(
            503, "the router is shutting down; send the request again (another replica will answer it)",
            type="server_error", code="shutting_down",
        )  # fmt: skip


def _check_rights(client: Client, raw: Any, *, pinned: str | None) -> None:
    """Refuse (403) a pin or a ``router`` field the client's rights do not include."""
    rights = client.rights
    if pinned is not None and not rights.pin:
        raise ApiError(
            403, f"this client may not pin a target (model {pinned!r}); use 'router' or a profile, or ask "
            "the proxy's operator for pin: true in serve.yaml", type="permission_error",
            param="model", code="permission_denied",
        )  # fmt: skip
    if not isinstance(raw, Mapping):
        return
    denied = sorted((set(raw) & set(OVERRIDE_FIELDS)) - rights.overrides)
    if denied:
        may = ", ".join(sorted(rights.overrides)) or "none"
        raise ApiError(
            403, f"this client may not set router.{denied[0]} (it may set: {may}); the proxy's operator "
            "grants fields in serve.yaml (client_rights.overrides, or clients.NAME.overrides)",
            type="permission_error", param=f"router.{denied[0]}", code="permission_denied",
        )  # fmt: skip


async def _json_body(request: Request, config: ServeConfig) -> dict[str, Any]:
    """The body as a JSON object, read as a stream and refused as soon as it passes the limit."""
    limit = config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(f"has {int(declared)} bytes", limit)
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body has no Content-Length to check first
        size += len(chunk)
        if size > limit:
            raise _too_large(f"has more than {limit} bytes (it was still coming)", limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except RecursionError as exc:
        raise ApiError(
            400, "the request body is not valid JSON: nested too deeply", code="invalid_json"
        ) from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of > 4300 digits
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(
            400, f"the request body must be a JSON object; got {type(body).__name__}", code="invalid_json"
        )
    check_unicode(raw, body)
    return body


def _too_large(size: str, limit: int) -> ApiError:
    return ApiError(
        413, f"the request body {size}; the limit is {limit} (max_body_bytes)", code="request_too_large"
    )


def _profile(model: str, service: RoutingService, *, pin: bool) -> Profile | None:
    """The profile of ``model``; None when it names a target (and ``pin`` allows that)."""
    profile = service.config.profile(model)
    if profile is not None:
        return profile
    if pin and model in service.router.targets:
        return None
    known = [ROUTER_MODEL, *service.config.profiles, *(service.router.targets if pin else ())]
    import difflib

    close = difflib.get_close_matches(model, known, n=1)  # model is at most 256 characters
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ApiError(
        404, f"unknown model {model!r}.{hint} Known models: {', '.join(known)}", param="model",
        code="model_not_found",
    )  # fmt: skip


def _route_texts(body: Mapping[str, Any], config: ServeConfig) -> list[str]:
    if "prompts" in body:
        prompts = body["prompts"]
        if isinstance(prompts, list) and len(prompts) > config.max_prompts:
            raise ApiError(
                400, f"'prompts' holds {len(prompts)} prompts; one request may hold at most "
                f"{config.max_prompts} (max_prompts); route large sets with `prefill-router route-batch`",
                param="prompts", code="too_many_prompts",
            )  # fmt: skip
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
        return [routing_text(check_messages(body), config.routing_text)]
    raise ApiError(400, "send 'prompt', 'prompts' or 'messages'", param="prompt")


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _CountRequests:
    """ASGI middleware: requests by endpoint and status, and those in flight (streaming-safe)."""

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

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
