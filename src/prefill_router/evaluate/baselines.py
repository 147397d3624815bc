"""The baselines of DESIGN §8, trained on the same training rows as the router.

Each learned baseline returns probabilities for the evaluation rows, so it goes through exactly the
same policy and cost code as the router:

- ``knn-embed``: k nearest neighbours on MiniLM sentence embeddings (the paper's named baseline),
  P = mean label of the neighbours, k chosen by 5-fold cross-validation on the training rows;
- ``trunk-embed``: the same SharedTrunkNet recipe on MiniLM embeddings (features vs architecture);
- ``logreg-embed``: per-target L2 logistic regression on standardised MiniLM embeddings;
- ``layer0``: the SharedTrunkNet on the encoder's mean-pooled token embeddings (layer 0, no
  transformer block): what the prefill adds beyond a bag of tokens;
- ``random``: uniform random probabilities (a random router under the same policy).

The fixed routers (each single target, cheapest, oracle) need no training and are handled by the
evaluation itself.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from prefill_router.data.dataset import LABEL_THRESHOLD, RoutingDataset
from prefill_router.errors import ConfigError
from prefill_router.train import EncoderIdentity, LayerFeatures, TrainSettings, fit_router
from prefill_router.train.quality import mean_auc, target_quality

LEARNED = ("knn-embed", "trunk-embed", "logreg-embed", "layer0", "random")
#: MiniLM layer read for sentence embeddings (its last block, mean-pooled, as sentence-transformers does).
EMBED_ENCODER = "minilm-l6"
KNN_KS = (5, 10, 20, 50, 100, 200)


def parse_baselines(spec: str) -> tuple[str, ...]:
    """'all', 'none' or a comma-separated subset of :data:`LEARNED`."""
    if spec in ("all", ""):
        return LEARNED
    if spec == "none":
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in spec.split(",")))  # in order, once each
    unknown = [n for n in names if n not in LEARNED]
    if unknown:
        raise ConfigError(
            f"unknown baseline {unknown[0]!r}; expected 'all', 'none' or some of: {', '.join(LEARNED)}"
        )
    return names


def embed_identity(encoder_name: str, weights_sha256: str) -> EncoderIdentity:
    """The identity recorded for a baseline trunk (its features come from ``encoder_name``)."""
    return EncoderIdentity(encoder_name, weights_sha256, "raw", 512, "float32")


def knn_probabilities(
    e_train: np.ndarray, y_train: np.ndarray, e_eval: np.ndarray, *, seed: int = 0, folds: int = 5
) -> tuple[np.ndarray, int]:
    """(P_eval (N_eval, M), k): neighbour-mean labels on cosine distance, k by CV on training rows."""
    from sklearn.model_selection import KFold

    ks = [k for k in KNN_KS if k < len(e_train) * (folds - 1) / folds] or [1]
    scores = np.zeros(len(ks))
    for fit_rows, test_rows in KFold(folds, shuffle=True, random_state=seed).split(e_train):
        cumulative = _neighbour_label_sums(e_train[fit_rows], y_train[fit_rows], e_train[test_rows], max(ks))
        for i, k in enumerate(ks):
            scores[i] += _mean_auc(_neighbour_mean(cumulative, k), y_train[test_rows])
    best = ks[int(np.argmax(scores))]
    return _neighbour_mean(_neighbour_label_sums(e_train, y_train, e_eval, best), best), best


def _neighbour_label_sums(
    e_fit: np.ndarray, y_fit: np.ndarray, e_query: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative sums over the k nearest neighbours of labels and label counts: (N, k, M) each."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=min(k, len(e_fit)), metric="cosine").fit(e_fit)
    _, neighbours = index.kneighbors(e_query)
    labels = y_fit[neighbours]  # (N, k, M)
    seen = ~np.isnan(labels)
    return np.cumsum(np.where(seen, labels, 0.0), axis=1), np.cumsum(seen, axis=1)


def _neighbour_mean(sums: tuple[np.ndarray, np.ndarray], k: int) -> np.ndarray:
    total, count = sums
    k = min(k, total.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total[:, k - 1] / count[:, k - 1]
    return np.where(np.isnan(mean), 0.5, mean)


def logreg_probabilities(e_train: np.ndarray, y_train: np.ndarray, e_eval: np.ndarray) -> np.ndarray:
    """(N_eval, M) from one standardised L2 logistic regression (C = 1) per target."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = np.full((len(e_eval), y_train.shape[1]), 0.5)
    for j in range(y_train.shape[1]):
        seen = ~np.isnan(y_train[:, j])
        y = y_train[seen, j] >= LABEL_THRESHOLD
        if 0 < y.sum() < y.size:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
            out[:, j] = model.fit(e_train[seen], y).predict_proba(e_eval)[:, 1]
    return out


def trunk_probabilities(
    train: RoutingDataset,
    features_train: LayerFeatures,
    features_eval: LayerFeatures,
    layers: tuple[int, ...],
    identity: EncoderIdentity,
    settings: TrainSettings,
) -> np.ndarray:
    """(N_eval, M) from the SharedTrunkNet recipe on the given features and layers."""
    pooling = "mean" if "mean" in features_train.poolings else features_train.poolings[0]
    router, _ = fit_router(train, features_train, identity, replace(settings, layers=layers, pooling=pooling))
    return router.predict_proba_features(features_eval)


def random_probabilities(n: int, m: int, seed: int = 0) -> np.ndarray:
    """(n, m) uniform random probabilities."""
    return np.random.default_rng(seed).random((n, m))


def _mean_auc(p: np.ndarray, y: np.ndarray) -> float:
    """Mean AUC over the targets with both classes (:func:`~prefill_router.train.quality.mean_auc`);
    0.5, chance, when no target has both."""
    auc = mean_auc(target_quality(p, y, [str(j) for j in range(y.shape[1])]))
    return auc if math.isfinite(auc) else 0.5
