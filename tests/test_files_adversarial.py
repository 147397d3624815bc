"""Hostile and broken files (issue 19): pickles, zip bombs, tampered router artifacts and feature
views, names that inject headers, spreadsheet formulas, concurrent writers and ``kill -9``.

Real files, real subprocesses; the marker a malicious pickle would write must never appear.
"""

from __future__ import annotations

import json
import pickle
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from prefill_router import Router
from prefill_router.cli import run
from prefill_router.data.importers import import_dataset
from prefill_router.data.prices import PriceTable
from prefill_router.encode.store import FeatureStore
from prefill_router.errors import ConfigError, DataError
from prefill_router.route_batch import DecisionWriter
from prefill_router.train.artifact import read_artifact, write_artifact
from tests.serve_support import build_tiny_router
from tests.test_store import KEY, PROMPTS, FakeEncoder, expected, key_dir

pytestmark = pytest.mark.adversarial
ROOT = Path(__file__).resolve().parents[1]
NO_PRICES = PriceTable([])


# ============================================================================ pickles
class _WritesAMarker:
    """Unpickling this calls ``Path.write_text(marker, "pwned")``: code run by loading the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.write_text, (self.marker, "pwned"))


def test_a_pickle_is_never_loaded_without_allow_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    src = tmp_path / "routerbench_0shot.pkl"
    src.write_bytes(pickle.dumps(_WritesAMarker(marker)))
    with pytest.raises(
        DataError, match=r"routerbench_0shot\.pkl: refusing to unpickle: loading a pickle runs any"
    ):
        import_dataset("routerbench", src, prices=NO_PRICES)
    assert run(["data", "import", "routerbench", str(src), "-o", str(tmp_path / "out.parquet")]) == 2
    assert "pass --allow-pickle" in " ".join(capsys.readouterr().err.split())
    assert not marker.exists()
    # The opt-in is the only gate: with it, the pickle's code runs (and its result is refused).
    with pytest.raises(DataError, match=r"expected a pickled pandas DataFrame, got int"):
        import_dataset("routerbench", src, prices=NO_PRICES, allow_pickle=True)
    assert marker.read_text() == "pwned"


def test_allow_pickle_is_for_routerbench_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.parquet"
    assert run(["data", "import", "long-csv", str(tmp_path / "x.csv"), "-o", str(out), "--allow-pickle"]) == 3
    assert "--allow-pickle applies to routerbench only" in capsys.readouterr().err


# ============================================================================ MMLU-Pro archives
def _write_zip(folder: Path, model: str, member: str, data: bytes | None = None, zeros: int = 0) -> Path:
    path = folder / f"model_outputs_{model}_5shots.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        if data is not None:
            archive.writestr(member, data)
        else:
            with archive.open(member, "w", force_zip64=True) as handle:
                block = b"\0" * (1 << 22)
                for _ in range(zeros // len(block)):
                    handle.write(block)
    return path


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    bomb = _write_zip(tmp_path, "bomb", "model_outputs_bomb_5shots.json", zeros=520 << 20)  # 520 MiB of zeros
    assert bomb.stat().st_size < 3_000_000  # 200x smaller than what it inflates to
    tracemalloc.start()
    try:
        with pytest.raises(
            DataError,
            match=r"inflates to more than 536,870,912 bytes \(a zip bomb, or not an MMLU-Pro archive\); "
            r"nothing was read past the limit \(its header says 545,259,520\)",
        ):  # fmt: skip
            import_dataset("mmlu-pro", tmp_path, prices=NO_PRICES)
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert peak_mb < 20


def test_a_member_larger_than_its_cap_is_refused_while_reading(tmp_path: Path) -> None:
    records = [{"question_id": 1, "question": "Q" * 5000, "options": ["a"], "answer": "A", "category": "c"}]
    _write_zip(tmp_path, "m", "m.json", data=json.dumps(records).encode())
    with pytest.raises(DataError, match=r"m\.json inflates to more than 1,000 bytes"):
        import_dataset("mmlu-pro", tmp_path, prices=NO_PRICES, max_member_bytes=1000)


def test_more_than_26_options_is_a_data_error_not_an_index_error(tmp_path: Path) -> None:
    record = {"question_id": 1, "question": "Q", "options": [str(i) for i in range(27)], "answer": "A",
              "category": "c", "pred": "A"}  # fmt: skip
    _write_zip(tmp_path, "m", "m.json", data=json.dumps([record]).encode())
    with pytest.raises(
        DataError, match=r"item 0: 'options' has 27 entries; a question is lettered A-Z, so at most 26"
    ):
        import_dataset("mmlu-pro", tmp_path, prices=NO_PRICES)


# ============================================================================ names that inject
@pytest.mark.parametrize("name", ["gpt-4o\r\nx-injected: 1", "model with spaces", "mödel", ""])
def test_an_imported_target_name_that_could_inject_is_refused(tmp_path: Path, name: str) -> None:
    src = tmp_path / "long.csv"
    pd.DataFrame({"question": ["q1", "q1"], "model": ["ok-model", name], "isCorrect": [1, 0]}).to_csv(
        src, index=False
    )
    if not name:  # an empty model is its own error
        with pytest.raises(DataError, match=r"empty model; every row needs one"):
            import_dataset("long-csv", src, prices=NO_PRICES)
        return
    with pytest.raises(DataError, match=r"^target name .* is not allowed: use 1-128 ASCII letters, digits"):
        import_dataset("long-csv", src, prices=NO_PRICES)


def test_routerbench_columns_with_cr_lf_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "rb.csv"
    frame = pd.DataFrame({"sample_id": ["a"], "prompt": ["hi"], "eval_name": ["x"], "m\r\nx": [1.0],
                          "m\r\nx|total_cost": [0.1]})  # fmt: skip
    frame.to_csv(src, index=False)
    with pytest.raises(DataError, match=r"target name 'm\\r\\nx' is not allowed"):
        import_dataset("routerbench", src, prices=NO_PRICES)


# ============================================================================ spreadsheet formulas
def test_route_batch_csv_cells_cannot_run_as_formulas(tmp_path: Path) -> None:
    out = tmp_path / "decisions.csv"
    hostile = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "plain", "007"]
    table = pa.table(
        {
            "prompt_id": hostile,
            "target": ["a"] * len(hostile),
            "cost_usd": [0.5] * len(hostile),
            "p_a": [-0.5] * len(hostile),
            "error": [None] * (len(hostile) - 1) + ["=cmd|' /C calc'!A0"],
        }
    )
    with DecisionWriter(out, ["a"], {}) as writer:
        writer.write(table)
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert frame["prompt_id"].tolist() == ["'" + h for h in hostile[:6]] + ["plain", "007"]
    assert frame["error"].tolist()[-1] == "'=cmd|' /C calc'!A0"
    assert frame["p_a"].tolist() == ["-0.5"] * len(hostile)  # numbers stay numbers


def test_parquet_and_jsonl_decisions_keep_ids_exactly(tmp_path: Path) -> None:
    table = pa.table(
        {"prompt_id": ["=1+1"], "target": ["a"], "cost_usd": [0.5], "p_a": [0.5], "error": [None]}
    )
    for suffix in ("parquet", "jsonl"):
        with DecisionWriter(tmp_path / f"d.{suffix}", ["a"], {}) as writer:
            writer.write(table.cast(writer.schema))
    assert pd.read_parquet(tmp_path / "d.parquet")["prompt_id"].tolist() == ["=1+1"]
    assert json.loads((tmp_path / "d.jsonl").read_text())["prompt_id"] == "=1+1"


# ============================================================================ importer memory
def test_a_long_csv_is_not_held_three_times_in_memory(tmp_path: Path) -> None:
    """pandas reads the file itself: no whole-file string, no StringIO copy, no second read."""
    src = tmp_path / "big.csv"
    words = ["alpha", "beta", "gamma", "delta"]
    with open(src, "w") as handle:
        handle.write("question,model,isCorrect\n")
        for i in range(800):
            question = f"q{i} " + " ".join(words[(i * j) % 4] for j in range(400))
            handle.write(f'"{question}",a,1\n"{question}",b,0\n')
    size_mb = src.stat().st_size / 1e6
    import_dataset("long-csv", src, prices=NO_PRICES)  # imports and caches everything once
    tracemalloc.start()
    try:
        dataset = import_dataset("long-csv", src, prices=NO_PRICES).dataset
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    print(f"\nlong-csv import of {size_mb:.1f} MB: traced peak {peak_mb:.1f} MB ({peak_mb / size_mb:.2f}x)")
    assert dataset.n_prompts == 800
    assert peak_mb < 2.5 * size_mb  # read whole, then StringIO, then read again: 5.5x


# ============================================================================ router artifacts
@pytest.fixture(scope="module")
def artifact(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.getbasetemp() / "cache"
    return build_tiny_router(tiny_llama_dir, cache, tmp_path_factory.mktemp("artifact"))


def test_a_router_naming_an_unknown_local_encoder_is_refused(
    artifact: Path, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``encoder.name: "../x"`` pointing at a folder of the artifact author's choosing, with its
    true weights hash: refused unless the user opts in (registered names only by default)."""
    evil = shutil.copytree(tiny_llama_dir, tmp_path / "x")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("PREFILL_ROUTER_ALLOW_LOCAL_ENCODERS", raising=False)
    router = shutil.copytree(artifact, tmp_path / "router")
    meta, arrays = read_artifact(router)
    meta["encoders"][0]["name"] = "../x"
    write_artifact(router, meta, arrays)
    refused = r"^the router names the encoder '\.\./x', which is not a registered encoder \(smollm2-135m, "
    with pytest.raises(ConfigError, match=refused):
        Router.load(router)
    lazy = Router.load(router, check_encoder=False)  # loads, but never builds that encoder
    with pytest.raises(ConfigError, match=refused):
        lazy.predict_proba(["math question"])
    assert run(["route", str(router), "math question"]) == 3
    assert "If you trust this router, allow local encoders" in " ".join(capsys.readouterr().err.split())
    assert run(["serve", str(router), "--upstream", "http://127.0.0.1:9/v1"]) == 3  # refused before starting
    trusted = Router.load(router, allow_local_encoders=True)
    assert trusted.predict_proba(["math question"]).shape == (1, 3)
    monkeypatch.setenv("PREFILL_ROUTER_ALLOW_LOCAL_ENCODERS", "1")
    assert Router.load(router).targets == trusted.targets
    assert evil.is_dir()


def test_a_folder_this_user_encoded_with_needs_no_opt_in(artifact: Path, tiny_llama_dir: Path) -> None:
    router = Router.load(artifact)  # the tests' own tiny model folder, recorded when they encoded with it
    assert router.encoder_identity.name == str(tiny_llama_dir)


# ============================================================================ feature store views
def _store(tmp_path: Path) -> Path:
    FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, FakeEncoder(), chunk_size=4)
    return next((key_dir(tmp_path) / "views").glob("*.npy"))


def _rewrite_manifest(view: Path, **changes: object) -> None:
    manifest = json.loads(view.with_suffix(".json").read_text())
    view.with_suffix(".json").write_text(json.dumps(manifest | changes))


def test_a_flipped_bit_in_a_view_is_never_served(tmp_path: Path) -> None:
    view = _store(tmp_path)
    data = bytearray(view.read_bytes())
    data[-3] ^= 0x10  # one bit of the last value; size and shape unchanged
    view.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"view .*\.npy is damaged; rebuilding it"):
        stored = FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, FakeEncoder(), chunk_size=4)
    np.testing.assert_array_equal(stored.features, expected(PROMPTS))


def test_a_nan_planted_with_a_matching_hash_is_never_served(tmp_path: Path) -> None:
    """Whoever rewrote the view could rewrite its manifest's sha256 too: the check also reads the values."""
    import hashlib

    view = _store(tmp_path)
    features = np.load(view)
    features[3, 0, 1, 2] = np.nan
    np.save(view, features)
    _rewrite_manifest(view, sha256=hashlib.sha256(view.read_bytes()).hexdigest())
    with pytest.warns(UserWarning, match=r"view .*\.npy is damaged; rebuilding it"):
        stored = FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, FakeEncoder(), chunk_size=4)
    assert np.isfinite(stored.features).all()


def test_a_view_manifest_without_its_totals_is_rebuilt_not_a_crash(tmp_path: Path) -> None:
    view = _store(tmp_path)
    manifest = json.loads(view.with_suffix(".json").read_text())
    del manifest["n_tokens"]
    view.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"view .*\.npy is damaged; rebuilding it"):
        stored = FeatureStore(tmp_path).get_or_compute(KEY, PROMPTS, FakeEncoder(), chunk_size=4)
    assert stored.n_tokens == sum(len(p) + 3 for p in PROMPTS)


def test_a_sound_view_is_checked_once_then_opened_without_reading(tmp_path: Path) -> None:
    view = _store(tmp_path)
    stamp = json.loads(view.with_suffix(".json").read_text())["file_stamp"]
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "features", copy / "features")  # a copied cache: other inode and times
    moved = copy / view.relative_to(tmp_path)
    first = FeatureStore(copy).get_or_compute(KEY, PROMPTS, FakeEncoder(), chunk_size=4)
    restamped = json.loads(moved.with_suffix(".json").read_text())["file_stamp"]
    assert restamped != stamp and first.computed_chunks == 0
    np.testing.assert_array_equal(first.features, expected(PROMPTS))


CONCURRENT_WRITER = """
import sys, time
import numpy as np
from tests.test_store import KEY, FakeEncoder
from prefill_router.encode.store import ChunkResult, FeatureStore

offset, root = float(sys.argv[1]), sys.argv[2]
fake = FakeEncoder()
def compute(prompts):
    result = fake(prompts)
    time.sleep(0.002)
    return ChunkResult(result.features + offset, result.n_tokens, result.n_truncated, result.n_empty)
for i in range(60):
    prompts = [f"round {i} prompt {j}" for j in range(8)]
    FeatureStore(root).get_or_compute(KEY, prompts, compute, chunk_size=2)
"""


def test_concurrent_writers_of_one_key_never_mix_their_files(tmp_path: Path) -> None:
    """Two runs computing the same chunks (with different values): every manifest matches its .npy."""
    import hashlib

    writers = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, offset, str(tmp_path)], cwd=ROOT)
        for offset in ("0", "1")
    ]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    chunks = sorted((key_dir(tmp_path) / "chunks").glob("*.npy"))
    assert len(chunks) == 240
    recorded = {c: json.loads(c.with_suffix(".json").read_text())["sha256"] for c in chunks}
    mixed = [c for c in chunks if recorded[c] != hashlib.sha256(c.read_bytes()).hexdigest()]
    assert mixed == []


# ============================================================================ kill -9 while writing
def _kill_while_writing(command: list[str], artifact: Path) -> bool:
    """Run ``command`` and SIGKILL it as soon as it starts writing ``artifact`` (its temporary
    folder appears beside it); whether the kill came before the command finished."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(f".{artifact.name}.") for p in artifact.parent.iterdir()):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.001)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def topics_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_route import topics

    return topics().save(tmp_path_factory.mktemp("topics") / "topics.parquet")


def _fit_args(data: Path, encoder: Path, output: Path, cache: Path) -> list[str]:
    return ["fit", str(data), "--encoder", str(encoder), "-o", str(output), "--cache", str(cache),
            "--seeds", "1", "--keep", "1", "--pca", "4", "--layers", "1"]  # fmt: skip


@pytest.mark.parametrize("command", [pytest.param("fit", marks=pytest.mark.slow), "add-target"])  # 7 s each
def test_kill_9_while_writing_the_artifact_leaves_the_old_one_loadable(
    artifact: Path, topics_data: Path, tiny_llama_dir: Path, tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory, command: str,
) -> None:  # fmt: skip
    cache = tmp_path_factory.getbasetemp() / "cache"
    target = tmp_path / "router"
    cli = str(Path(sys.executable).parent / "prefill-router")
    if command == "fit":  # refit over an existing artifact
        shutil.copytree(artifact, target)
        args = [cli, *_fit_args(topics_data, tiny_llama_dir, target, cache)]
    else:  # add a target in place (no -o: the router is replaced)
        two = "math-model,poem-model"
        assert run([*_fit_args(topics_data, tiny_llama_dir, target, cache), "--targets", two]) == 0
        args = [cli, "add-target", str(target), str(topics_data), "--target", "code-model"]
        args += ["--cache", str(cache)]
    old = Router.load(target)
    killed = _kill_while_writing(args, target)
    loaded = Router.load(target)  # the old artifact or the whole new one: never a broken one, never none
    kept = "the old one" if np.array_equal(loaded.temperatures, old.temperatures) else "the new one"
    print(f"\n{command}: SIGKILL while writing: {killed}; the path holds {kept}, targets {loaded.targets}")
    assert killed
    assert (
        loaded.targets == old.targets
        if command == "fit"
        else loaded.targets in (old.targets, (*old.targets, "code-model"))
    )
