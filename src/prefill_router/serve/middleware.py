"""The proxy's middleware: request counting (ASGI) and the error handlers.

:class:`CountRequests` counts requests by endpoint and status and those in flight, streaming
responses included (``prefill_router_requests_total``, ``prefill_router_in_flight``).
:func:`add_error_handlers` answers every error as the OpenAI envelope
``{"error": {message, type, param, code}}`` and counts it (``prefill_router_errors_total``): an
:class:`~prefill_router.errors.ApiError` as it is, Starlette's 404/405 as ``invalid_request_error``
and anything unexpected as a 500 ``server_error`` (logged with its traceback, never shown).
The handlers read the metrics from ``request.app.state.service``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from prefill_router.errors import ApiError
from prefill_router.serve.metrics import Metrics
from prefill_router.serve.protocol import ErrorResponse

log = logging.getLogger("prefill_router.serve")
_ENDPOINTS = ("/v1/chat/completions", "/v1/route", "/v1/models", "/health", "/ready", "/metrics")


def add_error_handlers(app: Starlette) -> None:
    """Answer ApiError, Starlette's HTTP errors and any other exception as OpenAI error envelopes."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def _answer(request: Request, error: ApiError) -> Response:
    metrics: Metrics = request.app.state.service.metrics
    metrics.errors.labels(str(error.status), error.code or error.type).inc()
    return JSONResponse(ErrorResponse.of(error).model_dump(), status_code=error.status)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _answer(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = "not_found" if exc.status_code == 404 else None
    return _answer(request, ApiError(exc.status_code, str(exc.detail), code=code))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error")
    return _answer(request, ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class CountRequests:
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
