"""The Python fit API: Router.fit and RouterTrainer, with a real (tiny random-weight) encoder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from prefill_router import ConfigError, Router, RouterTrainer
from prefill_router.encode import Encoder, FeatureStore, extract_features
from prefill_router.train import EncoderIdentity, LayerFeatures, RouterModel, TrainSettings, fit_router
from tests.test_route import SETTINGS, topics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trainer-cache")


@pytest.fixture(scope="module")
def train_rows():  # type: ignore[no-untyped-def]
    dataset = topics(200)
    return dataset.select(split="train")


def test_router_fit_is_fit_router_on_the_stored_features(
    tiny_llama_dir: Path, cache: Path, train_rows, tmp_path: Path
) -> None:
    """One call: encode through the feature store, fit, and a Router that routes; the same
    router, to the last bit, as fitting the features by hand."""
    options = {"pca_k": SETTINGS.pca_k, "seeds": SETTINGS.seeds, "keep": SETTINGS.keep, "net": SETTINGS.net}
    router = Router.fit(train_rows, encoder=str(tiny_llama_dir), dtype="float32", cache_dir=cache, **options)
    assert type(router) is Router and router.targets == tuple(train_rows.target_names)
    assert router.route("code question: python function").target in router.targets

    encoder = Encoder(str(tiny_llama_dir), dtype="float32", threads=1, cache_dir=cache)
    stored = extract_features(encoder, train_rows.prompts.tolist(), FeatureStore(cache))
    features = LayerFeatures(np.asarray(stored.features), stored.key.poolings, stored.key.layers)
    by_hand, _ = fit_router(
        train_rows, features, EncoderIdentity.of(encoder), replace(TrainSettings(), **options)
    )
    assert router.encoders == by_hand.encoders and router.info["settings"] == by_hand.info["settings"]
    np.testing.assert_array_equal(
        router.predict_proba_features(features), by_hand.predict_proba_features(features)
    )

    saved = router.save(tmp_path / "router")
    assert type(Router.load(saved, cache_dir=cache)) is Router


def test_a_refit_encodes_nothing_and_the_trainer_keeps_its_report(
    tiny_llama_dir: Path, cache: Path, train_rows
) -> None:
    encoded: list[tuple[int, int]] = []
    stages: list[str] = []
    trainer = RouterTrainer(
        str(tiny_llama_dir), settings=SETTINGS, dtype="float32", cache_dir=cache,
        on_encode=lambda n, tokens=0: encoded.append((n, tokens)),
        on_progress=lambda stage, done, total: stages.append(stage),
    )  # fmt: skip
    assert trainer.router_ is None and trainer.report_ is None
    assert trainer.fit(train_rows) is trainer
    assert isinstance(trainer.router_, RouterModel) and not isinstance(trainer.router_, Router)
    assert trainer.report_ is not None and set(trainer.report_.val_auc) == set(train_rows.target_names)
    assert sum(n for n, _ in encoded) == train_rows.n_prompts  # every prompt accounted for...
    assert all(tokens == 0 for _, tokens in encoded)  # ...and every one from the store
    assert stages[0] == "probe" and "calibrate" in stages


def test_the_trainer_checks_its_settings_and_encoders_before_any_work(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown training setting 'pca'.*pca_k"):
        RouterTrainer(str(tiny_llama_dir), pca=8)
    with pytest.raises(ConfigError, match=r"'pca_k' parameter must be an int >= 1"):
        RouterTrainer(str(tiny_llama_dir), pca_k=0)
    with pytest.raises(ConfigError, match="no-such-encoder"):
        RouterTrainer("no-such-encoder")


def test_the_trainer_refuses_data_it_cannot_fit(tiny_llama_dir: Path, train_rows) -> None:
    from prefill_router.errors import DataError

    trainer = RouterTrainer(str(tiny_llama_dir), settings=SETTINGS, dtype="float32")
    with pytest.raises(DataError, match="rows"):
        trainer.check(train_rows.take(range(10)), source="tiny.parquet")
