"""Load test of the routing proxy against the fake OpenAI-compatible upstream on loopback.

Phases (each bounded by --requests and --time-limit-s): the upstream called directly; the proxy
(micro-batched); the proxy with 20% of upstream calls failing (10% HTTP 500, 10% stalling past the
timeout); and the micro-batching gain (cache off, max_batch 32 vs 1, same run). Every request uses
a distinct prompt so the encoder runs for each. Servers and the load generator share one process
(threads), so the figures include GIL contention on this machine's cores.

    python benchmarks/serve_load.py [--router router/] [--requests 3000] [--concurrency 32]

Without --router the tiny random-weight llama router of the tests is built (and the results say so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serve_support import FakeBehaviour, ServerThread, fake_upstream  # noqa: E402

from prefill_router.serve.app import create_app  # noqa: E402
from prefill_router.serve.config import ServeConfig, UpstreamTarget  # noqa: E402

TOPICS = ("math", "poem", "code", "trivia")


async def load(
    url: str, path: str, n: int, concurrency: int, limit_s: float, model: str, tag: str
) -> dict[str, Any]:
    """Send up to ``n`` requests (distinct prompts) with ``concurrency`` workers; latencies in ms."""
    latencies: list[float] = []
    counts = {"sent": 0, "answered": 0, "errors": 0, "lost": 0}
    statuses: dict[str, int] = {}
    deadline = time.perf_counter() + limit_s
    queue = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            for i in queue:
                if time.perf_counter() > deadline:
                    return
                text = f"{TOPICS[i % 4]} question {tag} {i}: python function blue square number"
                body = {"model": model, "messages": [{"role": "user", "content": text}]}
                counts["sent"] += 1
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
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
        "throughput_rps": round(counts["answered"] / seconds, 1),
        "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 2) for q in ("p50", "p99")},
        "bounded_by_time": counts["sent"] < n,
    }  # fmt: skip


def tiny_router(workdir: Path) -> Any:
    """The tests' tiny random-weight llama router (3 priced targets), its encoder on one thread."""
    from tests.serve_support import build_tiny_router, load_tiny_router
    from tests.tiny_models import build_tiny_llama

    model_dir = build_tiny_llama(workdir / "tiny-llama")
    path = build_tiny_router(model_dir, workdir / "cache", workdir)
    return load_tiny_router(path, model_dir, workdir / "cache")


def main() -> None:
    """Run every phase and write benchmarks/results/serve_load.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--router", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--batching-requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--time-limit-s", type=float, default=120.0)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()

    from prefill_router.train import Router

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PREFILL_ROUTER_CACHE", str(Path(tmp) / "cache"))
        router = Router.load(args.router) if args.router else tiny_router(Path(tmp))
        results = run_phases(router, args)
    results |= {
        "router": str(args.router) if args.router else "tests' tiny llama router (built here)",
        "requests_per_phase": args.requests, "concurrency": args.concurrency,
        "time_limit_s": args.time_limit_s,
        "machine": f"{platform.machine()}, {os.cpu_count()} shared cores, Python {platform.python_version()}",
        "setup": "fake upstream, proxy and load generator in one process on loopback (uvicorn threads)",
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


def run_phases(router: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Start the servers and run the phases."""
    behaviour = FakeBehaviour(stall_s=1.0, fail_share=0.1, stall_share=0.1)
    n, conc, limit = args.requests, args.concurrency, args.time_limit_s
    out: dict[str, Any] = {}
    with ServerThread(fake_upstream(behaviour)) as upstream:

        def config(**options: Any) -> ServeConfig:
            targets = {t: UpstreamTarget(t, f"{upstream.url}/v1", t, None, 0.25) for t in router.targets}
            return ServeConfig(targets=targets, fallback=tuple(router.targets), **options)

        with ServerThread(create_app(router, config())) as proxy:
            _wait_ready(proxy.url)
            out["direct"] = asyncio.run(
                load(upstream.url, "/v1/chat/completions", n, conc, limit, router.targets[0], "d")
            )
            out["proxy"] = asyncio.run(load(proxy.url, "/v1/chat/completions", n, conc, limit, "router", "p"))
            behaviour.modes.update(dict.fromkeys(router.targets, "flaky"))
            out["proxy_20pct_upstream_failures"] = asyncio.run(
                load(proxy.url, "/v1/chat/completions", n, conc, limit, "router", "f")
            )
            behaviour.modes.clear()
        out["added_latency_ms"] = {
            q: round(out["proxy"]["latency_ms"][q] - out["direct"]["latency_ms"][q], 2)
            for q in ("p50", "p99")
        }
        m = args.batching_requests
        for name, batch in (("batched", 32), ("unbatched", 1)):
            with ServerThread(create_app(router, config(cache_size=0, max_batch=batch))) as proxy:
                _wait_ready(proxy.url)
                out[f"{name}_cache_off"] = asyncio.run(
                    load(proxy.url, "/v1/route", m, conc, limit, "router", name)
                )
        out["batching_gain"] = round(
            out["batched_cache_off"]["throughput_rps"] / out["unbatched_cache_off"]["throughput_rps"], 2
        )
    return out


def _wait_ready(url: str) -> None:
    for _ in range(6000):
        if httpx.get(f"{url}/ready").status_code == 200:
            return
        time.sleep(0.01)
    raise RuntimeError("the proxy did not become ready")


if __name__ == "__main__":
    main()
