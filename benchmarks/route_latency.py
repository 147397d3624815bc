"""How long one routing decision takes, ours against the naive way, with each latency lever measured.

Sequential decisions on prompts near the median length of the bundled test split, all paths in one
run on the same prompts (ratios hold on a noisy shared machine even when absolute times drift):

- naive: transformers' full forward in float32 with ``output_hidden_states`` (every layer, no
  prefix cache, the chat template tokenised per prompt), what a straightforward prefill router does;
- ``Router.route`` of each router given (one prompt: tokenise, encode to the deepest block read,
  trunk, heads, temperature, costs, policy), and its stages;
- the levers on the encoder, each against the shipped setting: no prefix cache, float32, one thread,
  int8 dynamic quantisation, ``torch.compile``, and what the old deep-copied prefix cache cost;
- ``prefill-router serve`` (a separate process, the fake upstream in a third): a new prompt and a
  decision-cache hit through the OpenAI-compatible proxy, and the proxy's overhead over ``Router.route``.

    python benchmarks/route_latency.py [--router demo/router] [--router other/] [--prompts 60]

Writes benchmarks/results/route_latency.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._processes import proxy_process, upstream_process  # noqa: E402

from prefill_router import Router  # noqa: E402
from prefill_router.data.dataset import RoutingDataset  # noqa: E402
from prefill_router.encode import Encoder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def median_prompts(n: int) -> list[str]:
    """The ``n`` bundled test prompts closest to the split's median length (characters)."""
    test = RoutingDataset.load("bundled").select(split="test")
    prompts = [str(p) for p in test.prompts]
    lengths = np.array([len(p) for p in prompts])
    order = np.argsort(np.abs(lengths - np.median(lengths)), kind="stable")[:n]
    return [prompts[i] for i in order]


def timed(fn: Callable[[str], Any], prompts: Sequence[str], warm: int = 3) -> dict[str, float]:
    """p50 / p90 / mean milliseconds of ``fn(prompt)`` over ``prompts``, after ``warm`` warm-up calls."""
    for prompt in prompts[:warm]:
        fn(prompt)
    times = []
    for prompt in prompts:
        started = time.perf_counter()
        fn(prompt)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p90_ms": round(float(np.percentile(times, 90)), 2),
        "mean_ms": round(statistics.fmean(times), 2),
    }


def naive_forward(encoder: Encoder) -> Callable[[str], Any]:
    """transformers' full forward in float32 with every hidden state, the chat template per prompt."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(encoder.resolved.model_dir, local_files_only=True, dtype=torch.float32)
    model.eval()
    tokenizer = encoder.tokenizer

    def run(prompt: str) -> Any:
        with torch.inference_mode():
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                return_dict=True,
            )  # fmt: skip
            out = model(**ids, output_hidden_states=True)
            return torch.stack([h.float().mean(1) for h in out.hidden_states])

    return run


def router_paths(router: Router, prompts: Sequence[str]) -> dict[str, Any]:
    """``Router.route`` end to end and its stages, on one prompt at a time."""
    features = {p: router.features([p]) for p in prompts}
    encoder = router.encoder
    return {
        "deepest_layer": max(max(b.layers) for b in router.transform.blocks),
        "blocks": len(router.transform.blocks),
        "route": timed(lambda p: router.route(p), prompts),
        "stages": {
            "tokenize": timed(lambda p: encoder.tokenize([p]), prompts),
            "encode": timed(lambda p: router.features([p]), prompts),
            "trunk_heads_temperature": timed(lambda p: router.predict_proba_features(features[p]), prompts),
            "costs_and_policy": timed(lambda p: router.costs([p]), prompts),
        },
    }


@contextlib.contextmanager
def patched(encoder: Encoder, **attrs: Any) -> Iterator[None]:
    """``encoder`` with some attributes replaced for the block."""
    before = {name: getattr(encoder, name) for name in attrs}
    for name, value in attrs.items():
        setattr(encoder, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(encoder, name, value)


def levers(router: Router, prompts: Sequence[str], compile_too: bool) -> dict[str, Any]:
    """Each encoder lever against the shipped setting, encode time only, in the same run."""
    index = 0
    layers, poolings = router.transform.layers_of(index), router.transform.poolings_of(index)
    shipped = router.encoder

    def encode(encoder: Encoder, **kw: Any) -> Callable[[str], Any]:
        return lambda p: encoder.encode([p], layers=layers, poolings=poolings, **kw)

    out: dict[str, Any] = {"shipped (bfloat16, prefix KV cache, 2 threads)": timed(encode(shipped), prompts)}
    out["no prefix KV cache"] = timed(encode(shipped, use_prefix_cache=False), prompts)
    out["deep-copied prefix cache (before)"] = deep_copy_cost(shipped, layers, prompts)
    with patched(shipped, threads=1):
        out["1 thread"] = timed(encode(shipped), prompts)
    name = shipped.resolved.name
    fp32 = Encoder(name, dtype="float32", max_tokens=shipped.view.max_tokens, view=shipped.view.name)
    out["float32"] = timed(encode(fp32), prompts)
    int8 = Encoder(name, dtype="float32", max_tokens=shipped.view.max_tokens, view=shipped.view.name)
    int8.model = torch.ao.quantization.quantize_dynamic(int8.model, {torch.nn.Linear}, dtype=torch.qint8)
    int8._blocks = int8.model.layers
    out["int8 dynamic quantisation (linear layers)"] = timed(encode(int8), prompts)
    out["int8 feature cosine vs bfloat16"] = feature_cosine(encode(int8), encode(shipped), prompts)
    if compile_too:
        from torch import _dynamo

        _dynamo.config.cache_size_limit = 64  # one graph per block would hit the default of 8
        compiled = Encoder(name, dtype="bfloat16", max_tokens=shipped.view.max_tokens, view=shipped.view.name)
        for block in compiled._blocks:
            block.mlp = torch.compile(block.mlp, dynamic=True)
            block.self_attn = torch.compile(block.self_attn, dynamic=True)
        started = time.perf_counter()
        compiled.encode(list(prompts[:8]), layers=layers, poolings=poolings)
        out["torch.compile (attention + MLP, dynamic shapes)"] = timed(encode(compiled), prompts, warm=8) | {
            "compile_s": round(time.perf_counter() - started, 1)
        }
    base = out["shipped (bfloat16, prefix KV cache, 2 threads)"]["p50_ms"]
    for value in out.values():
        if "p50_ms" in value:
            value["vs_shipped"] = round(value["p50_ms"] / base, 3)
    return out


def deep_copy_cost(encoder: Encoder, layers: Sequence[int], prompts: Sequence[str]) -> dict[str, float]:
    """What the deep copy of the prefix's cache object (the code before this benchmark) took per call."""
    from transformers import DynamicCache

    with torch.inference_mode(), encoder._truncated(max(layers)):
        kv, _ = encoder._prefix(tuple(layers))
    cache = DynamicCache(ddp_cache_data=kv, config=encoder.model.config)

    def copy_it(_: str) -> None:
        copy.deepcopy(cache).batch_repeat_interleave(1)

    return {"added_ms": timed(copy_it, prompts)["p50_ms"]}


def feature_cosine(
    a: Callable[[str], Any], b: Callable[[str], Any], prompts: Sequence[str]
) -> dict[str, float]:
    """The smallest cosine between two encoders' features of the same prompt (any layer, pooling)."""
    worst = 1.0
    for prompt in prompts[:20]:
        x, y = a(prompt).features, b(prompt).features
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        worst = min(worst, float(cos.min()))
    return {"min_cosine": round(worst, 5)}


def served(router_dir: Path, router: Router, prompts: Sequence[str]) -> dict[str, Any]:
    """Sequential chat completions through ``prefill-router serve`` (own process) to the fake upstream
    (another process): new prompts, then the same prompts again (decision-cache hits)."""
    import httpx

    with (
        upstream_process() as upstream,
        proxy_process(router_dir, upstream, list(router.targets)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):

        def ask(prompt: str) -> None:
            body = {"model": "router", "messages": [{"role": "user", "content": prompt}]}
            response = client.post("/v1/chat/completions", json=body)
            response.raise_for_status()

        ask("Warm up the HTTP path.")
        new = timed(ask, prompts, warm=0)
        hit = timed(ask, prompts, warm=0)
    return {"new_prompt": new, "cache_hit": hit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--router", type=Path, action="append", help="router folder(s); default demo/router")
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile lever (~1 min)")
    parser.add_argument("--no-serve", action="store_true", help="skip the serve rows")
    parser.add_argument("--out", type=Path, default=RESULTS / "route_latency.json")
    args = parser.parse_args()
    routers = args.router or [ROOT / "demo" / "router"]
    prompts = median_prompts(args.prompts)
    first = Router.load(routers[0])
    result: dict[str, Any] = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "prompts": {"n": len(prompts), "source": "bundled test split, closest to its median length",
                    "median_chars": int(np.median([len(p) for p in prompts])),
                    "median_tokens": int(np.median([len(x) for x in first.encoder.tokenize(prompts).ids]))},
    }  # fmt: skip
    print(f"{len(prompts)} prompts, median {result['prompts']['median_chars']} characters", flush=True)
    result["naive"] = timed(naive_forward(first.encoder), prompts)
    print(f"naive: {result['naive']}", flush=True)
    result["routers"] = {}
    for path in routers:
        router = first if path == routers[0] else Router.load(path)
        result["routers"][str(path)] = router_paths(router, prompts)
        print(f"{path}: {result['routers'][str(path)]['route']}", flush=True)
    result["levers"] = levers(first, prompts, compile_too=not args.no_compile)
    for name, value in result["levers"].items():
        print(f"  {name}: {value}", flush=True)
    if not args.no_serve:
        result["serve"] = {str(p): served(p, Router.load(p), prompts) for p in routers}
    summarise(result)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def summarise(result: dict[str, Any]) -> None:
    """Ratios against the naive forward and the proxy's overhead over ``Router.route``."""
    naive = result["naive"]["p50_ms"]
    for path, paths in result["routers"].items():
        paths["speedup_vs_naive"] = round(naive / paths["route"]["p50_ms"], 2)
        if path in result.get("serve", {}):
            serve = result["serve"][path]
            serve["proxy_overhead_p50_ms"] = round(
                serve["new_prompt"]["p50_ms"] - paths["route"]["p50_ms"], 2
            )


def table(result: dict[str, Any]) -> str:
    """The README table."""
    naive = result["naive"]
    rows = ["| path | p50 | p90 |", "|---|---|---|"]
    rows.append(
        f"| naive: full forward, float32, every hidden state | {naive['p50_ms']} ms | {naive['p90_ms']} ms |"
    )
    for path, paths in result["routers"].items():
        route = paths["route"]
        rows.append(
            f"| `Router.route` ({Path(path).name}, deepest layer {paths['deepest_layer']}) | "
            f"{route['p50_ms']} ms ({paths['speedup_vs_naive']}x naive) | {route['p90_ms']} ms |"
        )
        serve = result.get("serve", {}).get(path)
        if serve:
            new, hit = serve["new_prompt"], serve["cache_hit"]
            rows.append(
                f"| through `serve`, new prompt ({Path(path).name}) | {new['p50_ms']} ms "
                f"(+{serve['proxy_overhead_p50_ms']} ms over `Router.route`) | {new['p90_ms']} ms |"
            )
            rows.append(f"| through `serve`, decision-cache hit | {hit['p50_ms']} ms | {hit['p90_ms']} ms |")
    rows += ["", "| lever (encode only) | p50 | vs shipped |", "|---|---|---|"]
    for name, value in result["levers"].items():
        if "p50_ms" in value:
            rows.append(f"| {name} | {value['p50_ms']} ms | {value['vs_shipped']}x |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
