"""The serving stage's parts without servers: config validation, protocol, cache, micro-batcher, CLI."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefill_router.cli import run
from prefill_router.errors import ApiError, ConfigError
from prefill_router.policy import QualityFloor
from prefill_router.serve.batcher import MicroBatcher
from prefill_router.serve.cache import LruCache, TextHasher
from prefill_router.serve.config import OVERRIDE_FIELDS, ClientRights, Profile, ServeConfig
from prefill_router.serve.protocol import Overrides, parse_overrides, routing_text

TARGETS = ("small", "large")
GOOD = {
    "targets": {
        "small": {"base_url": "http://localhost:4000/v1/", "api_key_env": "SMALL_KEY", "timeout_s": 5},
        "large": {"base_url": "https://api.example.com/v1", "model": "large-2025"},
    },
    "policy": "tolerance",
    "knob": 0.05,
    "profiles": {"router-cheap": {"policy": "budget", "knob": 2000}},
    "fallback": ["small", "large"],
    "routing_text": "conversation",
    "client_tokens": ["t1"],
    "cache_size": 10,
}


def test_a_valid_config_loads_from_yaml(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(GOOD), encoding="utf-8")
    config = ServeConfig.load(path, TARGETS)
    assert config.targets["small"].base_url == "http://localhost:4000/v1"
    assert (config.targets["small"].model, config.targets["large"].model) == ("small", "large-2025")
    assert config.targets["small"].timeout_s == 5.0 and config.targets["large"].timeout_s == 60.0
    assert config.default == Profile("tolerance", 0.05)
    assert config.profile("router-cheap") == Profile("budget", 2000.0) and config.profile("nope") is None
    assert (config.fallback, config.routing_text, config.client_tokens) == (
        ("small", "large"),
        "conversation",
        ("t1",),
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"targets": {"small": GOOD["targets"]["small"]}},
            "targets: the router's target 'large' has no upstream",
        ),
        ({"policy": "greedy"}, "policy must be one of budget, lambda, tolerance; got 'greedy'"),
        ({"fallback": ["smal"]}, "fallback: unknown target 'smal'. Did you mean 'small'?"),
        ({"routing_text": "all"}, "routing_text must be one of last_user, first_user, conversation"),
        ({"cache_size": -1}, "cache_size must be an integer >= 0; got -1"),
        ({"colour": 1}, "unknown field 'colour'"),
        ({"profiles": {"small": {"policy": "budget"}}}, "profiles.small: the name is taken by a target"),
        (
            {"targets": {**GOOD["targets"], "large": {"base_url": "ftp://x"}}},
            "targets.large.base_url must be an http",
        ),
        (
            {"targets": {**GOOD["targets"], "large": {"base_url": "http://x", "timeout_s": 0}}},
            "targets.large.timeout_s must be a positive number; got 0",
        ),
        ({"profiles": {"p": {"policy": "lambda", "knob": 3}}}, "profiles.p.knob: "),
        ({"client_rights": {"pin": "yes"}}, "client_rights.pin must be true or false; got 'yes'"),
        (
            {"client_rights": {"overrides": ["colour"]}},
            "client_rights.overrides must be a list of router fields among policy, knob, budget_usd, "
            "min_accuracy, within, delta, allowed, max_cost_usd, session; got ['colour']",
        ),
        (
            {"clients": {"batch": {"token_env": "PREFILL_ROUTER_TEST_UNSET"}}},
            "clients.batch.token_env: the environment variable PREFILL_ROUTER_TEST_UNSET is not set",
        ),
        ({"clients": {"batch": {"pin": True}}}, "clients.batch must be a mapping with token_env"),
        ({"drain_s": -1}, "drain_s must be a number >= 0; got -1"),
        ({"max_prompts": 0}, "max_prompts must be an integer >= 1; got 0"),
        ({"score_timeout_s": 0}, "score_timeout_s must be a positive number; got 0"),
        ({"fallback": ["small\r\nx: 1"]}, "fallback: target name 'small\\r\\nx: 1' is not allowed"),
        (
            {"targets": {**GOOD["targets"], "large": {"base_url": "http://x\r\nhost: y"}}},
            "targets.large.base_url must be an http(s) URL",
        ),
    ],
)
def test_config_errors_name_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        ServeConfig.from_dict(GOOD | change, TARGETS)


def test_the_limits_default_to_the_documented_values() -> None:
    config = ServeConfig.from_dict(GOOD, TARGETS)
    assert (config.max_body_bytes, config.max_prompts, config.max_queue) == (1_000_000, 128, 1024)
    assert (config.score_timeout_s, config.deadline_s, config.drain_s) == (2.0, 120.0, 5.0)
    assert config.client_rights == ClientRights(True, frozenset(OVERRIDE_FIELDS))
    assert [c.name for c in config.all_clients()] == ["token-1"]


def test_an_unset_api_key_env_is_found_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMALL_KEY", raising=False)
    config = ServeConfig.from_dict(GOOD, TARGETS)  # parsing does not need the key ...
    with pytest.raises(
        ConfigError, match=r"^targets\.small\.api_key_env: the environment variable SMALL_KEY"
    ):
        config.check_environment()  # ... starting does
    monkeypatch.setenv("SMALL_KEY", "sk-test")
    config.check_environment()


def test_the_config_file_name_prefixes_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("targets: [", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"serve\.yaml: cannot read the serve config"):
        ServeConfig.load(path, TARGETS)


def test_quick_sends_every_target_to_one_gateway() -> None:
    config = ServeConfig.quick(TARGETS, "http://localhost:4000/v1/")
    assert {n: (t.base_url, t.model) for n, t in config.targets.items()} == {
        "small": ("http://localhost:4000/v1", "small"), "large": ("http://localhost:4000/v1", "large"),
    }  # fmt: skip
    assert config.fallback == TARGETS and config.client_tokens == ()
    with pytest.raises(ConfigError, match=r"^--upstream must be an http"):
        ServeConfig.quick(TARGETS, "localhost:4000")


def test_routing_text_modes() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "last"}, {"type": "image_url", "image_url": {}}],
        },
    ]
    assert routing_text(messages, "last_user") == "last"
    assert routing_text(messages, "first_user") == "first"
    assert (
        routing_text(messages, "conversation") == "system: be brief\nuser: first\nassistant: ok\nuser: last"
    )
    with pytest.raises(ApiError, match="no user text"):
        routing_text([{"role": "system", "content": "x"}], "last_user")


def test_overrides_are_validated() -> None:
    assert parse_overrides(None) == Overrides()
    parsed = parse_overrides(
        {"policy": "tolerance", "knob": 0.1, "allowed": ["a"], "max_cost_usd": 1, "session": False}
    )
    assert parsed == Overrides("tolerance", 0.1, None, allowed=("a",), max_cost_usd=1.0, session=False)
    floor = parse_overrides({"within": "2pt:b", "delta": 0.1})
    assert floor.floor == QualityFloor(within=0.02, relative_to="b", delta=0.1) and floor.delta is None
    assert parse_overrides({"min_accuracy": 0.8}).floor == QualityFloor(min_accuracy=0.8)
    assert parse_overrides({"delta": 0.2}) == Overrides(delta=0.2)  # the profile's floor at this risk
    for bad, param in [({"knob": -1}, "router.knob"), ({"allowed": []}, "router.allowed"),
                       ({"policy": "lambda", "knob": 2}, "router.knob"), ({"x": 1}, "router"),
                       ({"session": "no"}, "router.session"), ({"within": "one"}, "router.within"),
                       ({"min_accuracy": 2}, "router.min_accuracy"), ({"delta": 0.7}, "router.delta"),
                       ({"within": "1pt", "min_accuracy": 0.8}, "router.within")]:  # fmt: skip
        with pytest.raises(ApiError) as info:
            parse_overrides(bad)
        assert (info.value.status, info.value.param) == (400, param)


def test_the_cache_is_lru_and_keyed_by_hmac() -> None:
    cache: LruCache[int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)  # evicts b, the least recently used
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)
    off: LruCache[int] = LruCache(0)
    off.put("a", 1)
    assert off.get("a") is None
    keyed = TextHasher(b"k")
    assert keyed("hello") == TextHasher(b"k")("hello") != TextHasher(b"other")("hello")
    assert TextHasher()("hello") != TextHasher()("hello")  # a random key per process
    assert len(keyed("hello")) == 64 and "hello" not in keyed("hello")


def test_the_batcher_groups_concurrent_texts_off_the_loop() -> None:
    calls: list[tuple[list[str], str]] = []

    def score(texts: Sequence[str]) -> np.ndarray:
        calls.append((list(texts), threading.current_thread().name))
        return np.array([[len(t), 0.0] for t in texts])

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(score, max_batch=4, max_wait_ms=50)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.score("x" * i) for i in range(1, 7)))
        finally:
            await batcher.stop()

    rows = asyncio.run(main())
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [len(texts) for texts, _ in calls] == [4, 2]  # max_batch, then the rest
    assert all(name.startswith("prefill-router-encode") for _, name in calls)


def recording_scorer() -> tuple[list[list[str]], Callable[[Sequence[str]], np.ndarray]]:
    """A score function that records each batch it is given (and scores every text 0)."""
    calls: list[list[str]] = []

    def score(texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.zeros((len(texts), 2))

    return calls, score


def test_a_lone_request_does_not_wait_for_company() -> None:
    """The wait window is for stragglers under load: a request on an idle batcher is scored at once."""
    calls, score = recording_scorer()

    async def main() -> float:
        batcher = MicroBatcher(score, max_batch=8, max_wait_ms=2000)
        batcher.start()
        try:
            started = time.perf_counter()
            await batcher.score("alone")
            return time.perf_counter() - started
        finally:
            await batcher.stop()

    assert asyncio.run(main()) < 1.0  # the 2 s window would have been paid in full
    assert calls == [["alone"]]


def test_under_load_the_window_gathers_stragglers() -> None:
    """After a batch of several prompts, the next batch's first prompt waits for the ones just behind it."""
    calls, score = recording_scorer()

    async def main() -> None:
        batcher = MicroBatcher(score, max_batch=8, max_wait_ms=1000)
        batcher.start()
        try:
            await asyncio.gather(batcher.score("a"), batcher.score("b"))  # load: a batch of two

            async def late() -> np.ndarray:
                await asyncio.sleep(0.05)
                return await batcher.score("d")

            await asyncio.gather(batcher.score("c"), late())
        finally:
            await batcher.stop()

    asyncio.run(main())
    assert calls == [["a", "b"], ["c", "d"]]


def test_a_failing_batch_fails_each_waiting_request() -> None:
    def score(texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("encoder exploded")

    async def main() -> list[object]:
        batcher = MicroBatcher(score, max_batch=8, max_wait_ms=5)
        batcher.start()
        try:
            return await asyncio.gather(batcher.score("a"), batcher.score("b"), return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert [str(r) for r in results] == ["encoder exploded", "encoder exploded"]


def test_serve_needs_one_of_config_or_upstream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["serve", str(tmp_path)]) == 3
    assert "pass exactly one of --config FILE or --upstream URL" in capsys.readouterr().err


def test_serve_names_the_pip_command_when_fastapi_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a)
    )
    assert run(["serve", str(tmp_path), "--upstream", "http://localhost:4000/v1"]) == 4
    assert "pip install 'prefill-router[serve]'" in capsys.readouterr().err.replace("\n", "")


def test_importing_the_package_does_not_import_serve() -> None:
    import subprocess
    import sys

    code = "import prefill_router, prefill_router.serve.config, sys; print('fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_header_values_are_printable_ascii() -> None:
    from prefill_router.policy.decision import header_text

    assert header_text("budget policy, mu=0: picked a") == "budget policy, mu=0: picked a"
    assert header_text("x\r\nset-cookie: a=b\x00é") == "x??set-cookie: a=b??"
    assert header_text("μ=2·c − λ·ĉ, δ=0.05 …") == "mu=2*c - lambda*c_norm, delta=0.05 ..."


@pytest.mark.parametrize(
    ("raw", "refused"),
    [
        (b'{"prompt": "a \\ud800 b"}', True),  # an escape (valid JSON)
        (b'{"prompt": "a \xed\xa0\x80 b"}', True),  # CESU-8 bytes: json.loads decodes them with surrogatepass
        ('{"prompt": "a \ud800"}'.encode("utf-16-le", "surrogatepass"), True),  # a UTF-16 body
        (b'{"prompt": "\\ud83d\\ude00 a pair is one character"}', False),
        ('{"prompt": "😀 é"}'.encode(), False),
        ('{"prompt": "😀 é"}'.encode("utf-16"), False),
    ],
)
def test_lone_surrogates_are_refused_however_they_are_sent(raw: bytes, refused: bool) -> None:
    import json

    from prefill_router.serve.protocol import check_unicode

    body = json.loads(raw)
    if not refused:
        check_unicode(raw, body)
        return
    with pytest.raises(ApiError, match=r"^prompt holds a lone UTF-16 surrogate \(\\ud800\) at character 2"):
        check_unicode(raw, body)


def test_a_policy_without_its_knob_takes_the_shared_default() -> None:
    """serve.yaml's `policy: lambda` alone is λ = 1, as a request, `route` and `Router.route` take it
    (it was λ = 0, the cheapest target, at the top level)."""
    from prefill_router.policy import DEFAULT_KNOBS

    for policy, knob in DEFAULT_KNOBS.items():
        doc = {key: value for key, value in GOOD.items() if key != "knob"} | {"policy": policy}
        doc["profiles"] = {"router-x": {"policy": policy}}
        config = ServeConfig.from_dict(doc, TARGETS)
        assert (config.default.policy, config.default.knob) == (policy, knob)
        assert (config.profiles["router-x"].policy, config.profiles["router-x"].knob) == (policy, knob)


# ------------------------------------------------------------------ the pydantic models
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"floor": None}, "floor must be a mapping {policy, knob} or {within | min_accuracy, delta}"),
        (
            {"floor": {"within": "1pt"}, "knob": 1},
            "set either floor or policy/knob at the top level, not both",
        ),
        (
            {"targets": {**GOOD["targets"], "large": {"model": "m"}}},
            "targets.large.base_url must be an http(s) URL such as http://localhost:4000/v1; got None",
        ),
        (
            {"profiles": {"p": {"policy": "budget", "knbo": 3}}},
            "profiles.p: unknown field 'knbo'; expected policy",
        ),
        ({"profiles": {"p": {"within": "1pt", "knob": 3}}}, "profiles.p: unknown field 'knob' of a floor"),
        ({"profiles": {"p": {"knob": 10**400}}}, "profiles.p.knob must be a number; got 1000"),
        ({"max_wait_ms": 10**400}, "max_wait_ms must be a positive number; got 1000"),
        (
            {"profiles": {"p": {"min_accuracy": 10**400}}},
            "profiles.p: min_accuracy must be a number in (0, 1]",
        ),
        (
            {"clients": {"c": {"token_env": "PREFILL_ROUTER_TEST_UNSET", "pin": "no"}}},
            "clients.c.token_env: ",
        ),
    ],
)
def test_serve_yaml_errors_name_the_field_of_each_section(change: dict[str, object], message: str) -> None:
    """Every section of serve.yaml is a pydantic model whose errors keep the field's path; integers
    past float range are refused like any other bad number (they raised OverflowError)."""
    doc = {k: v for k, v in GOOD.items() if "floor" not in change or k not in ("policy", "knob")} | change
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        ServeConfig.from_dict(doc, TARGETS)


def test_the_models_spell_the_policy_stage_names() -> None:
    from typing import get_args

    from prefill_router.policy import POLICIES
    from prefill_router.serve.config import PolicyName
    from prefill_router.serve.protocol import RouterOptions

    assert get_args(PolicyName) == POLICIES
    assert set(RouterOptions.model_fields) == set(OVERRIDE_FIELDS)


def test_a_serve_config_built_in_python_is_validated_too() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be an integer >= 1; got 0"):
        ServeConfig(targets={}, max_batch=0)


def test_request_numbers_beyond_float_range_are_refused() -> None:
    for key in ("min_accuracy", "delta", "knob", "budget_usd"):
        with pytest.raises(ApiError, match=rf"^router\.{key}(: {key})? must be a") as info:
            parse_overrides({key: 10**400})  # JSON allows any number of digits (was OverflowError: a 500)
        assert (info.value.status, info.value.param) == (400, f"router.{key}")


def test_the_request_models_type_what_the_proxy_reads_and_keep_the_rest() -> None:
    from prefill_router.serve.protocol import ChatCompletionRequest, DecisionRequest

    body = {"model": "router", "messages": [{"role": "user", "content": "hi", "name": "x"}], "seed": 7,
            "router": {"allowed": ["small"]}, "user": 5}  # fmt: skip
    chat = ChatCompletionRequest.parse(body)
    assert chat.model_extra == {"seed": 7} and chat.messages[0] == body["messages"][0]  # type: ignore[index]
    assert (chat.stream, chat.session_user, chat.overrides.allowed) == (False, None, ("small",))
    route = DecisionRequest.parse(
        {"prompts": ["a", "b"], "prompt": 5, "messages": "x"}
    )  # only prompts is read
    assert route.texts("last_user") == ["a", "b"]
    with pytest.raises(ApiError, match=r"^'prompts' holds 3 prompts; one request may hold at most 2") as info:
        DecisionRequest.parse({"prompts": [1, 2, 3], "router": {}}, max_prompts=2)
    assert info.value.code == "too_many_prompts"
    with pytest.raises(ApiError, match=r"^'prompt' must be a non-empty string"):
        DecisionRequest.parse({"prompt": None})
    with pytest.raises(ApiError, match=r"^unknown field router\.x"):  # the router field before the prompts
        DecisionRequest.parse({"prompts": [], "router": {"x": 1}})


def test_decisions_and_errors_dump_as_the_dicts_they_replace() -> None:
    from prefill_router.policy import Decision
    from prefill_router.serve.protocol import ErrorResponse, Routed

    p, c = {"a": 0.9, "b": 0.5}, {"a": 1e-4, "b": 2e-4}
    decision = Decision("a", 0, "budget", float("inf"), p, c, ("a", "b"), "cheapest", {"floor": "1 point"})
    expected = {"object": "router.decision", **decision.to_json(), "source": "policy", "cached": True}
    assert list(Routed(decision, "policy", True).to_json().items()) == list(expected.items())
    error = ApiError(404, "unknown model 'x'", param="model", code="model_not_found")
    assert list(ErrorResponse.of(error).model_dump().items()) == list(error.body().items())


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def refusal(call: Callable[[], object]) -> Exception | None:
    """The ApiError or ConfigError ``call`` raised (None: it passed)."""
    try:
        call()
    except (ApiError, ConfigError) as exc:
        return exc
    return None


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    key=st.sampled_from([*OVERRIDE_FIELDS, "colour"]), value=_JSON, policy=st.sampled_from([None, "lambda"])
)
def test_any_router_value_is_overrides_or_a_worded_400(key: str, value: object, policy: str | None) -> None:
    raw = {key: value} | ({"policy": policy} if policy and key != "policy" else {})
    error = refusal(lambda: parse_overrides(raw))
    if isinstance(error, ApiError):
        assert error.status == 400 and (error.param or "").startswith("router")
        assert "Input should" not in error.message  # pydantic's own words never reach a client


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(key=st.sampled_from([*sorted(GOOD), "floor", "clients", "client_rights", "max_wait_ms"]), value=_JSON)
def test_any_serve_yaml_value_loads_or_names_its_field(key: str, value: object) -> None:
    doc = {k: v for k, v in GOOD.items() if key != "floor" or k not in ("policy", "knob")} | {key: value}
    error = refusal(lambda: ServeConfig.from_dict(doc, TARGETS))
    assert error is None or (str(error).startswith(key) and "Input should" not in str(error))
