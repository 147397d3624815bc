"""The proxy's settings (``serve.yaml``), validated at start with errors that name the field.

Example ``serve.yaml``::

    targets:                       # every target of the router artifact, by its name
      gpt-4o:
        base_url: https://api.openai.com/v1
        model: gpt-4o-2024-08-06   # the upstream model id (default: the target name)
        api_key_env: OPENAI_API_KEY
        timeout_s: 60
      llama-3-8b:
        base_url: http://localhost:4000/v1
    policy: tolerance              # budget / lambda / tolerance
    knob: 0.05                     # μ / λ / τ
    profiles:                      # extra `model` names, each a policy and knob
      router-cheap: {policy: budget, knob: 2000}
    fallback: [llama-3-8b, gpt-4o] # encoder failure -> the first; upstream failure -> the next
    routing_text: last_user        # last_user / first_user / conversation
    client_tokens_env: ROUTER_TOKENS  # comma-separated bearer tokens (or client_tokens: [...])
    cache_size: 10000              # decisions kept (LRU); 0 turns the cache off
    max_body_bytes: 1000000
    max_batch: 32                  # prompts per encoder forward
    max_wait_ms: 3                 # how long the first prompt of a batch waits for company
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prefill_router.errors import ConfigError

ROUTING_TEXTS = ("last_user", "first_user", "conversation")
ROUTER_MODEL = "router"
_TOP_KEYS = {
    "targets", "policy", "knob", "profiles", "fallback", "routing_text", "client_tokens",
    "client_tokens_env", "cache_size", "cache_key_env", "max_body_bytes", "max_batch", "max_wait_ms",
}  # fmt: skip
_TARGET_KEYS = {"base_url", "model", "api_key_env", "timeout_s"}


@dataclass(frozen=True)
class UpstreamTarget:
    """Where one target's requests go."""

    name: str  # the target name in the router artifact
    base_url: str  # an OpenAI-compatible base URL, e.g. http://localhost:4000/v1
    model: str  # the upstream model id sent in the forwarded body
    api_key_env: str | None = None  # the environment variable holding its API key
    timeout_s: float = 60.0

    @property
    def api_key(self) -> str | None:
        """The API key from ``api_key_env`` (None when unset)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True)
class Profile:
    """A policy and its knob, selected by the request's ``model``."""

    policy: str
    knob: float


@dataclass(frozen=True)
class ServeConfig:
    """Everything the proxy needs besides the router artifact."""

    targets: dict[str, UpstreamTarget]
    default: Profile = Profile("budget", 0.0)
    profiles: dict[str, Profile] = field(default_factory=dict)  # "router" is added as ``default``
    fallback: tuple[str, ...] = ()  # encoder failure -> fallback[0]; upstream failure -> next one
    routing_text: str = "last_user"
    client_tokens: tuple[str, ...] = ()  # empty: no authentication
    cache_size: int = 10_000
    cache_key: bytes | None = None  # HMAC key of the decision cache (None: random per process)
    max_body_bytes: int = 1_000_000
    max_batch: int = 32
    max_wait_ms: float = 3.0

    def profile(self, model: str) -> Profile | None:
        """The profile named ``model`` (``router`` is the default one), or None."""
        return self.default if model == ROUTER_MODEL else self.profiles.get(model)

    @classmethod
    def quick(cls, targets: Sequence[str], upstream_url: str, **options: Any) -> ServeConfig:
        """Every target to one OpenAI-compatible gateway, the target name as upstream model id.

        The fallback chain is the targets in router order.
        """
        url = _check_url(upstream_url, "--upstream")
        upstreams = {name: UpstreamTarget(name, url, name) for name in targets}
        return cls(targets=upstreams, fallback=tuple(targets), **options)

    @classmethod
    def load(cls, path: str | Path, targets: Sequence[str]) -> ServeConfig:
        """Read and validate a YAML file against the router's ``targets``.

        Raises:
            ConfigError: an unreadable file or an invalid field (the message names it).
        """
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the serve config: {exc}") from exc
        try:
            return cls.from_dict(data, targets)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Any, targets: Sequence[str]) -> ServeConfig:
        """Validate a parsed config document; see the module docstring for the fields."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"the serve config must be a mapping; got {type(data).__name__}")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise ConfigError(f"unknown field {unknown[0]!r}; expected one of {', '.join(sorted(_TOP_KEYS))}")
        upstreams = _targets(data.get("targets"), targets)
        default = _profile({"policy": data.get("policy", "budget"), "knob": data.get("knob", 0.0)}, "")
        profiles = _profiles(data.get("profiles") or {}, targets)
        fallback = tuple(_names(data.get("fallback") or [], "fallback", targets))
        routing_text = data.get("routing_text", "last_user")
        if routing_text not in ROUTING_TEXTS:
            raise ConfigError(f"routing_text must be one of {', '.join(ROUTING_TEXTS)}; got {routing_text!r}")
        return cls(
            targets=upstreams, default=default, profiles=profiles, fallback=fallback,
            routing_text=routing_text, client_tokens=_tokens(data),
            cache_size=_int(data, "cache_size", 10_000, 0), cache_key=_cache_key(data),
            max_body_bytes=_int(data, "max_body_bytes", 1_000_000, 1),
            max_batch=_int(data, "max_batch", 32, 1), max_wait_ms=_number(data, "max_wait_ms", 3.0),
        )  # fmt: skip


# ------------------------------------------------------------------------- fields
def _targets(raw: Any, names: Sequence[str]) -> dict[str, UpstreamTarget]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("targets must map each target name to {base_url, model, api_key_env, timeout_s}")
    missing = [name for name in names if name not in raw]
    if missing:
        raise ConfigError(f"targets: the router's target {missing[0]!r} has no upstream")
    _names(list(raw), "targets", names)
    out = {}
    for name, spec in raw.items():
        where = f"targets.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where} must be a mapping with base_url")
        unknown = sorted(set(spec) - _TARGET_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown field {unknown[0]!r}; expected {', '.join(sorted(_TARGET_KEYS))}"
            )
        key_env = spec.get("api_key_env")
        if key_env is not None and not isinstance(key_env, str):
            raise ConfigError(f"{where}.api_key_env must be an environment variable name; got {key_env!r}")
        model = spec.get("model", name)
        if not isinstance(model, str) or not model:
            raise ConfigError(f"{where}.model must be a non-empty string; got {model!r}")
        url = _check_url(spec.get("base_url"), f"{where}.base_url")
        out[name] = UpstreamTarget(name, url, model, key_env, _number(spec, "timeout_s", 60.0, where))
    return out


def _profile(raw: Any, where: str) -> Profile:
    from prefill_router.policy import POLICIES, check_knob

    prefix = f"{where}." if where else ""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping {{policy, knob}}")
    policy = raw.get("policy", "budget")
    if policy not in POLICIES:
        raise ConfigError(f"{prefix}policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    knob = raw.get("knob", 0.0)
    if isinstance(knob, bool) or not isinstance(knob, int | float):
        raise ConfigError(f"{prefix}knob must be a number; got {knob!r}")
    try:
        return Profile(policy, check_knob(policy, float(knob)))
    except ConfigError as exc:
        raise ConfigError(f"{prefix}knob: {exc}") from exc


def _profiles(raw: Any, targets: Sequence[str]) -> dict[str, Profile]:
    if not isinstance(raw, Mapping):
        raise ConfigError("profiles must map model names to {policy, knob}")
    for name in raw:
        if name == ROUTER_MODEL or name in targets:
            taken = "the router" if name == ROUTER_MODEL else "a target"
            raise ConfigError(f"profiles.{name}: the name is taken by {taken}")
    return {str(name): _profile(spec, f"profiles.{name}") for name, spec in raw.items()}


def _names(raw: Any, where: str, targets: Sequence[str]) -> list[str]:
    from prefill_router.errors import UnknownTargetError

    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise ConfigError(f"{where} must be a list of target names; got {raw!r}")
    for name in raw:
        if name not in targets:
            raise ConfigError(f"{where}: {UnknownTargetError(name, targets)}")
    return list(raw)


def _tokens(data: Mapping[str, Any]) -> tuple[str, ...]:
    tokens = data.get("client_tokens") or []
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise ConfigError("client_tokens must be a list of non-empty strings")
    env = data.get("client_tokens_env")
    if env is not None:
        value = os.environ.get(str(env))
        if not value:
            raise ConfigError(f"client_tokens_env: the environment variable {env} is not set")
        tokens = [*tokens, *(t.strip() for t in value.split(",") if t.strip())]
    return tuple(tokens)


def _cache_key(data: Mapping[str, Any]) -> bytes | None:
    env = data.get("cache_key_env")
    if env is None:
        return None
    value = os.environ.get(str(env))
    if not value:
        raise ConfigError(f"cache_key_env: the environment variable {env} is not set")
    return value.encode()


def _int(data: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}; got {value!r}")
    return value


def _number(data: Mapping[str, Any], key: str, default: float, where: str = "") -> float:
    value = data.get(key, default)
    name = f"{where}.{key}" if where else key
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a positive number; got {value!r}")
    return float(value)


def _check_url(url: Any, where: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where} must be an http(s) URL such as http://localhost:4000/v1; got {url!r}")
    return url.rstrip("/")
