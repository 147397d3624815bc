"""The wire protocol: the proxy's request and response bodies as pydantic models, and a decision's
wire forms (:class:`Routed`: the ``x-router-*`` headers and the ``/v1/route`` object).

Requests (:class:`ChatCompletionRequest`, :class:`RouteRequest`) type the fields the proxy reads
and let every other field through: the chat body is forwarded as it was received (only ``model``
replaced, ``router`` removed), never re-serialized from its model. Each field's type carries the
words of its refusal, so a malformed field is refused as :class:`~prefill_router.errors.ApiError`
(400, naming the field), never with pydantic's own message.

The ``router`` extension field (:class:`RouterOptions`), one extra object in a chat-completions or
route request::

    {"model": "router", "messages": [...],
     "router": {"policy": "tolerance", "knob": 0.05,     # or lambda / budget (μ)
                "budget_usd": 0.002,                      # a budget: μ solved on calibration rows
                "within": "1pt:gpt-4o", "delta": 0.05,    # a quality floor, certified on them
                "min_accuracy": 0.85,                     # (or an absolute one)
                "allowed": ["small", "large"],            # candidate targets of this request
                "max_cost_usd": 0.001,                    # hard cap on the estimated cost
                "session": false}}                        # opt out of session affinity

Responses: :class:`RouteDecision` (:class:`RouteDecisionList` for ``prompts``) and the OpenAI
error envelope :class:`ErrorResponse`. :func:`openapi_schemas` gives the request bodies to
``/openapi.json`` (the handlers read the raw body themselves, for its size limit).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Required

from pydantic import (
    AfterValidator,
    BaseModel,
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
    with_config,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from prefill_router.errors import ApiError, ConfigError
from prefill_router.policy import POLICIES, Decision, check_knob
from prefill_router.policy.floor import QualityFloor
from prefill_router.serve.config import OVERRIDE_FIELDS, ROUTER_MODEL, PolicyName, parse_floor

_OVERRIDE_KEYS = OVERRIDE_FIELDS
MAX_NAME_CHARS = 256  # a ``model`` or ``router.allowed`` name longer than this is refused unread
MAX_ALLOWED = 256  # names in ``router.allowed``
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# How a lone surrogate reaches json.loads: as an escape, or as raw bytes it decodes with surrogatepass
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_ASCII = str.maketrans(
    {"μ": "mu", "λ": "lambda", "τ": "tau", "δ": "delta", "−": "-", "·": "*", "ĉ": "c_norm", "…": "..."}
)


# ------------------------------------------------------------------------- refusals
_REFUSED = "refused"  # the pydantic error type that carries the ApiError a client gets


def _refused(message: str, param: str | None, code: str | None = None) -> PydanticCustomError:
    # The ApiError rides in the context: pydantic-core could not hold a message with a lone surrogate.
    refusal = ApiError(400, message, param=param, code=code)
    return PydanticCustomError(_REFUSED, "refused by the proxy", {"refusal": refusal})


def _refuse_as(param: str, message: str | Callable[[Any], str], *, null: bool = True) -> WrapValidator:
    """Any error of the annotated type becomes this refusal (``message``: a text, or one made from
    the value); ``null=False`` refuses an explicit null as well (absent is still fine)."""

    def wrap(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value is None and not null:
            raise _refused(message if isinstance(message, str) else message(value), param)
        try:
            return handler(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == _REFUSED:  # worded further in (a message of ``messages``): keep it
                raise PydanticCustomError(_REFUSED, "refused by the proxy", first.get("ctx")) from None
            raise _refused(message if isinstance(message, str) else message(value), param) from None

    return WrapValidator(wrap)


def _api_error(exc: ValidationError) -> ApiError:
    """The first error of a validation as the ApiError the client gets (fields in check order)."""
    error = exc.errors()[0]
    if error["type"] == _REFUSED:
        refusal: ApiError = error.get("ctx", {})["refusal"]
        return refusal
    where = ".".join(str(part) for part in error["loc"])  # a field whose type has no words of its own
    return ApiError(400, f"{where or 'the body'}: {error['msg']}", param=where or None)


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------- field types
ModelName = Annotated[
    str,
    Strict(),
    Field(
        min_length=1, max_length=MAX_NAME_CHARS,
        description="'router', a profile of the proxy, or a target name (pinned).",
    ),
    _refuse_as(
        "model",
        lambda model: (
            f"'model' has {len(model)} characters; model names have at most {MAX_NAME_CHARS}"
            if isinstance(model, str) and len(model) > MAX_NAME_CHARS
            else "'model' must be 'router', a profile or a target name"
        ),
    ),
]  # fmt: skip


@with_config(ConfigDict(extra="allow"))
class ChatMessage(TypedDict, total=False):
    """One chat message as the proxy reads it (a dict; every other key passes through)."""

    role: Required[Annotated[str, Strict(), Field(description="system, user, assistant, tool ...")]]
    content: Annotated[Any, Field(description="A string, or a list of parts (the text parts are routed on).")]


def _check_messages(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError as exc:
        index = exc.errors()[0]["loc"][:1]  # the first bad message, or () for the list itself
        if index:
            raise _refused(
                f"messages[{index[0]}] must be an object with a 'role'", f"messages[{index[0]}]"
            ) from None
        raise _refused("'messages' must be a non-empty list of chat messages", "messages") from None


Messages = Annotated[
    list[ChatMessage], Field(min_length=1, description="The chat messages."), WrapValidator(_check_messages)
]


def _number(key: str, *, finite: bool) -> WrapValidator:
    kind = "a finite number >= 0" if finite else "a number >= 0"
    return _refuse_as(f"router.{key}", lambda value: f"router.{key} must be {kind}; got {_shown(value)}")


def _has_text(text: str) -> str:
    if not text.strip():
        raise ValueError("blank")
    return text


_MODEL = TypeAdapter(ModelName)
_MESSAGES = TypeAdapter(Messages)
Knob = Annotated[float, Strict(), Field(ge=0)]  # μ may be infinite (always the cheapest)
Usd = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
TargetNames = Annotated[
    list[Annotated[str, Strict(), Field(max_length=MAX_NAME_CHARS)]],
    Field(min_length=1, max_length=MAX_ALLOWED),
]
PromptText = Annotated[str, Strict(), AfterValidator(_has_text)]
Prompts = Annotated[list[PromptText], Field(min_length=1)]


# ------------------------------------------------------------------------- the router field
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
        _refuse_as(
            "router.policy", lambda v: f"router.policy must be one of {', '.join(POLICIES)}; got {v!r}"
        ),
    ] = None
    knob: Annotated[Knob | None, Field(description=_DOCS["knob"]), _number("knob", finite=False)] = None
    allowed: Annotated[
        TargetNames | None,
        Field(description=_DOCS["allowed"]),
        _refuse_as(
            "router.allowed",
            f"router.allowed must be a list of 1 to {MAX_ALLOWED} target names (each at most "
            f"{MAX_NAME_CHARS} characters)",
        ),
    ] = None
    session: Annotated[
        bool,
        Strict(),
        Field(description=_DOCS["session"]),
        _refuse_as("router.session", "router.session must be true or false"),
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
            raise _refused("'router' must be an object", "router")
        unknown = sorted(set(data) - set(_OVERRIDE_KEYS))
        if unknown:
            raise _refused(
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
                raise _refused(f"router.knob: {exc}", "router.knob") from exc
        return knob

    @field_validator("delta")
    @classmethod
    def _check_floor(cls, delta: Any, info: ValidationInfo) -> Any:
        try:
            _request_floor(info.data.get("within"), info.data.get("min_accuracy"), delta)
        except ApiError as exc:
            raise _refused(exc.message, exc.param) from exc
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
        raise _bad(f"{param}: {exc}", param) from exc
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
        raise _api_error(exc) from None


# ------------------------------------------------------------------------- requests
class ChatCompletionRequest(BaseModel):
    """A chat completion request as the proxy reads it; every other OpenAI field passes through
    unchanged."""

    # The handler checks ``model`` (then looks it up) and ``messages`` first (check_model,
    # check_messages), then the client's rights; ``parse`` refuses ``router``, then ``stream``.
    model_config = ConfigDict(extra="allow", frozen=True, title="ChatCompletionRequest")

    model: ModelName
    messages: Messages
    router: RouterOptions | None = Field(None, description="The proxy's routing options (removed upstream).")
    stream: Annotated[
        bool,
        Strict(),
        Field(description="Stream the answer as server-sent events."),
        _refuse_as("stream", "'stream' must be true or false"),
    ] = False
    user: Any = Field(None, description="The OpenAI end-user id; a string keys session affinity.")

    @model_validator(mode="before")
    @classmethod
    def _absent_as_null(cls, data: Any) -> Any:
        """A missing ``model`` or ``messages`` is refused in the same words as a null one."""
        return {"model": None, "messages": None, **data} if isinstance(data, Mapping) else data

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> ChatCompletionRequest:
        """The body's fields the proxy reads.

        Raises:
            ApiError: 400 naming the first bad field.
        """
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise _api_error(exc) from None

    @property
    def overrides(self) -> Overrides:
        """The ``router`` options (none: the profile's)."""
        return Overrides() if self.router is None else self.router.overrides()

    @property
    def session_user(self) -> str | None:
        """The ``user`` field when it is a string (a session id); anything else is passed on unread."""
        return self.user if isinstance(self.user, str) else None


_SOURCES = ("prompts", "prompt", "messages")  # of a route request's text, the first present is read


class RouteRequest(BaseModel):
    """A ``/v1/route`` request: ``prompts`` (a batch), ``prompt`` or ``messages``, the first present
    (the others are not read); other fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, title="RouteRequest")

    model: ModelName = ROUTER_MODEL
    router: RouterOptions | None = Field(None, description="The proxy's routing options.")
    prompts: Annotated[
        Prompts | None,
        Field(description="A batch of prompts (at most max_prompts): a list of decisions."),
        _refuse_as("prompts", "'prompts' must be a non-empty list of non-empty strings", null=False),
    ] = None
    prompt: Annotated[
        PromptText | None,
        Field(description="One prompt."),
        _refuse_as("prompt", "'prompt' must be a non-empty string", null=False),
    ] = None
    messages: Annotated[
        Messages | None,
        _refuse_as("messages", "'messages' must be a non-empty list of chat messages", null=False),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _first_source_only(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for i, key in enumerate(_SOURCES):
                if key in data:
                    return {k: v for k, v in data.items() if k not in _SOURCES[i + 1 :]}
        return data

    @field_validator("prompts", mode="before")
    @classmethod
    def _at_most_max_prompts(cls, prompts: Any, info: ValidationInfo) -> Any:
        limit = (info.context or {}).get("max_prompts")
        if limit is not None and isinstance(prompts, list) and len(prompts) > limit:
            raise _refused(
                f"'prompts' holds {len(prompts)} prompts; one request may hold at most {limit} "
                "(max_prompts); route large sets with `prefill-router route-batch`",
                "prompts", "too_many_prompts",
            )  # fmt: skip
        return prompts

    @model_validator(mode="after")
    def _one_source(self) -> RouteRequest:
        if self.prompts is None and self.prompt is None and self.messages is None:
            raise _refused("send 'prompt', 'prompts' or 'messages'", "prompt")
        return self

    @classmethod
    def parse(cls, body: Mapping[str, Any], *, max_prompts: int | None = None) -> RouteRequest:
        """The request, with at most ``max_prompts`` prompts.

        Raises:
            ApiError: 400 naming the first bad field (``too_many_prompts`` past the limit).
        """
        try:
            return cls.model_validate(body, context={"max_prompts": max_prompts})
        except ValidationError as exc:
            raise _api_error(exc) from None

    @property
    def overrides(self) -> Overrides:
        """The ``router`` options (none: the profile's)."""
        return Overrides() if self.router is None else self.router.overrides()

    def texts(self, mode: str) -> list[str]:
        """The texts to route: the prompts, the prompt, or the messages' routing text (``mode``)."""
        if self.prompts is not None:
            return list(self.prompts)
        if self.prompt is not None:
            return [self.prompt]
        assert self.messages is not None  # _one_source
        return [routing_text(self.messages, mode)]


def check_model(model: Any) -> str:
    """The request's ``model`` if it can name a model at all; 400 before any look-up otherwise.

    Raises:
        ApiError: 400 for a missing, empty, non-string or over-long (> 256 characters) model.
    """
    try:
        return _MODEL.validate_python(model)
    except ValidationError as exc:
        raise _api_error(exc) from None


def check_messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The ``messages`` list; raises ApiError 400 when it is missing, empty or malformed."""
    try:
        return list(_MESSAGES.validate_python(body.get("messages")))
    except ValidationError as exc:
        raise _api_error(exc) from None


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_unicode(raw: bytes, body: Any) -> None:
    """Refuse a body whose strings hold a lone UTF-16 surrogate (e.g. ``"\\ud800"``, valid JSON).

    Such a string cannot be encoded as UTF-8: the tokenizer, the cost estimate and the upstream
    call would all fail on it. It gets there as a ``\\uD800``-``\\uDFFF`` escape, or as bytes
    ``json.loads`` decodes with ``surrogatepass`` (CESU-8, UTF-16); only such bodies are walked
    (iteratively, so any nesting depth is fine).

    Raises:
        ApiError: 400 naming the first such string by its path in the body.
    """
    if not _SURROGATE_BYTES.search(raw) and _is_utf8(raw):
        return
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            found = _LONE_SURROGATE.search(value)
            if found is not None:
                raise _bad(
                    f"{path or 'the body'} holds a lone UTF-16 surrogate (\\u{ord(found.group()):04x}) at "
                    f"character {found.start()}: it is not valid Unicode text; send real characters "
                    "(a surrogate pair encodes one character beyond U+FFFF)",
                    path or None,
                )
        elif isinstance(value, Mapping):
            for key, item in value.items():
                stack.append((f"{path}.{key}" if path else str(key), item))
                stack.append((f"{path} (a key)" if path else "a key", key))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one chat message: a string, or the text parts of a content list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def routing_text(messages: Sequence[Mapping[str, Any]], mode: str) -> str:
    """The text a request is routed on: the last or first user message, or the whole conversation.

    Raises:
        ApiError: 400 when that text is empty (no user text to route on).

    Example:
        >>> turns = [{"role": "user", "content": "hi"}, {"role": "user", "content": "sum 2+2"}]
        >>> routing_text(turns, "last_user")
        'sum 2+2'
    """
    if mode == "conversation":
        text = "\n".join(f"{m['role']}: {message_text(m)}" for m in messages if message_text(m).strip())
    else:
        users = [message_text(m) for m in messages if m.get("role") == "user"]
        users = [u for u in users if u.strip()]
        text = (users[0] if mode == "first_user" else users[-1]) if users else ""
    if not text.strip():
        raise _bad("the messages hold no user text to route on", "messages")
    return text


# ------------------------------------------------------------------------- responses
class RouteDecision(BaseModel):
    """One ``/v1/route`` decision: the target, every probability and cost, why, and where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="RouteDecision")

    object: Literal["router.decision"] = "router.decision"
    target: str = Field(description="The chosen target.")
    index: int = Field(description="Its column in the router's targets.")
    policy: str = Field(description="The policy that decided (pinned / session / fallback: no policy).")
    knob: float | None = Field(description="The policy's knob (null: infinite μ).")
    probabilities: dict[str, float] = Field(description="Each target's probability of a correct answer.")
    costs_usd: dict[str, float] = Field(description="Each target's estimated cost in USD.")
    candidates: list[str] = Field(description="The targets the policy chose among.")
    reason: str = Field(description="One human-readable line.")
    certificate: dict[str, Any] | None = Field(
        description="The quality floor's certificate, when one was kept."
    )
    source: Literal["policy", "session", "pinned", "fallback"]
    cached: bool = Field(description="Whether the scores came from the decision cache.")


class RouteDecisionList(BaseModel):
    """The ``/v1/route`` answer for ``prompts``: one decision per prompt, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="RouteDecisionList")

    object: Literal["list"] = "list"
    data: list[RouteDecision]


class ErrorDetail(BaseModel):
    """What went wrong: the message, the OpenAI error type, the offending field and a code."""

    model_config = ConfigDict(frozen=True)

    message: str
    type: str = Field(
        description="invalid_request_error, authentication_error, permission_error, server_error ..."
    )
    param: str | None = Field(description="The offending request field, e.g. 'router.knob'.")
    code: str | None = Field(description="A machine-readable code, e.g. 'model_not_found'.")


class ErrorResponse(BaseModel):
    """The OpenAI error envelope every refusal and failure is answered with."""

    model_config = ConfigDict(frozen=True)

    error: ErrorDetail

    @classmethod
    def of(cls, error: ApiError) -> ErrorResponse:
        """The envelope of ``error``."""
        return cls(
            error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code)
        )


def openapi_schemas() -> dict[str, Any]:
    """The request bodies' JSON schemas as OpenAPI components (``#/components/schemas/NAME``)."""
    _, schemas = models_json_schema(
        [(ChatCompletionRequest, "validation"), (RouteRequest, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    definitions: dict[str, Any] = schemas["$defs"]
    return definitions


@dataclass(frozen=True)
class Routed:
    """One routing outcome: the decision, where it came from and whether the cache answered."""

    decision: Decision
    source: str  # policy / session / pinned / fallback
    cached: bool = False

    def headers(self) -> dict[str, str]:
        """The x-router-* decision headers (printable ASCII only)."""
        d = self.decision
        out = {"x-router-reason": header_safe(d.reason.translate(_ASCII))}
        if d.probabilities:
            out["x-router-probabilities"] = ",".join(f"{t}={p:.3f}" for t, p in d.probabilities.items())
        if d.target in d.costs_usd:
            out["x-router-estimated-cost"] = f"{d.costs_usd[d.target]:.6g}"
        out["x-router-cache"] = "hit" if self.cached else "miss"
        return out

    def to_json(self) -> dict[str, Any]:
        """The decision with its source, for /v1/route (a :class:`RouteDecision`)."""
        decision = RouteDecision.model_validate(
            {**self.decision.to_json(), "source": self.source, "cached": self.cached}
        )
        return decision.model_dump()


def header_safe(text: str) -> str:
    """``text`` as a header value: printable ASCII, anything else (CR, LF, é ...) as ``?``."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)
