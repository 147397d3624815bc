"""The proxy's settings (``serve.yaml``), validated at start with errors that name the field.

Two layers of pydantic models: :class:`ServeFile` (``document``) is the YAML document as written
(its sections :class:`TargetSpec`, :class:`FloorSpec`, :class:`ProfileSpec`, :class:`RightsSpec`,
:class:`ClientSpec`), checked against the router's targets and the environment;
:meth:`ServeFile.settings` turns it into the :class:`ServeConfig` (``settings``) the proxy runs on
(pydantic dataclasses: :class:`UpstreamTarget`, :class:`Profile`, :class:`ClientRights`,
:class:`Client`). ``_fields`` holds the names, the worded field types and the shared checks. Each
field's type carries the words of its error, so a bad field is a
:class:`~prefill_router.errors.ConfigError` naming its path (``targets.gpt-4o.timeout_s must be a
positive number; got 0``), never pydantic's own message.

Example ``serve.yaml``::

    targets:                       # every target of the router artifact, by its name
      gpt-4o:
        base_url: https://api.openai.com/v1
        model: gpt-4o-2024-08-06   # the upstream model id (default: the target name)
        api_key_env: OPENAI_API_KEY
        timeout_s: 60
      llama-3-8b:
        base_url: http://localhost:4000/v1
    floor: {within: 1pt}           # the default: within 1 point of the best single target, δ 0.05
    # or a quality floor of your own: {within: "1pt:gpt-4o", delta: 0.1} / {min_accuracy: 0.85}
    # or a policy and its knob instead of a floor:
    # policy: tolerance            # budget / lambda / tolerance
    # knob: 0.05                   # μ / λ / τ
    profiles:                      # extra `model` names, each a floor or a policy and knob
      router-cheap: {policy: budget, knob: 2000}
      router-safe: {within: "0pt:gpt-4o"}
    fallback: [llama-3-8b, gpt-4o] # encoder failure -> the first; upstream failure -> the next
    routing_text: last_user        # last_user / first_user / conversation
    client_tokens_env: ROUTER_TOKENS  # comma-separated bearer tokens (or client_tokens: [...])
    cache_size: 10000              # decisions kept (LRU); 0 turns the cache off
    cache_key_env: ROUTER_CACHE_KEY  # the HMAC key of cache and session keys (default: random per
                                   # process; with `state`, the one kept in Redis): replicas share it
    max_body_bytes: 1000000
    max_batch: 32                  # prompts per encoder forward
    max_wait_ms: 3                 # how long the first prompt of a batch waits for company
    max_prompts: 128               # prompts in one /v1/route request
    max_queue: 1024                # prompts waiting for the encoder; beyond: the fallback target
    score_timeout_s: 2             # scoring deadline; past it: the fallback target
    deadline_s: 120                # one request's upstream calls, fallbacks included, until headers
    drain_s: 5                     # after SIGTERM: in-flight requests finish, new ones get 503
    client_rights:                 # what a client token may do (default: everything)
      pin: true                    # name a target as `model`
      overrides: [policy, knob, budget_usd, min_accuracy, within, delta, allowed, max_cost_usd, session]
    clients:                       # or one entry per client: its token's variable and rights
      batch-jobs: {token_env: BATCH_TOKEN, pin: false, overrides: [allowed, max_cost_usd]}
    decision_log_max_bytes: 100000000  # --log-decisions rotates past this size ...
    decision_log_backups: 5        # ... keeping this many old files
    state: redis://127.0.0.1:6379/0   # shared state for several replicas (default: in-process)
    state_required: false          # true: refuse to start while that Redis is unreachable
    state_timeout_s: 0.5           # each Redis call; past it, that request uses in-process state
    state_ttl_s: 86400             # decision cache entries and solved budgets in Redis
    session_ttl_s: 3600            # session affinity in Redis (renewed at each turn)

Target names must match ``TARGET_NAME`` (letters, digits and ``_ . : / @ + -``, at most 128), so
that no name can inject a header or a log line.
"""

from __future__ import annotations

from prefill_router.serve.config._fields import (
    FLOOR_FIELDS,
    OVERRIDE_FIELDS,
    ROUTER_MODEL,
    ROUTING_TEXTS,
    PolicyName,
    RoutingTextMode,
    check_state_url,
    parse_floor,
    redact_password,
)
from prefill_router.serve.config.document import (
    ClientSpec,
    FloorSpec,
    ProfileSpec,
    RightsSpec,
    ServeFile,
    TargetSpec,
)
from prefill_router.serve.config.settings import (
    DEFAULT_PROFILE,
    Client,
    ClientRights,
    Profile,
    ServeConfig,
    UpstreamTarget,
)

__all__ = [
    "DEFAULT_PROFILE",
    "FLOOR_FIELDS",
    "OVERRIDE_FIELDS",
    "ROUTER_MODEL",
    "ROUTING_TEXTS",
    "Client",
    "ClientRights",
    "ClientSpec",
    "FloorSpec",
    "PolicyName",
    "Profile",
    "ProfileSpec",
    "RightsSpec",
    "RoutingTextMode",
    "ServeConfig",
    "ServeFile",
    "TargetSpec",
    "UpstreamTarget",
    "check_state_url",
    "parse_floor",
    "redact_password",
]
