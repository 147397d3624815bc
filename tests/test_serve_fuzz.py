"""Property-based fuzz of the proxy's HTTP API (issue 19): no 500, no hang, an OpenAI error body for
every refusal.

The app's /openapi.json documents the bodies, but its requests are plain JSON objects passed through
to the upstream (any field may be anything), so hypothesis draws the requests rather than a schema
fuzzer: near-valid chat and route bodies whose every field may be of the wrong type, lone
surrogates, NaN, huge numbers, deep nesting, raw bytes, and every client-token case. Real servers
on 127.0.0.1; derandomized, so CI runs the same cases every time. ``-s`` prints how many ran.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefill_router import Router
from tests.serve_support import (
    FakeBehaviour,
    ServerThread,
    fake_upstream,
    prometheus,
    running_proxy,
    tiny_router,
)
from tests.test_serve_app import TARGETS, TOKEN, config_for

pytestmark = pytest.mark.adversarial
CASES = int(os.environ.get("PREFILL_ROUTER_FUZZ_CASES", "400"))  # per property
SEEN: Counter[str] = Counter()

# ------------------------------------------------------------------------------ strategies
odd_text = st.sampled_from(["\ud800", "x\udfff", "\x00", "a\r\nb", "é", "😀", " ", "", "router", "\\u0000"])
texts = st.text(max_size=40) | odd_text | st.builds(lambda a, b: a + b, st.text(max_size=10), odd_text)
numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.sampled_from([0, 1, -1, 1e-300, 1e308, 0.05, 2000, 10**400])
)
scalars = st.none() | st.booleans() | numbers | texts
any_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
good_text = st.text(min_size=1, max_size=40).filter(str.strip)
good_models = st.sampled_from(["router", "router-cheap", *TARGETS])
bad_models = st.sampled_from(["routr", "", "x" * 300]) | texts | any_json
good_message = st.fixed_dictionaries({"role": st.just("user"), "content": good_text})
parts = st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | texts, "text": texts | any_json}),
    max_size=3,
)
bad_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]) | any_json},
    optional={"content": texts | parts | any_json},
)
good_overrides = st.fixed_dictionaries(
    {},
    optional={
        "policy": st.sampled_from(["budget", "lambda", "tolerance"]),
        "knob": st.floats(min_value=0, max_value=1),
        "allowed": st.lists(st.sampled_from(TARGETS), min_size=1, max_size=3, unique=True),
        "max_cost_usd": st.floats(min_value=0, max_value=0.01),
        "session": st.booleans(),
        "within": st.sampled_from(["1pt", "2pt:poem-model", "99%", "0pt:code-model", "50%:math-model"]),
        "min_accuracy": st.floats(min_value=0.01, max_value=1),
        "delta": st.floats(min_value=0.01, max_value=0.5),
    },
)
bad_overrides = (
    st.fixed_dictionaries(
        {},
        optional={
            "policy": st.sampled_from(["budget", "lambda", "tolerance", "greedy"]) | any_json,
            "knob": numbers | any_json,
            "budget_usd": numbers | any_json,
            "allowed": st.lists(st.sampled_from(TARGETS) | texts, max_size=4) | any_json,
            "max_cost_usd": numbers | any_json,
            "session": st.booleans() | any_json,
            "within": texts
            | st.sampled_from(["nanpt", "1e400pt", "1.2.3pt", "1pt:\ud800", "-1pt"])
            | any_json,
            "min_accuracy": numbers | any_json,
            "delta": numbers | any_json,
            "colour": any_json,
        },
    )
    | any_json
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three good values for one bad one: enough valid requests to reach routing and forwarding."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: good if ok else bad)


models = mostly(good_models, bad_models)
messages = mostly(
    st.lists(good_message, min_size=1, max_size=3), st.lists(bad_message, max_size=4) | any_json
)
overrides = mostly(good_overrides, bad_overrides)
chat_bodies = st.fixed_dictionaries(
    {"model": models, "messages": messages},
    optional={"router": overrides, "stream": mostly(st.booleans(), any_json), "user": texts | any_json,
              "temperature": any_json},
)  # fmt: skip
route_bodies = st.one_of(
    st.fixed_dictionaries(
        {"prompt": mostly(good_text, texts | any_json)}, optional={"model": models, "router": overrides}
    ),
    st.fixed_dictionaries(
        {
            "prompts": mostly(
                st.lists(good_text, min_size=1, max_size=5), st.lists(texts, max_size=5) | any_json
            )
        },
        optional={"model": models, "router": overrides},
    ),
    st.fixed_dictionaries({}, optional={"messages": messages, "router": overrides, "model": models}),
)
deep = st.integers(min_value=1, max_value=100_000).map(lambda n: ("[" * n + "]" * n).encode())
special = [
    b"NaN",
    b"1" * 5000,
    b'{"a": 1e999}',
    b'{"prompt": "\xed\xa0\x80"}',
    '{"prompt": "x"}'.encode("utf-16"),
]
raw_bodies = st.binary(max_size=300) | deep | st.sampled_from(special)
auth = st.sampled_from([{"authorization": f"Bearer {TOKEN}"}] * 12 + [{}, {"authorization": "Bearer x"},
                        {"authorization": "Basic abc"}, {"authorization": f"Bearer {TOKEN}x"}])  # fmt: skip
sessions = st.none() | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20)


# ------------------------------------------------------------------------------ the servers
@pytest.fixture(scope="module")
def proxy(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    router: Router = tiny_router(tiny_llama_dir, tmp_path_factory, "fuzz")
    with ServerThread(fake_upstream(FakeBehaviour())) as upstream:
        config = config_for(upstream.url, max_body_bytes=20_000, score_timeout_s=5.0)
        with running_proxy(router, config) as url:
            yield url
            five_hundreds = prometheus(url, "prefill_router_requests_total", 'status="500"')
            print(f"\nfuzz: {dict(SEEN)}; 500s counted by the proxy: {five_hundreds:g}")


@pytest.fixture(scope="module")
def client(proxy: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy, timeout=15) as c:
        yield c


def check(response: httpx.Response, seconds: float, endpoint: str) -> None:
    SEEN[f"{endpoint} {response.status_code}"] += 1
    assert response.status_code < 500 or response.status_code in (502, 503, 504), response.text
    assert seconds < 10, f"{endpoint} took {seconds:.1f} s"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]


def send(client: httpx.Client, path: str, content: bytes, headers: dict[str, str]) -> None:
    started = time.perf_counter()
    with client.stream("POST", path, content=content, headers=headers) as response:
        response.read()
    check(response, time.perf_counter() - started, path)


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()  # NaN and Infinity as Python writes them: json.loads takes them


_FUZZ = settings(
    max_examples=CASES, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip


# ------------------------------------------------------------------------------ the properties
@_FUZZ
@given(body=chat_bodies, headers=auth, session=sessions)
def test_chat_completions_never_answers_500(
    client: httpx.Client, body: dict[str, Any], headers: dict[str, str], session: str | None
) -> None:
    send(
        client, "/v1/chat/completions", encode(body), headers | ({"x-session-id": session} if session else {})
    )


@_FUZZ
@given(body=route_bodies, headers=auth)
def test_route_never_answers_500(client: httpx.Client, body: dict[str, Any], headers: dict[str, str]) -> None:
    send(client, "/v1/route", encode(body), headers)


@_FUZZ
@given(content=raw_bodies, path=st.sampled_from(["/v1/route", "/v1/chat/completions"]))
def test_raw_bodies_never_answer_500(client: httpx.Client, content: bytes, path: str) -> None:
    send(client, path, content, {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"})


@_FUZZ
@given(
    key=st.sampled_from(["policy", "knob", "budget_usd", "allowed", "max_cost_usd", "session"]),
    value=numbers | any_json,
    policy=st.none() | st.sampled_from(["budget", "lambda", "tolerance"]),
)
def test_each_override_value_never_answers_500(
    client: httpx.Client, key: str, value: Any, policy: str | None
) -> None:
    overrides = {key: value} | ({"policy": policy} if policy and key != "policy" else {})
    body = {"prompt": "math question blue", "router": overrides}
    send(client, "/v1/route", encode(body), {"authorization": f"Bearer {TOKEN}"})


def test_the_fuzz_left_no_500_in_the_metrics(client: httpx.Client, proxy: str) -> None:
    assert prometheus(proxy, "prefill_router_requests_total", 'status="500"') == 0
    assert client.get("/health").status_code == 200
