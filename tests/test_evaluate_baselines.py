"""The learned baselines of DESIGN §8 (evaluate/baselines.py) on hand-made points."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from prefill_router.errors import ConfigError
from prefill_router.evaluate.baselines import (
    KNN_KS,
    LEARNED,
    knn_probabilities,
    logreg_probabilities,
    parse_baselines,
    random_probabilities,
)

DIM = 16


def clusters(sizes: list[int], seed: int = 0, spread: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Points close to orthogonal unit directions e_0, e_1, ... (one cluster each), L2-normalised;
    and each point's cluster."""
    rng = np.random.default_rng(seed)
    cluster = np.repeat(np.arange(len(sizes)), sizes)
    points = np.eye(DIM)[cluster] + spread * rng.normal(size=(len(cluster), DIM))
    return points / np.linalg.norm(points, axis=1, keepdims=True), cluster


# ---------------------------------------------------------------- parse_baselines
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", LEARNED),
        ("", LEARNED),
        ("none", ()),
        ("random", ("random",)),
        ("layer0,random", ("layer0", "random")),
        (" knn-embed , logreg-embed", ("knn-embed", "logreg-embed")),
    ],
)
def test_parse_baselines(spec: str, expected: tuple[str, ...]) -> None:
    assert parse_baselines(spec) == expected


def test_all_is_every_learned_baseline() -> None:
    assert LEARNED == ("knn-embed", "trunk-embed", "logreg-embed", "layer0", "random")


@pytest.mark.parametrize(("spec", "bad"), [("knn", "knn"), ("random,layer1", "layer1"), ("All", "All")])
def test_an_unknown_baseline_lists_the_valid_names(spec: str, bad: str) -> None:
    message = (
        rf"^unknown baseline '{bad}'; expected 'all', 'none' or some of: "
        r"knn-embed, trunk-embed, logreg-embed, layer0, random$"
    )
    with pytest.raises(ConfigError, match=message):
        parse_baselines(spec)


# ---------------------------------------------------------------------------- kNN
def test_knn_predicts_the_neighbour_mean_ignoring_missing_labels() -> None:
    # 10 training rows leave only k = 5 (< 8 rows per CV fit): the query's 5 neighbours are its cluster.
    e_train, _ = clusters([5, 5])
    y_train = np.array(
        [
            [1, 1, np.nan],
            [1, np.nan, np.nan],
            [1, 0, np.nan],
            [0, np.nan, np.nan],
            [0, 1, np.nan],  # cluster 0: 3/5, 2/3 (two unknown), none known -> 0.5
            [0, 0, 1],
            [0, 0, 1],
            [0.5, 0, 0],
            [0, 0, 1],
            [0, 1, 0],  # cluster 1: 0.5/5 (graded), 1/5, 3/5
        ]
    )
    e_eval, _ = clusters([2, 1], seed=1)
    p, k = knn_probabilities(e_train, y_train, e_eval)
    assert k == 5
    cluster_0, cluster_1 = [0.6, 2 / 3, 0.5], [0.1, 0.2, 0.6]
    np.testing.assert_allclose(p, [cluster_0, cluster_0, cluster_1], rtol=1e-12)


def test_knn_with_too_few_rows_for_any_k_uses_the_nearest_row() -> None:
    e_train, _ = clusters([1, 1, 1, 1, 1, 1])  # 6 rows: even k = 5 exceeds a CV fit of 4.8 rows
    y_train = np.array([[1.0], [0.0], [1.0], [0.0], [0.25], [0.0]])
    e_eval, _ = clusters([0, 0, 0, 0, 1, 1], seed=1)  # near rows 4 and 5
    p, k = knn_probabilities(e_train, y_train, e_eval)
    assert k == 1
    assert p[:, 0].tolist() == [0.25, 0.0]


def test_knn_picks_the_smallest_k_when_the_nearest_rows_already_tell() -> None:
    # Labels constant within 4 clusters of 25: k = 5 (in-cluster neighbours) is already perfect in CV.
    e_train, cluster = clusters([25] * 4)
    y_train = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=float)[cluster]
    e_eval, eval_cluster = clusters([3] * 4, seed=1)
    p, k = knn_probabilities(e_train, y_train, e_eval)
    assert k == 5
    np.testing.assert_array_equal(p, y_train[np.searchsorted(cluster, eval_cluster)])


def test_knn_picks_a_larger_k_when_labels_are_noisy() -> None:
    # Two clusters of 50 with P(correct) 0.7 and 0.3: averaging more neighbours ranks better.
    rng = np.random.default_rng(0)
    e_train, cluster = clusters([50, 50], spread=0.1)
    y_train = (rng.random((100, 3)) < np.where(cluster == 0, 0.7, 0.3)[:, None]).astype(float)
    ks = [k for k in KNN_KS if k < 80]
    p, k = knn_probabilities(e_train, y_train, clusters([5, 5], seed=1, spread=0.1)[0])
    assert k in ks and k > 5
    assert (p[:5].min(axis=0) > p[5:].max(axis=0)).all()  # the better cluster ranks higher


def test_knn_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(0)
    e_train = rng.normal(size=(60, DIM))
    y_train = (rng.random((60, 2)) < 0.5).astype(float)
    e_eval = rng.normal(size=(7, DIM))
    first, again = (
        knn_probabilities(e_train, y_train, e_eval, seed=3),
        knn_probabilities(e_train, y_train, e_eval, seed=3),
    )
    assert first[1] == again[1] and first[1] in (5, 10, 20)
    np.testing.assert_array_equal(first[0], again[0])


# ------------------------------------------------------------------------- logreg
def test_logreg_learns_a_linearly_separable_target_and_gives_one_half_for_one_class() -> None:
    rng = np.random.default_rng(0)
    e_train, e_eval = rng.normal(size=(200, DIM)), rng.normal(size=(100, DIM))
    w = rng.normal(size=DIM)
    y_train = np.stack([(e_train @ w > 0), np.ones(200), e_train[:, 3] > 0], axis=1).astype(float)
    y_train[::4, 2] = np.nan  # unknown labels are left out of the fit
    p = logreg_probabilities(e_train, y_train, e_eval)
    assert p.shape == (100, 3) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(e_eval @ w > 0, p[:, 0]) > 0.95
    assert (p[:, 1] == 0.5).all()  # one class: no model, no preference
    assert roc_auc_score(e_eval[:, 3] > 0, p[:, 2]) > 0.95


def test_logreg_counts_graded_labels_from_one_half() -> None:
    rng = np.random.default_rng(1)
    e_train = rng.normal(size=(100, DIM))
    graded = np.where(e_train[:, 0] > 0, 0.5, 0.49)[:, None]  # correct (>= 0.5) exactly when e_0 > 0
    p = logreg_probabilities(e_train, graded, e_train)
    assert roc_auc_score(e_train[:, 0] > 0, p[:, 0]) > 0.95


# ------------------------------------------------------------------------- random
def test_random_probabilities_are_uniform_and_fixed_by_the_seed() -> None:
    p = random_probabilities(500, 3, seed=4)
    assert p.shape == (500, 3) and ((p >= 0) & (p < 1)).all()
    assert 0.45 < p.mean() < 0.55
    np.testing.assert_array_equal(p, random_probabilities(500, 3, seed=4))
    assert not np.array_equal(p, random_probabilities(500, 3, seed=5))
    np.testing.assert_array_equal(random_probabilities(500, 3), random_probabilities(500, 3, seed=0))
