"""Distributed feature extraction on Ray versus the single-process path, in one run, same prompts.

Configurations, each into an empty feature store (so every chunk is computed) with the real
SmolLM2-135M in bfloat16, every layer, mean + last pooling (the ``encode`` defaults):
  (a) single process, 1 and 2 torch threads;
  (b) Ray, 1 worker x 1 CPU, 2 workers x 1 CPU and 1 worker x 2 CPUs on a local Ray instance.
Each configuration first encodes one short prompt per worker into an empty store (chunks of one
prompt, so Ray starts its whole actor pool): that run's wall time is its start-up (the single
process loading the encoder and warming it up on the prompt; Ray starting the actors, each loading
the encoder and encoding its prompt, plus the driver's planning). Then it encodes the ``--n``
prompts into another empty store. Every configuration's throughput is its steady-state encoding,
after its own warm-up, so configurations compare on work, not on start-up, and the start-up is
reported on its own:
  - single process: the work run reuses the encoder the start-up run loaded and warmed, so it pays
    no start-up; its work time is its wall time (``startup_in_work_run`` false);
  - Ray: every ``extract_features_ray`` call starts a fresh actor pool, each actor loading the
    encoder again, so the work run pays the start-up again; its work time is its wall time less the
    start-up (``startup_in_work_run`` true).
(Before, the single process also had the start-up subtracted from its work run, which had none:
that overstated its throughput, e.g. 3.44 instead of 3.29 prompts/s, against Ray's.)
A throwaway Ray job runs first (``ray_first_call_s``), so that no measured Ray start-up carries the
session's one-time costs, which its work run would not pay again. Ratios compare equal CPU counts:
per-worker overhead = start-up difference and throughput ratio Ray 1x1 / single process 1 thread;
scaling = Ray 2x1 / Ray 1x1. Writes ``benchmarks/results/ray_scaling.json``.

Run: ``.venv/bin/python benchmarks/ray_scaling.py [--n 256] [--chunk-size 32]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from prefill_router import RoutingDataset
from prefill_router._ray import WorkerPlan, ray_session
from prefill_router.encode import Encoder, FeatureStore, default_cache_dir, extract_features
from prefill_router.encode.distributed import extract_features_ray

RESULTS = Path(__file__).resolve().parent / "results" / "ray_scaling.json"
ENCODER = "smollm2-135m"


def measured(
    run: Any, prompts: list[str], chunk_size: int, workers: int, startup_in_work_run: bool
) -> dict[str, Any]:
    """``run(texts, store, chunk_size)`` on one short prompt per worker in chunks of one (the
    start-up), then on ``prompts`` (the work). ``startup_in_work_run``: the work run pays the
    start-up again (Ray's fresh actor pool), so the work is its wall time less the start-up;
    otherwise (the single process's loaded, warmed encoder) the work is its wall time."""
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as cold:
        started = time.perf_counter()
        run([f"Hi {i}" for i in range(workers)], FeatureStore(warm), 1)
        startup = time.perf_counter() - started
        started = time.perf_counter()
        stored = run(prompts, FeatureStore(cold), chunk_size)
        wall = time.perf_counter() - started
    work = max(wall - startup, 1e-9) if startup_in_work_run else wall
    return {
        "startup_s": startup, "wall_s": wall, "work_s": work, "prompts_per_s": len(prompts) / work,
        "tokens": stored.n_tokens, "tokens_per_s": stored.n_tokens / work, "chunks": stored.computed_chunks,
        "startup_in_work_run": startup_in_work_run,
    }  # fmt: skip


def single_process(prompts: list[str], threads: int, chunk_size: int) -> dict[str, Any]:
    holder: dict[str, Encoder] = {}

    def run(texts: list[str], store: FeatureStore, chunks: int) -> Any:
        if "encoder" not in holder:  # loaded in the start-up run, reused by the work run
            holder["encoder"] = Encoder(ENCODER, threads=threads)
        return extract_features(holder["encoder"], texts, store, chunk_size=chunks)

    return {"threads": threads, **measured(run, prompts, chunk_size, 1, startup_in_work_run=False)}


def on_ray(prompts: list[str], driver: Encoder, plan: WorkerPlan, chunk_size: int) -> dict[str, Any]:
    def run(texts: list[str], store: FeatureStore, chunks: int) -> Any:  # a fresh actor pool per call
        return extract_features_ray(
            ray, driver, texts, store, plan, chunk_size=chunks, cache_dir=default_cache_dir()
        )

    return {
        "workers": plan.workers, "cpus_per_worker": plan.threads,
        **measured(run, prompts, chunk_size, plan.workers, startup_in_work_run=True),
    }  # fmt: skip


def ray_first_call(driver: Encoder) -> float:
    """Seconds of a throwaway first Ray Data job (one worker, one short prompt), run before any
    measured one: the session's first job pays one-time costs (Ray Data's set-up, the first worker
    processes) that later jobs do not, so a measured start-up run that was the first job would
    overstate the start-up its work run pays and so understate that configuration's work time."""
    plan = WorkerPlan(workers=1, cpus=1.0, gpus=0.0, device="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        extract_features_ray(ray, driver, ["Hi"], FeatureStore(scratch), plan, cache_dir=default_cache_dir())
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="bundled training prompts to encode")
    parser.add_argument("--chunk-size", type=int, default=32, help="prompts per chunk (a unit of Ray work)")
    args = parser.parse_args()
    dataset = RoutingDataset.load("bundled").select(split="train")
    prompts = dataset.prompts.tolist()[: args.n]
    runs: dict[str, Any] = {}
    for threads in (1, 2):
        runs[f"single_{threads}_thread"] = single_process(prompts, threads, args.chunk_size)
        print(f"single process, {threads} thread(s): {runs[f'single_{threads}_thread']}", flush=True)
    driver = Encoder(ENCODER, threads=1)
    started = time.perf_counter()
    with ray_session() as session:
        assert session is ray
        ray_start = time.perf_counter() - started
        ray_warmup = ray_first_call(driver)
        for workers, cpus in ((1, 1), (2, 1), (1, 2)):
            plan = WorkerPlan(workers=workers, cpus=float(cpus), gpus=0.0, device="cpu")
            name = f"ray_{workers}x{cpus}"
            runs[name] = on_ray(prompts, driver, plan, args.chunk_size)
            print(f"Ray {workers} worker(s) x {cpus} CPU: {runs[name]}", flush=True)
    single1, single2 = runs["single_1_thread"], runs["single_2_thread"]
    ray11, ray21, ray12 = runs["ray_1x1"], runs["ray_2x1"], runs["ray_1x2"]
    result = {
        "n_prompts": len(prompts), "chunk_size": args.chunk_size, "encoder": ENCODER, "dtype": driver.dtype,
        "layers": driver.n_layers + 1, "poolings": ["mean", "last"], "cores": len(os.sched_getaffinity(0)),
        "machine": platform.machine(), "torch": torch.__version__, "ray": ray.__version__,
        "ray_start_s": ray_start, "ray_first_call_s": ray_warmup, "runs": runs,
        "ratios": {
            "scaling_2_workers_over_1": ray21["prompts_per_s"] / ray11["prompts_per_s"],
            "ray_1x1_over_single_1_thread": ray11["prompts_per_s"] / single1["prompts_per_s"],
            "ray_2x1_over_single_2_threads": ray21["prompts_per_s"] / single2["prompts_per_s"],
            "ray_1x2_over_single_2_threads": ray12["prompts_per_s"] / single2["prompts_per_s"],
            "startup_s_ray_1x1_minus_single": ray11["startup_s"] - single1["startup_s"],
        },
        "core_seconds_per_1k_tokens": {
            name: 1000 * run.get("threads", run.get("workers", 1) * run.get("cpus_per_worker", 1))
            / run["tokens_per_s"]
            for name, run in runs.items()
        },
        "mean_tokens_per_prompt": single1["tokens"] / len(prompts),
    }  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["ratios"], indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
