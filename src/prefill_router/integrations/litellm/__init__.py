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

Modules: :mod:`~prefill_router.integrations.litellm.step` (the classifier, its decision cache, the
headers callback) and :mod:`~prefill_router.integrations.litellm.config` (:func:`install`,
:func:`load_config`, and the checks of every name on the way in).

Example::

    routing = load_config("config.yaml")                 # or install(litellm.Router(...), "router/")
    response = await routing.litellm_router.acompletion(
        model="prefill-router", messages=[{"role": "user", "content": "Prove that sqrt(2) is irrational."}]
    )
    response._hidden_params["additional_headers"]["x-litellm-prefill-router-target"]
"""

import os

from prefill_router.errors import MissingDependencyError

# LiteLLM fetches its model cost map from GitHub when imported unless told to use the copy it ships;
# prefill-router downloads nothing at run time, so the local copy is the default (setdefault: a
# deployment that sets the variable itself keeps its choice).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

try:
    import litellm  # noqa: F401  (the extra's check, before the modules that use it)
except ImportError as exc:
    raise MissingDependencyError(
        "the LiteLLM integration needs litellm; install it with: pip install 'prefill-router[litellm]'"
    ) from exc

from prefill_router.integrations.litellm.config import install, load_config, model_groups
from prefill_router.integrations.litellm.step import (
    DEFAULT_MODEL_NAME,
    HEADER_PREFIX,
    PrefillRouting,
    decision_headers,
    routing_text,
)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "HEADER_PREFIX",
    "PrefillRouting",
    "decision_headers",
    "install",
    "load_config",
    "model_groups",
    "routing_text",
]
