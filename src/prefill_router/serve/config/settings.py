"""What the proxy runs on: :class:`ServeConfig` and its parts (pydantic dataclasses)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)
from pydantic.dataclasses import dataclass

from prefill_router.errors import ConfigError
from prefill_router.policy.floor import DEFAULT_DELTA, DEFAULT_WITHIN, QualityFloor
from prefill_router.serve.config._fields import (
    OVERRIDE_FIELDS,
    ROUTER_MODEL,
    Count,
    Flag,
    LogBytes,
    PolicyName,
    PositiveCount,
    RedisUrl,
    RoutingText,
    Seconds,
    SecondsOrZero,
    check_target_name,
    check_url,
    config_error,
)


def default_of(cls: type, name: str) -> Any:
    """``cls``'s default for field ``name`` (serve.yaml's defaults come from there: a default lives once)."""
    return cls.__dataclass_fields__[name].default  # type: ignore[attr-defined]


@dataclass(frozen=True)
class UpstreamTarget:
    """Where one target's requests go."""

    name: str  # the target name in the router artifact
    base_url: str  # an OpenAI-compatible base URL, e.g. http://localhost:4000/v1
    model: str  # the upstream model id sent in the forwarded body
    api_key_env: str | None = None  # the environment variable holding its API key
    timeout_s: Seconds = 60.0

    @property
    def api_key(self) -> str | None:
        """The API key from ``api_key_env`` (None when unset)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True)
class Profile:
    """A policy and its knob, or a quality floor, selected by the request's ``model``."""

    policy: PolicyName
    knob: float
    floor: QualityFloor | None = None  # set: the floor's certified μ decides (policy and knob unused)


#: The default profile: within 1 point of the best single target, δ 0.05 (argmax for a router
#: without labelled calibration rows).
DEFAULT_PROFILE = Profile("budget", 0.0, QualityFloor(within=DEFAULT_WITHIN, delta=DEFAULT_DELTA))


@dataclass(frozen=True)
class ClientRights:
    """What a client may ask of the router: pin a target, and which ``router`` fields it may set."""

    pin: bool = True  # may ``model`` name a target (no routing, no fallback)?
    overrides: frozenset[str] = frozenset(OVERRIDE_FIELDS)  # settable fields of ``router``


@dataclass(frozen=True)
class Client:
    """One authenticated client: a name (for logs and session scopes), its token and its rights."""

    name: str
    token: str = field(repr=False)
    rights: ClientRights = ClientRights()

    @property
    def token_sha256(self) -> bytes:
        """The token's digest: tokens are compared digest to digest, in constant time."""
        return hashlib.sha256(self.token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class ServeConfig:
    """Everything the proxy needs besides the router artifact."""

    targets: dict[str, UpstreamTarget]
    default: Profile = DEFAULT_PROFILE
    profiles: dict[str, Profile] = field(default_factory=dict)  # "router" is added as ``default``
    fallback: tuple[str, ...] = ()  # encoder failure -> fallback[0]; upstream failure -> next one
    routing_text: RoutingText = "last_user"
    client_tokens: tuple[str, ...] = ()  # each gets ``client_rights``; empty (and no clients): open
    cache_size: Count = 10_000
    cache_key: bytes | None = None  # HMAC key of the decision cache (None: random per process)
    max_body_bytes: PositiveCount = 1_000_000
    max_batch: PositiveCount = 32
    max_wait_ms: Seconds = 3.0
    max_prompts: PositiveCount = 128  # prompts in one /v1/route request
    max_queue: PositiveCount = 1024  # prompts waiting for the encoder; a full queue sends to the fallback
    score_timeout_s: Seconds = 2.0  # scoring deadline (queue + forward); past it, the fallback
    deadline_s: Seconds = 120.0  # all upstream attempts of one request, until the response headers
    drain_s: SecondsOrZero = 5.0  # after SIGTERM: new requests get 503 while in-flight ones finish
    client_rights: ClientRights = ClientRights()  # rights of the client_tokens (and of open access)
    clients: tuple[Client, ...] = ()  # named clients with rights of their own
    decision_log_max_bytes: LogBytes = 100_000_000  # the decision log rotates past this size ...
    decision_log_backups: Count = 5  # ... keeping this many old files
    state: RedisUrl | None = None  # redis://HOST:PORT/DB: cache, sessions and budgets shared by replicas
    state_required: Flag = False  # refuse to start while ``state`` is unreachable (else: in-process)
    state_timeout_s: Seconds = 0.5  # every Redis call; past it the request uses the in-process state
    state_ttl_s: Seconds = 86_400.0  # decision cache entries and solved budgets kept in Redis
    session_ttl_s: Seconds = 3_600.0  # a session's target kept in Redis, renewed at each turn

    def profile(self, model: str) -> Profile | None:
        """The profile named ``model`` (``router`` is the default one), or None."""
        return self.default if model == ROUTER_MODEL else self.profiles.get(model)

    def all_clients(self) -> tuple[Client, ...]:
        """Every accepted token as a client: ``client_tokens`` (named ``token-1`` ...) then ``clients``."""
        plain = tuple(
            Client(f"token-{i}", token, self.client_rights) for i, token in enumerate(self.client_tokens, 1)
        )
        return plain + self.clients

    def check_environment(self) -> None:
        """Raise unless every ``api_key_env`` of a target is set (checked when the app is created).

        Raises:
            ConfigError: naming the target and the variable.
        """
        for name, target in self.targets.items():
            if target.api_key_env is not None and not os.environ.get(target.api_key_env):
                raise ConfigError(
                    f"targets.{name}.api_key_env: the environment variable {target.api_key_env} is not "
                    "set; export it (the upstream would refuse every request) or remove api_key_env"
                )

    @classmethod
    def quick(cls, targets: Sequence[str], upstream_url: str, **options: Any) -> ServeConfig:
        """Every target to one OpenAI-compatible gateway, the target name as upstream model id.

        The fallback chain is the targets in router order.
        """
        url = check_url(upstream_url, "--upstream")
        for name in targets:
            check_target_name(name, "targets")
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
        """Validate a parsed config document (a :class:`ServeFile`) against the router's ``targets``.

        Raises:
            ConfigError: the first invalid field, by its path.
        """
        from prefill_router.serve.config.document import ServeFile  # the document builds a ServeConfig

        environ = dict(os.environ)
        try:
            document = ServeFile.model_validate(data, context={"targets": tuple(targets), "environ": environ})
        except ValidationError as exc:
            raise config_error(exc) from None
        return document.settings(environ)
