"""The `prefill-router` command line: data import / info / prices, errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefill_router import DataError, RoutingDataset, TargetInfo
from prefill_router.cli import run


@pytest.mark.parametrize(
    ("kind", "source"),
    [
        ("llmrouter", "llmrouter"),
        ("mmlu-pro", "mmlu_pro"),
        ("routellm", "routellm"),
        ("routerbench", "routerbench/sample.csv"),
        ("long-csv", "long_csv/sample.csv"),
    ],
)
def test_data_import_writes_a_loadable_dataset(
    kind: str, source: str, fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.parquet"
    assert run(["data", "import", kind, str(fixtures / source), "-o", str(out)]) == 0
    ds = RoutingDataset.load(out)
    assert ds.n_prompts > 0 and ds.provenance["source"] == kind
    assert f"wrote {out}" in capsys.readouterr().out.replace("\n", "")


def test_data_import_applies_a_price_file(fixtures: Path, tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("gpt-4-1106-preview: {input: 1.5, output: 2.5}\n")
    out = tmp_path / "out.parquet"
    assert (
        run(
            [
                "data",
                "import",
                "routellm",
                str(fixtures / "routellm"),
                "-o",
                str(out),
                "--prices",
                str(prices),
            ]
        )
        == 0
    )
    target = RoutingDataset.load(out).target("gpt-4-1106-preview")
    assert (target.input_usd_per_mtok, target.output_usd_per_mtok) == (1.5, 2.5)


def test_routerbench_prices_are_fitted_shown_and_a_price_file_still_wins(
    fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rb.parquet"
    assert (
        run(["data", "import", "routerbench", str(fixtures / "routerbench" / "sample.csv"), "-o", str(out)])
        == 0
    )
    assert "prices fitted from the observed costs for 3 target(s)" in capsys.readouterr().out.replace(
        "\n", ""
    )
    assert run(["data", "prices", str(out), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"gpt-4-1106-preview", "claude-instant-v1", "meta/llama-2-70b-chat",
                         "mistralai/mixtral-8x7b-chat"}  # fmt: skip
    assert rows["gpt-4-1106-preview"]["source"] == "litellm 1.110.2 key gpt-4-1106-preview"
    assert rows["claude-instant-v1"]["source"].startswith("fitted from 12 observed costs (residual ")
    assert run(["data", "prices", str(out)]) == 0
    assert "fitted from 11 observed costs" in capsys.readouterr().out  # the table, too
    mine = tmp_path / "prices.yaml"
    mine.write_text("claude-instant-v1: {input: 0.8, output: 2.4}\n")
    priced = tmp_path / "priced.parquet"
    args = ["data", "import", "routerbench", str(fixtures / "routerbench" / "sample.csv"), "-o", str(priced)]
    assert run([*args, "--prices", str(mine)]) == 0
    claude = RoutingDataset.load(priced).target("claude-instant-v1")
    assert (claude.input_usd_per_mtok, claude.output_usd_per_mtok) == (0.8, 2.4)
    assert claude.price_source == f"price file {mine}"
    assert RoutingDataset.load(priced).target("meta/llama-2-70b-chat").price_source.startswith("fitted")  # type: ignore[union-attr]


def test_data_import_split_seed_and_keep_contaminated(fixtures: Path, tmp_path: Path) -> None:
    def imported(kind: str, source: str, *options: str) -> RoutingDataset:
        out = tmp_path / f"{kind}{'-'.join(options)}.parquet"
        assert run(["data", "import", kind, str(fixtures / source), "-o", str(out), *options]) == 0
        return RoutingDataset.load(out)

    csv = "long_csv/sample.csv"  # no split column: one is assigned with the seed
    first, again = (
        imported("long-csv", csv, "--split-seed", "1"),
        imported("long-csv", csv, "--split-seed", "1"),
    )
    assert first.splits.tolist() == again.splits.tolist()
    others = [imported("long-csv", csv, "--split-seed", str(seed)).splits.tolist() for seed in (2, 3, 4)]
    assert any(splits != first.splits.tolist() for splits in others)
    clean, kept = imported("routellm", "routellm"), imported("routellm", "routellm", "--keep-contaminated")
    assert kept.n_prompts > clean.n_prompts  # upstream's contaminated prompts come back
    assert set(clean.prompt_ids) < set(kept.prompt_ids)


def test_data_info_json_has_the_contract_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["data", "info", "bundled", "--split", "test", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_prompts"] == 381
    assert len(info["targets"]) == 9 and {"name", "accuracy", "n_labeled"} <= set(info["targets"][0])
    assert info["best_single"]["name"] == "llama-3.1-nemotron-51b-instruct"
    assert info["oracle_accuracy"] > info["best_single"]["accuracy"]
    assert sum(info["agreement"].values()) == pytest.approx(1.0)


def test_data_info_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "info.png"
    assert run(["data", "info", "bundled", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "oracle accuracy: 0.798" in out and "headroom" in out and "all wrong" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_prices_lists_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["data", "prices", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gpt-4-1106-preview"]["output_usd_per_mtok"] == 30.0
    assert rows["Qwen1.5-110B"]["derived"] is True


def test_errors_are_one_line_with_the_class_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["data", "info", str(tmp_path / "missing.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.endswith("missing.parquet: no such file")
    assert "\n" not in err and "Traceback" not in err


def test_unknown_split_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["data", "info", "bundled", "--split", "dev"]) == 2
    assert "no row has split 'dev'; known splits: test, train" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        run(["--debug", "data", "info", str(tmp_path / "missing.parquet")])


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["data", "import", "nonsense", "x", "-o", "y"]) == 2
    err = capsys.readouterr().err
    assert "'nonsense' is not one of 'llmrouter'" in err and "'long-csv'" in err


def test_console_script_is_installed() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "prefill-router"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "prefill-router 0.1.0"


# ------------------------------------------------------------------------- encode
@pytest.fixture
def tiny_dataset(small_dataset: RoutingDataset, tmp_path: Path) -> Path:
    return small_dataset.save(tmp_path / "tiny.parquet")


def test_encode_caches_and_exports(
    tiny_dataset: Path, tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    args = ["encode", str(tiny_dataset), "--encoder", str(tiny_llama_dir), "--cache", str(tmp_path / "c")]
    assert run([*args, "--layers", "1-3", "--export", str(tmp_path / "f.npz")]) == 0
    out = capsys.readouterr().out
    assert "features 4 x 2 x 3 x 32" in out and "chunks computed 1, reused 0" in out
    exported = np.load(tmp_path / "f.npz")
    assert exported["prompt_id"].tolist() == ["a", "b", "c", "d"]
    assert exported["mean"].shape == exported["last"].shape == (4, 3, 32)
    assert exported["mean"].dtype == np.float32 and exported["layers"].tolist() == [1, 2, 3]
    assert run([*args, "--layers", "1-3"]) == 0
    assert "chunks computed 0, reused 1" in capsys.readouterr().out


def test_encode_limit_and_bad_layers(
    tiny_dataset: Path, tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["encode", str(tiny_dataset), "--encoder", str(tiny_llama_dir), "--cache", str(tmp_path / "c")]
    assert run([*args, "--limit", "2", "--pooling", "mean"]) == 0
    assert "features 2 x 1 x 5 x 32" in capsys.readouterr().out
    assert run([*args, "--layers", "9"]) == 3
    assert "layer 9 is out of range: this encoder has layers 0..4" in capsys.readouterr().err


def test_encode_options_split_max_tokens_view_token_budget_and_device(
    tiny_dataset: Path, tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    import torch

    args = ["encode", str(tiny_dataset), "--encoder", str(tiny_llama_dir), "--cache", str(tmp_path / "c")]

    def encode(name: str, *options: str) -> tuple[dict[str, np.ndarray], str]:
        assert run([*args, *options, "--export", str(tmp_path / f"{name}.npz")]) == 0
        with np.load(tmp_path / f"{name}.npz") as exported:
            return dict(exported), " ".join(capsys.readouterr().out.split())

    default, out = encode("default")
    assert "chat view" in out and "0 prompts truncated to 256 tokens" in out
    test_rows, _ = encode("test", "--split", "test")
    assert test_rows["prompt_id"].tolist() == ["c", "d"]  # the rows of split 'test' only
    np.testing.assert_array_equal(test_rows["mean"], default["mean"][2:])
    short, out = encode("short", "--max-tokens", "26")  # the chat view adds 24 tokens
    assert "104 tokens; 4 prompts truncated to 26 tokens" in out
    assert not np.allclose(short["mean"], default["mean"])
    raw, out = encode("raw", "--view", "raw")
    assert "raw view" in out and not np.allclose(raw["mean"], default["mean"])
    batched, _ = encode("batched", "--token-budget", "8", "--device", "cpu")  # one prompt per batch
    np.testing.assert_allclose(batched["mean"], default["mean"], rtol=1e-2, atol=1e-2)  # bfloat16 batches
    if not torch.cuda.is_available():
        assert run([*args, "--device", "cuda"]) == 3
        err = " ".join(capsys.readouterr().err.split())
        assert "device cuda needs a CUDA GPU and a CUDA build of torch" in err


def test_encode_unknown_encoder_exits_3(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["encode", str(tiny_dataset), "--encoder", "smollm"]) == 3
    assert "Did you mean 'smollm2-135m'?" in capsys.readouterr().err


def test_cache_info_and_clear(
    tiny_dataset: Path, tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = str(tmp_path / "c")
    assert run(["encode", str(tiny_dataset), "--encoder", str(tiny_llama_dir), "--cache", cache]) == 0
    capsys.readouterr()
    assert run(["cache", "info", "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert "in 1 feature keys" in out and "layers 0-4, poolings mean, last" in out
    assert run(["cache", "clear", "--cache", cache]) == 0
    assert "freed" in capsys.readouterr().out
    assert run(["cache", "info", "--cache", cache]) == 0
    assert "0.0 MB in 0 feature keys" in capsys.readouterr().out


# -------------------------------------------------------------------------- probe
@pytest.fixture
def probe_dataset(tmp_path: Path) -> Path:
    """60 prompts x 3 targets: one target follows a word in the prompt, one is noise, one has one class."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = ["blue", "square", "python", "answer", "colour", "number"]
    prompts = [f"{rng.choice(words)} {rng.choice(words)} question {i}" for i in range(60)]
    planted = np.array([1.0 if "python" in p else 0.0 for p in prompts])
    labels = np.column_stack([planted, rng.integers(0, 2, 60).astype(float), np.ones(60)])
    ds = RoutingDataset(
        [f"p{i}" for i in range(60)], prompts, [None] * 60, ["train"] * 60, labels,
        (TargetInfo("planted"), TargetInfo("noise"), TargetInfo("always-right")),
    )  # fmt: skip
    return ds.save(tmp_path / "probe.parquet")


def test_probe_reports_json_plot_and_skips_one_class_targets(
    probe_dataset: Path, tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, figure = tmp_path / "probe.json", tmp_path / "probe.png"
    args = ["probe", str(probe_dataset), "--encoder", str(tiny_llama_dir), "--cache", str(tmp_path / "c")]
    assert run([*args, "--folds", "3", "--pca-k", "8", "--json", str(report), "--plot", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out
    blob = json.loads(report.read_text())
    assert {"pooling", "pca_k", "folds", "shrinkage"} <= set(blob["settings"])
    assert blob["settings"]["pca_k"] == 8 and blob["settings"]["pooling"] == "mean"
    planted = blob["targets"]["planted"]
    assert [row["layer"] for row in planted["layers"]] == [0, 1, 2, 3, 4]
    assert {"layer", "fisher_j", "fisher_j_lda", "d_eff", "cv_auc"} <= set(planted["layers"][0])
    assert {"chosen", "spearman_j_auc", "auc_lost"} <= set(planted)
    assert (
        blob["targets"]["always-right"]["skipped"]
        == "only one class in the training rows (60 correct, 0 wrong)"
    )
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_probe_compares_encoders(
    probe_dataset: Path,
    tiny_llama_dir: Path,
    tiny_bert_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = tmp_path / "probe.json"
    args = ["probe", str(probe_dataset), "--cache", str(tmp_path / "c"), "--folds", "3", "--pca-k", "8"]
    args += ["--encoder", str(tiny_llama_dir), "--encoder", str(tiny_bert_dir), "--targets", "planted,noise"]
    assert run([*args, "--json", str(report)]) == 0
    assert "encoder comparison" in capsys.readouterr().out
    blob = json.loads(report.read_text())
    assert set(blob["encoders"]) == {str(tiny_llama_dir), str(tiny_bert_dir)}
    assert len(blob["encoders"][str(tiny_bert_dir)]["targets"]["planted"]["layers"]) == 4


def test_probe_takes_one_pooling(probe_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["probe", str(probe_dataset), "--pooling", "mean,last"]) == 3
    assert "probe takes one pooling at a time" in capsys.readouterr().err
