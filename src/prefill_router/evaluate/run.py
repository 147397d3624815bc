"""Evaluation against the oracle and the baselines (DESIGN §8): on a fixed split, or grouped K-fold CV.

Every router, learned baseline and fixed router is scored on the same rows by the same policy and
cost code: its budget-policy curve (μ from ∞ to 0), its argmax point (μ = 0), gap captured at fixed
cost savings, AIQ, per-target AUC / Brier / ECE, with 95% bootstrap intervals. Under ``cv`` every
prompt is scored out of fold, and routers are compared by paired bootstrap differences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from prefill_router._bootstrap import check_n_boot
from prefill_router._json import finite_or_none
from prefill_router.data.costs import check_priced, cost_matrix, output_token_estimates
from prefill_router.data.dataset import RoutingDataset
from prefill_router.data.singles import target_means
from prefill_router.data.splits import prompt_groups
from prefill_router.errors import ConfigError, DataError
from prefill_router.evaluate import baselines as bl
from prefill_router.evaluate.intervals import (
    auc_difference,
    bootstrap_rows,
    curve_difference,
    paired_difference,
    routing_intervals,
    savings_intervals,
)
from prefill_router.evaluate.metrics import (
    ACCURACY_MARGINS,
    Yardstick,
    aiq,
    apgr,
    best_single,
    curve_points,
    gap_captured_at_savings,
    mean_auc,
    oracle_choice,
    outcome,
    savings_at_accuracy,
    target_quality,
)
from prefill_router.policy import Curve, Router, choose, policy_curve
from prefill_router.train import (
    EncoderIdentity,
    LayerFeatures,
    TrainSettings,
    check_training_data,
    fit_router,
)
from prefill_router.train.probe_cache import ProbeCache

if TYPE_CHECKING:
    from prefill_router.encode import Encoder, FeatureStore
    from prefill_router.policy import QualityFloor

SAVINGS_LEVELS = (0.5, 0.7431)
ROUTER_KEY = "prefill"
#: The baselines that fit a SharedTrunkNet on the training rows (so need what a router fit needs).
_REFITTING = ("trunk-embed", "layer0")


@dataclass
class FeatureSet:
    """Features of every row of a dataset: the router's encoders' (all layers; the first is the
    primary one, whose layer 0 the ``layer0`` baseline reads) and MiniLM sentence embeddings."""

    encoders: list[LayerFeatures]
    embed: np.ndarray | None  # (N, 384) or None when no embedding baseline runs
    identities: list[EncoderIdentity]
    embed_identity: EncoderIdentity | None = None

    @property
    def encoder(self) -> LayerFeatures:
        """The primary encoder's features."""
        return self.encoders[0]

    @property
    def identity(self) -> EncoderIdentity:
        """The primary encoder's identity."""
        return self.identities[0]

    def rows(self, rows: np.ndarray) -> FeatureSet:
        """The same features restricted to ``rows``."""
        encoders = [LayerFeatures(np.asarray(f.values[rows]), f.poolings, f.layers) for f in self.encoders]
        return replace(self, encoders=encoders, embed=None if self.embed is None else self.embed[rows])


@dataclass
class Predictions:
    """Probabilities of every scored router on the evaluation rows, in target-column order."""

    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    knn_k: list[int] = field(default_factory=list)


def feature_set(
    encoder: Encoder | Sequence[Encoder],
    prompts: Sequence[str],
    store: FeatureStore,
    *,
    need_embed: bool,
    on_progress: Callable[[int, int], None] | None = None,
) -> FeatureSet:
    """Every layer and pooling of each encoder (cached, as ``encode`` stores them) and, when the
    embedding baselines run, L2-normalised MiniLM sentence embeddings (mean of its last layer)."""
    from prefill_router.encode import Encoder, extract_features

    encoders = [encoder] if isinstance(encoder, Encoder) else list(encoder)
    stored = [extract_features(e, prompts, store, on_progress=on_progress) for e in encoders]
    features = FeatureSet(
        [LayerFeatures(s.features, s.key.poolings, s.key.layers) for s in stored],
        None,
        [EncoderIdentity.of(e) for e in encoders],
    )
    if need_embed:
        embedder = Encoder(bl.EMBED_ENCODER, dtype="float32", cache_dir=store.root)
        embedded = extract_features(embedder, prompts, store, layers=[embedder.n_layers], poolings="mean")
        e = np.asarray(embedded.features[:, 0, 0], dtype=np.float32)
        features.embed = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        features.embed_identity = bl.embed_identity(bl.EMBED_ENCODER, embedder.weights_sha256)
    return features


#: Called with a short description of the step about to run.
StepCallback = Callable[[str], None]


def predict_split(
    router: Router | None,
    train: RoutingDataset,
    evaluation: RoutingDataset,
    f_train: FeatureSet,
    f_eval: FeatureSet,
    baselines: Sequence[str],
    settings: TrainSettings,
    *,
    seed: int = 0,
    on_step: StepCallback | None = None,
    probe_cache: ProbeCache | None = None,
) -> Predictions:
    """Fit (when ``router`` is None) or apply the router, fit the baselines on ``train``; predict
    ``evaluation``. ``probe_cache`` keeps the fit's layer probes for later refits on the same rows."""
    step = on_step or (lambda _: None)
    out = Predictions()
    _check_same_targets(train.target_names, evaluation.target_names)
    train = train.select(targets=evaluation.target_names)  # baselines' columns follow the evaluation's
    if router is None:
        step("fitting the router")
        model, _ = fit_router(train, f_train.encoders, f_train.identities, settings, probe_cache=probe_cache)
        router = Router.of(model)
    out.probabilities[ROUTER_KEY] = _columns(
        router.predict_proba_features(f_eval.encoders), router.targets, evaluation
    )
    y_train = train.labels
    for name in baselines:
        step(f"baseline {name}")
        if name == "random":
            p = bl.random_probabilities(evaluation.n_prompts, len(evaluation.targets), seed)
        elif name == "layer0":
            p = bl.trunk_probabilities(
                train, f_train.encoder, f_eval.encoder, (0,), f_train.identity, settings
            )
        else:
            e_train, e_eval, identity = _embeddings(f_train, f_eval)
            if name == "knn-embed":
                p, k = bl.knn_probabilities(e_train, y_train, e_eval, seed=seed)
                out.knn_k.append(k)
            elif name == "logreg-embed":
                p = bl.logreg_probabilities(e_train, y_train, e_eval)
            else:
                one = LayerFeatures(e_train[:, None, None, :], ("mean",), (0,))
                two = LayerFeatures(e_eval[:, None, None, :], ("mean",), (0,))
                p = bl.trunk_probabilities(train, one, two, (0,), identity, settings)
        out.probabilities[name] = p
    return out


def predict_rows(
    router: Router | None,
    dataset: RoutingDataset,
    features: FeatureSet,
    train_rows: np.ndarray,
    eval_rows: np.ndarray,
    baselines: Sequence[str],
    settings: TrainSettings,
    *,
    seed: int = 0,
    on_step: StepCallback | None = None,
    probe_cache: ProbeCache | None = None,
) -> tuple[RoutingDataset, Predictions]:
    """:func:`predict_split` on row indices of one dataset: (the evaluation rows, their predictions)."""
    evaluation = dataset.take(eval_rows)
    predictions = predict_split(
        router, dataset.take(train_rows), evaluation, features.rows(train_rows), features.rows(eval_rows),
        baselines, settings, seed=seed, on_step=on_step, probe_cache=probe_cache,
    )  # fmt: skip
    return evaluation, predictions


def cross_validated(
    dataset: RoutingDataset,
    features: FeatureSet,
    baselines: Sequence[str],
    settings: TrainSettings,
    folds: int,
    *,
    seed: int = 0,
    on_step: StepCallback | None = None,
    probe_cache: ProbeCache | None = None,
) -> Predictions:
    """Out-of-fold probabilities for every row: grouped K-fold (equal normalised prompts share a fold).

    ``probe_cache`` keeps each fold's layer probes, so a second run (another recipe, another
    baseline set) skips them."""
    step = on_step or (lambda _: None)
    result = Predictions()
    for fold, (train_rows, test_rows) in enumerate(cv_folds(dataset, folds, seed)):

        def fold_step(text: str, fold: int = fold) -> None:
            step(f"fold {fold + 1}/{folds}: {text}")

        part = predict_split(
            None, dataset.take(train_rows), dataset.take(test_rows), features.rows(train_rows),
            features.rows(test_rows), baselines, settings, seed=seed + fold, on_step=fold_step,
            probe_cache=probe_cache,
        )  # fmt: skip
        for name, p in part.probabilities.items():
            result.probabilities.setdefault(name, np.full(dataset.labels.shape, np.nan))[test_rows] = p
        result.knn_k += part.knn_k
    return result


def cv_folds(dataset: RoutingDataset, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, test rows) of each fold of the grouped K-fold :func:`cross_validated` runs:
    equal normalised prompts share a fold; rows sorted.

    Raises:
        ConfigError: ``folds`` below 2 or above the number of distinct prompts.
    """
    from sklearn.model_selection import GroupKFold

    groups = prompt_groups(dataset.prompts)
    n_groups = len(np.unique(groups))
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= n_groups:
        raise ConfigError(
            f"The 'folds' parameter must be between 2 and the number of distinct prompts ({n_groups}); "
            f"got {folds} instead."
        )
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        (np.sort(train), np.sort(test))
        for train, test in splitter.split(np.zeros(dataset.n_prompts), groups=groups)
    ]


@dataclass(frozen=True)
class EvaluationPlan:
    """The rows an evaluation uses: a split's (``train_rows``, ``eval_rows``), or the CV ``folds``."""

    train_rows: np.ndarray | None = None
    eval_rows: np.ndarray | None = None
    folds: list[tuple[np.ndarray, np.ndarray]] | None = None


def plan_evaluation(
    router: Router,
    dataset: RoutingDataset,
    *,
    split: str = "test",
    cv: int | None = None,
    baselines: Sequence[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
) -> EvaluationPlan:
    """The rows of an evaluation, after every check it can fail without features: run it before
    encoding anything, so a bad option or dataset fails in seconds, not after the encoder's minutes.

    Checks: the router's targets are the data's; the split exists beside a ``train`` split and
    has labelled rows (or the folds are in range); every training set that a model is fitted on
    (each fold's router, the refitting baselines) can be fitted; some evaluation rows are complete
    (every target labelled and costed); the router has every price (split mode solves budgets on
    its validation rows); ``n_boot`` >= 1.

    Raises:
        DataError: the data cannot be evaluated this way (the message says why and what to do).
        ConfigError: a bad option value (folds, n_boot).
    """
    source = dataset.provenance.get("path")
    check_n_boot(n_boot)
    _check_router_targets(router.targets, dataset.target_names, source)
    if cv is not None:
        folds = cv_folds(dataset, cv, seed)
        for k, (train_rows, _) in enumerate(folds):
            _check_fit_rows(dataset, train_rows, f"fold {k + 1} of {cv}'s training rows")
        _check_some_complete(dataset, dataset, f"the {dataset.n_prompts} rows")
        return EvaluationPlan(folds=folds)
    train_rows, eval_rows = split_rows(dataset, split)
    if any(name in _REFITTING for name in baselines):
        _check_fit_rows(dataset, train_rows, "the 'train' split (the baselines fit on it)")
    _check_some_complete(dataset, dataset.take(eval_rows), f"split {split!r}")
    check_priced(router.target_info, source="router")
    return EvaluationPlan(train_rows=train_rows, eval_rows=eval_rows)


def split_rows(dataset: RoutingDataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(the ``train`` rows the baselines fit on, the rows of ``split`` to evaluate).

    Raises:
        DataError: no such split, no ``train`` split, or no labelled row in ``split``.
    """
    source, names = dataset.provenance.get("path"), dataset.split_names()
    if split not in names:
        raise DataError(
            f"no split {split!r}; the splits are {', '.join(names) or 'none'} (or use --cv K)", source=source
        )
    if "train" not in names:
        raise DataError(
            "the baselines train on the 'train' split, which this dataset lacks (use --cv K)", source=source
        )
    eval_rows = np.flatnonzero(dataset.splits == split)
    labelled = ~np.isnan(dataset.labels[eval_rows]).all(axis=1)
    if not labelled.any():
        raise DataError(f"split {split!r} has no labelled rows", source=source)
    return np.flatnonzero(dataset.splits == "train"), eval_rows


def _check_router_targets(router: Sequence[str], data: Sequence[str], source: str | None) -> None:
    if sorted(router) != sorted(data):
        extra = sorted(set(data) - set(router))
        missing = sorted(set(router) - set(data))
        raise DataError(
            f"the data's targets differ from the router's (only in the data: {', '.join(extra) or 'none'}; "
            f"only in the router: {', '.join(missing) or 'none'}); evaluate on data with the router's "
            "targets, or refit",
            source=source,
        )


def _check_fit_rows(dataset: RoutingDataset, rows: np.ndarray, what: str) -> None:
    try:
        check_training_data(dataset.take(rows))
    except DataError as exc:
        raise DataError(f"{what}: {exc}", source=dataset.provenance.get("path")) from exc


def _check_some_complete(dataset: RoutingDataset, evaluation: RoutingDataset, what: str) -> None:
    costs = eval_costs(dataset, evaluation)
    complete = ~np.isnan(evaluation.labels).any(axis=1) & np.isfinite(costs).all(axis=1)
    if not complete.any():
        raise DataError(
            f"no row of {what} has every target labelled and costed (an observed cost or a price); "
            "nothing to route",
            source=dataset.provenance.get("path"),
        )


def score(
    evaluation: RoutingDataset,
    predictions: Predictions,
    costs: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The evaluation JSON: yardstick, singles, every router's metrics, paired differences."""
    complete = ~np.isnan(evaluation.labels).any(axis=1) & np.isfinite(costs).all(axis=1)
    if not complete.any():
        raise DataError("no evaluation row has every target labelled and priced; nothing to route")
    y, c, names = evaluation.labels[complete], costs[complete], evaluation.target_names
    yard = Yardstick.of(y, c, names)
    resamples = bootstrap_rows(len(y), n_boot, seed)
    result: dict[str, Any] = {
        "n_rows": int(evaluation.n_prompts),
        "n_routed": int(complete.sum()),
        "oracle": {
            "accuracy": yard.oracle_accuracy,
            "cost": yard.oracle_cost,
            "cost_savings": yard.savings(yard.oracle_cost),
        },
        "best_single": {
            "name": yard.best_single,
            "accuracy": yard.best_single_accuracy,
            "cost": yard.best_single_cost,
        },
        "most_expensive": {"name": yard.max_cost_target, "cost": yard.max_cost},
        "singles": {name: _point(np.full(len(y), j), y, c, yard) for j, name in enumerate(names)},
    }
    cheapest = np.argmin(c, axis=1)
    curves = {
        name: policy_curve(p[complete], c, y, "budget") for name, p in predictions.probabilities.items()
    }
    for name, p in predictions.probabilities.items():
        result[name] = _score_router(p, evaluation.labels, complete, c, yard, resamples, names, curves[name])
    result["cheapest"] = _fixed_router(cheapest, y, c, yard, resamples)
    result["oracle_router"] = _fixed_router(oracle_choice(y, c), y, c, yard, resamples)
    if ROUTER_KEY in predictions.probabilities:
        result["paired"] = _paired(predictions, evaluation.labels, complete, c, resamples, curves)
    return finite_or_none(result)  # type: ignore[no-any-return]


def budget_adherence(
    router: Router,
    evaluation: RoutingDataset,
    predictions: Predictions,
    costs: np.ndarray,
    shares: Sequence[float] = (0.25, 0.5, 0.75),
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Budgets solved on the router's calibration rows, then applied to the evaluation rows.

    Each budget is a share of the most expensive target's mean cost on the calibration rows, in
    USD per request; the result gives μ, the budget, and the achieved cost and accuracy on the
    evaluation rows with 95% bootstrap intervals: does the solver keep its promise out of sample?
    A share below what the cheapest routing spends (targets priced close together) has no μ and
    is left out, rather than failing an evaluation at its very end.
    """
    from prefill_router.policy import Budget, RouteRequest, achieved

    if router.calibration is None:
        return []
    complete = ~np.isnan(evaluation.labels).any(axis=1) & np.isfinite(costs).all(axis=1)
    p, y, c = predictions.probabilities[ROUTER_KEY][complete], evaluation.labels[complete], costs[complete]
    rows = []
    for share in shares:
        try:
            plan = router.plan(RouteRequest(budget=Budget(share_of_max=share)))
        except ConfigError:  # below the cheapest routing: no μ meets it
            continue
        assert plan.solution is not None
        outcome_ = achieved(plan.choose(p, c, router.targets), y, c, n_boot=n_boot, seed=seed)
        rows.append({"share_of_max": share, **plan.solution.to_json(), "achieved": outcome_})
    return rows


def floor_adherence(
    router: Router,
    evaluation: RoutingDataset,
    predictions: Predictions,
    costs: np.ndarray,
    floors: Sequence[QualityFloor],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Quality floors certified on the router's calibration rows, then kept (or not) on the evaluation
    rows: the certificate, the accuracy and cost achieved there with 95% bootstrap intervals, the
    floor as an accuracy on those rows, and whether the routing stayed above it.

    A router without labelled calibration rows, or a floor it cannot certify at all (ConfigError),
    gives a row with the reason instead.
    """
    from prefill_router.policy import RouteRequest, achieved

    complete = ~np.isnan(evaluation.labels).any(axis=1) & np.isfinite(costs).all(axis=1)
    p, y, c = predictions.probabilities[ROUTER_KEY][complete], evaluation.labels[complete], costs[complete]
    rows: list[dict[str, Any]] = []
    for floor in floors:
        try:
            plan = router.plan(RouteRequest(floor=floor))
        except ConfigError as exc:
            rows.append({"floor": floor.to_json(), "error": str(exc)})
            continue
        certificate = plan.certificate
        assert certificate is not None
        got = achieved(plan.choose(p, c, router.targets), y, c, n_boot=n_boot, seed=seed)
        reference = router.target_index(str(certificate.reference))
        reference_accuracy = float(y[:, reference].mean())
        wanted = floor.accuracy_given(reference_accuracy)
        reference_cost = float(c[:, reference].mean())
        rows.append({
            "floor": floor.to_json(), "certificate": certificate.to_json(), "achieved": got,
            "reference_accuracy": reference_accuracy, "floor_accuracy": wanted,
            "kept": got["accuracy"] >= wanted - 1e-12, "verdict": _verdict(got, wanted),
            "reference_cost": reference_cost,
            "savings": 1 - got["cost"] / reference_cost if reference_cost > 0 else 0.0, "rows": len(y),
        })  # fmt: skip
    return rows


def _verdict(achieved: dict[str, Any], floor: float) -> str:
    """kept (accuracy at or above the floor), within noise (below it, but the floor is inside the
    accuracy's 95% interval: these rows cannot tell), or missed (the whole interval is below)."""
    if achieved["accuracy"] >= floor - 1e-12:
        return "kept"
    return "within noise" if achieved["accuracy_ci"][1] >= floor else "missed"


def eval_costs(dataset: RoutingDataset, evaluation: RoutingDataset) -> np.ndarray:
    """(N_eval, M) USD: observed costs, else prices with output lengths from the training rows."""
    return cost_matrix(evaluation, output_token_estimates(dataset, split="train"))


# ----------------------------------------------------------------------- pieces
def _score_router(
    p_all: np.ndarray,
    y_all: np.ndarray,
    complete: np.ndarray,
    c: np.ndarray,
    yard: Yardstick,
    resamples: np.ndarray,
    names: Sequence[str],
    curve: Curve,
) -> dict[str, Any]:
    quality = target_quality(p_all, y_all, names)
    p, y = p_all[complete], y_all[complete]
    points = _distinct(curve_points(curve.accuracy, curve.cost, yard))
    argmax = choose(p, c, "budget", 0.0)
    return {
        "auc_mean": mean_auc(quality),
        "targets": quality,
        "argmax": _point(argmax, y, c, yard) | {"ci": routing_intervals(argmax, y, c, yard, resamples)},
        "curve": points,
        "gap_captured_at_savings": gap_captured_at_savings(points, SAVINGS_LEVELS),
        "aiq": aiq(curve.cost, curve.accuracy, _cost_range(c)),
        "apgr": _two_target_apgr(curve.choices, curve.accuracy, y),
        **_savings(curve.choices, y, c, yard, resamples),
    }


def _two_target_apgr(choices: np.ndarray, accuracy: np.ndarray, y: np.ndarray) -> float | None:
    """RouteLLM's APGR along the curve, for a two-target pool (None otherwise)."""
    if y.shape[1] != 2:
        return None
    means = target_means(y)
    strong = best_single(y)[0]
    share = (choices == strong).mean(axis=1)
    return apgr(share, accuracy, float(means[1 - strong]), float(means[strong]))


def _fixed_router(
    choice: np.ndarray, y: np.ndarray, c: np.ndarray, yard: Yardstick, resamples: np.ndarray
) -> dict[str, Any]:
    point = _point(choice, y, c, yard)
    return {
        "auc_mean": None,
        "argmax": point | {"ci": routing_intervals(choice, y, c, yard, resamples)},
        "curve": [point],
        "gap_captured_at_savings": gap_captured_at_savings([point], SAVINGS_LEVELS),
        "aiq": aiq(np.array([point["cost"]]), np.array([point["accuracy"]]), _cost_range(c)),
        **_savings(choice[None], y, c, yard, resamples),
    }


def _savings(
    choices: np.ndarray, y: np.ndarray, c: np.ndarray, yard: Yardstick, resamples: np.ndarray
) -> dict[str, Any]:
    """``savings_at_best_accuracy`` and ``savings_within`` (1 and 2 points) of a curve's choices.

    Each entry: the largest saving against the best single target among the curve points at least
    that accurate (None when no point is), its 95% bootstrap interval, ``reached`` (the share of
    resamples where some point was accurate enough), and the chosen point's accuracy, cost and
    ``share_to_best`` (the share of calls still sent to the best single target).
    """
    rows = np.arange(len(y))
    accuracy = y[rows, choices].mean(axis=1)
    cost = c[rows, choices].mean(axis=1)
    best = best_single(y)[0]  # the column the yardstick names
    intervals = savings_intervals(choices, y, c, resamples)
    entries = {}
    for margin in ACCURACY_MARGINS:
        index, saving = savings_at_accuracy(
            accuracy, cost, yard.best_single_accuracy, yard.best_single_cost, margin
        )
        entry: dict[str, Any] = {"savings": saving, **intervals[margin]}
        if index is not None:
            entry |= {
                "accuracy": float(accuracy[index]),
                "cost": float(cost[index]),
                "share_to_best": float((choices[index] == best).mean()),
            }
        entries[margin] = entry
    return {
        "savings_at_best_accuracy": entries[0.0],
        "savings_within": {f"{round(m * 100)}": entries[m] for m in ACCURACY_MARGINS if m > 0},
    }


def _point(choice: np.ndarray, y: np.ndarray, c: np.ndarray, yard: Yardstick) -> dict[str, Any]:
    accuracy, cost = outcome(choice, y, c)
    return {
        "accuracy": accuracy,
        "cost": cost,
        "gap_captured": yard.gap(accuracy),
        "cost_savings": yard.savings(cost),
    }


def _paired(
    predictions: Predictions,
    y_all: np.ndarray,
    complete: np.ndarray,
    c: np.ndarray,
    resamples: np.ndarray,
    curves: dict[str, Curve],
) -> dict[str, Any]:
    """Router minus each baseline: mean AUC, argmax accuracy and AIQ, paired over the same prompts."""
    ours = predictions.probabilities[ROUTER_KEY]
    y = y_all[complete]
    ours_correct = y[np.arange(len(y)), choose(ours[complete], c, "budget", 0.0)]
    out = {}
    for name, p in predictions.probabilities.items():
        if name == ROUTER_KEY:
            continue
        theirs_correct = y[np.arange(len(y)), choose(p[complete], c, "budget", 0.0)]
        out[name] = {
            "auc_mean": auc_difference(ours[complete], p[complete], y, resamples[:200]),
            "argmax_accuracy": paired_difference(ours_correct, theirs_correct, resamples),
            "aiq": curve_difference(
                curves[ROUTER_KEY].choices, curves[name].choices, y, c, resamples[:200], _cost_range(c)
            ),
        }
    return out


def _distinct(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for point in points:
        key = (point["accuracy"], point["cost"])
        if key not in seen:
            seen.add(key)
            out.append(point)
    return out


def _cost_range(c: np.ndarray) -> tuple[float, float]:
    means = c.mean(axis=0)
    return float(means.min()), float(means.max())


def _columns(p: np.ndarray, router_targets: Sequence[str], evaluation: RoutingDataset) -> np.ndarray:
    """Reorder a router's columns to the evaluation data's targets (which must be the same set)."""
    _check_same_targets(router_targets, evaluation.target_names)
    order = [list(router_targets).index(name) for name in evaluation.target_names]
    return p[:, order]


def _check_same_targets(ours: Sequence[str], theirs: Sequence[str]) -> None:
    if sorted(ours) != sorted(theirs):
        missing = sorted(set(ours) ^ set(theirs))
        raise DataError(
            f"the data's targets differ from the router's (not in both: {', '.join(missing)}); "
            "evaluate on data with exactly the router's targets, or refit"
        )


def _embeddings(f_train: FeatureSet, f_eval: FeatureSet) -> tuple[np.ndarray, np.ndarray, EncoderIdentity]:
    if f_train.embed is None or f_eval.embed is None or f_train.embed_identity is None:
        raise DataError("embedding baselines need MiniLM embeddings; none were computed")
    return f_train.embed, f_eval.embed, f_train.embed_identity
