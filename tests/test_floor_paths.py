"""Quality floors end to end (issue 14): `route`, `route-batch`, `calibrate`, `evaluate` and `serve`
on a tiny-encoder router whose calibration rows were held out of training."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from prefill_router import Router
from prefill_router.cli import run
from prefill_router.encode import Encoder, FeatureStore, extract_features
from prefill_router.errors import ConfigError
from prefill_router.policy import QualityFloor
from prefill_router.policy.choice import _choose
from prefill_router.serve.app import create_app
from prefill_router.serve.config import Profile, ServeConfig, UpstreamTarget
from prefill_router.train import EncoderIdentity, LayerFeatures, fit_router
from prefill_router.train.calibration import apply_temperature
from tests.serve_support import UPSTREAM_IDS, FakeBehaviour, ServerThread, fake_upstream, running_proxy
from tests.test_route import PROMPTS, SETTINGS, TARGETS, topics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CODE = PROMPTS[2]


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("floor-cache")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return topics(400).save(tmp_path_factory.mktemp("floor-data") / "topics.parquet")


@pytest.fixture(scope="module")
def router_path(tiny_llama_dir: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A router fitted on the 320 training rows with a quarter of them held out as calibration rows."""
    encoder = Encoder(str(tiny_llama_dir), dtype="float32", threads=1, cache_dir=cache)
    dataset = topics(400)
    stored = extract_features(encoder, dataset.prompts.tolist(), FeatureStore(cache))
    train = np.flatnonzero(dataset.splits == "train")
    feats = LayerFeatures(np.asarray(stored.features)[train], stored.key.poolings, stored.key.layers)
    settings = replace(SETTINGS, calibration_share=0.25)
    router, _ = fit_router(dataset.take(train), feats, EncoderIdentity.of(encoder), settings)
    return router.save(tmp_path_factory.mktemp("floor-router") / "router")


@pytest.fixture(scope="module")
def router(router_path: Path, tiny_llama_dir: Path, cache: Path) -> Router:
    loaded = Router.load(router_path, cache_dir=cache)
    loaded.use_encoder(Encoder(str(tiny_llama_dir), dtype="float32", threads=1, cache_dir=cache))
    return loaded


def route_json(path: Path, cache: Path, capsys: pytest.CaptureFixture[str], *options: str) -> dict[str, Any]:
    assert run(["route", str(path), CODE, "--json", "--cache", str(cache), *options]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def calibration_accuracy_at_argmax(router: Router) -> float:
    rows = router.calibration
    assert rows is not None and rows.labels is not None
    p = apply_temperature(router.ensemble.probabilities(rows.x), router.temperatures)
    c = router.costs_from_tokens(rows.tokens)
    choice = _choose(p, c, "budget", 0.0, np.ones(c.shape, dtype=bool))
    return float(rows.labels[np.arange(len(c)), choice].mean())


# ------------------------------------------------------------------------------------------- route
def test_route_within_a_named_target_answers_with_a_certified_choice(
    router: Router, router_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = route_json(router_path, cache, capsys, "--within", "1pt:code-model")
    certificate = blob["certificate"]
    assert certificate["certified"] and certificate["reference"] == "code-model"
    assert certificate["rows"] == len(router.calibration.x) and certificate["independent"]
    assert (blob["policy"], blob["knob"]) == ("budget", certificate["mu"])
    mu = router.certify(QualityFloor(within=0.01, relative_to="code-model")).mu
    assert mu is not None and (certificate["mu"] is None) == (mu == math.inf)  # JSON: inf is null
    p, c = blob["probabilities"], blob["costs_usd"]
    assert blob["target"] == max(TARGETS, key=lambda t: (p[t] - mu * c[t], -c[t]) if mu < math.inf else -c[t])
    assert blob["reason"].startswith("quality floor within 1 point of code-model (δ=0.05, certified on")
    assert certificate["savings"] > 0  # cheaper than always asking code-model, at its accuracy


def test_route_prints_the_certificate(
    router_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["route", str(router_path), CODE, "--within", "1pt:code-model", "--cache", str(cache)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "certificate: certified μ=" in out and "for within 1 point of code-model (δ=0.05," in out
    assert "below code-model" in out and "not held out" not in out


def test_route_min_accuracy_with_a_delta(
    router_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = route_json(router_path, cache, capsys, "--min-accuracy", "0.5", "--delta", "0.1")
    assert blob["certificate"]["certified"] and blob["certificate"]["delta"] == 0.1
    assert blob["certificate"]["floor"] == "accuracy >= 0.5"
    default = route_json(router_path, cache, capsys, "--delta", "0.2")  # the default floor at δ 0.2
    assert default["certificate"]["delta"] == 0.2 and default["certificate"]["floor"].startswith(
        "within 1 point"
    )


def test_a_floor_nothing_certifies_routes_to_its_reference(
    router: Router, router_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Just below what routing reaches on the calibration rows: true there, but not provable on them.
    floor = round(calibration_accuracy_at_argmax(router) - 0.005, 3)
    blob = route_json(router_path, cache, capsys, "--min-accuracy", str(floor))
    certificate = blob["certificate"]
    assert not certificate["certified"] and certificate["mu"] is None
    assert blob["target"] == certificate["fallback"] == router.best_single
    assert certificate["rows_needed"] > certificate["rows"]
    assert "no μ certified" in blob["reason"] and blob["candidates"] == [router.best_single]


@pytest.mark.parametrize(
    ("options", "code", "message"),
    [
        (["--min-accuracy", "0.999"], 3, "is above what any routing reaches on the"),
        (["--within", "1pt:code-modle"], 2, "Did you mean 'code-model'"),
        (["--within", "1pt", "--delta", "0.7"], 3, "'delta' parameter must be in (0, 0.5]"),
        (["--lambda", "0.5", "--delta", "0.1"], 3, "--delta is the risk of a quality floor"),
        (["--within", "1pt", "--budget", "$1"], 3, "choose one policy; got --budget and --within"),
        (["--within", "lots"], 3, "must read '1pt[:TARGET]'"),
    ],
)
def test_bad_floors_fail_with_a_clear_line(
    router_path: Path,
    cache: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    code: int,
    message: str,
) -> None:
    assert run(["route", str(router_path), CODE, "--cache", str(cache), *options]) == code
    assert message in " ".join(capsys.readouterr().err.split())


def test_a_router_without_calibration_labels_says_how_to_get_them(
    router: Router, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert router.calibration is not None
    unlabelled = replace(router.calibration, labels=None)
    old = Router(
        encoder=router.encoders, transform=router.transform, ensemble=router.ensemble,
        temperatures=router.temperatures, targets=router.target_info, output_tokens=router.output_tokens,
        info=router.info, calibration=unlabelled,
    ).save(tmp_path / "old")  # fmt: skip
    blob = route_json(old, cache, capsys)
    assert (blob["knob"], blob["certificate"]) == (0.0, None)  # argmax, as before floors existed
    assert run(["route", str(old), CODE, "--within", "1pt", "--cache", str(cache)]) == 3
    assert "run `prefill-router calibrate ROUTER DATA`" in " ".join(capsys.readouterr().err.split())


# ------------------------------------------------------------------------------------------- route-batch
def test_route_batch_keeps_a_floor_and_records_its_certificate(
    router: Router, router_path: Path, cache: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    texts = [*PROMPTS, "trivia question: sky colour"]
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    out = tmp_path / "decisions.parquet"
    args = ["route-batch", str(router_path), str(prompts), "-o", str(out), "--cache", str(cache)]
    assert run([*args, "--within", "1pt:code-model"]) == 0
    floor = QualityFloor(within=0.01, relative_to="code-model")
    assert pd.read_parquet(out)["target"].tolist() == [router.route(t, floor=floor).target for t in texts]
    meta = json.loads(pq.read_schema(out).metadata[b"prefill_router"])
    assert meta["certificate"] == router.certify(floor).to_json() and meta["knob"] == router.certify(floor).mu
    assert run(args) == 0  # no option: the default floor
    meta = json.loads(pq.read_schema(out).metadata[b"prefill_router"])
    assert meta["certificate"]["floor"].startswith("within 1 point of")


# ------------------------------------------------------------------------------------------- calibrate
def test_calibrate_replaces_the_calibration_rows_without_retraining(
    router: Router, router_path: Path, data_path: Path, cache: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "recalibrated"
    assert run(["calibrate", str(router_path), str(data_path), "--split", "test", "-o", str(out),
                "--cache", str(cache)]) == 0  # fmt: skip
    printed = " ".join(capsys.readouterr().out.split())
    assert "calibration rows: 80 prompts" in printed and "certificate:" in printed
    new = Router.load(out, cache_dir=cache)
    assert new.calibration is not None and len(new.calibration) == 80 and new.calibration.independent
    assert new.to_json()["calibration"]["source"] == f"{data_path}:test"
    np.testing.assert_array_equal(new.ensemble.w1, router.ensemble.w1)  # nothing retrained
    test = topics(400).select(split="test")
    np.testing.assert_array_equal(new.calibration.labels, test.labels)
    expected = router.transform.transform([router.features(test.prompts.tolist())[0]])
    np.testing.assert_allclose(new.calibration.x, expected, rtol=1e-5, atol=1e-5)


def test_calibrate_refuses_rows_it_cannot_use(
    router_path: Path, data_path: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["calibrate", str(router_path), "--cache", str(cache), "-o", str(tmp_path / "x")]
    assert run([*base[:2], str(data_path), *base[2:]]) == 3
    assert "has splits (test, train): name the one to calibrate on with --split" in capsys.readouterr().err
    two = topics(40).select(targets=["math-model", "poem-model"]).save(tmp_path / "two.parquet")
    assert run([*base[:2], str(two), *base[2:], "--split", "test"]) == 2
    assert "no labels for the router's targets code-model" in " ".join(capsys.readouterr().err.split())


# ------------------------------------------------------------------------------------------- evaluate
def test_evaluate_checks_the_floors_on_the_evaluation_rows(
    router_path: Path, data_path: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "metrics.json"
    args = ["evaluate", str(router_path), str(data_path), "--baselines", "none", "--bootstrap", "50"]
    report = tmp_path / "report"
    assert run([*args, "--within", "1pt:code-model", "--json", str(out), "--cache", str(cache),
                "--report", str(report)]) == 0  # fmt: skip
    page = (report / "report.html").read_text()
    assert "<table id='floors'>" in page and "within 1 point of code-model (δ 0.05)" in page
    floors = json.loads(out.read_text())["floors"]
    assert [row["certificate"]["floor"] for row in floors][1] == "within 1 point of code-model"
    assert floors[0]["certificate"]["floor"].startswith("within 1 point of")  # the default one
    for row in floors:
        assert row["rows"] == 80 and isinstance(row["kept"], bool)
        assert row["kept"] == (row["achieved"]["accuracy"] >= row["floor_accuracy"] - 1e-12)
        high = row["achieved"]["accuracy_ci"][1]
        expected = "kept" if row["kept"] else ("within noise" if high >= row["floor_accuracy"] else "missed")
        assert row["verdict"] == expected
    assert "floor within 1 point of code-model (δ 0.05" in " ".join(capsys.readouterr().out.split())


def test_a_floor_below_the_point_estimate_is_within_noise_until_the_interval_is_below() -> None:
    from prefill_router.evaluate.run import _verdict

    assert _verdict({"accuracy": 0.60, "accuracy_ci": [0.55, 0.65]}, 0.60) == "kept"
    assert _verdict({"accuracy": 0.57, "accuracy_ci": [0.52, 0.62]}, 0.59) == "within noise"
    assert _verdict({"accuracy": 0.50, "accuracy_ci": [0.45, 0.55]}, 0.59) == "missed"


# ------------------------------------------------------------------------------------------- serve
@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with ServerThread(fake_upstream(FakeBehaviour())) as server:
        yield server.url


def serve_config(upstream: str, **options: Any) -> ServeConfig:
    targets = {n: UpstreamTarget(n, f"{upstream}/v1", UPSTREAM_IDS[n], None, 5.0) for n in TARGETS}
    return ServeConfig(targets=targets, fallback=TARGETS, **options)


def test_serve_keeps_floors_by_default_by_profile_and_per_request(router: Router, upstream: str) -> None:
    profiles = {"router-code": Profile("budget", 0.0, QualityFloor(within=0.0, relative_to="code-model")),
                "router-cheap": Profile("tolerance", 1.0)}  # fmt: skip
    with (
        running_proxy(router, serve_config(upstream, profiles=profiles)) as url,
        httpx.Client(base_url=url) as client,
    ):
        default = client.post("/v1/route", json={"prompt": CODE}).json()
        assert default["certificate"]["floor"] == f"within 1 point of {router.best_single}"
        assert default["knob"] == router.certify(QualityFloor(within=0.01)).mu
        profile = client.post("/v1/route", json={"prompt": CODE, "model": "router-code"}).json()
        assert profile["certificate"]["floor"] == "within 0 points of code-model"
        asked = client.post("/v1/route", json={"prompt": CODE, "router": {"within": "2pt:math-model"}}).json()
        assert asked["certificate"]["floor"] == "within 2 points of math-model"
        risk = client.post("/v1/route", json={"prompt": CODE, "router": {"delta": 0.2}}).json()
        assert risk["certificate"]["delta"] == 0.2
        chat = client.post("/v1/chat/completions", json={"model": "router", "messages": [
            {"role": "user", "content": CODE}], "router": {"min_accuracy": 0.5}})  # fmt: skip
        assert (
            chat.status_code == 200
            and "quality floor accuracy >= 0.5 (delta=0.05" in chat.headers["x-router-reason"]
        )
        for body, param in [
            ({"router": {"min_accuracy": 0.999}}, "router.within"),  # nothing reaches it
            ({"router": {"within": "1pt:nobody"}}, "router.within"),
            ({"router": {"delta": 0.1}, "model": "router-cheap"}, "router.delta"),
            ({"router": {"delta": 0.9}}, "router.delta"),
        ]:
            response = client.post("/v1/route", json={"prompt": CODE, **body})
            assert response.status_code == 400, body
            assert response.json()["error"]["param"] == param


def test_serve_refuses_to_start_with_a_floor_it_cannot_certify(router: Router, upstream: str) -> None:
    profiles = {"router-code": Profile("budget", 0.0, QualityFloor(within=0.01, relative_to="code-modle"))}
    with pytest.raises(ConfigError, match=r"cannot serve model 'router-code': .*Did you mean 'code-model'"):
        create_app(router, serve_config(upstream, profiles=profiles))


def test_serve_yaml_reads_floors() -> None:
    config = ServeConfig.from_dict(
        {"targets": {t: {"base_url": "http://127.0.0.1:1/v1"} for t in TARGETS},
         "floor": {"within": "1pt:code-model", "delta": 0.1},
         "profiles": {"router-85": {"min_accuracy": 0.85}, "router-l": {"policy": "lambda", "knob": 0.5}}},
        TARGETS,
    )  # fmt: skip
    assert config.default.floor == QualityFloor(within=0.01, relative_to="code-model", delta=0.1)
    assert config.profiles["router-85"].floor == QualityFloor(min_accuracy=0.85)
    assert config.profiles["router-l"] == Profile("lambda", 0.5)
    assert ServeConfig.from_dict({"targets": {t: {"base_url": "http://127.0.0.1:1/v1"} for t in TARGETS}},
                                 TARGETS).default.floor == QualityFloor(within=0.01)  # fmt: skip
    for bad, message in [
        ({"floor": {"within": "1pt"}, "policy": "lambda"}, "either floor or policy/knob"),
        ({"floor": {"within": "1pt", "min_accuracy": 0.8}}, "floor: a quality floor needs exactly one"),
        ({"profiles": {"p": {"within": "1pt", "colour": 1}}}, "profiles.p: unknown field 'colour'"),
        ({"floor": {"min_accuracy": "high"}}, "floor: min_accuracy must be a number"),
    ]:
        doc = {"targets": {t: {"base_url": "http://127.0.0.1:1/v1"} for t in TARGETS}} | bad
        with pytest.raises(ConfigError, match=message):
            ServeConfig.from_dict(doc, TARGETS)
