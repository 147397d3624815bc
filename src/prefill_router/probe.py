"""Stage 3 — layer probes (DESIGN §5): Fisher separability, effective dimensionality, CV-AUC.

For every layer x target, on training rows only:

- ``fisher_j``: trace form ``tr(S_B) / tr(S_W)`` on standardised, PCA-k features (reported, never
  used to select: a few massive-activation dimensions dominate its traces);
- ``fisher_j_lda``: discriminant form ``(wᵀΔμ)² / (wᵀ S_W/N w)`` with ``w = (S_W/N + αI)⁻¹ Δμ``,
  fitted on k-1 folds and evaluated on the held-out fold (out of fold, so not optimistic);
- ``d_eff``: participation ratio ``(Σλ)² / Σλ²`` of the covariance of the layer's raw features;
- ``cv_auc``: k-fold ROC-AUC of an L2 logistic regression on the same standardised PCA-k features.

Standardisation and PCA are fitted inside each fold, per layer, by :func:`fit_pca`: the helper the
router's feature transform (``train/transform.py``) fits its blocks with, so layers are chosen on
the features the router is trained on. The rest is vectorised across layers (and across targets
where the maths allows) with torch's batched linear algebra.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from prefill_router._json import finite_or_none
from prefill_router.data.dataset import LABEL_THRESHOLD
from prefill_router.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

STRATEGIES = ("fisher", "auc", "all-mean")
# A layer counts as collapsed when its d_eff is below this share of the median over layers.
# Relative, because mean-pooled LM layers all sit near d_eff 1 (one massive-activation dimension)
# without being worse predictors; only a layer far below its neighbours is suspect.
COLLAPSED_SHARE = 0.25
DEFAULT_N_LAYERS = 1
#: A standard deviation below this counts as a constant feature (scaled by 1, as scikit-learn does).
CONSTANT_STD = 1e-8


@dataclass(frozen=True)
class ProbeSettings:
    """How the probes are computed (all stated in the report)."""

    pca_k: int = 128  # PCA dimensions after per-layer standardisation
    folds: int = 5  # stratified k-fold for J_lda and CV-AUC
    shrinkage: float = 0.1  # α as a share of the mean eigenvalue of S_W/N
    l2_c: float = 1.0  # inverse L2 strength of the logistic regression (scikit-learn's C)
    label_threshold: float = LABEL_THRESHOLD  # graded labels count as correct at or above this
    seed: int = 0  # the folds, and PCA's randomised solver (as the router's transform)
    newton_steps: int = 12  # Newton iterations of the batched logistic regression
    cv_auc: bool = True  # False skips the logistic CV-AUC (the fisher strategy does not need it)

    def __post_init__(self) -> None:
        # checked on construction, so a bad option fails before any feature is extracted
        for name, low in (("pca_k", 1), ("folds", 2), ("newton_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"The '{name}' parameter must be an int >= {low}; got {value!r} instead.")
        for name in ("shrinkage", "l2_c"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "l2_c" and value == 0):
                expected = "a finite number >= 0" if name == "shrinkage" else "a finite number > 0"
                raise ConfigError(f"The '{name}' parameter must be {expected}; got {value!r} instead.")


@dataclass(frozen=True)
class LayerProbe:
    """The four probes of one layer for one target."""

    layer: int
    fisher_j: float
    fisher_j_lda: float
    d_eff: float
    cv_auc: float


@dataclass
class TargetProbe:
    """Per-layer probes of one target, the layers chosen, and how well J ranks layers."""

    target: str
    n_rows: int
    positive_rate: float
    layers: list[LayerProbe] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    best_by_auc: int = -1
    best_by_j_lda: int = -1
    best_by_j: int = -1
    spearman_j_auc: float = math.nan
    spearman_j_lda_auc: float = math.nan
    auc_lost: float = math.nan  # best CV-AUC minus CV-AUC of the layer J_lda picks
    auc_lost_trace_j: float = math.nan  # the same for the trace form
    skipped: str | None = None


@dataclass
class ProbeReport:
    """Probes of every target; ``to_json`` gives the ``probe --json`` document."""

    settings: dict[str, Any]
    targets: dict[str, TargetProbe]
    skipped_layers: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON (NaN becomes null)."""
        blob = {
            "settings": self.settings,
            "seconds": self.seconds,
            "skipped_layers": {str(k): v for k, v in self.skipped_layers.items()},
            "targets": {k: asdict(v) for k, v in self.targets.items()},
        }
        result: dict[str, Any] = finite_or_none(blob)
        return result

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> ProbeReport:
        """The report :meth:`to_json` wrote (null becomes NaN again)."""

        def number(value: Any) -> float:
            return math.nan if value is None else float(value)

        targets = {}
        for name, spec in blob["targets"].items():
            fields = {k: v for k, v in spec.items() if k != "layers"}
            for key in (
                "positive_rate",
                "spearman_j_auc",
                "spearman_j_lda_auc",
                "auc_lost",
                "auc_lost_trace_j",
            ):
                fields[key] = number(fields[key])
            layers = [
                LayerProbe(
                    int(p["layer"]), *(number(p[k]) for k in ("fisher_j", "fisher_j_lda", "d_eff", "cv_auc"))
                )
                for p in spec["layers"]
            ]
            targets[name] = TargetProbe(**fields, layers=layers)
        skipped = {int(k): str(v) for k, v in blob.get("skipped_layers", {}).items()}
        return cls(blob["settings"], targets, skipped, float(blob.get("seconds", 0.0)))


# -------------------------------------------------------------------- the maths
def fit_pca(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardisation and PCA to ``k`` dims, fitted on training rows: scikit-learn's StandardScaler
    and PCA (its solver choice, ``random_state=seed``), for the probes and the router's transform.

    A constant feature (std < :data:`CONSTANT_STD`) is scaled by 1; k is capped at
    ``max(1, min(k, N - 1, D))``.

    Args:
        x: (N, D) features of the training rows, finite.
    Returns:
        (mean (D,), scale (D,), components (k, D)), float32: the arguments of :func:`apply_pca`.

    Example::

        mean, scale, components = fit_pca(x_train, 128)
        z = apply_pca(x_test, mean, scale, components)  # (n_test, 128)
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ < CONSTANT_STD, 1.0, scaler.scale_)
    k = max(1, min(k, x.shape[0] - 1, x.shape[1]))
    pca = PCA(n_components=k, random_state=seed).fit((x - scaler.mean_) / scale)
    # After standardisation the training mean is 0, so PCA's own centring is a no-op we can drop.
    return scaler.mean_.astype(np.float32), scale.astype(np.float32), pca.components_.astype(np.float32)


def apply_pca(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, components: np.ndarray) -> np.ndarray:
    """(N, D) raw features -> (N, k): ``((x - mean) / scale) @ components.T`` (see :func:`fit_pca`)."""
    # Two numpy lines, not PCA.transform: a loaded router applies them without scikit-learn.
    out: np.ndarray = ((x - mean) / scale) @ components.T
    return out


def fisher_j(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Trace-form Fisher separability per layer: ``tr(S_B) / tr(S_W)``.

    Args:
        x: (L, N, K) features; y: (N,) 0/1 classes.
    Returns:
        (L,) J per layer.
    """
    mu = x.mean(axis=1, keepdims=True)
    between, within = np.zeros(x.shape[0]), np.zeros(x.shape[0])
    for c in (0, 1):
        xc = x[:, y == c]
        mu_c = xc.mean(axis=1, keepdims=True)
        between += xc.shape[1] * ((mu_c - mu) ** 2).sum(axis=(1, 2))
        within += ((xc - mu_c) ** 2).sum(axis=(1, 2))
    return np.asarray(between / within)


def d_eff(x: np.ndarray) -> np.ndarray:
    """Effective dimensionality per layer: participation ratio of the covariance eigenvalues.

    Args:
        x: (L, N, H) features.
    Returns:
        (L,) values in [1, rank].
    """
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t = t - t.mean(dim=1, keepdim=True)
    # (Σλ)² / Σλ² = tr(C)² / ‖C‖_F² for a symmetric C: no eigendecomposition needed.
    cov = (t.transpose(1, 2) @ t).double()  # (L, H, H); the scale cancels in the ratio
    trace = torch.diagonal(cov, dim1=1, dim2=2).sum(-1)
    ratio: np.ndarray = (trace**2 / (cov**2).sum((1, 2)).clamp(min=1e-300)).numpy()
    return ratio


def fisher_j_lda(
    train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor, y_test: torch.Tensor, shrinkage: float
) -> torch.Tensor:
    """Discriminant-form J fitted on ``train`` and evaluated on ``test``, for every layer x target.

    Args:
        train: (L, n, K) features; y_train: (n, T) 0/1 float; test, y_test: the held-out fold.
    Returns:
        (L, T) out-of-fold J_lda.
    """
    import torch

    mu1, mu0 = _class_means(train, y_train)  # (L, T, K)
    within = _within_cov(train, y_train, mu1, mu0)  # (L, T, K, K)
    k = train.shape[-1]
    alpha = shrinkage * within.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    eye = torch.eye(k, dtype=train.dtype)
    w = torch.linalg.solve(within + alpha * eye, (mu1 - mu0)[..., None])[..., 0]  # (L, T, K)
    t1, t0 = _class_means(test, y_test)
    test_within = _within_cov(test, y_test, t1, t0)
    numerator = ((w * (t1 - t0)).sum(-1)) ** 2
    denominator = torch.einsum("ltk,ltkj,ltj->lt", w, test_within, w)
    result: torch.Tensor = numerator / denominator.clamp(min=1e-12)
    return result


def logistic_fit(x: torch.Tensor, y: torch.Tensor, l2_c: float, steps: int) -> torch.Tensor:
    """L2 logistic regressions for every layer x target at once, by Newton's method.

    Minimises ``Σ log-loss + ||w||² / (2C)`` (intercept unpenalised), scikit-learn's objective.
    Written by hand because scikit-learn fits one model at a time: the 1,395 fits of a
    31-layer x 9-target x 5-fold probe take minutes there and seconds batched here.

    Args:
        x: (L, n, K) features; y: (n, T) 0/1 float.
    Returns:
        (L, T, K + 1) weights, intercept last.
    """
    import torch

    n_layers, n, k = x.shape
    xb = torch.cat([x, torch.ones(n_layers, n, 1, dtype=x.dtype)], dim=-1)  # (L, n, K+1)
    w = torch.zeros(n_layers, y.shape[1], k + 1, dtype=x.dtype)
    penalty = torch.full((k + 1,), 1.0 / l2_c, dtype=x.dtype)
    penalty[-1] = 0.0
    ridge = torch.diag(penalty) + 1e-8 * torch.eye(k + 1, dtype=x.dtype)
    for _ in range(steps):
        p = torch.sigmoid(w @ xb.transpose(1, 2))  # (L, T, n)
        grad = (p - y.T[None]) @ xb + penalty * w  # (L, T, K+1)
        weight = p * (1 - p)
        # One batched matmul per target keeps the (L, n, K+1) intermediate small.
        hessian = torch.stack(
            [(xb * weight[:, t, :, None]).transpose(1, 2) @ xb for t in range(y.shape[1])], 1
        )
        step = torch.linalg.solve(hessian + ridge, grad[..., None])[..., 0]
        w = w - step
        if step.abs().max() < 1e-6:
            break
    return w


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (NaN when either side is constant)."""
    from scipy.stats import spearmanr

    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


# ------------------------------------------------------------------- the probe
def probe_layers(
    features: np.ndarray,
    labels: np.ndarray,
    target_names: Sequence[str],
    layer_ids: Sequence[int],
    settings: ProbeSettings | None = None,
) -> ProbeReport:
    """Probe every layer x target.

    Args:
        features: (N, L, H) pooled features of the training rows (any float dtype; memmaps fine).
        labels: (N, T) labels in [0, 1], NaN = not evaluated (those rows are left out per target).
        target_names: T names; layer_ids: L layer indices (for the report).

    Raises:
        DataError: NaN/inf features, fewer rows than folds overall. Targets with one class or too
            few labelled rows are skipped with the reason in ``TargetProbe.skipped``.
    """
    import torch

    settings = settings or ProbeSettings()
    started = time.perf_counter()
    x = np.asarray(features, dtype=np.float32).transpose(1, 0, 2)  # (L, N, H)
    _check_features(x, layer_ids)
    constant = (np.ptp(x, axis=1) == 0).all(axis=1)  # e.g. last-token layer 0 under a chat template
    skipped = {int(layer_ids[int(i)]): "constant across prompts" for i in np.flatnonzero(constant)}
    if constant.all():
        raise DataError("every layer's features are constant across prompts; nothing to probe")
    x, layer_ids = x[~constant], [layer for i, layer in enumerate(layer_ids) if not constant[i]]
    report = ProbeReport(settings=_settings_json(settings, x.shape), targets={}, skipped_layers=skipped)
    d = d_eff(x)
    y_all = (labels >= settings.label_threshold).astype(np.float32)
    observed = ~np.isnan(labels)
    probed: list[int] = []
    for j, name in enumerate(target_names):
        rows = observed[:, j]
        target = TargetProbe(name, int(rows.sum()), float(y_all[rows, j].mean()) if rows.any() else math.nan)
        target.skipped = _skip_reason(y_all[rows, j], settings.folds)
        report.targets[name] = target
        if target.skipped is None:
            probed.append(j)
    # Targets labelled on the same rows share folds and run vectorised; each group uses exactly
    # its targets' own labelled rows.
    groups: dict[bytes, list[int]] = {}
    for j in probed:
        groups.setdefault(np.packbits(observed[:, j]).tobytes(), []).append(j)
    for members in groups.values():
        rows = observed[:, members[0]]
        xt = torch.from_numpy(np.ascontiguousarray(x[:, rows]))
        yt = torch.from_numpy(y_all[rows][:, members])
        j_trace, j_lda, auc = _cross_validate(xt, yt, settings)
        for col, j in enumerate(members):
            _fill_target(
                report.targets[target_names[j]], layer_ids, j_trace[:, col], j_lda[:, col], auc[:, col], d
            )
    report.seconds = time.perf_counter() - started
    return report


def _cross_validate(
    x: torch.Tensor, y: torch.Tensor, settings: ProbeSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L,) trace J on all rows; (L, T) mean out-of-fold J_lda and CV-AUC."""
    import torch
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    n_layers, n, _ = x.shape
    # Folds are shared by the targets; stratify on the one with the rarest class, so that every
    # target with at least `folds` rows of each class sees both classes in every test fold.
    minority = torch.minimum(y.sum(0), (1 - y).sum(0))
    strata = y[:, int(torch.argmin(minority))].numpy()
    folds = StratifiedKFold(settings.folds, shuffle=True, random_state=settings.seed)
    j_lda = np.zeros((settings.folds, n_layers, y.shape[1]))
    auc = np.full((settings.folds, n_layers, y.shape[1]), np.nan)
    whole = _standardise_pca(x, x, settings.pca_k, settings.seed)[0].numpy()
    j_trace = np.stack([fisher_j(whole, y[:, t].numpy()) for t in range(y.shape[1])], axis=1)
    for fold, (train_rows, test_rows) in enumerate(folds.split(np.zeros(n), strata)):
        train, test = _standardise_pca(x[:, train_rows], x[:, test_rows], settings.pca_k, settings.seed)
        j_lda[fold] = fisher_j_lda(train, y[train_rows], test, y[test_rows], settings.shrinkage).numpy()
        truth = y[test_rows].numpy()
        one_class = truth.min(axis=0) == truth.max(axis=0)  # such a fold says nothing about a target
        j_lda[fold, :, one_class] = np.nan
        if not settings.cv_auc:
            continue
        w = logistic_fit(train, y[train_rows], settings.l2_c, settings.newton_steps)
        scores = torch.einsum("lnk,ltk->ltn", test, w[..., :-1]) + w[..., -1:]
        for t in np.flatnonzero(~one_class):
            for layer in range(n_layers):
                auc[fold, layer, t] = roc_auc_score(truth[:, t], scores[layer, t].numpy())
    return j_trace, _fold_mean(j_lda), _fold_mean(auc)


def _fold_mean(values: np.ndarray) -> np.ndarray:
    """Mean over folds (axis 0), ignoring folds that had no verdict (NaN)."""
    counts = (~np.isnan(values)).sum(axis=0)
    total = np.nansum(values, axis=0)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def _standardise_pca(
    train: torch.Tensor, test: torch.Tensor, k: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer, :func:`fit_pca` fitted on ``train`` (L, n, H) and applied to it and to ``test``."""
    import torch

    a, b = train.numpy(), test.numpy()
    fitted = [fit_pca(layer, k, seed) for layer in a]
    reduced_a = np.stack([apply_pca(layer, *f) for layer, f in zip(a, fitted, strict=True)])
    reduced_b = (
        reduced_a
        if test is train
        else np.stack([apply_pca(layer, *f) for layer, f in zip(b, fitted, strict=True)])
    )
    return torch.from_numpy(reduced_a), torch.from_numpy(reduced_b)


def _class_means(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, T, K) class-1 and class-0 means of every layer for every target."""
    n1 = y.sum(0).clamp(min=1)
    n0 = (1 - y).sum(0).clamp(min=1)
    mu1 = (y.T[None] @ x) / n1[None, :, None]
    mu0 = ((1 - y).T[None] @ x) / n0[None, :, None]
    return mu1, mu0


def _within_cov(x: torch.Tensor, y: torch.Tensor, mu1: torch.Tensor, mu0: torch.Tensor) -> torch.Tensor:
    """(L, T, K, K) pooled within-class covariance S_W / N."""
    import torch

    second = x.transpose(1, 2) @ x  # (L, K, K) Σ x xᵀ
    n1 = y.sum(0)
    n0 = (1 - y).sum(0)
    outer1 = torch.einsum("ltk,ltj->ltkj", mu1, mu1) * n1[None, :, None, None]
    outer0 = torch.einsum("ltk,ltj->ltkj", mu0, mu0) * n0[None, :, None, None]
    return (second[:, None] - outer1 - outer0) / x.shape[1]


def _fill_target(
    target: TargetProbe,
    layer_ids: Sequence[int],
    j_trace: np.ndarray,
    j_lda: np.ndarray,
    auc: np.ndarray,
    d: np.ndarray,
) -> None:
    jt = j_trace
    target.layers = [
        LayerProbe(int(layer), float(jt[i]), float(j_lda[i]), float(d[i]), float(auc[i]))
        for i, layer in enumerate(layer_ids)
    ]
    best_auc = int(np.nanargmax(auc)) if np.isfinite(auc).any() else 0
    target.best_by_auc = int(layer_ids[best_auc])
    target.best_by_j = int(layer_ids[int(np.nanargmax(jt))]) if np.isfinite(jt).any() else target.best_by_auc
    target.spearman_j_auc = spearman(jt, auc)
    target.spearman_j_lda_auc = spearman(j_lda, auc)
    target.chosen = select_layers(target, "fisher")
    pick = select_layers(target, "fisher", n=1)[0]
    target.best_by_j_lda = pick
    target.auc_lost = float(auc[best_auc] - auc[list(layer_ids).index(pick)])
    target.auc_lost_trace_j = float(auc[best_auc] - auc[list(layer_ids).index(target.best_by_j)])


def select_layers(
    target: TargetProbe, strategy: str, n: int = DEFAULT_N_LAYERS, *, max_layer: int | None = None
) -> list[int]:
    """Layers a strategy picks for one target, none deeper than ``max_layer`` (None: any).

    ``fisher``: top-n by out-of-fold J_lda; a collapsed layer (d_eff below
    :data:`COLLAPSED_SHARE` of the median d_eff over layers) ranks below any healthy layer whose
    J_lda is within 5% of its own, so d_eff breaks near-ties but never overrides clear evidence;
    ``auc``: top-n by CV-AUC; ``all-mean``: every layer (to be standardised per layer,
    concatenated and PCA-reduced by the trainer).

    Raises:
        ConfigError: unknown strategy or n < 1.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown layer strategy {strategy!r}; expected one of: {', '.join(STRATEGIES)}, or a list"
        )
    if n < 1:
        raise ConfigError(f"The 'n' parameter must be >= 1; got {n} instead.")
    candidates = [p for p in target.layers if max_layer is None or p.layer <= max_layer]
    if not candidates:
        return []
    if strategy == "all-mean":
        return [p.layer for p in candidates]
    scores = layer_scores(target, strategy)
    ranked = sorted(candidates, key=lambda p: -_nan_low(scores[p.layer]))
    return sorted(p.layer for p in ranked[:n])


def layer_scores(target: TargetProbe, strategy: str) -> dict[int, float]:
    """What ``strategy`` ranks one target's layers by: J_lda (a collapsed layer's scaled by 0.95,
    see :func:`select_layers`) for ``fisher``, CV-AUC for ``auc``; NaN where there is no verdict."""
    if strategy == "auc":
        return {p.layer: p.cv_auc for p in target.layers}
    floor = COLLAPSED_SHARE * float(np.nanmedian([p.d_eff for p in target.layers]))
    return {p.layer: p.fisher_j_lda * (0.95 if p.d_eff < floor else 1.0) for p in target.layers}


def shallowest_depth(targets: Sequence[TargetProbe], strategy: str, tolerance: float) -> int:
    """The shallowest layer D such that choosing each target's best layer no deeper than D loses,
    averaged over ``targets``, at most ``tolerance`` of its score (a relative loss; for ``auc``
    of AUC - 0.5, the part above chance).

    The deepest layer any block reads sets the cost of every routing decision (the encoder runs
    up to it), so a router buys most of its latency back by moving its few deep blocks to a
    nearly as good shallower layer. ``tolerance`` 0 keeps every target's best layer.
    """
    base = 0.5 if strategy == "auc" else 0.0
    curves = []
    for target in targets:
        scores = {layer: s - base for layer, s in layer_scores(target, strategy).items() if np.isfinite(s)}
        if scores and max(scores.values()) > 0:
            curves.append(scores)
    layers = sorted({layer for curve in curves for layer in curve})
    if not layers:
        return max((p.layer for t in targets for p in t.layers), default=0)
    for depth in layers:
        losses = [
            1 - max((s for layer, s in curve.items() if layer <= depth), default=0.0) / max(curve.values())
            for curve in curves
        ]
        if float(np.mean(losses)) <= tolerance + 1e-12:
            return depth
    return layers[-1]


# --------------------------------------------------------------------- helpers
def _nan_low(value: float) -> float:
    """Rank NaN (no verdict) below every number."""
    return -math.inf if math.isnan(value) else value


def _check_features(x: np.ndarray, layer_ids: Sequence[int]) -> None:
    if x.shape[0] != len(layer_ids):
        raise DataError(f"features hold {x.shape[0]} layers but {len(layer_ids)} layer ids were given")
    bad = ~np.isfinite(x).all(axis=(1, 2))
    if bad.any():
        raise DataError(f"features of layer {layer_ids[int(np.argmax(bad))]} contain NaN or inf")


def _skip_reason(y: np.ndarray, folds: int) -> str | None:
    if len(y) == 0:
        return "no labelled training rows"
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if positives == 0 or negatives == 0:
        return f"only one class in the training rows ({positives} correct, {negatives} wrong)"
    if min(positives, negatives) < folds:
        return f"too few rows of one class for {folds} folds ({positives} correct, {negatives} wrong)"
    return None


def _settings_json(settings: ProbeSettings, shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        **asdict(settings),
        "pca_k": min(settings.pca_k, shape[1] - 1, shape[2]),
        "d_eff_on": "centred raw features (all training rows)",
        "fisher_j_on": "standardised PCA-k features (all training rows)",
        "fisher_j_lda_on": "standardised PCA-k features, out of fold (mean over folds)",
        "cv_auc_on": "standardised PCA-k features, L2 logistic regression, mean ROC-AUC over folds",
    }
