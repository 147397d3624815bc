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

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prefill_router.errors import ConfigError
from prefill_router.policy.floor import DEFAULT_DELTA, DEFAULT_WITHIN, QualityFloor

ROUTING_TEXTS = ("last_user", "first_user", "conversation")
ROUTER_MODEL = "router"
#: The fields of a request's ``router`` object (see :mod:`prefill_router.serve.protocol`).
OVERRIDE_FIELDS = (
    "policy", "knob", "budget_usd", "min_accuracy", "within", "delta", "allowed", "max_cost_usd", "session",
)  # fmt: skip
_TOP_KEYS = {
    "targets", "policy", "knob", "floor", "profiles", "fallback", "routing_text", "client_tokens",
    "client_tokens_env", "cache_size", "cache_key_env", "max_body_bytes", "max_batch", "max_wait_ms",
    "max_prompts", "max_queue", "score_timeout_s", "deadline_s", "drain_s", "client_rights", "clients",
    "decision_log_max_bytes", "decision_log_backups", "state", "state_required", "state_timeout_s",
    "state_ttl_s", "session_ttl_s",
}  # fmt: skip
_TARGET_KEYS = {"base_url", "model", "api_key_env", "timeout_s"}
_RIGHTS_KEYS = {"pin", "overrides"}
_CLIENT_KEYS = {"token_env", *_RIGHTS_KEYS}


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
    """A policy and its knob, or a quality floor, selected by the request's ``model``."""

    policy: str
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
    routing_text: str = "last_user"
    client_tokens: tuple[str, ...] = ()  # each gets ``client_rights``; empty (and no clients): open
    cache_size: int = 10_000
    cache_key: bytes | None = None  # HMAC key of the decision cache (None: random per process)
    max_body_bytes: int = 1_000_000
    max_batch: int = 32
    max_wait_ms: float = 3.0
    max_prompts: int = 128  # prompts in one /v1/route request
    max_queue: int = 1024  # prompts waiting for the encoder; a full queue sends to the fallback
    score_timeout_s: float = 2.0  # scoring deadline (queue + forward); past it, the fallback
    deadline_s: float = 120.0  # all upstream attempts of one request, until the response headers
    drain_s: float = 5.0  # after SIGTERM: new requests get 503 while in-flight ones finish
    client_rights: ClientRights = ClientRights()  # rights of the client_tokens (and of open access)
    clients: tuple[Client, ...] = ()  # named clients with rights of their own
    decision_log_max_bytes: int = 100_000_000  # the decision log rotates past this size ...
    decision_log_backups: int = 5  # ... keeping this many old files
    state: str | None = None  # redis://HOST:PORT/DB: cache, sessions and budgets shared by replicas
    state_required: bool = False  # refuse to start while ``state`` is unreachable (else: in-process)
    state_timeout_s: float = 0.5  # every Redis call; past it the request uses the in-process state
    state_ttl_s: float = 86_400.0  # decision cache entries and solved budgets kept in Redis
    session_ttl_s: float = 3_600.0  # a session's target kept in Redis, renewed at each turn

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
        url = _check_url(upstream_url, "--upstream")
        for name in targets:
            _check_target_name(name, "targets")
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
        default = _default_profile(data)
        profiles = _profiles(data.get("profiles") or {}, targets)
        fallback = tuple(_names(data.get("fallback") or [], "fallback", targets))
        routing_text = data.get("routing_text", "last_user")
        if routing_text not in ROUTING_TEXTS:
            raise ConfigError(f"routing_text must be one of {', '.join(ROUTING_TEXTS)}; got {routing_text!r}")
        rights = _rights(data.get("client_rights") or {}, "client_rights", ClientRights())
        return cls(
            targets=upstreams, default=default, profiles=profiles, fallback=fallback,
            routing_text=routing_text, client_tokens=_tokens(data),
            cache_size=_int(data, "cache_size", 10_000, 0), cache_key=_cache_key(data),
            max_body_bytes=_int(data, "max_body_bytes", 1_000_000, 1),
            max_batch=_int(data, "max_batch", 32, 1), max_wait_ms=_number(data, "max_wait_ms", 3.0),
            max_prompts=_int(data, "max_prompts", 128, 1), max_queue=_int(data, "max_queue", 1024, 1),
            score_timeout_s=_number(data, "score_timeout_s", 2.0),
            deadline_s=_number(data, "deadline_s", 120.0),
            drain_s=_number(data, "drain_s", 5.0, allow_zero=True), client_rights=rights,
            clients=_clients(data.get("clients") or {}, rights),
            decision_log_max_bytes=_int(data, "decision_log_max_bytes", 100_000_000, 1000),
            decision_log_backups=_int(data, "decision_log_backups", 5, 0),
            state=check_state_url(data.get("state")), state_required=_bool(data, "state_required"),
            state_timeout_s=_number(data, "state_timeout_s", 0.5),
            state_ttl_s=_number(data, "state_ttl_s", 86_400.0),
            session_ttl_s=_number(data, "session_ttl_s", 3_600.0),
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
        if not isinstance(model, str) or not model or not model.isprintable():
            raise ConfigError(f"{where}.model must be a non-empty printable string; got {model!r}")
        url = _check_url(spec.get("base_url"), f"{where}.base_url")
        out[name] = UpstreamTarget(name, url, model, key_env, _number(spec, "timeout_s", 60.0, where))
    return out


def _default_profile(data: Mapping[str, Any]) -> Profile:
    """The top-level ``floor`` or ``policy``/``knob`` (not both); neither: :data:`DEFAULT_PROFILE`."""
    if "floor" in data:
        if "policy" in data or "knob" in data:
            raise ConfigError("set either floor or policy/knob at the top level, not both")
        return _profile(data["floor"], "floor", floor_only=True)
    if "policy" not in data and "knob" not in data:
        return DEFAULT_PROFILE
    return _profile({key: data[key] for key in ("policy", "knob") if key in data}, "")


def _profile(raw: Any, where: str, *, floor_only: bool = False) -> Profile:
    from prefill_router.policy import DEFAULT_KNOBS, POLICIES, check_knob

    prefix = f"{where}." if where else ""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping {{policy, knob}} or {{within | min_accuracy, delta}}")
    if floor_only or any(key in raw for key in FLOOR_FIELDS):
        return Profile("budget", 0.0, _floor(raw, where))
    policy = raw.get("policy", "budget")
    if policy not in POLICIES:
        raise ConfigError(f"{prefix}policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    knob = raw.get("knob", DEFAULT_KNOBS[policy])  # a policy without its knob: the same default everywhere
    if isinstance(knob, bool) or not isinstance(knob, int | float):
        raise ConfigError(f"{prefix}knob must be a number; got {knob!r}")
    try:
        return Profile(policy, check_knob(policy, float(knob)))
    except ConfigError as exc:
        raise ConfigError(f"{prefix}knob: {exc}") from exc


#: The fields of a quality floor, in a profile, the top-level ``floor`` and a request's ``router``.
FLOOR_FIELDS = ("within", "min_accuracy", "delta")


def _floor(raw: Mapping[str, Any], where: str) -> QualityFloor:
    """A floor from ``{within: "1pt[:TARGET]" | min_accuracy: 0.85, delta: 0.05}``."""
    unknown = sorted(set(raw) - set(FLOOR_FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r} of a floor; expected {', '.join(FLOOR_FIELDS)}"
        )
    try:
        return parse_floor(raw.get("within"), raw.get("min_accuracy"), raw.get("delta"))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def parse_floor(within: Any, min_accuracy: Any, delta: Any) -> QualityFloor:
    """One floor from its fields as they come from YAML or JSON.

    Raises:
        ConfigError: both or neither of within / min_accuracy, or a bad value.
    """
    if (within is None) == (min_accuracy is None):
        raise ConfigError("a quality floor needs exactly one of within ('1pt[:TARGET]') or min_accuracy")
    risk = DEFAULT_DELTA if delta is None else delta
    if isinstance(risk, bool) or not isinstance(risk, int | float):
        raise ConfigError(f"delta must be a number in (0, 0.5]; got {delta!r}")
    if within is not None:
        if not isinstance(within, str):
            raise ConfigError(f"within must read '1pt[:TARGET]' or '99%[:TARGET]'; got {within!r}")
        return QualityFloor.parse(within, delta=float(risk))
    if isinstance(min_accuracy, bool) or not isinstance(min_accuracy, int | float):
        raise ConfigError(f"min_accuracy must be a number in (0, 1]; got {min_accuracy!r}")
    return QualityFloor(min_accuracy=float(min_accuracy), delta=float(risk))


def _profiles(raw: Any, targets: Sequence[str]) -> dict[str, Profile]:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            "profiles must map model names to {policy, knob} or a floor {within | min_accuracy}"
        )
    for name in raw:
        if name == ROUTER_MODEL or name in targets:
            taken = "the router" if name == ROUTER_MODEL else "a target"
            raise ConfigError(f"profiles.{name}: the name is taken by {taken}")
        _check_target_name(name, "profiles")  # a profile name travels in headers and logs as well
    return {str(name): _profile(spec, f"profiles.{name}") for name, spec in raw.items()}


def _names(raw: Any, where: str, targets: Sequence[str]) -> list[str]:
    from prefill_router.errors import UnknownTargetError

    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise ConfigError(f"{where} must be a list of target names; got {raw!r}")
    for name in raw:
        _check_target_name(name, where)
        if name not in targets:
            raise ConfigError(f"{where}: {UnknownTargetError(name, targets)}")
    return list(raw)


def _check_target_name(name: Any, where: str) -> None:
    """Raise ConfigError for a name that could break a header or a log line (CR/LF, non-latin-1...)."""
    from prefill_router.data.importers import target_name_problem

    problem = target_name_problem(name)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")


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


def _rights(raw: Any, where: str, default: ClientRights) -> ClientRights:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping {{pin, overrides}}; got {raw!r}")
    unknown = sorted(set(raw) - _RIGHTS_KEYS - ({"token_env"} if where.startswith("clients.") else set()))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; expected pin, overrides")
    pin = raw.get("pin", default.pin)
    if not isinstance(pin, bool):
        raise ConfigError(f"{where}.pin must be true or false; got {pin!r}")
    overrides = raw.get("overrides", sorted(default.overrides))
    if not isinstance(overrides, list) or not all(o in OVERRIDE_FIELDS for o in overrides):
        raise ConfigError(
            f"{where}.overrides must be a list of router fields among {', '.join(OVERRIDE_FIELDS)}; "
            f"got {overrides!r}"
        )
    return ClientRights(pin, frozenset(overrides))


def _clients(raw: Any, rights: ClientRights) -> tuple[Client, ...]:
    if not isinstance(raw, Mapping):
        raise ConfigError("clients must map client names to {token_env, pin, overrides}")
    out = []
    for name, spec in raw.items():
        where = f"clients.{name}"
        _check_target_name(name, "clients")  # names reach the decision log
        if not isinstance(spec, Mapping) or not isinstance(spec.get("token_env"), str):
            raise ConfigError(f"{where} must be a mapping with token_env (the variable holding its token)")
        unknown = sorted(set(spec) - _CLIENT_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown field {unknown[0]!r}; expected {', '.join(sorted(_CLIENT_KEYS))}"
            )
        token = os.environ.get(spec["token_env"])
        if not token:
            raise ConfigError(f"{where}.token_env: the environment variable {spec['token_env']} is not set")
        out.append(Client(str(name), token, _rights(spec, where, rights)))
    return tuple(out)


def _cache_key(data: Mapping[str, Any]) -> bytes | None:
    env = data.get("cache_key_env")
    if env is None:
        return None
    value = os.environ.get(str(env))
    if not value:
        raise ConfigError(f"cache_key_env: the environment variable {env} is not set")
    return value.encode()


def check_state_url(url: Any, where: str = "state") -> str | None:
    """``url`` when it is a Redis URL (``redis://HOST:PORT/DB``, ``rediss://``, ``unix://PATH``);
    None for None.

    Raises:
        ConfigError: anything else, naming ``where`` (``state`` or ``--state``).
    """
    if url is None:
        return None
    if isinstance(url, str) and url.isprintable() and _redis_url_ok(url):
        return url
    shown = redact_password(url) if isinstance(url, str) else url
    raise ConfigError(
        f"{where} must be a Redis URL such as redis://127.0.0.1:6379/0 (or rediss://, unix://); got {shown!r}"
    )


def _redis_url_ok(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        return False
    if parts.scheme == "unix":
        return bool(parts.path)
    db = parts.path.strip("/")
    return parts.scheme in ("redis", "rediss") and bool(parts.hostname) and (db == "" or db.isdigit())


def redact_password(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    head, at, host = url.rpartition("@")
    scheme, sep, user = head.partition("://")
    if not at or not sep or ":" not in user:
        return url
    return f"{scheme}://{user.split(':')[0]}:***@{host}"


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false; got {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}; got {value!r}")
    return value


def _number(
    data: Mapping[str, Any], key: str, default: float, where: str = "", *, allow_zero: bool = False
) -> float:
    value = data.get(key, default)
    name = f"{where}.{key}" if where else key
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        expected = "a number >= 0" if allow_zero else "a positive number"
        raise ConfigError(f"{name} must be {expected}; got {value!r}")
    return float(value)


def _check_url(url: Any, where: str) -> str:
    if (
        not isinstance(url, str)
        or not url.startswith(("http://", "https://"))
        or not url.isprintable()
        or any(c.isspace() for c in url)
    ):
        raise ConfigError(f"{where} must be an http(s) URL such as http://localhost:4000/v1; got {url!r}")
    return url.rstrip("/")
