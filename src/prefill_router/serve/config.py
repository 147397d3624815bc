"""The proxy's settings (``serve.yaml``), validated at start with errors that name the field.

Two layers of pydantic models: :class:`ServeFile` is the YAML document as written (its sections
:class:`TargetSpec`, :class:`ProfileSpec`, :class:`RightsSpec`, :class:`ClientSpec`), checked
against the router's targets and the environment; :meth:`ServeFile.settings` turns it into the
:class:`ServeConfig` the proxy runs on (pydantic dataclasses: :class:`UpstreamTarget`,
:class:`Profile`, :class:`ClientRights`, :class:`Client`). Each field's type carries the words of
its error, so a bad field is a :class:`~prefill_router.errors.ConfigError` naming its path
(``targets.gpt-4o.timeout_s must be a positive number; got 0``), never pydantic's own message.

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

Target names must match ``TARGET_NAME`` (letters, digits and ``_ . : / @ + -``, at most 128), so
that no name can inject a header or a log line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from prefill_router.errors import ConfigError
from prefill_router.policy.floor import DEFAULT_DELTA, DEFAULT_WITHIN, QualityFloor

RoutingTextMode = Literal["last_user", "first_user", "conversation"]
ROUTING_TEXTS: tuple[str, ...] = get_args(RoutingTextMode)
PolicyName = Literal["budget", "lambda", "tolerance"]  # prefill_router.policy.POLICIES (a test checks)
ROUTER_MODEL = "router"
#: The fields of a request's ``router`` object (see :mod:`prefill_router.serve.protocol`).
OVERRIDE_FIELDS = (
    "policy", "knob", "budget_usd", "min_accuracy", "within", "delta", "allowed", "max_cost_usd", "session",
)  # fmt: skip
#: The fields of a quality floor, in a profile, the top-level ``floor`` and a request's ``router``.
FLOOR_FIELDS = ("within", "min_accuracy", "delta")


# ------------------------------------------------------------------------- errors in words
_WRONG = "serve_config"  # the pydantic error type of a worded config error


class _Detail:
    """An error's words, held in its context as an object: pydantic-core turns strings into UTF-8,
    which a YAML string with a lone surrogate is not."""

    def __init__(self, text: str, *, whole: bool) -> None:
        self.text = text
        self.whole = whole  # the whole message, without the field's path


def _wrong(detail: str, *, whole: bool = False) -> PydanticCustomError:
    """An error whose message is the field's path then ``detail`` (" must be ...", ": ..."); at the
    top of the document (or ``whole``), ``detail`` alone."""
    try:
        detail.encode()
        template = detail  # pydantic's own rendering, for developers
    except UnicodeEncodeError:
        template = "invalid serve config value"
    return PydanticCustomError(_WRONG, template, {"detail": _Detail(detail, whole=whole)})


def _config_error(exc: ValidationError, where: str = "") -> ConfigError:
    """The first error of a validation as a ConfigError naming the field's path."""
    error = exc.errors()[0]
    path = ".".join(str(part) for part in (where, *error["loc"]) if part != "")
    if error["type"] != _WRONG:  # a type without words of its own
        return ConfigError(f"{path or 'the serve config'}: {error['msg']}")
    detail: _Detail = error.get("ctx", {})["detail"]
    if not path or detail.whole:
        return ConfigError(detail.text.removeprefix(": "))
    return ConfigError(f"{path}{detail.text}")


def _expect(what: str | Callable[[Any], str]) -> WrapValidator:
    """Any error of the annotated type reads "<path> must be <what>; got <value>" (``what`` may be
    made from the value: then it is the whole detail)."""

    def wrap(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            detail = f" must be {what}; got {value!r}" if isinstance(what, str) else what(value)
            raise _wrong(detail) from None

    return WrapValidator(wrap)


def _not_null(detail: str) -> BeforeValidator:
    """An explicit null is an error (an absent field takes its default)."""

    def check(value: Any) -> Any:
        if value is None:
            raise _wrong(detail)
        return value

    return BeforeValidator(check)


def _empty_as_absent(value: Any) -> Any:
    """A section given as null or empty (``profiles:``, ``fallback: []``) is the default."""
    return value or None


def _no_unknown_fields(data: Any, known: Sequence[str], words: str) -> None:
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise _wrong(f": unknown field {unknown[0]!r}{words}")


def _context(info: ValidationInfo) -> tuple[Sequence[str], Mapping[str, str]]:
    """(the router's targets, the environment) a document is validated against."""
    context = info.context or {}
    return context.get("targets", ()), context.get("environ", os.environ)


# ------------------------------------------------------------------------- field types
def _is_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError("not an http(s) URL")
    return url.rstrip("/")


def _is_printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("not printable")
    return text


def _are_override_fields(names: list[str]) -> list[str]:
    if not all(name in OVERRIDE_FIELDS for name in names):
        raise ValueError("not a router field")
    return names


Url = Annotated[
    str, Strict(), AfterValidator(_is_url), _expect("an http(s) URL such as http://localhost:4000/v1")
]
ModelId = Annotated[
    str, Strict(), Field(min_length=1), AfterValidator(_is_printable), _expect("a non-empty printable string")
]
EnvName = Annotated[str, Strict(), _expect("an environment variable name")]
Count = Annotated[int, Strict(), Field(ge=0), _expect("an integer >= 0")]
PositiveCount = Annotated[int, Strict(), Field(ge=1), _expect("an integer >= 1")]
LogBytes = Annotated[int, Strict(), Field(ge=1000), _expect("an integer >= 1000")]
Seconds = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False), _expect("a positive number")]
SecondsOrZero = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False), _expect("a number >= 0")]
Policy = Annotated[PolicyName, _expect(lambda v: f" must be one of budget, lambda, tolerance; got {v!r}")]
Knob = Annotated[float, Strict(), _expect("a number")]
RoutingText = Annotated[
    RoutingTextMode,
    _expect(lambda v: f" must be one of {', '.join(ROUTING_TEXTS)}; got {v!r}"),
]
OverrideNames = Annotated[
    list[str],
    AfterValidator(_are_override_fields),
    _expect(lambda v: f" must be a list of router fields among {', '.join(OVERRIDE_FIELDS)}; got {v!r}"),
]


# ------------------------------------------------------------------------- what the proxy runs on
def _default(cls: type, name: str) -> Any:
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
        """Validate a parsed config document (a :class:`ServeFile`) against the router's ``targets``.

        Raises:
            ConfigError: the first invalid field, by its path.
        """
        environ = dict(os.environ)
        try:
            document = ServeFile.model_validate(data, context={"targets": tuple(targets), "environ": environ})
        except ValidationError as exc:
            raise _config_error(exc) from None
        return document.settings(environ)


# ------------------------------------------------------------------------- the YAML document
class _Section(BaseModel):
    """A mapping of serve.yaml: known fields only, each checked in declaration order."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetSpec(_Section):
    """``targets.NAME``: where the target's requests go."""

    api_key_env: EnvName | None = None
    model: Annotated[ModelId | None, _not_null(" must be a non-empty printable string; got None")] = None
    base_url: Url = Field(None, validate_default=True)  # missing: refused as None
    timeout_s: Seconds = _default(UpstreamTarget, "timeout_s")

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise _wrong(" must be a mapping with base_url")
        _no_unknown_fields(data, list(cls.model_fields), f"; expected {', '.join(sorted(cls.model_fields))}")
        return data


def _check_knob(policy: str, knob: float) -> float:
    """``knob`` for ``policy``; raises the worded error ": <why>" otherwise."""
    from prefill_router.policy import check_knob

    try:
        return check_knob(policy, knob)
    except ConfigError as exc:
        raise _wrong(f": {exc}") from exc


class FloorSpec(_Section):
    """The top-level ``floor`` (and a profile's): ``{within: "1pt[:TARGET]" | min_accuracy: 0.85,
    delta: 0.05}``. Its fields are checked together, as :func:`parse_floor` reads them."""

    within: SkipValidation[str | None] = None
    min_accuracy: SkipValidation[float | None] = None
    delta: SkipValidation[float | None] = None

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise _wrong(" must be a mapping {policy, knob} or {within | min_accuracy, delta}")
        _no_unknown_fields(data, FLOOR_FIELDS, f" of a floor; expected {', '.join(FLOOR_FIELDS)}")
        return data

    @model_validator(mode="after")
    def _check_floor(self) -> FloorSpec:
        if self.is_floor:
            try:
                parse_floor(self.within, self.min_accuracy, self.delta)
            except ConfigError as exc:
                raise _wrong(f": {exc}") from exc
        return self

    @property
    def is_floor(self) -> bool:
        """Whether this is a quality floor (a profile may be a policy and knob instead)."""
        return True

    def profile(self) -> Profile:
        """The :class:`Profile` it describes."""
        return Profile("budget", 0.0, parse_floor(self.within, self.min_accuracy, self.delta))


class ProfileSpec(FloorSpec):
    """``profiles.NAME``: a quality floor (it names within, min_accuracy or delta), or a policy and
    its knob ``{policy: budget, knob: 2000}`` (default: budget, and the policy's default knob)."""

    policy: Policy = "budget"
    knob: Annotated[Knob | None, _not_null(" must be a number; got None")] = None

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:  # FloorSpec's, which a floor profile still meets
        if not isinstance(data, Mapping):
            raise _wrong(" must be a mapping {policy, knob} or {within | min_accuracy, delta}")
        if any(key in data for key in FLOOR_FIELDS):
            _no_unknown_fields(data, FLOOR_FIELDS, f" of a floor; expected {', '.join(FLOOR_FIELDS)}")
        else:
            _no_unknown_fields(data, ("policy", "knob"), "; expected policy, knob (or a floor's fields)")
        return data

    @field_validator("knob")
    @classmethod
    def _knob_suits_policy(cls, knob: float | None, info: ValidationInfo) -> float | None:
        policy = info.data.get("policy")
        return knob if knob is None or policy is None else _check_knob(policy, knob)

    @property
    def is_floor(self) -> bool:
        """Whether this profile is a quality floor (else a policy and knob)."""
        return bool(self.model_fields_set & set(FLOOR_FIELDS))

    def profile(self) -> Profile:
        """The :class:`Profile` it describes."""
        return super().profile() if self.is_floor else _policy_profile(self.policy, self.knob)


def _policy_profile(policy: PolicyName, knob: float | None) -> Profile:
    """``policy`` with ``knob``, or with its default knob (the same default everywhere)."""
    from prefill_router.policy import DEFAULT_KNOBS

    return Profile(policy, DEFAULT_KNOBS[policy] if knob is None else knob)


class RightsSpec(_Section):
    """``client_rights`` (and a client's own): what a token may ask. Unset: the default rights
    (for a client: ``client_rights``)."""

    pin: Annotated[bool, Strict(), _expect("true or false")] = True
    overrides: OverrideNames = list(OVERRIDE_FIELDS)

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise _wrong(f" must be a mapping {{pin, overrides}}; got {data!r}")
        _no_unknown_fields(data, list(cls.model_fields), "; expected pin, overrides")
        return data

    def rights(self, default: ClientRights) -> ClientRights:
        """The rights, ``default``'s where a field is unset."""
        pin = self.pin if "pin" in self.model_fields_set else default.pin
        overrides = frozenset(self.overrides) if "overrides" in self.model_fields_set else default.overrides
        return ClientRights(pin, overrides)


class ClientSpec(RightsSpec):
    """``clients.NAME``: the variable holding the client's token, and its rights."""

    token_env: str

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping) or not isinstance(data.get("token_env"), str):
            raise _wrong(" must be a mapping with token_env (the variable holding its token)")
        _no_unknown_fields(data, list(cls.model_fields), f"; expected {', '.join(sorted(cls.model_fields))}")
        if not _context(info)[1].get(data["token_env"]):
            raise _wrong(f".token_env: the environment variable {data['token_env']} is not set")
        return data


_FLOOR_AND_POLICY = object()  # stands for a top-level floor given with a policy or knob


def _alone(floor: Any) -> Any:
    if floor is _FLOOR_AND_POLICY:
        raise _wrong("set either floor or policy/knob at the top level, not both", whole=True)
    return floor


#: The settings that go from serve.yaml to ServeConfig as they are written.
_AS_WRITTEN = {
    "routing_text", "cache_size", "max_body_bytes", "max_batch", "max_wait_ms", "max_prompts", "max_queue",
    "score_timeout_s", "deadline_s", "drain_s", "decision_log_max_bytes", "decision_log_backups",
}  # fmt: skip


class ServeFile(_Section):
    """A ``serve.yaml`` document; fields in the order they are checked (the first bad one is the
    error). Validate it with ``context={"targets": the router's targets, "environ": os.environ}``."""

    targets: dict[str, TargetSpec] = Field(None, validate_default=True)  # missing: refused as None
    floor: Annotated[
        FloorSpec | None,
        _not_null(" must be a mapping {policy, knob} or {within | min_accuracy, delta}"),
        BeforeValidator(_alone),
    ] = None
    policy: Policy = "budget"
    knob: Annotated[Knob | None, _not_null(" must be a number; got None")] = None
    profiles: dict[str, ProfileSpec] | None = None
    fallback: list[str] | None = None
    routing_text: RoutingText = _default(ServeConfig, "routing_text")
    client_rights: Annotated[RightsSpec | None, BeforeValidator(_empty_as_absent)] = None
    client_tokens: Annotated[
        list[Annotated[str, Strict(), Field(min_length=1)]] | None,
        BeforeValidator(_empty_as_absent),
        _expect(lambda v: " must be a list of non-empty strings"),
    ] = None
    client_tokens_env: SkipValidation[str | None] = None  # any scalar: its str() names the variable
    cache_size: Count = _default(ServeConfig, "cache_size")
    cache_key_env: SkipValidation[str | None] = None
    max_body_bytes: PositiveCount = _default(ServeConfig, "max_body_bytes")
    max_batch: PositiveCount = _default(ServeConfig, "max_batch")
    max_wait_ms: Seconds = _default(ServeConfig, "max_wait_ms")
    max_prompts: PositiveCount = _default(ServeConfig, "max_prompts")
    max_queue: PositiveCount = _default(ServeConfig, "max_queue")
    score_timeout_s: Seconds = _default(ServeConfig, "score_timeout_s")
    deadline_s: Seconds = _default(ServeConfig, "deadline_s")
    drain_s: SecondsOrZero = _default(ServeConfig, "drain_s")
    clients: dict[str, ClientSpec] | None = None
    decision_log_max_bytes: LogBytes = _default(ServeConfig, "decision_log_max_bytes")
    decision_log_backups: Count = _default(ServeConfig, "decision_log_backups")

    @model_validator(mode="before")
    @classmethod
    def _a_mapping_of_known_fields(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise _wrong(f"the serve config must be a mapping; got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.model_fields), key=str)
        if unknown:
            raise _wrong(
                f"unknown field {unknown[0]!r}; expected one of {', '.join(sorted(cls.model_fields))}"
            )
        if "floor" in data and ("policy" in data or "knob" in data):
            return {**data, "floor": _FLOOR_AND_POLICY}  # the floor's error, checked in its turn
        return data

    @field_validator("targets", mode="before")
    @classmethod
    def _every_target_once(cls, raw: Any, info: ValidationInfo) -> Any:
        names = _context(info)[0]
        if not isinstance(raw, Mapping) or not raw:
            raise _wrong(" must map each target name to {base_url, model, api_key_env, timeout_s}")
        missing = [name for name in names if name not in raw]
        if missing:
            raise _wrong(f": the router's target {missing[0]!r} has no upstream")
        _check_names(list(raw), names)
        return raw

    @field_validator("knob")
    @classmethod
    def _knob_suits_policy(cls, knob: float | None, info: ValidationInfo) -> float | None:
        policy = info.data.get("policy")
        return knob if knob is None or policy is None else _check_knob(policy, knob)

    @field_validator("profiles", mode="before")
    @classmethod
    def _free_names(cls, raw: Any, info: ValidationInfo) -> Any:
        if not raw:  # null or empty: none
            return None
        if not isinstance(raw, Mapping):
            raise _wrong(" must map model names to {policy, knob} or a floor {within | min_accuracy}")
        for name in raw:
            if name == ROUTER_MODEL or name in _context(info)[0]:
                raise _wrong(
                    f".{name}: the name is taken by {'the router' if name == ROUTER_MODEL else 'a target'}"
                )
            _check_target_name(name, "")  # a profile name travels in headers and logs as well
        return raw

    @field_validator("fallback", mode="before")
    @classmethod
    def _known_targets(cls, raw: Any, info: ValidationInfo) -> Any:
        if not raw:  # null or empty: none
            return None
        _check_names(raw, _context(info)[0])
        return raw

    @field_validator("client_tokens_env", "cache_key_env")
    @classmethod
    def _variable_is_set(cls, env: Any, info: ValidationInfo) -> Any:
        if env is not None and not _context(info)[1].get(str(env)):
            raise _wrong(f": the environment variable {env} is not set")
        return env

    @field_validator("clients", mode="before")
    @classmethod
    def _client_names(cls, raw: Any) -> Any:
        if not raw:  # null or empty: none
            return None
        if not isinstance(raw, Mapping):
            raise _wrong(" must map client names to {token_env, pin, overrides}")
        for name in raw:
            _check_target_name(name, "")  # names reach the decision log
        return raw

    def settings(self, environ: Mapping[str, str]) -> ServeConfig:
        """The :class:`ServeConfig` this document describes (tokens read from ``environ``)."""
        rights = (self.client_rights or RightsSpec()).rights(ClientRights())
        tokens = list(self.client_tokens or [])
        if self.client_tokens_env is not None:
            tokens += [t.strip() for t in environ[str(self.client_tokens_env)].split(",") if t.strip()]
        upstreams = {
            name: UpstreamTarget(name, spec.base_url, spec.model or name, spec.api_key_env, spec.timeout_s)
            for name, spec in self.targets.items()
        }
        clients = tuple(
            Client(name, environ[spec.token_env], spec.rights(rights))
            for name, spec in (self.clients or {}).items()
        )
        return ServeConfig(
            targets=upstreams, default=self._default_profile(),
            profiles={name: spec.profile() for name, spec in (self.profiles or {}).items()},
            fallback=tuple(self.fallback or ()), client_tokens=tuple(tokens),
            cache_key=None if self.cache_key_env is None else environ[str(self.cache_key_env)].encode(),
            client_rights=rights, clients=clients, **self.model_dump(include=_AS_WRITTEN),
        )  # fmt: skip

    def _default_profile(self) -> Profile:
        """The top-level ``floor`` or ``policy``/``knob``; neither: :data:`DEFAULT_PROFILE`."""
        if self.floor is not None:
            return self.floor.profile()
        if "policy" not in self.model_fields_set and "knob" not in self.model_fields_set:
            return DEFAULT_PROFILE
        return _policy_profile(self.policy, self.knob)


# ------------------------------------------------------------------------- shared checks
def parse_floor(within: Any, min_accuracy: Any, delta: Any) -> QualityFloor:
    """One floor from its fields as they come from YAML or JSON.

    Raises:
        ConfigError: both or neither of within / min_accuracy, or a bad value.
    """
    if (within is None) == (min_accuracy is None):
        raise ConfigError("a quality floor needs exactly one of within ('1pt[:TARGET]') or min_accuracy")
    risk = DEFAULT_DELTA if delta is None else delta
    if not _is_float(risk):
        raise ConfigError(f"delta must be a number in (0, 0.5]; got {delta!r}")
    if within is not None:
        if not isinstance(within, str):
            raise ConfigError(f"within must read '1pt[:TARGET]' or '99%[:TARGET]'; got {within!r}")
        return QualityFloor.parse(within, delta=float(risk))
    if not _is_float(min_accuracy):
        raise ConfigError(f"min_accuracy must be a number in (0, 1]; got {min_accuracy!r}")
    return QualityFloor(min_accuracy=float(min_accuracy), delta=float(risk))


def _is_float(value: Any) -> bool:
    """A number (not a bool) that a float holds: JSON and YAML integers can have any number of digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _check_names(raw: Any, targets: Sequence[str]) -> None:
    """Raise the worded error unless ``raw`` is a list of the router's target names."""
    from prefill_router.errors import UnknownTargetError

    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise _wrong(f" must be a list of target names; got {raw!r}")
    for name in raw:
        _check_target_name(name, "")
        if name not in targets:
            raise _wrong(f": {UnknownTargetError(name, targets)}")


def _check_target_name(name: Any, where: str) -> None:
    """Raise for a name that could break a header or a log line (CR/LF, non-latin-1...): ConfigError
    naming ``where``, or (``where`` empty) the worded error of the field being validated."""
    from prefill_router.data.importers import target_name_problem

    problem = target_name_problem(name)
    if problem is not None:
        if not where:
            raise _wrong(f": {problem}")
        raise ConfigError(f"{where}: {problem}")


_URL = TypeAdapter(Url)


def _check_url(url: Any, where: str) -> str:
    """``url`` without its trailing slash; ConfigError naming ``where`` unless it is an http(s) URL."""
    try:
        return _URL.validate_python(url)
    except ValidationError as exc:
        raise _config_error(exc, where) from None
