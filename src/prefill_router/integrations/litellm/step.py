# ruff: noqa: TID253  (the LiteLLM integration owns the litellm import)
"""The routing step inside LiteLLM: :class:`PrefillRouting` (the complexity router's classifier
plugin, one tier per target), its decision cache and the callback that puts each decision on the
response. Set up by :mod:`prefill_router.integrations.litellm.config`."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import Router as LiteLLMRouter
from litellm.router_api import ChangeSet
from litellm.types.router import Deployment, LiteLLM_Params, RoutingContext

from prefill_router.policy import Decision, RoutePlan, Router
from prefill_router.policy.decision import header_text
from prefill_router.serve.protocol import user_text

__all__ = [
    "DECISIONS_KEPT",
    "DEFAULT_MODEL_NAME",
    "HEADER_PREFIX",
    "PrefillRouting",
    "decision_headers",
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
        self._closed = False

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
            "model_info": {"id": self.deployment_id},
        }

    @property
    def deployment_id(self) -> str:
        """The id of :meth:`deployment` in LiteLLM, one per installation."""
        return f"prefill-router:{self.model_name}:{id(self):x}"

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
        """Take the deployment and the headers out of LiteLLM and stop the worker thread (once)."""
        if self._closed:
            return
        self._closed = True
        self.litellm_router.apply(ChangeSet(delete=[self.deployment_id]))
        litellm.logging_callback_manager.remove_callback_from_all_lists(self._headers)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> PrefillRouting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def annotate(self, request: Mapping[str, Any], response: object) -> None:
        """Put the decision of ``request`` (a LiteLLM call's kwargs) on ``response``: the
        ``x-litellm-prefill-router-*`` headers and ``_hidden_params["prefill_router"]``. Requests
        this installation did not route, and those its classifier did not decide (LiteLLM's
        fallback when scoring failed), are left alone."""
        decision = self._decision_of(request)
        hidden = getattr(response, "_hidden_params", None)
        if decision is None or not isinstance(hidden, dict):
            return
        before = hidden.get("additional_headers")
        hidden["additional_headers"] = {
            **(before if isinstance(before, dict) else {}),
            **decision_headers(decision),
        }
        hidden["prefill_router"] = decision.to_json()

    def _decision_of(self, request: Mapping[str, Any]) -> Decision | None:
        """The decision this installation made for ``request``, if it made one."""
        metadata = request.get("litellm_metadata") or request.get("metadata")
        if not isinstance(metadata, Mapping) or metadata.get("original_model_group") != self.model_name:
            return None
        routed = metadata.get("routing_decision")  # the sub-router's record of this hop
        if isinstance(routed, Mapping):  # the first hop: routed by this deployment's classifier?
            if routed.get("router_config_id") != self.deployment_id or routed.get("cause") != _PLUGIN_CAUSE:
                return None
        else:  # a fallback hop (LiteLLM keeps no record): served by a deployment of this router?
            served = metadata.get("model_info")
            served_id = served.get("id") if isinstance(served, Mapping) else None
            if not isinstance(served_id, str) or not self.litellm_router.registry().has_deployment(served_id):
                return None
        text = routing_text(request.get("messages"))
        return None if text is None else self._decisions.get(text)


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
    """The text a request is routed on: its last user message with text (as the proxy's
    ``routing_text: last_user`` reads it); None when there is none.

    Example:
        >>> routing_text([{"role": "user", "content": "hi"}, {"role": "user", "content": "sum 2+2"}])
        'sum 2+2'
    """
    if not isinstance(messages, Sequence):
        return None
    return user_text([m for m in messages if isinstance(m, Mapping)], "last_user") or None


def decision_headers(decision: Decision) -> dict[str, str]:
    """The ``x-litellm-prefill-router-*`` headers of a decision (printable ASCII only).

    Example:
        >>> sorted(decision_headers(Router.load("router/").route("hi")))  # doctest: +SKIP
        ['x-litellm-prefill-router-certificate', 'x-litellm-prefill-router-estimated-cost', ...]
    """
    out = {"target": header_text(decision.target), **decision.header_fields()}
    if decision.certificate is not None:
        out["certificate"] = header_text(str(decision.certificate["message"]))
    return {HEADER_PREFIX + name: value for name, value in out.items()}
