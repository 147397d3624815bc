"""The feature transform (train/transform.py): layers -> StandardScaler -> PCA-k, one block per choice."""

from __future__ import annotations

import numpy as np
import pytest

from prefill_router.errors import ConfigError, DataError
from prefill_router.train import FeatureBlock, FeatureTransform, LayerFeatures, fit_transform
from prefill_router.train.transform import fit_block


def features(n: int = 80, hidden: int = 6, seed: int = 0) -> LayerFeatures:
    """(n, 2 poolings, 3 layers, hidden) features with per-feature offsets and scales, so scaling matters."""
    rng = np.random.default_rng(seed)
    values = rng.normal(loc=3.0, scale=rng.uniform(0.5, 4.0, size=(2, 3, hidden)), size=(n, 2, 3, hidden))
    return LayerFeatures(values.astype(np.float32), ("mean", "last"), (0, 2, 5))


# ----------------------------------------------------------------- LayerFeatures
def test_block_puts_the_named_layers_side_by_side() -> None:
    f = features()
    block = f.block("last", [5, 0])
    assert block.shape == (80, 12) and block.dtype == np.float32
    assert np.array_equal(block[:, :6], f.values[:, 1, 2])  # layer 5 first, as asked
    assert np.array_equal(block[:, 6:], f.values[:, 1, 0])
    rows = np.array([3, 7])
    assert np.array_equal(f.block("last", [5, 0], rows), block[rows])


def test_block_with_a_missing_layer_names_it() -> None:
    with pytest.raises(ConfigError, match=r"^the features hold layers \[0, 2, 5\]; layer 3 is missing$"):
        features().block("mean", [2, 3])


def test_block_with_a_missing_pooling_names_it() -> None:
    with pytest.raises(ConfigError, match=r"^the features hold poolings mean, last; 'max' is missing$"):
        features().block("max", [2])


# ------------------------------------------------------------------------ blocks
@pytest.mark.parametrize(
    ("n", "d", "pca_k", "k"),
    [(50, 10, 16, 10), (8, 20, 16, 7), (50, 20, 4, 4), (2, 5, 3, 1)],
    ids=["capped-by-D", "capped-by-N-1", "pca_k", "two-rows"],
)
def test_fit_block_has_k_min_of_pca_k_n_minus_1_and_d_columns(n: int, d: int, pca_k: int, k: int) -> None:
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    block = fit_block(x, "mean", [1], pca_k)
    assert block.n_out == k
    assert block.components.shape == (k, d) and block.mean.shape == block.scale.shape == (d,)
    assert block.apply(x).shape == (n, k)


def test_fit_block_standardises_the_training_rows() -> None:
    x = features().block("mean", [0, 2])
    block = fit_block(x, "mean", [0, 2], pca_k=4)
    standardised = (x - block.mean) / block.scale
    np.testing.assert_allclose(standardised.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(standardised.std(axis=0), 1, atol=1e-4)
    np.testing.assert_allclose(block.apply(x).mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(block.components @ block.components.T, np.eye(4), atol=1e-5)


def test_fit_block_keeps_the_directions_of_largest_variance() -> None:
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(200, 2))
    x = (latent @ rng.normal(size=(2, 8)) + 0.05 * rng.normal(size=(200, 8))).astype(np.float32)
    block = fit_block(x, "mean", [0], pca_k=2)
    out = block.apply(x)
    # two components recover the 2-d latent space: a least-squares fit from them explains it all
    coef, *_ = np.linalg.lstsq(np.c_[out, np.ones(200)], latent, rcond=None)
    residual = latent - np.c_[out, np.ones(200)] @ coef
    assert (residual**2).sum() / (latent**2).sum() < 1e-2


def test_a_constant_feature_is_scaled_by_1() -> None:
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    x[:, 2] = 7.0
    block = fit_block(x, "mean", [0], pca_k=3)
    assert block.scale[2] == 1.0 and block.mean[2] == 7.0
    assert np.isfinite(block.apply(x)).all()


def test_fit_block_gives_the_arrays_it_gave_before_it_shared_the_probes_helper() -> None:
    """fit_block's StandardScaler + PCA moved into probe.fit_pca: the arrays are the same, bit for
    bit, on a block wide enough (600 features) for scikit-learn's randomised solver, with a constant
    feature."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 600)) * rng.uniform(0.1, 30.0, size=600) + 3.0).astype(np.float32)
    x[:, 5] = 2.0
    block = fit_block(x, "mean", [0], pca_k=128, seed=4)
    scaler = StandardScaler().fit(x)  # the code fit_block ran before (commit e5cee0b)
    scale = np.where(scaler.scale_ < 1e-8, 1.0, scaler.scale_)
    pca = PCA(n_components=128, random_state=4).fit((x - scaler.mean_) / scale)
    assert np.array_equal(block.mean, scaler.mean_.astype(np.float32))
    assert np.array_equal(block.scale, scale.astype(np.float32))
    assert np.array_equal(block.components, pca.components_.astype(np.float32))
    before = ((x - block.mean) / block.scale) @ block.components.T
    assert np.array_equal(block.apply(x), before)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_features_are_a_data_error(bad: float) -> None:
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    x[5, 1] = bad
    with pytest.raises(DataError, match=r"has NaN or inf features; re-encode the dataset$"):
        fit_block(x, "mean", [0], pca_k=3)


def test_apply_checks_the_feature_count() -> None:
    x = np.random.default_rng(0).normal(size=(30, 12)).astype(np.float32)
    block = fit_block(x, "mean", [3, 9], pca_k=3)
    assert block.name == "mean:L3+L9"
    with pytest.raises(DataError, match=r"^block mean:L3\+L9 expects 12 features per prompt; got 11$"):
        block.apply(x[:, :11])


# --------------------------------------------------------------------- transform
CHOICE = {"a": [(0, "mean", [2])], "b": [(0, "mean", [5, 0])], "c": [(0, "mean", (0, 5))]}


def test_targets_with_the_same_layers_share_one_block() -> None:
    transform = fit_transform(features(), np.arange(80), CHOICE, pca_k=4)
    assert [b.name for b in transform.blocks] == ["mean:L2", "mean:L0+L5"]
    assert dict(transform.target_blocks) == {"a": (0,), "b": (1,), "c": (1,)}
    assert transform.n_features == 8


def test_the_same_layers_under_another_pooling_are_another_block() -> None:
    choice = {"a": [(0, "mean", [2])], "b": [(0, "last", [2])]}
    transform = fit_transform(features(), np.arange(80), choice, pca_k=4)
    assert [b.name for b in transform.blocks] == ["mean:L2", "last:L2"]
    assert transform.poolings == ("last", "mean")


def test_transform_layers_and_poolings_are_what_the_encoder_must_produce() -> None:
    choice = {"a": [(0, "mean", [5])], "b": [(0, "last", [2, 0])], "c": [(0, "mean", [2])]}
    transform = fit_transform(features(), np.arange(80), choice, pca_k=4)
    assert transform.layers == (0, 2, 5)
    assert transform.poolings == ("last", "mean")


def test_transform_concatenates_the_blocks() -> None:
    f = features()
    transform = fit_transform(f, np.arange(80), CHOICE, pca_k=4)
    out = transform.transform(f)
    assert out.shape == (80, 8) and out.dtype == np.float32
    first, second = transform.blocks
    np.testing.assert_allclose(out[:, :4], first.apply(f.block("mean", [2])), atol=1e-6)
    np.testing.assert_allclose(out[:, 4:], second.apply(f.block("mean", [0, 5])), atol=1e-6)


def test_the_transform_is_fitted_on_the_given_rows_only() -> None:
    f = features()
    rows = np.arange(0, 80, 2)
    fitted = fit_transform(f, rows, CHOICE, pca_k=4)
    changed = f.values.copy()
    changed[1::2] = 1000.0  # every row outside ``rows``
    refitted = fit_transform(LayerFeatures(changed, f.poolings, f.layers), rows, CHOICE, pca_k=4)
    for a, b in zip(fitted.blocks, refitted.blocks, strict=True):
        assert np.array_equal(a.mean, b.mean) and np.array_equal(a.scale, b.scale)
        assert np.array_equal(a.components, b.components)
    np.testing.assert_allclose(fitted.blocks[0].mean, f.values[rows, 0, 1].mean(axis=0), rtol=1e-5)
    everything = fit_transform(LayerFeatures(changed, f.poolings, f.layers), np.arange(80), CHOICE, pca_k=4)
    assert not np.allclose(everything.blocks[0].mean, fitted.blocks[0].mean)


def test_fit_transform_is_deterministic() -> None:
    a = fit_transform(features(), np.arange(80), CHOICE, pca_k=4, seed=1)
    b = fit_transform(features(), np.arange(80), CHOICE, pca_k=4, seed=1)
    assert all(np.array_equal(x.components, y.components) for x, y in zip(a.blocks, b.blocks, strict=True))


def test_fit_transform_with_nan_features_is_a_data_error() -> None:
    f = features()
    f.values[4, 0, 1, 3] = np.nan
    with pytest.raises(DataError, match=r"has NaN or inf features; re-encode the dataset$"):
        fit_transform(f, np.arange(80), {"a": [(0, "mean", [2])]}, pca_k=4)
    # the NaN row is outside the fitted rows: nothing to complain about
    fit_transform(f, np.arange(5, 80), {"a": [(0, "mean", [2])]}, pca_k=4)


def test_fit_transform_bad_settings() -> None:
    with pytest.raises(ConfigError, match=r"^The 'pca_k' parameter must be >= 1; got 0 instead\.$"):
        fit_transform(features(), np.arange(80), CHOICE, pca_k=0)
    with pytest.raises(ConfigError, match=r"^no layers chosen for target 'b'$"):
        fit_transform(features(), np.arange(80), {"a": [(0, "mean", [2])], "b": [(0, "mean", [])]}, pca_k=4)
    with pytest.raises(ConfigError, match=r"layer 4 is missing$"):
        fit_transform(features(), np.arange(80), {"a": [(0, "mean", [4])]}, pca_k=4)


def test_a_hand_built_transform() -> None:
    block = FeatureBlock(
        "mean", (0,), np.array([1.0, 2.0], np.float32), np.array([2.0, 4.0], np.float32),
        np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32),
    )  # fmt: skip
    transform = FeatureTransform((block,), {"a": (0,)})
    values = np.array([[3.0, 6.0]], np.float32).reshape(1, 1, 1, 2)
    out = transform.transform(LayerFeatures(values, ("mean",), (0,)))
    assert out.tolist() == [[1.0, 1.0, 2.0]]  # ((3, 6) - (1, 2)) / (2, 4) = (1, 1), then projected


# ------------------------------------------------------------------ several encoders
def test_a_target_may_read_blocks_of_several_encoders() -> None:
    first, second = features(seed=0), features(hidden=4, seed=1)
    choice = {"a": [(0, "mean", (2,)), (1, "last", (5,))], "b": [(0, "mean", (2,))]}
    transform = fit_transform([first, second], np.arange(80), choice, pca_k=3)
    assert [b.name for b in transform.blocks] == ["mean:L2", "e1:last:L5"]
    assert dict(transform.target_blocks) == {"a": (0, 1), "b": (0,)}
    assert transform.n_encoders == 2
    assert transform.layers_of(0) == (2,) and transform.layers_of(1) == (5,)
    assert transform.poolings_of(1) == ("last",)
    out = transform.transform([first, second])
    np.testing.assert_allclose(out[:, 3:], transform.blocks[1].apply(second.block("last", [5])), atol=1e-6)
    with pytest.raises(DataError, match=r"^the transform reads 2 encoders; features of 1 were given$"):
        transform.transform(first)


def test_a_block_of_an_encoder_that_is_not_there_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^target 'a' reads encoder 1; there are 1$"):
        fit_transform([features()], np.arange(80), {"a": [(1, "mean", (2,))]}, pca_k=3)
