"""Fitting a router from a dataset in one call: encoders loaded, features through the feature store, fit.

:class:`RouterTrainer` is sklearn-style: settings in the constructor, the fitted router
(``router_``) and its report (``report_``) after :meth:`~RouterTrainer.fit`.
:meth:`prefill_router.Router.fit` and ``prefill-router fit`` are thin calls of it; the command
runs its steps one by one (:meth:`~RouterTrainer.check`, :meth:`~RouterTrainer.load_encoders`,
:meth:`~RouterTrainer.features`, :meth:`~RouterTrainer.fit_features`) to show progress between them.

Example::

    trainer = RouterTrainer("smollm2-135m", seeds=5).fit(RoutingDataset.load("bundled").select(split="train"))
    trainer.router_.save("router/"); trainer.report_.val_auc
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from prefill_router.errors import ConfigError, DataError
from prefill_router.train.fit import (
    DEFAULT_ENCODERS,
    FitReport,
    ProgressCallback,
    TrainSettings,
    check_training_data,
    fit_router,
)
from prefill_router.train.router import EncoderIdentity, RouterModel
from prefill_router.train.transform import LayerFeatures

if TYPE_CHECKING:
    from prefill_router.data.dataset import RoutingDataset
    from prefill_router.encode import Encoder

#: Called as (prompts done, tokens done) while a dataset's prompts are encoded.
EncodeCallback = Callable[..., None]


class RouterTrainer:
    """Fits routers: encoders and :class:`~prefill_router.train.TrainSettings` in the constructor,
    ``router_`` and ``report_`` after :meth:`fit`.

    Args:
        encoder: a registered encoder name or a local model folder, or several to fuse (default:
            :data:`~prefill_router.train.fit.DEFAULT_ENCODERS`; with ``init`` other than random,
            the pretrained trunk's own encoders).
        settings: the fit's settings; ``options`` override any of its fields by name.
        dtype, max_tokens: how the encoders run (the encoder's defaults when None).
        cache_dir: the feature store and converted models (default: the user cache).
        on_progress: called as (stage, done, total) while fitting. on_encode: called as
            (prompts, tokens) while encoding.
        router_class: the class fitted (the policy stage's ``Router`` also routes).

    Raises:
        ConfigError: an unknown setting or encoder, encoders that do not match a pretrained trunk.
        MissingDependencyError: an encoder's model package is not installed.
    """

    def __init__(
        self,
        encoder: str | Sequence[str] | None = None,
        *,
        settings: TrainSettings | None = None,
        dtype: str | None = None,
        max_tokens: int | None = None,
        cache_dir: str | Path | None = None,
        on_progress: ProgressCallback | None = None,
        on_encode: EncodeCallback | None = None,
        router_class: type[RouterModel] = RouterModel,
        **options: Any,
    ) -> None:
        self.settings = _settings(settings or TrainSettings(), options)
        names = [encoder] if isinstance(encoder, str) else list(encoder or [])
        self.encoders = fit_encoders(names, dtype, self.settings.init)
        self.max_tokens, self.cache_dir = max_tokens, cache_dir
        self.on_progress, self.on_encode, self.router_class = on_progress, on_encode, router_class
        self.router_: RouterModel | None = None
        self.report_: FitReport | None = None

    def fit(self, dataset: RoutingDataset | str | Path) -> Self:
        """Fit on every row of ``dataset`` (a RoutingDataset or a dataset folder); returns self."""
        from prefill_router.data.dataset import RoutingDataset

        rows = dataset if isinstance(dataset, RoutingDataset) else RoutingDataset.load(dataset)
        self.check(rows)
        models = self.load_encoders()
        features = [self.features(model, rows, self.on_encode) for model in models]
        self.router_, self.report_ = self.fit_features(rows, features, models)
        return self

    def check(self, dataset: RoutingDataset, source: str | None = None) -> None:
        """Raise unless ``dataset`` can fit a router: enough labelled rows of each class, and a
        price for every target (a router weighs cost). ``source`` names the data in the error."""
        from prefill_router.data.costs import check_priced

        check_priced(dataset.targets, source=source)
        try:
            check_training_data(dataset)
        except DataError as exc:
            raise DataError(str(exc), source=source) from exc

    def load_encoders(self) -> list[Encoder]:
        """The encoders, loaded (an explicit ``layers`` list must name layers of the first one)."""
        from prefill_router.encode import Encoder, parse_layers
        from prefill_router.encode.encoder import DEFAULT_DTYPE

        models = [
            Encoder(name, dtype=dtype or DEFAULT_DTYPE, max_tokens=self.max_tokens, cache_dir=self.cache_dir)
            for name, dtype in self.encoders
        ]
        if not isinstance(self.settings.layers, str):
            parse_layers(list(self.settings.layers), models[0].n_layers)
        return models

    def features(
        self, model: Encoder, dataset: RoutingDataset, on_encode: EncodeCallback | None = None
    ) -> LayerFeatures:
        """Every layer and both poolings of ``dataset``'s prompts (the ``encode`` defaults, so the
        feature store's entry is shared with ``prefill-router encode``)."""
        return stored_features(model, dataset.prompts.tolist(), self.cache_dir, on_encode=on_encode)

    def fit_features(
        self, dataset: RoutingDataset, features: Sequence[LayerFeatures], models: Sequence[Encoder]
    ) -> tuple[RouterModel, FitReport]:
        """The router fitted on ``features`` (one per encoder of ``models``), probes cached."""
        from prefill_router.encode import default_cache_dir
        from prefill_router.train.probe_cache import ProbeCache

        identities = [EncoderIdentity.of(model) for model in models]
        probes = ProbeCache(Path(self.cache_dir or default_cache_dir()) / "probes")
        model, report = fit_router(
            dataset, list(features), identities, self.settings, self.on_progress, probe_cache=probes
        )
        return self.router_class.of(model), report


def stored_features(
    model: Encoder,
    prompts: Sequence[str],
    cache_dir: str | Path | None = None,
    *,
    layers: str | Sequence[int] = "all",
    poolings: str | Sequence[str] | None = None,
    on_encode: EncodeCallback | None = None,
) -> LayerFeatures:
    """``prompts``' pooled features under ``model``, through the feature store in ``cache_dir``
    (default: the user cache): only what the store lacks is encoded."""
    from prefill_router.encode import FeatureStore, default_cache_dir, extract_features
    from prefill_router.encode.encoder import POOLINGS

    store = FeatureStore(cache_dir or default_cache_dir())
    stored = extract_features(
        model, list(prompts), store, layers=layers, poolings=POOLINGS if poolings is None else poolings,
        on_progress=on_encode,
    )  # fmt: skip
    return LayerFeatures(stored.features, stored.key.poolings, stored.key.layers)


def fit_encoders(names: Sequence[str], dtype: str | None, init: str) -> list[tuple[str, str | None]]:
    """(name, dtype) of each encoder a fit reads: ``names`` (default :data:`DEFAULT_ENCODERS`), or
    a pretrained trunk's own; every one known and installed before the first one loads.

    Raises:
        ConfigError: an unknown encoder, or names that differ from the pretrained trunk's.
        MissingDependencyError: an encoder's model package is not installed.
    """
    if init == "random":
        from prefill_router.encode.models import check_encoder_exists

        chosen = list(dict.fromkeys(names or DEFAULT_ENCODERS))
        for name in chosen:
            check_encoder_exists(name)
        return [(name, dtype) for name in chosen]
    from prefill_router.train.pretrained import load_trunk

    trunk = load_trunk(init)
    theirs: list[tuple[str, str | None]] = [(e.name, e.dtype) for e in trunk.encoders]
    if names and list(dict.fromkeys(names)) != [name for name, _ in theirs]:
        raise ConfigError(
            f"--init {init} reads the encoders it was trained on ({', '.join(n for n, _ in theirs)}); "
            f"got --encoder {' --encoder '.join(names)}. Leave --encoder out with --init."
        )
    return theirs


def _settings(base: TrainSettings, options: dict[str, Any]) -> TrainSettings:
    """``base`` with ``options`` replacing fields by name (a ConfigError names the valid ones)."""
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(
            f"unknown training setting {unknown[0]!r}; the settings are {', '.join(sorted(fields))}"
        )
    return dataclasses.replace(base, **options)
