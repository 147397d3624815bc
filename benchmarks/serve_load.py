"""Load test of the routing proxy with the real router: client, proxy and upstream in separate processes.

``prefill-router serve ROUTER`` runs in its own process, the fake OpenAI-compatible upstream of the
tests in another (it answers at once), and this process is the load generator (httpx, asyncio,
``--concurrency`` clients each sending its next request as soon as the last one is answered). The
prompts are distinct bundled prompts with their real lengths.

Phases, on the same prompts:

- offline: ``Router.predict_proba`` on every prompt in one call (the encoder's own length-bucketed
  batching), the throughput the proxy should reach under load;
- the proxy with the decision cache off, micro-batch 32 and micro-batch 1 (batching off), at each
  concurrency: throughput and p50 / p99 latency, and the batching gain (32 over 1);
- the decision cache on, every prompt already cached (what a repeated prompt costs);
- 20% of upstream calls failing (10% HTTP 500, 10% stalling past the target's 0.25 s timeout):
  nothing lost, errors only where every target failed.

    python benchmarks/serve_load.py [--router demo/router] [--prompts 320] [--concurrency 1,8,32]

Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._processes import proxy_process, upstream_process  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def bundled_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct bundled prompts, drawn at random (their real lengths)."""
    from prefill_router.data.dataset import RoutingDataset

    prompts = sorted({str(p) for p in RoutingDataset.load("bundled").prompts if str(p).strip()})
    rng = np.random.default_rng(seed)
    return [prompts[i] for i in rng.choice(len(prompts), size=n, replace=False)]


async def load(url: str, prompts: Sequence[str], concurrency: int, limit_s: float) -> dict[str, Any]:
    """Send each prompt once as a chat completion with ``concurrency`` clients; latencies in ms."""
    latencies: list[float] = []
    counts = {"sent": 0, "answered": 0, "errors": 0, "lost": 0}
    statuses: dict[str, int] = {}
    deadline = time.perf_counter() + limit_s
    queue = iter(prompts)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            for text in queue:
                if time.perf_counter() > deadline:
                    return
                body = {"model": "router", "messages": [{"role": "user", "content": text}]}
                counts["sent"] += 1
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/chat/completions", json=body)
                except httpx.HTTPError:
                    counts["lost"] += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                counts["answered"] += 1
                statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
                if response.status_code != 200:
                    counts["errors"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return counts | {
        "statuses": statuses, "seconds": round(seconds, 3),
        "throughput_rps": round(counts["answered"] / seconds, 2),
        "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 1) for q in ("p50", "p99")},
        "bounded_by_time": counts["sent"] < len(prompts),
    }  # fmt: skip


def offline(router_dir: Path, prompts: Sequence[str]) -> dict[str, Any]:
    """The router's throughput on the same prompts in this process, servers not started: all at once
    (the encoder sorts them by length), and in consecutive slices of 32 and of 1 (what micro-batches
    of random arrivals can get at best, without HTTP)."""
    from prefill_router import Router

    router = Router.load(router_dir)
    router.predict_proba(list(prompts[:8]))  # warm: load, prefix cache
    out: dict[str, Any] = {}
    for size in (len(prompts), 32, 1):
        started = time.perf_counter()
        for start in range(0, len(prompts), size):
            router.predict_proba(list(prompts[start : start + size]))
        seconds = time.perf_counter() - started
        out["all_at_once" if size == len(prompts) else f"slices_of_{size}"] = {
            "seconds": round(seconds, 3),
            "throughput_rps": round(len(prompts) / seconds, 2),
        }
    return out | out["all_at_once"]


def phases(
    router_dir: Path, targets: list[str], prompts: Sequence[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Every proxy phase; each proxy in its own process, started fresh."""
    out: dict[str, Any] = {}
    levels = [int(c) for c in args.concurrency.split(",")]
    with upstream_process() as upstream:
        for batch in (32, 1):
            with proxy_process(router_dir, upstream, targets, cache_size=0, max_batch=batch) as url:
                for concurrency in levels:
                    key = f"max_batch_{batch}_concurrency_{concurrency}"
                    out[key] = asyncio.run(load(url, prompts, concurrency, args.time_limit_s))
                    print(f"{key}: {_line(out[key])}", flush=True)
        with proxy_process(router_dir, upstream, targets) as url:
            asyncio.run(load(url, prompts, max(levels), args.time_limit_s))  # fills the decision cache
            out["cache_hits_concurrency_32"] = asyncio.run(load(url, prompts, max(levels), args.time_limit_s))
            print(f"cache hits: {_line(out['cache_hits_concurrency_32'])}", flush=True)
    flaky = dict.fromkeys(targets, "flaky")
    with (
        upstream_process(modes=flaky, stall_s=1.0) as upstream,
        proxy_process(router_dir, upstream, targets, target_timeout_s=0.25, fallback=targets) as url,
    ):
        out["upstream_20pct_failures"] = asyncio.run(load(url, prompts, max(levels), args.time_limit_s))
        print(f"20% upstream failures: {_line(out['upstream_20pct_failures'])}", flush=True)
    return out


def _line(phase: dict[str, Any]) -> str:
    lat = phase["latency_ms"]
    return (
        f"{phase['throughput_rps']} req/s, p50 {lat['p50']} ms, p99 {lat['p99']} ms, errors {phase['errors']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--router", type=Path, default=ROOT / "demo" / "router")
    parser.add_argument("--prompts", type=int, default=320)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--time-limit-s", type=float, default=180.0, help="per phase")
    parser.add_argument("--output", type=Path, default=RESULTS / "serve_load.json")
    args = parser.parse_args()
    from prefill_router import Router

    targets = list(Router.load(args.router).targets)
    prompts = bundled_prompts(args.prompts)
    result: dict[str, Any] = {
        "router": str(args.router), "prompts": len(prompts),
        "median_prompt_chars": int(np.median([len(p) for p in prompts])),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}",
        "setup": "load generator, proxy (prefill-router serve) and fake upstream: three processes, loopback",
        "offline_batched": offline(args.router, prompts),
    }  # fmt: skip
    print(f"offline batched: {result['offline_batched']['throughput_rps']} prompts/s", flush=True)
    result |= phases(args.router, targets, prompts, args)
    top = max(int(c) for c in args.concurrency.split(","))
    batched, single = result[f"max_batch_32_concurrency_{top}"], result[f"max_batch_1_concurrency_{top}"]
    result["batching_gain"] = round(batched["throughput_rps"] / single["throughput_rps"], 2)
    result["share_of_offline_throughput"] = round(
        batched["throughput_rps"] / result["offline_batched"]["throughput_rps"], 3
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    """The README table."""
    rows = [
        "| phase | answered | errors | lost | throughput | p50 / p99 latency |",
        "|---|---|---|---|---|---|",
    ]
    off = result["offline_batched"]
    rows.append(f"| offline: `Router.predict_proba` on all prompts at once | {result['prompts']} | – | – | "
                f"{off['throughput_rps']} prompts/s | – |")  # fmt: skip
    for size in (32, 1):
        if f"slices_of_{size}" in off:
            rate = off[f"slices_of_{size}"]["throughput_rps"]
            rows.append(
                f"| in-process, slices of {size} | {result['prompts']} | – | – | {rate} prompts/s | – |"
            )
    for key, phase in result.items():
        if isinstance(phase, dict) and "latency_ms" in phase:
            lat = phase["latency_ms"]
            rows.append(
                f"| {key.replace('_', ' ')} | {phase['answered']} | {phase['errors']} | {phase['lost']} | "
                f"{phase['throughput_rps']} req/s | {lat['p50']} / {lat['p99']} ms |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
