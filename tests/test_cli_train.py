"""`prefill-router fit`, `inspect` and `add-target` end to end on a tiny encoder and a small dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prefill_router import Router
from prefill_router.cli import run
from prefill_router.data.dataset import RoutingDataset, TargetInfo

TARGETS = ("math-model", "poem-model", "code-model")
SMALL = ["--seeds", "2", "--keep", "1", "--pca", "8"]  # the defaults train 10 nets for up to 150 epochs


pytestmark = pytest.mark.usefixtures("one_core")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The autouse test cache, named explicitly: module fixtures run before the autouse one sets it."""
    return str(tmp_path_factory.getbasetemp() / "cache")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 prompts on four topics; each target answers its topic (10% of labels flipped)."""
    rng = np.random.default_rng(0)
    n, fillers = 300, ["blue", "square", "number", "colour", "sky", "answer", "function", "python"]
    topics = [("math", "poem", "code", "trivia")[i % 4] for i in range(n)]
    prompts = [f"{t} question {i}: {' '.join(rng.choice(fillers, 3))}" for i, t in enumerate(topics)]
    right = np.array([[t == "math", t in ("poem", "trivia"), t == "code"] for t in topics], dtype=float)
    labels = np.where(rng.random(right.shape) < 0.1, 1 - right, right)
    splits = ["test" if i % 5 == 4 else "train" for i in range(n)]
    prices = [(0.5, 1.5), (0.1, 0.3), (3.0, 15.0)]
    targets = tuple(TargetInfo(name, *p, "unit-test") for name, p in zip(TARGETS, prices, strict=True))
    dataset = RoutingDataset([f"q{i}" for i in range(n)], prompts, topics, splits, labels, targets)
    return dataset.save(tmp_path_factory.mktemp("data") / "topics.parquet")


def fit_args(data: Path, encoder: Path, output: Path, cache: str) -> list[str]:
    return ["fit", str(data), "--encoder", str(encoder), "-o", str(output), "--cache", cache, *SMALL]


@pytest.fixture(scope="module")
def router_ab(data: Path, tiny_llama_dir: Path, cache: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A router fitted on two of the three targets, at layer 1."""
    output = tmp_path_factory.mktemp("routers") / "ab"
    targets = ",".join(TARGETS[:2])
    assert run([*fit_args(data, tiny_llama_dir, output, cache), "--layers", "1", "--targets", targets]) == 0
    return output


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long paths at the console width


# ------------------------------------------------------------------------- fit
def test_fit_writes_a_router_and_a_json_report(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, report = tmp_path / "router", tmp_path / "report.json"
    args = [*fit_args(data, tiny_llama_dir, output, cache), "--layers", "1", "--json", str(report)]
    assert run(args) == 0
    out = one_line(capsys.readouterr().out)
    assert "mean validation AUC" in out and "240 training rows of" in out
    assert f"router {output} (3 targets, blocks mean:L1, last:L1, 1 nets)" in out
    blob = json.loads(report.read_text())
    assert set(blob["val_auc"]) == set(TARGETS)
    assert all(blob["val_auc"][t] > 0.7 for t in TARGETS), blob["val_auc"]  # each target follows a topic word
    assert blob["layer_choice"] == {t: [1] for t in TARGETS}
    assert blob["n_fit"] + blob["n_val"] + blob["n_calibration"] == 240 and blob["router"] == str(output)
    assert blob["n_calibration"] == 24  # 10% of the prompts held out for quality floors
    assert "183 fit + 33 validation + 24 calibration" in out
    assert {"seconds_total", "seconds_fit", "ece_before", "ece_after", "temperatures"} <= set(blob)
    router = Router.load(output)
    assert router.targets == TARGETS and router.ensemble.n_members == 1
    assert router.encoder_identity.name == str(tiny_llama_dir) and router.encoder_identity.dtype == "bfloat16"
    settings = {k: v for k, v in router.info["settings"].items() if k != "net"}
    assert settings == {
        "layers": [1], "n_layers": 1, "pooling": "both", "pca_k": 8, "seeds": 2, "keep": 1, "seed": 0,
        "val_share": 0.15, "init": "random", "aux_tasks": True, "depth_tolerance": 0.01,
        "calibration_share": 0.1,
    }  # fmt: skip
    assert router.calibration is not None and len(router.calibration) == 24 and router.calibration.independent
    assert [t.output_usd_per_mtok for t in router.target_info] == [1.5, 0.3, 15.0]


def test_fit_n_layers_val_share_and_seed_take_effect(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fit(name: str, *options: str) -> tuple[Router, dict[str, Any]]:
        output, report = tmp_path / name, tmp_path / f"{name}.json"
        assert run([*fit_args(data, tiny_llama_dir, output, cache), *options, "--json", str(report)]) == 0
        return Router.load(output), json.loads(report.read_text())

    two, blob = fit(
        "two", "--layers", "fisher", "--n-layers", "2", "--val-share", "0.3", "--calibration-share", "0"
    )
    assert all(len(block.layers) == 2 for block in two.transform.blocks)  # the top 2 layers by J_lda
    assert all(
        len(blocks) == 2 and all(b.count("+") == 1 for b in blocks) for blocks in blob["blocks"].values()
    )
    assert (blob["n_fit"], blob["n_val"]) == (168, 72)  # 30% of 240 distinct prompts held out
    assert two.info["settings"]["val_share"] == 0.3 and two.info["settings"]["n_layers"] == 2
    seed3, _ = fit("seed3", "--layers", "1", "--seed", "3")
    again, _ = fit("seed3-again", "--layers", "1", "--seed", "3")
    seed0, _ = fit("seed0", "--layers", "1")
    assert seed3.info["settings"]["seed"] == 3
    assert np.array_equal(seed3.ensemble.w1, again.ensemble.w1)  # deterministic for a seed
    assert not np.array_equal(seed3.ensemble.w1, seed0.ensemble.w1)  # another seed, another router
    capsys.readouterr()


def test_fit_with_fisher_limit_and_targets(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, report = tmp_path / "router", tmp_path / "report.json"
    args = [*fit_args(data, tiny_llama_dir, output, cache), "--layers", "fisher", "--limit", "100"]
    assert run([*args, "--targets", "code-model,math-model", "--json", str(report)]) == 0
    blob = json.loads(report.read_text())
    assert set(blob["val_auc"]) == {"code-model", "math-model"}
    assert blob["n_fit"] + blob["n_val"] + blob["n_calibration"] == 100
    # the default pooling "both": each target reads its best mean-pooled and its best last-token layer
    assert all(
        1 <= len(layers) <= 2 and 0 <= min(layers) <= max(layers) <= 4
        for layers in blob["layer_choice"].values()
    )
    assert all([b.split(":")[0] for b in blocks] == ["mean", "last"] for blocks in blob["blocks"].values())
    assert Router.load(output).targets == ("code-model", "math-model")


def test_fit_explicit_layers_list(data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path) -> None:
    output = tmp_path / "router"
    assert run([*fit_args(data, tiny_llama_dir, output, cache), "--layers", "3,1", "--limit", "80"]) == 0
    router = Router.load(output)
    assert [b.name for b in router.transform.blocks] == ["mean:L1+L3", "last:L1+L3"]


def test_fit_unknown_split_is_one_line(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*fit_args(data, tiny_llama_dir, tmp_path / "r", cache), "--split", "dev"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.endswith("no split 'dev'; the splits are test, train")
    assert "\n" not in err and not (tmp_path / "r").exists()


def test_fit_bad_layers_exit_3(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*fit_args(data, tiny_llama_dir, tmp_path / "r", cache), "--layers", "bogus"]) == 3
    assert (
        "--layers must be one of fisher, auc, all-mean or a comma-separated list of layers; got 'bogus'"
        in one_line(capsys.readouterr().err)
    )


def test_fit_layer_out_of_the_features_exit_3(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*fit_args(data, tiny_llama_dir, tmp_path / "r", cache), "--layers", "9"]) == 3
    # found once the encoder is loaded, before its features are extracted
    assert one_line(capsys.readouterr().err) == "error: layer 9 is out of range: this encoder has layers 0..4"


def test_fit_keep_more_than_seeds_exit_3(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", str(data), "--encoder", str(tiny_llama_dir), "-o", str(tmp_path / "r"), "--cache", cache]
    assert run([*args, "--seeds", "2", "--keep", "3"]) == 3
    assert "'keep' must be between 1 and 'seeds' (2); got 3 instead." in one_line(capsys.readouterr().err)


def test_fit_unknown_pooling_exit_3(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*fit_args(data, tiny_llama_dir, tmp_path / "r", cache), "--pooling", "max"]) == 3
    assert "The 'pooling' parameter must be one of mean, last, auto, both; got 'max' instead." in one_line(
        capsys.readouterr().err
    )


def test_fit_unknown_target_exit_2(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*fit_args(data, tiny_llama_dir, tmp_path / "r", cache), "--targets", "math-modle"]) == 2
    assert "unknown target 'math-modle'. Did you mean 'math-model'?" in one_line(capsys.readouterr().err)


def test_fit_refuses_to_overwrite_a_folder_that_is_not_a_router(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    args = [*fit_args(data, tiny_llama_dir, tmp_path / "notes", cache), "--layers", "1", "--limit", "60"]
    assert run(args) == 2
    assert "exists and is not a router artifact; choose another path" in one_line(capsys.readouterr().err)
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]


# --------------------------------------------------------------------- inspect
def test_inspect_shows_encoder_targets_and_the_encoder_check(
    router_ab: Path, tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["inspect", str(router_ab)]) == 0
    out = one_line(capsys.readouterr().out)
    assert f"encoder: {tiny_llama_dir} (sha256" in out
    assert "installed encoders match" in out
    assert all(target in out for target in TARGETS[:2]) and TARGETS[2] not in out
    assert "calibration rows: 24 from fit, held out of training, labelled" in out
    assert "default floor: certified μ=" in out or "default floor: no μ certified" in out
    assert "format version 3" in out and "blocks: mean:L1 (32 -> 8), last:L1 (32 -> 8)" in out
    assert "max_tokens 256), runs layers 1" in out
    assert "net: 16 -> 256 -> 128 -> 2 (SharedTrunkNet), ensemble of 1" in out


def test_inspect_reports_an_encoder_mismatch_without_failing(
    router_ab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefill_router.train import read_artifact, write_artifact

    meta, arrays = read_artifact(router_ab)
    meta["encoders"][0]["weights_sha256"] = "f" * 64
    write_artifact(tmp_path / "other", meta, arrays)
    assert run(["inspect", str(tmp_path / "other")]) == 0
    out = one_line(capsys.readouterr().out)
    assert "installed encoders match" not in out and "install the encoder it was trained on or refit" in out


def test_inspect_json_is_the_router_document(router_ab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["inspect", str(router_ab), "--json"]) == 0
    blob = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in blob["targets"]] == list(TARGETS[:2])
    assert blob["net"]["members"] == 1 and blob["settings"]["seeds"] == 2
    assert json.loads((router_ab / "router.json").read_text()) == blob


def test_inspect_json_has_the_format_version(router_ab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["inspect", str(router_ab), "--json"]) == 0
    blob = json.loads(capsys.readouterr().out)
    assert (blob["format"], blob["format_version"]) == ("prefill-router", 3)


def test_inspect_a_folder_that_is_not_a_router_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert run(["inspect", str(tmp_path / "empty")]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("error: ") and err.endswith("missing router.json; is this a router artifact?")
    assert run(["inspect", str(tmp_path / "missing")]) == 2
    assert "no router artifact here" in one_line(capsys.readouterr().err)


# ------------------------------------------------------------------ add-target
def test_add_target_writes_a_router_with_one_more_target(
    router_ab: Path, data: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "abc"
    assert run(["add-target", str(router_ab), str(data), "--target", "code-model", "-o", str(new)]) == 0
    out = one_line(capsys.readouterr().out)
    assert f"router {new} (3 targets)" in out and "new head for code-model" in out
    router, old = Router.load(new), Router.load(router_ab)
    assert router.targets == TARGETS and old.targets == TARGETS[:2]
    assert np.array_equal(router.ensemble.w1, old.ensemble.w1)  # the trunk is frozen
    assert run(["inspect", str(new)]) == 0
    assert "added without retraining: code-model (validation AUC" in one_line(capsys.readouterr().out)


def test_add_target_without_output_replaces_the_router(router_ab: Path, data: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(router_ab, tmp_path / "router")
    assert run(["add-target", str(copy), str(data), "--target", "code-model", "--limit", "120"]) == 0
    assert Router.load(copy).targets == TARGETS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["router"]  # replaced in place, nothing left over


def test_add_target_errors(
    router_ab: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["add-target", str(router_ab), str(data), "-o", str(tmp_path / "new")]
    assert run([*base, "--target", "math-model"]) == 3
    assert "target 'math-model' is already in the router" in one_line(capsys.readouterr().err)
    assert run([*base, "--target", "code-modle"]) == 2
    assert "unknown target 'code-modle'. Did you mean 'code-model'?" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------- a fused (two-encoder) router
@pytest.fixture(scope="module")
def fused(
    data: Path,
    tiny_llama_dir: Path,
    tiny_bert_dir: Path,
    cache: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A router reading the tiny llama (auto pooling) and the tiny bert, fitted by the CLI."""
    output = tmp_path_factory.mktemp("routers") / "fused"
    args = [*fit_args(data, tiny_llama_dir, output, cache), "--encoder", str(tiny_bert_dir)]
    assert run([*args, "--pooling", "auto", "--targets", ",".join(TARGETS[:2])]) == 0
    return output


def test_fit_with_two_encoders_reads_a_block_of_each(
    fused: Path, tiny_llama_dir: Path, tiny_bert_dir: Path
) -> None:
    router = Router.load(fused)
    assert [e.name for e in router.encoders] == [str(tiny_llama_dir), str(tiny_bert_dir)]
    for blocks in router.transform.target_blocks.values():
        assert sorted({router.transform.blocks[i].encoder for i in blocks}) == [0, 1]
    # each encoder runs only to the deepest layer its blocks read
    for index, encoder in enumerate(router.loaded_encoders()):
        assert max(router.transform.layers_of(index)) <= encoder.n_layers
    meta = json.loads((fused / "router.json").read_text())
    assert meta["format_version"] == 3 and len(meta["encoders"]) == 2


def test_inspect_a_fused_router_lists_every_encoder(
    fused: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["inspect", str(fused)]) == 0
    out = one_line(capsys.readouterr().out)
    assert (
        "encoder e0:" in out and f"encoder e1: {tiny_bert_dir}" in out and "installed encoders match" in out
    )
    assert "e1:" in out.split("blocks:")[-1]


def test_route_and_add_target_work_on_a_fused_router(
    fused: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["route", str(fused), "math question 7: blue sky", "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["target"] in TARGETS[:2]
    router = Router.load(fused)
    p = router.predict_proba(["math question 7: blue sky"])[0]
    assert decision["probabilities"] == pytest.approx(dict(zip(router.targets, p, strict=True)))
    out = tmp_path / "three"
    assert (
        run(["add-target", str(fused), str(data), "--target", TARGETS[2], "-o", str(out), "--seed", "1"]) == 0
    )
    three = Router.load(out)
    assert three.targets == (*TARGETS[:2], TARGETS[2]) and len(three.encoders) == 2
    assert np.array_equal(
        three.predict_proba(["code question 1"])[:, :2], router.predict_proba(["code question 1"])
    )


# ------------------------------------------------------------------------ fit --init
def test_fit_init_from_a_trunk_folder(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefill_router.encode import Encoder, FeatureStore, extract_features
    from prefill_router.train import EncoderIdentity, LayerFeatures, NetSettings, TrainSettings
    from prefill_router.train.pretrained import pretrain_trunk

    dataset = RoutingDataset.load(data)
    encoder = Encoder(str(tiny_llama_dir), cache_dir=cache)
    stored = extract_features(encoder, dataset.prompts.tolist(), FeatureStore(cache))
    features = LayerFeatures(stored.features, stored.key.poolings, stored.key.layers)
    settings = TrainSettings(pca_k=8, seeds=2, keep=1, net=NetSettings(max_epochs=20))
    trunk = pretrain_trunk(
        [("topics", dataset.select(targets=list(TARGETS[:2])), [features])],
        [EncoderIdentity.of(encoder)], [(0, "mean", (1,)), (0, "last", (2,))], settings,
    )  # fmt: skip
    trunk_path = trunk.save(tmp_path / "trunk")
    output = tmp_path / "router"
    args = ["fit", str(data), "-o", str(output), "--cache", cache, "--init", str(trunk_path), *SMALL]
    assert run(args) == 0
    router = Router.load(output)
    assert [b.name for b in router.transform.blocks] == ["mean:L1", "last:L2"]  # the trunk's, not probed
    assert router.info["settings"]["init"] == str(trunk_path) and router.targets == TARGETS
    capsys.readouterr()
    wrong = [*args[: -len(SMALL)], "--encoder", "smollm2-135m", *SMALL]
    assert run(wrong) == 3
    assert "reads the encoders it was trained on" in one_line(capsys.readouterr().err)


# ------------------------------------------------------------ RouterBench without prices
def test_a_routerbench_file_fits_and_evaluates_with_no_price_file(
    data: Path, tiny_llama_dir: Path, cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RouterBench's layout (a cost observed per prompt and model, no list price for any model): the
    import fits the prices, so fit and evaluate run end to end with no price file (issue 16)."""
    import pandas as pd

    from prefill_router.data.tokens import estimate_tokens

    topics = RoutingDataset.load(data)
    models = {"acme/mathy-7b": (0.4, 1.2), "acme/poet-3b": (0.05, 0.25), "acme/coder-70b": (2.5, 9.0)}
    rng = np.random.default_rng(1)
    table: dict[str, object] = {"sample_id": topics.prompt_ids, "eval_name": topics.tasks}
    table["prompt"] = [f"[{p!r}]" for p in topics.prompts]  # as upstream stores them: a list of turns
    for j, (model, (price_in, price_out)) in enumerate(models.items()):
        replies = ["x" * int(n) for n in rng.integers(4, 400, topics.n_prompts)]
        table[model] = topics.labels[:, j]
        table[f"{model}|model_response"] = [f"[{r!r}]" for r in replies]
        table[f"{model}|total_cost"] = [
            (estimate_tokens(p) * price_in + estimate_tokens(r) * price_out) / 1e6
            for p, r in zip(topics.prompts, replies, strict=True)
        ]
    source, imported = tmp_path / "routerbench.csv", tmp_path / "rb.parquet"
    pd.DataFrame(table).to_csv(source, index=False)
    assert run(["data", "import", "routerbench", str(source), "-o", str(imported)]) == 0
    for target in RoutingDataset.load(imported).targets:
        price_in, price_out = models[target.name]
        assert (target.input_usd_per_mtok, target.output_usd_per_mtok) == (
            pytest.approx(price_in),
            pytest.approx(price_out),
        )
    router = tmp_path / "router"
    assert run([*fit_args(imported, tiny_llama_dir, router, cache), "--layers", "1"]) == 0
    report = tmp_path / "eval.json"
    evaluate = ["evaluate", str(router), str(imported), "--baselines", "none", "--bootstrap", "50"]
    assert run([*evaluate, "--cache", cache, "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["prefill"]["auc_mean"] > 0.5 and len(result["budgets"]) == 3
    capsys.readouterr()


def test_fit_options_default_to_train_settings_and_the_encoder() -> None:
    """`fit` restates no default: each option's default is TrainSettings' field (or the encoder's)."""
    import inspect

    from prefill_router.cli._train import fit
    from prefill_router.encode.encoder import DEFAULT_DTYPE
    from prefill_router.train import TrainSettings

    defaults = TrainSettings()
    options = {name: p.default for name, p in inspect.signature(fit).parameters.items()}
    fields = {
        "n_layers": "n_layers", "pooling": "pooling", "pca": "pca_k", "depth_tolerance": "depth_tolerance",
        "seeds": "seeds", "keep": "keep", "seed": "seed", "val_share": "val_share",
        "calibration_share": "calibration_share", "init": "init",
    }  # fmt: skip
    assert {o: options[o] for o in fields} == {o: getattr(defaults, f) for o, f in fields.items()}
    assert options["layers"] == str(defaults.layers) and options["dtype"] == DEFAULT_DTYPE
