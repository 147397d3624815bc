"""The routing proxy end to end: real uvicorn servers on 127.0.0.1 (proxy and a fake upstream), no mocks."""

from __future__ import annotations

import copy
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from prefill_router import Router
from prefill_router.policy import QualityFloor
from prefill_router.serve.app import create_app
from prefill_router.serve.config import Profile, ServeConfig, UpstreamTarget
from tests.serve_support import (
    UPSTREAM_IDS,
    FakeBehaviour,
    ServerThread,
    completion_bytes,
    fake_upstream,
    prometheus,
    running_proxy,
    stream_chunks,
    tiny_router,
)

TOKEN = "test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TARGETS = ("math-model", "poem-model", "code-model")
FALLBACK = ("poem-model", "math-model", "code-model")
CODE = "code question: python function"
MATH = "math question: blue square number"


@pytest.fixture(scope="module")
def router(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Router:
    loaded: Router = tiny_router(tiny_llama_dir, tmp_path_factory, "serve")
    return loaded


@pytest.fixture(scope="module")
def behaviour() -> FakeBehaviour:
    return FakeBehaviour(stall_s=1.0)


@pytest.fixture(scope="module")
def upstream(behaviour: FakeBehaviour) -> Iterator[str]:
    with ServerThread(fake_upstream(behaviour)) as server:
        yield server.url


def config_for(upstream: str, **options: Any) -> ServeConfig:
    targets = {n: UpstreamTarget(n, f"{upstream}/v1", UPSTREAM_IDS[n], None, 0.3) for n in TARGETS}
    defaults: dict[str, Any] = {
        "fallback": FALLBACK, "client_tokens": (TOKEN,), "cache_size": 100, "max_body_bytes": 4000,
        "max_wait_ms": 20.0, "profiles": {"router-cheap": Profile("tolerance", 1.0)},
    }  # fmt: skip
    return ServeConfig(targets=targets, **(defaults | options))


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("log") / "decisions.jsonl"


@pytest.fixture(scope="module")
def proxy(router: Router, upstream: str, log_path: Path) -> Iterator[str]:
    with ServerThread(create_app(router, config_for(upstream), decision_log=log_path)) as server:
        with httpx.Client(base_url=server.url) as client:
            for _ in range(3000):  # wait for the warm-up (a few ms on the tiny encoder)
                if client.get("/ready").status_code == 200:
                    break
                time.sleep(0.01)
        yield server.url


@pytest.fixture
def client(proxy: str, behaviour: FakeBehaviour) -> Iterator[httpx.Client]:
    behaviour.modes.clear()
    behaviour.calls.clear()
    behaviour.received.clear()
    with httpx.Client(base_url=proxy, headers=AUTH, timeout=10) as c:
        yield c


def chat(client: httpx.Client, text: str = CODE, **extra: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": "router", "messages": [{"role": "user", "content": text}]} | extra,
    )


def metric(client: httpx.Client, name: str, having: str = "") -> float:
    """Sum of every sample of ``name`` (all labels, or those with ``having``) in /metrics."""
    text = client.get("/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#") and having in line
    )


# ================================================================== passthrough and decisions
def test_chat_is_routed_and_passed_through_byte_for_byte(client: httpx.Client, router: Router) -> None:
    response = chat(client)
    assert response.status_code == 200, response.text
    target = response.headers["x-router-target"]
    p, c = router.predict_proba([CODE])[0], router.costs([CODE])[0]
    mu = router.certify(QualityFloor(within=0.01)).mu  # default: within 1 point of the best single target
    assert mu is not None and target == TARGETS[int(np.argmax(p - mu * c))]
    assert response.content == completion_bytes(UPSTREAM_IDS[target])  # the upstream's bytes, its model name
    shown = dict(item.split("=") for item in response.headers["x-router-probabilities"].split(","))
    assert list(shown) == list(TARGETS)
    assert [float(v) for v in shown.values()] == pytest.approx(p.tolist(), abs=1e-3)
    cost = c[TARGETS.index(target)]
    assert float(response.headers["x-router-estimated-cost"]) == pytest.approx(cost, rel=1e-5)
    assert response.headers["x-router-reason"].startswith(
        f"quality floor within 1 point of {router.best_single} (delta=0.05, certified on "
    )
    assert f"budget policy, mu={mu:.2g}: maximises p - mu*c" in response.headers["x-router-reason"]
    assert response.headers["content-type"] == "application/json"


def test_streaming_is_passed_through_unchanged(client: httpx.Client) -> None:
    with client.stream(
        "POST", "/v1/chat/completions",
        json={"model": "router", "stream": True, "messages": [{"role": "user", "content": CODE}]},
    ) as response:  # fmt: skip
        body = response.read()
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        target = response.headers["x-router-target"]
    assert body == b"".join(stream_chunks(UPSTREAM_IDS[target]))


def test_a_target_name_pins_the_target(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions", json={"model": "math-model", "messages": [{"role": "user", "content": CODE}]}
    )
    assert response.status_code == 200
    assert response.headers["x-router-target"] == "math-model"
    assert response.headers["x-router-reason"] == "pinned by model 'math-model'"


def test_a_profile_and_overrides_change_the_decision(client: httpx.Client) -> None:
    cheap = client.post(
        "/v1/chat/completions",
        json={"model": "router-cheap", "messages": [{"role": "user", "content": CODE}]},
    )
    assert cheap.headers["x-router-target"] == "poem-model"  # tolerance 1: the cheapest
    allowed = chat(client, router={"allowed": ["code-model", "math-model"], "policy": "lambda", "knob": 1.0})
    assert allowed.headers["x-router-target"] in ("code-model", "math-model")
    capped = chat(client, router={"allowed": ["code-model", "math-model"], "max_cost_usd": 1e-12})
    assert capped.headers["x-router-target"] == "math-model"  # nothing fits: the cheapest allowed one
    bad = chat(client, router={"policy": "greedy"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "router.policy"
    unknown = chat(client, router={"allowed": ["code-modle"]})
    assert unknown.status_code == 400
    assert "Did you mean 'code-model'?" in unknown.json()["error"]["message"]


def test_route_endpoint_returns_the_decision_only(
    client: httpx.Client, router: Router, behaviour: FakeBehaviour
) -> None:
    one = client.post("/v1/route", json={"prompt": MATH})
    assert one.status_code == 200
    decision = one.json()
    assert set(decision) >= {"target", "probabilities", "costs_usd", "candidates", "reason", "policy", "knob"}
    assert decision["probabilities"] == pytest.approx(
        dict(zip(TARGETS, router.predict_proba([MATH])[0].tolist(), strict=True))
    )
    assert decision["candidates"] == list(TARGETS)
    batch = client.post(
        "/v1/route", json={"prompts": [MATH, CODE], "router": {"policy": "tolerance", "knob": 1.0}}
    )
    assert [d["target"] for d in batch.json()["data"]] == ["poem-model", "poem-model"]
    from_messages = client.post("/v1/route", json={"messages": [{"role": "user", "content": MATH}]})
    assert from_messages.json()["target"] == decision["target"]
    assert behaviour.calls == []  # no upstream call


def test_decisions_are_cached_by_keyed_hash(client: httpx.Client) -> None:
    text = "trivia question: a fresh prompt for the cache"
    hits = metric(client, "prefill_router_cache_hits_total")
    first = client.post("/v1/route", json={"prompt": text}).json()
    second = client.post("/v1/route", json={"prompt": text}).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["probabilities"] == second["probabilities"]
    assert metric(client, "prefill_router_cache_hits_total") == hits + 1


def test_session_affinity_reuses_the_target_unless_opted_out(client: httpx.Client) -> None:
    session = {"x-session-id": "conversation-1"}
    first = client.post(
        "/v1/chat/completions", headers=session,
        json={"model": "router", "messages": [{"role": "user", "content": CODE}],
              "router": {"allowed": ["code-model"]}},
    )  # fmt: skip
    assert first.headers["x-router-target"] == "code-model"
    later = client.post(
        "/v1/chat/completions",
        headers=session,
        json={"model": "router-cheap", "messages": [{"role": "user", "content": MATH}]},
    )
    assert later.headers["x-router-target"] == "code-model"
    assert later.headers["x-router-reason"].startswith("session affinity")
    out = client.post(
        "/v1/chat/completions", headers=session,
        json={"model": "router-cheap", "messages": [{"role": "user", "content": MATH}],
              "router": {"session": False}},
    )  # fmt: skip
    assert out.headers["x-router-target"] == "poem-model"
    by_user = {"model": "router-cheap", "user": "u-7", "messages": [{"role": "user", "content": MATH}]}
    assert client.post("/v1/chat/completions", json=by_user).headers["x-router-target"] == "poem-model"
    pinned_first = client.post("/v1/chat/completions", json=by_user | {"model": "code-model"})
    assert pinned_first.headers["x-router-target"] == "code-model"
    assert client.post("/v1/chat/completions", json=by_user).headers["x-router-target"] == "code-model"


# ======================================================================= failures
def test_upstream_5xx_and_connect_errors_fall_back(client: httpx.Client, behaviour: FakeBehaviour) -> None:
    fallbacks = metric(client, "prefill_router_fallbacks_total")
    behaviour.modes["up-code"] = "fail"
    failed = chat(client, router={"allowed": ["code-model"]})
    assert failed.status_code == 502  # the chain within allowed targets is just code-model
    assert failed.json()["error"]["code"] == "upstream_unavailable"
    behaviour.modes |= {"up-code": "ok", "up-math": "fail"}
    cheapest = {"allowed": ["code-model", "math-model"], "max_cost_usd": 1e-12}  # math-model: the cheaper
    response = chat(client, router=cheapest)
    assert response.status_code == 200
    assert response.headers["x-router-target"] == "code-model"  # poem-model is not allowed
    assert response.headers["x-router-fallback-from"] == "math-model"
    assert response.content == completion_bytes("up-code")
    assert metric(client, "prefill_router_fallbacks_total") >= fallbacks + 1


def test_a_read_timeout_is_not_sent_to_a_second_target(
    client: httpx.Client, behaviour: FakeBehaviour
) -> None:
    """The first target may still be answering (and billing) it: a 504, never a second bill."""
    timeouts = metric(client, "prefill_router_upstream_requests_total", 'outcome="timeout"')
    behaviour.modes["up-math"] = "stall"  # 1 s, past the targets' 0.3 s timeout
    stalled = client.post(
        "/v1/chat/completions",
        json={
            "model": "router",
            "messages": [{"role": "user", "content": MATH}],
            "router": {"allowed": ["math-model", "code-model"], "max_cost_usd": 1e-12},
        },
    )
    assert stalled.status_code == 504
    error = stalled.json()["error"]
    assert error["code"] == "upstream_timeout"
    assert error["message"] == (
        "every upstream failed: math-model: no response within 0.3 s; not retried elsewhere, since it may "
        "still be answering (and billing) the request"
    )
    assert [model for model, _ in behaviour.calls] == ["up-math"]  # code-model was never called
    assert metric(client, "prefill_router_upstream_requests_total", 'outcome="timeout"') == timeouts + 1


def test_streaming_falls_back_before_the_first_byte(client: httpx.Client, behaviour: FakeBehaviour) -> None:
    behaviour.modes["up-math"] = "fail"
    body = {"model": "router", "stream": True, "messages": [{"role": "user", "content": MATH}],
            "router": {"allowed": ["math-model", "code-model"], "max_cost_usd": 1e-12}}  # fmt: skip
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        content = response.read()
        assert response.headers["x-router-target"] == "code-model"
    assert content == b"".join(stream_chunks("up-code"))


def test_every_upstream_down_gives_a_502_envelope(router: Router, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: connection refused
        with ServerThread(create_app(router, config_for(dead, client_tokens=()))) as server:
            response = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={"model": "router", "messages": [{"role": "user", "content": CODE}]},
                timeout=10,
            )
    assert response.status_code == 502
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "upstream_error" and error["message"].startswith("every upstream failed: ")
    assert error["message"].count("ConnectError") == 3


def test_an_encoder_failure_goes_to_the_fallback_target(router: Router, upstream: str) -> None:
    broken = copy.copy(router)

    def fail_on_explode(prompts: Any) -> Any:
        if any("explode" in p for p in prompts):
            raise RuntimeError("encoder exploded")
        return router.predict_proba(prompts)

    broken.predict_proba = fail_on_explode  # type: ignore[method-assign]
    with (
        running_proxy(broken, config_for(upstream, client_tokens=())) as url,
        httpx.Client(base_url=url) as c,
    ):
        response = c.post(
            "/v1/chat/completions",
            json={"model": "router", "messages": [{"role": "user", "content": CODE + " explode"}]},
        )
        assert response.status_code == 200
        assert response.headers["x-router-target"] == FALLBACK[0]
        assert response.headers["x-router-reason"] == "scoring failed (RuntimeError); the fallback target"
        assert c.get("/ready").status_code == 200  # the warm-up worked: only this prompt failed
        assert c.get("/health").json() == {"status": "ok", "state": {"backend": "local"}}
        assert metric(c, 'prefill_router_fallbacks_total{kind="encoder"}') == 1


def test_a_failed_warm_up_sends_requests_to_the_fallback_without_reloading(
    router: Router, upstream: str
) -> None:
    """An encoder that cannot load is not loaded again for every batch (each try costs a model load)."""
    broken = copy.copy(router)
    calls: list[int] = []

    def fail(prompts: Any) -> Any:
        calls.append(len(prompts))
        raise RuntimeError("the model folder is gone")

    broken.predict_proba = fail  # type: ignore[method-assign]
    with (
        running_proxy(broken, config_for(upstream, client_tokens=())) as url,
        httpx.Client(base_url=url) as c,
    ):
        ready = c.get("/ready")
        assert (ready.status_code, ready.json()["status"]) == (503, "failed")
        assert ready.json()["error"] == "RuntimeError: the model folder is gone"
        for i in range(10):
            body = {"model": "router", "messages": [{"role": "user", "content": f"{CODE} {i}"}]}
            response = c.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            assert response.headers["x-router-target"] == FALLBACK[0]
            assert response.headers["x-router-reason"].startswith(
                "scoring failed (the encoder did not warm up)"
            )
        assert calls == [1]  # the warm-up only
        assert metric(c, 'prefill_router_fallbacks_total{kind="encoder"}') == 10


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"{not json", 400, "the request body is not valid JSON"),
        (b"[1, 2]", 400, "the request body must be a JSON object; got list"),
        (b'{"model": "router"}', 400, "'messages' must be a non-empty list of chat messages"),
        (b'{"model": "router", "messages": []}', 400, "'messages' must be a non-empty list of chat messages"),
        (
            b'{"model": "router", "messages": [{"role": "user", "content": "  "}]}',
            400,
            "the messages hold no user text",
        ),
        (
            b'{"model": "routr", "messages": [{"role": "user", "content": "hi"}]}',
            404,
            "unknown model 'routr'. Did you mean 'router'?",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "'model' must be"),
        (
            b'{"model": "router", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}',
            413,
            "the request body has 5066 bytes; the limit is 4000",
        ),
    ],
)
def test_bad_requests_get_openai_error_bodies(
    client: httpx.Client, content: bytes, status: int, message: str
) -> None:
    response = client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"].startswith(message)


def test_client_tokens_are_required(proxy: str) -> None:
    body = {"model": "router", "messages": [{"role": "user", "content": CODE}]}
    missing = httpx.post(f"{proxy}/v1/chat/completions", json=body)
    wrong = httpx.post(f"{proxy}/v1/chat/completions", json=body, headers={"authorization": "Bearer nope"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert wrong.json()["error"] == {
        "message": "invalid client token",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert httpx.get(f"{proxy}/v1/models").status_code == 401
    assert httpx.get(f"{proxy}/health").status_code == 200  # probes need no token


def test_models_health_ready_and_unknown_paths(client: httpx.Client) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["router", "router-cheap", *TARGETS]
    assert client.get("/ready").json() == {"status": "ready", "targets": list(TARGETS)}
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_openapi_json_documents_the_router_field(proxy: str) -> None:
    """/openapi.json (a probe: no token) documents both POST bodies, whose `router` field lists every
    option with its type and words, and the OpenAI error envelope of the refusals."""
    from prefill_router.serve.config import OVERRIDE_FIELDS

    response = httpx.get(f"{proxy}/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    components = schema["components"]["schemas"]
    for path, body in [("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/route", "DecisionRequest")]:
        post = schema["paths"][path]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{body}"
        }
        router_field = components[body]["properties"]["router"]
        assert {"$ref": "#/components/schemas/RouterOptions"} in router_field["anyOf"]
        assert post["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    assert components["ChatCompletionRequest"]["additionalProperties"] is True  # the rest passes through
    assert components["ChatCompletionRequest"]["required"] == ["model", "messages"]
    options = components["RouterOptions"]
    assert set(options["properties"]) == set(OVERRIDE_FIELDS) and options["additionalProperties"] is False
    assert all(option["description"] for option in options["properties"].values())
    policy = next(t for t in options["properties"]["policy"]["anyOf"] if t.get("type") == "string")
    assert policy["enum"] == ["budget", "lambda", "tolerance"]
    assert options["properties"]["session"]["type"] == "boolean"
    assert {"type": "number", "minimum": 0} in options["properties"]["knob"]["anyOf"]
    assert {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5} in options["properties"]["delta"][
        "anyOf"
    ]
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', response.text))
    assert refs <= set(components)  # every reference resolves


def test_two_apps_in_one_process_answer_from_their_own_state(router: Router, upstream: str) -> None:
    """The routes are shared module-level handlers: each app's answers, errors and metrics come from
    its own ``app.state``, never from another app's."""
    other = config_for(upstream, profiles={"router-other": Profile("lambda", 0.5)}, client_tokens=("other",))
    with running_proxy(router, config_for(upstream)) as first, running_proxy(router, other) as second:
        ids = [m["id"] for m in httpx.get(f"{first}/v1/models", headers=AUTH).json()["data"]]
        assert ids == ["router", "router-cheap", *TARGETS]
        ids = [m["id"] for m in httpx.get(f"{second}/v1/models", headers={"authorization": "Bearer other"})
               .json()["data"]]  # fmt: skip
        assert ids == ["router", "router-other", *TARGETS]
        assert httpx.get(f"{second}/v1/models", headers=AUTH).json()["error"]["code"] == "invalid_api_key"
        errors = 'prefill_router_errors_total{code="invalid_api_key",status="401"}'
        assert prometheus(second, errors) == 1 and prometheus(first, errors) == 0


def test_metrics_count_requests_decisions_and_latency(client: httpx.Client) -> None:
    before = metric(client, 'prefill_router_requests_total{endpoint="/v1/chat/completions",status="200"}')
    decisions = metric(client, "prefill_router_decisions_total")
    upstream = metric(client, "prefill_router_upstream_seconds_count")
    assert chat(client, text="a prompt for the metrics test").status_code == 200
    assert (
        metric(client, 'prefill_router_requests_total{endpoint="/v1/chat/completions",status="200"}')
        == before + 1
    )
    assert metric(client, "prefill_router_decisions_total") == decisions + 1
    assert metric(client, "prefill_router_upstream_seconds_count") == upstream + 1
    for name in (
        "prefill_router_encode_seconds_count",
        "prefill_router_score_seconds_count",
        "prefill_router_batch_size_count",
    ):
        assert metric(client, name) >= 1


def test_concurrent_prompts_share_one_encoder_forward(client: httpx.Client) -> None:
    batches, prompts = (
        metric(client, "prefill_router_batch_size_count"),
        metric(client, "prefill_router_batch_size_sum"),
    )
    texts = [f"batch prompt number {i} about python" for i in range(6)]
    assert client.post("/v1/route", json={"prompts": texts}).status_code == 200
    assert metric(client, "prefill_router_batch_size_sum") == prompts + 6
    assert metric(client, "prefill_router_batch_size_count") == batches + 1  # all six in one forward


def test_the_decision_log_holds_hashes_not_text(client: httpx.Client, log_path: Path) -> None:
    secret = "code question: my secret python function"
    assert chat(client, text=secret).status_code == 200
    lines = log_path.read_text(encoding="utf-8").splitlines()
    assert "secret" not in log_path.read_text(encoding="utf-8")
    record = json.loads(lines[-1])
    assert len(record["text_hash"]) == 64 and record["answered_by"] == record["target"]
    assert record["status"] == 200 and set(record["probabilities"]) == set(TARGETS)
    assert record["floor"].startswith("within 1 point of")  # the default floor kept


def test_the_official_openai_client_works(proxy: str) -> None:
    import openai

    api = openai.OpenAI(base_url=f"{proxy}/v1", api_key=TOKEN, max_retries=0)
    raw = api.chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": CODE}]
    )
    completion = raw.parse()
    target = raw.headers["x-router-target"]
    assert completion.model == UPSTREAM_IDS[target]
    assert completion.choices[0].message.content == f"answer from {UPSTREAM_IDS[target]}"
    stream = api.chat.completions.create(
        model="poem-model", messages=[{"role": "user", "content": CODE}], stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == "answer from up-poem"
    assert [m.id for m in api.models.list()][:2] == ["router", "router-cheap"]
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        api.chat.completions.create(model="gpt-nothing", messages=[{"role": "user", "content": CODE}])


# ========================================== the contract with upstreams and clients
@pytest.fixture
def keyed_proxy(
    router: Router, upstream: str, behaviour: FakeBehaviour, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A proxy configured from a serve.yaml: client tokens and one upstream key from the environment."""
    import yaml

    from prefill_router.serve.config import ServeConfig

    monkeypatch.setenv("ROUTER_TOKENS", "team-a-token, team-b-token")
    monkeypatch.setenv("MATH_UPSTREAM_KEY", "sk-upstream-math")
    targets = {n: {"base_url": f"{upstream}/v1", "model": UPSTREAM_IDS[n], "timeout_s": 5} for n in TARGETS}
    targets["math-model"]["api_key_env"] = "MATH_UPSTREAM_KEY"
    document = {"targets": targets, "fallback": list(FALLBACK), "client_tokens_env": "ROUTER_TOKENS"}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(document))
    config = ServeConfig.load(tmp_path / "serve.yaml", router.targets)
    behaviour.modes.clear()
    with running_proxy(router, config) as url:
        behaviour.received.clear()
        yield url


def test_client_tokens_come_from_client_tokens_env(keyed_proxy: str) -> None:
    body = {"prompt": MATH}
    for token in ("team-a-token", "team-b-token"):
        ok = httpx.post(f"{keyed_proxy}/v1/route", json=body, headers={"authorization": f"Bearer {token}"})
        assert ok.status_code == 200, ok.text
    other = httpx.post(f"{keyed_proxy}/v1/route", json=body, headers={"authorization": f"Bearer {TOKEN}"})
    assert other.status_code == 401 and other.json()["error"]["code"] == "invalid_api_key"


def test_upstreams_get_their_own_key_and_never_the_clients_token(
    keyed_proxy: str, behaviour: FakeBehaviour
) -> None:
    client_auth = {"authorization": "Bearer team-a-token"}
    for target in ("math-model", "code-model"):
        body = {"model": target, "messages": [{"role": "user", "content": CODE}]}
        answered = httpx.post(f"{keyed_proxy}/v1/chat/completions", json=body, headers=client_auth)
        assert answered.status_code == 200, answered.text
    to_math, to_code = behaviour.received
    assert to_math.headers["authorization"] == "Bearer sk-upstream-math"  # from api_key_env
    assert "authorization" not in to_code.headers  # no key configured: none sent, not the client's
    assert all("team-a-token" not in json.dumps(r.headers) for r in behaviour.received)


def test_the_router_field_is_removed_and_the_rest_forwarded_as_sent(
    client: httpx.Client, behaviour: FakeBehaviour
) -> None:
    sent = {
        "model": "router", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": MATH}],
        "temperature": 0.25, "max_tokens": 17, "stop": ["\n\n"], "user": "u-contract",
        "router": {"allowed": ["code-model"], "session": False},
    }  # fmt: skip
    response = client.post("/v1/chat/completions", json=sent)
    assert response.status_code == 200, response.text
    (received,) = behaviour.received
    expected = {k: v for k, v in sent.items() if k != "router"} | {"model": UPSTREAM_IDS["code-model"]}
    assert received.body == expected
    assert received.headers["content-type"] == "application/json"


def test_an_upstream_4xx_passes_through_without_a_fallback(
    client: httpx.Client, behaviour: FakeBehaviour
) -> None:
    from tests.serve_support import REJECTION

    behaviour.modes["up-code"] = "reject"
    response = chat(client, router={"allowed": ["code-model", "math-model"], "policy": "lambda", "knob": 1.0})
    assert response.status_code == 400
    assert response.content == REJECTION  # the upstream's body as it is: the client's own mistake
    assert response.headers["x-router-target"] == "code-model"
    assert "x-router-fallback-from" not in response.headers
    assert [model for model, _ in behaviour.calls] == ["up-code"]  # no second target was tried


def test_the_cache_header_says_miss_then_hit(client: httpx.Client) -> None:
    text = "poem question: a prompt only the cache header test sends"
    first, second = chat(client, text=text), chat(client, text=text)
    assert (first.headers["x-router-cache"], second.headers["x-router-cache"]) == ("miss", "hit")
    assert first.headers["x-router-target"] == second.headers["x-router-target"]


def test_a_budget_override_routes_as_the_router_does_for_that_budget(
    client: httpx.Client, router: Router
) -> None:
    from prefill_router.policy import Budget

    costs = router.costs([CODE])[0]
    tight, loose = float(costs.min()) * 1.01, float(costs.max()) * 10
    chosen = {}
    for budget in (tight, loose):
        response = chat(client, router={"budget_usd": budget, "session": False})
        assert response.status_code == 200, response.text
        expected = router.route(CODE, budget=Budget(usd_per_request=budget))
        assert response.headers["x-router-target"] == expected.target
        chosen[budget] = expected.target
    assert chosen[tight] != chosen[loose]  # the override changed the decision
    below = chat(client, router={"budget_usd": float(costs.min()) * 1e-3})
    assert below.status_code == 400 and below.json()["error"]["param"] == "router.budget_usd"


def test_a_failed_target_is_named_whole_even_with_a_colon(upstream: str, behaviour: FakeBehaviour) -> None:
    """``llama3:8b`` fails first: the header and the decision log name it, not ``llama3``."""
    import asyncio

    from prefill_router.serve.metrics import Metrics
    from prefill_router.serve.upstream import forward, new_client

    behaviour.modes.clear()
    behaviour.modes["up-math"] = "fail"
    chain = [
        UpstreamTarget("llama3:8b", f"{upstream}/v1", "up-math", None, 5.0),
        UpstreamTarget("qwen2.5:7b-instruct", f"{upstream}/v1", "up-code", None, 5.0),
    ]

    async def send() -> Any:
        async with new_client() as http:
            return await forward(
                http, chain, {"messages": [{"role": "user", "content": MATH}]}, stream=False, headers={},
                metrics=Metrics(),
            )  # fmt: skip

    forwarded = asyncio.run(send())
    assert (forwarded.target, forwarded.failed) == ("qwen2.5:7b-instruct", ["llama3:8b"])
    assert forwarded.response.headers["x-router-fallback-from"] == "llama3:8b"
    assert forwarded.response.headers["x-router-target"] == "qwen2.5:7b-instruct"
