# ruff: noqa: TID253  (this module owns the litellm import)
"""prefill-router as LiteLLM's routing step: it picks the model group of each request.

LiteLLM decides which model group a request goes to with a *sub-router*, before its strategy picks
a deployment of that group (LiteLLM docs, "Strategies, routing groups and sub-routers":
https://docs.litellm.ai/docs/router/learn/strategies). Its complexity auto-router, a deployment
whose model is ``auto_router/complexity_router``, takes a custom classifier
(``classifier_type: custom``, a ``ClassifierPlugin``: https://docs.litellm.ai/docs/routing_plugins)
that names a tier, and sends the request to that tier's model group. Here each router target is
one tier, and :class:`PrefillRouting` is the classifier:

- a request for ``model_name`` ("prefill-router") is scored on its last user message, off the
  event loop (one worker thread runs the encoder), and decided exactly as :meth:`Router.route`
  decides (the router's default quality floor, or the floor / budget / policy given);
- LiteLLM sends it to the target's model group (``targets`` maps target -> model group; by
  default the group of the same name), then load-balances, retries and falls back as configured:
  its ``fallbacks`` are keyed on the chosen group;
- scoring that fails or runs past ``timeout_s``, or a request without user text, goes to
  ``fallback_target`` (LiteLLM's ``classifier_fallback: default_model``);
- the caller sees the decision: LiteLLM's ``x-litellm-complexity-router-tier`` (the target) and
  ``x-litellm-model-group`` (the group that answered), plus ``x-litellm-prefill-router-*`` (target,
  reason, probabilities, estimated cost, certificate) in ``response._hidden_params
  ["additional_headers"]`` (the LiteLLM proxy's response headers) and the whole decision in
  ``response._hidden_params["prefill_router"]`` (on complete responses; streams are not covered).

Example::

    routing = load_config("config.yaml")                 # or install(litellm.Router(...), "router/")
    response = await routing.litellm_router.acompletion(
        model="prefill-router", messages=[{"role": "user", "content": "Prove that sqrt(2) is irrational."}]
    )
    response._hidden_params["additional_headers"]["x-litellm-prefill-router-target"]
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import litellm
import yaml
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import Router as LiteLLMRouter
from litellm.router_api import ChangeSet
from litellm.types.router import Deployment, LiteLLM_Params, RoutingContext

from prefill_router.errors import ConfigError
from prefill_router.policy import Budget, Decision, QualityFloor, RoutePlan, Router, RouteRequest
from prefill_router.policy.floor import DEFAULT_DELTA

__all__ = [
    "DEFAULT_MODEL_NAME",
    "HEADER_PREFIX",
    "PrefillRouting",
    "decision_headers",
    "install",
    "load_config",
    "routing_text",
]

#: The model name callers ask for when they want prefill-router to choose.
DEFAULT_MODEL_NAME = "prefill-router"
#: The decision's response headers; LiteLLM passes ``x-litellm-`` headers through unprefixed.
HEADER_PREFIX = "x-litellm-prefill-router-"
#: Decisions kept per text (least recently used out): a repeated prompt is not encoded again.
DECISIONS_KEPT = 4096
#: The complexity auto-router's marker model and the cause it records for a classifier's tier.
_MARKER_MODEL = "auto_router/complexity_router"
_PLUGIN_CAUSE = "classifier_plugin"
#: LiteLLM's limit on a tier name, and its built-in tiers (a tier set of only these is not custom).
_TIER_NAME_CHARS = 64
_BUILT_IN_TIERS = frozenset({"NON_REASONING", "SIMPLE", "MEDIUM", "COMPLEX", "REASONING"})
#: The sections of config.yaml this loader reads, and the keys of its ``prefill_router`` section.
_SECTIONS = ("model_list", "router_settings", "prefill_router")
_KEYS = (
    "artifact", "model_name", "targets", "floor", "policy", "knob", "fallback_target", "timeout_s",
    "cache_dir", "allow_local_encoder",
)  # fmt: skip
_FLOOR_KEYS = ("within", "min_accuracy", "delta")
_ASCII = str.maketrans(
    {"μ": "mu", "λ": "lambda", "τ": "tau", "δ": "delta", "−": "-", "·": "*", "ĉ": "c_norm", "…": "..."}
)


class PrefillRouting:
    """prefill-router installed in one ``litellm.Router``: its classifier, decision cache and headers.

    Made by :func:`install` (or :func:`load_config`); :meth:`close` takes it out again.
    """

    def __init__(
        self,
        litellm_router: LiteLLMRouter,
        router: Router,
        plan: RoutePlan,
        *,
        model_name: str,
        model_groups: Mapping[str, str],
        fallback_target: str,
        timeout_s: float | None,
    ) -> None:
        self.litellm_router = litellm_router
        self.router = router
        self.plan = plan
        self.model_name = model_name
        self.model_groups = dict(model_groups)  # target -> LiteLLM model group
        self.fallback_target = fallback_target
        self.timeout_s = timeout_s
        self._decisions = _DecisionCache(DECISIONS_KEPT)
        # one thread: the encoder runs one forward pass at a time, never on the event loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefill-router-litellm")
        self._headers = _DecisionHeaders(self)

    # LiteLLM deep-copies a deployment's litellm_params, classifier plugin included: keep one router.
    def __copy__(self) -> PrefillRouting:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> PrefillRouting:
        return self

    # ------------------------------------------------------------------ deciding
    def decide(self, text: str) -> Decision:
        """The decision for one routing text: :meth:`Router.route`'s, with the plan made at install."""
        router = self.router
        return self.plan.decide(router.predict_proba([text])[0], router.costs([text])[0], router.targets)

    async def classify(self, context: RoutingContext) -> str | None:
        """LiteLLM's ``ClassifierPlugin`` call: the target (a tier of the complexity router) for the
        request's last user message, scored in the worker thread; None (no user text) declines,
        and LiteLLM sends the request to the fallback target's model group."""
        text = routing_text(context.structured_messages)
        if text is None:
            return None
        decision = self._decisions.get(text)
        if decision is None:
            loop = asyncio.get_running_loop()
            decision = await loop.run_in_executor(self._executor, self.decide, text)
            self._decisions.put(text, decision)  # after the await: a timed-out scoring is not kept
        return decision.target

    # ------------------------------------------------------------ in LiteLLM
    def deployment(self) -> dict[str, Any]:
        """The ``model_list`` entry that makes ``model_name`` this router: LiteLLM's complexity
        auto-router with one custom tier per target, each tier the target's model group."""
        names = tuple(self.model_groups)
        timeout = (
            {}
            if self.timeout_s is None
            else {"classifier_plugin_timeout_ms": max(1, round(self.timeout_s * 1000))}
        )
        config = {
            "classifier_type": "custom",
            "classifier_plugin": self,
            "classifier_fallback": "default_model",  # a failed scoring goes to the fallback target
            "tier_definitions": [{"name": t, "description": f"prefill-router routes to {t}"} for t in names],
            "tiers": dict(self.model_groups),
            "fallback_tier": self.fallback_target,
            **timeout,
        }
        return {
            "model_name": self.model_name,
            "litellm_params": {
                "model": _MARKER_MODEL,
                "complexity_router_config": config,
                "complexity_router_default_model": self.model_groups[self.fallback_target],
            },
            "model_info": {"id": self._deployment_id},
        }

    @property
    def _deployment_id(self) -> str:
        return f"prefill-router:{self.model_name}"

    def attach(self) -> PrefillRouting:
        """Add the deployment and the decision headers to the LiteLLM router; returns self."""
        entry = self.deployment()
        deployment = Deployment(
            model_name=entry["model_name"],
            litellm_params=LiteLLM_Params(**entry["litellm_params"]),
            model_info=entry["model_info"],
        )
        self.litellm_router.apply(ChangeSet(upsert=[deployment]))
        litellm.logging_callback_manager.add_litellm_callback(self._headers)
        return self

    def close(self) -> None:
        """Take the deployment and the headers out of LiteLLM and stop the worker thread."""
        self.litellm_router.apply(ChangeSet(delete=[self._deployment_id]))
        litellm.logging_callback_manager.remove_callback_from_all_lists(self._headers)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> PrefillRouting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def annotate(self, request: Mapping[str, Any], response: object) -> None:
        """Put the decision of ``request`` (a LiteLLM call's kwargs) on ``response``: the
        ``x-litellm-prefill-router-*`` headers and ``_hidden_params["prefill_router"]``. Requests for
        other models, and those the classifier did not decide (its fallback), are left alone."""
        metadata = request.get("litellm_metadata") or request.get("metadata")
        if not isinstance(metadata, Mapping) or metadata.get("original_model_group") != self.model_name:
            return
        routed = metadata.get("routing_decision")  # this hop's; a fallback hop has none
        if isinstance(routed, Mapping) and routed.get("cause") != _PLUGIN_CAUSE:
            return
        text = routing_text(request.get("messages"))
        decision = None if text is None else self._decisions.get(text)
        hidden = getattr(response, "_hidden_params", None)
        if decision is None or not isinstance(hidden, dict):
            return
        before = hidden.get("additional_headers")
        hidden["additional_headers"] = {
            **(before if isinstance(before, dict) else {}),
            **decision_headers(decision),
        }
        hidden["prefill_router"] = decision.to_json()


class _DecisionHeaders(CustomLogger):
    """The LiteLLM callback that puts each decision on the response of the deployment that answered."""

    def __init__(self, routing: PrefillRouting) -> None:
        super().__init__()
        self.routing = routing
        # LiteLLM keeps one callback per class and public str attributes: this one is per installation
        self.installation = f"{routing.model_name}@{id(routing):x}"

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: Any
    ) -> None:
        self.routing.annotate(request_data, response)


class _DecisionCache:
    """Decisions by routing text (keyed by its SHA-256), least recently used out; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, Decision] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, text: str) -> Decision | None:
        key = self._key(text)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, text: str, decision: Decision) -> None:
        with self._lock:
            self._items[self._key(text)] = decision
            while len(self._items) > self.size:
                self._items.popitem(last=False)


# ---------------------------------------------------------------------------------------------------
# the parts


def routing_text(messages: object) -> str | None:
    """The text a request is routed on: its last user message with text (a string, or the text
    parts of a content list); None when there is none.

    Example:
        >>> routing_text([{"role": "user", "content": "hi"}, {"role": "user", "content": "sum 2+2"}])
        'sum 2+2'
    """
    if not isinstance(messages, Sequence):
        return None
    for message in reversed(messages):
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            parts = [p for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
            content = "\n".join(str(p.get("text", "")) for p in parts)
        if isinstance(content, str) and content.strip():
            return content
    return None


def decision_headers(decision: Decision) -> dict[str, str]:
    """The ``x-litellm-prefill-router-*`` headers of a decision (printable ASCII only).

    Example:
        >>> sorted(decision_headers(Router.load("router/").route("hi")))  # doctest: +SKIP
        ['x-litellm-prefill-router-certificate', 'x-litellm-prefill-router-estimated-cost', ...]
    """
    out = {
        "target": decision.target,
        "reason": decision.reason,
        "probabilities": ",".join(f"{t}={p:.3f}" for t, p in decision.probabilities.items()),
        "estimated-cost": f"{decision.costs_usd[decision.target]:.6g}",
    }
    if decision.certificate is not None:
        out["certificate"] = str(decision.certificate["message"])
    return {HEADER_PREFIX + name: _header_value(value) for name, value in out.items()}


def _header_value(text: str) -> str:
    """``text`` as a header value: Greek letters spelled out, anything else not printable ASCII as ``?``."""
    return "".join(c if " " <= c <= "~" else "?" for c in text.translate(_ASCII))


def model_groups(
    targets: Sequence[str], groups: Iterable[str], mapping: Mapping[str, str] | None
) -> dict[str, str]:
    """Each router target's LiteLLM model group: ``mapping``'s, else the group of the same name.

    Raises:
        ConfigError: a mapped name that is not a target (with a did-you-mean); targets whose model
            group LiteLLM does not have (all of them named, in one line); target names LiteLLM
            cannot use as tiers.
    """
    mapping = dict(mapping or {})
    for name in mapping:
        if name not in targets:
            close = difflib.get_close_matches(name, targets, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"targets maps {name!r}, which is not a target of the router.{hint} "
                f"Its targets: {', '.join(targets)}"
            )
    chosen = {t: mapping.get(t, t) for t in targets}
    known = set(groups)
    missing = [t if chosen[t] == t else f"{t} (as {chosen[t]})" for t in targets if chosen[t] not in known]
    if missing:
        raise ConfigError(
            f"router targets that are not LiteLLM model groups: {', '.join(missing)}; LiteLLM's model "
            f"groups: {', '.join(sorted(known)) or 'none'}. Add them to model_list, or map each target "
            "to a model group with targets: {TARGET: MODEL_GROUP}"
        )
    _check_tier_names(targets)
    return chosen


def _check_tier_names(targets: Sequence[str]) -> None:
    """Target names become the complexity router's tiers: at most 64 characters, distinct without
    regard to case, not all of them built-in tier names (LiteLLM's limits)."""
    long = [t for t in targets if len(t) > _TIER_NAME_CHARS]
    folded = [t.casefold() for t in targets]
    clash = sorted({t for t in targets if folded.count(t.casefold()) > 1})
    if long or clash or all(t.upper() in _BUILT_IN_TIERS for t in targets):
        problem = (
            f"longer than {_TIER_NAME_CHARS} characters: {', '.join(long)}" if long else
            f"equal but for case: {', '.join(clash)}" if clash else
            f"all built-in complexity tiers: {', '.join(targets)}"
        )  # fmt: skip
        raise ConfigError(
            f"LiteLLM cannot route to these router targets as tiers, their names are {problem}; "
            "rename the targets (prefill-router fit on a dataset with other target names)"
        )


def load_router(
    artifact: str | Path, *, cache_dir: str | Path | None = None, allow_local_encoder: bool = False
) -> Router:
    """:meth:`Router.load` for an artifact named in a config.

    Raises:
        ConfigError: no artifact folder at ``artifact``. Router.load's errors otherwise.
    """
    path = Path(artifact)
    if not (path / "router.json").is_file():
        raise ConfigError(
            f"no router artifact at {str(path)!r} (a folder with router.json, as `prefill-router fit "
            "DATA -o FOLDER` writes); fix the artifact path"
        )
    return Router.load(path, cache_dir=cache_dir, allow_local_encoders=allow_local_encoder)


# ---------------------------------------------------------------------------------------------------
# entry points


def install(
    litellm_router: LiteLLMRouter,
    artifact: str | Path | Router,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    targets: Mapping[str, str] | None = None,
    floor: QualityFloor | None = None,
    budget: Budget | None = None,
    policy: str | None = None,
    knob: float | None = None,
    fallback_target: str | None = None,
    timeout_s: float | None = None,
    cache_dir: str | Path | None = None,
    allow_local_encoder: bool = False,
) -> PrefillRouting:
    """Make ``model_name`` in ``litellm_router`` route with prefill-router; the router is loaded,
    its floor certified (or budget solved) and its encoder warmed up once, here.

    Args:
        litellm_router: a ``litellm.Router`` with a model group for every router target.
        artifact: the router artifact folder, or a loaded :class:`Router`.
        model_name: the model name callers ask for; must not be a model group already.
        targets: router target -> LiteLLM model group, for targets whose group has another name.
        floor, budget, policy, knob: as in :meth:`Router.route` (none: the router's default floor).
        fallback_target: where requests go when scoring fails, times out or finds no user text
            (default: the best single target, the default floor's reference).
        timeout_s: the scoring deadline (default: LiteLLM's, 3 s for a classifier plugin).
        cache_dir, allow_local_encoder: as in :meth:`Router.load`.

    Raises:
        ConfigError: a missing artifact, targets that are not model groups, ``model_name`` taken,
            a bad fallback target, a floor that cannot be certified, a bad policy or knob.

    Example:
        >>> routing = install(litellm.Router(model_list=[...]), "router/")  # doctest: +SKIP
    """
    router = artifact if isinstance(artifact, Router) else load_router(
        artifact, cache_dir=cache_dir, allow_local_encoder=allow_local_encoder
    )  # fmt: skip
    groups = litellm_router.registry().names(kind="group_set")
    if model_name in groups:
        raise ConfigError(
            f"model_name {model_name!r} is already a LiteLLM model group; "
            "give prefill-router's model another name"
        )
    chosen = model_groups(router.targets, groups, targets)
    fallback = fallback_target or router.best_single
    if fallback not in router.targets:
        raise ConfigError(
            f"fallback_target must be one of the router's targets ({', '.join(router.targets)}); "
            f"got {fallback!r}"
            + ("" if fallback else " (the router records no best single target to default to)")
        )
    if timeout_s is not None and not timeout_s > 0:
        raise ConfigError(
            f"The 'timeout_s' option must be a number of seconds > 0; got {timeout_s!r} instead."
        )
    plan = router.plan(RouteRequest(policy, knob, budget, floor))
    router.predict_proba(["warm-up"])  # load the encoder now, not on the first request
    routing = PrefillRouting(
        litellm_router, router, plan, model_name=model_name, model_groups=chosen, fallback_target=fallback,
        timeout_s=timeout_s,
    )  # fmt: skip
    return routing.attach()


def load_config(path: str | Path) -> PrefillRouting:
    """A ``litellm.Router`` from a LiteLLM config.yaml, with prefill-router installed as its
    ``prefill_router`` section says (see the README); the router is ``.litellm_router``.

    The file holds ``model_list`` and ``router_settings`` as LiteLLM reads them, and
    ``prefill_router``: ``artifact`` (required; relative to the file's folder), ``model_name``,
    ``targets``, ``floor`` ({within: "1pt[:TARGET]"} or {min_accuracy: 0.85}, with ``delta``) or
    ``policy`` and ``knob``, ``fallback_target``, ``timeout_s``, ``cache_dir``, ``allow_local_encoder``.

    Raises:
        ConfigError: an unreadable file, an unknown section or key, a missing artifact, targets that
            are not model groups; each in one line that names the file.
    """
    path = Path(path)
    try:
        return _load_config(path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _load_config(path: Path) -> PrefillRouting:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the config: {exc}") from exc
    data = _mapping(data, "the config")
    _check_keys(data, _SECTIONS, "a section")
    section = _mapping(data.get("prefill_router"), "prefill_router")
    _check_keys(section, _KEYS, "prefill_router: a key")
    if "artifact" not in section:
        raise ConfigError("prefill_router: artifact (the router artifact folder) is required")
    if "floor" in section and ("policy" in section or "knob" in section):
        raise ConfigError("prefill_router: set either floor or policy/knob, not both")
    settings = _mapping(data.get("router_settings") or {}, "router_settings")
    try:
        litellm_router = LiteLLMRouter(model_list=data.get("model_list") or [], **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model_list / router_settings: {exc}") from exc
    targets = section.get("targets")
    return install(
        litellm_router,
        _relative(path, section["artifact"]),
        model_name=str(section.get("model_name", DEFAULT_MODEL_NAME)),
        targets=None
        if targets is None
        else {str(k): str(v) for k, v in _mapping(targets, "targets").items()},
        floor=_floor(section["floor"]) if "floor" in section else None,
        policy=section.get("policy"),
        knob=section.get("knob"),
        fallback_target=section.get("fallback_target"),
        timeout_s=section.get("timeout_s"),
        cache_dir=_relative(path, section["cache_dir"]) if section.get("cache_dir") else None,
        allow_local_encoder=bool(section.get("allow_local_encoder", False)),
    )


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping; got {type(value).__name__}")
    return value


def _check_keys(data: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{what} {key!r} is not one this loader reads.{hint} Known: {', '.join(known)}")


def _relative(config: Path, value: object) -> Path:
    """``value`` as a path; a relative one is taken from the config file's folder."""
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else config.parent / path


def _floor(raw: object) -> QualityFloor:
    """A floor from ``{within: "1pt[:TARGET]"}`` or ``{min_accuracy: 0.85}``, with an optional ``delta``."""
    floor = _mapping(raw, "prefill_router: floor")
    _check_keys(floor, _FLOOR_KEYS, "prefill_router: floor: a key")
    delta = floor.get("delta", DEFAULT_DELTA)
    if ("within" in floor) == ("min_accuracy" in floor):
        raise ConfigError(
            "prefill_router: floor needs exactly one of within ('1pt[:TARGET]') or min_accuracy"
        )
    if "within" in floor:
        return QualityFloor.parse(str(floor["within"]), delta=delta)
    return QualityFloor(min_accuracy=floor["min_accuracy"], delta=delta)
