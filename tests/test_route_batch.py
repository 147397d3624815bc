"""Offline batch routing without Ray: prompt files, route_prompts, the decisions file, `route-batch`,
the Ray plumbing that needs no cluster (sizing, the bare `--ray`, the missing extra)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from prefill_router import Router
from prefill_router._ray import WorkerPlan, plan_workers, require_ray
from prefill_router.cli import run
from prefill_router.cli._app import with_optional_values
from prefill_router.data.prompt_files import count_rows, iter_prompt_file, read_prompt_file
from prefill_router.errors import ConfigError, DataError, MissingDependencyError, UnknownTargetError
from prefill_router.policy import Budget, RoutePlan
from prefill_router.route_batch import (
    DecisionWriter,
    decision_schema,
    route_prompts,
    route_prompts_ray,
)
from tests.serve_support import build_tiny_router, load_tiny_router
from tests.test_route import topics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "cache"


@pytest.fixture(scope="module")
def router_path(tiny_llama_dir: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_router(tiny_llama_dir, cache, tmp_path_factory.mktemp("router"))


@pytest.fixture(scope="module")
def router(router_path: Path, tiny_llama_dir: Path, cache: Path) -> Router:
    loaded: Router = load_tiny_router(router_path, tiny_llama_dir, cache)
    return loaded


def texts(n: int = 20) -> list[str]:
    return topics(40).prompts.tolist()[-n:]


# ================================================================================ prompt files
@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv"])
def test_prompt_files_read_alike_in_every_format(tmp_path: Path, kind: str) -> None:
    frame = pd.DataFrame(
        {"id": ["007", "b", "c"], "prompt": ["hello", "42", "naïve café ☕"], "extra": [1, 2, 3]}
    )
    path = tmp_path / f"p.{kind}"
    {"parquet": lambda: frame.to_parquet(path),
     "jsonl": lambda: frame.to_json(path, orient="records", lines=True, force_ascii=False),
     "csv": lambda: frame.to_csv(path, index=False)}[kind]()  # fmt: skip
    read = read_prompt_file(path)
    assert read.ids == ["007", "b", "c"]  # CSV keeps 007 as written
    assert read.prompts == ["hello", "42", "naïve café ☕"]


def test_prompt_ids_default_to_prompt_id_then_id_then_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pd.DataFrame({"prompt_id": ["x", "y"], "id": ["1", "2"], "prompt": ["a", "b"]}).to_parquet(path)
    assert read_prompt_file(path).ids == ["x", "y"]
    assert read_prompt_file(path, id_column="id").ids == ["1", "2"]
    pd.DataFrame({"text": ["a", None]}).to_parquet(path)
    read = read_prompt_file(path, prompt_column="text")
    assert read.ids == ["0", "1"] and read.prompts == ["a", None]


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv"])
def test_prompt_files_stream_in_batches_with_ids_running_on(tmp_path: Path, kind: str) -> None:
    frame = pd.DataFrame({"prompt": [f"prompt {i}" for i in range(23)]})
    path = tmp_path / f"p.{kind}"
    {"parquet": lambda: frame.to_parquet(path, row_group_size=10),
     "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     "csv": lambda: frame.to_csv(path, index=False)}[kind]()  # fmt: skip
    batches = list(iter_prompt_file(path, batch_size=4))
    assert max(len(b.ids) for b in batches) <= 4 and sum(len(b.ids) for b in batches) == 23
    assert [i for b in batches for i in b.ids] == [str(i) for i in range(23)]
    assert [p for b in batches for p in b.prompts] == frame["prompt"].tolist()
    assert count_rows(path) == (None if kind == "csv" else 23)


def test_a_folder_of_shards_reads_in_name_order_with_ids_running_on(tmp_path: Path) -> None:
    for name, rows in (("part-1.parquet", ["c", "d", "e"]), ("part-0.parquet", ["a", "b"])):
        pd.DataFrame({"prompt": rows}).to_parquet(tmp_path / name)
    (tmp_path / "_SUCCESS").write_text("")  # what Spark-like writers leave beside their shards
    read = read_prompt_file(tmp_path)
    assert read.prompts == list("abcde") and read.ids == ["0", "1", "2", "3", "4"]
    assert count_rows(tmp_path) == 5


def test_a_folder_without_prompt_files_or_with_mixed_formats_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"the folder holds no prompt files"):
        read_prompt_file(tmp_path)
    pd.DataFrame({"prompt": ["a"]}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"prompt": ["b"]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError, match=r"the folder mixes prompt file formats \(csv, parquet\); keep one"):
        read_prompt_file(tmp_path)


def test_a_duplicate_id_is_found_across_batches(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pd.DataFrame({"id": ["a", "b", "c", "a"], "prompt": list("wxyz")}).to_parquet(path)
    with pytest.raises(DataError, match=r"prompt id 'a' appears twice \(again at row 3\)"):
        list(iter_prompt_file(path, batch_size=2))


@pytest.mark.parametrize(
    ("name", "content", "options", "message"),
    [
        ("p.txt", "hi", {}, r"unknown prompt file type '\.txt'; use one of \.parquet"),
        ("missing.jsonl", None, {}, r"no such file or folder"),
        ("p.jsonl", '{"prompt": "a"}\n{"prompt": ', {}, r"cannot read this jsonl file"),
        (
            "p.jsonl",
            '{"text": "a"}\n',
            {},
            r"no column 'prompt'; the file's columns are 'text' \(choose others",
        ),
        ("p.jsonl", '{"prompt": "a"}\n', {"id_column": "key"}, r"no column 'key'"),
        (
            "p.jsonl",
            '{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n',
            {},
            r"prompt id '1' appears twice",
        ),
        ("p.csv", "prompt\n", {}, r"no prompts to route: the input holds no rows"),
    ],
)
def test_bad_prompt_files_are_refused_with_the_reason(
    tmp_path: Path, name: str, content: str | None, options: dict[str, Any], message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        read_prompt_file(path, **options)
    assert str(path) in str(err.value)


# ================================================================================ routing
def test_batch_decisions_equal_per_prompt_decisions(router: Router) -> None:
    prompts = texts()
    for choice in [RoutePlan(), RoutePlan("budget", 3e3), RoutePlan("tolerance", 0.1),
                   RoutePlan("lambda", 0.5), RoutePlan(allowed=("poem-model", "code-model")),
                   RoutePlan(max_cost=1e-6)]:  # fmt: skip
        table = route_prompts(router, [f"q{i}" for i in range(len(prompts))], prompts, choice).to_pylist()
        for row, prompt in zip(table, prompts, strict=True):
            one = router.route(
                prompt,
                policy=choice.policy,
                knob=choice.knob,
                allowed=choice.allowed,
                max_cost=choice.max_cost,
            )
            assert row["target"] == one.target, choice
            assert row["cost_usd"] == pytest.approx(one.costs_usd[one.target], rel=1e-12)
            got = [row[f"p_{name}"] for name in router.targets]
            np.testing.assert_allclose(got, [one.probabilities[n] for n in router.targets], atol=1e-6)
            assert row["error"] is None


def test_unroutable_prompts_get_an_error_and_the_rest_are_routed(router: Router) -> None:
    prompts: list[str | None] = [texts(1)[0], "", None, "  \n", texts(2)[0]]
    rows = route_prompts(router, list("abcde"), prompts, RoutePlan()).to_pylist()
    assert [r["error"] for r in rows] == [None, "empty prompt", "missing prompt (null)", "empty prompt", None]
    assert [r["target"] is None for r in rows] == [False, True, True, True, False]
    assert all(r[f"p_{router.targets[0]}"] is None for r in rows[1:4])


def test_a_batch_policy_is_checked_against_the_router(router: Router) -> None:
    with pytest.raises(UnknownTargetError, match="poem-modle"):
        RoutePlan(allowed=("poem-modle",)).check(router.targets)
    with pytest.raises(ConfigError, match=r"must be a number in \[0, 1\] for the lambda policy"):
        RoutePlan("lambda", 2.0).check(router.targets)
    with pytest.raises(ConfigError, match=r"The 'max_cost' option must be a USD amount >= 0; got -1"):
        RoutePlan(max_cost=-1).check(router.targets)


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv"])
def test_the_decision_writer_streams_batches_into_one_file(router: Router, tmp_path: Path, kind: str) -> None:
    out = tmp_path / f"d.{kind}"
    prompts = texts(6)
    with DecisionWriter(out, router.targets, {"policy": "budget"}) as writer:
        for start in (0, 3):
            ids = [f"q{i}" for i in range(start, start + 3)]
            writer.write(route_prompts(router, ids, prompts[start : start + 3], RoutePlan()))
    assert writer.rows == 6 and sum(writer.counts.values()) == 6
    frame = {"parquet": pd.read_parquet, "csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True)}[
        kind
    ](out)
    assert frame.columns.tolist() == decision_schema(router.targets).names
    assert frame["prompt_id"].tolist() == [f"q{i}" for i in range(6)]
    if kind == "parquet":
        meta = pq.read_schema(out).metadata[b"prefill_router"]
        assert json.loads(meta) == {"policy": "budget"}


def test_a_failed_run_leaves_no_partial_decisions_file(router: Router, tmp_path: Path) -> None:
    out = tmp_path / "d.parquet"

    def killed_half_way() -> None:
        with DecisionWriter(out, router.targets, {}) as writer:
            writer.write(route_prompts(router, ["a"], texts(1), RoutePlan()))
            raise RuntimeError("killed half way")

    with pytest.raises(RuntimeError, match="killed half way"):
        killed_half_way()
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ================================================================================ the command
def write_prompts(tmp_path: Path, prompts: list[str]) -> Path:
    path = tmp_path / "prompts.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i, prompt in enumerate(prompts):
            handle.write(json.dumps({"id": f"q{i}", "prompt": prompt}) + "\n")
    return path


def test_route_batch_writes_one_decision_per_prompt(
    router: Router, router_path: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = [*texts(9), ""]
    out = tmp_path / "decisions.parquet"
    args = ["route-batch", str(router_path), str(write_prompts(tmp_path, prompts)), "-o", str(out)]
    assert run([*args, "--budget", "$0.0001", "--batch-size", "4", "--cache", str(cache)]) == 0
    decisions = pd.read_parquet(out)
    assert decisions["prompt_id"].tolist() == [f"q{i}" for i in range(10)]
    mu = router.solve_budget(Budget(usd_per_request=1e-4)).mu
    assert decisions["target"].tolist()[:9] == [router.route(p, knob=mu).target for p in prompts[:9]]
    assert decisions["error"].tolist()[-1] == "empty prompt"
    meta = json.loads(pq.read_schema(out).metadata[b"prefill_router"])
    assert meta["policy"] == "budget" and meta["knob"] == pytest.approx(mu) and meta["budget"] == "$0.0001"
    captured = capsys.readouterr()
    assert "10 prompts routed" in captured.out and "1 prompt could not be routed" in " ".join(
        captured.err.split()
    )


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--allow", "poem-modle"], 2, "poem-modle"),
        (["--lambda", "0.5", "--tolerance", "0.1"], 3, "choose one policy; got --lambda and --tolerance"),
        (["--budget", "cheap"], 3, "--budget must be"),
    ],
)
def test_route_batch_refuses_bad_options_before_writing(
    router_path: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    extra: list[str], code: int, message: str,
) -> None:  # fmt: skip
    out = tmp_path / "d.parquet"
    args = ["route-batch", str(router_path), str(write_prompts(tmp_path, texts(2))), "-o", str(out)]
    assert run([*args, *extra, "--cache", str(cache)]) == code
    assert message in " ".join(capsys.readouterr().err.split())
    assert not out.exists()


def test_route_batch_reads_the_named_prompt_and_id_columns(
    router_path: Path, router: Router, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = texts(4)
    src = tmp_path / "prompts.csv"
    rows = [
        {"prompt": "a decoy", "text": text, "uid": f"u-{i}", "id": f"x{i}"} for i, text in enumerate(prompts)
    ]
    pd.DataFrame(rows).to_csv(src, index=False)
    out = tmp_path / "d.jsonl"
    args = ["route-batch", str(router_path), str(src), "-o", str(out), "--lambda", "1", "--cache", str(cache)]
    assert run([*args, "--prompt-column", "text", "--id-column", "uid"]) == 0
    decisions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["prompt_id"] for d in decisions] == ["u-0", "u-1", "u-2", "u-3"]  # not 'id', not rows
    assert [d["target"] for d in decisions] == [
        router.route(t, policy="lambda", knob=1).target for t in prompts
    ]
    scored = np.array([[d[f"p_{t}"] for t in router.targets] for d in decisions])
    np.testing.assert_allclose(scored, router.predict_proba(prompts), atol=1e-6)  # the texts, not the decoy
    assert not np.allclose(scored, router.predict_proba(["a decoy"] * 4), atol=1e-3)
    capsys.readouterr()


def test_route_batch_refuses_an_unknown_output_type(router_path: Path, tmp_path: Path) -> None:
    args = [
        "route-batch",
        str(router_path),
        str(write_prompts(tmp_path, texts(2))),
        "-o",
        str(tmp_path / "d.xlsx"),
    ]
    assert run(args) == DataError.exit_code


# ================================================================================ Ray plumbing
def test_ray_without_the_extra_names_the_install_command(
    router_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like to import
    with pytest.raises(MissingDependencyError, match=r"install it with: pip install 'prefill-router\[ray\]'"):
        require_ray()
    prompts = str(write_prompts(tmp_path, texts(2)))
    out = tmp_path / "d.parquet"
    assert run(["route-batch", str(router_path), prompts, "-o", str(out), "--ray"]) == 4
    assert run(["encode", "bundled", "--ray", "auto"]) == 4
    assert "pip install 'prefill-router[ray]'" in capsys.readouterr().err
    assert not out.exists()


def test_batch_routing_on_ray_refuses_a_folder_that_is_no_artifact(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path, texts(2))
    plan = WorkerPlan(1, 1.0, 0.0, "cpu")
    with pytest.raises(DataError, match=r"not a router artifact: No such file or directory: .*router\.json"):
        route_prompts_ray(None, tmp_path / "nothing", prompts, RoutePlan(), plan)  # fails before Ray is used


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["encode", "data", "--ray"], ["encode", "data", "--ray=local"]),
        (["route-batch", "r", "p", "--ray", "-o", "x"], ["route-batch", "r", "p", "--ray=local", "-o", "x"]),
        (["encode", "data", "--ray", "auto"], ["encode", "data", "--ray", "auto"]),
        (["encode", "data", "--ray=ray://head:10001"], ["encode", "data", "--ray=ray://head:10001"]),
        (["route", "r", "--ray-less"], ["route", "r", "--ray-less"]),
    ],
)
def test_a_bare_ray_option_means_a_local_instance(argv: list[str], expected: list[str]) -> None:
    assert with_optional_values(argv) == expected


class Cluster:
    """What plan_workers reads of a Ray cluster: its resources (no GPU cluster can run here)."""

    def __init__(self, **resources: float) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


@pytest.mark.parametrize(
    ("resources", "options", "plan"),
    [
        ({"CPU": 2}, {}, WorkerPlan(2, 1.0, 0.0, "cpu")),
        ({"CPU": 16}, {"worker_cpus": 4}, WorkerPlan(4, 4.0, 0.0, "cpu")),
        ({"CPU": 16}, {"worker_cpus": 3}, WorkerPlan(5, 3.0, 0.0, "cpu")),
        ({"CPU": 2}, {"workers": 1, "worker_cpus": 2}, WorkerPlan(1, 2.0, 0.0, "cpu")),
        ({"CPU": 32, "GPU": 4}, {}, WorkerPlan(4, 1.0, 1.0, "cuda")),
        ({"CPU": 32, "GPU": 4}, {"device": "cpu"}, WorkerPlan(32, 1.0, 0.0, "cpu")),
    ],
)
def test_workers_are_sized_to_the_cluster(
    resources: dict[str, float], options: dict[str, Any], plan: WorkerPlan
) -> None:
    assert plan_workers(Cluster(**resources), **options) == plan


def test_bad_worker_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="The 'workers' option must be at least 1; got 0"):
        plan_workers(Cluster(CPU=2), workers=0)
    with pytest.raises(ConfigError, match="--device cuda, but the Ray cluster has no GPUs"):
        plan_workers(Cluster(CPU=2), device="cuda")
    assert WorkerPlan(2, 1.0, 0.0, "cpu").describe() == "2 workers x 1 CPU thread"
    assert WorkerPlan(1, 1.0, 1.0, "cuda").describe() == "1 worker x 1 GPU"
