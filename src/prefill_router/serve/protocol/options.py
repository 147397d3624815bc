"""The ``router`` extension field: :class:`RouterOptions` on the wire, :class:`Overrides` as the
service reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    Strict,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)

from prefill_router.errors import ApiError, ConfigError
from prefill_router.policy import POLICIES, check_knob
from prefill_router.policy.floor import QualityFloor
from prefill_router.serve.config import OVERRIDE_FIELDS, PolicyName, parse_floor
from prefill_router.serve.protocol._refusals import api_error, bad, refuse_as, refused, shown

MAX_NAME_CHARS = 256  # a ``model`` or ``router.allowed`` name longer than this is refused unread
MAX_ALLOWED = 256  # names in ``router.allowed``
_OVERRIDE_KEYS = OVERRIDE_FIELDS


def _number(key: str, *, finite: bool) -> WrapValidator:
    kind = "a finite number >= 0" if finite else "a number >= 0"
    return refuse_as(f"router.{key}", lambda value: f"router.{key} must be {kind}; got {shown(value)}")


Knob = Annotated[float, Strict(), Field(ge=0)]  # μ may be infinite (always the cheapest)
Usd = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
TargetNames = Annotated[
    list[Annotated[str, Strict(), Field(max_length=MAX_NAME_CHARS)]],
    Field(min_length=1, max_length=MAX_ALLOWED),
]


@dataclass(frozen=True)
class Overrides:
    """Per-request routing options from the ``router`` field (None: the profile's)."""

    policy: str | None = None
    knob: float | None = None
    budget_usd: float | None = None
    floor: QualityFloor | None = None  # a quality floor of this request
    delta: float | None = None  # ``delta`` alone: the profile's floor at this risk
    allowed: tuple[str, ...] | None = None
    max_cost_usd: float | None = None
    session: bool = True  # False: neither reuse nor record this session's target


#: What each ``router`` option does, for /openapi.json.
_DOCS = {
    "policy": "The decision rule instead of the profile's: budget (argmax p − μ·cost), lambda "
    "(λ·p − (1 − λ)·normalised cost) or tolerance (the cheapest within τ of the most likely).",
    "knob": "The policy's knob: μ >= 0 for budget (accuracy per USD; Infinity: the cheapest), λ in [0, 1] "
    "for lambda, τ >= 0 for tolerance. Without a policy: the profile's policy.",
    "budget_usd": "A budget in USD per request: the budget policy's μ is solved for it on the router's "
    "calibration rows.",
    "min_accuracy": "An absolute quality floor: the accuracy to keep, in (0, 1], certified at risk delta.",
    "within": "A quality floor relative to a target: '1pt[:TARGET]' (within 1 point of its accuracy) or "
    "'99%[:TARGET]' (99% of it); no TARGET: the best single target. Certified at risk delta.",
    "delta": "The floor's risk, in (0, 0.5] (default 0.05). Alone: the profile's floor at this risk.",
    "allowed": f"The targets this request may use (1 to {MAX_ALLOWED} names).",
    "max_cost_usd": "A hard cap on this request's estimated cost, in USD (none fits: the cheapest allowed).",
    "session": "false: neither reuse nor record this session's target (session affinity).",
}


class RouterOptions(BaseModel):
    """The ``router`` extension field: this request's routing options, each optional (unset: the
    profile's). It is removed before the request is forwarded."""

    # Fields in the order they are checked: the first bad one is refused.
    model_config = ConfigDict(extra="forbid", frozen=True, title="RouterOptions")

    policy: Annotated[
        PolicyName | None,
        Field(description=_DOCS["policy"]),
        refuse_as(
            "router.policy", lambda v: f"router.policy must be one of {', '.join(POLICIES)}; got {v!r}"
        ),
    ] = None
    knob: Annotated[Knob | None, Field(description=_DOCS["knob"]), _number("knob", finite=False)] = None
    allowed: Annotated[
        TargetNames | None,
        Field(description=_DOCS["allowed"]),
        refuse_as(
            "router.allowed",
            f"router.allowed must be a list of 1 to {MAX_ALLOWED} target names (each at most "
            f"{MAX_NAME_CHARS} characters)",
        ),
    ] = None
    session: Annotated[
        bool,
        Strict(),
        Field(description=_DOCS["session"]),
        refuse_as("router.session", "router.session must be true or false"),
    ] = True
    # The floor's fields are checked together, by _check_floor (on ``delta``, the last of them).
    within: SkipValidation[str | None] = Field(None, description=_DOCS["within"])
    min_accuracy: SkipValidation[float | None] = Field(None, gt=0, le=1, description=_DOCS["min_accuracy"])
    delta: SkipValidation[float | None] = Field(
        None, gt=0, le=0.5, validate_default=True, description=_DOCS["delta"]
    )
    budget_usd: Annotated[
        Usd | None, Field(description=_DOCS["budget_usd"]), _number("budget_usd", finite=True)
    ] = None
    max_cost_usd: Annotated[
        Usd | None, Field(description=_DOCS["max_cost_usd"]), _number("max_cost_usd", finite=True)
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _an_object_of_known_fields(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise refused("'router' must be an object", "router")
        unknown = sorted(set(data) - set(_OVERRIDE_KEYS))
        if unknown:
            raise refused(
                f"unknown field router.{unknown[0]}; expected one of {', '.join(_OVERRIDE_KEYS)}", "router"
            )
        return data

    @field_validator("knob")
    @classmethod
    def _check_knob(cls, knob: float | None, info: ValidationInfo) -> float | None:
        policy = info.data.get("policy")
        if knob is not None and policy is not None:
            try:
                check_knob(policy, knob)
            except ConfigError as exc:
                raise refused(f"router.knob: {exc}", "router.knob") from exc
        return knob

    @field_validator("delta")
    @classmethod
    def _check_floor(cls, delta: Any, info: ValidationInfo) -> Any:
        try:
            _request_floor(info.data.get("within"), info.data.get("min_accuracy"), delta)
        except ApiError as exc:
            raise refused(exc.message, exc.param) from exc
        return None if delta is None else float(delta)

    def overrides(self) -> Overrides:
        """The options as the service reads them: the floor parsed, ``allowed`` a tuple."""
        floor, delta = _request_floor(self.within, self.min_accuracy, self.delta)
        return Overrides(
            policy=self.policy, knob=self.knob, budget_usd=self.budget_usd, floor=floor, delta=delta,
            allowed=None if self.allowed is None else tuple(self.allowed), max_cost_usd=self.max_cost_usd,
            session=self.session,
        )  # fmt: skip


def _request_floor(within: Any, min_accuracy: Any, delta: Any) -> tuple[QualityFloor | None, float | None]:
    """(the request's floor, or None; a lone ``delta`` for the profile's floor).

    Raises:
        ApiError: 400 naming the floor's field.
    """
    param = "router.within" if within is not None else "router.min_accuracy"
    if within is None and min_accuracy is None:
        if delta is None:
            return None, None
        param = "router.delta"
        within = "1pt"  # only to check the delta; the profile's floor is used
    try:
        floor = parse_floor(within, min_accuracy, delta)
    except ConfigError as exc:
        raise bad(f"{param}: {exc}", param) from exc
    if param == "router.delta":
        return None, floor.delta
    return floor, None


def parse_overrides(raw: Any) -> Overrides:
    """Validate the ``router`` field (None: no overrides).

    Raises:
        ApiError: 400 naming the bad sub-field.
    """
    if raw is None:
        return Overrides()
    try:
        return RouterOptions.model_validate(raw).overrides()
    except ValidationError as exc:
        raise api_error(exc) from None
