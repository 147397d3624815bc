"""Forwarding to the OpenAI-compatible upstreams over one shared ``httpx.AsyncClient``.

Which failures move on to the next target of the chain, and which stop there:

- a connection that could not be made (refused, connect timeout, no free pooled connection), a
  5xx, or a refusal (401 / 403 / 429: the request was not served): the next target;
- a request that may have been served (a read timeout before the headers, a dropped connection,
  the overall deadline): no retry, since a second target would bill it again: 504 or 502;
- a 200 whose body is not a JSON object, or holds only an ``error``: 502, not retried.

Upstream bodies of refusals are never passed on (a 401 can quote part of the proxy's key). Other
4xx answers are the client's problem and pass through as they are. A streamed response is passed
through byte for byte once it has started; if the upstream fails or ends it without ``[DONE]``,
the client gets an SSE error event (and the outcome is counted and logged).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from prefill_router.errors import ApiError
from prefill_router.serve.config import UpstreamTarget
from prefill_router.serve.metrics import Metrics

log = logging.getLogger("prefill_router.serve")
_PASSED_HEADERS = ("content-type", "x-request-id", "openai-processing-ms")
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # safe to try the next target
_REFUSALS = {401: "refused the proxy's credentials", 403: "refused access", 429: "is rate limiting"}

StreamEnd = Callable[[str], None]  # called once when a streamed response ends, with its outcome


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
    headers: Mapping[str, str], metrics: Metrics, deadline_s: float = 120.0,
    on_stream_end: StreamEnd | None = None,
) -> Forwarded:  # fmt: skip
    """POST ``body`` to /chat/completions of each target of ``chain`` until one answers.

    ``headers`` (the decision headers) are added to the response; ``deadline_s`` bounds every
    attempt together, until the response headers.

    Raises:
        ApiError: 502 (504 after a timeout) when no target answered; the message lists each
            failure, never an upstream's body.
    """
    failures: list[str] = []  # one line per failed attempt, for the error message
    failed: list[str] = []  # the targets that failed before one answered, by name
    give_up_at = time.monotonic() + deadline_s
    for target in chain:
        remaining = give_up_at - time.monotonic()
        if remaining <= 0:
            failures.append(f"{target.name}: not tried, the request's {deadline_s:g} s deadline passed")
            raise _fail(failures, 504)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(remaining):
                response = await client.send(_request(client, target, body), stream=stream)
        except _NOT_SENT as exc:
            failures.append(f"{target.name}: {type(exc).__name__}")
            failed.append(target.name)
            metrics.upstream_requests.labels(target.name, "connect_error").inc()
            continue
        except (httpx.TimeoutException, TimeoutError) as exc:
            waited = min(target.timeout_s, remaining)
            failures.append(
                f"{target.name}: no response within {waited:g} s; not retried elsewhere, since it may "
                "still be answering (and billing) the request"
            )
            metrics.upstream_requests.labels(target.name, "timeout").inc()
            raise _fail(failures, 504) from exc
        except httpx.HTTPError as exc:
            failures.append(
                f"{target.name}: the connection failed after the request was sent ({type(exc).__name__}); "
                "not retried elsewhere, since it may have been served"
            )
            metrics.upstream_requests.labels(target.name, "dropped").inc()
            raise _fail(failures, 502) from exc
        metrics.upstream_seconds.labels(target.name).observe(time.perf_counter() - started)
        status = response.status_code
        if status >= 500 or status in _REFUSALS:
            await response.aclose()
            what = f"HTTP {status}" if status >= 500 else f"HTTP {status}: it {_REFUSALS[status]}"
            failures.append(f"{target.name}: {what}")
            failed.append(target.name)
            outcome = "5xx" if status >= 500 else {401: "auth", 403: "auth", 429: "rate_limited"}[status]
            metrics.upstream_requests.labels(target.name, outcome).inc()
            continue
        problem = None if stream or status != 200 else _body_problem(response.content)
        if problem is not None:
            failures.append(f"{target.name}: HTTP 200 with {problem}; not retried elsewhere")
            metrics.upstream_requests.labels(target.name, "bad_response").inc()
            raise _fail(failures, 502)
        metrics.upstream_requests.labels(target.name, "ok").inc()
        return _answer(response, target.name, failed, headers, stream, metrics, on_stream_end)
    raise _fail(failures, 502)


def _answer(
    response: httpx.Response, name: str, failed: list[str], headers: Mapping[str, str], stream: bool,
    metrics: Metrics, on_stream_end: StreamEnd | None,
) -> Forwarded:  # fmt: skip
    out = {k: v for k, v in response.headers.items() if k.lower() in _PASSED_HEADERS} | dict(headers)
    out["x-router-target"] = name
    if failed:  # names, never recovered from the messages: a name may hold ':' (llama3:8b)
        out["x-router-fallback-from"] = ",".join(failed)
    if stream:
        relay = _relay(response, name, metrics, on_stream_end)
        passthrough = StreamingResponse(
            relay, status_code=response.status_code, headers=out, background=BackgroundTask(response.aclose)
        )
        return Forwarded(passthrough, name, failed)
    return Forwarded(Response(response.content, response.status_code, headers=out), name, failed)


def _fail(failures: list[str], status: int) -> ApiError:
    code = "upstream_timeout" if status == 504 else "upstream_unavailable"
    return ApiError(status, "every upstream failed: " + "; ".join(failures), type="upstream_error", code=code)


def _body_problem(content: bytes) -> str | None:
    """What is wrong with a 200's body, or None: it must be a JSON object that is not only an error."""
    try:
        body = json.loads(content)
    except ValueError:
        return "a body that is not JSON"
    if not isinstance(body, dict):
        return f"a JSON {type(body).__name__} instead of a chat completion object"
    if "error" in body and "choices" not in body:
        return "an error body instead of a chat completion"
    return None


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


async def _relay(
    response: httpx.Response, name: str, metrics: Metrics, on_end: StreamEnd | None
) -> AsyncIterator[bytes]:
    """The upstream bytes as they come; an SSE error event when the upstream fails or stops early.

    The upstream response is closed however the stream ends (the client going away included), so
    no upstream connection outlives its client.
    """
    sse = response.headers.get("content-type", "").startswith("text/event-stream")
    outcome, tail = "ok", b""
    try:
        async for chunk in response.aiter_raw():
            tail = (tail + chunk)[-64:]
            yield chunk
        if sse and response.status_code == 200 and b"[DONE]" not in tail:
            outcome = "truncated"
    except httpx.HTTPError as exc:
        outcome = "interrupted"
        log.warning("upstream %s failed mid-stream: %s", name, type(exc).__name__)
    except (GeneratorExit, asyncio.CancelledError):
        outcome = "client_disconnected"
        raise
    finally:
        with anyio.CancelScope(shield=True):  # closes even while the client's request is cancelled
            await response.aclose()
        if outcome not in ("ok", "client_disconnected"):
            metrics.stream_errors.labels(name, outcome).inc()
        if on_end is not None:
            on_end(outcome)
    if sse and outcome in ("truncated", "interrupted"):
        yield _error_event(name, outcome)


def _error_event(name: str, outcome: str) -> bytes:
    """The SSE event that tells an OpenAI client the stream failed (its SDK raises on it)."""
    what = "ended without [DONE]" if outcome == "truncated" else "failed"
    error = ApiError(
        502, f"the upstream {name} {what} mid-stream; the answer above is incomplete", type="upstream_error",
        code=f"upstream_stream_{outcome}",
    )  # fmt: skip
    return f"data: {json.dumps(error.body())}\n\n".encode()
