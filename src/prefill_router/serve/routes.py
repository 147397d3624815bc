# ruff: noqa: TID253  (this module owns the proxy's FastAPI routes)
"""The proxy's HTTP routes: ``endpoints``, a FastAPI ``APIRouter`` that ``create_app`` includes.

``GET /health``, ``GET /ready``, ``GET /metrics``, ``GET /v1/models``, ``POST /v1/route`` (the
decision only) and ``POST /v1/chat/completions`` (routes, forwards, streams). Each handler reads
the :class:`~prefill_router.serve.service.RoutingService` from ``request.app.state.service`` and
the config from it; this module keeps no state. Admission (503 while draining) and the client
token (401) are checked before the body is read (413 past ``max_body_bytes``, read as a stream),
the fields (400, 404) and the client's rights (403) before anything is scored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from prefill_router.errors import ApiError
from prefill_router.serve.config import OVERRIDE_FIELDS, ROUTER_MODEL, Client, Profile, ServeConfig
from prefill_router.serve.protocol import (
    ChatCompletionRequest,
    DecisionRequest,
    ErrorResponse,
    RouteDecision,
    RouteDecisionList,
    check_messages,
    check_model,
    check_unicode,
    routing_text,
)
from prefill_router.serve.service import RoutingService
from prefill_router.serve.upstream import forward

endpoints = APIRouter()
_CHAT_ANSWER = (
    "The upstream's chat completion (or SSE stream) as it sent it, with the decision headers "
    "x-router-target, x-router-reason, x-router-probabilities, x-router-estimated-cost, x-router-cache (and "
    "x-router-fallback-from after a fallback)."
)
#: The refusals every POST endpoint may answer, documented as the OpenAI error envelope.
_REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": words}
    for status, words in [
        (400, "A malformed field (param names it), invalid JSON or too many prompts."),
        (401, "A missing or unknown client token."),
        (403, "A pin or a router field this client's rights do not include."),
        (404, "An unknown model (with the closest known name)."),
        (413, "A body past max_body_bytes."),
        (503, "Shutting down, or no score and no fallback target."),
    ]
}
_UPSTREAM_FAILURES: dict[int | str, dict[str, Any]] = {
    502: {"model": ErrorResponse, "description": "Every target of the chain failed."},
    504: {"model": ErrorResponse, "description": "No upstream answer within timeout_s / deadline_s."},
}


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a body the handler reads itself (for its size limit) as ``model``;
    ``create_app`` adds the schemas (:func:`~prefill_router.serve.protocol.openapi_schemas`)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _service(request: Request) -> RoutingService:
    """The app's routing service (set by ``create_app``)."""
    service: RoutingService = request.app.state.service
    return service


@endpoints.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness: the process answers; ``state`` says where decisions and sessions are kept and, for
    Redis, whether it answers (``ok``) or the proxy is using its in-process state (``degraded``)."""
    return {"status": "ok", "state": _service(request).state.health()}


@endpoints.get("/ready")
async def ready(request: Request) -> Response:
    """Readiness: 200 with the targets once the encoder warmed up; 503 warming, failed or draining."""
    service = _service(request)
    if service.ready:
        return JSONResponse({"status": "ready", "targets": list(service.router.targets)})
    status = "draining" if service.draining else "failed" if service.warm_error else "warming"
    return JSONResponse({"status": status, "error": service.warm_error}, status_code=503)


@endpoints.get("/metrics")
async def metrics(request: Request) -> Response:
    """The Prometheus text exposition of the service's metrics."""
    service = _service(request)
    service.metrics.encoder_queue.set(service.batcher.waiting)
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@endpoints.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The models a client may name: ``router``, the profiles, then the targets."""
    service = _service(request)
    _admit(service)
    service.authorize(request)
    names = [ROUTER_MODEL, *service.config.profiles, *service.router.targets]
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "prefill-router"} for n in names]
    return {"object": "list", "data": data}


@endpoints.post(
    "/v1/route",
    openapi_extra=_request_body(DecisionRequest),
    responses={200: {"model": RouteDecision | RouteDecisionList}, **_REFUSALS},
)
async def route(request: Request) -> dict[str, Any]:
    """The decision for ``prompt``, ``prompts`` or ``messages``, without calling an upstream."""
    service = _service(request)
    config = service.config
    _admit(service)
    client = service.authorize(request)
    body = await _json_body(request, config)
    profile = _profile(check_model(body.get("model", ROUTER_MODEL)), service, pin=False)
    assert profile is not None  # pin=False never returns None
    _check_rights(client, body.get("router"), pinned=None)
    parsed = DecisionRequest.parse(body, max_prompts=config.max_prompts)
    texts = parsed.texts(config.routing_text)
    routed = await asyncio.gather(*(service.route(text, profile, parsed.overrides) for text in texts))
    for r in routed:
        service.metrics.decisions.labels(r.decision.target, r.source).inc()
    if parsed.prompts is not None:
        return {"object": "list", "data": [r.to_json() for r in routed]}
    return routed[0].to_json()


@endpoints.post(
    "/v1/chat/completions",
    openapi_extra=_request_body(ChatCompletionRequest),
    responses={200: {"description": _CHAT_ANSWER}, **_REFUSALS, **_UPSTREAM_FAILURES},
)
async def chat(request: Request) -> Response:
    """Route a chat completion (or take its pinned target) and forward it, streamed or not."""
    service = _service(request)
    _admit(service)
    client = service.authorize(request)
    body = await _json_body(request, service.config)
    return await _chat(service, request, body, client)


async def _chat(service: RoutingService, request: Request, body: dict[str, Any], client: Client) -> Response:
    config = service.config
    model = check_model(body.get("model"))
    profile = _profile(model, service, pin=True)
    check_messages(body)
    _check_rights(client, body.get("router"), pinned=model if profile is None else None)
    parsed = ChatCompletionRequest.parse(body)  # model and messages checked: the router field, stream
    overrides = parsed.overrides
    session = request.headers.get("x-session-id") or parsed.session_user
    # Scoped by client: one client's session id never reads or writes another client's affinity.
    session_key = (
        service.hash(f"session\0{client.name}\0{session}") if session and overrides.session else None
    )
    text = routing_text(parsed.messages, config.routing_text)
    if profile is None:  # the model names a target: pinned, no fallback
        routed, chain = service.fixed(model, "pinned", f"pinned by model {model!r}"), [model]
    else:
        previous = await service.session_target(session_key) if session_key else None
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
            service.client, upstreams, body, stream=parsed.stream, headers=routed.headers(),
            metrics=service.metrics, deadline_s=config.deadline_s, on_stream_end=stream_ended,
        )  # fmt: skip
    except ApiError as exc:
        service.log_decision(record | {"answered_by": None, "status": exc.status})
        raise
    if forwarded.failed:
        service.metrics.fallbacks.labels("upstream").inc(len(forwarded.failed))
    if session_key and forwarded.response.status_code < 400:
        await service.remember_session(session_key, forwarded.target)
    answered.update(
        answered_by=forwarded.target, fallback_from=forwarded.failed, status=forwarded.response.status_code
    )
    if not parsed.stream:
        service.log_decision(record | answered)
    return forwarded.response


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
