"""prefill-router inside LiteLLM: the real ``litellm`` package, a real tiny router, and the fake
OpenAI-compatible upstream on 127.0.0.1 (tests/serve_support.py); no mocks of either.

LiteLLM is kept off the internet (its model cost map is read from the package, offline mode on),
and a guard refuses any connection that is not to the loopback address, so a fetch would fail here.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefill_router import ConfigError, QualityFloor, Router
from tests.serve_support import (
    UPSTREAM_IDS,
    FakeBehaviour,
    ServerThread,
    build_tiny_router,
    fake_upstream,
    load_tiny_router,
)

# read by litellm when it is imported (in the fixture below): no model-cost-map fetch from GitHub
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"

TARGETS = ("math-model", "poem-model", "code-model")
GROUPS = {"math-model": "math-group", "poem-model": "poem-group", "code-model": "code-group"}
PROMPTS = (
    "math question 1: blue square number",
    "poem question 2: sky colour answer",
    "code question 3: python function",
    "trivia question 4: colour of the sky",
    "math question 5: square number python",
    "code question 6: function answer blue",
)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(scope="module", autouse=True)
def loopback_only() -> Iterator[list[Any]]:
    """Refuse (and record) every connection and name lookup that is not loopback."""
    refused: list[Any] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            refused.append(address)
            raise OSError(f"test guard: no connection to {address!r}")
        return connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (*LOOPBACK, None):
            refused.append(host)
            raise OSError(f"test guard: no lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        yield refused
    LOOP.close()
    assert refused == []  # nothing LiteLLM did tried the network


@pytest.fixture(scope="module")
def integration() -> Any:
    """The integration module (importing it imports litellm, after the environment above is set)."""
    from prefill_router.integrations import litellm as integration

    return integration


@pytest.fixture(scope="module")
def artifact(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_router(tiny_llama_dir, cache_dir(tmp_path_factory), tmp_path_factory.mktemp("litellm"))


def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "cache"


@pytest.fixture(scope="module")
def router(artifact: Path, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Router:
    loaded: Router = load_tiny_router(artifact, tiny_llama_dir, cache_dir(tmp_path_factory))
    return loaded


@pytest.fixture(scope="module")
def behaviour() -> FakeBehaviour:
    return FakeBehaviour()


@pytest.fixture(scope="module")
def upstream(behaviour: FakeBehaviour) -> Iterator[str]:
    with ServerThread(fake_upstream(behaviour)) as server:
        yield server.url


def model_list(upstream: str, groups: dict[str, str]) -> list[dict[str, Any]]:
    """One LiteLLM model group per target, each a deployment on the fake upstream."""
    return [
        {
            "model_name": groups[target],
            "litellm_params": {
                "model": f"openai/{UPSTREAM_IDS[target]}",
                "api_base": f"{upstream}/v1",
                "api_key": "sk-test",
            },
        }
        for target in TARGETS
    ]


def litellm_router(upstream: str, groups: dict[str, str] = GROUPS, **settings: Any) -> Any:
    import litellm

    return litellm.Router(model_list=model_list(upstream, groups), num_retries=0, **settings)


@pytest.fixture(scope="module")
def routing(integration: Any, router: Router, upstream: str) -> Iterator[Any]:
    """prefill-router installed (default floor) in a LiteLLM router whose groups are named otherwise,
    math falling back to code and code to poem."""
    fallbacks = [
        {GROUPS["math-model"]: [GROUPS["code-model"]]},
        {GROUPS["code-model"]: [GROUPS["poem-model"]]},
    ]
    with integration.install(
        litellm_router(upstream, fallbacks=fallbacks), router, targets=GROUPS
    ) as installed:
        yield installed


@pytest.fixture
def fake(behaviour: FakeBehaviour) -> FakeBehaviour:
    behaviour.modes.clear()
    behaviour.calls.clear()
    return behaviour


#: One event loop for every request of the module (LiteLLM's logging worker keeps to one loop).
LOOP = asyncio.Runner()


def ask(routing: Any, prompt: str | None, **kwargs: Any) -> Any:
    messages = [{"role": "system", "content": "be brief"}]
    if prompt is not None:
        messages.append({"role": "user", "content": prompt})
    return LOOP.run(routing.litellm_router.acompletion(model=routing.model_name, messages=messages, **kwargs))


def headers(response: Any) -> dict[str, Any]:
    found: dict[str, Any] = response._hidden_params["additional_headers"]
    return found


def answered_by(fake: FakeBehaviour) -> str:
    """The target whose upstream answered last."""
    (target,) = [t for t, upstream_id in UPSTREAM_IDS.items() if upstream_id == fake.calls[-1][0]]
    return target


# ---------------------------------------------------------------------------------------------------
# routing


def test_the_chosen_model_group_is_router_route_for_each_prompt(
    routing: Any, router: Router, fake: FakeBehaviour
) -> None:
    chosen = []
    for prompt in PROMPTS:
        decision = router.route(prompt)
        response = ask(routing, prompt)
        assert answered_by(fake) == decision.target
        assert headers(response)["x-litellm-complexity-router-tier"] == decision.target  # LiteLLM's own
        assert headers(response)["x-litellm-prefill-router-target"] == decision.target
        assert response.choices[0].message.content == f"answer from {UPSTREAM_IDS[decision.target]}"
        chosen.append(decision.target)
    assert len(fake.calls) == len(PROMPTS)  # one upstream call per request: no retry, no fallback
    assert len(set(chosen)) >= 2, chosen  # the prompts exercise more than one target


def test_a_policy_instead_of_the_floor_routes_as_router_route_does(
    integration: Any, router: Router, upstream: str, fake: FakeBehaviour
) -> None:
    """The by-name default (no targets mapping) and a policy with its knob."""
    groups = {t: t for t in TARGETS}
    with integration.install(
        litellm_router(upstream, groups), router, policy="tolerance", knob=0.2
    ) as routing:
        for prompt in PROMPTS:
            response = ask(routing, prompt)
            decision = router.route(prompt, policy="tolerance", knob=0.2)
            assert answered_by(fake) == decision.target
            assert response._hidden_params["prefill_router"] == decision.to_json()


def test_an_installation_annotates_only_what_it_routed(
    routing: Any, router: Router, fake: FakeBehaviour
) -> None:
    """Several installations share LiteLLM's callbacks: each puts its decision only on the requests
    its own deployment routed (first hop) or its own router served (fallback hops)."""
    ask(routing, PROMPTS[0])  # decided, so in the cache
    served = routing.litellm_router.registry().names(kind="ids")[0]

    def request(routed: dict[str, Any] | None, served_id: str = served) -> dict[str, Any]:
        metadata = {"original_model_group": routing.model_name, "model_info": {"id": served_id}}
        if routed is not None:
            metadata["routing_decision"] = routed
        return {"metadata": metadata, "messages": [{"role": "user", "content": PROMPTS[0]}]}

    ours = {"router_config_id": routing.deployment_id, "cause": "classifier_plugin"}
    cases = [
        (request(ours), True),
        (request({**ours, "router_config_id": "prefill-router:prefill-router:0"}), False),
        (request({**ours, "cause": "timeout"}), False),
        (request(None), True),
        (request(None, served_id="a-deployment-of-another-router"), False),
    ]
    for kwargs, annotated in cases:
        response = type("Response", (), {"_hidden_params": {}})()
        routing.annotate(kwargs, response)
        assert ("prefill_router" in response._hidden_params) == annotated, kwargs


def test_the_caller_sees_the_decision(
    integration: Any, routing: Any, router: Router, fake: FakeBehaviour
) -> None:
    prompt = PROMPTS[2]
    decision = router.route(prompt)
    metadata: dict[str, Any] = {}
    response = ask(routing, prompt, metadata=metadata)
    found = headers(response)
    expected = integration.decision_headers(decision)
    assert {name: found[name] for name in expected} == expected
    assert expected["x-litellm-prefill-router-target"] == decision.target
    assert expected["x-litellm-prefill-router-probabilities"] == ",".join(
        f"{t}={p:.3f}" for t, p in decision.probabilities.items()
    )
    assert float(expected["x-litellm-prefill-router-estimated-cost"]) == pytest.approx(
        decision.costs_usd[decision.target], rel=1e-5
    )
    assert decision.certificate is not None  # the default floor is kept, and its certificate shown
    assert expected["x-litellm-prefill-router-certificate"].startswith("certified mu=")
    assert "budget policy, mu=" in expected["x-litellm-prefill-router-reason"]
    assert all(v.isascii() and v.isprintable() for v in expected.values())
    assert response._hidden_params["prefill_router"] == decision.to_json()
    # LiteLLM records its sub-router's decision in the caller's metadata too
    assert metadata["routing_decision"]["tier"] == decision.target
    assert metadata["routing_decision"]["cause"] == "classifier_plugin"


def test_litellm_fallbacks_still_work_from_the_chosen_group(
    routing: Any, router: Router, fake: FakeBehaviour
) -> None:
    prompt = next(p for p in PROMPTS if router.route(p).target == "math-model")
    fake.modes[UPSTREAM_IDS["math-model"]] = "fail"
    response = ask(routing, prompt)
    assert [call[0] for call in fake.calls] == [UPSTREAM_IDS["math-model"], UPSTREAM_IDS["code-model"]]
    found = headers(response)
    assert found["x-litellm-attempted-fallbacks"] == 1
    assert found["x-litellm-model-group"] == GROUPS["code-model"]  # who answered
    assert found["x-litellm-prefill-router-target"] == "math-model"  # what prefill-router chose
    assert "x-litellm-complexity-router-tier" not in found  # LiteLLM drops its own after a fallback
    # a chain: the chosen group and its first fallback fail, the second answers
    fake.calls.clear()
    fake.modes[UPSTREAM_IDS["code-model"]] = "fail"
    code_prompt = next(p for p in PROMPTS if router.route(p).target == "code-model")
    response = ask(routing, code_prompt)
    assert answered_by(fake) == "poem-model"
    assert headers(response)["x-litellm-prefill-router-target"] == "code-model"


def test_without_user_text_the_fallback_target_answers(
    routing: Any, router: Router, fake: FakeBehaviour
) -> None:
    response = ask(routing, None)
    assert router.best_single is not None
    assert answered_by(fake) == routing.fallback_target == router.best_single
    found = headers(response)
    assert found["x-litellm-complexity-router-cause"] == "default_fallback"  # the classifier declined
    assert "x-litellm-prefill-router-target" not in found  # no decision was made
    assert "prefill_router" not in response._hidden_params


@pytest.mark.parametrize("failure", ["error", "deadline"])
def test_a_failed_scoring_goes_to_the_fallback_target(
    integration: Any, router: Router, upstream: str, fake: FakeBehaviour, failure: str
) -> None:
    """The encoder raising, or running past timeout_s: LiteLLM sends the request to the fallback
    target's group, and no decision is claimed (nor kept for the next request)."""
    groups = {t: t for t in TARGETS}
    with integration.install(
        litellm_router(upstream, groups), router, fallback_target="code-model", timeout_s=0.05
    ) as routing:
        score = routing.router.predict_proba

        def failing(prompts: list[str]) -> Any:
            if failure == "error":
                raise RuntimeError("the encoder broke")
            time.sleep(0.5)
            return score(prompts)

        prompt = "math question 8: past the deadline"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(routing.router, "predict_proba", failing)
            response = ask(routing, prompt)
        assert answered_by(fake) == "code-model"
        found = headers(response)
        assert found["x-litellm-complexity-router-cause"] != "classifier_plugin"
        assert "x-litellm-prefill-router-target" not in found
        assert routing._decisions.get(prompt) is None


def test_only_async_calls_are_routed(routing: Any) -> None:
    """LiteLLM runs its sub-routers on async calls only; a sync call gets LiteLLM's error."""
    import litellm

    with pytest.raises(litellm.BadRequestError, match="strategy router marker"):
        routing.litellm_router.completion(
            model=routing.model_name, messages=[{"role": "user", "content": PROMPTS[0]}]
        )


def test_scoring_runs_in_one_worker_thread_once_per_text(
    routing: Any, fake: FakeBehaviour, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder never runs on the event loop's thread, and a repeated prompt is not scored again."""
    threads: list[str] = []
    score = routing.router.predict_proba

    def recorded(prompts: list[str]) -> Any:
        threads.append(threading.current_thread().name)
        return score(prompts)

    monkeypatch.setattr(routing.router, "predict_proba", recorded)
    ask(routing, "poem question 7: a fresh prompt")
    ask(routing, "poem question 7: a fresh prompt")
    assert len(threads) == 1
    assert threads[0].startswith("prefill-router-litellm")
    assert threads[0] != threading.main_thread().name


def test_litellm_keeps_the_one_loaded_router(routing: Any) -> None:
    """LiteLLM deep-copies deployment settings; the classifier it calls is the installed one."""
    (registered,) = routing.litellm_router.registry().plugins("complexity")[routing.model_name]
    assert registered.strategy.config.classifier_plugin is routing


def test_close_takes_the_model_out(integration: Any, router: Router, upstream: str) -> None:
    import litellm

    llm = litellm_router(upstream)
    routing = integration.install(llm, router, targets=GROUPS, model_name="router-b")
    assert "router-b" in llm.registry().names(kind="group_set")
    routing.close()
    routing.close()  # a second close does nothing
    assert "router-b" not in llm.registry().names(kind="group_set")
    assert routing._headers not in litellm.callbacks


# ---------------------------------------------------------------------------------------------------
# config.yaml


def write_config(folder: Path, upstream: str, section: dict[str, Any], **extra: Any) -> Path:
    path = folder / "config.yaml"
    listed = model_list(upstream, {t: t for t in TARGETS})
    for entry in listed:
        entry["litellm_params"]["api_key"] = "os.environ/PREFILL_ROUTER_TEST_KEY"  # as the README shows
    config = {
        "model_list": listed,
        "router_settings": {"num_retries": 0, "fallbacks": [{"math-model": ["poem-model"]}]},
        "prefill_router": section,
        **extra,
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_load_config_builds_the_router_it_names(
    integration: Any,
    artifact: Path,
    router: Router,
    upstream: str,
    fake: FakeBehaviour,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A relative artifact path is read from the config's folder; the floor is the config's; an
    ``os.environ/`` key is read from the environment."""
    monkeypatch.setenv("PREFILL_ROUTER_TEST_KEY", "sk-from-env")
    (tmp_path / "router").symlink_to(artifact, target_is_directory=True)
    section = {
        "artifact": "router", "cache_dir": str(cache_dir(tmp_path_factory)), "model_name": "auto",
        "floor": {"within": "2pt", "delta": 0.1}, "timeout_s": 30,
    }  # fmt: skip
    with integration.load_config(write_config(tmp_path, upstream, section)) as routing:
        assert routing.model_name == "auto"
        floor = QualityFloor(within=0.02, delta=0.1)
        for prompt in PROMPTS[:3]:
            response = LOOP.run(
                routing.litellm_router.acompletion(
                    model="auto", messages=[{"role": "user", "content": prompt}]
                )
            )
            assert answered_by(fake) == router.route(prompt, floor=floor).target
            assert headers(response)["x-litellm-prefill-router-target"] == answered_by(fake)
        assert fake.seen_keys[-1] == "Bearer sk-from-env"


@pytest.mark.parametrize(
    ("section", "extra", "message"),
    [
        ({"artifact": "nowhere"}, {}, r"config\.yaml: no router artifact at '.*nowhere'"),
        (
            {"artifact": "router", "artefact": "x"},
            {},
            r"a key 'artefact' is not one .* Did you mean 'artifact'\?",
        ),
        ({"artifact": "router"}, {"litellm_settings": {}}, r"a section 'litellm_settings' is not one"),
        (
            {"artifact": "router", "floor": {"within": "1pt"}, "policy": "tolerance"},
            {},
            "set either floor or policy/knob",
        ),
        (
            {"artifact": "router", "fallback_target": "gpt-9"},
            {},
            "fallback_target must be one of the router's",
        ),
        (
            {"artifact": "router", "targets": {"code-model": "code-group"}},
            {},
            r"not LiteLLM model groups: code-model \(as code-group\); LiteLLM's model groups: code-model, ",
        ),
        ({"artifact": "router", "targets": {"cod-model": "x"}}, {}, "Did you mean 'code-model'"),
        (
            {"artifact": "router", "model_name": "poem-model"},
            {},
            "'poem-model' is already a LiteLLM model group",
        ),
    ],
)
def test_a_bad_config_gets_one_line_naming_what_is_wrong(
    integration: Any,
    artifact: Path,
    upstream: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    section: dict[str, Any],
    extra: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.setenv("PREFILL_ROUTER_TEST_KEY", "sk-from-env")
    (tmp_path / "router").symlink_to(artifact, target_is_directory=True)
    section = {"cache_dir": str(cache_dir(tmp_path_factory)), **section}
    with pytest.raises(ConfigError, match=message) as raised:
        integration.load_config(write_config(tmp_path, upstream, section, **extra))
    assert "\n" not in str(raised.value)


def test_targets_missing_from_litellm_are_all_named(integration: Any, router: Router, upstream: str) -> None:
    import litellm

    llm = litellm.Router(model_list=model_list(upstream, GROUPS)[:1])
    with pytest.raises(
        ConfigError,
        match=r"^router targets that are not LiteLLM model groups: math-model, poem-model, code-model; "
        r"LiteLLM's model groups: math-group\. Add them to model_list, or map each target",
    ):
        integration.install(llm, router)


def test_routing_text_is_the_last_user_message_with_text(integration: Any) -> None:
    parts = [{"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]
    assert (
        integration.routing_text([{"role": "user", "content": parts}, {"role": "user", "content": " "}])
        == "b"
    )
    assert integration.routing_text([{"role": "assistant", "content": "a"}]) is None
    assert integration.routing_text(None) is None


def test_the_readme_config_is_one_this_loader_reads(integration: Any) -> None:
    """The README's config.yaml: LiteLLM's sections and prefill-router's keys and floor as loaded."""
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## LiteLLM: prefill-router as its routing step") :]
    config = yaml.safe_load(section[section.index("```yaml") + 7 : section.index("```\n")])
    from prefill_router.integrations.litellm import config as loader

    assert set(config) == set(loader.SECTIONS)
    assert set(config["prefill_router"]) <= set(loader.KEYS)
    assert loader._floor(config["prefill_router"]["floor"]) == QualityFloor(within=0.01)
    assert "os.environ/" in config["model_list"][0]["litellm_params"]["api_key"]


def test_importing_the_integrations_package_imports_no_litellm() -> None:
    code = "import sys, prefill_router.integrations; print('litellm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_importing_the_integration_fetches_nothing() -> None:
    """LiteLLM fetches its cost map from GitHub at import unless told not to: the integration tells it
    (a deployment's own setting wins)."""
    import subprocess
    import sys

    code = "import os, prefill_router.integrations.litellm;print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'])"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert "cost map" not in done.stderr and "raw.githubusercontent.com" not in done.stderr
