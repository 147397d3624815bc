"""Test support for the serving stage: a fake OpenAI-compatible upstream, uvicorn in a thread, a tiny router.

Used by tests/test_serve_*.py and benchmarks/serve_load.py. Real HTTP servers on 127.0.0.1, no mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

# the tiny router's targets and the upstream model ids the tests give them
UPSTREAM_IDS = {"math-model": "up-math", "poem-model": "up-poem", "code-model": "up-code"}


#: What the fake puts in its refusals: a fragment of "the key", which must never reach a client.
KEY_FRAGMENT = "sk-live-7f3a...9Qz"
#: The body of the fake's 400 (mode ``reject``): a client error, passed through as it is.
REJECTION = (
    b'{"error": {"message": "bad request: max_tokens must be positive", "type": "invalid_request_error"}}'
)


@dataclass
class FakeBehaviour:
    """What the fake upstream does, per upstream model id (default ``ok``): ok / fail / stall / reject /
    flaky (``fail_share`` 5xx, ``stall_share`` stalls, otherwise ok), and the misbehaviours of the
    adversarial tests: unauthorized / forbidden / rate_limited (401 / 403 / 429 quoting KEY_FRAGMENT),
    bad_json and error_200 (a 200 whose body is not JSON, or only an error), truncated (an SSE stream
    without [DONE]), drop (the connection breaks after the first event), headers_stall (headers, then
    nothing for ``stall_s``) and slow_stream (one event, then one every ``stall_s``)."""

    modes: dict[str, str] = field(default_factory=dict)
    stall_s: float = 1.5
    fail_share: float = 0.1
    stall_share: float = 0.1
    calls: list[tuple[str, bool]] = field(default_factory=list)  # (model, stream)
    received: list[Received] = field(default_factory=list)  # every request: headers and body
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    active_streams: int = 0  # response bodies being sent now (a leak keeps this above zero)
    seen_keys: list[str] = field(default_factory=list)  # Authorization headers received


@dataclass(frozen=True)
class Received:
    """One request as the fake upstream received it."""

    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]  # the parsed JSON body


_REFUSALS = {"unauthorized": 401, "forbidden": 403, "rate_limited": 429}


def _misbehave(mode: str, model: str, stream: bool, behaviour: FakeBehaviour) -> Response | None:
    """The adversarial modes' answers (None for the ordinary ones)."""
    if mode in _REFUSALS:
        body = {
            "error": {"message": f"Incorrect API key provided: {KEY_FRAGMENT}", "type": "invalid_request"}
        }
        return Response(json.dumps(body).encode(), _REFUSALS[mode], media_type="application/json")
    if mode == "bad_json":
        return Response(b'{"id": "chatcmpl-1", "choices": [', media_type="application/json")
    if mode == "error_200":
        body = {"error": {"message": f"quota exceeded for {KEY_FRAGMENT}", "type": "insufficient_quota"}}
        return Response(json.dumps(body).encode(), media_type="application/json")
    events = stream_chunks(model)
    if mode == "truncated":
        return StreamingResponse(_counted(behaviour, events[:2]), media_type="text/event-stream")
    if mode == "drop":
        return StreamingResponse(_counted(behaviour, events[:1], fail=True), media_type="text/event-stream")
    if mode == "headers_stall":
        return StreamingResponse(
            _counted(behaviour, events, first_delay_s=behaviour.stall_s),
            media_type="text/event-stream" if stream else "application/json",
        )
    if mode == "slow_stream":
        return StreamingResponse(
            _counted(behaviour, events, delay_s=behaviour.stall_s), media_type="text/event-stream"
        )
    return None


async def _counted(
    behaviour: FakeBehaviour, events: list[bytes], *, fail: bool = False, first_delay_s: float = 0.0,
    delay_s: float = 0.0,
) -> Any:  # fmt: skip
    behaviour.active_streams += 1
    try:
        await asyncio.sleep(first_delay_s)
        for i, event in enumerate(events):
            if i:
                await asyncio.sleep(delay_s)
            yield event
        if fail:
            raise ConnectionResetError("the fake upstream drops the connection")
    finally:
        behaviour.active_streams -= 1


def completion_bytes(model: str) -> bytes:
    """The fake's non-streaming answer for ``model`` (deterministic, so tests compare bytes)."""
    body = {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer from {model}"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }  # fmt: skip
    return json.dumps(body).encode()


def stream_chunks(model: str) -> list[bytes]:
    """The fake's SSE events for ``model``."""
    chunks = []
    for i, piece in enumerate(["answer ", "from ", model]):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        event = {
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }  # fmt: skip
        chunks.append(f"data: {json.dumps(event)}\n\n".encode())
    return [*chunks, b"data: [DONE]\n\n"]


def fake_upstream(behaviour: FakeBehaviour) -> FastAPI:
    """An OpenAI-compatible chat-completions server whose behaviour ``behaviour`` selects."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        model, stream = str(body.get("model")), bool(body.get("stream"))
        behaviour.calls.append((model, stream))
        behaviour.received.append(Received({k.lower(): v for k, v in request.headers.items()}, body))
        behaviour.seen_keys.append(request.headers.get("authorization", ""))
        mode = behaviour.modes.get(model, "ok")
        misbehaving = _misbehave(mode, model, stream, behaviour)
        if misbehaving is not None:
            return misbehaving
        if mode == "flaky":
            roll = behaviour.rng.random()
            mode = "fail" if roll < behaviour.fail_share else "ok"
            if behaviour.fail_share <= roll < behaviour.fail_share + behaviour.stall_share:
                mode = "stall"
        if mode == "fail":
            return Response(b'{"error": {"message": "upstream broke"}}', 500, media_type="application/json")
        if mode == "reject":
            return Response(REJECTION, 400, media_type="application/json")
        if mode == "stall":
            await asyncio.sleep(behaviour.stall_s)
        if stream:

            async def events() -> Any:
                for chunk in stream_chunks(model):
                    yield chunk

            return StreamingResponse(events(), media_type="text/event-stream")
        return Response(completion_bytes(model), media_type="application/json")

    return app


class ServerThread:
    """A real uvicorn server for ``app`` on a free loopback port, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="error", lifespan="on", timeout_graceful_shutdown=2,
            ws="none", access_log=False,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


_BUILT: dict[tuple[Path, Path], Path] = {}  # one fit per test session: the fit is deterministic


def build_tiny_router(model_dir: Path, cache: Path, folder: Path) -> Path:
    """Fit the tiny-llama router of tests/test_route.py (3 priced targets) and save it under ``folder``
    (a copy of the session's first fit, when there is one)."""
    import shutil

    built = _BUILT.get((model_dir, cache))
    if built is not None and built.is_dir():
        return Path(shutil.copytree(built, folder / "router"))
    _BUILT[(model_dir, cache)] = path = _fit_tiny_router(model_dir, cache, folder)
    return path


def _fit_tiny_router(model_dir: Path, cache: Path, folder: Path) -> Path:
    import numpy as np

    from prefill_router.encode import Encoder, FeatureStore, extract_features
    from prefill_router.train import EncoderIdentity, LayerFeatures, fit_router
    from tests.test_route import SETTINGS, topics

    encoder = Encoder(str(model_dir), dtype="float32", threads=1, cache_dir=cache)
    dataset = topics()
    stored = extract_features(encoder, dataset.prompts.tolist(), FeatureStore(cache))
    feats = LayerFeatures(np.asarray(stored.features), stored.key.poolings, stored.key.layers)
    train = np.flatnonzero(dataset.splits == "train")
    train_feats = LayerFeatures(feats.values[train], feats.poolings, feats.layers)
    router, _ = fit_router(dataset.take(train), train_feats, EncoderIdentity.of(encoder), SETTINGS)
    return router.save(folder / "router")


def tiny_router(model_dir: Path, factory: Any, name: str) -> Any:
    """The session's tiny router in a fresh folder ``name`` of ``factory`` (a TempPathFactory),
    loaded with a one-thread encoder."""
    cache = factory.getbasetemp() / "cache"
    return load_tiny_router(build_tiny_router(model_dir, cache, factory.mktemp(name)), model_dir, cache)


def load_tiny_router(path: Path, model_dir: Path, cache: Path) -> Any:
    """Load the saved tiny router with a one-thread encoder."""
    from prefill_router import Router
    from prefill_router.encode import Encoder

    router = Router.load(path, cache_dir=cache)
    router.use_encoder(Encoder(str(model_dir), dtype="float32", threads=1, cache_dir=cache))
    return router


@contextlib.contextmanager
def running_proxy(router: Any, config: Any, *, decision_log: Path | None = None) -> Iterator[str]:
    """The proxy for ``router`` and ``config`` on a loopback port, once its warm-up has ended."""
    from prefill_router.serve.app import create_app

    with ServerThread(create_app(router, config, decision_log=decision_log)) as server:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=server.url) as client:
            while time.monotonic() < deadline:
                ready = client.get("/ready")
                if ready.status_code == 200 or ready.json()["status"] == "failed":
                    break
                time.sleep(0.01)
        yield server.url


def prometheus(url: str, name: str, having: str = "") -> float:
    """Sum of every sample of ``name`` (all labels, or those with ``having``) in the proxy's /metrics."""
    text = httpx.get(f"{url}/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#") and having in line
    )
