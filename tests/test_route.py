"""Routing one request (Router.costs / solve_budget / route) and the `route` and `evaluate` commands."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from prefill_router import Router
from prefill_router.cli import run
from prefill_router.data.dataset import RoutingDataset, TargetInfo
from prefill_router.errors import ConfigError, UnknownTargetError
from prefill_router.policy import DEFAULT_KNOBS, Budget, QualityFloor, RouteRequest, choose, format_usd
from prefill_router.train import EncoderIdentity, LayerFeatures, fit_router, read_artifact
from prefill_router.train.calibration import apply_temperature
from prefill_router.train.fit import validation_split
from tests.test_evaluate_run import NAMES, PRICES, SETTINGS, SYNTHETIC, planted

#: Targets of the tiny-encoder router: each is right on its topic; the poem model is the cheapest.
TARGETS = ("math-model", "poem-model", "code-model")
TOPIC_PRICES = ((2.0, 45.0), (0.1, 0.3), (3.0, 60.0))
TOPIC_OUTPUT_TOKENS = (300.0, 200.0, 400.0)
PROMPTS = ("math question: blue square number", "poem question: sky colour", "code question: python function")


pytestmark = pytest.mark.usefixtures("one_core")


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long paths at the console width


# ============================================================ a router on synthetic features
@pytest.fixture(scope="module")
def synthetic() -> tuple[Router, RoutingDataset, LayerFeatures]:
    """A router fitted on every row of the planted problem; output lengths 1x, 2x, 3x a base (median 2x)."""
    dataset, features = planted(n=300)
    base = np.array([100.0, 200.0, 400.0])
    output_tokens = base[None, :] * (1 + np.arange(300) % 3)[:, None]
    dataset = RoutingDataset(
        dataset.prompt_ids, dataset.prompts, dataset.tasks, dataset.splits, dataset.labels, dataset.targets,
        output_tokens=output_tokens,
    )  # fmt: skip
    model, _ = fit_router(dataset, features.encoder, SYNTHETIC, SETTINGS)
    router = Router.of(model)
    return router, dataset, features.encoder


def calibration_matrices(router: Router) -> tuple[np.ndarray, np.ndarray]:
    """(P, C) on the router's calibration rows, C by hand from their token counts and the prices."""
    p = apply_temperature(router.ensemble.probabilities(router.calibration.x), router.temperatures)
    tokens = np.asarray(router.calibration.tokens, dtype=float)
    price_in = np.array([t.input_usd_per_mtok for t in router.target_info])
    price_out = np.array([t.output_usd_per_mtok for t in router.target_info])
    return p, (tokens[:, None] * price_in + router.output_tokens * price_out) / 1e6


def mean_cost(p: np.ndarray, c: np.ndarray, mu: float) -> float:
    return float(c[np.arange(len(c)), choose(p, c, "budget", mu)].mean())


def test_costs_are_list_prices_times_estimated_tokens(
    synthetic: tuple[Router, RoutingDataset, LayerFeatures],
) -> None:
    router, _, _ = synthetic
    # ceil(UTF-8 bytes / 4): 13 bytes -> 4, 6 -> 2, 8 characters of 3 bytes -> 6, 4001 -> 1001
    prompts = ["Hello, world!", "héllo", "日本語のテキスト", "x" * 4001]
    tokens = np.array([4, 2, 6, 1001])
    assert router.output_tokens.tolist() == [200.0, 400.0, 800.0]  # the median of each target's lengths
    price_in, price_out = np.array(PRICES).T  # USD per million tokens
    expected = (tokens[:, None] * price_in + np.array([200, 400, 800]) * price_out) / 1e6
    assert expected[0].tolist() == pytest.approx([6.04e-5, 1.204e-3, 2.404e-2])
    np.testing.assert_allclose(router.costs(prompts), expected, rtol=1e-12)
    assert router.costs([]).shape == (0, 3)


def test_an_unpriced_target_cannot_be_costed(synthetic: tuple[Router, RoutingDataset, LayerFeatures]) -> None:
    router, _, _ = synthetic
    unpriced = Router(
        encoder=router.encoder_identity, transform=router.transform, ensemble=router.ensemble,
        temperatures=router.temperatures, output_tokens=router.output_tokens,
        targets=(router.target_info[0], TargetInfo("medium"), TargetInfo("large", 10.0, None)),
        calibration=router.calibration,
    )  # fmt: skip
    message = (
        r"^targets without a price: medium, large; add their prices to the dataset \(a price file when "
        r"importing\) and refit$"
    )
    with pytest.raises(ConfigError, match=message):
        unpriced.costs(["Hello"])
    with pytest.raises(ConfigError, match=message):
        unpriced.solve_budget(Budget(usd_per_request=1.0))


def test_fit_stores_the_validation_rows_for_budgets(
    synthetic: tuple[Router, RoutingDataset, LayerFeatures],
) -> None:
    router, dataset, features = synthetic
    _, val_rows = validation_split(dataset.prompts, SETTINGS.val_share, SETTINGS.seed)
    assert router.calibration is not None
    assert router.calibration.x.shape == (len(val_rows), router.transform.n_features)
    np.testing.assert_allclose(
        router.calibration.x, router.transform.transform(features)[val_rows], rtol=1e-6
    )
    expected_tokens = [math.ceil(len(text.encode()) / 4) for text in dataset.prompts[val_rows]]
    assert router.calibration.tokens.tolist() == expected_tokens
    assert router.to_json()["calibration"] == {
        "rows": len(val_rows),
        "labels": True,
        "independent": False,
        "source": "fit",
    }  # calibration_share 0: the validation rows serve, and the JSON says they are not independent


def test_fit_with_fisher_records_the_probes(synthetic: tuple[Router, RoutingDataset, LayerFeatures]) -> None:
    (probe,) = synthetic[0].info["probe"]  # one encoder, one pooling
    assert (probe["encoder"], probe["pooling"]) == (0, "mean")
    assert probe["layers"] == [0, 1, 2]
    assert probe["chosen"] == {name: [1] for name in NAMES}  # layer 1 holds the signal
    for name in NAMES:
        j = probe["fisher_j_lda"][name]
        assert len(j) == 3 and j[1] == max(j)


def test_a_budget_is_met_on_the_calibration_rows(
    synthetic: tuple[Router, RoutingDataset, LayerFeatures],
) -> None:
    router, _, _ = synthetic
    p, c = calibration_matrices(router)
    cheapest, most_likely = float(c.min(axis=1).mean()), mean_cost(p, c, 0.0)
    assert cheapest < most_likely
    usd = (cheapest + most_likely) / 2
    solution = router.solve_budget(Budget(usd_per_request=usd))
    assert solution.mu > 0 and not solution.saturated and solution.budget_usd == usd
    assert solution.cost == pytest.approx(mean_cost(p, c, solution.mu), rel=1e-12)
    assert mean_cost(p, c, solution.mu) <= usd
    assert mean_cost(p, c, 0.999 * solution.mu) > usd  # and it is the smallest such μ


def test_a_share_of_the_top_cost_is_a_budget(synthetic: tuple[Router, RoutingDataset, LayerFeatures]) -> None:
    router, _, _ = synthetic
    p, c = calibration_matrices(router)
    solution = router.solve_budget(Budget(share_of_max=0.1))
    assert solution.budget_usd == pytest.approx(0.1 * c.mean(axis=0).max(), rel=1e-12)
    assert mean_cost(p, c, solution.mu) <= solution.budget_usd
    generous = router.solve_budget(Budget(share_of_max=1.0))
    assert generous.mu == 0 and generous.saturated


def test_a_budget_below_the_cheapest_routing_is_a_config_error(
    synthetic: tuple[Router, RoutingDataset, LayerFeatures],
) -> None:
    router, _, _ = synthetic
    _, c = calibration_matrices(router)
    cheapest = float(c.min(axis=1).mean())
    message = (
        rf"^budget {re.escape(format_usd(cheapest / 2))} per request is below the cheapest possible routing "
        rf"\({re.escape(format_usd(cheapest))} per request\); raise the budget or allow cheaper targets\.$"
    )
    with pytest.raises(ConfigError, match=message):
        router.solve_budget(Budget(usd_per_request=cheapest / 2))


def test_a_router_without_calibration_rows_needs_a_mu(
    synthetic: tuple[Router, RoutingDataset, LayerFeatures],
) -> None:
    router, _, _ = synthetic
    bare = Router(
        encoder=router.encoder_identity, transform=router.transform, ensemble=router.ensemble,
        temperatures=router.temperatures, targets=router.target_info, output_tokens=router.output_tokens,
    )  # fmt: skip
    message = (
        r"^this router stores no calibration rows; pass a μ \(--budget 0\.0 \.\.\.\) instead of a budget$"
    )
    with pytest.raises(ConfigError, match=message):
        bare.solve_budget(Budget(usd_per_request=1.0))
    assert "calibration" not in bare.to_json()


# ================================================================= a router on the tiny encoder
def topics(n: int = 200) -> RoutingDataset:
    """n prompts on four topics; each target answers its topic (10% of labels flipped); 'test' every 5th."""
    rng = np.random.default_rng(0)
    fillers = ["blue", "square", "number", "colour", "sky", "answer", "function", "python"]
    kinds = [("math", "poem", "code", "trivia")[i % 4] for i in range(n)]
    prompts = [f"{t} question {i}: {' '.join(rng.choice(fillers, 3))}" for i, t in enumerate(kinds)]
    right = np.array([[t == "math", t in ("poem", "trivia"), t == "code"] for t in kinds], dtype=float)
    labels = np.where(rng.random(right.shape) < 0.1, 1 - right, right)
    splits = ["test" if i % 5 == 4 else "train" for i in range(n)]
    targets = tuple(TargetInfo(name, *p, "unit-test") for name, p in zip(TARGETS, TOPIC_PRICES, strict=True))
    output_tokens = np.tile(TOPIC_OUTPUT_TOKENS, (n, 1))
    return RoutingDataset(
        [f"q{i}" for i in range(n)], prompts, kinds, splits, labels, targets, output_tokens=output_tokens
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The autouse test cache, named explicitly: module fixtures run before the autouse one sets it."""
    return tmp_path_factory.getbasetemp() / "cache"


@pytest.fixture(scope="module")
def tiny(
    tiny_llama_dir: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Router, Path, Path, LayerFeatures]:
    """(router fitted on most training rows' stored features, its artifact, the data file, all features)."""
    from prefill_router.encode import Encoder, FeatureStore, extract_features

    encoder = Encoder(str(tiny_llama_dir), dtype="float32", threads=1, cache_dir=cache)
    dataset = topics()
    stored = extract_features(encoder, dataset.prompts.tolist(), FeatureStore(cache))
    feats = LayerFeatures(np.asarray(stored.features), stored.key.poolings, stored.key.layers)
    # not every training row: `evaluate` refitting the router instead of applying it would show
    train = np.flatnonzero(dataset.splits == "train")[:140]
    train_feats = LayerFeatures(feats.values[train], feats.poolings, feats.layers)
    model, _ = fit_router(dataset.take(train), train_feats, EncoderIdentity.of(encoder), SETTINGS)
    router = Router.of(model)
    router.use_encoder(encoder)
    folder = tmp_path_factory.mktemp("tiny")
    return router, router.save(folder / "router"), dataset.save(folder / "topics.parquet"), feats


def test_route_decides_with_every_probability_and_cost(
    tiny: tuple[Router, Path, Path, LayerFeatures],
) -> None:
    router = tiny[0]
    for prompt in PROMPTS:
        decision = router.route(prompt, policy="budget", knob=0.0)
        p, c = router.predict_proba([prompt])[0], router.costs([prompt])[0]
        assert decision.target in TARGETS and decision.target == TARGETS[decision.index]
        assert decision.probabilities == dict(zip(TARGETS, p.tolist(), strict=True))
        assert decision.costs_usd == dict(zip(TARGETS, c.tolist(), strict=True))
        assert (decision.policy, decision.knob, decision.candidates) == ("budget", 0.0, TARGETS)
        assert decision.target == TARGETS[int(np.argmax(p))]  # μ = 0: the most likely target
        assert decision.reason.startswith(
            "budget policy, μ=0: maximises p − μ·c over 3 allowed targets; picked"
        )
        assert decision.reason.endswith(", the most likely") and decision.certificate is None
        json.dumps(decision.to_json(), allow_nan=False)


def test_route_without_a_policy_keeps_the_default_floor(
    tiny: tuple[Router, Path, Path, LayerFeatures],
) -> None:
    """No policy: within 1 point of the best single target at δ 0.05, certified on the calibration rows."""
    router = tiny[0]
    certificate = router.certify(QualityFloor(within=0.01))
    assert certificate.certified and certificate.mu is not None and certificate.mu > 0
    for prompt in PROMPTS:
        decision = router.route(prompt)
        p, c = router.predict_proba([prompt])[0], router.costs([prompt])[0]
        assert (decision.policy, decision.knob) == ("budget", certificate.mu)
        assert decision.target == TARGETS[int(np.argmax(p - certificate.mu * c))]
        assert decision.certificate == certificate.to_json()
        assert decision.reason.startswith(
            f"quality floor within 1 point of {router.best_single} (δ=0.05, certified on "
            f"{certificate.rows} calibration rows); budget policy"
        )


def test_a_policy_named_without_its_knob_takes_the_shared_default(
    tiny: tuple[Router, Path, Path, LayerFeatures],
) -> None:
    """One set of default knobs on every path: λ = 1 (probability only), as serve has always used;
    Router.route once gave λ = 0 (the cheapest target) here."""
    router = tiny[0]
    assert DEFAULT_KNOBS == {"budget": 0.0, "lambda": 1.0, "tolerance": 0.0}
    for policy, knob in DEFAULT_KNOBS.items():
        decision = router.route(PROMPTS[0], policy=policy)
        assert (decision.policy, decision.knob) == (policy, knob)
        assert decision.target == router.route(PROMPTS[0], policy=policy, knob=knob).target
    assert router.plan(RouteRequest("lambda")).knob == 1.0


def test_a_request_resolves_once_into_a_plan_that_decides_like_route(
    tiny: tuple[Router, Path, Path, LayerFeatures],
) -> None:
    router = tiny[0]
    p, c = router.predict_proba(list(PROMPTS)), router.costs(list(PROMPTS))
    requests = [
        RouteRequest(), RouteRequest("tolerance", 0.2), RouteRequest(budget=Budget(share_of_max=0.5)),
        RouteRequest(floor=QualityFloor(within=0.05), allowed=("code-model", "math-model")),
        RouteRequest("lambda", 0.5, max_cost=1e-4),
    ]  # fmt: skip
    for request in requests:
        plan = router.plan(request)
        one = [plan.decide(p[i], c[i], router.targets).target for i in range(len(PROMPTS))]
        assert [router.targets[j] for j in plan.choose(p, c, router.targets)] == one
        kwargs = {
            "policy": request.policy,
            "knob": request.knob,
            "budget": request.budget,
            "floor": request.floor,
        }
        routed = [
            router.route(t, **kwargs, allowed=request.allowed, max_cost=request.max_cost) for t in PROMPTS
        ]
        assert [d.target for d in routed] == one
    assert router.plan(RouteRequest(delta=0.2)).certificate.delta == 0.2  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="'delta' is the risk of the default floor"):
        RouteRequest("budget", 0.0, delta=0.1)
    with pytest.raises(ConfigError, match="'max_cost' option must be a USD amount >= 0"):
        RouteRequest(max_cost=-1.0)
    with pytest.raises(UnknownTargetError, match="poem-modle"):
        router.plan(RouteRequest(allowed=("poem-modle",)))


def test_route_policies_lambda_one_and_a_large_tolerance(
    tiny: tuple[Router, Path, Path, LayerFeatures],
) -> None:
    router = tiny[0]
    for prompt in PROMPTS:
        p = router.predict_proba([prompt])[0]
        assert router.route(prompt, policy="lambda", knob=1.0).target == TARGETS[int(np.argmax(p))]
        assert router.route(prompt, policy="tolerance", knob=1.0).target == "poem-model"  # the cheapest
        assert router.route(prompt, policy="budget", knob=math.inf).target == "poem-model"


def test_route_picks_the_most_likely_code_model_for_code(
    tiny: tuple[Router, Path, Path, LayerFeatures],
) -> None:
    router = tiny[0]
    decision = router.route(PROMPTS[2], policy="lambda", knob=1.0)
    assert decision.target == "code-model", decision.probabilities  # the planted signal is learned
    # on the held-out rows of each topic, its own target is the likeliest on average (a single
    # off-format prompt such as PROMPTS[1] is a coin toss for a router fitted on 140 rows)
    test = topics().select(split="test")
    p = router.predict_proba(test.prompts.tolist())
    for topic, target in (("math", "math-model"), ("poem", "poem-model"), ("code", "code-model")):
        mean = p[test.tasks == topic].mean(axis=0)
        assert TARGETS[int(np.argmax(mean))] == target, (topic, mean)


def test_route_with_a_budget_solves_mu_on_the_calibration_rows(
    tiny: tuple[Router, Path, Path, LayerFeatures],
) -> None:
    router = tiny[0]
    budget = Budget(share_of_max=0.1)
    mu = router.solve_budget(budget).mu
    assert mu > 0
    decision = router.route(PROMPTS[2], policy="lambda", knob=0.3, budget=budget)  # a budget wins
    assert (decision.policy, decision.knob) == ("budget", mu)
    p, c = router.predict_proba([PROMPTS[2]])[0], router.costs([PROMPTS[2]])[0]
    assert decision.target == TARGETS[int(np.argmax(p - mu * c))]


def test_route_within_allowed_targets_and_a_cost_cap(tiny: tuple[Router, Path, Path, LayerFeatures]) -> None:
    router = tiny[0]
    allowed = ["code-model", "math-model"]
    decision = router.route(PROMPTS[1], allowed=allowed)
    assert decision.target in allowed and decision.candidates == ("math-model", "code-model")
    assert set(decision.probabilities) == set(TARGETS) and "2 allowed targets" in decision.reason
    capped = router.route(PROMPTS[2], allowed=allowed, max_cost=1e-9)
    assert capped.target == "math-model"  # nothing fits: the cheapest allowed one
    assert capped.reason.endswith(
        "; no allowed target costs at most $0.000000001, so the cheapest allowed one was used"
    )
    with pytest.raises(
        UnknownTargetError, match=r"^unknown target 'code-modle'\. Did you mean 'code-model'\?"
    ):
        router.route(PROMPTS[0], allowed=["code-modle"])


def test_a_loaded_router_keeps_its_calibration_rows(tiny: tuple[Router, Path, Path, LayerFeatures]) -> None:
    router, path, _, _ = tiny
    meta, arrays = read_artifact(path)
    rows = len(router.calibration.x)
    assert meta["calibration"] == {"rows": rows, "labels": True, "independent": False, "source": "fit"}
    assert rows > 10
    assert json.loads((path / "router.json").read_text())["calibration"]["rows"] == rows
    assert arrays["calibration.x"].shape == (rows, router.transform.n_features)
    assert arrays["calibration.input_tokens"].shape == (rows,)
    loaded = Router.load(path)
    np.testing.assert_array_equal(loaded.calibration.x, router.calibration.x)
    np.testing.assert_array_equal(loaded.calibration.tokens, router.calibration.tokens)
    budget = Budget(usd_per_request=0.001)
    assert loaded.solve_budget(budget) == router.solve_budget(budget)
    again, before = loaded.route(PROMPTS[0], budget=budget), router.route(PROMPTS[0], budget=budget)
    assert (again.target, again.knob) == (before.target, before.knob)
    assert again.probabilities == pytest.approx(before.probabilities, abs=1e-6)


# ------------------------------------------------------------------------------ `route`
def route_json(path: Path, capsys: pytest.CaptureFixture[str], *options: str) -> dict[str, Any]:
    assert run(["route", str(path), PROMPTS[2], "--json", *options]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_route_command_prints_the_decision_as_json(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    router, path, _, _ = tiny
    blob = route_json(path, capsys)
    assert {"target", "probabilities", "costs_usd", "reason", "policy", "knob", "candidates"} <= set(blob)
    assert list(blob["probabilities"]) == list(TARGETS) and list(blob["costs_usd"]) == list(TARGETS)
    expected = router.route(PROMPTS[2])  # the default floor: within 1 point of the best single target
    assert (blob["target"], blob["policy"], blob["knob"]) == (expected.target, "budget", expected.knob)
    assert blob["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert blob["costs_usd"] == pytest.approx(expected.costs_usd, rel=1e-12)
    assert blob["reason"].startswith("quality floor within 1 point of")
    assert blob["certificate"]["certified"] and blob["certificate"]["mu"] == expected.knob
    assert blob["certificate"]["delta"] == 0.05 and blob["certificate"]["rows"] == len(router.calibration.x)
    blob = route_json(path, capsys, "--budget", "0")
    assert (blob["policy"], blob["knob"], blob["certificate"]) == ("budget", 0.0, None)


def test_route_command_without_json_prints_a_table(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    router, path, _, _ = tiny
    assert run(["route", str(path), PROMPTS[2]]) == 0
    out = one_line(capsys.readouterr().out)
    target = router.route(PROMPTS[2]).target
    assert out.endswith(target) and f"→ {target}" in out and "route: quality floor within 1 point" in out
    assert "certificate: certified μ=" in out and "calibration rows" in out
    assert "not held out of training" in out  # this router reuses its validation rows (share 0)


def test_route_command_lambda_and_tolerance(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tiny[1]
    blob = route_json(path, capsys, "--lambda", "1.0")
    p = blob["probabilities"]
    assert (blob["policy"], blob["knob"]) == ("lambda", 1.0)
    assert blob["target"] == max(p, key=p.get)
    blob = route_json(path, capsys, "--tolerance", "0.5")
    p, c = blob["probabilities"], blob["costs_usd"]
    near = [t for t in TARGETS if p[t] >= max(p.values()) - 0.5]
    assert (blob["policy"], blob["knob"]) == ("tolerance", 0.5)
    assert blob["target"] == min(near, key=c.get)
    assert blob["reason"].startswith("tolerance policy, τ=0.5: cheapest of 3 allowed targets within 0.5")


@pytest.mark.parametrize(
    ("option", "budget"), [("$0.001", Budget(usd_per_request=0.001)), ("30%", Budget(share_of_max=0.3))]
)
def test_route_command_budgets(
    option: str,
    budget: Budget,
    tiny: tuple[Router, Path, Path, LayerFeatures],
    capsys: pytest.CaptureFixture[str],
) -> None:
    router, path, _, _ = tiny
    blob = route_json(path, capsys, "--budget", option)
    mu = router.solve_budget(budget).mu
    assert mu > 0 and (blob["policy"], blob["knob"]) == ("budget", mu)
    p, c = blob["probabilities"], blob["costs_usd"]
    assert blob["target"] == max(TARGETS, key=lambda t: p[t] - mu * c[t])


def test_route_command_budget_as_mu(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    blob = route_json(tiny[1], capsys, "--budget", "inf")
    assert (blob["policy"], blob["knob"], blob["target"]) == ("budget", None, "poem-model")  # μ = ∞: cheapest


def test_route_command_allowed_targets(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    blob = route_json(tiny[1], capsys, "--allow", "poem-model, math-model", "--lambda", "1")
    assert blob["candidates"] == ["math-model", "poem-model"]
    p = blob["probabilities"]
    assert blob["target"] == max(["math-model", "poem-model"], key=p.get)
    assert set(p) == set(TARGETS)


def test_route_command_max_cost(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    free = route_json(tiny[1], capsys, "--lambda", "1")
    costs = free["costs_usd"]
    cap = sorted(costs.values())[1] * 1.0001  # the two cheaper targets fit under it
    capped = route_json(tiny[1], capsys, "--lambda", "1", "--max-cost", str(cap))
    fitting = [t for t in TARGETS if costs[t] <= cap]
    assert len(fitting) == 2 and capped["target"] == max(fitting, key=capped["probabilities"].get)
    nothing = route_json(tiny[1], capsys, "--lambda", "1", "--max-cost", "1e-12")
    assert nothing["target"] == min(TARGETS, key=costs.get)  # none fits: the cheapest, and it says so
    assert nothing["reason"].endswith(
        "no allowed target costs at most $0.000000000001, so the cheapest allowed one was used"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--budget", "$0.001", "--lambda", "0.5"], "choose one policy; got --budget and --lambda"),
        (
            ["--budget", "1", "--lambda", "0.5", "--tolerance", "0.1"],
            "choose one policy; got --budget and --lambda and --tolerance",
        ),
        (
            ["--budget", "abc"],
            "--budget must be '$USD' per request, 'N%' of the most expensive target, or a μ >= 0; got 'abc'",
        ),
        (["--budget", "$cheap"], "--budget must be '$USD' per request"),
        (["--budget", "$0.0000001"], "per request is below the cheapest possible routing"),
        (["--lambda", "1.5"], "The 'knob' parameter must be a number in [0, 1] for the lambda policy"),
    ],
)
def test_route_command_bad_policies_exit_3(
    options: list[str],
    message: str,
    tiny: tuple[Router, Path, Path, LayerFeatures],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["route", str(tiny[1]), PROMPTS[0], *options]) == 3
    err = one_line(capsys.readouterr().err)
    assert err.startswith("error: ") and message in err


@pytest.mark.parametrize(
    ("allow", "message"),
    [
        ("math-model,code-modle", "unknown target 'code-modle'. Did you mean 'code-model'?"),
        ("gpt-4", "unknown target 'gpt-4'. Known targets: code-model, math-model, poem-model"),
    ],
)
def test_route_command_unknown_allowed_target_exit_2(
    allow: str,
    message: str,
    tiny: tuple[Router, Path, Path, LayerFeatures],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["route", str(tiny[1]), PROMPTS[0], "--allow", allow]) == 2
    assert message in one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- `evaluate`
def test_evaluate_command_writes_the_json_and_the_report(
    tiny: tuple[Router, Path, Path, LayerFeatures], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    router, path, data, feats = tiny
    out, report = tmp_path / "eval.json", tmp_path / "report"
    args = ["evaluate", str(path), str(data), "--baselines", "layer0,random", "--bootstrap", "100"]
    assert run([*args, "--json", str(out), "--report", str(report)]) == 0
    printed = one_line(capsys.readouterr().out)
    assert "routing on split 'test'" in printed and "ours at argmax: gap captured 95% CI" in printed
    blob = json.loads(out.read_text())
    assert {"oracle", "best_single", "singles", "most_expensive", "prefill", "layer0", "random"} <= set(blob)
    assert {"cheapest", "oracle_router", "paired"} <= set(blob)
    assert (blob["n_rows"], blob["n_routed"]) == (40, 40)
    assert blob["setup"] == {
        "where": f"split 'test' of {data} (40 prompts; baselines fit on 160)",
        "router": str(path), "cv": None, "split": "test", "baselines": ["layer0", "random"],
        "knn_k": [], "bootstrap": 100, "seed": 0,
    }  # fmt: skip
    # the router is applied as it is (not refitted) to the test rows' stored features
    dataset = RoutingDataset.load(data)
    test = np.flatnonzero(dataset.splits == "test")
    p = router.predict_proba_features(LayerFeatures(feats.values[test], feats.poolings, feats.layers))
    for j, name in enumerate(TARGETS):
        auc = roc_auc_score(dataset.labels[test, j], p[:, j])
        assert blob["prefill"]["targets"][name]["auc"] == pytest.approx(auc), name
    assert blob["oracle_router"]["argmax"]["gap_captured"] == 1
    page = (report / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 4 and 'id="headline"' in page


def test_evaluate_command_with_cross_validation(
    tiny: tuple[Router, Path, Path, LayerFeatures], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path, data, _ = tiny
    out = tmp_path / "cv.json"
    args = ["evaluate", str(path), str(data), "--cv", "2", "--baselines", "random", "--limit", "120"]
    assert run([*args, "--bootstrap", "50", "--json", str(out)]) == 0
    assert "grouped 2-fold CV over 120 prompts" in one_line(capsys.readouterr().out)
    blob = json.loads(out.read_text())
    assert blob["setup"]["cv"] == 2 and blob["setup"]["split"] is None
    assert blob["setup"]["where"] == f"grouped 2-fold CV over 120 prompts of {data}"
    assert (blob["n_rows"], blob["n_routed"]) == (120, 120)
    assert {"prefill", "random", "cheapest", "oracle_router"} <= set(blob) and set(blob["paired"]) == {
        "random"
    }


def test_evaluate_command_unknown_split_exit_2(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path, data, _ = tiny
    assert run(["evaluate", str(path), str(data), "--split", "nosuch", "--baselines", "none"]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("error: ") and err.endswith(
        "no split 'nosuch'; the splits are test, train (or use --cv K)"
    )


def test_evaluate_command_other_targets_exit_2(
    tiny: tuple[Router, Path, Path, LayerFeatures], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path, data, _ = tiny
    fewer = (
        RoutingDataset.load(data).select(targets=["math-model", "poem-model"]).save(tmp_path / "two.parquet")
    )
    assert run(["evaluate", str(path), str(fewer), "--baselines", "none"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "the data's targets differ from the router's" in err and "only in the router: code-model" in err
    assert "only in the data: none" in err


def test_evaluate_command_unknown_baseline_exit_3(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path, data, _ = tiny
    assert run(["evaluate", str(path), str(data), "--baselines", "knn"]) == 3
    assert "unknown baseline 'knn'; expected 'all', 'none' or some of:" in one_line(capsys.readouterr().err)


def test_evaluate_command_with_one_fold_is_refused(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path, data, _ = tiny
    assert run(["evaluate", str(path), str(data), "--cv", "1", "--baselines", "none"]) == 3
    assert "The 'folds' parameter must be between 2" in one_line(capsys.readouterr().err)


def test_evaluate_command_with_zero_folds_is_refused(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path, data, _ = tiny
    assert run(["evaluate", str(path), str(data), "--cv", "0", "--baselines", "none"]) == 3
    assert "The 'folds' parameter must be between 2" in one_line(capsys.readouterr().err)


def test_evaluate_command_with_more_folds_than_prompts_is_one_line(
    tiny: tuple[Router, Path, Path, LayerFeatures], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path, data, _ = tiny
    assert run(["evaluate", str(path), str(data), "--cv", "500", "--baselines", "none"]) == 3
    err = one_line(capsys.readouterr().err)
    assert err == (
        "error: The 'folds' parameter must be between 2 and the number of distinct prompts (200); "
        "got 500 instead."
    )
