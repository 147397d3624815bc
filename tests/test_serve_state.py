"""The proxy's state (serve/state.py, serve/redis_state.py) against a real redis-server on 127.0.0.1.

Unit tests of LocalState and RedisState (round trips, TTLs, the session bound, the shared HMAC key,
values that are not ours, an unreachable / wrong-password / stalled / killed Redis), the config and
CLI fields, then two proxies in this process sharing one Redis.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest

from prefill_router import Router
from prefill_router.cli import run
from prefill_router.errors import ConfigError
from prefill_router.serve import redis_state
from prefill_router.serve.config import ServeConfig, redact_password
from prefill_router.serve.metrics import Metrics
from prefill_router.serve.redis_state import RedisState, probe, router_namespace
from prefill_router.serve.state import LocalState
from tests.redis_support import RedisServer, free_port, redis_server
from tests.serve_support import build_tiny_router, prometheus, running_proxy, tiny_router
from tests.test_serve_app import AUTH, CODE, MATH, config_for

T = TypeVar("T")
P = np.array([0.25, 0.5, 0.75])


def state_of(url: str, namespace: str = "test", **options: Any) -> RedisState:
    return RedisState(
        url, namespace=namespace, n_targets=3, local=LocalState(100), metrics=Metrics(), **options
    )


def run_with(state: RedisState, work: Callable[[], Awaitable[T]]) -> T:
    """Start ``state``, run ``work`` and stop it, in one event loop (a pool belongs to its loop)."""

    async def main() -> T:
        await state.start()
        try:
            return await work()
        finally:
            await state.stop()

    return asyncio.run(main())


def errors(state: RedisState, operation: str = "") -> float:
    return sum(
        sample.value
        for metric in state.metrics.redis_errors.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and operation in sample.labels.get("operation", "")
    )


# ====================================================================== LocalState
def test_local_state_keeps_scores_sessions_and_budgets() -> None:
    async def main() -> None:
        state, off = LocalState(2), LocalState(0)
        await state.put_scores("a", P)
        found = await state.get_scores("a")
        assert found is not None and found[1] == "local" and np.array_equal(found[0], P)
        await state.put_session("s", "poem-model")
        await state.put_mu("0.002", 12.5)
        assert (await state.get_session("s"), await state.get_mu("0.002")) == ("poem-model", 12.5)
        await off.put_scores("a", P)  # cache_size 0: no cache, as before
        assert await off.get_scores("a") is None
        assert state.health() == {"backend": "local"}

    asyncio.run(main())


# ====================================================================== RedisState
def test_a_second_replica_reads_what_the_first_wrote_with_ttls(redis_server: RedisServer) -> None:
    first, second = state_of(redis_server.url, ttl_s=60, session_ttl_s=30), state_of(redis_server.url)

    async def write() -> None:
        await first.put_scores("k1", P)
        await first.put_session("s1", "code-model")
        await first.put_mu("0.002", 7.25)

    async def read() -> list[Any]:
        return [await second.get_scores("k1"), await second.get_scores("k1"), await second.get_session("s1"),
                await second.get_mu("0.002"), await second.get_scores("nothing")]  # fmt: skip

    run_with(first, write)
    from_redis, then_local, session, mu, missing = run_with(second, read)
    assert from_redis[1] == "redis" and np.array_equal(from_redis[0], P)
    assert then_local[1] == "local"  # kept in process after the first read
    assert (session, mu, missing) == ("code-model", 7.25, None)
    client = redis_server.client()
    assert 0 < client.pttl("test:p:k1") <= 60_000 and 0 < client.pttl("test:mu:0.002") <= 60_000
    assert 0 < client.pttl("test:s:s1") <= 30_000
    assert client.get("test:p:k1") == P.astype("<f8").tobytes()  # 8 bytes per target, never a text
    assert second.health() == {"backend": "redis", "status": "ok", "error": None, "failures": 0}


def test_replicas_share_one_hmac_key_kept_in_redis(redis_server: RedisServer) -> None:
    keys = [asyncio.run(_started(state_of(redis_server.url))) for _ in range(2)]
    assert keys[0] is not None and keys[0] == keys[1]
    assert redis_server.client().get(redis_state.HMAC_KEY) == keys[0]


async def _started(state: RedisState) -> bytes | None:
    try:
        return await state.start()
    finally:
        await state.stop()


def test_sessions_in_redis_are_bounded_least_recently_written_out(redis_server: RedisServer) -> None:
    state = state_of(redis_server.url, namespace="bounded", sessions_kept=3)

    async def write() -> None:
        for i in range(5):
            await state.put_session(f"s{i}", "math-model")
        await state.put_session("s2", "poem-model")  # renewed: now the most recent

    run_with(state, write)
    client = redis_server.client()
    assert sorted(k.decode() for k in client.keys("bounded:s:*")) == [
        "bounded:s:s2",
        "bounded:s:s3",
        "bounded:s:s4",
    ]
    assert client.zcard("bounded:sessions") == 3 and 0 < client.pttl("bounded:sessions") <= 3_600_000
    assert client.get("bounded:s:s2") == b"poem-model"


def test_values_that_are_not_probability_vectors_are_misses(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("odd:p:short", b"\x00" * 16)  # two numbers for three targets
    client.set("odd:p:nan", np.array([0.1, np.nan, 0.2]).tobytes())
    client.set("odd:p:big", np.array([0.1, 7.0, 0.2]).tobytes())
    client.set("odd:mu:0.1", b"not a number")
    state = state_of(redis_server.url, namespace="odd")

    async def read() -> list[Any]:
        return [await state.get_scores(k) for k in ("short", "nan", "big")] + [await state.get_mu("0.1")]

    assert run_with(state, read) == [None, None, None, None]


def test_an_unreachable_redis_gives_one_line_and_local_state(caplog: pytest.LogCaptureFixture) -> None:
    state = state_of(f"redis://127.0.0.1:{free_port()}/0")

    async def work() -> list[Any]:
        await state.put_scores("k", P)  # within the retry pause: not even tried
        await state.put_session("s", "poem-model")
        return [await state.get_scores("k"), await state.get_session("s")]

    with caplog.at_level(logging.WARNING, "prefill_router.serve"):
        found, session = run_with(state, work)
    assert found is not None and found[1] == "local" and session == "poem-model"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert re.match(
        r"state: cannot use Redis at redis://127\.0\.0\.1:\d+/0 \(ConnectionError: .*\); routing with "
        r"in-process state until it answers \(--state-required refuses to start instead\)$", lines[0]
    )  # fmt: skip
    health = state.health()
    assert (health["status"], health["failures"]) == ("degraded", 1) and health["error"].startswith("start: ")
    assert errors(state, "start") == 1 and state.metrics.state_degraded._value.get() == 1


def test_a_wrong_password_is_named_and_hidden(caplog: pytest.LogCaptureFixture) -> None:
    with redis_server(password="right-one") as server:
        wrong = server.url.replace("right-one", "wrong-one")
        with caplog.at_level(logging.WARNING, "prefill_router.serve"):
            run_with(state_of(wrong), _nothing)
        problem = probe(wrong, 0.5)
        assert probe(server.url, 0.5) is None
    message = f"Redis at redis://:***@127.0.0.1:{server.port}/0 refused the credentials"
    assert problem is not None and problem.startswith(message) and "wrong-one" not in problem
    assert [r.getMessage()[: len("state: " + message)] for r in caplog.records] == ["state: " + message]


async def _nothing() -> None:
    return None


def test_a_stalled_redis_costs_one_timeout_then_is_skipped() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        state = state_of(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout_s=0.2)

        async def work() -> list[float]:
            state._retry_at = 0.0  # as if the start had worked: the next call tries Redis
            took = []
            for _ in range(2):
                started = time.perf_counter()
                assert await state.get_scores("k") is None
                took.append(time.perf_counter() - started)
            return took

        first, second = run_with(state, work)
    assert 0.15 < first < 1.0 and second < 0.01  # then the retry pause: no call at all
    assert state.health()["error"] == "get_scores: TimeoutError: no answer within the timeout"


def test_redis_killed_then_back_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_state, "RETRY_S", 0.05)
    with redis_server() as server:
        state = state_of(server.url)

        async def work() -> list[str]:
            statuses = []
            await state.put_session("s", "math-model")
            server.kill()
            assert await state.get_session("s") == "math-model"  # the local copy
            statuses.append(state.health()["status"])
            server.start()
            await asyncio.sleep(0.1)
            await state.put_session("s", "poem-model")
            statuses.append(state.health()["status"])
            return statuses

        assert run_with(state, work) == ["degraded", "ok"]
        assert server.client().get("test:s:s") == b"poem-model"
    assert errors(state, "get_session") == 1 and state.metrics.state_degraded._value.get() == 0


def test_the_namespace_is_the_artifact_fingerprint(router: Router, tmp_path: Path) -> None:
    again = Router.load(router.save(tmp_path / "copy"))  # another replica loading the same artifact
    assert router_namespace(router) == router_namespace(again)
    assert re.fullmatch(r"prefill-router:[0-9a-f]{16}", router_namespace(router))
    edited = again._edited(temperatures=again.temperatures * 2)
    assert router_namespace(edited) != router_namespace(router)


# ====================================================================== config and CLI
def test_the_state_fields_are_validated() -> None:
    base = {"targets": {"a": {"base_url": "http://localhost:4000/v1"}}}
    config = ServeConfig.from_dict(base | {"state": "redis://h:6379/2", "state_required": True}, ["a"])
    assert (config.state, config.state_required, config.state_timeout_s) == ("redis://h:6379/2", True, 0.5)
    assert (config.state_ttl_s, config.session_ttl_s) == (86_400.0, 3_600.0)
    assert ServeConfig.from_dict(base, ["a"]).state is None
    with pytest.raises(ConfigError, match=re.escape(
        "state must be a Redis URL such as redis://127.0.0.1:6379/0 (or rediss://, unix://); "
        "got 'http://:***@h:6379/0'"
    )):  # fmt: skip
        ServeConfig.from_dict(base | {"state": "http://:secret@h:6379/0"}, ["a"])
    for bad in ("redis://h:port/0", "redis:///0", "redis://h:6379/db"):
        with pytest.raises(ConfigError, match=r"^state must be a Redis URL"):
            ServeConfig.from_dict(base | {"state": bad}, ["a"])
    with pytest.raises(ConfigError, match=r"^state_required must be true or false; got 'yes'"):
        ServeConfig.from_dict(base | {"state": "redis://h", "state_required": "yes"}, ["a"])
    assert redact_password("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"


def test_serve_refuses_a_bad_state_url_before_loading_the_router(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["serve", str(tmp_path), "--upstream", "http://localhost:4000/v1", "--state", "redis:/x"]) == 3
    assert "--state must be a Redis URL" in capsys.readouterr().err


def test_state_required_refuses_to_start_without_redis(
    tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = build_tiny_router(tiny_llama_dir, tmp_path / "cache", tmp_path)
    url = f"redis://127.0.0.1:{free_port()}/0"
    command = ["serve", str(artifact), "--upstream", "http://localhost:4000/v1", "--state", url]
    assert run([*command, "--state-required", "--cache", str(tmp_path / "cache")]) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert f"state: cannot use Redis at {url} (ConnectionError: " in err
    assert "; not starting (--state-required)" in err


# ====================================================================== two proxies, one Redis
@pytest.fixture(scope="module")
def router(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Router:
    loaded: Router = tiny_router(tiny_llama_dir, tmp_path_factory, "state")
    return loaded


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    from tests.serve_support import FakeBehaviour, ServerThread, fake_upstream

    with ServerThread(fake_upstream(FakeBehaviour())) as server:
        yield server.url


def chat(url: str, text: str, model: str = "router", session: str | None = None) -> httpx.Response:
    headers = AUTH | ({"x-session-id": session} if session else {})
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=20)


def test_two_proxies_share_cache_sessions_and_budgets(router: Router, upstream: str) -> None:
    with redis_server() as server:
        config = config_for(upstream, state=server.url)
        with running_proxy(router, config) as a, running_proxy(router, config) as b:
            first, again = chat(a, MATH), chat(b, MATH)
            assert (first.headers["x-router-cache"], again.headers["x-router-cache"]) == ("miss", "hit")
            assert first.headers["x-router-target"] == again.headers["x-router-target"]
            assert prometheus(b, "prefill_router_cache_hits_total", 'store="redis"') == 1
            # a session pinned to poem-model on A keeps it on B for a code prompt
            assert chat(a, MATH, model="poem-model", session="conv-1").status_code == 200
            turn = chat(b, CODE, session="conv-1")
            assert turn.headers["x-router-target"] == "poem-model"
            assert "session affinity" in turn.headers["x-router-reason"]
            assert chat(b, CODE).headers["x-router-target"] != "poem-model"  # without the session
            budget = {"model": "router", "prompt": CODE, "router": {"budget_usd": 0.002}}
            decided = [httpx.post(f"{u}/v1/route", json=budget, headers=AUTH).json() for u in (a, b)]
            assert decided[0]["target"] == decided[1]["target"]
            assert any(
                k.startswith(b"prefill-router:") and b":mu:" in k for k in server.client().scan_iter("*")
            )
            health = httpx.get(f"{b}/health").json()
            assert health == {"status": "ok", "state": {"backend": "redis", "status": "ok", "error": None,
                                                        "failures": 0}}  # fmt: skip


def test_redis_killed_under_two_proxies_loses_no_request(
    router: Router, upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_state, "RETRY_S", 0.2)
    with redis_server() as server:
        config = config_for(upstream, state=server.url)
        with running_proxy(router, config) as a, running_proxy(router, config) as b:
            assert chat(a, CODE, session="s").status_code == 200
            server.kill()
            answers = [chat(url, f"{CODE} {i}", session="s") for i, url in enumerate([a, b] * 5)]
            assert [r.status_code for r in answers] == [200] * 10
            health = httpx.get(f"{a}/health").json()["state"]
            assert health["status"] == "degraded" and "Connection" in health["error"]
            assert prometheus(a, "prefill_router_redis_errors_total") >= 1
            assert prometheus(a, "prefill_router_state_degraded") == 1
            server.start()  # back: the next call after the pause finds it
            time.sleep(0.3)
            assert chat(a, MATH).status_code == 200
            assert httpx.get(f"{a}/health").json()["state"]["status"] == "ok"
