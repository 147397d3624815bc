"""Two replicas, one state: the issue-17 targets, measured with separate processes on loopback.

A real ``redis-server``, the fake OpenAI-compatible upstream of the tests, two ``prefill-router
serve`` replicas sharing that Redis (``state: redis://...``) and a third one with in-process state,
each in its own process; this process is the client, a load balancer alternating between the two
replicas (request ``i`` to replica ``i % 2``, and to the other one when the first cannot answer: no
connection, a broken one, a 5xx). Prompts: distinct bundled prompts (their real lengths).

Phases (``--requests`` each, default 3,000, at ``--concurrency`` 32):

- affinity: sessions of 10 turns, each turn on the other replica than the one before: the share of
  later turns answered by the session's first target;
- cross-replica cache hits: every prompt sent to A, then to B: the share of hits on B among the
  prompts A decided (the replicas' scoring deadline is raised to ``--score-timeout-s``, 30 s, so
  that a loaded machine does not send prompts to the fallback target undecided; those are counted);
- Redis killed after a third of the requests: requests lost (not answered by either replica);
- replica A killed (SIGKILL) after a third of the requests: requests lost;
- the p50 that Redis adds to a cache hit: ``/v1/route`` at concurrency 1, each prompt cached on
  another replica (so B finds it in Redis, its own memory cold) against the same prompt cached in
  the in-process replica's memory, timed one after the other, prompt by prompt.

    python benchmarks/serve_replicas.py [--router ROUTER] [--requests 3000] [--concurrency 32]

Without ``--router`` it fits the tests' tiny router (a tiny random llama: the encoder is cheap, so
the figures are the proxy's and the state's). Writes benchmarks/results/serve_replicas.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._processes import upstream_process  # noqa: E402
from tests.redis_support import RedisServer  # noqa: E402
from tests.replica_support import Call, Outcome, chat, replicas, send_all  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TURNS = 10


def bundled_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct bundled prompts, drawn at random (their real lengths)."""
    from prefill_router.data.dataset import RoutingDataset

    prompts = sorted({str(p) for p in RoutingDataset.load("bundled").prompts if str(p).strip()})
    rng = np.random.default_rng(seed)
    return [prompts[i] for i in rng.choice(len(prompts), size=min(n, len(prompts)), replace=False)]


@contextlib.contextmanager
def tiny_router() -> Iterator[tuple[Path, Path]]:
    """(artifact, encoder cache) of the tests' tiny router, fitted in a temporary folder."""
    from tests.serve_support import build_tiny_router
    from tests.tiny_models import build_tiny_llama

    with tempfile.TemporaryDirectory(prefix="serve-replicas-") as work:
        folder = Path(work)
        os.environ["PREFILL_ROUTER_CACHE"] = str(folder / "cache")  # the replicas inherit it
        model = build_tiny_llama(folder / "tiny-llama")
        yield build_tiny_router(model, folder / "cache", folder), folder / "cache"


def counts(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Answered, lost (neither replica answered), retried, statuses, latency."""
    lat = np.array([o.latency_ms for o in outcomes if o.status])
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    return {
        "requests": len(outcomes), "answered_200": sum(o.status == 200 for o in outcomes),
        "lost": sum(o.status == 0 for o in outcomes),
        "retried_on_the_other": sum(o.retried for o in outcomes), "statuses": statuses,
        "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 1) for q in ("p50", "p99")},
    }  # fmt: skip


def affinity(urls: list[str], prompts: Sequence[str], n: int, concurrency: int) -> dict[str, Any]:
    """Sessions of TURNS turns, alternating replicas turn by turn: later turns on the first target."""
    sessions = n // TURNS
    firsts: list[str | None] = []
    kept = later = 0
    outcomes: list[Outcome] = []
    for turn in range(TURNS):
        order = urls[turn % 2 :] + urls[: turn % 2]
        calls = [chat(prompts[(s * TURNS + turn) % len(prompts)], session=f"s-{s}") for s in range(sessions)]
        answered = asyncio.run(send_all(order, calls, concurrency=concurrency))
        outcomes += answered
        if turn == 0:
            firsts = [o.target for o in answered]
            continue
        later += len(answered)
        kept += sum(
            o.target == first and o.target is not None for o, first in zip(answered, firsts, strict=True)
        )
    return counts(outcomes) | {
        "sessions": sessions, "turns": TURNS, "later_turns": later, "kept_first_target": kept,
        "affinity_pct": round(100 * kept / later, 2),
    }  # fmt: skip


def cross_hits(urls: list[str], prompts: Sequence[str], n: int, concurrency: int) -> dict[str, Any]:
    """Each prompt sent to A, then to B: the share of B's cache hits among the prompts A decided
    (scored: a prompt that went to the fallback target, past the scoring deadline, has no decision
    to share)."""
    texts = list(prompts[: n // 2])
    on_a = asyncio.run(send_all(urls[:1], [chat(t) for t in texts], concurrency=concurrency))
    on_b = asyncio.run(send_all(urls[1:], [chat(t) for t in texts], concurrency=concurrency))
    decided = [i for i, o in enumerate(on_a) if o.scored]
    hits = sum(on_b[i].cache == "hit" for i in decided)
    same = sum(on_a[i].target == on_b[i].target for i in decided)
    return counts(on_a + on_b) | {
        "prompts": len(texts), "misses_on_a": sum(o.cache == "miss" for o in on_a),
        "decided_on_a": len(decided), "fallbacks_on_a": len(texts) - len(decided), "hits_on_b": hits,
        "hits_on_b_all_prompts": sum(o.cache == "hit" for o in on_b),
        "cross_replica_hit_pct": round(100 * hits / max(1, len(decided)), 2),
        "same_target_pct": round(100 * same / max(1, len(decided)), 2),
    }  # fmt: skip


def killed(
    urls: list[str], calls: list[Call], concurrency: int, kill: Any, at: int
) -> tuple[dict[str, Any], float]:
    """Send ``calls`` alternating, ``kill()`` once ``at`` requests were answered; (counts, seconds)."""

    def on_answer(answered: int) -> None:
        if answered == at:
            kill()

    started = time.perf_counter()
    outcomes = asyncio.run(send_all(urls, calls, concurrency=concurrency, on_answer=on_answer))
    seconds = time.perf_counter() - started
    return counts(outcomes) | {"killed_after": at, "seconds": round(seconds, 2)}, seconds


def hit_latency(redis_urls: list[str], local_url: str, prompts: Sequence[str]) -> dict[str, Any]:
    """p50 of a cache hit on /v1/route at concurrency 1: found in Redis (cached by A, B's memory cold)
    against found in the in-process replica's memory; the same prompts, timed alternately."""
    a, b = redis_urls
    redis_ms, local_ms, warm_ms = [], [], []
    with httpx.Client(timeout=30) as client:

        def timed(url: str, text: str) -> tuple[float, str]:
            started = time.perf_counter()
            response = client.post(f"{url}/v1/route", json={"prompt": text})
            return (time.perf_counter() - started) * 1000, str(response.json().get("cached"))

        for text in prompts:  # cache each prompt on A (Redis) and on the in-process replica
            client.post(f"{a}/v1/route", json={"prompt": text})
            client.post(f"{local_url}/v1/route", json={"prompt": text})
        flags = []
        for text in prompts:
            ms, flag = timed(b, text)  # B: not in its memory, found in Redis
            redis_ms.append(ms)
            flags.append(flag)
            local_ms.append(timed(local_url, text)[0])
            warm_ms.append(timed(b, text)[0])  # B again: now in its memory too
    p50 = {
        name: float(np.median(v)) for name, v in (("redis", redis_ms), ("local", local_ms), ("warm", warm_ms))
    }
    return {
        "prompts": len(prompts), "endpoint": "/v1/route", "concurrency": 1,
        "hits_found_in_redis_p50_ms": round(p50["redis"], 3), "in_process_hit_p50_ms": round(p50["local"], 3),
        "redis_replica_repeat_hit_p50_ms": round(p50["warm"], 3),
        "redis_adds_p50_ms": round(p50["redis"] - p50["local"], 3),
        "ratio_redis_to_in_process": round(p50["redis"] / p50["local"], 3),
        "route_says_cached": {flag: flags.count(flag) for flag in set(flags)},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--router", type=Path, default=None, help="an artifact (default: the tiny test router)"
    )
    parser.add_argument("--requests", type=int, default=3000, help="per phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-prompts", type=int, default=500)
    parser.add_argument(
        "--score-timeout-s",
        type=float,
        default=30.0,
        help="the replicas' scoring deadline: past it a prompt goes to the fallback target undecided (the "
        "default 2 s is passed at concurrency 32 on a loaded 2-core machine; the state is measured here)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "serve_replicas.json")
    args = parser.parse_args()
    prompts = bundled_prompts(max(args.requests, args.latency_prompts) * 2)
    with contextlib.ExitStack() as stack:
        if args.router is None:
            router, cache = stack.enter_context(tiny_router())
        else:
            router, cache = args.router, None
        result = run(router, cache, prompts, args)
    tiny = "tiny test router (tests/serve_support.build_tiny_router)"
    cores = len(os.sched_getaffinity(0))
    result |= {
        "router": tiny if args.router is None else str(args.router),
        "machine": f"{platform.machine()}, {cores} cores, Python {platform.python_version()}",
        "setup": "redis-server, fake upstream, replicas A and B (Redis state), replica C (in-process state) "
        "and this client: separate processes on loopback",
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["targets"], indent=2))


def run(router: Path, cache: Path | None, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every phase, on one Redis, one upstream and fresh replicas where a phase killed one."""
    from prefill_router import Router

    targets = list(Router.load(router).targets)
    n, concurrency = args.requests, args.concurrency
    out: dict[str, Any] = {"requests_per_phase": n, "concurrency": concurrency}
    out["score_timeout_s"] = args.score_timeout_s
    with RedisServer() as redis, upstream_process() as upstream:
        settings = {
            "targets": {t: {"base_url": upstream} for t in targets},
            "fallback": targets,
            "drain_s": 0,
            "score_timeout_s": args.score_timeout_s,
        }
        shared = settings | {"state": redis.url}
        with (
            replicas(router, shared, 2, cache=cache) as pair,
            replicas(router, settings, 1, cache=cache) as alone,
        ):
            urls = [r.url for r in pair]
            out["affinity"] = affinity(urls, prompts, n, concurrency)
            print(f"affinity: {out['affinity']['affinity_pct']}%", flush=True)
            out["cross_replica_hits"] = cross_hits(urls, prompts[n:], n, concurrency)
            print(f"cross-replica hits: {out['cross_replica_hits']['cross_replica_hit_pct']}%", flush=True)
            out["cache_hit_latency"] = hit_latency(urls, alone[0].url, prompts[-args.latency_prompts :])
            print(f"cache hit p50: {out['cache_hit_latency']}", flush=True)
            calls = [chat(prompts[i % len(prompts)], session=f"k-{i % 300}") for i in range(n)]
            out["redis_killed"], _ = killed(urls, calls, concurrency, redis.kill, n // 3)
            health = [httpx.get(f"{u}/health").json()["state"] for u in urls]
            out["redis_killed"]["health_after"] = health
            print(f"Redis killed: lost {out['redis_killed']['lost']}", flush=True)
        redis.start()
        with replicas(router, shared, 2, cache=cache) as pair:
            urls = [r.url for r in pair]
            calls = [chat(prompts[i % len(prompts)], session=f"r-{i % 300}") for i in range(n)]
            out["replica_killed"], _ = killed(urls, calls, concurrency, pair[0].kill, n // 3)
            print(f"replica killed: lost {out['replica_killed']['lost']}", flush=True)
    latency = out["cache_hit_latency"]
    out["targets"] = {
        "affinity_pct": out["affinity"]["affinity_pct"],
        "cross_replica_hit_pct": out["cross_replica_hits"]["cross_replica_hit_pct"],
        "lost_with_replica_killed": out["replica_killed"]["lost"],
        "lost_with_redis_killed": out["redis_killed"]["lost"],
        "redis_adds_to_a_cache_hit_p50_ms": latency["redis_adds_p50_ms"],
        "cache_hit_p50_ms_redis_vs_in_process": [
            latency["hits_found_in_redis_p50_ms"], latency["in_process_hit_p50_ms"],
        ],
    }  # fmt: skip
    return out


if __name__ == "__main__":
    main()
