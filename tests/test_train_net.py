"""SharedTrunkNet (train/net.py): the masked loss, the net's shape, training and the numpy ensemble."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefill_router.errors import DataError
from prefill_router.train import NetSettings, TrunkEnsemble, masked_bce
from prefill_router.train.net import TrainedMember, build_net, train_net

TINY = NetSettings(max_epochs=30, patience=5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hand_bce(logits: np.ndarray, labels: np.ndarray) -> float:
    """-mean(y log σ(z) + (1 - y) log(1 - σ(z))) over the non-NaN labels, written out."""
    seen = ~np.isnan(labels)
    z, y = logits[seen].astype(np.float64), labels[seen].astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-z))
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def xy(n: int = 200, d: int = 6, m: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 features and (n, m) labels that follow the first m features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :m] + 0.5 * rng.normal(size=(n, m)) > 0).astype(np.float64)
    return x, y


# ------------------------------------------------------------------------- loss
def test_masked_bce_is_the_bce_over_observed_labels() -> None:
    logits = np.array([[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0]], dtype=np.float32)
    labels = np.array([[1.0, np.nan, 0.0], [0.0, 1.0, np.nan]], dtype=np.float32)
    loss = masked_bce(torch.from_numpy(logits), torch.from_numpy(labels))
    assert float(loss) == pytest.approx(hand_bce(logits, labels), rel=1e-6)
    # 4 observed entries, not 6: NaNs are neither counted as 0 labels nor in the denominator
    assert float(loss) != pytest.approx(hand_bce(logits, np.nan_to_num(labels)), rel=1e-3)


def test_a_row_of_nan_labels_changes_nothing() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.25]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    more_logits = torch.cat([logits, torch.tensor([[-7.0, 9.0]])])
    more_labels = torch.cat([labels, torch.full((1, 2), float("nan"))])
    assert float(masked_bce(more_logits, more_labels)) == pytest.approx(float(masked_bce(logits, labels)))


def test_all_nan_labels_give_zero_loss_and_zero_gradient() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.25]], requires_grad=True)
    loss = masked_bce(logits, torch.full((2, 2), float("nan")))
    torch.autograd.backward(loss)
    assert float(loss.detach()) == 0.0
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros(2, 2))


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=0.02, max_value=0.98))
def test_a_graded_label_is_a_soft_target(label: float) -> None:
    """The loss of a graded label y is minimised at logit(y): its gradient vanishes there."""
    best = math.log(label / (1 - label))
    z = torch.tensor([[best]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[label]], dtype=torch.float64)
    torch.autograd.backward(masked_bce(z, y))
    assert z.grad is not None and abs(float(z.grad)) < 1e-9
    at_best = float(masked_bce(z.detach(), y))
    for step in (-0.2, 0.2):
        assert float(masked_bce(z.detach() + step, y)) > at_best


# ---------------------------------------------------------------------- the net
def test_build_net_is_d_in_256_128_m() -> None:
    net = build_net(12, 3, NetSettings())
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(12, 256), (256, 128), (128, 3)]
    assert [m.p for m in net if isinstance(m, torch.nn.Dropout)] == [0.3, 0.2]
    assert sum(isinstance(m, torch.nn.ReLU) for m in net) == 2
    assert isinstance(net[-1], torch.nn.Linear)  # the heads are the last layer: no activation after
    assert net(torch.zeros(5, 12)).shape == (5, 3)


def test_build_net_follows_the_settings() -> None:
    net = build_net(4, 2, NetSettings(hidden=(8, 6), dropout=(0.1, 0.0)))
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(4, 8), (8, 6), (6, 2)]
    assert [m.p for m in net if isinstance(m, torch.nn.Dropout)] == [0.1, 0.0]


# --------------------------------------------------------------------- training
def test_train_net_weights_have_the_documented_shapes() -> None:
    x, y = xy(m=3)
    member = train_net(x[:160], y[:160], x[160:], y[160:], TINY, seed=0)
    shapes = {name: w.shape for name, w in member.weights.items()}
    assert shapes == {
        "w1": (6, 256), "b1": (256,), "w2": (256, 128), "b2": (128,), "w3": (128, 3), "b3": (3,),
    }  # fmt: skip
    assert all(w.dtype == np.float32 for w in member.weights.values())
    assert 1 <= member.best_epoch <= member.epochs <= TINY.max_epochs


def test_train_net_restores_the_best_state_and_reports_its_loss() -> None:
    x, y = xy()
    member = train_net(x[:160], y[:160], x[160:], y[160:], TINY, seed=0)
    ensemble = TrunkEnsemble.stack([member])
    logits = ensemble.trunk(x[160:])[0] @ member.weights["w3"] + member.weights["b3"]
    recomputed = masked_bce(torch.from_numpy(logits), torch.from_numpy(y[160:].astype(np.float32)))
    assert float(recomputed) == pytest.approx(member.val_loss, rel=1e-4)


def test_train_net_stops_early_after_patience_epochs_without_progress() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = rng.integers(0, 2, size=(60, 1)).astype(np.float64)  # noise: validation loss soon rises
    settings = NetSettings(max_epochs=500, patience=5, lr=1e-2)
    member = train_net(x[:40], y[:40], x[40:], y[40:], settings, seed=0)
    assert member.epochs < settings.max_epochs
    assert member.epochs == member.best_epoch + settings.patience


def test_train_net_calls_on_epoch_once_per_epoch() -> None:
    x, y = xy()
    calls: list[None] = []
    member = train_net(x[:160], y[:160], x[160:], y[160:], TINY, seed=0, on_epoch=lambda: calls.append(None))
    assert len(calls) == member.epochs


def test_train_net_learns_with_missing_labels() -> None:
    x, y = xy(n=300)
    y[np.random.default_rng(1).random(y.shape) < 0.3] = np.nan
    member = train_net(x[:240], y[:240], x[240:], y[240:], NetSettings(max_epochs=60, patience=10), seed=0)
    assert math.isfinite(member.val_loss) and member.val_loss < math.log(2) - 0.1  # beats a coin


def test_train_net_on_inf_features_is_a_clear_error() -> None:
    x, y = xy()
    x[3, 2] = np.inf
    with pytest.raises(DataError, match=r"^training diverged: the validation loss is not finite"):
        train_net(x[:160], y[:160], x[160:], y[160:], TINY, seed=0)


def test_train_net_is_deterministic_for_a_seed() -> None:
    x, y = xy()
    first = train_net(x[:160], y[:160], x[160:], y[160:], TINY, seed=3)
    again = train_net(x[:160], y[:160], x[160:], y[160:], TINY, seed=3)
    other = train_net(x[:160], y[:160], x[160:], y[160:], TINY, seed=4)
    assert all(np.array_equal(first.weights[k], again.weights[k]) for k in first.weights)
    assert (first.val_loss, first.epochs) == (again.val_loss, again.epochs)
    assert not any(np.array_equal(first.weights[k], other.weights[k]) for k in ("w1", "w2", "w3"))


# --------------------------------------------------------------------- ensemble
def torch_forward(member: TrainedMember, x: np.ndarray) -> np.ndarray:
    """σ(net(x)) of a SharedTrunkNet rebuilt from a member's weights, in eval mode (dropout off)."""
    w = member.weights
    net = build_net(w["w1"].shape[0], w["w3"].shape[1], NetSettings())
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for i, layer in enumerate(linear, start=1):
            layer.weight.copy_(torch.from_numpy(w[f"w{i}"].T))
            layer.bias.copy_(torch.from_numpy(w[f"b{i}"]))
        net.eval()
        return torch.sigmoid(net(torch.from_numpy(x))).numpy()


@pytest.fixture(scope="module")
def members() -> list[TrainedMember]:
    x, y = xy(m=3)
    return [train_net(x[:160], y[:160], x[160:], y[160:], TINY, seed=s) for s in range(3)]


def test_ensemble_probabilities_are_the_mean_of_the_torch_nets(members: list[TrainedMember]) -> None:
    x, _ = xy(n=50, m=3, seed=9)
    ensemble = TrunkEnsemble.stack(members)
    expected = np.stack([torch_forward(m, x) for m in members])
    np.testing.assert_allclose(ensemble.member_probabilities(x), expected, atol=1e-6)
    np.testing.assert_allclose(ensemble.probabilities(x), expected.mean(axis=0), atol=1e-6)
    assert ensemble.probabilities(x).shape == (50, 3)
    assert (ensemble.n_members, ensemble.n_targets) == (3, 3)


def test_ensemble_trunk_is_the_torch_trunk(members: list[TrainedMember]) -> None:
    x, _ = xy(n=20, m=3, seed=9)
    ensemble = TrunkEnsemble.stack(members)
    net = build_net(6, 3, NetSettings())
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for i, layer in enumerate(linear, start=1):
            layer.weight.copy_(torch.from_numpy(members[1].weights[f"w{i}"].T))
            layer.bias.copy_(torch.from_numpy(members[1].weights[f"b{i}"]))
        net.eval()
        hidden = net[:6](torch.from_numpy(x)).numpy()  # modules 0-5 are the trunk
    np.testing.assert_allclose(ensemble.trunk(x)[1], hidden, atol=1e-6)


def test_with_head_adds_a_column_and_keeps_the_others(members: list[TrainedMember]) -> None:
    x, _ = xy(n=20, m=3, seed=9)
    ensemble = TrunkEnsemble.stack(members)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 128, 1)).astype(np.float32)
    b = rng.normal(size=(3, 1)).astype(np.float32)
    wider = ensemble.with_head(w, b)
    assert wider.n_targets == 4 and ensemble.n_targets == 3
    assert np.array_equal(wider.probabilities(x)[:, :3], ensemble.probabilities(x))
    new_column = 1 / (1 + np.exp(-(np.einsum("snh,sho->sno", ensemble.trunk(x), w) + b[:, None])))
    np.testing.assert_allclose(wider.probabilities(x)[:, 3], new_column.mean(axis=0)[:, 0], atol=1e-6)


# ------------------------------------------------------------- batched training
def test_members_trained_together_equal_members_trained_alone() -> None:
    """The batched ensemble is separate runs: each member's own dropout masks and early stop.

    Patience 3 makes the members stop at different epochs, so a member that went on training (or
    drew its dropout masks from a shared generator) would end with other weights (0.01 apart).
    What is left is float32 rounding: vectorised kernels (exp, log) round the last bit of an element
    differently at different positions of a (1, B, M) and an (S, B, M) tensor.
    """
    from prefill_router.train.net import train_nets

    x, y = xy(n=240, m=3, seed=5)
    settings = NetSettings(max_epochs=40, patience=3, batch_size=64)
    seeds = [0, 1, 2, 3]
    together = train_nets(x[:180], y[:180], x[180:], y[180:], settings, seeds)
    alone = [train_net(x[:180], y[:180], x[180:], y[180:], settings, seed=s) for s in seeds]
    assert len({m.epochs for m in alone}) > 1  # the members really stop at different epochs
    for batched, single in zip(together, alone, strict=True):
        assert (batched.epochs, batched.best_epoch) == (single.epochs, single.best_epoch)
        assert batched.val_loss == pytest.approx(single.val_loss, abs=1e-6)
        for name in TrunkEnsemble.ARRAYS:
            np.testing.assert_allclose(batched.weights[name], single.weights[name], rtol=0, atol=1e-6)


def test_the_pairwise_term_ranks_the_right_target_above_the_wrong_one() -> None:
    import torch

    from prefill_router.train.net import _member_pairwise

    labels = torch.tensor([[1.0, 0.0, float("nan")], [0.0, 0.0, 1.0]])  # (B=2, M=3)
    good = torch.tensor([[[3.0, -3.0, 9.0], [-1.0, -1.0, 2.0]]])  # (S=1, B, M): right ones on top
    bad = torch.tensor([[[-3.0, 3.0, 9.0], [1.0, 1.0, -2.0]]])
    assert float(_member_pairwise(good, labels)[0]) < 0.05 < 2.0 < float(_member_pairwise(bad, labels)[0])
    # the unlabelled third target of row 0 and the tie in row 1 make no pairs: 3 pairs in all
    manual = (np.log1p(np.exp(-6.0)) + 2 * np.log1p(np.exp(-3.0))) / 3
    assert float(_member_pairwise(good, labels)[0]) == pytest.approx(manual, rel=1e-5)


def test_training_with_the_pairwise_term_still_learns_calibrated_heads() -> None:
    x, y = xy(600, m=3)
    plain = train_net(x[:450], y[:450], x[450:], y[450:], TINY, seed=0)
    ranked = train_net(
        x[:450], y[:450], x[450:], y[450:], NetSettings(max_epochs=30, patience=5, pairwise=1.0), seed=0
    )
    assert not np.array_equal(plain.weights["w1"], ranked.weights["w1"])
    assert ranked.val_loss < 0.69  # still a calibrated BCE well below chance
