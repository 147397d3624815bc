"""Two replicas, one state (issue 17): separate ``prefill-router serve`` processes sharing one real
Redis, real HTTP, the fake upstream, and a client alternating between them (tests/replica_support.py).

A session keeps its target across replicas (every turn), a prompt decided on one replica is a cache
hit on the other, and under load neither a killed Redis nor a killed replica loses a request that
the client sends again to the other replica. benchmarks/serve_replicas.py measures the same at
3,000 requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.redis_support import RedisServer
from tests.replica_support import Replica, chat, replicas, send_all
from tests.serve_support import (
    UPSTREAM_IDS,
    FakeBehaviour,
    ServerThread,
    build_tiny_router,
    fake_upstream,
    prometheus,
)

TARGETS = ("math-model", "poem-model", "code-model")
TOPICS = (
    "math question: blue square number",
    "poem about the sea and the moon",
    "code question: python function",
)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:  # its own: a test kills it
        yield server


@pytest.fixture(scope="module")
def pair(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory, redis: RedisServer
) -> Iterator[list[Replica]]:
    cache = tmp_path_factory.getbasetemp() / "cache"
    artifact = build_tiny_router(tiny_llama_dir, cache, tmp_path_factory.mktemp("replicas"))
    with ServerThread(fake_upstream(FakeBehaviour())) as upstream:
        targets = {
            n: {"base_url": f"{upstream.url}/v1", "model": UPSTREAM_IDS[n], "timeout_s": 10} for n in TARGETS
        }
        settings = {
            "targets": targets,
            "fallback": ["poem-model", "math-model"],
            "state": redis.url,
            "drain_s": 0,
        }
        with replicas(artifact, settings, 2, cache=cache) as started:
            yield started


def urls(pair: list[Replica]) -> list[str]:
    return [r.url for r in pair]


def test_a_session_keeps_its_target_across_replicas(pair: list[Replica]) -> None:
    sessions, turns = 24, 5
    targets: dict[int, list[str | None]] = {s: [] for s in range(sessions)}
    for turn in range(turns):  # each turn of a session goes to the other replica than the last
        order = urls(pair)[turn % 2 :] + urls(pair)[: turn % 2]
        calls = [
            chat(f"{TOPICS[(s + turn) % 3]} {s}.{turn}", session=f"conversation-{s}") for s in range(sessions)
        ]
        outcomes = asyncio.run(send_all(order, calls, concurrency=8))
        assert [o.status for o in outcomes] == [200] * sessions
        assert {o.replica for o in outcomes} == {0, 1}
        for s, outcome in enumerate(outcomes):
            targets[s].append(outcome.target)
            assert turn == 0 or outcome.source == "session"
    assert all(len(set(t)) == 1 for t in targets.values())  # 100%
    # ... where the router alone would have moved some turns elsewhere
    route = f"{pair[1].url}/v1/route"
    alone = [
        httpx.post(route, json={"prompt": f"{TOPICS[(s + 1) % 3]} {s}.1"}).json()["target"]
        for s in range(sessions)
    ]
    assert any(a != t[0] for a, t in zip(alone, targets.values(), strict=True))


def test_a_prompt_decided_on_one_replica_is_a_hit_on_the_other(pair: list[Replica]) -> None:
    a, b = urls(pair)
    texts = [f"{TOPICS[i % 3]} first seen on A, number {i}" for i in range(40)]
    hits_before = prometheus(b, "prefill_router_cache_hits_total", 'store="redis"')
    on_a = asyncio.run(send_all([a], [chat(t) for t in texts], concurrency=8))
    on_b = asyncio.run(send_all([b], [chat(t) for t in texts], concurrency=8))
    assert [o.cache for o in on_a] == ["miss"] * 40 and [o.cache for o in on_b] == ["hit"] * 40
    assert [o.target for o in on_a] == [o.target for o in on_b]
    assert prometheus(b, "prefill_router_cache_hits_total", 'store="redis"') == hits_before + 40


def test_redis_killed_mid_load_every_request_is_answered(pair: list[Replica], redis: RedisServer) -> None:
    calls = [chat(f"{TOPICS[i % 3]} under load {i % 60}", session=f"load-{i % 30}") for i in range(300)]

    def kill_redis(answered: int) -> None:
        if answered == 100:
            redis.kill()

    try:
        outcomes = asyncio.run(send_all(urls(pair), calls, concurrency=16, on_answer=kill_redis))
        assert [o.status for o in outcomes] == [200] * 300
        assert not any(o.retried for o in outcomes)  # no replica failed a request: nothing to retry
        for url in urls(pair):
            state = httpx.get(f"{url}/health").json()["state"]
            assert state["backend"] == "redis" and state["status"] == "degraded", state
            assert prometheus(url, "prefill_router_redis_errors_total") >= 1
    finally:
        redis.start()


def test_a_replica_killed_mid_load_loses_no_retried_request(pair: list[Replica]) -> None:
    calls = [chat(f"{TOPICS[i % 3]} before and after a crash {i % 50}") for i in range(300)]

    def kill_a(answered: int) -> None:
        if answered == 100:
            pair[0].kill()

    outcomes = asyncio.run(send_all(urls(pair), calls, concurrency=16, on_answer=kill_a))
    lost = [o for o in outcomes if o.status != 200]
    assert lost == []
    retried = [o for o in outcomes if o.retried]
    assert retried and all(o.replica == 1 for o in retried)
    assert sum(o.replica == 0 for o in outcomes) > 0  # A answered until it was killed
