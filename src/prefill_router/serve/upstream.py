"""Forwarding to the OpenAI-compatible upstreams over one shared ``httpx.AsyncClient``.

A connection error, a timeout before the response headers, or a 5xx moves on to the next target
of the chain; once a streamed response has started it is passed through unchanged, never retried.
4xx answers are the client's problem and pass through as they are.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from prefill_router.serve.config import UpstreamTarget
from prefill_router.serve.metrics import Metrics
from prefill_router.serve.protocol import ApiError

log = logging.getLogger("prefill_router.serve")
_PASSED_HEADERS = ("content-type", "x-request-id", "openai-processing-ms")


@dataclass
class Forwarded:
    """The response to send, the target that produced it, and the targets that failed first."""

    response: Response
    target: str
    failed: list[str] = field(default_factory=list)


def new_client() -> httpx.AsyncClient:
    """The app's one client: pooled connections, no decompression surprises, per-target timeouts."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
    return httpx.AsyncClient(limits=limits, headers={"accept-encoding": "identity"})


async def forward(
    client: httpx.AsyncClient, chain: Sequence[UpstreamTarget], body: Mapping[str, Any], *, stream: bool,
    headers: Mapping[str, str], metrics: Metrics,
) -> Forwarded:  # fmt: skip
    """POST ``body`` to /chat/completions of each target of ``chain`` until one answers.

    ``headers`` (the decision headers) are added to the response.

    Raises:
        ApiError: 502 when every target failed; the message lists each failure.
    """
    failures: list[str] = []
    for target in chain:
        request = _request(client, target, body)
        started = time.perf_counter()
        try:
            response = await client.send(request, stream=stream)
        except httpx.TimeoutException:
            failures.append(f"{target.name}: no answer within {target.timeout_s:g} s")
            metrics.upstream_requests.labels(target.name, "timeout").inc()
            continue
        except httpx.HTTPError as exc:
            failures.append(f"{target.name}: {type(exc).__name__}")
            metrics.upstream_requests.labels(target.name, "connect_error").inc()
            continue
        metrics.upstream_seconds.labels(target.name).observe(time.perf_counter() - started)
        if response.status_code >= 500:
            await response.aclose()
            failures.append(f"{target.name}: HTTP {response.status_code}")
            metrics.upstream_requests.labels(target.name, "5xx").inc()
            continue
        metrics.upstream_requests.labels(target.name, "ok").inc()
        out = {k: v for k, v in response.headers.items() if k.lower() in _PASSED_HEADERS} | dict(headers)
        out["x-router-target"] = target.name
        failed = [f.split(":")[0] for f in failures]
        if failed:
            out["x-router-fallback-from"] = ",".join(failed)
        if stream:
            passthrough = StreamingResponse(
                _raw(response, target.name), status_code=response.status_code, headers=out,
                background=BackgroundTask(response.aclose),
            )  # fmt: skip
            return Forwarded(passthrough, target.name, failed)
        return Forwarded(Response(response.content, response.status_code, headers=out), target.name, failed)
    raise ApiError(
        502,
        "every upstream failed: " + "; ".join(failures),
        type="upstream_error",
        code="upstream_unavailable",
    )


def _request(client: httpx.AsyncClient, target: UpstreamTarget, body: Mapping[str, Any]) -> httpx.Request:
    payload = {k: v for k, v in body.items() if k != "router"} | {"model": target.model}
    headers = {"content-type": "application/json"}
    key = target.api_key
    if key:
        headers["authorization"] = f"Bearer {key}"
    timeout = httpx.Timeout(target.timeout_s, connect=min(target.timeout_s, 10.0))
    content = json.dumps(payload, ensure_ascii=False).encode()
    return client.build_request(
        "POST", f"{target.base_url}/chat/completions", content=content, headers=headers, timeout=timeout
    )


async def _raw(response: httpx.Response, name: str) -> AsyncIterator[bytes]:
    """The upstream bytes as they come; a failure mid-stream ends the stream (it cannot be retried)."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        log.warning("upstream %s failed mid-stream: %s", name, type(exc).__name__)
