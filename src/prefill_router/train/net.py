"""SharedTrunkNet (DESIGN §6): one MLP trunk, one independent sigmoid head per target.

``d_in -> 256 -> 128 -> M`` with ReLU and dropout 0.3 / 0.2. Training uses torch; a trained
ensemble is kept as stacked numpy arrays (:class:`TrunkEnsemble`) whose forward pass is three
matrix products, so scoring a prompt needs no autograd and the artifact needs no pickle.

The loss is binary cross-entropy averaged over *observed* labels only: a missing label (NaN)
contributes nothing, and a graded label in [0, 1] is a soft target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from prefill_router.errors import DataError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class NetSettings:
    """The published training recipe; every field is a setting."""

    hidden: tuple[int, int] = (256, 128)
    dropout: tuple[float, float] = (0.3, 0.2)
    lr: float = 1e-3  # Adam
    weight_decay: float = 1e-4
    batch_size: int = 512
    max_epochs: int = 150
    patience: int = 15  # epochs without a better validation loss before stopping
    # Weight of a pairwise ranking term added to the training loss: for every prompt and every pair
    # of targets where one is right and the other wrong, -log sigmoid(z_right - z_wrong). It trains
    # the heads to order targets within a prompt, which is what the policy compares; 0 = BCE only.
    # Early stopping and member selection still use the validation BCE.
    pairwise: float = 0.0


@dataclass(frozen=True)
class TrainedMember:
    """One trained net: its weights (numpy) and how training went."""

    weights: dict[str, np.ndarray]  # w1 (d_in, h1), b1, w2 (h1, h2), b2, w3 (h2, M), b3
    val_loss: float  # best masked BCE on the validation rows
    epochs: int  # epochs run (best epoch + patience, or max_epochs)
    best_epoch: int


# ------------------------------------------------------------------------- loss
def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over observed labels; NaN labels are ignored.

    ``labels`` may be graded (soft targets in [0, 1]). Returns 0 when nothing is observed.
    """
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits

    observed = ~torch.isnan(labels)
    target = torch.where(observed, labels, torch.zeros_like(labels))
    losses = binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (losses * observed).sum() / observed.sum().clamp(min=1)


# ---------------------------------------------------------------------- the net
def build_net(d_in: int, n_targets: int, settings: NetSettings) -> torch.nn.Sequential:
    """The SharedTrunkNet as ``nn.Sequential``: trunk = modules 0-5, heads = the last Linear."""
    from torch import nn

    h1, h2 = settings.hidden
    p1, p2 = settings.dropout
    return nn.Sequential(
        nn.Linear(d_in, h1), nn.ReLU(), nn.Dropout(p1),
        nn.Linear(h1, h2), nn.ReLU(), nn.Dropout(p2),
        nn.Linear(h2, n_targets),
    )  # fmt: skip


def train_net(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    settings: NetSettings,
    seed: int,
    on_epoch: Callable[[], None] | None = None,
) -> TrainedMember:
    """Train one SharedTrunkNet with early stopping on the validation rows; best state restored."""
    return train_nets(x_fit, y_fit, x_val, y_val, settings, [seed], on_epoch)[0]


def train_nets(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    settings: NetSettings,
    seeds: Sequence[int],
    on_epoch: Callable[[], None] | None = None,
    initial: dict[str, np.ndarray] | None = None,
) -> list[TrainedMember]:
    """Train one net per seed, all at once; each member ends exactly as :func:`train_net` alone.

    The members' weights are stacked on a leading axis and every step is one batched matrix
    product per layer (an ensemble of small MLPs is otherwise all Python overhead). Each member has
    its own initialisation (``build_net`` under its seed), batch order and dropout masks (two
    generators of its own, drawn with the shapes a lone run draws), Adam state, early stopping and
    best state; the summed loss keeps their gradients independent. A member past its own patience
    is stopped: later epochs still move its (discarded) weights, but never its best state, which
    is what it returns. So every member takes the same steps as alone; its weights equal a lone
    run's up to float32 rounding (vectorised kernels round an element's last bit differently at
    different positions of a 1- and an S-member tensor; tested within 1e-6, same stopping epoch).
    ``initial`` replaces some of the stacked (S, ...) starting weights (a pretrained trunk).
    """
    import torch

    weights = initial_weights(x_fit.shape[1], y_fit.shape[1], settings, seeds)
    for name, value in (initial or {}).items():
        if value.shape != weights[name].shape:
            raise DataError(
                f"initial weights {name!r} have shape {value.shape}; the net needs {weights[name].shape}"
            )
        weights[name] = np.ascontiguousarray(value, dtype=np.float32)
    params = [torch.nn.Parameter(torch.from_numpy(weights[name])) for name in TrunkEnsemble.ARRAYS]
    optimiser = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    xf, yf = torch.from_numpy(x_fit), torch.from_numpy(y_fit.astype(np.float32))
    xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val.astype(np.float32))
    orders = [torch.Generator().manual_seed(seed) for seed in seeds]
    masks = [torch.Generator().manual_seed(_dropout_seed(seed)) for seed in seeds]
    n, s = len(xf), len(seeds)
    best = [p.detach().clone() for p in params]
    best_loss = torch.full((s,), math.inf)
    best_epoch = torch.zeros(s, dtype=torch.long)
    stopped = torch.zeros(s, dtype=torch.bool)  # past its own patience: its best state is final
    epoch = 0
    for epoch in range(1, settings.max_epochs + 1):
        perm = torch.stack([torch.randperm(n, generator=g) for g in orders])  # (S, n)
        for rows in torch.split(perm, settings.batch_size, dim=1):
            optimiser.zero_grad()
            logits = _stacked_forward(params, xf[rows], settings.dropout, masks=masks)  # (S, B, M)
            loss = _member_bce(logits, yf[rows])
            if settings.pairwise:
                loss = loss + settings.pairwise * _member_pairwise(logits, yf[rows])
            torch.autograd.backward(loss.sum())
            optimiser.step()
        with torch.no_grad():
            loss = _member_bce(_stacked_forward(params, xv.expand(s, -1, -1), settings.dropout), yv)
        if on_epoch is not None:
            on_epoch()
        better = (loss < best_loss - 1e-6) & ~stopped
        best_loss = torch.where(better, loss, best_loss)
        best_epoch = torch.where(better, epoch, best_epoch)
        for kept, p in zip(best, params, strict=True):
            kept[better] = p.detach()[better]
        stopped |= epoch - best_epoch >= settings.patience
        if bool(stopped.all()):
            break
    if not torch.isfinite(best_loss).all():
        raise DataError("training diverged: the validation loss is not finite (check the features)")
    return [
        TrainedMember(
            weights={name: best[k][i].numpy().copy() for k, name in enumerate(TrunkEnsemble.ARRAYS)},
            val_loss=float(best_loss[i]),
            epochs=min(epoch, int(best_epoch[i]) + settings.patience),
            best_epoch=int(best_epoch[i]),
        )
        for i in range(s)
    ]


def initial_weights(
    d_in: int, n_targets: int, settings: NetSettings, seeds: Sequence[int]
) -> dict[str, np.ndarray]:
    """Stacked (S, ...) initial weights: ``build_net``'s own initialisation under each seed."""
    import torch

    per_seed = []
    for seed in seeds:
        torch.manual_seed(seed)
        linear = [m for m in build_net(d_in, n_targets, settings) if isinstance(m, torch.nn.Linear)]
        per_seed.append(
            {f"{kind}{i}": (layer.weight.detach().T if kind == "w" else layer.bias.detach()).numpy()
             for i, layer in enumerate(linear, start=1) for kind in ("w", "b")}
        )  # fmt: skip
    return {name: np.stack([w[name] for w in per_seed]).astype(np.float32) for name in TrunkEnsemble.ARRAYS}


def _dropout_seed(seed: int) -> int:
    """The seed of a member's dropout generator: derived from its seed, apart from its batch order's."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


def _stacked_forward(
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    dropout: tuple[float, float],
    *,
    masks: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """(S, B, d_in) -> (S, B, M) logits of every member; dropout when given the members' generators."""
    from torch import bmm
    from torch.nn.functional import relu

    w1, b1, w2, b2, w3, b3 = params
    h = _drop(relu(bmm(x, w1) + b1[:, None]), dropout[0], masks)
    h = _drop(relu(bmm(h, w2) + b2[:, None]), dropout[1], masks)
    return bmm(h, w3) + b3[:, None]


def _drop(h: torch.Tensor, p: float, masks: Sequence[torch.Generator] | None) -> torch.Tensor:
    """Inverted dropout of (S, B, H) activations, member s's mask drawn from ``masks[s]`` alone.

    Each member draws a (B, H) mask from its own generator, as it would trained alone, so its
    masks do not depend on how many members train beside it (a shared generator's would)."""
    import torch

    if masks is None or p == 0:
        return h
    if p >= 1:
        return torch.zeros_like(h)
    keep = 1.0 - p
    drawn = torch.stack([torch.empty(h.shape[1:]).bernoulli_(keep, generator=g) for g in masks])
    return h * drawn / keep


def _member_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(S,) masked BCE of each member (labels broadcast over S when they are (B, M))."""
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits

    labels = labels.expand_as(logits)
    observed = ~torch.isnan(labels)
    target = torch.where(observed, labels, torch.zeros_like(labels))
    losses = binary_cross_entropy_with_logits(logits, target, reduction="none") * observed
    return losses.sum((1, 2)) / observed.sum((1, 2)).clamp(min=1)


def _member_pairwise(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(S,) mean pairwise ranking loss of each member over the pairs of targets one prompt ranks.

    For targets m, k of one prompt with labels y_m > y_k (both observed), the loss is
    ``(y_m - y_k) * softplus(z_k - z_m)`` = -log sigmoid(z_m - z_k) for binary labels.
    """
    import torch
    from torch.nn.functional import softplus

    labels = labels.expand_as(logits)  # (S, B, M)
    observed = ~torch.isnan(labels)
    y = labels.nan_to_num(0.0)
    gap = (y[..., :, None] - y[..., None, :]).clamp(min=0)  # (S, B, M, M): how much m beats k
    gap = gap * (observed[..., :, None] & observed[..., None, :])
    losses = softplus(logits[..., None, :] - logits[..., :, None]) * gap
    return losses.sum((1, 2, 3)) / (gap > 0).sum((1, 2, 3)).clamp(min=1)


#: L2 strengths tried for a new head; the one with the lowest validation loss wins.
HEAD_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def train_head(
    h_fit: np.ndarray,
    y_fit: np.ndarray,
    h_val: np.ndarray,
    y_val: np.ndarray,
    l2_grid: Sequence[float] = HEAD_L2_GRID,
) -> tuple[np.ndarray, np.ndarray, float]:
    """A new sigmoid head on frozen trunk outputs ``h`` (N, h2): returns (w (h2, 1), b (1,), val loss).

    A head is a logistic regression on the trunk's features, so it is fitted to convergence with
    full-batch L-BFGS (mini-batch Adam with early stopping under-trains it on a few hundred rows),
    with the L2 strength chosen on the validation rows. Zero initialisation: deterministic.
    """
    import torch

    xf, yf = torch.from_numpy(h_fit), torch.from_numpy(y_fit.astype(np.float32))
    xv, yv = torch.from_numpy(h_val), torch.from_numpy(y_val.astype(np.float32))
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for l2 in l2_grid:
        head = torch.nn.Linear(h_fit.shape[1], y_fit.shape[1])
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        optimiser = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

        def closure(
            head: torch.nn.Linear = head, optimiser: torch.optim.LBFGS = optimiser, l2: float = l2
        ) -> torch.Tensor:
            optimiser.zero_grad()
            loss = masked_bce(head(xf), yf) + 0.5 * l2 * (head.weight**2).sum()
            torch.autograd.backward(loss)
            return loss

        optimiser.step(closure)  # type: ignore[no-untyped-call]
        with torch.no_grad():
            loss = float(masked_bce(head(xv), yv))
        if math.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, head.weight.detach().numpy().T.copy(), head.bias.detach().numpy().copy())
    if best is None:
        raise DataError("training the new head diverged: the validation loss is not finite")
    return best[1], best[2], best[0]


# --------------------------------------------------------------------- ensemble
@dataclass(frozen=True)
class TrunkEnsemble:
    """The kept members' weights stacked on a leading axis S (numpy, float32)."""

    w1: np.ndarray  # (S, d_in, h1)
    b1: np.ndarray  # (S, h1)
    w2: np.ndarray  # (S, h1, h2)
    b2: np.ndarray  # (S, h2)
    w3: np.ndarray  # (S, h2, M)
    b3: np.ndarray  # (S, M)

    ARRAYS: ClassVar[tuple[str, ...]] = ("w1", "b1", "w2", "b2", "w3", "b3")

    @classmethod
    def stack(cls, members: list[TrainedMember]) -> TrunkEnsemble:
        """Stack the weights of ``members``."""
        return cls(
            **{name: np.stack([m.weights[name] for m in members]).astype(np.float32) for name in cls.ARRAYS}
        )

    @property
    def n_members(self) -> int:
        """S, the number of kept nets."""
        return int(self.w1.shape[0])

    @property
    def n_targets(self) -> int:
        """M, the number of heads."""
        return int(self.w3.shape[2])

    def trunk(self, x: np.ndarray) -> np.ndarray:
        """(S, N, h2) trunk outputs of every member (dropout off)."""
        h = np.maximum(np.einsum("nd,sdh->snh", x, self.w1) + self.b1[:, None], 0)
        out: np.ndarray = np.maximum(h @ self.w2 + self.b2[:, None], 0)
        return out

    def member_probabilities(self, x: np.ndarray) -> np.ndarray:
        """(S, N, M) each member's sigmoid outputs."""
        return _sigmoid(self.trunk(x) @ self.w3 + self.b3[:, None])

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, M) the members' probabilities averaged (the uncalibrated ensemble output)."""
        out: np.ndarray = self.member_probabilities(x).mean(axis=0)
        return out

    def with_head(self, w: np.ndarray, b: np.ndarray) -> TrunkEnsemble:
        """A copy with one more head per member: ``w`` (S, h2, 1), ``b`` (S, 1)."""
        return TrunkEnsemble(
            self.w1, self.b1, self.w2, self.b2,
            np.concatenate([self.w3, w], axis=2), np.concatenate([self.b3, b], axis=1),
        )  # fmt: skip


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    return out
