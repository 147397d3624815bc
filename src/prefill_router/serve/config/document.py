"""``serve.yaml`` as written: :class:`ServeFile` and its sections, checked against the router's
targets and the environment; :meth:`ServeFile.settings` gives the :class:`ServeConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from prefill_router.errors import ConfigError
from prefill_router.serve.config._fields import (
    FLOOR_FIELDS,
    OVERRIDE_FIELDS,
    ROUTER_MODEL,
    Count,
    EnvName,
    Flag,
    Knob,
    LogBytes,
    ModelId,
    OverrideNames,
    Policy,
    PolicyName,
    PositiveCount,
    RedisUrl,
    RoutingText,
    Seconds,
    SecondsOrZero,
    Url,
    check_knob_words,
    check_names,
    check_target_name,
    empty_as_absent,
    expect,
    no_unknown_fields,
    not_null,
    parse_floor,
    validation_context,
    wrong,
)
from prefill_router.serve.config.settings import (
    DEFAULT_PROFILE,
    Client,
    ClientRights,
    Profile,
    ServeConfig,
    UpstreamTarget,
    default_of,
)


def knob_suits_policy(knob: float | None, info: ValidationInfo) -> float | None:
    """A ``knob`` in the range of the ``policy`` beside it (a profile's or the top level's)."""
    policy = info.data.get("policy")
    return knob if knob is None or policy is None else check_knob_words(policy, knob)


class _Section(BaseModel):
    """A mapping of serve.yaml: known fields only, each checked in declaration order."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetSpec(_Section):
    """``targets.NAME``: where the target's requests go."""

    api_key_env: EnvName | None = None
    model: Annotated[ModelId | None, not_null(" must be a non-empty printable string; got None")] = None
    base_url: Url = Field(None, validate_default=True)  # missing: refused as None
    timeout_s: Seconds = default_of(UpstreamTarget, "timeout_s")

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise wrong(" must be a mapping with base_url")
        no_unknown_fields(data, list(cls.model_fields), f"; expected {', '.join(sorted(cls.model_fields))}")
        return data


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
            raise wrong(" must be a mapping {policy, knob} or {within | min_accuracy, delta}")
        no_unknown_fields(data, FLOOR_FIELDS, f" of a floor; expected {', '.join(FLOOR_FIELDS)}")
        return data

    @model_validator(mode="after")
    def _check_floor(self) -> FloorSpec:
        if self.is_floor:
            try:
                parse_floor(self.within, self.min_accuracy, self.delta)
            except ConfigError as exc:
                raise wrong(f": {exc}") from exc
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
    knob: Annotated[Knob | None, not_null(" must be a number; got None")] = None

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:  # FloorSpec's, which a floor profile still meets
        if not isinstance(data, Mapping):
            raise wrong(" must be a mapping {policy, knob} or {within | min_accuracy, delta}")
        if any(key in data for key in FLOOR_FIELDS):
            no_unknown_fields(data, FLOOR_FIELDS, f" of a floor; expected {', '.join(FLOOR_FIELDS)}")
        else:
            no_unknown_fields(data, ("policy", "knob"), "; expected policy, knob (or a floor's fields)")
        return data

    _knob_suits_policy = field_validator("knob")(knob_suits_policy)

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

    pin: Annotated[bool, Strict(), expect("true or false")] = True
    overrides: OverrideNames = list(OVERRIDE_FIELDS)

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise wrong(f" must be a mapping {{pin, overrides}}; got {data!r}")
        no_unknown_fields(data, list(cls.model_fields), "; expected pin, overrides")
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
            raise wrong(" must be a mapping with token_env (the variable holding its token)")
        no_unknown_fields(data, list(cls.model_fields), f"; expected {', '.join(sorted(cls.model_fields))}")
        if not validation_context(info)[1].get(data["token_env"]):
            raise wrong(f".token_env: the environment variable {data['token_env']} is not set")
        return data


_FLOOR_AND_POLICY = object()  # stands for a top-level floor given with a policy or knob


def _alone(floor: Any) -> Any:
    if floor is _FLOOR_AND_POLICY:
        raise wrong("set either floor or policy/knob at the top level, not both", whole=True)
    return floor


#: The settings that go from serve.yaml to ServeConfig as they are written.
_AS_WRITTEN = {
    "routing_text", "cache_size", "max_body_bytes", "max_batch", "max_wait_ms", "max_prompts", "max_queue",
    "score_timeout_s", "deadline_s", "drain_s", "decision_log_max_bytes", "decision_log_backups", "state",
    "state_required", "state_timeout_s", "state_ttl_s", "session_ttl_s",
}  # fmt: skip


def _client_name(name: Any) -> Any:
    """A client's name (checked with its entry: it reaches the decision log)."""
    try:
        check_target_name(name, "clients")
    except ConfigError as exc:
        raise wrong(str(exc), whole=True) from exc
    return name


ClientName = Annotated[str, BeforeValidator(_client_name)]


class ServeFile(_Section):
    """A ``serve.yaml`` document; fields in the order they are checked (the first bad one is the
    error). Validate it with ``context={"targets": the router's targets, "environ": os.environ}``."""

    targets: dict[str, TargetSpec] = Field(None, validate_default=True)  # missing: refused as None
    floor: Annotated[
        FloorSpec | None,
        not_null(" must be a mapping {policy, knob} or {within | min_accuracy, delta}"),
        BeforeValidator(_alone),
    ] = None
    policy: Policy = "budget"
    knob: Annotated[Knob | None, not_null(" must be a number; got None")] = None
    profiles: dict[str, ProfileSpec] | None = None
    fallback: list[str] | None = None
    routing_text: RoutingText = default_of(ServeConfig, "routing_text")
    client_rights: Annotated[RightsSpec | None, BeforeValidator(empty_as_absent)] = None
    client_tokens: Annotated[
        list[Annotated[str, Strict(), Field(min_length=1)]] | None,
        BeforeValidator(empty_as_absent),
        expect(lambda v: " must be a list of non-empty strings"),
    ] = None
    client_tokens_env: SkipValidation[str | None] = None  # any scalar: its str() names the variable
    cache_size: Count = default_of(ServeConfig, "cache_size")
    cache_key_env: SkipValidation[str | None] = None
    max_body_bytes: PositiveCount = default_of(ServeConfig, "max_body_bytes")
    max_batch: PositiveCount = default_of(ServeConfig, "max_batch")
    max_wait_ms: Seconds = default_of(ServeConfig, "max_wait_ms")
    max_prompts: PositiveCount = default_of(ServeConfig, "max_prompts")
    max_queue: PositiveCount = default_of(ServeConfig, "max_queue")
    score_timeout_s: Seconds = default_of(ServeConfig, "score_timeout_s")
    deadline_s: Seconds = default_of(ServeConfig, "deadline_s")
    drain_s: SecondsOrZero = default_of(ServeConfig, "drain_s")
    clients: dict[ClientName, ClientSpec] | None = None
    decision_log_max_bytes: LogBytes = default_of(ServeConfig, "decision_log_max_bytes")
    decision_log_backups: Count = default_of(ServeConfig, "decision_log_backups")
    state: RedisUrl | None = None
    state_required: Flag = default_of(ServeConfig, "state_required")
    state_timeout_s: Seconds = default_of(ServeConfig, "state_timeout_s")
    state_ttl_s: Seconds = default_of(ServeConfig, "state_ttl_s")
    session_ttl_s: Seconds = default_of(ServeConfig, "session_ttl_s")

    @model_validator(mode="before")
    @classmethod
    def _a_mapping_of_known_fields(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise wrong(f"the serve config must be a mapping; got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.model_fields), key=str)
        if unknown:
            raise wrong(
                f"unknown field {unknown[0]!r}; expected one of {', '.join(sorted(cls.model_fields))}"
            )
        if "floor" in data and ("policy" in data or "knob" in data):
            return {**data, "floor": _FLOOR_AND_POLICY}  # the floor's error, checked in its turn
        return data

    @field_validator("targets", mode="before")
    @classmethod
    def _every_target_once(cls, raw: Any, info: ValidationInfo) -> Any:
        names = validation_context(info)[0]
        if not isinstance(raw, Mapping) or not raw:
            raise wrong(" must map each target name to {base_url, model, api_key_env, timeout_s}")
        missing = [name for name in names if name not in raw]
        if missing:
            raise wrong(f": the router's target {missing[0]!r} has no upstream")
        check_names(list(raw), names)
        return raw

    _knob_suits_policy = field_validator("knob")(knob_suits_policy)

    @field_validator("profiles", mode="before")
    @classmethod
    def _free_names(cls, raw: Any, info: ValidationInfo) -> Any:
        if not raw:  # null or empty: none
            return None
        if not isinstance(raw, Mapping):
            raise wrong(" must map model names to {policy, knob} or a floor {within | min_accuracy}")
        for name in raw:
            if name == ROUTER_MODEL or name in validation_context(info)[0]:
                raise wrong(
                    f".{name}: the name is taken by {'the router' if name == ROUTER_MODEL else 'a target'}"
                )
            check_target_name(name, "")  # a profile name travels in headers and logs as well
        return raw

    @field_validator("fallback", mode="before")
    @classmethod
    def _known_targets(cls, raw: Any, info: ValidationInfo) -> Any:
        if not raw:  # null or empty: none
            return None
        check_names(raw, validation_context(info)[0])
        return raw

    @field_validator("client_tokens_env", "cache_key_env")
    @classmethod
    def _variable_is_set(cls, env: Any, info: ValidationInfo) -> Any:
        if env is not None and not validation_context(info)[1].get(str(env)):
            raise wrong(f": the environment variable {env} is not set")
        return env

    @field_validator("clients", mode="before")
    @classmethod
    def _client_names(cls, raw: Any) -> Any:
        if not raw:  # null or empty: none
            return None
        if not isinstance(raw, Mapping):
            raise wrong(" must map client names to {token_env, pin, overrides}")
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
